"""The ledger: unanswered requests counted, charts computed from what completed per window."""

from __future__ import annotations

from ledger import Ledger, LedgerWriter, LiveLedger, percentile

T0 = 1_000_000.0


def ledger_of(lines: list[str]) -> Ledger:
    ledger = Ledger()
    for line in lines:
        ledger.feed(line)
    return ledger


def test_requests_still_waiting_at_the_stop_are_counted_with_their_wait():
    ledger = ledger_of(
        [
            f"S,1,{T0}",
            f"S,2,{T0 + 1}",
            f"A,1,{T0 + 3},failed",
            f"S,3,{T0 + 4}",
            f"Q,{T0 + 15}",
            # sent as Locust stopped the user: not part of the phase
            f"S,4,{T0 + 15.2}",
        ]
    )
    assert ledger.unanswered() == {
        "unanswered": 2,
        "unanswered_waited_avg_ms": 12500.0,
        "unanswered_waited_max_ms": 14000.0,
    }
    assert [(a.kind, a.ms) for a in ledger.answers] == [("failed", 3000.0)]


def test_nothing_answered_gives_no_percentiles_and_a_waiting_count():
    ledger = ledger_of([f"S,{i},{T0 + i / 10}" for i in range(10)] + [f"Q,{T0 + 15}"])
    points = ledger.windows(T0)
    assert len(points) == 16
    assert all(p["p50_ms"] is None and p["answered_per_s"] == 0 for p in points)
    assert points[-1]["waiting"] == 10 and points[0]["waiting"] == 1


def test_windows_use_answers_completed_in_the_last_ten_seconds_only():
    # 20 fast answers in the first 2 s, then one slow answer at 30 s
    lines = []
    for i in range(20):
        lines += [f"S,{i},{T0 + i / 10}", f"A,{i},{T0 + i / 10 + 0.005},degraded"]
    lines += [f"S,99,{T0}", f"A,99,{T0 + 30},failed", f"Q,{T0 + 30}"]
    points = {p["t"]: p for p in ledger_of(lines).windows(T0)}
    assert points[2]["p50_ms"] == 5.0 and points[2]["answered_per_s"] == 10.0
    # the fast answers have left the window; nothing else completed until 30 s
    assert points[15]["p50_ms"] is None and points[15]["answered_per_s"] == 0
    assert points[15]["waiting"] == 1
    assert points[30]["p50_ms"] == 30000.0 and points[30]["answered_per_s"] == 0.1


def test_torn_and_unknown_lines_are_skipped():
    ledger = ledger_of([f"S,1,{T0}", "A,1,", f"A,1,{T0 + 1},sideways", "garbage", f"A,1,{T0 + 2},full"])
    assert [a.kind for a in ledger.answers] == ["full"]


def test_percentile_is_nearest_rank():
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None


def test_the_live_reader_sees_what_the_writer_adds(tmp_path):
    path = tmp_path / "requests.csv"
    writer = LedgerWriter(path)
    live = LiveLedger(path)
    first = writer.sent()
    assert len(live.refresh().waiting) == 1
    writer.answered(first, "full")
    writer.sent()
    ledger = live.refresh()
    assert len(ledger.answers) == 1 and len(ledger.waiting) == 1
    assert live.answered_per_s(ledger.answers[0].answered) == 0.1
