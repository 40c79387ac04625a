"""How a gateway's answer is classified: full, degraded or failed (one Locust row each).

Kept apart from locustfile.py so the report can use the row names without importing Locust
(which monkey-patches the standard library with gevent).
"""

from __future__ import annotations

ROW = "/product-details/[id]"
FULL = f"{ROW} full"
DEGRADED = f"{ROW} degraded"
FAILED = f"{ROW} failed"
# Each row's one-word kind, as the ledger writes it.
KIND = {FULL: "full", DEGRADED: "degraded", FAILED: "failed"}


def classify(status: int, body: object, error: object = None) -> tuple[str, str | None]:
    """Returns the row an answer belongs to and, for a failure, why it failed."""
    if error is not None:
        return FAILED, f"no answer: {type(error).__name__}"
    if status != 200:
        return FAILED, f"HTTP {status}"
    if not isinstance(body, dict) or not isinstance(body.get("product"), dict):
        return FAILED, "200 without a product"
    if body.get("degraded_mode") is True:
        return DEGRADED, None
    recommendations = body.get("recommendations")
    if isinstance(recommendations, list) and recommendations:
        return FULL, None
    return FAILED, "200 without recommendations and not degraded"
