"""The four services: as local processes on 127.0.0.1 (``Stack``: the demo, ``make bench``,
the demo's tests, and ``make run``, which is this file run as a program), or already running
in a cluster and reached by their Services from a pod there (``ClusterStack``, which
``incluster.py`` runs).

The one place for the local defaults and the environment that changes them
(``StackConfig.from_env``, ``ClusterConfig.from_env``).

Standard library only. Each service runs in its own session, so a Ctrl-C at the terminal
reaches the launcher alone and it stops its children in order.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("product-service", "recommendations-service", "api-gateway-v1", "api-gateway-v2")

# The services' grammar, duration_text::PATTERN in libs/duration-text (a test checks they are
# the same): a duration accepted here is one every service accepts too.
DURATION_PATTERN = "^([0-9]+(ns|us|ms|s|m|h))+$"
DURATION_SCALE = {"ns": 1e-9, "us": 1e-6, "ms": 0.001, "s": 1, "m": 60, "h": 3600}


class StackError(Exception):
    """A service could not be started or did not become ready, or the environment asks for
    something impossible; the message says what to do."""


def parse_duration(text: str) -> float:
    """'90s', '2m', '1m30s', '500ms' -> seconds; a bare number has no unit and is refused."""
    text = text.strip()
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration (whole numbers with units: 90s, 2m, 1m30s, 500ms)")
    return sum(int(n) * DURATION_SCALE[u] for n, u in re.findall(r"([0-9]+)(ns|us|ms|s|m|h)", text))


def env_duration(env: dict[str, str], key: str, default: str, low: float) -> str:
    """The duration text as given (the services read it), checked first so a typo fails before
    anything starts."""
    raw = env.get(key, default)
    try:
        seconds = parse_duration(raw)
    except ValueError as err:
        raise StackError(f"{key}: {err}") from None
    if seconds < low:
        raise StackError(f"{key}={raw!r} must be at least {low:g}s")
    return raw


def env_number(env: dict[str, str], key: str, default: object, kind=int, low: float = 1):
    raw = env.get(key, str(default))
    try:
        value = kind(raw)
    except ValueError:
        raise StackError(f"{key}={raw!r} is not a number") from None
    if value < low:
        raise StackError(f"{key}={raw!r} must be at least {low:g}")
    return value


@dataclass
class Ports:
    """The seed's ports by default; 0 lets the kernel pick (the tests use that)."""

    v1: int = 8080
    product: int = 8081
    recommendations: int = 8082
    v2: int = 8090
    # v2's status port: the whole /circuit-status and its waits (the other v2s get one the kernel picks).
    v2_status: int = 8091

    def fixed(self) -> list[int]:
        return [p for p in (self.v1, self.product, self.recommendations, self.v2, self.v2_status) if p]


