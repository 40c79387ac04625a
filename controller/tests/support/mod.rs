//! What the control-plane tests share: a real kube-apiserver + etcd on 127.0.0.1 with the CRD,
//! namespace `demo` and the RBAC of k8s/rbac.yaml; the controller and a gateway stack run as
//! their service accounts; kubectl and polling helpers. One control plane per test, one test
//! at a time (`serial`), across the test binaries.
// Each test binary uses some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use control_plane::{ControlPlane, Who, SYSTEM_NAMESPACE as NS};
use e2e::*;
use serde_json::Value;

pub const TARGET: &str = "api-gateway-v2-breaker";
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

pub fn serial() -> e2e::ExclusiveTiming {
    e2e::exclusive_timing()
}

/// A control plane with the CRD, namespace `demo` and the RBAC of k8s/rbac.yaml installed.
pub fn control_plane() -> ControlPlane {
    let plane = control_plane_without_crd();
    plane
        .install_crds(&Path::new(ROOT).join("k8s/crd.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    plane
}

/// Namespace `demo` and the RBAC of k8s/rbac.yaml, but no BreakerPolicy CRD.
pub fn control_plane_without_crd() -> ControlPlane {
    let plane = ControlPlane::start().unwrap_or_else(|e| panic!("{e}"));
    let ok = |out: std::process::Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(
        plane.kubectl(Who::Admin, &["create", "namespace", NS], None),
        "namespace",
    );
    for file in ["k8s/rbac.yaml", "k8s/gateway-configmap.yaml"] {
        let path = format!("{ROOT}/{file}");
        ok(
            plane.kubectl(Who::Admin, &["apply", "-f", &path], None),
            file,
        );
    }
    plane
}

pub fn kubectl_apply(plane: &ControlPlane, yaml: &str) -> std::process::Output {
    plane.kubectl(Who::Admin, &["apply", "-n", NS, "-f", "-"], Some(yaml))
}

pub fn policy(name: &str, mode: &str, settings: &str) -> String {
    format!(
        "apiVersion: resilience.demo.dev/v1alpha1\nkind: BreakerPolicy\nmetadata:\n  name: {name}\nspec:\n  target:\n    configMap: {TARGET}\n  mode: {mode}\n  settings:\n{}",
        settings.lines().map(|l| format!("    {l}\n")).collect::<String>()
    )
}

pub fn get_json(plane: &ControlPlane, what: &[&str]) -> Option<Value> {
    let mut args = vec!["get", "-n", NS, "-o", "json"];
    args.extend_from_slice(what);
    let out = plane.kubectl(Who::Admin, &args, None);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Polls without blocking the test's runtime (the HTTP client's pool lives on it).
pub async fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn ready_condition(bp: &Value) -> Option<&Value> {
    bp["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// Applies policy `gw` with the settings the tests end on, in `mode`, and waits for v2 to use it.
pub async fn set_mode(plane: &ControlPlane, c: &awc::Client, stack: &Stack, mode: &str) {
    let yaml = policy(
        "gw",
        mode,
        "failureThreshold: 29\ncallTimeout: 300ms\nopenDuration: 2s",
    );
    assert!(kubectl_apply(plane, &yaml).status.success());
    wait_status(c, stack, Duration::from_secs(10), |s| s["mode"] == mode).await;
}

pub async fn wait_for_ready(c: &awc::Client, proc: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(c, &proc.url("/readyz")).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "{} not ready within 10 s",
            proc.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Lease the control-plane tests elect on: short, so a takeover after a kill takes 3 s
/// rather than the default's 10 (same proportions: the deadline a second short of it).
pub const TEST_LEASE: [(&str, &str); 3] = [
    ("LEASE_DURATION", "3s"),
    ("LEASE_RENEW_DEADLINE", "2s"),
    ("LEASE_RETRY_PERIOD", "500ms"),
];

pub fn start_controller(plane: &ControlPlane, dir: &Path) -> Proc {
    start_controller_with(plane.kubeconfig(Who::Controller), &TEST_LEASE, dir)
}

/// A controller reaching the API server through `kubeconfig`, electing with `lease`.
pub fn start_controller_with(kubeconfig: PathBuf, lease: &[(&str, &str)], dir: &Path) -> Proc {
    let mut env = vec![
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("WATCH_NAMESPACE", NS.to_string()),
        ("TARGET_CONFIGMAP", TARGET.to_string()),
    ];
    env.extend(lease.iter().map(|(k, v)| (*k, v.to_string())));
    Proc::start("breaker-controller", &env, dir)
}

pub fn gateway_stack(plane: &ControlPlane) -> Stack {
    Stack::start(StackConfig {
        recommendations_env: vec![],
        v2_configmap: Some((format!("{NS}/{TARGET}"), plane.kubeconfig(Who::Gateway))),
        ..Default::default()
    })
}

pub fn kubectl_ok(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) {
    let out = plane.kubectl(Who::Admin, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl patch <what> -n demo --type merge -p <patch>`, which must succeed; `what` names the
/// object, and may add `--subresource=status`.
pub fn merge_patch(plane: &ControlPlane, what: &[&str], patch: &str) {
    let args = [what, &["-n", NS, "--type", "merge", "-p", patch]].concat();
    kubectl_ok(plane, &[&["patch"], args.as_slice()].concat(), None);
}

/// `kubectl delete bp <name> --wait`, which must succeed; how long it took.
pub fn delete_policy(plane: &ControlPlane, name: &str) -> Duration {
    let deleting = Instant::now();
    kubectl_ok(
        plane,
        &[
            "delete",
            "bp",
            name,
            "-n",
            NS,
            "--wait=true",
            "--timeout=10s",
        ],
        None,
    );
    deleting.elapsed()
}

/// Applies policy `name` (mode Auto) and waits until it is Ready (Applied).
pub async fn apply_until_applied(plane: &ControlPlane, name: &str, settings: &str) {
    assert!(kubectl_apply(plane, &policy(name, "Auto", settings))
        .status
        .success());
    wait_for(Duration::from_secs(10), "Applied", || {
        (ready_reason(plane, name)?.0 == "Applied").then_some(())
    })
    .await;
}

pub fn ready_reason(plane: &ControlPlane, name: &str) -> Option<(String, String)> {
    let bp = get_json(plane, &["bp", name])?;
    let ready = ready_condition(&bp)?;
    Some((
        ready["reason"].as_str()?.to_string(),
        ready["message"].as_str()?.to_string(),
    ))
}

/// A Pod object standing for a v2 process on 127.0.0.1:`port` (no kubelet here: the test
/// writes the pod's status as one would).
pub fn fake_v2_pod(plane: &ControlPlane, name: &str, v2: &e2e::Proc) {
    let (port, status_port) = (v2.port, v2.status_port.expect("a v2"));
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    resilience.demo.dev/breaker-configmap: {TARGET}\nspec:\n  containers:\n    - name: api-gateway-v2\n      image: api-gateway-v2\n      ports:\n        - name: http\n          containerPort: {port}\n        - name: status\n          containerPort: {status_port}\n"
    );
    assert!(kubectl_apply(plane, &pod).status.success());
    let running =
        r#"{"status":{"phase":"Running","podIP":"127.0.0.1","podIPs":[{"ip":"127.0.0.1"}]}}"#;
    let out = plane.kubectl(
        Who::Admin,
        &[
            "patch",
            "pod",
            name,
            "-n",
            NS,
            "--subresource=status",
            "--type=merge",
            "-p",
            running,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl get bp <name> -o json -w`, each object stamped with the wall time it arrived.
pub fn watch_policy(
    plane: &ControlPlane,
    name: &str,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<(chrono::DateTime<chrono::Utc>, Value)>,
) {
    let mut child = plane
        .kubectl_command(Who::Admin)
        .args(["get", "bp", name, "-n", NS, "-o", "json", "-w"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for object in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
            let Ok(object) = object else { return };
            if tx.send((chrono::Utc::now(), object)).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

pub fn replica<'a>(bp: &'a Value, pod: &str) -> Option<&'a Value> {
    bp["status"]["replicas"]
        .as_array()?
        .iter()
        .find(|r| r["pod"] == pod)
}

/// `failureThreshold` in the target ConfigMap's breaker settings.
pub fn threshold_in_configmap(plane: &ControlPlane) -> Option<u32> {
    let cm = get_json(plane, &["configmap", TARGET])?;
    let yaml = cm["data"]["breaker.yaml"].as_str()?;
    yaml.lines()
        .find_map(|l| l.strip_prefix("failureThreshold: "))?
        .trim()
        .parse()
        .ok()
}

/// Applied Events on the policies, each series counted by its count.
pub fn applied_events(plane: &ControlPlane) -> u64 {
    let events = plane.kubectl(
        Who::Admin,
        &["get", "events.events.k8s.io", "-n", NS, "-o", "json"],
        None,
    );
    let events: Value = serde_json::from_slice(&events.stdout).unwrap();
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "Applied")
        .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
        .sum()
}
