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

import gevent
from answers import FAILED
from asking import LEDGER, PRODUCT_IDS, ask
from locust import HttpUser, constant, task

ARRIVAL_RATE = float(os.environ.get("ARRIVAL_RATE", "50"))
GIVE_UP = float(os.environ.get("GIVE_UP", "3"))
VISITOR_RETRIES = int(os.environ.get("VISITOR_RETRIES", "1"))


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
            if ask(self.client, product_id, GIVE_UP) != FAILED:
                return
