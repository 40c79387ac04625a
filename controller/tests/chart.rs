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
    let mut command = Command::new(helm);
    command.args(args);
    // Offline, helm assumes Kubernetes 1.20, under the chart's kubeVersion: render for the
    // version the tests' control plane and kind nodes run (the Makefile's KUBE_VERSION).
    if matches!(args.first(), Some(&"template" | &"lint")) {
        let version = std::env::var("KUBE_VERSION").unwrap_or_else(|_| "v1.34.4".into());
        command.args(["--kube-version", &version]);
    }
    command.output().expect("helm runs")
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
    // A bad value, and a misspelt setting (the settings are closed to the CRD's keys), each
    // refused by name.
    for (set, named) in [
        ("recommendations.faultMode=sometimes", "faultMode"),
        (
            "breakerPolicy.settings.failureTreshold=3",
            "'failureTreshold' not allowed",
        ),
    ] {
        let out = helm(&["template", "x", &chart, "--set", set]);
        assert!(
            !out.status.success() && text(&out).contains(named),
            "values.schema.json let {set} through: {}",
            text(&out)
        );
    }
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
fn the_charts_app_version_is_the_workspaces() {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Chart {
        app_version: String,
    }
    let chart: Chart =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        chart.app_version,
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml's appVersion (the image tag the chart runs) is not the workspace's version"
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
        "spec": {"containers": [{"name": "c", "image": "circuit-breaker-demo:0.2.0"}]},
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

fn render_release(release: &str) -> Vec<Value> {
    let chart = chart().display().to_string();
    let out = helm(&[
        "template",
        release,
        &chart,
        "--namespace",
        NS,
        "--set-string",
        "recommendations.adminToken=t",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    documents(&String::from_utf8(out.stdout).unwrap())
}

fn env_of<'a>(docs: &'a [Value], deployment: &str, var: &str) -> &'a str {
    let d = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == deployment)
        .unwrap_or_else(|| panic!("no Deployment {deployment}"));
    d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == var)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("{deployment} has no {var}"))
}

