"""Visitors who arrive whatever the site does: the overload chapter's load (open loop).

``locustfile.py``'s shoppers wait for each answer before they ask again (a closed loop), so a
slow site is asked less: the load backs off by itself and hides an overload that feeds on its
own retries. Here each Locust user starts visits at a steady rate on greenlets of their own,
whether or not earlier ones were answered; a visitor who waits longer than ``--give-up``
seconds gives up and reloads the page, up to ``--visitor-retries`` times, as people do.

Options (Locust passes them on to its workers): ``--visit-rate``, the visits a second each user
starts, as a Poisson process (``make demo-overload`` gives users × rate = its arrival rate);
``--give-up`` (default 3); ``--visitor-retries`` (default 1). Each request goes into the ledger
(``DEMO_LEDGER``) as in ``locustfile.py``, and each visit as a ``V`` line, so the report knows
the pages asked.
"""

from __future__ import annotations

import random

import asking
import gevent
from answers import FAILED
from asking import PRODUCT_IDS, ask
from locust import HttpUser, constant, events, task


@events.init_command_line_parser.add_listener
def visitor_options(parser) -> None:
    parser.add_argument("--visit-rate", type=float, default=5.0, help="visits a second each user starts")
    parser.add_argument("--give-up", type=float, default=3.0, help="seconds a visitor waits for a page")
    parser.add_argument("--visitor-retries", type=int, default=1, help="reloads after a page given up on")


class Visitor(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        self.visits = gevent.pool.Group()

    def on_stop(self) -> None:
        self.visits.kill(block=False)

    @task
    def arrive(self) -> None:
        self.visits.spawn(self.visit)
        gevent.sleep(random.expovariate(self.options.visit_rate))

    def visit(self) -> None:
        if asking.LEDGER is not None:
            asking.LEDGER.visited()
        product_id = random.choice(PRODUCT_IDS)
        for _ in range(1 + self.options.visitor_retries):
            if ask(self.client, product_id, self.options.give_up) != FAILED:
                return
