"""Shoppers opening product pages through a gateway.

Each answer lands in one of three rows, so the report can tell graceful degradation from an
outage (the seed's locustfile counted degraded answers as failures, which made both gateways
read "100% failure"):

* ``/product-details/[id] full``: 200 with recommendations,
* ``/product-details/[id] degraded``: 200 with ``degraded_mode: true`` (a success for Locust),
* ``/product-details/[id] failed``: anything else (non-200, timeout, connection error, bad body).

Run it as ``locust -f loadtest/locustfile.py --host http://127.0.0.1:8090``; ``make demo`` does.
``LOCUST_REQUEST_TIMEOUT`` (seconds, default 60) bounds each request. With ``DEMO_LEDGER`` set,
every request is also written to that file when sent and when answered (``ledger.py``), so that
requests still waiting when the phase stops are counted too.
"""

from __future__ import annotations

import os
import random

from asking import PRODUCT_IDS, ask
from locust import HttpUser, between, task

REQUEST_TIMEOUT = float(os.environ.get("LOCUST_REQUEST_TIMEOUT", "60"))


class Shopper(HttpUser):
    # As in the seed: 100 users give about 60 req/s against a healthy gateway.
    wait_time = between(1, 2)

    @task
    def product_details(self) -> None:
        ask(self.client, random.choice(PRODUCT_IDS), REQUEST_TIMEOUT)
