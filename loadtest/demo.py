"""The embedded demo: the seed's story, measured (``make demo`` runs this).

Starts the four services on 127.0.0.1 with recommendations-service hanging, runs Locust
headless against v1 (no breaker), then v2 (breaker), then a recovery phase against v2 that
heals recommendations midway, and writes ``results/``: Locust's CSV and HTML per phase, the
ledger of every request sent (``<phase>_requests.csv``, answered or not), ``timeline.json``
(phases, heal time, breaker states), ``comparison_report.json`` and ``report.html``. A run is
written to ``results.partial/`` and moves into ``results/`` only once its report is built, so a
run that fails leaves the last good report in place.

With ``DEMO_TARGET=cluster`` nothing is started: the same phases run against the chart's
gateways in a cluster, reached by their Services (``V1_URL``, ``V2_URL``,
``RECOMMENDATIONS_URL``), and the heal goes through recommendations' admin endpoint. That is how
``make loadtest-k8s`` runs it, in a pod of the cluster (``incluster.py``), with
``LOCUST_WORKERS`` Locust workers in pods of their own.

``DEMO_CHAPTER=endpoints`` (``make demo-endpoints``, ``make loadtest-k8s-endpoints``) tells the
second chapter: one recommendations pod of three hangs; v1, v2 with ``scope: Service`` and v2
with ``scope: Endpoint``. In the cluster the scope is switched in the BreakerPolicy between the
two v2 phases, and the policy as ``kubectl get bp`` shows it goes into the results.

``DEMO_CHAPTER=overload`` (``make demo-overload``) tells the third: recommendations has a
capacity, visitors arrive at a steady rate whatever the site does (``arrivals.py``), and in
each phase recommendations slows down for a short while; v1 retries at once, v2 has every
defence, then v2 with each defence off in turn (``OverloadConfig`` says how).

Settings come from the environment (see ``Settings.from_env``); every process started here is
stopped on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import report
from ledger import LiveLedger
from stack import (
    ClusterConfig,
    ClusterStack,
    OverloadConfig,
    Services,
    Stack,
    StackConfig,
    StackError,
    env_duration,
    env_number,
    parse_duration,
)

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
# The overload chapter's open-loop visitors.
ARRIVALS = Path(__file__).resolve().parent / "arrivals.py"
# After the trigger is off, at least this long is watched (the chapter asks whether the
# failure outlives its trigger by a minute).
WATCHED_AFTER_TRIGGER = 70.0
# How long recommendations may take to work off its line between phases.
DRAIN_WITHIN = 120.0
SAMPLE_EVERY = 0.25
# How long Locust may take to send its first request (in distributed mode, until its workers
# have connected and started their users).
LOAD_WITHIN = 90.0
# Where Locust's master listens for its workers (Locust's own default).
MASTER_PORT = 5557


class DemoError(Exception):
    """Stops the demo with a message and exit status 1."""


class Interrupted(Exception):
    pass


def work_dir(results: Path) -> Path:
    """Where a run is written until its report is built."""
    return results.with_name(results.name + ".partial")


def publish(work: Path, results: Path) -> None:
    """Moves a finished run's files over the last one's (other files in results/ stay)."""
    results.mkdir(parents=True, exist_ok=True)
    for item in work.iterdir():
        target = results / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(item, target)
    work.rmdir()


@dataclass
class Settings:
    duration: float
    users: int
    spawn_rate: float
    results: Path
    # "story" (v1, v2, recovery), "endpoints" (one bad recommendations pod of three) or
    # "overload" (a short slowdown, and retries)
    chapter: str
    # one of the two: the services started here, or the cluster's
    local: StackConfig | None
    cluster: ClusterConfig | None
    overload: OverloadConfig | None = None
    # Locust's workers: 0 runs Locust as one process; N runs it as a master that waits for N
    # workers (the cluster runs, whose workers are pods of their own), on this port.
    workers: int = 0
    master_port: int = MASTER_PORT

    @property
    def work(self) -> Path:
        return work_dir(self.results)

    @property
    def failure_hang(self) -> str:
        return (self.cluster or self.local).failure_hang

    @property
    def v1_timeout(self) -> str:
        if self.overload is not None:
            return self.overload.v1_timeout
        return (self.cluster or self.local).v1_timeout

    @staticmethod
    def from_env(env: dict[str, str]) -> Settings:
        target = env.get("DEMO_TARGET", "local")
        if target not in ("local", "cluster"):
            raise DemoError(f"DEMO_TARGET={target!r}: use local or cluster")
        chapter = env.get("DEMO_CHAPTER", "story")
        if chapter not in CHAPTERS:
            raise DemoError(f"DEMO_CHAPTER={chapter!r}: use {' or '.join(CHAPTERS)}")
        results = Path(env.get("RESULTS_DIR", str(ROOT / "results"))).resolve()
        try:
            local = StackConfig.from_env(env, log_dir=work_dir(results) / "logs") if target == "local" else None
            overload = OverloadConfig.from_env(env) if chapter == "overload" else None
            if local is not None:
                local.endpoints_chapter = chapter == "endpoints"
                local.overload = overload
                local.v2_variants = {p.gateway: p.changes for p in CHAPTERS[chapter] if p.changes is not None}
            cluster = ClusterConfig.from_env(env) if target == "cluster" else None
            duration = "2m"
            if overload is not None:
                duration = f"{overload.trigger_at + overload.trigger_for + WATCHED_AFTER_TRIGGER:g}s"
            return Settings(
                duration=parse_duration(env_duration(env, "DEMO_DURATION", duration, low=4)),
                # The overload chapter's users only start visits, at the arrival rate.
                users=env_number(env, "DEMO_USERS", 10 if overload else 100),
                spawn_rate=env_number(env, "DEMO_SPAWN_RATE", 10, kind=float, low=0.1),
                results=results,
                chapter=chapter,
                local=local,
                cluster=cluster,
                overload=overload,
                workers=env_number(env, "LOCUST_WORKERS", 0, low=0),
                master_port=env_number(env, "DEMO_MASTER_PORT", MASTER_PORT),
            )
        except StackError as err:
            raise DemoError(str(err)) from None


@dataclass
class Phase:
    name: str
    label: str
    gateway: str
    heal_midway: bool = False
    # The second chapter's v2 phases: the scope v2 runs.
    scope: str | None = None
    # The third's: recommendations slows down for a while (the trigger) …
    trigger: bool = False
    # … and the keys a v2 variant changes in the overload settings (None: left out).
    changes: dict[str, str | None] | None = None


# The overload chapter's defences, each turned off by changing the keys of v2's settings
# (config/breaker-overload.yaml) that turn it on (None: the key left out).
NO_LIMIT = {"adaptiveLimitMax": None, "adaptiveLimitMin": None, "adaptiveLimitLatency": None}
# Retries stay; only their budget goes (any share of the requests, any number a second).
NO_BUDGET = {"retryBudgetPercent": "100", "minRetriesPerSecond": "10000"}
# The breaker never opens: no rate thresholds, and a failure threshold out of reach.
NO_BREAKER = {
    "failureThreshold": "1000",
    "failureRateThreshold": None,
    "slowCallDuration": None,
    "slowCallRateThreshold": None,
}

CHAPTERS = {
    # The seed's story: one hanging dependency, without and with a breaker, and a heal.
    "story": (
        Phase("v1", "v1, no breaker", "api-gateway-v1"),
        Phase("v2", "v2, circuit breaker", "api-gateway-v2"),
        Phase("recovery", "recovery on v2 (heal midway)", "api-gateway-v2", heal_midway=True),
    ),
    # One recommendations pod of three hangs: one breaker for the service, or one per endpoint.
    "endpoints": (
        Phase("v1", "v1, no breaker", "api-gateway-v1"),
        Phase("v2_service", "v2, scope Service", "api-gateway-v2", scope="Service"),
        Phase("v2_endpoint", "v2, scope Endpoint", "api-gateway-v2-endpoint", scope="Endpoint"),
    ),
    # A short slowdown, visitors who keep coming and retries: v1 as many clients retry, v2 with
    # every defence, then with each defence off in turn.
    "overload": (
        Phase("v1", "v1, 3 retries at once", "api-gateway-v1", trigger=True),
        Phase("v2", "v2, every defence", "api-gateway-v2", trigger=True),
        Phase(
            "v2_no_limit", "v2 without the adaptive limit", "api-gateway-v2-no-limit", trigger=True, changes=NO_LIMIT
        ),
        Phase(
            "v2_no_budget", "v2 without the retry budget", "api-gateway-v2-no-budget", trigger=True, changes=NO_BUDGET
        ),
        Phase("v2_no_breaker", "v2 without the breaker", "api-gateway-v2-no-breaker", trigger=True, changes=NO_BREAKER),
        # The control: v2's fallback and retries, none of the defences.
        Phase(
            "v2_none",
            "v2 with none of them",
            "api-gateway-v2-none",
            trigger=True,
            changes={**NO_LIMIT, **NO_BUDGET, **NO_BREAKER},
        ),
    ),
}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """One live line on a terminal; a line every 10 s in a log."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last_print = 0.0

    def show(self, line: str) -> None:
        if self.tty:
            sys.stdout.write("\r\033[K" + line)
            sys.stdout.flush()
        elif time.monotonic() - self.last_print >= 10:
            print(line, flush=True)
            self.last_print = time.monotonic()

    def done(self, line: str) -> None:
        if self.tty:
            sys.stdout.write("\r\033[K")
        print(line, flush=True)
        self.last_print = 0.0


