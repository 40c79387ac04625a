"""One kind cluster for the whole suite: `make kind-up` (its online path, OFFLINE=0, against
`make stand-ins`) and `make deploy` at the start, `make kind-down` at the end, also after a
failure or Ctrl-C.

The cluster is `$TEST_CLUSTER` (default cbd-test, so a demo cluster of yours is left alone)
with its kubeconfig in .cache/kind/, not ~/.kube/config. Figures measured on the way (times, latencies,
fault counts) are printed at the end of the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "loadtest"))
from stack import http

CLUSTER = os.environ.get("TEST_CLUSTER", "cbd-test")
NAMESPACE = "demo"
KUBECONFIG = ROOT / ".cache/kind" / f"{CLUSTER}.kubeconfig"
KUBECTL = os.environ.get("KUBECTL") or str(ROOT / ".cache/kubernetes/bin/kubectl")
# Short fault timings keep the suite fast; the story is the same as the chart's defaults.
HANG = "6s"
HELM_ARGS = f"--set-string recommendations.failureHang={HANG}"
# KIND_RECREATE: a cluster left over from an interrupted run is made anew, not reused.
ENV = {**os.environ, "KUBECONFIG": str(KUBECONFIG), "KUBECTL": KUBECTL, "KIND_RECREATE": "1"}

FIGURES: list[str] = []


def figure(line: str) -> None:
    """A measured figure, printed at the end of the run."""
    FIGURES.append(line)


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("cluster figures")
        for line in FIGURES:
            for part in line.splitlines():
                terminalreporter.write_line(f"figure: {part}")


def make(*args: str) -> float:
    started = time.monotonic()
    subprocess.run(["make", "--no-print-directory", *args, f"CLUSTER={CLUSTER}"], cwd=ROOT, env=ENV, check=True)
    return time.monotonic() - started


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    done = subprocess.run(
        [KUBECTL, "--namespace", NAMESPACE, *args],
        env=ENV, input=input, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def kubectl_json(*args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json"))


def wait_for(what: str, check, timeout: float, every: float = 0.2):
    """Polls check() until it returns something truthy; fails naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError) as err:
            last = err
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")


def drain(stream) -> None:
    for _ in stream:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def background(command: list[str], ready: re.Pattern, timeout: float = 30.0):
    """Runs command in its own session until the block ends; yields the first match of ready
    in its output (a line at a time)."""
    process = subprocess.Popen(
        command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        match = None
        while match is None:
            line = process.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise AssertionError(f"{command[0]} did not become ready: last line {line!r}")
            match = ready.search(line)
        # Keep draining, so the process never blocks on a full pipe.
        threading.Thread(target=drain, args=(process.stdout,), daemon=True).start()
        yield match
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        process.wait(10)


@dataclass
class Cluster:
    """What the tests reach: the API server's service proxy (every ready pod behind a Service,
    surviving pod replacement) and a port-forward per gateway, as a user has them."""

    proxy: str
    forwards: dict[str, str]

    def service(self, name: str, port: int) -> str:
        return f"{self.proxy}/api/v1/namespaces/{NAMESPACE}/services/{name}:{port}/proxy"

    def pods(self, app: str, ready: bool = False) -> list[str]:
        """The app's pods that are not terminating (and are Ready, with ready=True)."""
        pods = kubectl_json("get", "pods", "-l", f"app.kubernetes.io/name={app}")["items"]
        return sorted(
            p["metadata"]["name"]
            for p in pods
            if p["metadata"].get("deletionTimestamp") is None
            and (
                not ready
                or any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
            )
        )


@pytest.fixture(scope="session")
def cluster():
    if shutil.which("make") is None:
        pytest.fail("make is needed")
    KUBECONFIG.parent.mkdir(parents=True, exist_ok=True)
    try:
        # The path users with a registry take (OFFLINE=0: kind's node image, the Dockerfile's
        # default target compiled in its Rust builder), with local stand-ins under the upstream
        # names: only the pulls stay unexercised. The offline image is checked beside it.
        try:
            figure(f"make stand-ins: {make('stand-ins'):.0f} s")
            # Three workers: placement over nodes, and a drain, are part of what is tested.
            kind_up = make("kind-up", "OFFLINE=0", "KIND_CONFIG=kind-config-3-workers.yaml")
            figure(f"make kind-up OFFLINE=0, three workers (default target built): {kind_up:.0f} s")
        finally:
            subprocess.run(["scripts/stand-ins.sh", "remove"], cwd=ROOT, env=ENV, check=False)
        # The NetworkPolicy test's probe pods run the Debian base the images are built on.
        subprocess.run(
            [str(ROOT / ".cache/tools/bin/kind"), "load", "docker-image", "circuit-breaker-demo/debian:bookworm",
             "--name", CLUSTER], env=ENV, check=True, capture_output=True,
        )  # fmt: skip
        figure(f"make deploy: {make('deploy', f'HELM_ARGS={HELM_ARGS}'):.0f} s")
        ports = {
            "api-gateway-v1": (8080, free_port()),
            "api-gateway-v2": (8090, free_port()),
            "recommendations-service": (8082, free_port()),
        }
        specs = [f"{name}:{port}:{local}" for name, (port, local) in ports.items()]
        with (
            background([KUBECTL, "proxy", "--port=0"], re.compile(r"Starting to serve on (\S+)")) as proxy,
            background(["scripts/port-forward.sh", *specs], re.compile(r"Forwarding from")),
        ):
            forwards = {name: f"http://127.0.0.1:{local}" for name, (_, local) in ports.items()}
            for name, url in forwards.items():
                wait_for(
                    f"{name} through its port-forward",
                    lambda url=url: http("GET", f"{url}/readyz", timeout=10)[0] == 200,
                    30,
                )
            # Ready pods are not yet a working path (names, Services, product-service): wait for
            # one page before the tests judge anything.
            started = time.monotonic()
            v2 = forwards["api-gateway-v2"]
            wait_for(
                "a first page from v2", lambda: http("GET", f"{v2}/product-details/1", timeout=10)[0] == 200, 180, 1
            )
            figure(f"first page from v2 after deploy: {time.monotonic() - started:.1f} s")
            yield Cluster(proxy=f"http://{proxy.group(1)}", forwards=forwards)
    finally:
        subprocess.run(
            ["make", "--no-print-directory", "kind-down", f"CLUSTER={CLUSTER}"], check=False, cwd=ROOT, env=ENV
        )
