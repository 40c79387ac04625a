//! The Helm chart: lint, render with every value, k8s/ rendered from it, and the real API
//! server's verdict (schema validation and restricted Pod Security) on everything it makes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use control_plane::{ControlPlane, Who};
use e2e::figure;
use serde::Deserialize;
use serde_json::{json, Value};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const NS: &str = "demo";

fn chart() -> PathBuf {
    Path::new(ROOT).join("helm/circuit-breaker-demo")
}

fn helm(args: &[&str]) -> Output {
    let helm = Path::new(ROOT).join(".cache/tools/bin/helm");
    assert!(
        helm.is_file(),
        "{} is missing: run `make tools`",
        helm.display()
    );
    Command::new(helm).args(args).output().expect("helm runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The renderings the tests check: defaults, every value switched, and no default policy.
fn renderings() -> Vec<(&'static str, String)> {
    let every = chart().join("ci/every-value.yaml").display().to_string();
    let cases: [(&str, Vec<&str>); 3] = [
        ("defaults", vec![]),
        ("every value switched", vec!["-f", &every]),
        (
            "no default policy",
            vec!["--set", "breakerPolicy.create=false"],
        ),
    ];
    cases
        .into_iter()
        .map(|(what, extra)| {
            let chart = chart().display().to_string();
            let mut args = vec![
                "template",
                "circuit-breaker-demo",
                chart.as_str(),
                "--namespace",
                NS,
            ];
            args.extend(extra);
            let out = helm(&args);
            assert!(out.status.success(), "{what}: {}", text(&out));
            (what, String::from_utf8(out.stdout).unwrap())
        })
        .collect()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| Option::<Value>::deserialize(doc).expect("valid YAML"))
        .collect()
}

#[test]
#[ignore = "chart tier: needs helm (make tools), and kube-apiserver for server dry-run; run by `make test`"]
fn chart_lints_clean_with_defaults_and_every_value() {
    let chart = chart().display().to_string();
    let every = format!("{chart}/ci/every-value.yaml");
    for args in [
        vec!["lint", "--strict", &chart],
        vec!["lint", "--strict", &chart, "-f", &every],
    ] {
        let out = helm(&args);
        let said = text(&out);
        assert!(
            out.status.success() && said.contains("0 chart(s) failed"),
            "{said}"
        );
        assert!(
            !said.contains("[WARNING]") && !said.contains("[ERROR]"),
            "{said}"
        );
    }
    let out = helm(&[
        "template",
        "x",
        &chart,
        "--set",
        "recommendations.faultMode=sometimes",
    ]);
    assert!(
        !out.status.success() && text(&out).contains("faultMode"),
        "values.schema.json let a bad value through"
    );
    for (what, yaml) in renderings() {
        let kinds: Vec<String> = documents(&yaml)
            .iter()
            .map(|d| d["kind"].as_str().unwrap().to_string())
            .collect();
        assert!(
            kinds.iter().filter(|k| *k == "Deployment").count() >= 4,
            "{what}: {kinds:?}"
        );
    }
}

#[test]
fn the_chart_carries_the_generated_crd() {
    let chart_crd = std::fs::read_to_string(chart().join("crds/breakerpolicies.yaml")).unwrap();
    assert!(
        chart_crd == breaker_api::policy::crd_yaml(),
        "helm/circuit-breaker-demo/crds/ is stale: run `make manifests`"
    );
}

#[test]
#[ignore = "chart tier: needs helm (make tools), and kube-apiserver for server dry-run; run by `make test`"]
fn k8s_manifests_are_rendered_from_the_chart_not_kept_by_hand() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(Path::new(ROOT).join("scripts/render-manifests.sh"))
        .arg(out_dir.path())
        .env("CONTROLLER", e2e::bin_path("breaker-controller"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for file in [
        "crd.yaml",
        "rbac.yaml",
        "gateway-configmap.yaml",
        "circuit-breaker-demo.yaml",
        "examples/seed.yaml",
    ] {
        let fresh = std::fs::read_to_string(out_dir.path().join(file)).unwrap();
        let committed = std::fs::read_to_string(Path::new(ROOT).join("k8s").join(file)).unwrap();
        assert!(
            fresh == committed,
            "k8s/{file} differs from the chart: run `make manifests`"
        );
    }
    // so the Roles the controller tests prove sufficient are the chart's own
    let roles = |yaml: &str| -> Vec<Value> {
        documents(yaml)
            .into_iter()
            .filter(|d| d["kind"] == "Role")
            .map(|d| json!([d["metadata"]["name"], d["rules"]]))
            .collect()
    };
    let (_, defaults) = renderings().remove(0);
    let rbac = std::fs::read_to_string(Path::new(ROOT).join("k8s/rbac.yaml")).unwrap();
    assert_eq!(roles(&defaults), roles(&rbac));
    assert_eq!(roles(&rbac).len(), 2);
}

fn kubectl_dry_run(plane: &ControlPlane, yaml: &str) -> Output {
    plane.kubectl(
        Who::Admin,
        &["apply", "--dry-run=server", "-n", NS, "-f", "-"],
        Some(yaml),
    )
}

#[test]
#[ignore = "chart tier: needs helm (make tools), and kube-apiserver for server dry-run; run by `make test`"]
fn the_api_server_accepts_every_rendering_under_restricted_pod_security() {
    let plane = ControlPlane::start().unwrap_or_else(|e| panic!("{e}"));
    let ok = |out: Output, what: &str| assert!(out.status.success(), "{what}: {}", text(&out));
    ok(
        plane.kubectl(Who::Admin, &["create", "namespace", NS], None),
        "namespace",
    );
    ok(
        plane.kubectl(
            Who::Admin,
            &[
                "label",
                "namespace",
                NS,
                "pod-security.kubernetes.io/enforce=restricted",
                "pod-security.kubernetes.io/warn=restricted",
            ],
            None,
        ),
        "label",
    );
    plane
        .install_crds(&chart().join("crds/breakerpolicies.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));

    let mut checked = 0;
    for (what, yaml) in renderings() {
        let docs = documents(&yaml);
        let out = kubectl_dry_run(&plane, &yaml);
        let said = text(&out);
        assert!(out.status.success(), "{what}: {said}");
        assert_eq!(
            said.matches("(server dry run)").count(),
            docs.len(),
            "{what}: {said}"
        );
        assert!(!said.contains("Warning"), "{what}: {said}");
        // Pod Security enforcement judges Pods, not Deployments: each pod template as a Pod.
        for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
            let pod = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": d["metadata"]["name"], "namespace": NS},
                "spec": d["spec"]["template"]["spec"],
            });
            let out = kubectl_dry_run(&plane, &pod.to_string());
            assert!(
                out.status.success(),
                "{what}, pod of {}: {}",
                d["metadata"]["name"],
                text(&out)
            );
            checked += 1;
        }
    }
    figure!("{checked} pod templates admitted under restricted Pod Security");
    // the namespace really enforces: a pod without the restricted settings is refused
    let loose = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "loose", "namespace": NS},
        "spec": {"containers": [{"name": "c", "image": "circuit-breaker-demo:0.1.0"}]},
    });
    let out = kubectl_dry_run(&plane, &loose.to_string());
    assert!(
        !out.status.success() && text(&out).contains("violates PodSecurity"),
        "{}",
        text(&out)
    );

    // the sample policies
    let examples = Path::new(ROOT).join("k8s/examples").display().to_string();
    let out = plane.kubectl(
        Who::Admin,
        &["apply", "--dry-run=server", "-f", &examples],
        None,
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert_eq!(said.matches("(server dry run)").count(), 3, "{said}");
}
