"""One page asked of a gateway, as both load shapes ask it: the answer classified into its
Locust row (``answers.py``) and, with ``DEMO_LEDGER`` set, written to the ledger when sent and
when answered (``ledger.py``), so that requests still waiting when the phase stops count too.
Imported by the locustfiles only (it registers a Locust event listener)."""

from __future__ import annotations

import os
from pathlib import Path

from answers import KIND, ROW, classify
from ledger import LedgerWriter
from locust import events

PRODUCT_IDS = range(1, 25)
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
