"""One page asked of a gateway, as both load shapes ask it: the answer classified into its
Locust row (``answers.py``) and, with ``DEMO_LEDGER`` set, written to the ledger when sent and
when answered (``ledger.py``), so that requests still waiting when the phase stops count too.
Imported by the locustfiles only (it registers Locust event listeners).

In Locust's distributed mode (the chapters' cluster runs) the workers ask and the master keeps
the ledger: each worker relays its lines to the master (``RelayedLedger``), which appends them
to its ``DEMO_LEDGER`` file, so one file holds the phase whatever the number of workers."""

from __future__ import annotations

import itertools
import os
import uuid
from pathlib import Path

import gevent
from answers import KIND, ROW, classify
from ledger import LedgerWriter
from locust import events
from locust.runners import MasterRunner, WorkerRunner

PRODUCT_IDS = range(1, 25)
# The message a worker's lines travel in.
LEDGER_MESSAGE = "ledger"
# How long a worker holds its lines before it sends them.
RELAY_EVERY_S = 0.2


class RelayedLedger(LedgerWriter):
    """A worker's ledger: its lines go to the master in batches (ids prefixed by this worker,
    timestamps by its clock: the cluster's pods share their node's). The master marks the stop."""

    def __init__(self, send):
        self.send = send
        self.held: list[str] = []
        self.prefix = uuid.uuid4().hex[:8] + "-"
        self.ids = itertools.count(1)
        gevent.spawn(self._relay)

    def write_lines(self, lines: str) -> None:
        self.held.append(lines)

    def flush(self) -> None:
        if self.held:
            lines, self.held = "".join(self.held), []
            self.send(lines)

    def stopped(self) -> None:
        self.flush()

    def _relay(self) -> None:
        while True:
            gevent.sleep(RELAY_EVERY_S)
            self.flush()


# Set when Locust starts (events.init): this process's writer, or None without a ledger.
LEDGER: LedgerWriter | None = None


@events.init.add_listener
def open_ledger(environment, **_) -> None:
    global LEDGER
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        LEDGER = RelayedLedger(lambda lines: runner.send_message(LEDGER_MESSAGE, lines))
        return
    path = os.environ.get("DEMO_LEDGER")
    if path:
        LEDGER = LedgerWriter(Path(path))
    if isinstance(runner, MasterRunner):
        runner.register_message(LEDGER_MESSAGE, lambda msg, **_: LEDGER and LEDGER.write_lines(msg.data))


@events.test_stopping.add_listener
def phase_stopping(**_) -> None:
    # The master marks the stop; a worker sends what it still holds.
    if LEDGER is not None:
        LEDGER.stopped()


@events.test_stop.add_listener
def phase_stopped(**_) -> None:
    if LEDGER is not None:
        LEDGER.flush()


def json_or_none(response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def ask(client, product_id: int, timeout: float) -> str:
    """GETs the product's page through `client` (a Locust HttpUser's); its row."""
    request = LEDGER.sent() if LEDGER is not None else None
    with client.get(f"/product-details/{product_id}", name=ROW, timeout=timeout, catch_response=True) as response:
        body = json_or_none(response) if response.error is None else None
        row, failure = classify(response.status_code, body, response.error)
        response.request_meta["name"] = row
        if failure is None:
            response.success()
        else:
            response.failure(failure)
    # A user stopped mid-request never gets here: the ledger keeps that request waiting.
    if request is not None:
        LEDGER.answered(request, KIND[row])
    return row