@dataclass
class OverloadConfig:
    """The overload chapter: recommendations' capacity and its trigger, the visitors, and the
    retries v1 makes."""

    workers: int = 4
    service_time: str = "50ms"
    # The line's bound (at 4 × 50 ms, 5 s of waiting).
    max_waiting: int = 400
    slowdown: float = 5.0
    # Seconds into each phase the slowdown starts, and how long it lasts.
    trigger_at: float = 30.0
    trigger_for: float = 10.0
    # Visits a second, as a share of recommendations' capacity.
    load_share: float = 0.7
    give_up: float = 3.0
    visitor_retries: int = 1
    v1_retries: int = 3
    v1_timeout: str = "1s"
    settings: Path = ROOT / "config/breaker-overload.yaml"

    @property
    def capacity(self) -> float:
        """Calls a second recommendations answers at most, without the slowdown."""
        return self.workers / parse_duration(self.service_time)

    def at_normal_speed(self) -> dict[str, object]:
        """The `/admin/fault` fields that give recommendations this capacity, no slowdown."""
        return {
            "workers": self.workers,
            "serviceTime": self.service_time,
            "maxWaiting": self.max_waiting,
            "slowdown": 1,
        }

    @property
    def arrival_rate(self) -> float:
        return round(self.load_share * self.capacity, 2)

    @staticmethod
    def from_env(env: dict[str, str]) -> OverloadConfig:
        """OVERLOAD_WORKERS, OVERLOAD_SERVICE_TIME, OVERLOAD_MAX_WAITING, OVERLOAD_SLOWDOWN,
        TRIGGER_AT, TRIGGER_FOR, LOAD_SHARE, GIVE_UP, VISITOR_RETRIES, V1_RETRIES,
        V1_UPSTREAM_TIMEOUT and BREAKER_OVERLOAD_CONFIG, each defaulting as above."""
        d = OverloadConfig()
        settings = Path(env.get("BREAKER_OVERLOAD_CONFIG", str(d.settings)))
        if not settings.is_file():
            raise StackError(f"BREAKER_OVERLOAD_CONFIG={settings} is not a file")
        return OverloadConfig(
            workers=env_number(env, "OVERLOAD_WORKERS", d.workers),
            service_time=env_duration(env, "OVERLOAD_SERVICE_TIME", d.service_time, low=0.001),
            max_waiting=env_number(env, "OVERLOAD_MAX_WAITING", d.max_waiting, low=0),
            slowdown=env_number(env, "OVERLOAD_SLOWDOWN", d.slowdown, kind=float),
            trigger_at=parse_duration(env_duration(env, "TRIGGER_AT", f"{d.trigger_at:g}s", low=1)),
            trigger_for=parse_duration(env_duration(env, "TRIGGER_FOR", f"{d.trigger_for:g}s", low=1)),
            load_share=env_number(env, "LOAD_SHARE", d.load_share, kind=float, low=0.01),
            give_up=parse_duration(env_duration(env, "GIVE_UP", f"{d.give_up:g}s", low=0.1)),
            visitor_retries=env_number(env, "VISITOR_RETRIES", d.visitor_retries, low=0),
            v1_retries=env_number(env, "V1_RETRIES", d.v1_retries, low=0),
            v1_timeout=env_duration(env, "V1_UPSTREAM_TIMEOUT", d.v1_timeout, low=0.001),
            settings=settings.resolve(),
        )


@dataclass
class StackConfig:
    bin_dir: Path
    log_dir: Path
    ports: Ports = field(default_factory=Ports)
    failure_hang: str = "30s"
    v1_timeout: str = "30s"
    breaker_config: Path = ROOT / "config/breaker.yaml"
    # namespace/name of a ConfigMap to read v2's settings from instead (KUBECONFIG says where)
    breaker_configmap: str | None = None
    # A new one each run unless given: nothing anyone could read elsewhere opens the endpoint.
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    ready_timeout: float = 15.0
    # The second chapter: three recommendations processes of which the last hangs, v1 and v2
    # spreading calls over them at random call by call, and a second v2 with scope Endpoint.
    endpoints_chapter: bool = False
    # The third: recommendations with a capacity, v1 retrying, and one v2 per settings
    # variant (its process name → the keys it changes in the overload settings).
    overload: OverloadConfig | None = None
    v2_variants: dict[str, dict[str, str | None]] = field(default_factory=dict)

    @staticmethod
    def from_env(env: dict[str, str], log_dir: Path) -> StackConfig:
        """BIN, the *_PORT, FAILURE_HANG, V1_UPSTREAM_TIMEOUT, BREAKER_CONFIG or
        BREAKER_CONFIGMAP and ADMIN_TOKEN, each defaulting as above."""
        defaults = StackConfig(bin_dir=ROOT / "target/release", log_dir=log_dir)
        ports = Ports()
        config = Path(env.get("BREAKER_CONFIG", str(defaults.breaker_config)))
        configmap = env.get("BREAKER_CONFIGMAP") or None
        if configmap is None and not config.is_file():
            raise StackError(f"BREAKER_CONFIG={config} is not a file")
        return StackConfig(
            bin_dir=Path(env.get("BIN", str(defaults.bin_dir))).resolve(),
            log_dir=log_dir,
            ports=Ports(
                v1=env_number(env, "V1_PORT", ports.v1, low=0),
                product=env_number(env, "PRODUCT_PORT", ports.product, low=0),
                recommendations=env_number(env, "RECOMMENDATIONS_PORT", ports.recommendations, low=0),
                v2=env_number(env, "V2_PORT", ports.v2, low=0),
                v2_status=env_number(env, "V2_STATUS_PORT", ports.v2_status, low=0),
            ),
            failure_hang=env_duration(env, "FAILURE_HANG", defaults.failure_hang, low=0.001),
            v1_timeout=env_duration(env, "V1_UPSTREAM_TIMEOUT", defaults.v1_timeout, low=0.001),
            breaker_config=config.resolve(),
            breaker_configmap=configmap,
            admin_token=env.get("ADMIN_TOKEN", defaults.admin_token),
        )


