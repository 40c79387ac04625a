"""``make loadtest-k8s*``: a chapter of the demo run from inside the cluster.

Load that crosses ``kubectl port-forward`` is measured through it: the forward loses a few
requests, holds others and delivers them in bursts. So the measured runs start their load in
the cluster, as Locust users scale past one machine: one pod runs the demo (``demo.py`` with
``DEMO_TARGET=cluster``), whose Locust is the master, and ``LOCUST_WORKERS`` pods run Locust's
workers. They reach the gateways and recommendations by their Services; the workers send their
ledger lines to the master (``asking.py``), so the results are the local run's files, and the
report is the one ``make demo`` writes. When the demo ends its results are copied to
``RESULTS_DIR`` (default results/) and the pods are deleted, also after a failure or Ctrl-C.

The pods run the load image (``LOAD_IMAGE``, scripts/load-image.sh) as the release's loadtest
ServiceAccount, under its NetworkPolicies (the chart's ``loadtest.enabled``, which make deploy
sets). The demo's settings (``DEMO_*``, the overload chapter's, ``FAILURE_HANG``, ...) are
passed on from this environment; ``RELEASE`` and ``NAMESPACE`` say which release.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from demo import MASTER_PORT, publish
from stack import CHART_NAME, StackError, kubectl, object_name

ROOT = Path(__file__).resolve().parent.parent
# The demo's settings a run takes from this environment into its pod.
PASSED_ON = (
    "DEMO_CHAPTER", "DEMO_DURATION", "DEMO_USERS", "DEMO_SPAWN_RATE", "FAILURE_HANG", "V1_UPSTREAM_TIMEOUT",
    "OVERLOAD_WORKERS", "OVERLOAD_SERVICE_TIME", "OVERLOAD_MAX_WAITING", "OVERLOAD_SLOWDOWN", "TRIGGER_AT",
    "TRIGGER_FOR", "LOAD_SHARE", "GIVE_UP", "VISITOR_RETRIES", "V1_RETRIES", "LOCUST_REQUEST_TIMEOUT",
)  # fmt: skip
# Where the demo writes in its pod, and the line its pod prints when the demo has ended.
RESULTS = "/results/out"
ENDED = "loadtest-k8s: the demo exited with "
# The pod keeps its results this long after the demo ends, for this script to copy.
KEEP_FOR_S = 3600
SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def locustfile_of(chapter: str) -> str:
    return "loadtest/arrivals.py" if chapter == "overload" else "loadtest/locustfile.py"


def worker_command(locustfile: str, master: str, port: int) -> list[str]:
    """A Locust worker of `master`: it quits with each phase's master and starts again for the
    next."""
    loop = (
        f"while :; do locust -f {locustfile} --worker --master-host {master} --master-port {port} "
        "--loglevel WARNING; sleep 1; done"
    )
    return ["/bin/sh", "-c", loop]


class RunError(Exception):
    pass


class Interrupted(Exception):
    pass


class Run:
    def __init__(self, env: dict[str, str]):
        self.kubectl_bin = env.get("KUBECTL") or "kubectl"
        self.namespace = env.get("NAMESPACE") or "demo"
        self.release = env.get("RELEASE") or CHART_NAME
        self.image = env.get("LOAD_IMAGE") or ""
        if not self.image:
            raise RunError("LOAD_IMAGE is not set (make loadtest-k8s builds it and sets it)")
        workers = env.get("LOCUST_WORKERS", "2")
        self.workers = int(workers) if workers.isdigit() else 0
        if not 1 <= self.workers <= 20:
            raise RunError(f"LOCUST_WORKERS={env.get('LOCUST_WORKERS')!r}: use a whole number from 1 to 20")
        self.chapter = env.get("DEMO_CHAPTER", "story")
        self.results = Path(env.get("RESULTS_DIR", str(ROOT / "results"))).resolve()
        self.passed_on = {k: env[k] for k in PASSED_ON if k in env}
        self.driver = object_name(self.release, "locust-master")
        self.labels = {
            "app.kubernetes.io/part-of": CHART_NAME,
            "app.kubernetes.io/instance": self.release,
            "app.kubernetes.io/component": "loadtest",
        }

    def name(self, component: str) -> str:
        return object_name(self.release, component)

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60, check: bool = True) -> str:
        try:
            return kubectl(self.kubectl_bin, self.namespace, *args, input=input, timeout=timeout, check=check)
        except StackError as err:
            raise RunError(str(err)) from None

    # ---- the objects of one run ----------------------------------------------------------

    def container(self, name: str, command: list[str], env: dict[str, str]) -> dict:
        return {
            "name": name,
            "image": self.image,
            "imagePullPolicy": "IfNotPresent",
            "command": command,
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "securityContext": SECURITY,
            "volumeMounts": [{"name": "results", "mountPath": "/results"}, {"name": "tmp", "mountPath": "/tmp"}],
        }

    def pod_spec(self, container: dict, restart: str) -> dict:
        return {
            "serviceAccountName": self.name("loadtest"),
            "restartPolicy": restart,
            # No Service variables: Locust reads LOCUST_* from its environment, and the master's
            # Service would set LOCUST_MASTER_PORT to a URL.
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [{"name": "results", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
        }

    def objects(self) -> list[dict]:
        def service(name: str, port: int) -> str:
            return f"http://{self.name(name)}:{port}"

        driver_env = {
            **self.passed_on,
            "DEMO_TARGET": "cluster",
            "V1_URL": service("api-gateway-v1", 8080),
            "V2_URL": service("api-gateway-v2", 8090),
            "RECOMMENDATIONS_URL": service("recommendations-service", 8082),
            "NAMESPACE": self.namespace,
            "BREAKER_POLICY": self.name("api-gateway-v2"),
            "KUBECTL": "kubectl",
            "LOCUST_WORKERS": str(self.workers),
            "RESULTS_DIR": RESULTS,
        }
        driver = self.container(
            "demo",
            ["/bin/sh", "-c", f'python3 loadtest/demo.py; echo "{ENDED}$?"; exec sleep {KEEP_FOR_S}'],
            driver_env,
        )
        # The admin token, from the chart's Secret (never in this script's arguments).
        driver["env"].append(
            {
                "name": "ADMIN_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": self.name("recommendations-admin"), "key": "token"}},
            }
        )
        driver["ports"] = [{"name": "locust", "containerPort": MASTER_PORT}]
        worker = self.container(
            "locust",
            worker_command(locustfile_of(self.chapter), self.driver, MASTER_PORT),
            {k: v for k, v in self.passed_on.items() if k == "LOCUST_REQUEST_TIMEOUT"},
        )
        driver_labels = {**self.labels, "app.kubernetes.io/name": "locust-master"}
        worker_labels = {**self.labels, "app.kubernetes.io/name": "locust-worker"}
        return [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": self.driver, "labels": self.labels},
                "spec": {
                    "selector": driver_labels,
                    "ports": [{"name": "locust", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": self.driver, "labels": driver_labels},
                "spec": self.pod_spec(driver, "Never"),
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": self.name("locust-worker"), "labels": self.labels},
                "spec": {
                    "replicas": self.workers,
                    "selector": {"matchLabels": worker_labels},
                    "template": {"metadata": {"labels": worker_labels}, "spec": self.pod_spec(worker, "Always")},
                },
            },
        ]

    # ---- the run ---------------------------------------------------------------------------

    def selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.labels.items())

    def delete(self) -> None:
        self.kubectl(
            "delete", "deployment,pod,service", "-l", self.selector(), "--wait=true", "--timeout=120s",
            "--ignore-not-found", timeout=150, check=False,
        )  # fmt: skip

    def check_release(self) -> None:
        account = self.name("loadtest")
        if not self.kubectl("get", "serviceaccount", account, "--ignore-not-found", "-o", "name").strip():
            raise RunError(
                f"ServiceAccount {account} is missing in namespace {self.namespace}: install the chart with "
                "--set loadtest.enabled=true (make deploy does)"
            )

    def run(self) -> int:
        self.check_release()
        self.delete()
        items = {"apiVersion": "v1", "kind": "List", "items": self.objects()}
        self.kubectl("apply", "-f", "-", input=json.dumps(items))
        print(
            f"Load from inside the cluster: the demo and Locust's master in pod {self.driver}, "
            f"{self.workers} workers (image {self.image})",
            flush=True,
        )
        self.kubectl("wait", "--for=condition=Ready", f"pod/{self.driver}", "--timeout=180s", timeout=200)
        status = self.follow()
        self.copy_results(status)
        return status

    def follow(self) -> int:
        """Prints the demo's output as it comes, until the line that gives its exit status. A
        log stream that breaks is taken up again where it broke."""
        deadline = time.monotonic() + KEEP_FOR_S
        seen = 0
        while time.monotonic() < deadline:
            logs = subprocess.Popen(
                [self.kubectl_bin, "--namespace", self.namespace, "logs", "-f", f"pod/{self.driver}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            try:
                for i, line in enumerate(logs.stdout):
                    if i < seen:
                        continue
                    seen += 1
                    if line.startswith(ENDED):
                        return int(line[len(ENDED) :].strip())
                    sys.stdout.write(line)
                    sys.stdout.flush()
            finally:
                logs.terminate()
                logs.wait(10)
            phase = self.kubectl("get", "pod", self.driver, "-o", "jsonpath={.status.phase}", check=False)
            if phase in ("Failed", "Succeeded"):
                raise RunError(f"pod {self.driver} ended ({phase}) before the demo did")
            time.sleep(1)
        raise RunError(f"the demo in pod {self.driver} did not end within {KEEP_FOR_S} s")

    def copy_results(self, status: int) -> None:
        """The pod's results into RESULTS_DIR as the local run leaves them: a finished run's
        files over the last one's, a failed run's in RESULTS_DIR.partial."""
        folder = "out" if status == 0 else "out.partial"
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "results.tar"
            with open(archive, "wb") as out:
                done = subprocess.run(
                    [self.kubectl_bin, "--namespace", self.namespace, "exec", self.driver, "--",
                     "tar", "-C", "/results", "-cf", "-", folder],
                    stdout=out, stderr=subprocess.PIPE, timeout=300, check=False,
                )  # fmt: skip
            if done.returncode != 0:
                if status != 0:
                    return  # the demo failed before it wrote anything
                raise RunError(f"copying the results from {self.driver}: {done.stderr.decode().strip()}")
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            target = self.results if status == 0 else self.results.with_name(self.results.name + ".partial")
            if status != 0:
                shutil.rmtree(target, ignore_errors=True)
            publish(Path(tmp) / folder, target)
        print(f"Results copied to {target}", flush=True)


def interrupt(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def main() -> int:
    try:
        run = Run(dict(os.environ))
    except RunError as err:
        print(f"loadtest-k8s: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        return run.run()
    except Interrupted as sig:
        print(f"\nloadtest-k8s: stopped by {sig}", file=sys.stderr)
        return 130
    except RunError as err:
        print(f"\nloadtest-k8s: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("loadtest-k8s: deleting the load pods", flush=True)
        run.delete()


if __name__ == "__main__":
    sys.exit(main())
