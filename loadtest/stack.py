"""The four services for the demo: as local processes on 127.0.0.1 (``Stack``, for the demo
and its tests), or already running in a cluster and reached through ``make port-forward``
(``ClusterStack``).

Standard library only. Each service runs in its own session, so a Ctrl-C at the terminal
reaches the demo alone and the demo stops its children in order.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
SERVICES = ("product-service", "recommendations-service", "api-gateway-v1", "api-gateway-v2")


class StackError(Exception):
    """A service could not be started or did not become ready; the message says what to do."""


@dataclass
class Ports:
    """The seed's ports by default; 0 lets the kernel pick (the tests use that)."""

    v1: int = 8080
    product: int = 8081
    recommendations: int = 8082
    v2: int = 8090

    def fixed(self) -> list[int]:
        return [p for p in (self.v1, self.product, self.recommendations, self.v2) if p]


@dataclass
class StackConfig:
    bin_dir: Path
    log_dir: Path
    ports: Ports = field(default_factory=Ports)
    failure_hang: str = "30s"
    v1_timeout: str = "30s"
    breaker_config: Path = Path("config/breaker.yaml")
    admin_token: str = "demo-admin-token"
    ready_timeout: float = 15.0


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((LOOPBACK, port)) == 0


def http(method: str, url: str, body: object = None, headers: dict | None = None, timeout: float = 5.0):
    """Returns (status, parsed JSON or text). Raises OSError when nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class Service:
    def __init__(self, name: str, config: StackConfig, port: int, env: dict[str, str]):
        self.name = name
        self.log_path = config.log_dir / f"{name}.log"
        binary = config.bin_dir / name
        if not os.access(binary, os.X_OK):
            raise StackError(f"{binary} is missing: run 'make build' first.")
        child_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RUST_LOG": os.environ.get("RUST_LOG", "info"),
            **({"WORKERS": os.environ["WORKERS"]} if "WORKERS" in os.environ else {}),
            "PORT": str(port),
            "BIND_ADDR": LOOPBACK,
            "LOG_FORMAT": "json",
            # Hanging requests must not hold up a stop.
            "SHUTDOWN_TIMEOUT": "2s",
            **env,
        }
        # Open for the process's whole life; closed in stop().
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(binary)],
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def wait_ready(self, timeout: float) -> None:
        """Learns the port from the service's "listening" log line, then waits for /readyz."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(
                    f"{self.name} exited with status {self.process.returncode}; see {self.log_path}:\n"
                    + self.log_tail()
                )
            if not self.port:
                self.port = self._listening_port()
            if self.port:
                try:
                    if http("GET", f"{self.url}/readyz", timeout=1)[0] == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise StackError(f"{self.name} did not become ready within {timeout:.0f} s; see {self.log_path}")

    def _listening_port(self) -> int:
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == "listening" and isinstance(entry.get("addr"), str):
                return int(entry["addr"].rsplit(":", 1)[1])
        return 0

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class Services:
    """What the demo asks of the running services, wherever they run."""

    admin_token: str

    def url(self, name: str) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def circuit_status(self) -> dict:
        status, body = http("GET", f"{self.url('api-gateway-v2')}/circuit-status", timeout=2)
        if status != 200 or not isinstance(body, dict):
            raise StackError(f"/circuit-status answered {status}")
        return body

    def set_fault(self, mode: str, **fields: str) -> None:
        status, body = http(
            "PUT",
            f"{self.url('recommendations-service')}/admin/fault",
            body={"mode": mode, **fields},
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        if status != 200:
            raise StackError(f"PUT /admin/fault answered {status}: {body}")

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Stack(Services):
    """product, recommendations (hanging), v1 and v2, started in dependency order."""

    def __init__(self, config: StackConfig):
        self.config = config
        self.admin_token = config.admin_token
        self.services: dict[str, Service] = {}

    def start(self) -> None:
        c = self.config
        for port in c.ports.fixed():
            if port_taken(port):
                raise StackError(
                    f"port {port} is already in use: stop whatever listens there "
                    f"(ss -ltnp 'sport = :{port}') or choose other ports."
                )
        c.log_dir.mkdir(parents=True, exist_ok=True)
        self._start("product-service", c.ports.product, {})
        self._start(
            "recommendations-service",
            c.ports.recommendations,
            {"SIMULATE_FAILURE": "true", "FAILURE_HANG": c.failure_hang, "ADMIN_TOKEN": c.admin_token},
        )
        upstreams = {
            "PRODUCT_SERVICE_URL": self.url("product-service"),
            "RECOMMENDATIONS_SERVICE_URL": self.url("recommendations-service"),
        }
        self._start("api-gateway-v1", c.ports.v1, {**upstreams, "UPSTREAM_TIMEOUT": c.v1_timeout})
        self._start("api-gateway-v2", c.ports.v2, {**upstreams, "BREAKER_CONFIG": str(c.breaker_config)})

    def _start(self, name: str, port: int, env: dict[str, str]) -> None:
        service = Service(name, self.config, port, env)
        self.services[name] = service
        service.wait_ready(self.config.ready_timeout)

    def url(self, name: str) -> str:
        return self.services[name].url

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()


@dataclass
class ClusterConfig:
    """Where make port-forward exposes the cluster's services."""

    v1: str = "http://127.0.0.1:8080"
    v2: str = "http://127.0.0.1:8090"
    recommendations: str = "http://127.0.0.1:8082"
    failure_hang: str = "30s"
    admin_token: str = "demo-admin-token"


class ClusterStack(Services):
    """The chart's services in a cluster: nothing to start, but the fault is set to the seed's
    hang first, so that every run starts broken whatever the last one healed."""

    def __init__(self, config: ClusterConfig):
        self.config = config
        self.admin_token = config.admin_token
        self.urls = {
            "api-gateway-v1": config.v1,
            "api-gateway-v2": config.v2,
            "recommendations-service": config.recommendations,
        }

    def url(self, name: str) -> str:
        return self.urls[name]

    def start(self) -> None:
        for name, url in self.urls.items():
            self._wait_ready(name, url)
        try:
            self.set_fault("hang", hang=self.config.failure_hang)
        except StackError as err:
            raise StackError(
                f"{err}: ADMIN_TOKEN must be the chart's recommendations.adminToken (make deploy sets it)"
            ) from None

    def stop(self) -> None:
        pass

    @staticmethod
    def _wait_ready(name: str, url: str, timeout: float = 15.0) -> None:
        """A forward whose pod went away fails one request, then make port-forward starts it
        again: so a few seconds of failures are expected before giving up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, _ = http("GET", f"{url}/readyz", timeout=5)
                problem = None if status == 200 else f"not ready (/readyz answered {status})"
            except OSError as err:
                problem = f"does not answer ({err}): run 'make port-forward' in another terminal"
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise StackError(f"{name} at {url} {problem}")
            time.sleep(0.5)