# The chart's name, and its rule for object names (cbd.objectName in templates/_helpers.tpl).
CHART_NAME = "circuit-breaker-demo"


def object_name(release: str, name: str) -> str:
    """The chart's names: plain for the release named like the chart, else prefixed."""
    return name if release == CHART_NAME else f"{release}-{name}"[:63].rstrip("-")


def kubectl(
    binary: str, namespace: str, *args: str, input: str | None = None, timeout: float = 30, check: bool = True
) -> str:
    """Runs kubectl in `namespace`; its output. StackError when it cannot run, or (with check)
    when it fails."""
    try:
        done = subprocess.run(
            [binary, "--namespace", namespace, *args],
            input=input, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        raise StackError(f"kubectl {' '.join(args)}: {err} (KUBECTL={binary})") from None
    if check and done.returncode != 0:
        raise StackError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


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
    def __init__(self, name: str, config: StackConfig, port: int, env: dict[str, str], binary: str | None = None):
        self.name = name
        self.log_path = config.log_dir / f"{name}.log"
        binary = config.bin_dir / (binary or name)
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
        self.has_status_port = "STATUS_PORT" in env
        self.process = subprocess.Popen(
            [str(binary)],
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.port = 0
        self.status_port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def status_url(self) -> str:
        """v2's status port: the whole /circuit-status and its waits."""
        if not self.status_port:
            raise StackError(f"{self.name} has no status port")
        return f"http://{LOOPBACK}:{self.status_port}"

    def wait_ready(self, timeout: float) -> None:
        """Learns the port (and v2's status port) from the service's log lines, then waits for
        /readyz."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(
                    f"{self.name} exited with status {self.process.returncode}; see {self.log_path}:\n"
                    + self.log_tail()
                )
            if not self.port:
                self.port = self._listening_port("listening")
            if self.has_status_port and not self.status_port:
                self.status_port = self._listening_port("side listener listening")
            if self.port and (self.status_port or not self.has_status_port):
                try:
                    if http("GET", f"{self.url}/readyz", timeout=1)[0] == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise StackError(f"{self.name} did not become ready within {timeout:.0f} s; see {self.log_path}")

    def _listening_port(self, message: str) -> int:
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == message and isinstance(entry.get("addr"), str):
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


def with_scope(settings: str, scope: str) -> str:
    """The settings document with this scope in place of any scope it gave."""
    return with_settings(settings, {"scope": scope})


def settings_file(path: Path) -> dict[str, str]:
    """The `key: value` lines of a flat settings file (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(":")
            pairs[key.strip()] = value.strip()
    return pairs


def typed(value: str) -> object:
    """A settings value as JSON has it: a whole number, a number, or the text."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def with_settings(settings: str, changes: dict[str, str | None]) -> str:
    """The settings document with these keys given these values (None: left out)."""
    kept = [line for line in settings.splitlines() if line.split(":", 1)[0].strip() not in changes]
    return "\n".join([*kept, *(f"{key}: {value}" for key, value in changes.items() if value is not None), ""])


class Services:
    """What the demo asks of the running services, wherever they run."""

    admin_token: str

    def url(self, name: str) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def use_scope(self, scope: str) -> None:
        """Makes the v2 of the next phase run this scope. Locally each v2 process runs one
        scope from its start (api-gateway-v2: Service, api-gateway-v2-endpoint: Endpoint)."""

    def use_overload_settings(self, changes: dict[str, str | None]) -> None:
        """Makes the v2 of the next phase run the overload settings with these changes. Locally
        each variant is a v2 process of its own, started with its settings."""

    def policy_view(self) -> dict | None:
        """The BreakerPolicy as kubectl shows it, where there is one."""
        return None

    def circuit_status(self, gateway: str = "api-gateway-v2") -> dict:
        status, body = http("GET", f"{self.url(gateway)}/circuit-status", timeout=2)
        if status != 200 or not isinstance(body, dict):
            raise StackError(f"/circuit-status answered {status}")
        return body

    def recommendations_load(self) -> dict[str, float]:
        """recommendations' counters: calls received, waiting for a worker, in flight."""
        status, text = http("GET", f"{self.url('recommendations-service')}/metrics", timeout=2)
        if status != 200 or not isinstance(text, str):
            raise StackError(f"recommendations /metrics answered {status}")
        wanted = {
            "recommendation_requests_received_total": "received",
            "recommendation_requests_waiting": "waiting",
            "recommendation_requests_in_flight": "in_flight",
        }
        load = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in wanted:
                load[wanted[name]] = float(value)
        return load

    def set_fault(self, mode: str, at: str | None = None, **fields: object) -> dict:
        """Switches recommendations' fault (of the one at base URL `at`, else of whichever its
        URL reaches); its answer: the fault, and the pod that took it."""
        status, body = http(
            "PUT",
            f"{at or self.url('recommendations-service')}/admin/fault",
            body={"mode": mode, **fields},
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        if status != 200:
            raise StackError(f"PUT /admin/fault answered {status}: {body}")
        return body

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
        hanging = {"SIMULATE_FAILURE": "true", "FAILURE_HANG": c.failure_hang, "ADMIN_TOKEN": c.admin_token}
        upstreams = {"PRODUCT_SERVICE_URL": self.url("product-service")}
        if c.endpoints_chapter:
            # Two healthy, the last hanging: one bad pod of three.
            for n, (port, fault) in enumerate(((c.ports.recommendations, {}), (0, {}), (0, hanging)), 1):
                name = f"recommendations-{n}"
                self._start(name, port, {"ADMIN_TOKEN": c.admin_token, **fault}, binary="recommendations-service")
            self.services["recommendations-service"] = self.services["recommendations-1"]
            upstreams["RECOMMENDATIONS_ENDPOINTS"] = ",".join(
                f"recommendations-{n}={self.url(f'recommendations-{n}')}" for n in (1, 2, 3)
            )
        elif c.overload is not None:
            o = c.overload
            capacity = {
                "CAPACITY_WORKERS": str(o.workers),
                "SERVICE_TIME": o.service_time,
                "MAX_WAITING": str(o.max_waiting),
                "ADMIN_TOKEN": c.admin_token,
            }
            self._start("recommendations-service", c.ports.recommendations, capacity)
        else:
            self._start("recommendations-service", c.ports.recommendations, hanging)
        upstreams["RECOMMENDATIONS_SERVICE_URL"] = self.url("recommendations-service")
        v1 = {"UPSTREAM_TIMEOUT": c.v1_timeout}
        if c.overload is not None:
            v1 = {"UPSTREAM_TIMEOUT": c.overload.v1_timeout, "UPSTREAM_RETRIES": str(c.overload.v1_retries)}
        self._start("api-gateway-v1", c.ports.v1, {**upstreams, **v1})
        if c.breaker_configmap:
            settings = {"BREAKER_CONFIGMAP": c.breaker_configmap}
            if "KUBECONFIG" in os.environ:
                settings["KUBECONFIG"] = os.environ["KUBECONFIG"]
        elif c.endpoints_chapter:
            settings = {"BREAKER_CONFIG": str(self._scoped_settings("Service"))}
        elif c.overload is not None:
            settings = {"BREAKER_CONFIG": str(c.overload.settings)}
        else:
            settings = {"BREAKER_CONFIG": str(c.breaker_config)}
        self._start("api-gateway-v2", c.ports.v2, {**upstreams, **settings})
        if c.endpoints_chapter:
            self._start(
                "api-gateway-v2-endpoint",
                0,
                {**upstreams, "BREAKER_CONFIG": str(self._scoped_settings("Endpoint"))},
                binary="api-gateway-v2",
            )

        for name, changes in c.v2_variants.items():
            path = c.log_dir / f"breaker-{name}.yaml"
            path.write_text(with_settings(c.overload.settings.read_text(), changes))
            self._start(name, 0, {**upstreams, "BREAKER_CONFIG": str(path)}, binary="api-gateway-v2")

    def _scoped_settings(self, scope: str) -> Path:
        path = self.config.log_dir / f"breaker-scope-{scope.lower()}.yaml"
        path.write_text(with_scope(self.config.breaker_config.read_text(), scope))
        return path

    def _start(self, name: str, port: int, env: dict[str, str], binary: str | None = None) -> None:
        if (binary or name) == "api-gateway-v2":
            status_port = self.config.ports.v2_status if name == "api-gateway-v2" else 0
            env = {"STATUS_PORT": str(status_port), **env}
        service = Service(name, self.config, port, env, binary)
        self.services[name] = service
        service.wait_ready(self.config.ready_timeout)

    def url(self, name: str) -> str:
        return self.services[name].url

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()


@dataclass
class ClusterConfig:
    """Where the cluster's services answer (their Services, from the load pods of
    loadtest/incluster.py), and the policy the demo steers."""

    v1: str = "http://127.0.0.1:8080"
    v2: str = "http://127.0.0.1:8090"
    recommendations: str = "http://127.0.0.1:8082"
    failure_hang: str = "30s"
    # What the chart gives v1 (apiGatewayV1.upstreamTimeout); only reported.
    v1_timeout: str = "30s"
    # The chart's generated token (make loadtest-k8s reads it from its Secret).
    admin_token: str = ""
    # The second chapter switches v2's scope through this BreakerPolicy (the chart's).
    kubectl: str = "kubectl"
    namespace: str = "demo"
    policy: str = "api-gateway-v2"

    @staticmethod
    def from_env(env: dict[str, str]) -> ClusterConfig:
        """V1_URL, V2_URL, RECOMMENDATIONS_URL, FAILURE_HANG, V1_UPSTREAM_TIMEOUT, ADMIN_TOKEN,
        KUBECTL, NAMESPACE, BREAKER_POLICY."""
        d = ClusterConfig()
        return ClusterConfig(
            v1=env.get("V1_URL", d.v1),
            v2=env.get("V2_URL", d.v2),
            recommendations=env.get("RECOMMENDATIONS_URL", d.recommendations),
            failure_hang=env_duration(env, "FAILURE_HANG", d.failure_hang, low=0.001),
            v1_timeout=env_duration(env, "V1_UPSTREAM_TIMEOUT", d.v1_timeout, low=0.001),
            admin_token=env.get("ADMIN_TOKEN", d.admin_token),
            kubectl=env.get("KUBECTL") or d.kubectl,
            namespace=env.get("NAMESPACE") or d.namespace,
            policy=env.get("BREAKER_POLICY") or d.policy,
        )


class ClusterStack(Services):
    """The chart's services in a cluster: nothing to start, but the fault is set to the seed's
    hang first, so that every run starts broken whatever the last one healed. In the second
    chapter (the chart's `recommendations.replicas=3` and `faultMode=none`) the hang goes to
    one of the three pods v2 calls, by its own address: one bad pod of three.

    The second chapter's two v2 phases run on the same v2, the scope switched between them in
    the BreakerPolicy; the scope the policy had is put back at the end."""

    def __init__(self, config: ClusterConfig, endpoints_chapter: bool = False, overload: OverloadConfig | None = None):
        self.config = config
        self.admin_token = config.admin_token
        self.endpoints_chapter = endpoints_chapter
        self.overload = overload
        self.settings_before: dict | None = None
        self.urls = {
            "api-gateway-v1": config.v1,
            "api-gateway-v2": config.v2,
            "api-gateway-v2-endpoint": config.v2,
            "recommendations-service": config.recommendations,
            # The overload chapter's v2 variants: the same v2, its policy's settings switched.
            "api-gateway-v2-no-limit": config.v2,
            "api-gateway-v2-no-budget": config.v2,
            "api-gateway-v2-no-breaker": config.v2,
            "api-gateway-v2-none": config.v2,
        }
        self.scope_before: str | None = None
        self.scope_changed = False

    def url(self, name: str) -> str:
        return self.urls[name]

    def start(self) -> None:
        for name in ("api-gateway-v1", "api-gateway-v2", "recommendations-service"):
            self._wait_ready(name, self.urls[name])
        if self.endpoints_chapter or self.overload is not None:
            self._one_v2_replica()
        if self.endpoints_chapter:
            self.scope_before = self.policy()["spec"].get("settings", {}).get("scope")
            self._hang_one_of_three()
        elif self.overload is not None:
            self._give_recommendations_capacity()
        else:
            self._hang()

    def _give_recommendations_capacity(self) -> None:
        """The overload chapter's recommendations: one pod (whose counter the chapter reads),
        given its capacity through its own admin endpoint; v2's policy settings are kept to be
        put back."""
        (only,) = self._v2_endpoints(
            lambda n: n == 1,
            "the chapter reads one pod's counters (make deploy HELM_ARGS='--set recommendations.replicas=1 "
            "--set gatewayV1.upstreamRetries=3 --set gatewayV1.upstreamTimeout=1s')",
        )
        self._set_fault_of(only, "none", **self.overload.at_normal_speed())
        self.settings_before = self.policy()["spec"].get("settings", {})

    def _v2_endpoints(self, enough, needed: str, timeout: float = 60.0) -> list[dict]:
        """The recommendations pods v2 calls, once `enough` of their count is true: right after
        a rollout v2 may still list a pod that is going, or not yet the new ones."""
        deadline = time.monotonic() + timeout
        while not enough(len(endpoints := self.circuit_status()["endpoints"])):
            if time.monotonic() > deadline:
                raise StackError(f"v2 calls {', '.join(e['name'] for e in endpoints) or 'nothing'}: {needed}")
            time.sleep(1)
        return endpoints

    def _set_fault_of(self, endpoint: dict, mode: str, **fields) -> None:
        """Sets the fault of the one pod `endpoint` names, through its own address (its Service
        would pick any pod, a terminating one too), which the API says: v2's public answer
        names its endpoints without their addresses."""
        ip = self.kubectl("get", "pod", endpoint["name"], "-o", "jsonpath={.status.podIP}").strip()
        if not ip:
            raise StackError(f"pod {endpoint['name']} has no address yet")
        address = f"http://[{ip}]:8082" if ":" in ip else f"http://{ip}:8082"
        try:
            pod = self.set_fault(mode, at=address, **fields).get("pod")
        except StackError as err:
            raise StackError(
                f"{err}: ADMIN_TOKEN must be the token in the chart's Secret recommendations-admin"
            ) from None
        if pod is None:
            raise StackError("recommendations does not say its pod (POD_NAME): deploy this version's chart")
        if pod != endpoint["name"]:
            raise StackError(f"{address} answered as {pod}, not {endpoint['name']}")

    def _one_v2_replica(self) -> None:
        """The second and third chapters read v2's breaker and counters from the one replica
        that answers: there must be only one (the policy's status lists them)."""
        # Right after a scale-down the status still lists the replica that is going.
        deadline = time.monotonic() + 60
        while len(replicas := self.policy().get("status", {}).get("replicas", [])) > 1:
            if time.monotonic() > deadline:
                raise StackError(
                    f"v2 has {len(replicas)} replicas; this chapter reads one replica's breaker "
                    "(make deploy HELM_ARGS='--set gatewayV2.replicas=1 ...', as docs/chapter-2-one-bad-pod.md says)"
                )
            time.sleep(1)

    def _hang(self) -> dict:
        try:
            return self.set_fault("hang", hang=self.config.failure_hang)
        except StackError as err:
            raise StackError(
                f"{err}: ADMIN_TOKEN must be the token in the chart's Secret recommendations-admin "
                "(make loadtest-k8s reads it from there)"
            ) from None

    def _hang_one_of_three(self) -> None:
        """Hangs one of the three pods v2 calls, once v2 calls three."""
        endpoints = self._v2_endpoints(
            lambda n: n >= 3,
            "the chapter needs three recommendations pods (make deploy HELM_ARGS='--set recommendations.replicas=3 "
            "--set recommendations.faultMode=none --set gatewayV2.replicas=1')",
        )
        self._set_fault_of(endpoints[-1], "hang", hang=self.config.failure_hang)

    def use_scope(self, scope: str) -> None:
        """Sets the policy's scope and waits until v2 runs it."""
        self._patch_scope(scope)
        self.scope_changed = True
        deadline = time.monotonic() + 30
        while self.circuit_status()["scope"] != scope:
            if time.monotonic() > deadline:
                raise StackError(
                    f"v2 did not take scope {scope} from BreakerPolicy {self.config.policy} within 30 s: "
                    "is breaker-controller running?"
                )
            time.sleep(0.2)

    def use_overload_settings(self, changes: dict[str, str | None]) -> None:
        """Sets the policy's settings to the overload chapter's with these changes, and waits
        until v2 runs them."""
        settings = {k: v for k, v in {**settings_file(self.overload.settings), **changes}.items() if v is not None}
        wire = {k: typed(v) for k, v in settings.items()}
        self._replace_settings(wire)
        deadline = time.monotonic() + 30
        while True:
            running = self.circuit_status()["settings"]
            if all(running.get(k) == v or str(running.get(k)) == str(v) for k, v in wire.items()):
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"v2 did not take the settings from BreakerPolicy {self.config.policy} within 30 s "
                    f"(it runs {running}): is breaker-controller running?"
                )
            time.sleep(0.2)

    def _replace_settings(self, settings: dict) -> None:
        patch = json.dumps([{"op": "replace", "path": "/spec/settings", "value": settings}])
        self.kubectl("patch", "breakerpolicy", self.config.policy, "--type", "json", "-p", patch)

    def policy(self) -> dict:
        return json.loads(self.kubectl("get", "breakerpolicy", self.config.policy, "-o", "json"))

    def policy_view(self) -> dict:
        """The policy as kubectl shows it: its table, and the status the controller wrote."""
        return {
            "name": self.config.policy,
            "namespace": self.config.namespace,
            "table": self.kubectl("get", "breakerpolicy", self.config.policy, "-o", "wide"),
            "status": self.policy().get("status", {}),
        }

    def kubectl(self, *args: str) -> str:
        return kubectl(self.config.kubectl, self.config.namespace, *args)

    def _patch_scope(self, scope: str | None) -> None:
        # A merge patch: null removes the key, and the default applies again.
        patch = json.dumps({"spec": {"settings": {"scope": scope}}})
        self.kubectl("patch", "breakerpolicy", self.config.policy, "--type", "merge", "-p", patch)

    def stop(self) -> None:
        if self.settings_before is not None:
            settings, self.settings_before = self.settings_before, None
            try:
                self._replace_settings(settings)
                self.set_fault("none", workers=0, slowdown=1)
            except (OSError, StackError) as err:
                print(f"demo: could not put the policy's settings or recommendations back: {err}", file=sys.stderr)
        if self.scope_changed:
            self.scope_changed = False
            try:
                self._patch_scope(self.scope_before)
            except StackError as err:
                print(f"demo: could not put the policy's scope back: {err}", file=sys.stderr)

    @staticmethod
    def _wait_ready(name: str, url: str, timeout: float = 15.0) -> None:
        """Just after a rollout a Service may have no ready pod for a moment: a few seconds of
        failures are expected before giving up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, _ = http("GET", f"{url}/readyz", timeout=5)
                problem = None if status == 200 else f"not ready (/readyz answered {status})"
            except OSError as err:
                problem = f"does not answer ({err})"
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise StackError(f"{name} at {url} {problem}")
            time.sleep(0.5)


def run_until_stopped(env: dict[str, str]) -> int:
    """make run: the four services on their ports until Ctrl-C, or until one exits."""
    config = StackConfig.from_env(env, log_dir=Path(env.get("RUN_LOGS", str(ROOT / ".run/logs"))))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    # Ctrl-C stops everything, also when started from a shell that ignores SIGINT for its
    # background jobs (Python then leaves it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with Stack(config) as stack:
        settings = (
            f"ConfigMap {config.breaker_configmap} (a BreakerPolicy writes it)"
            if config.breaker_configmap
            else f"edit {config.breaker_config} (hot-reloaded)"
        )
        print(
            f"All four services are up; recommendations-service hangs for {config.failure_hang} per request.\n"
            f"  v1 (no breaker):  time curl -s {stack.url('api-gateway-v1')}/product-details/1\n"
            f"  v2 (breaker):     curl -s {stack.url('api-gateway-v2')}/product-details/1\n"
            f"  breaker state:    curl -s {stack.url('api-gateway-v2')}/circuit-status\n"
            f"  ... and whole:    curl -s {stack.services['api-gateway-v2'].status_url}/circuit-status\n"
            f"  products:         curl -s {stack.url('product-service')}/products\n"
            f"  heal:             curl -s -X PUT -H 'Authorization: Bearer {config.admin_token}' \\\n"
            f"                      -H 'Content-Type: application/json' -d '{{\"mode\":\"none\"}}' \\\n"
            f"                      {stack.url('recommendations-service')}/admin/fault\n"
            f"  breaker settings: {settings}\n"
            f"Logs: {config.log_dir}/. Ctrl-C stops everything.",
            flush=True,
        )
        try:
            while not stop:
                exited = [s for s in stack.services.values() if s.process.poll() is not None]
                if exited:
                    print(f"{exited[0].name} exited; see {exited[0].log_path}", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        print("\nstopping the services")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(run_until_stopped(dict(os.environ)))
    except StackError as err:
        print(f"make run: {err}", file=sys.stderr)
        sys.exit(2)