#[test]
#[ignore = "chart tier: needs helm (make tools), and kube-apiserver for server dry-run; run by `make test`"]
fn two_releases_share_a_namespace_without_sharing_an_object() {
    let (a, b) = (render_release("shop-a"), render_release("shop-b"));
    let names = |docs: &[Value]| -> std::collections::BTreeSet<String> {
        docs.iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap(),
                    d["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let shared: Vec<_> = names(&a).intersection(&names(&b)).cloned().collect();
    assert!(shared.is_empty(), "both releases make {shared:?}");
    // each release's parts point at each other, not at the other release's
    for (release, docs) in [("shop-a", &a), ("shop-b", &b)] {
        let v2 = format!("{release}-api-gateway-v2");
        assert_eq!(
            env_of(docs, &v2, "BREAKER_CONFIGMAP"),
            format!("{NS}/{release}-api-gateway-v2-breaker")
        );
        assert_eq!(
            env_of(docs, &v2, "PRODUCT_SERVICE_URL"),
            format!("http://{release}-product-service:8081")
        );
        // each release's controller writes its own ConfigMap and elects on its own Lease
        let controller = format!("{release}-breaker-controller");
        assert_eq!(
            env_of(docs, &controller, "TARGET_CONFIGMAP"),
            format!("{release}-api-gateway-v2-breaker")
        );
        assert_eq!(env_of(docs, &controller, "LEASE_NAME"), controller);
        let policy = docs.iter().find(|d| d["kind"] == "BreakerPolicy").unwrap();
        assert_eq!(
            policy["spec"]["target"]["configMap"],
            format!("{release}-api-gateway-v2-breaker")
        );
        for d in docs {
            let labels = &d["metadata"]["labels"];
            assert_eq!(labels["app.kubernetes.io/instance"], release, "{d}");
            assert!(labels["app.kubernetes.io/version"].is_string(), "{d}");
        }
    }
    // and the API server stores both side by side
    let plane = ControlPlane::start().unwrap_or_else(|e| panic!("{e}"));
    assert!(plane
        .kubectl(Who::Admin, &["create", "namespace", NS], None)
        .status
        .success());
    plane
        .install_crds(&chart().join("crds/breakerpolicies.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    for docs in [&a, &b] {
        let yaml: Vec<String> = docs
            .iter()
            .map(|d| serde_yaml::to_string(d).unwrap())
            .collect();
        let out = plane.kubectl(
            Who::Admin,
            &["apply", "-n", NS, "-f", "-"],
            Some(&yaml.join("---\n")),
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = plane.kubectl(
        Who::Admin,
        &[
            "get",
            "deployments,services,configmaps,roles,breakerpolicies",
            "-n",
            NS,
            "-o",
            "name",
        ],
        None,
    );
    let stored = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("/shop-a-") || l.contains("/shop-b-"))
        .count();
    let made = |docs: &[Value]| {
        docs.iter()
            .filter(|d| {
                [
                    "Deployment",
                    "Service",
                    "ConfigMap",
                    "Role",
                    "BreakerPolicy",
                ]
                .contains(&d["kind"].as_str().unwrap())
            })
            .count()
    };
    assert_eq!(stored, made(&a) + made(&b), "{}", text(&out));
}

#[test]
fn manifests_for_kubectl_carry_no_helm_labels() {
    for file in [
        "rbac.yaml",
        "gateway-configmap.yaml",
        "circuit-breaker-demo.yaml",
        "examples/seed.yaml",
    ] {
        let yaml = std::fs::read_to_string(Path::new(ROOT).join("k8s").join(file)).unwrap();
        assert!(
            !yaml.contains("managed-by: Helm") && !yaml.contains("helm.sh/chart"),
            "k8s/{file}"
        );
    }
}

#[test]
#[ignore = "chart tier: needs helm (make tools), and kube-apiserver for server dry-run; run by `make test`"]
fn the_admin_token_is_generated_per_install_and_never_written_into_a_file() {
    let token_of = |docs: &[Value]| -> String {
        let secret = docs
            .iter()
            .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "recommendations-admin")
            .expect("the chart makes the token's Secret");
        secret["stringData"]["token"].as_str().unwrap().to_string()
    };
    let defaults = documents(&renderings()[0].1);
    let (first, second) = (
        token_of(&defaults),
        token_of(&documents(&renderings()[0].1)),
    );
    assert_eq!(first.len(), 32);
    assert!(first.chars().all(|c| c.is_ascii_alphanumeric()), "{first}");
    // Nothing to look up here (no cluster): each rendering draws anew. An install looks up the
    // release's Secret and keeps its token (the cluster tests check that across upgrades).
    assert_ne!(first, second, "a fixed token");
    let recommendations = defaults
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "recommendations-service")
        .unwrap();
    let env = &recommendations["spec"]["template"]["spec"]["containers"][0]["env"];
    let admin = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ADMIN_TOKEN")
        .expect("the endpoint is on");
    assert_eq!(
        admin["valueFrom"]["secretKeyRef"]["name"],
        "recommendations-admin"
    );
    // The files for kubectl users hold no token: the endpoint is off there.
    let shipped =
        std::fs::read_to_string(Path::new(ROOT).join("k8s/circuit-breaker-demo.yaml")).unwrap();
    assert!(!shipped.contains("kind: Secret") && !shipped.contains("ADMIN_TOKEN"));
}

/// What runs more than one replica (v2, the controller) has a PodDisruptionBudget that lets a
/// drain take one pod at a time, selecting exactly its pods, and spreads its pods over nodes;
/// what runs one has neither (a budget would block every drain).
#[test]
#[ignore = "chart tier: needs helm (make tools); run by `make test`"]
fn replicated_workloads_have_a_disruption_budget_and_spread_over_nodes() {
    let docs = render_release("circuit-breaker-demo");
    let budgets: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "PodDisruptionBudget")
        .collect();
    let mut budgeted: Vec<&str> = budgets
        .iter()
        .map(|b| b["metadata"]["name"].as_str().unwrap())
        .collect();
    budgeted.sort();
    assert_eq!(budgeted, ["api-gateway-v2", "breaker-controller"]);
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pods = &d["spec"]["selector"]["matchLabels"];
        let spread = &d["spec"]["template"]["spec"]["topologySpreadConstraints"];
        match budgets.iter().find(|b| b["metadata"]["name"] == name) {
            Some(budget) => {
                assert_eq!(budget["spec"]["maxUnavailable"], 1, "{name}");
                assert_eq!(&budget["spec"]["selector"]["matchLabels"], pods, "{name}");
                assert_eq!(spread[0]["topologyKey"], "kubernetes.io/hostname", "{name}");
                assert_eq!(spread[0]["whenUnsatisfiable"], "DoNotSchedule", "{name}");
                assert_eq!(spread[0]["nodeTaintsPolicy"], "Honor", "{name}");
                assert_eq!(
                    spread[0]["matchLabelKeys"][0], "pod-template-hash",
                    "{name}"
                );
                assert_eq!(&spread[0]["labelSelector"]["matchLabels"], pods, "{name}");
            }
            None => {
                assert_eq!(
                    d["spec"]["replicas"], 1,
                    "{name} runs more than one without a budget"
                );
                assert!(spread.is_null(), "{name}: {spread}");
            }
        }
    }
}

