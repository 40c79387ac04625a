"""How `make bench` reads wrk and judges the README's claims (the run itself is `make bench`)."""

from bench import checks, parse_wrk, seconds

WRK = """Running 1m test @ http://127.0.0.1:41234/product-details/1
  2 threads and 256 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     9.86ms    4.12ms   2.00s    72.15%
    Req/Sec    13.76k     1.81k   19.98k    68.17%
  Latency Distribution
     50%    9.31ms
     75%   11.87ms
     90%   14.52ms
     99%   17.92ms
  1643410 requests in 1.00m, 500.03MB read
  Socket errors: connect 0, read 0, write 0, timeout 3
  Non-2xx or 3xx responses: 2
Requests/sec:  27352.27
Transfer/sec:      8.32MB
"""


def test_wrk_output_is_read_in_milliseconds():
    r = parse_wrk(WRK)
    assert r == {
        "rps": 27352.27,
        "requests": 1643410,
        "p50_ms": 9.31,
        "p99_ms": 17.92,
        "non_2xx": 2,
        "socket_errors": 3,
    }
    assert parse_wrk(WRK.replace("17.92ms", "1.50s"))["p99_ms"] == 1500.0
    assert parse_wrk(WRK.replace("9.31ms", "850.00us"))["p50_ms"] == 0.85


def test_durations_in_wrk_syntax():
    assert [seconds(d) for d in ("60s", "2m", "1h", "45")] == [60, 120, 3600, 45]


def report(p99=17.9, non_2xx=0, errors=0, fds_after=279, rss_after=31.6):
    return {
        "v2": {"p99_ms": p99, "non_2xx": non_2xx, "socket_errors": errors},
        "v2_process": {
            "before": {"rss_mb": 29.1, "fds": 279},
            "after": {"rss_mb": rss_after, "fds": fds_after},
        },
    }


def test_each_claim_can_be_missed():
    assert all(checks(report()).values())
    for bad, claim in (
        (report(p99=20.0), "v2 p99 under 20 ms"),
        (report(non_2xx=1), "no non-2xx from v2"),
        (report(errors=1), "no non-2xx from v2"),
        (report(fds_after=280), "fds back to baseline"),
        (report(rss_after=34.0), "RSS back within 15% of baseline"),
    ):
        result = checks(bad)
        assert [k for k, held in result.items() if not held] == [claim]
