"""`make measure-soak`: ten minutes of load with recommendations flapping and rolled; does
anything grow?

In a cluster deployed with recommendations `flaky` (half its answers fail, so v2's breakers
keep opening and closing) and v2's scope Endpoint (so each recommendations pod has its own
breaker and metric series), it drives pages at v2 from load pods inside the cluster, restarts
recommendations' Deployment every SOAK_ROLL_EVERY (new pods, new names: new endpoints for v2, new
series), and samples, at each minute, for every v2 replica and the leading controller: the
process's RSS (kind's nodes are containers on this machine, so the pods' processes are this
machine's) and the number of series its /metrics shows. Prints the table and the growth from
minute 1 to the last, which must stay under 10%.

Standard library only; it changes the policy's scope for the run (and puts it back), and
starts and deletes its load pods. Settings (environment): SOAK_MINUTES (10), SOAK_ROLL_EVERY
(30 s), SOAK_LOAD_PODS (6), NAMESPACE, RELEASE, BREAKER_POLICY, KUBECTL.
"""

from __future__ import annotations

import json
import os
import sys
import time

import scale
from scale import kubectl, process_of

MINUTES = int(os.environ.get("SOAK_MINUTES", "10"))
ROLL_EVERY = float(os.environ.get("SOAK_ROLL_EVERY", "30"))
LOAD_PODS = int(os.environ.get("SOAK_LOAD_PODS", "6"))
# What may grow from minute 1 to the last.
GROWTH = 0.10


def series(pod: str, port: int) -> int:
    text = kubectl("get", "--raw", f"/api/v1/namespaces/{scale.NAMESPACE}/pods/{pod}:{port}/proxy/metrics")
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def set_scope(scope: str | None) -> None:
    patch = {"spec": {"settings": {"scope": scope}}}
    kubectl("patch", "breakerpolicy", scale.POLICY, "--type=merge", "-p", json.dumps(patch))


def main() -> int:
    v2_pods = sorted(kubectl("get", "pods", "-l", scale.pods_of("api-gateway-v2"), "-o", "name").split())
    v2_pods = [p.removeprefix("pod/") for p in v2_pods]
    leader = scale.leading_controller_pod()
    watched = {f"v2 {p}": (p, "api-gateway-v2", 8090) for p in v2_pods}
    watched[f"controller {leader} (leader)"] = (leader, "breaker-controller", 8083)
    try:
        pids = {what: process_of(comm, pod) for what, (pod, comm, _) in watched.items()}
    except LookupError as err:
        print(f"soak: {err}", file=sys.stderr)
        return 1
    policy = json.loads(kubectl("get", "breakerpolicy", scale.POLICY, "-o", "json"))
    scope_before = policy["spec"].get("settings", {}).get("scope")
    set_scope("Endpoint")
    run = int(time.time())
    names = [f"soak-load-{run}-{i}" for i in range(LOAD_PODS)]
    samples: dict[str, list[tuple[float, int]]] = {what: [] for what in watched}
    rolls = 0
    pages: list[float] = []
    try:
        for name in names:
            kubectl("apply", "-f", "-", input_text=json.dumps(scale.load_pod(name)))
        kubectl("wait", "--for=condition=Ready", *[f"pod/{n}" for n in names], "--timeout=120s")
        # A first scrape, not counted: a route's series appear after its first answer, so the
        # first /metrics answer lacks /metrics' own.
        for pod, _, port in watched.values():
            series(pod, port)
        started = time.monotonic()
        next_roll, next_sample, minute = started + ROLL_EVERY, started + 60, 0
        served_before = scale_pages(v2_pods)
        while minute < MINUTES:
            now = time.monotonic()
            if now >= next_roll:
                kubectl("rollout", "restart", f"deployment/{scale.named('recommendations-service')}")
                rolls += 1
                next_roll += ROLL_EVERY
            if now >= next_sample:
                minute += 1
                served = scale_pages(v2_pods)
                pages.append((served - served_before) / 60)
                served_before = served
                for what, (pod, _, port) in watched.items():
                    samples[what].append((scale.rss_mib(pids[what]), series(pod, port)))
                print(f"minute {minute}: {pages[-1]:.0f} pages/s, {rolls} rollouts so far", flush=True)
                next_sample += 60
            time.sleep(0.5)
    finally:
        kubectl("delete", "pod", *names, "--wait=false", check=False)
        set_scope(scope_before)

    print(f"\n{MINUTES} minutes, {LOAD_PODS} load pods, recommendations flaky and restarted every {ROLL_EVERY:.0f} s")
    print(f"pages/s by minute: {', '.join(f'{p:.0f}' for p in pages)}\n")
    print("| process | RSS minute 1 | RSS last | growth | series minute 1 | series last | growth |")
    print("|---|---|---|---|---|---|---|")
    missed = []
    for what, taken in samples.items():
        (rss1, series1), (rss_n, series_n) = taken[0], taken[-1]
        rss_growth, series_growth = rss_n / rss1 - 1, series_n / series1 - 1
        print(
            f"| {what} | {rss1:.1f} MiB | {rss_n:.1f} MiB | {rss_growth:+.1%} | {series1} | {series_n} | {series_growth:+.1%} |"
        )
        missed += [f"{what} {kind}" for kind, g in (("RSS", rss_growth), ("series", series_growth)) if g >= GROWTH]
    for what in missed:
        print(f"MISSED: {what} grew {GROWTH:.0%} or more")
    return 1 if missed else 0


def scale_pages(v2_pods: list[str]) -> float:
    """Pages the v2 replicas have answered so far (their /product-details requests, any status)."""
    total = 0.0
    for pod in v2_pods:
        text = kubectl("get", "--raw", f"/api/v1/namespaces/{scale.NAMESPACE}/pods/{pod}:8090/proxy/metrics")
        for labels, value in scale.counters(text, "http_requests_total").items():
            if "/product-details/{id}" in labels:
                total += value
    return total


if __name__ == "__main__":
    sys.exit(main())
