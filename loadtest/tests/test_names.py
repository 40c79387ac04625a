"""The chart's object names, as loadtest/stack.py spells them for the scripts that drive a release
(incluster.py, scale.py, soak.py): held to what `helm template` renders."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from conftest import ROOT
from stack import CHART_NAME, object_name

HELM = ROOT / ".cache/tools/bin/helm"


# 46 characters: recommendations-service is cut to "recommendations-", then its dash dropped, and
# breaker-controller is cut mid-word. (From 49 characters on, the chart's own names collide:
# both gateways cut to one name.)
@pytest.mark.parametrize("release", [CHART_NAME, "shop", "a-release-name-of-forty-six-characters-exactly"])
def test_object_name_is_the_charts_rule(release):
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: make tools builds it")
    # Offline, helm assumes Kubernetes 1.20, under the chart's kubeVersion (as controller/tests/chart.rs).
    kube_version = os.environ.get("KUBE_VERSION", "v1.34.4")
    rendered = subprocess.run(
        [str(HELM), "template", release, str(ROOT / "helm/circuit-breaker-demo"), "--kube-version", kube_version],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    deployments = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    assert len(deployments) >= 4, [d["metadata"]["name"] for d in deployments]
    names = [d["metadata"]["name"] for d in deployments]
    assert len(set(names)) == len(names), names
    for deployment in deployments:
        component = deployment["metadata"]["labels"]["app.kubernetes.io/name"]
        assert deployment["metadata"]["name"] == object_name(release, component), component
