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
from pathlib import Path

from answers import KIND, ROW, classify
from ledger import LedgerWriter
from locust import HttpUser, between, events, task

PRODUCT_IDS = range(1, 25)
REQUEST_TIMEOUT = float(os.environ.get("LOCUST_REQUEST_TIMEOUT", "60"))
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


class Shopper(HttpUser):
    # As in the seed: 100 users give about 60 req/s against a healthy gateway.
    wait_time = between(1, 2)

    @task
    def product_details(self) -> None:
        product_id = random.choice(PRODUCT_IDS)
        request = LEDGER.sent() if LEDGER is not None else None
        with self.client.get(
            f"/product-details/{product_id}",
            name=ROW,
            timeout=REQUEST_TIMEOUT,
            catch_response=True,
        ) as response:
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
