"""Every request of a phase, answered or not: the locustfile writes it, the demo and the report
read it.

Locust's own statistics see a request only once it has an answer, so a phase shorter than the
hang would report a gateway that never answered as one that never failed, and its "current"
figures freeze while nothing completes. The ledger records each request when it is sent and
again when its answer arrives (as full, degraded or failed), and the moment the phase stops;
what is sent and never answered is counted with the time it had waited. Standard library only,
one CSV line per event:

    S,<id>,<unix seconds>           sent
    A,<id>,<unix seconds>,<kind>    answered: full, degraded or failed
    V,<unix seconds>                a visitor arrived (the overload chapter's open-loop load:
                                    one visit is one page asked, however many requests it took)
    Q,<unix seconds>                the phase stopped (Locust's test_stopping)
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from answers import KIND

# The window the charts and the live line look back over.
WINDOW_S = 10.0
KINDS = frozenset(KIND.values())


class LedgerWriter:
    """Appends events, one line each, flushed as written (the demo reads it live). Request ids
    carry `prefix`, so that the lines of several writers (Locust's workers) can share a file."""

    def __init__(self, path: Path, prefix: str = ""):
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)
        self.prefix = prefix
        self.ids = itertools.count(1)

    def write_lines(self, lines: str) -> None:
        """Whole lines, as another writer made them."""
        self.file.write(lines)

    def flush(self) -> None:
        """Lines are written as they come: nothing is held."""

    def sent(self) -> str:
        request = f"{self.prefix}{next(self.ids)}"
        self.write_lines(f"S,{request},{time.time():.6f}\n")
        return request

    def answered(self, request: str, kind: str) -> None:
        self.write_lines(f"A,{request},{time.time():.6f},{kind}\n")

    def visited(self) -> None:
        self.write_lines(f"V,{time.time():.6f}\n")

    def stopped(self) -> None:
        self.write_lines(f"Q,{time.time():.6f}\n")


@dataclass
class Answer:
    sent: float
    answered: float
    kind: str

    @property
    def ms(self) -> float:
        return (self.answered - self.sent) * 1000


@dataclass
class Ledger:
    answers: list[Answer] = field(default_factory=list)
    # sent times of requests still waiting
    waiting: dict[str, float] = field(default_factory=dict)
    stopped: float | None = None
    last_event: float | None = None
    # arrival times of visitors (open-loop load only)
    visits: list[float] = field(default_factory=list)

    def feed(self, line: str) -> None:
        """Takes one line; a torn or unknown line (the writer is mid-write) is skipped."""
        parts = line.strip().split(",")
        try:
            if parts[0] == "S" and len(parts) == 3:
                at = float(parts[2])
                self.waiting[parts[1]] = at
            elif parts[0] == "A" and len(parts) == 4 and parts[3] in KINDS:
                at = float(parts[2])
                sent = self.waiting.pop(parts[1], None)
                if sent is not None:
                    self.answers.append(Answer(sent, at, parts[3]))
            elif parts[0] == "V" and len(parts) == 2:
                at = float(parts[1])
                self.visits.append(at)
            elif parts[0] == "Q" and len(parts) == 2:
                at = float(parts[1])
                self.stopped = self.stopped or at
            else:
                return
        except ValueError:
            return
        self.last_event = max(self.last_event or at, at)

    @staticmethod
    def read(path: Path) -> Ledger:
        ledger = Ledger()
        if path.is_file():
            for line in path.read_text().splitlines():
                ledger.feed(line)
        return ledger

    def end(self) -> float | None:
        return self.stopped or self.last_event

    def unanswered(self) -> dict:
        """Requests sent before the phase stopped and never answered, with how long they had
        waited when it stopped (a user may send one more as Locust stops it: not counted)."""
        end = self.end()
        waits = sorted((end - sent) * 1000 for sent in self.waiting.values() if end and sent <= end)
        return {
            "unanswered": len(waits),
            "unanswered_waited_avg_ms": round(sum(waits) / len(waits), 1) if waits else None,
            "unanswered_waited_max_ms": round(waits[-1], 1) if waits else None,
        }

    def windows(self, start: float, step: float = 1.0) -> list[dict]:
        """For each `step` from `start` to the end: answers completed in the trailing window,
        their median and p95 time, the rate they completed at, and the requests waiting."""
        end = self.end()
        if end is None:
            return []
        done = sorted(self.answers, key=lambda a: a.answered)
        answered_at = [a.answered for a in done]
        sends = sorted([a.sent for a in self.answers] + list(self.waiting.values()))
        points = []
        for i in range(math.floor((end - start) / step) + 1):
            t = start + i * step
            first, last = bisect.bisect_right(answered_at, t - WINDOW_S), bisect.bisect_right(answered_at, t)
            recent = sorted(a.ms for a in done[first:last])
            # Early in the phase the window reaches back before it: divide by what it covers.
            covered = min(WINDOW_S, t - start) or step
            points.append(
                {
                    "t": round(i * step, 3),
                    "answered_per_s": round(len(recent) / covered, 3),
                    "p50_ms": percentile(recent, 50),
                    "p95_ms": percentile(recent, 95),
                    "waiting": bisect.bisect_right(sends, t) - last,
                }
            )
        return points


def per_second(times: list[float], start: float, end: float) -> list[int]:
    """How many of `times` fall in each whole second from `start` to `end`."""
    counts = [0] * max(0, math.ceil(end - start))
    for at in times:
        i = math.floor(at - start)
        if 0 <= i < len(counts):
            counts[i] += 1
    return counts


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return round(sorted_values[rank - 1], 2)


class LiveLedger:
    """The ledger as it grows: reads what was added since the last look."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.ledger = Ledger()
        self.partial = ""

    def refresh(self) -> Ledger:
        try:
            with open(self.path) as f:
                f.seek(self.offset)
                text = f.read()
                self.offset = f.tell()
        except FileNotFoundError:
            return self.ledger
        text = self.partial + text
        lines = text.split("\n")
        self.partial = lines.pop()
        for line in lines:
            self.ledger.feed(line)
        return self.ledger

    def answered_per_s(self, now: float) -> float:
        """Answers in the last window, per second (answers arrive in order, newest last)."""
        recent = itertools.takewhile(lambda a: a.answered > now - WINDOW_S, reversed(self.ledger.answers))
        return sum(1 for _ in recent) / WINDOW_S
