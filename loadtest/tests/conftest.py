"""Fixtures: the real binaries (target/debug unless BIN says otherwise), a short demo run and
Debian's headless Chromium driven by Playwright. Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("BIN", ROOT / "target/debug"))
RESULTS = ROOT / "results" / "test-run"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Short timings so the whole demo fits in about half a minute.
FAST_BREAKER = """\
failureThreshold: 3
callTimeout: 500ms
openDuration: 2s
halfOpenMaxCalls: 1
"""
OPEN_DURATION_S = 2.0


def demo_env(results: Path, breaker_config: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "BIN": str(BIN),
        "RESULTS_DIR": str(results),
        "BREAKER_CONFIG": str(breaker_config),
        "DEMO_DURATION": "10s",
        "FAILURE_HANG": "3s",
        "V1_UPSTREAM_TIMEOUT": "30s",
        "V1_PORT": "0",
        "V2_PORT": "0",
        "V2_STATUS_PORT": "0",
        "PRODUCT_PORT": "0",
        "RECOMMENDATIONS_PORT": "0",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def fast_breaker(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "breaker.yaml"
    path.write_text(FAST_BREAKER)
    return path


@pytest.fixture(scope="session")
def demo_run(fast_breaker):
    """One short run of the whole demo, as `make demo` runs it, into results/test-run/."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "loadtest/demo.py")],
        check=False,
        env=demo_env(RESULTS, fast_breaker),
        capture_output=True,
        text=True,
        timeout=300,
    )
    report_path = RESULTS / "comparison_report.json"
    summary = json.loads(report_path.read_text()) if report_path.exists() else None
    return proc, summary


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/require-tools.sh chromium (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()