class Demo:
    def __init__(self, settings: Settings):
        self.s = settings
        self.stack: Services
        if settings.cluster is not None:
            self.stack = ClusterStack(
                settings.cluster, endpoints_chapter=settings.chapter == "endpoints", overload=settings.overload
            )
        else:
            self.stack = Stack(settings.local)
        self.locust_bin = Path(sys.executable).parent / "locust"
        self.locust: subprocess.Popen | None = None
        # When the running phase's Locust was started (monotonic).
        self.launched = 0.0
        self.progress = Progress()
        self.timeline: dict = {
            "phases": [],
            "healed_at": None,
            "breaker_samples": [],
            "first_ejection": {},
            "triggers": {},
            "calls": {},
        }

    def run(self) -> dict:
        if not os.access(self.locust_bin, os.X_OK):
            raise DemoError(f"{self.locust_bin} is missing: run 'make demo', which installs Locust into .venv")
        work = self.s.work
        shutil.rmtree(work, ignore_errors=True)
        (work / "logs").mkdir(parents=True)
        o = self.s.overload
        if self.s.cluster is not None:
            which = "one recommendations pod of three" if self.s.chapter == "endpoints" else "recommendations"
            fault = f"{which} set to hang {self.s.failure_hang} per request"
            if o is not None:
                fault = (
                    f"recommendations given {o.workers} workers × {o.service_time}; {o.arrival_rate:g} visits/s, "
                    f"a {o.slowdown:g}× slowdown {o.trigger_at:g}–{o.trigger_at + o.trigger_for:g} s into each phase"
                )
            print(
                f"Against the cluster (v1 {self.s.cluster.v1}, v2 {self.s.cluster.v2}); {fault}",
                flush=True,
            )
        else:
            if self.s.chapter == "endpoints":
                what = (
                    f"three recommendations processes, the third hanging {self.s.failure_hang} per request, "
                    "and two v2 (scope Service and scope Endpoint)"
                )
            elif o is not None:
                what = (
                    f"recommendations with {o.workers} workers × {o.service_time} ({o.capacity:g} calls/s at most), "
                    f"v1 and four v2; {o.arrival_rate:g} visits/s, a {o.slowdown:g}× slowdown "
                    f"{o.trigger_at:g}–{o.trigger_at + o.trigger_for:g} s into each phase"
                )
            else:
                what = f"the four services (recommendations hangs {self.s.failure_hang} per request)"
            print(f"Starting {what}; logs in {work / 'logs'}", flush=True)
        with self.stack:
            self.timeline["settings"] = self.stack.circuit_status()["settings"]
            for phase in CHAPTERS[self.s.chapter]:
                self.run_phase(phase)
            self.timeline["transitions"] = self.stack.circuit_status()["transitions"]
            if self.s.chapter == "endpoints":
                self.timeline["per_endpoint"] = self.stack.circuit_status("api-gateway-v2-endpoint")
                self.timeline["policy"] = self.stack.policy_view()
        self.timeline["chapter"] = self.s.chapter
        if self.s.overload is not None:
            o = self.s.overload
            self.timeline["overload"] = {
                "workers": o.workers,
                "service_time": o.service_time,
                "max_waiting": o.max_waiting,
                "capacity_per_s": o.capacity,
                "arrival_rate": o.arrival_rate,
                "slowdown": o.slowdown,
                "trigger_at_s": o.trigger_at,
                "trigger_for_s": o.trigger_for,
                "give_up_s": o.give_up,
                "visitor_retries": o.visitor_retries,
                "v1_retries": o.v1_retries,
                "v2_settings": {p.name: p.changes or {} for p in CHAPTERS["overload"] if p.name.startswith("v2")},
            }
        self.timeline["run"] = {
            "target": "cluster" if self.s.cluster is not None else "local",
            "duration_s": self.s.duration,
            "users": self.s.users,
            "spawn_rate": self.s.spawn_rate,
            "failure_hang": self.s.failure_hang,
            "v1_timeout": self.s.v1_timeout,
        }
        (work / "timeline.json").write_text(json.dumps(self.timeline, indent=2))
        summary = report.build(work)
        publish(work, self.s.results)
        return summary

    def run_phase(self, phase: Phase) -> None:
        if phase.scope:
            self.stack.use_scope(phase.scope)
        if self.s.overload is not None and phase.gateway.startswith("api-gateway-v2"):
            self.stack.use_overload_settings(phase.changes or {})
        options = []
        if self.s.overload is not None:
            self.calm_recommendations(phase)
            o = self.s.overload
            options = [
                "--visit-rate", f"{o.arrival_rate / self.s.users:g}",
                "--give-up", f"{o.give_up:g}",
                "--visitor-retries", str(o.visitor_retries),
            ]  # fmt: skip
        if self.s.workers:
            # In a pod the workers come from other pods; locally, from this machine only.
            bind = "0.0.0.0" if self.s.cluster is not None else "127.0.0.1"
            options += [
                "--master", "--master-bind-host", bind, "--master-bind-port", str(self.s.master_port),
                "--expect-workers", str(self.s.workers), "--expect-workers-max-wait", "60",
            ]  # fmt: skip
        gateway = self.stack.url(phase.gateway)
        prefix = self.s.work / phase.name
        ledger = self.s.work / f"{phase.name}_requests.csv"
        # Open loop: every user starts at once and arrives at its share of the rate.
        spawn_rate = self.s.users if self.s.overload else self.s.spawn_rate
        command = [
            str(self.locust_bin),
            "-f", str(ARRIVALS if self.s.overload else LOCUSTFILE),
            "--headless",
            "--host", gateway,
            "--users", str(self.s.users),
            "--spawn-rate", f"{spawn_rate:g}",
            "--run-time", f"{round(self.s.duration)}s",
            "--csv", str(prefix),
            "--html", f"{prefix}.html",
            "--only-summary",
            "--loglevel", "WARNING",
            "--exit-code-on-error", "0",
            *options,
        ]  # fmt: skip
        # The start is when the first request is sent (watch() sets it): Locust takes a moment
        # to start its users, longer when its workers must connect first.
        record = {"name": phase.name, "label": phase.label, "host": gateway, "start": now_iso()}
        self.timeline["phases"].append(record)
        with open(self.s.work / "logs" / f"locust-{phase.name}.log", "wb") as log:
            started = time.monotonic()
            self.locust = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "DEMO_LEDGER": str(ledger)},
            )
            self.watch(phase, LiveLedger(ledger), record)
            code = self.locust.wait()
            self.locust = None
        record["end"] = now_iso()
        if code != 0:
            raise DemoError(f"Locust exited with {code} in phase {phase.name}; see {log.name}")
        self.progress.done(f"[{phase.label}] done in {clock(time.monotonic() - started)}")

    def calm_recommendations(self, phase: Phase) -> None:
        """Before an overload phase: no slowdown, and the line the last phase left worked off.
        The capacity is given again too, as the admin endpoint may have switched it since."""
        o = self.s.overload
        self.stack.set_fault("none", **o.at_normal_speed())
        deadline = time.monotonic() + DRAIN_WITHIN
        while True:
            load = self.stack.recommendations_load()
            if load.get("waiting", 0) == 0 and load.get("in_flight", 0) == 0:
                return
            if time.monotonic() > deadline:
                raise DemoError(f"recommendations still had {load} after {DRAIN_WITHIN:g} s")
            self.progress.show(f"[{phase.label}] waiting for recommendations to work off its line: {load}")
            time.sleep(0.5)

    def pull_trigger(self, phase: Phase, elapsed: float) -> None:
        """The overload chapter's trigger: recommendations slows down for a while, once."""
        o, trigger = self.s.overload, self.timeline["triggers"].setdefault(phase.name, {})
        if "on" not in trigger and elapsed >= o.trigger_at:
            self.stack.set_fault("none", slowdown=o.slowdown)
            trigger["on"] = now_iso()
            self.progress.done(f"[{phase.label}] recommendations {o.slowdown:g}× slower at {clock(elapsed)}")
        elif "on" in trigger and "off" not in trigger and elapsed >= o.trigger_at + o.trigger_for:
            self.stack.set_fault("none", slowdown=1)
            trigger["off"] = now_iso()
            self.progress.done(f"[{phase.label}] recommendations back to speed at {clock(elapsed)}")

    def load_began(self, phase: Phase, ledger: LiveLedger, record: dict) -> float | None:
        """When the phase's first request or visit was sent (monotonic; the phase's start in
        `record`), or None while nothing has been sent yet."""
        requests = ledger.refresh()
        sent = [*requests.waiting.values(), *(a.sent for a in requests.answers), *requests.visits]
        if not sent:
            if time.monotonic() - self.launched > LOAD_WITHIN:
                raise DemoError(
                    f"Locust sent no request within {LOAD_WITHIN:g} s in phase {phase.name}"
                    + (f" (are its {self.s.workers} workers running?)" if self.s.workers else "")
                )
            self.progress.show(f"[{phase.label}] waiting for Locust's first request")
            return None
        first = min(sent)
        record["start"] = datetime.fromtimestamp(first, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return time.monotonic() - (time.time() - first)

    def watch(self, phase: Phase, ledger: LiveLedger, record: dict) -> None:
        """Samples the breaker, shows progress, heals midway or pulls the trigger, until Locust
        exits; the phase's clock starts with its first request."""
        state = "?"
        started = None
        self.launched = time.monotonic()
        while self.locust.poll() is None:
            if started is None:
                started = self.load_began(phase, ledger, record)
                if started is None:
                    time.sleep(SAMPLE_EVERY)
                    continue
            elapsed = time.monotonic() - started
            if phase.trigger:
                self.pull_trigger(phase, elapsed)
                try:
                    received = self.stack.recommendations_load().get("received")
                    self.timeline["calls"].setdefault(phase.name, []).append([now_iso(), received])
                except (OSError, StackError):
                    pass
            if phase.heal_midway and self.timeline["healed_at"] is None and elapsed >= self.s.duration / 2:
                self.stack.set_fault("none")
                self.timeline["healed_at"] = now_iso()
                self.progress.done(f"[{phase.label}] recommendations healed at {clock(elapsed)}")
            gateway = phase.gateway if phase.gateway.startswith("api-gateway-v2") else "api-gateway-v2"
            try:
                status = self.stack.circuit_status(gateway)
                state = status["state"] + (
                    f", ejected: {', '.join(status['ejected'])}" if status.get("ejected") else ""
                )
                self.timeline["breaker_samples"].append([now_iso(), status["state"]])
                if status.get("ejected") and phase.name not in self.timeline["first_ejection"]:
                    self.timeline["first_ejection"][phase.name] = now_iso()
            except (OSError, StackError):
                state = "unreachable"
            requests, now = ledger.refresh(), time.time()
            oldest = min(requests.waiting.values(), default=now)
            left = max(0.0, self.s.duration - elapsed)
            self.progress.show(
                f"[{phase.label}] {clock(elapsed)} / {clock(self.s.duration)} ({clock(left)} left)  "
                f"{ledger.answered_per_s(now):5.1f} answers/s  {len(requests.waiting):3d} waiting "
                f"(longest {now - oldest:4.1f} s)  v2 breaker: {state}"
            )
            time.sleep(SAMPLE_EVERY)

    def stop(self) -> None:
        if self.locust is not None and self.locust.poll() is None:
            self.locust.terminate()
            try:
                self.locust.wait(10)
            except subprocess.TimeoutExpired:
                self.locust.kill()
        self.stack.stop()


def interrupt(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def main() -> int:
    try:
        settings = Settings.from_env(dict(os.environ))
    except DemoError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    demo = Demo(settings)
    try:
        summary = demo.run()
    except Interrupted as sig:
        print(f"\ndemo: stopped by {sig}; all services stopped", file=sys.stderr)
        return 130
    except (DemoError, StackError, report.ReportError) as err:
        print(f"\ndemo: {err}", file=sys.stderr)
        if settings.work.is_dir():
            kept = (settings.results / "report.html").is_file()
            print(
                f"demo: this run's files and logs are in {settings.work}"
                + (f"; the last complete report is still in {settings.results}" if kept else ""),
                file=sys.stderr,
            )
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.stop()
    print()
    print(report.text_table(summary))
    print(f"\nReport: {settings.results / 'report.html'}")
    print(f"Data:   {settings.results / 'comparison_report.json'}")
    if settings.chapter == "story" and summary.recovery.closed_at is None:
        print("demo: the circuit did not close after the heal", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
