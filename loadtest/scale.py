"""The controller at scale, measured: `make measure-scale` (see docs/breakerpolicy.md, "At scale").

In a cluster made with `make kind-up KIND_CONFIG=kind-config-3-workers.yaml` and the chart
deployed with v2 at many replicas and recommendations `flaky` (half its answers fail, so every
v2 replica's breaker keeps opening and closing), it drives load at v2 from inside the cluster
for a while and reports, for that window:

- what the leading controller did: reconciles, status writes, Event writes and transitions seen
  (its own counters), per second;
- what the API server served, per second, by resource and verb (its own counters,
  `apiserver_request_total`; other writers of the same resources are counted too);
- the leader's CPU and memory, read from its process on this machine (kind's nodes are
  containers, so the pods' processes are this machine's);
- the time from a replica's transition (the `since` it reports) to the policy status that
  shows it arriving at `kubectl get bp -w`.

Standard library only; it changes nothing but the load pods it starts and deletes.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from stack import CHART_NAME, object_name

KUBECTL = os.environ.get("KUBECTL", "kubectl")
NAMESPACE = os.environ.get("NAMESPACE", "demo")
RELEASE = os.environ.get("RELEASE") or CHART_NAME
POLICY = os.environ.get("BREAKER_POLICY") or object_name(RELEASE, "api-gateway-v2")
SECONDS = float(os.environ.get("SCALE_SECONDS", "120"))
LOAD_PODS = int(os.environ.get("SCALE_LOAD_PODS", "4"))
LOAD_IMAGE = os.environ.get("SCALE_LOAD_IMAGE", "circuit-breaker-demo/debian:bookworm")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def named(component: str) -> str:
    """The name of one component's objects in RELEASE (the chart's cbd.objectName)."""
    return object_name(RELEASE, component)


def pods_of(component: str) -> str:
    """The label selector of one component's pods in RELEASE (the chart's cbd.selectorLabels)."""
    return f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name={component}"


def kubectl(*args: str, check: bool = True, input_text: str | None = None) -> str:
    done = subprocess.run(
        [KUBECTL, "-n", NAMESPACE, *args], input=input_text, capture_output=True, text=True, timeout=120, check=False
    )
    if check and done.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def counters(text: str, name: str) -> dict[str, float]:
    """Every sample of one counter in Prometheus text, by its label set."""
    found = {}
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            labels, _, value = line.rpartition(" ")
            found[labels[len(name) :]] = float(value)
    return found


def leading_controller_pod() -> str:
    """The pod of the leading controller: the Lease's holder is `<pod>_<start>`. Chart 0.1.0
    (PREVIOUS=1) had no Lease and one controller: that one."""
    lease = json.loads(
        kubectl("get", "lease", named("breaker-controller"), "-o", "json", "--ignore-not-found") or "null"
    )
    if lease:
        return lease["spec"].get("holderIdentity", "").rpartition("_")[0]
    pods = kubectl("get", "pods", "-l", pods_of("breaker-controller"), "-o", "name").split()
    if len(pods) != 1:
        sys.exit(f"no Lease names the leading controller, and there are {len(pods)} controller pods")
    return pods[0].removeprefix("pod/")


def controller_pid(pod: str) -> int:
    """The process of a breaker-controller pod; LookupError when there is none."""
    return process_of("breaker-controller", pod)


def process_of(comm: str, pod: str) -> int:
    """The process named `comm` (as /proc/<pid>/comm has it, 15 characters) of pod `pod`, on
    this machine (kind's nodes are containers here); LookupError when there is none."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != comm[:15]:
                continue
            if f"POD_NAME={pod}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except OSError:
            continue
    raise LookupError(f"no {comm} process of pod {pod} on this machine (is the cluster kind, on this machine?)")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else 0.0


class PolicyWatch:
    """`kubectl get bp -o json -w`: the arrival time of each replica's newest transition."""

    def __init__(self):
        self.process = subprocess.Popen(
            [KUBECTL, "-n", NAMESPACE, "get", "bp", POLICY, "-o", "json", "-w"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.seen: dict[tuple[str, str], float] = {}
        # Transitions from before the watch (the first object shows each replica's last) are not
        # timed: their arrival says nothing of the controller.
        self.started = time.time()
        self.delays: list[float] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        decoder, buffer = json.JSONDecoder(), ""
        for line in self.process.stdout:
            buffer += line
            try:
                policy, end = decoder.raw_decode(buffer.lstrip())
            except ValueError:
                continue
            buffer = buffer.lstrip()[end:]
            arrived = time.time()
            for replica in policy.get("status", {}).get("replicas", []):
                since = replica.get("since")
                key = (replica.get("pod", ""), since or "")
                if since and key not in self.seen:
                    self.seen[key] = arrived
                    at = datetime.fromisoformat(since).timestamp()
                    if at >= self.started:
                        self.delays.append(arrived - at)

    def stop(self):
        self.process.terminate()


def load_pod(name: str) -> dict:
    """A pod that asks v2 for pages as fast as one connection at a time allows (bash's
    /dev/tcp; the Service spreads the connections over the replicas)."""
    loop = (
        f"while true; do exec 3<>/dev/tcp/{named('api-gateway-v2')}/8090 || {{ sleep 0.1; continue; }}; "
        "printf 'GET /product-details/1 HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3 >/dev/null; exec 3<&-; done"
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "scale-load"}},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "load",
                    "image": LOAD_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["bash", "-c", loop],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }


def main() -> None:
    pods = json.loads(kubectl("get", "pods", "-l", pods_of("api-gateway-v2"), "-o", "json"))["items"]
    nodes = sorted({p["spec"].get("nodeName", "?") for p in pods})
    leader = leading_controller_pod()
    try:
        pid = controller_pid(leader)
    except LookupError as err:
        sys.exit(str(err))
    metrics_path = f"/api/v1/namespaces/{NAMESPACE}/pods/{leader}:8083/proxy/metrics"
    print(f"v2: {len(pods)} replicas on {len(nodes)} nodes {nodes}; leader {leader} (pid {pid})", flush=True)

    run = int(time.time())
    names = [f"scale-load-{run}-{i}" for i in range(LOAD_PODS)]
    v2_metrics = [f"/api/v1/namespaces/{NAMESPACE}/pods/{p['metadata']['name']}:8090/proxy/metrics" for p in pods]

    def calls() -> float:
        """Calls the v2 replicas made to recommendations, all outcomes, rejections included."""
        return sum(sum(counters(kubectl("get", "--raw", path), "breaker_calls_total").values()) for path in v2_metrics)

    for name in names:
        subprocess.run(
            [KUBECTL, "-n", NAMESPACE, "apply", "-f", "-"], input=json.dumps(load_pod(name)), text=True,
            capture_output=True, check=True,
        )  # fmt: skip
    try:
        kubectl("wait", "--for=condition=Ready", *[f"pod/{n}" for n in names], "--timeout=120s")
        watch = PolicyWatch()
        time.sleep(5)  # the load's first openings, before the window
        calls_before = calls()
        before = (kubectl("get", "--raw", metrics_path), kubectl("get", "--raw", "/metrics"), cpu_seconds(pid))
        started = time.monotonic()
        rss = []
        while time.monotonic() - started < SECONDS:
            rss.append(rss_mib(pid))
            time.sleep(1)
        after = (kubectl("get", "--raw", metrics_path), kubectl("get", "--raw", "/metrics"), cpu_seconds(pid))
        took = time.monotonic() - started
        calls_after = calls()
        watch.stop()
    finally:
        kubectl("delete", "pod", *names, "--wait=false", check=False)

    def rate(text_before: str, text_after: str, name: str) -> dict[str, float]:
        a, b = counters(text_before, name), counters(text_after, name)
        return {k: (b[k] - a.get(k, 0.0)) / took for k in b if b[k] - a.get(k, 0.0) > 0}

    own = {
        "load: v2 calls to recommendations (all replicas, rejections included)": (calls_after - calls_before) / took,
        "reconciles": sum(rate(before[0], after[0], "controller_reconciles_total").values()),
        "status writes (replicas)": sum(rate(before[0], after[0], "controller_replica_status_writes_total").values()),
        "Event writes": sum(rate(before[0], after[0], "controller_event_writes_total").values()),
        "transitions seen": sum(rate(before[0], after[0], "controller_replica_transitions_total").values()),
    }
    served = rate(before[1], after[1], "apiserver_request_total")
    # (resource, verbs); server-side apply counts as APPLY, node leases and the controllers' Lease are PUT (UPDATE)
    wanted = {
        "API: breakerpolicies/status writes": (
            'resource="breakerpolicies",scope="resource",subresource="status"',
            ("APPLY", "PATCH"),
        ),
        "API: events.k8s.io writes": ('group="events.k8s.io"', ("POST", "PATCH")),
        "API: configmaps reads and writes": ('resource="configmaps"', ("GET", "APPLY", "PATCH")),
        "API: leases reads and writes (both controllers)": ('resource="leases"', ("GET", "PUT")),
    }
    api = {
        label: sum(v for k, v in served.items() if part in k and any(f'verb="{verb}"' in k for verb in verbs))
        for label, (part, verbs) in wanted.items()
    }
    delays = sorted(watch.delays)
    cpu = (after[2] - before[2]) / took * 100
    print(f"\nwindow {took:.0f} s, {LOAD_PODS} load pods, {len(pods)} v2 replicas on {len(nodes)} nodes\n")
    print("| what | per second |\n|---|---|")
    for label, value in {**own, **api}.items():
        print(f"| {label} | {value:.2f} |")
    print(f"| leader CPU | {cpu:.1f}% of a core |")
    print(f"| leader memory (RSS) | {max(rss):.1f} MiB at most, {statistics.mean(rss):.1f} MiB mean |")
    if delays:

        def p(q: float) -> float:
            return delays[min(len(delays) - 1, int(q * len(delays)))]

        print(
            f"| transition to `kubectl get bp -w` | p50 {p(0.5) * 1000:.0f} ms, p95 {p(0.95) * 1000:.0f} ms, "
            f"max {delays[-1] * 1000:.0f} ms over {len(delays)} transitions |"
        )


if __name__ == "__main__":
    main()
