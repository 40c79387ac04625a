"""How Locust rows are chosen: full, degraded or failed."""

import requests
from answers import DEGRADED, FAILED, FULL, classify

PRODUCT = {"id": "1", "name": "Laptop"}


def test_full_answer_has_recommendations():
    assert classify(200, {"product": PRODUCT, "recommendations": [{"id": "2"}]}) == (FULL, None)


def test_degraded_answer_is_a_success_of_its_own():
    body = {"product": PRODUCT, "recommendations": [], "degraded_mode": True}
    assert classify(200, body) == (DEGRADED, None)


def test_failures_say_why():
    assert classify(500, {"error": "x"}) == (FAILED, "HTTP 500")
    assert classify(503, None) == (FAILED, "HTTP 503")
    assert classify(200, None) == (FAILED, "200 without a product")
    assert classify(200, {"product": "not an object"}) == (FAILED, "200 without a product")
    assert classify(200, {"product": PRODUCT, "recommendations": []}) == (
        FAILED,
        "200 without recommendations and not degraded",
    )
    # degraded_mode must be exactly true, not merely truthy
    assert classify(200, {"product": PRODUCT, "degraded_mode": "yes"})[0] == FAILED
    assert classify(0, None, requests.exceptions.ReadTimeout()) == (FAILED, "no answer: ReadTimeout")
