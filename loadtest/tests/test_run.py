"""make run: the launcher the demo uses, as a program: the four services up, their URLs
printed, everything stopped by Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

from conftest import ROOT, demo_env
from stack import http


def test_make_run_serves_until_ctrl_c_and_stops_every_service(fast_breaker, tmp_path):
    env = demo_env(tmp_path / "results", fast_breaker, RUN_LOGS=str(tmp_path / "logs"))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "loadtest/stack.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        printed = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"the launcher stopped early: {''.join(printed)}{proc.stderr.read()}"
            printed.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(printed)
        v2 = re.search(r"v2 \(breaker\): +curl -s (\S+)/product-details/1", text).group(1)
        status, body = http("GET", f"{v2}/product-details/1", timeout=5)
        assert status == 200 and body["degraded_mode"] is True, body
        urls = set(re.findall(r"http://127\.0\.0\.1:\d+", text))
        # The four services, and v2's status port.
        assert len(urls) == 5, text
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=15)
    assert code == 0, proc.stderr.read()
    for url in urls:
        try:
            http("GET", f"{url}/healthz", timeout=1)
        except OSError:
            continue
        raise AssertionError(f"{url} still answers after Ctrl-C")
