"""Visitors who arrive whatever the site does: the overload chapter's load (open loop).

``locustfile.py``'s shoppers wait for each answer before they ask again (a closed loop), so a
slow site is asked less: the load backs off by itself and hides an overload that feeds on its
own retries. Here each Locust user starts visits at a steady rate on greenlets of their own,
whether or not earlier ones were answered; a visitor who waits longer than ``GIVE_UP`` seconds
gives up and reloads the page, up to ``VISITOR_RETRIES`` times, as people do.

``ARRIVAL_RATE``: visits a second in all (spread over the users, each arriving as a Poisson
process); ``GIVE_UP`` (default 3); ``VISITOR_RETRIES`` (default 1). Each request goes into the
ledger (``DEMO_LEDGER``) as in ``locustfile.py``, and each visit as a ``V`` line, so the report
knows the pages asked.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import gevent
from answers import FAILED, KIND, ROW, classify
from ledger import LedgerWriter
from locust import HttpUser, constant, events, task

PRODUCT_IDS = range(1, 25)
ARRIVAL_RATE = float(os.environ.get("ARRIVAL_RATE", "50"))
GIVE_UP = float(os.environ.get("GIVE_UP", "3"))
VISITOR_RETRIES = int(os.environ.get("VISITOR_RETRIES", "1"))
LEDGER = LedgerWriter(Path(os.environ["DEMO_LEDGER"])) if os.environ.get("DEMO_LEDGER") else None


@events.test_stopping.add_listener
def phase_stopping(**_) -> None:
    if LEDGER is not None:
        LEDGER.stopped()


def json_or_none(response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


class Visitor(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        # This user's share of the arrivals.
        self.rate = ARRIVAL_RATE / max(1, self.environment.runner.target_user_count or 1)
        self.visits = gevent.pool.Group()

    def on_stop(self) -> None:
        self.visits.kill(block=False)

    @task
    def arrive(self) -> None:
        self.visits.spawn(self.visit)
        gevent.sleep(random.expovariate(self.rate))

    def visit(self) -> None:
        if LEDGER is not None:
            LEDGER.visited()
        product_id = random.choice(PRODUCT_IDS)
        for _ in range(1 + VISITOR_RETRIES):
            if self.ask(product_id) != FAILED:
                return

    def ask(self, product_id: int) -> str:
        request = LEDGER.sent() if LEDGER is not None else None
        with self.client.get(
            f"/product-details/{product_id}", name=ROW, timeout=GIVE_UP, catch_response=True
        ) as response:
            body = json_or_none(response) if response.error is None else None
            row, failure = classify(response.status_code, body, response.error)
            response.request_meta["name"] = row
            if failure is None:
                response.success()
            else:
                response.failure(failure)
        if request is not None:
            LEDGER.answered(request, KIND[row])
        return row
