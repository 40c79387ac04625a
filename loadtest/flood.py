"""`make measure-flood`: v2's pages while 2,000 clients hold `/circuit-status` waits on it.

Two wrk runs of the same pages against one v2 (recommendations healthy): alone, then while
FLOOD_WAITS clients (default 2,000) each try to keep a wait open on v2's status port
(`?after=<revision>&wait=60s`) and ask again when answered: at once after a held wait ends,
after `Retry-After` when v2 answered at once because it already held as many waits as it may
(status.rs, `HeldWaits::MAX`). The status port serves `MAX_CONNECTIONS` connections at once;
the other clients wait in the kernel's backlog. Prints both runs' throughput and p50/p99, the
ratio of the p99s, v2's own counts of the waits it held and refused, v2's RSS and open files,
and the CPU the flood's clients took. Everything listens on 127.0.0.1.

Settings (environment): FLOOD_WAITS (2000), FLOOD_DURATION (wrk's run, 30s),
FLOOD_CONNECTIONS (wrk's, 64), BIN (target/release).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import proc_sample, wrk
from stack import LOOPBACK, Ports, Stack, StackConfig, StackError, http

ROOT = Path(__file__).resolve().parent.parent
# The p99 the flood may add, at most.
P99_SLACK = 0.10


async def one_client(port: int, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """A client keeping a wait open on its own connection, as long as `stop` is not set."""
    reader = writer = None
    while not stop.is_set():
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
            writer.write(
                f"GET /circuit-status?after={counts['revision']}&wait=60s HTTP/1.1\r\nHost: v2\r\n\r\n".encode()
            )
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            length = next(
                int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.lower().startswith("content-length:")
            )
            body = await reader.readexactly(length)
            counts["answers"] += 1
            # Asked after the newest revision seen, so a transition does not turn every wait
            # into an answer at once.
            counts["revision"] = max(counts["revision"], json.loads(body).get("revision", 0))
            if "retry-after:" in head.lower():
                counts["told_to_wait"] += 1
                await asyncio.sleep(1)
        except (OSError, asyncio.IncompleteReadError, StopIteration, ValueError):
            counts["errors"] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(1)
    if writer is not None:
        writer.close()


def flood(port: int, clients: int, stop: threading.Event, counts: dict[str, int]) -> None:
    """Runs `clients` waiting clients on an event loop of this thread until `stop`."""

    async def main() -> None:
        done = asyncio.Event()
        tasks = [asyncio.create_task(one_client(port, done, counts)) for _ in range(clients)]
        while not stop.is_set():
            await asyncio.sleep(0.2)
        done.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def waits(v2_url: str) -> dict[str, float]:
    status, text = http("GET", f"{v2_url}/metrics", timeout=5)
    if status != 200 or not isinstance(text, str):
        raise StackError(f"v2 /metrics answered {status}")
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("circuit_status_waits_held", "circuit_status_waits_refused_total"):
            found[name] = float(value)
    return found


def main() -> int:
    clients = int(os.environ.get("FLOOD_WAITS", "2000"))
    duration = os.environ.get("FLOOD_DURATION", "30s")
    connections = int(os.environ.get("FLOOD_CONNECTIONS", "64"))
    if not shutil.which("wrk"):
        print("flood: wrk is missing (apt-get install wrk)", file=sys.stderr)
        return 1
    # A connection each, here and in v2 (which inherits the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < clients + 1024:
        print(f"flood: {clients} clients need {clients + 1024} open files; the limit is {hard}", file=sys.stderr)
        return 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, clients + 1024), hard))
    workdir = Path(tempfile.mkdtemp(prefix="flood-"))
    config = StackConfig(
        bin_dir=Path(os.environ.get("BIN", ROOT / "target/release")),
        log_dir=workdir / "logs",
        ports=Ports(0, 0, 0, 0, 0),
    )
    try:
        with Stack(config) as stack:
            stack.set_fault("none")
            v2 = stack.services["api-gateway-v2"]
            page = f"{v2.url}/product-details/1"
            wrk(page, "10s", connections, 1)  # warm-up: pools and heaps
            time.sleep(5)
            before = proc_sample(v2.process.pid)
            alone = wrk(page, duration, connections, 1)
            counts = {"answers": 0, "told_to_wait": 0, "errors": 0, "revision": 0}
            counts["revision"] = stack.circuit_status()["revision"]
            stop = threading.Event()
            flooder = threading.Thread(target=flood, args=(v2.status_port, clients, stop, counts), daemon=True)
            refused_before = waits(v2.url).get("circuit_status_waits_refused_total", 0)
            flooder.start()
            time.sleep(5)  # every client has asked once
            during = waits(v2.url)
            cpu_before = time.process_time()
            flooded = wrk(page, duration, connections, 1)
            flood_cpu = time.process_time() - cpu_before
            sample = proc_sample(v2.process.pid)
            after_run = waits(v2.url)
            stop.set()
            flooder.join(30)
    except (StackError, OSError) as err:
        print(f"flood: {err}; logs in {workdir / 'logs'}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    ratio = flooded["p99_ms"] / alone["p99_ms"]
    print(f"{'run':<34}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'errors':>8}{'steal %':>9}")
    for label, r in (("pages alone", alone), (f"pages, {clients} clients waiting", flooded)):
        print(
            f"{label:<34}{r['rps']:>10,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['non_2xx']:>9}"
            f"{r['socket_errors']:>8}{r['cpu_steal_pct']:>9}"
        )
    refused = after_run.get("circuit_status_waits_refused_total", 0) - refused_before
    print(
        f"waits held by v2 during the flood: {during.get('circuit_status_waits_held', 0):.0f}; "
        f"refused (answered at once, Retry-After: 1) over the run: {refused:.0f}; "
        f"the clients' answers {counts['answers']}, told to wait {counts['told_to_wait']}, errors {counts['errors']}"
    )
    print(
        f"v2 RSS {before['rss_mb']} MB, open fds {before['fds']} before; {sample['rss_mb']} MB, {sample['fds']} fds in the flood; "
        f"the clients' CPU over the flooded run: {flood_cpu:.1f} s"
    )
    held = ratio <= 1 + P99_SLACK
    print(
        f"{'held' if held else 'MISSED'}: p99 with the flood {ratio:.2f}x the p99 alone (at most {1 + P99_SLACK:.2f}x)"
    )
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