/// The API server egress of v2 and the controller, by the chart's defaults: never anywhere.
fn api_server_cidrs(docs: &[Value]) -> Vec<Vec<String>> {
    let mut found: Vec<Vec<String>> = docs
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy")
        .flat_map(|d| d["spec"]["egress"].as_array().cloned().unwrap_or_default())
        .filter(|rule| {
            rule["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["port"] == 443)
        })
        .map(|rule| {
            rule["to"]
                .as_array()
                .unwrap()
                .iter()
                .map(|peer| peer["ipBlock"]["cidr"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    found.dedup();
    found
}

/// Rendered without a cluster, the API server egress is kind's ranges (IPv4 and IPv6); given
/// addresses replace them.
#[test]
#[ignore = "chart tier: needs helm (make tools); run by `make test`"]
fn the_api_server_egress_is_kinds_addresses_without_a_cluster_and_the_given_ones_when_set() {
    let kind = [
        "172.18.0.0/16",
        "fc00:f853:ccd:e793::/64",
        "10.96.0.1/32",
        "fd00:10:96::1/128",
    ];
    assert_eq!(
        api_server_cidrs(&render_release("circuit-breaker-demo")),
        [kind]
    );
    let chart = chart().display().to_string();
    let out = helm(&[
        "template",
        "circuit-breaker-demo",
        &chart,
        "--namespace",
        NS,
        "--set",
        "networkPolicy.apiServerCIDRs={192.0.2.7/32,2001:db8::7/128}",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        api_server_cidrs(&documents(&String::from_utf8(out.stdout).unwrap())),
        [["192.0.2.7/32", "2001:db8::7/128"]]
    );
}

/// Installed into a cluster, the API server egress is that API server's own addresses, read
/// from the `kubernetes` Service and its EndpointSlice (helm's lookup; a server-side dry run),
/// an IPv4 endpoint as a /32 and an IPv6 one as a /128.
#[test]
#[ignore = "chart tier: needs helm (make tools) and kube-apiserver; run by `make test`"]
fn installed_the_api_server_egress_is_the_clusters_own_api_server() {
    let plane = ControlPlane::start().unwrap_or_else(|e| panic!("{e}"));
    // helm's dry run installs no CRDs, and checks the BreakerPolicy against its kind
    plane
        .install_crds(&chart().join("crds/breakerpolicies.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = plane.kubeconfig(Who::Admin).display().to_string();
    let chart = chart().display().to_string();
    let service = plane.kubectl(
        Who::Admin,
        &[
            "get",
            "service",
            "kubernetes",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    );
    assert!(service.status.success(), "{}", text(&service));
    let cluster_ip = String::from_utf8(service.stdout).unwrap();
    // A loopback API server publishes no endpoints (nor may a slice hold loopback addresses):
    // the slice a cluster's API server writes, with a documentation address, IPv4 then IPv6.
    // A dry run: nothing calls them.
    for (family, address, cidr) in [
        ("IPv4", "192.0.2.10", "192.0.2.10/32"),
        ("IPv6", "2001:db8::10", "2001:db8::10/128"),
    ] {
        let slice = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: kubernetes\n  namespace: default\n  labels: {{kubernetes.io/service-name: kubernetes}}\naddressType: {family}\nendpoints:\n  - addresses: [\"{address}\"]\nports:\n  - {{name: https, port: 6443, protocol: TCP}}\n"
        );
        let out = plane.kubectl(Who::Admin, &["replace", "--force", "-f", "-"], Some(&slice));
        assert!(out.status.success(), "{}", text(&out));
        let out = helm(&[
            "install",
            "circuit-breaker-demo",
            &chart,
            "--namespace",
            NS,
            "--create-namespace",
            "--dry-run=server",
            "--kubeconfig",
            &kubeconfig,
        ]);
        let said = text(&out);
        assert!(out.status.success(), "{said}");
        // the manifest follows "MANIFEST:", up to the notes
        let manifest = &said[said.find("MANIFEST:").expect("a manifest") + "MANIFEST:".len()..];
        let manifest = &manifest[..manifest.find("NOTES:").unwrap_or(manifest.len())];
        let own = [format!("{cluster_ip}/32"), cidr.to_owned()];
        figure!("installed ({family} API server), the API server egress: {own:?}");
        assert_eq!(api_server_cidrs(&documents(manifest)), [own]);
    }
}
