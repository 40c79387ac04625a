//! The controller and the gateway against a real kube-apiserver + etcd on 127.0.0.1, each with
//! the identity and Role of k8s/rbac.yaml. One control plane per test, one test at a time.
// Each test has its own thread and runtime; the serializing guard is meant to span awaits.
#![allow(clippy::await_holding_lock)]

use std::path::Path;
use std::time::{Duration, Instant};

use control_plane::{ControlPlane, Who, SYSTEM_NAMESPACE as NS};
use e2e::*;
use serde_json::Value;

const TARGET: &str = "api-gateway-v2-breaker";
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn serial() -> e2e::ExclusiveTiming {
    e2e::exclusive_timing()
}

/// A control plane with the CRD, namespace `demo` and the RBAC of k8s/rbac.yaml installed.
fn control_plane() -> ControlPlane {
    let plane = control_plane_without_crd();
    plane
        .install_crds(&Path::new(ROOT).join("k8s/crd.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    plane
}

/// Namespace `demo` and the RBAC of k8s/rbac.yaml, but no BreakerPolicy CRD.
fn control_plane_without_crd() -> ControlPlane {
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

fn kubectl_apply(plane: &ControlPlane, yaml: &str) -> std::process::Output {
    plane.kubectl(Who::Admin, &["apply", "-n", NS, "-f", "-"], Some(yaml))
}

fn policy(name: &str, mode: &str, settings: &str) -> String {
    format!(
        "apiVersion: resilience.demo.dev/v1alpha1\nkind: BreakerPolicy\nmetadata:\n  name: {name}\nspec:\n  target:\n    configMap: {TARGET}\n  mode: {mode}\n  settings:\n{}",
        settings.lines().map(|l| format!("    {l}\n")).collect::<String>()
    )
}

fn get_json(plane: &ControlPlane, what: &[&str]) -> Option<Value> {
    let mut args = vec!["get", "-n", NS, "-o", "json"];
    args.extend_from_slice(what);
    let out = plane.kubectl(Who::Admin, &args, None);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Polls without blocking the test's runtime (the HTTP client's pool lives on it).
async fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ready_condition(bp: &Value) -> Option<&Value> {
    bp["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// Applies policy `gw` with the settings the tests end on, in `mode`, and waits for v2 to use it.
async fn set_mode(plane: &ControlPlane, c: &awc::Client, stack: &Stack, mode: &str) {
    let yaml = policy(
        "gw",
        mode,
        "failureThreshold: 29\ncallTimeout: 300ms\nopenDuration: 2s",
    );
    assert!(kubectl_apply(plane, &yaml).status.success());
    wait_status(c, stack, Duration::from_secs(10), |s| s["mode"] == mode).await;
}

async fn wait_for_ready(c: &awc::Client, proc: &Proc) {
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

fn start_controller(plane: &ControlPlane, dir: &Path) -> Proc {
    Proc::start(
        "breaker-controller",
        &[
            (
                "KUBECONFIG",
                plane.kubeconfig(Who::Controller).display().to_string(),
            ),
            ("WATCH_NAMESPACE", NS.to_string()),
            ("TARGET_CONFIGMAP", TARGET.to_string()),
        ],
        dir,
    )
}

fn gateway_stack(plane: &ControlPlane) -> Stack {
    Stack::start(StackConfig {
        recommendations_env: vec![],
        v2_configmap: Some((format!("{NS}/{TARGET}"), plane.kubeconfig(Who::Gateway))),
        ..Default::default()
    })
}

#[test]
#[ignore = "control-plane tier: needs kube-apiserver and etcd (make control-plane-bins); run by `make test`"]
fn crd_installs_shows_its_columns_and_the_api_server_rejects_invalid_policies() {
    let _serial = serial();
    let plane = control_plane();
    let out = kubectl_apply(
        &plane,
        &policy(
            "seed",
            "Auto",
            "failureThreshold: 3\ncallTimeout: 2s\nopenDuration: 5s",
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = plane.kubectl(Who::Admin, &["get", "bp", "-n", NS], None);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "MODE", "OPEN", "APPLIED", "EJECTED", "READY", "REASON", "AGE"],
        "{table}"
    );
    // No controller here and no replica: only NAME, MODE and AGE have values.
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        (row.len(), &row[..2]),
        (3, &["seed", "Auto"][..]),
        "{table}"
    );
    let wide = plane.kubectl(Who::Admin, &["get", "bp", "-n", NS, "-o", "wide"], None);
    assert!(String::from_utf8_lossy(&wide.stdout).contains(TARGET));

    let invalid = [
        ("threshold 0", "failureThreshold: 0"),
        ("threshold over 1000", "failureThreshold: 1001"),
        ("negative timeout", "callTimeout: -1s"),
        ("zero timeout", "callTimeout: 0s"),
        ("empty timeout", "callTimeout: \"\""),
        ("timeout over 24h", "openDuration: 25h"),
        ("garbage duration", "openDuration: soon"),
        ("fractional duration", "callTimeout: 1.5s"),
        ("unknown field", "failureTreshold: 3"),
        (
            "callTimeout = openDuration",
            "callTimeout: 5s\nopenDuration: 5s",
        ),
        ("callTimeout > openDuration", "callTimeout: 1m30s"),
        (
            "maxOpenDuration < openDuration",
            "openDuration: 10s\nmaxOpenDuration: 5s",
        ),
        (
            "fallbackAfter = callTimeout",
            "callTimeout: 2s\nfallbackAfter: 2s",
        ),
        ("rate over 100%", "failureRateThreshold: 150"),
        ("no probes", "halfOpenMaxCalls: 0"),
        ("more than 10 retries", "maxRetries: 11"),
        ("a retry budget of 0%", "retryBudgetPercent: 0"),
        ("an adaptive limit of 0", "adaptiveLimitMax: 0"),
        ("a 0s adaptive latency", "adaptiveLimitLatency: 0s"),
    ];
    for (i, (what, settings)) in invalid.iter().enumerate() {
        let out = kubectl_apply(&plane, &policy(&format!("bad-{i}"), "Auto", settings));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} was accepted");
        assert!(
            stderr.contains("Invalid value")
                || stderr.contains("unknown field")
                || stderr.contains("strict decoding"),
            "{what}: {stderr}"
        );
        eprintln!("rejected {what}: {}", stderr.trim());
    }
    let out = kubectl_apply(&plane, &policy("bad-mode", "Sometimes", "{}"));
    assert!(!out.status.success());
    let out = kubectl_apply(&plane, "apiVersion: resilience.demo.dev/v1alpha1\nkind: BreakerPolicy\nmetadata:\n  name: no-target\nspec: {}\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.target: Required value"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = get_json(&plane, &["bp"]).unwrap();
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "only the valid policy is stored"
    );
}

/// Documents at and just past every bound the schema states, and around every order rule.
fn boundary_documents() -> Vec<String> {
    let schema = serde_json::to_value(schemars::schema_for!(breaker_api::BreakerSettings)).unwrap();
    let mut docs = Vec::new();
    for (key, prop) in schema["properties"].as_object().unwrap() {
        if let (Some(min), Some(max)) = (prop["minimum"].as_f64(), prop["maximum"].as_f64()) {
            let step = if prop["type"].to_string().contains("integer") {
                1.0
            } else {
                0.5
            };
            for value in [min - step, min, max, max + step] {
                docs.push(format!("{key}: {value}"));
            }
        } else if let Some(values) = prop["enum"].as_array() {
            for value in values.iter().filter_map(Value::as_str).chain(["Sideways"]) {
                docs.push(format!("{key}: {value}"));
            }
        } else {
            for value in ["0ms", "1ms", "86400000ms", "86400001ms", "24h", "1440m1s"] {
                docs.push(format!("{key}: {value}"));
                docs.push(format!(
                    "{key}: {value}\nopenDuration: 24h\ncallTimeout: 1ms"
                ));
            }
        }
    }
    for rule in breaker_api::policy::ORDER_RULES {
        for (a, b) in [("9s", "10s"), ("10s", "10s"), ("10s", "9s")] {
            docs.push(rule.document(a, b));
        }
    }
    docs.retain(|doc| serde_yaml::from_str::<serde_yaml::Mapping>(doc).is_ok());
    docs
}

#[test]
#[ignore = "control-plane tier: needs kube-apiserver and etcd (make control-plane-bins); run by `make test`"]
fn the_api_server_and_the_validation_accept_the_same_settings_at_every_bound() {
    let _serial = serial();
    let plane = control_plane();
    let docs = boundary_documents();
    let yaml: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(i, doc)| policy(&format!("probe-{i}"), "Auto", doc))
        .collect();
    let out = plane.kubectl(
        Who::Admin,
        &["apply", "--dry-run=server", "-n", NS, "-f", "-"],
        Some(&yaml.join("---\n")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut disagreements = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let accepted_by_api = stdout
            .lines()
            .any(|l| l.starts_with(&format!("breakerpolicy.resilience.demo.dev/probe-{i} ")));
        let rejected_by_api = stderr.contains(&format!("\"probe-{i}\""));
        assert_ne!(
            accepted_by_api, rejected_by_api,
            "probe-{i} ({doc:?}): no clear answer\n{stdout}\n{stderr}"
        );
        let valid = breaker_api::BreakerSettings::parse_yaml(doc);
        if accepted_by_api != valid.is_ok() {
            disagreements.push(format!(
                "{doc:?}: API server {}, validation {valid:?}",
                if accepted_by_api {
                    "accepts"
                } else {
                    "rejects"
                }
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "schema/CEL and validation disagree:\n{}",
        disagreements.join("\n")
    );
    figure!(
        "settings rules: {} boundary documents, API server (schema + CEL) = validation on each",
        docs.len()
    );
}

#[actix_web::test]
#[ignore = "control-plane tier: needs kube-apiserver and etcd (make control-plane-bins); run by `make test`"]
async fn policy_changes_reach_the_running_gateway_without_restart() {
    let _serial = serial();
    let plane = control_plane();
    let dir = tempfile::tempdir().unwrap();
    let _controller = start_controller(&plane, dir.path());
    let stack = gateway_stack(&plane);
    let c = client();
    // One policy's life, each step starting where the last one left it.
    apply_writes_the_configmap_and_readies_the_gateway(&plane, &c, &stack).await;
    updates_take_effect_within_a_second(&plane, &c, &stack).await;
    force_open_sheds_every_call_and_auto_restores_them(&plane, &c, &stack).await;
    hand_edits_of_the_configmap_are_taken_back(&plane, &c, &stack).await;
    a_second_policy_for_the_configmap_is_a_conflict(&plane).await;
    deleting_releases_the_configmap_for_the_next_policy(&plane, &c, &stack).await;
}

/// `kubectl apply` → the ConfigMap written and labelled with its policy, status Ready for
/// generation 1, and the gateway running the settings.
async fn apply_writes_the_configmap_and_readies_the_gateway(
    plane: &ControlPlane,
    c: &awc::Client,
    stack: &Stack,
) {
    let out = kubectl_apply(
        plane,
        &policy(
            "gw",
            "Auto",
            "failureThreshold: 4\ncallTimeout: 300ms\nopenDuration: 2s",
        ),
    );
    assert!(out.status.success());
    let bp = wait_for(Duration::from_secs(10), "Ready", || {
        let bp = get_json(plane, &["bp", "gw"])?;
        (ready_condition(&bp)?["status"] == "True").then_some(bp)
    })
    .await;
    assert_eq!(bp["status"]["observedGeneration"], 1);
    assert_eq!(ready_condition(&bp).unwrap()["observedGeneration"], 1);
    assert_eq!(ready_condition(&bp).unwrap()["reason"], "Applied");
    // v2 knows its settings now, so it is ready
    wait_for_ready(c, &stack.v2).await;
    assert_eq!(bp["status"]["configMap"], format!("{NS}/{TARGET}"));
    let cm = get_json(plane, &["configmap", TARGET]).unwrap();
    assert_eq!(cm["metadata"]["labels"]["resilience.demo.dev/policy"], "gw");
    assert!(
        cm["metadata"]["ownerReferences"].is_null(),
        "no owner reference: the garbage collector would delete the chart's ConfigMap with the policy: {cm}"
    );
    assert!(
        bp["metadata"]["finalizers"].is_null(),
        "no finalizer: deletion waits on no controller"
    );
    assert_eq!(cm["data"]["mode"], "Auto");
    let s = wait_status(c, stack, Duration::from_secs(10), |s| {
        s["settings"]["failureThreshold"] == 4
    })
    .await;
    assert_eq!(s["config_source"], format!("configmap:{NS}/{TARGET}"));
    assert_eq!(s["config_version"], cm["metadata"]["resourceVersion"]);
    assert_eq!(s["settings"]["callTimeout"], "300ms");
    // some history for the breaker to keep through the updates
    for id in 1..=3 {
        assert!(!get(c, &stack.v2.url(&format!("/product-details/{id}")))
            .await
            .degraded());
    }
}

/// 20 updates, each timed from `kubectl apply` returning to the gateway applying it; the
/// breaker's counters survive them.
async fn updates_take_effect_within_a_second(plane: &ControlPlane, c: &awc::Client, stack: &Stack) {
    let mut latencies = Vec::new();
    for i in 0..20u32 {
        let threshold = 10 + i;
        let yaml = policy(
            "gw",
            "Auto",
            &format!("failureThreshold: {threshold}\ncallTimeout: 300ms\nopenDuration: 2s"),
        );
        let out = kubectl_apply(plane, &yaml);
        assert!(out.status.success());
        let applied = Instant::now();
        wait_status(c, stack, Duration::from_secs(10), |s| {
            s["settings"]["failureThreshold"] == threshold
        })
        .await;
        latencies.push(applied.elapsed());
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p95 = latencies[latencies.len() * 95 / 100];
    figure!(
        "apply-to-effective over 20 updates: p50 {p50:?}, p95 {p95:?}, max {:?}",
        latencies.last().unwrap()
    );
    assert!(p95 < Duration::from_secs(1), "p95 {p95:?}");
    let bp = get_json(plane, &["bp", "gw"]).unwrap();
    assert_eq!(
        bp["status"]["observedGeneration"],
        bp["metadata"]["generation"]
    );
    // the breaker's counters survived the updates
    let s = status(c, stack).await;
    assert_eq!(s["counts"]["successes"], 3, "{s}");
}

/// ForceOpen: degraded answers, and recommendations is not called at all; Auto: full pages.
async fn force_open_sheds_every_call_and_auto_restores_them(
    plane: &ControlPlane,
    c: &awc::Client,
    stack: &Stack,
) {
    set_mode(plane, c, stack, "ForceOpen").await;
    let before = received(c, stack).await;
    for id in 1..=20 {
        let a = get(c, &stack.v2.url(&format!("/product-details/{id}"))).await;
        assert_eq!(a.status, 200);
        assert!(a.degraded());
    }
    assert_eq!(
        received(c, stack).await,
        before,
        "ForceOpen still called recommendations"
    );
    let m = metrics(c, &stack.v2).await;
    assert_eq!(
        m[r#"breaker_calls_total{outcome="rejected_forced_open"}"#],
        20.0
    );
    // back to Auto: full pages again
    set_mode(plane, c, stack, "Auto").await;
    let a = get(c, &stack.v2.url("/product-details/1")).await;
    assert!(!a.degraded() && a.recommendation_count() == 3, "{}", a.raw);
    assert_eq!(received(c, stack).await, before + 1);
}

/// A hand edit of the ConfigMap is taken back at once: the controller watches it.
async fn hand_edits_of_the_configmap_are_taken_back(
    plane: &ControlPlane,
    c: &awc::Client,
    stack: &Stack,
) {
    let mut reverts = Vec::new();
    for (i, bad) in [
        r#"{"data":{"breaker.yaml":"failureTreshold: 2\n"}}"#,
        r#"{"data":{"mode":"ForceOpen"}}"#,
        r#"{"data":{"breaker.yaml":"failureThreshold: 1\n","mode":"ForceClosed"}}"#,
    ]
    .into_iter()
    .enumerate()
    {
        merge_patch(plane, &["configmap", TARGET], bad);
        let edited = Instant::now();
        wait_for(Duration::from_secs(5), "hand edit taken back", || {
            let cm = get_json(plane, &["configmap", TARGET])?;
            let settings = cm["data"]["breaker.yaml"].as_str()?;
            (settings.contains("failureThreshold: 29") && cm["data"]["mode"] == "Auto")
                .then_some(())
        })
        .await;
        reverts.push(edited.elapsed());
        eprintln!("hand edit {i} taken back in {:?}", reverts[i]);
    }
    let slowest = *reverts.iter().max().unwrap();
    figure!("hand edits of the target ConfigMap taken back in {reverts:?} (each from kubectl patch returning; includes kubectl get polling)");
    assert!(slowest < Duration::from_secs(1), "{reverts:?}");
    let s = wait_status(c, stack, Duration::from_secs(10), |s| {
        s["config_error"].is_null() && s["settings"]["failureThreshold"] == 29
    })
    .await;
    assert_eq!(s["mode"], "Auto");
}

/// A second policy for the same ConfigMap is not Ready (Conflict) and overwrites nothing.
async fn a_second_policy_for_the_configmap_is_a_conflict(plane: &ControlPlane) {
    let out = kubectl_apply(plane, &policy("rival", "ForceOpen", "failureThreshold: 1"));
    assert!(out.status.success());
    let rival = wait_for(Duration::from_secs(10), "Conflict", || {
        let bp = get_json(plane, &["bp", "rival"])?;
        let ready = ready_condition(&bp)?.clone();
        (ready["status"] == "False").then_some(ready)
    })
    .await;
    assert_eq!(rival["reason"], "Conflict");
    assert!(
        rival["message"]
            .as_str()
            .unwrap()
            .contains("managed by BreakerPolicy gw"),
        "{rival}"
    );
    let cm = get_json(plane, &["configmap", TARGET]).unwrap();
    assert_eq!(cm["data"]["mode"], "Auto");
    assert!(cm["data"]["breaker.yaml"]
        .as_str()
        .unwrap()
        .contains("failureThreshold: 29"));
    let events = plane.kubectl(
        Who::Admin,
        &["get", "events.events.k8s.io", "-n", NS, "-o", "json"],
        None,
    );
    let events: Value = serde_json::from_slice(&events.stdout).unwrap();
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"Applied") && reasons.contains(&"Conflict"),
        "{reasons:?}"
    );
}

/// Deleted while ForceOpen: the deletion waits on nothing; the controller takes back what the
/// policy wrote and leaves the ConfigMap; the gateway keeps its settings, mode Auto; a new
/// policy then takes the freed ConfigMap.
async fn deleting_releases_the_configmap_for_the_next_policy(
    plane: &ControlPlane,
    c: &awc::Client,
    stack: &Stack,
) {
    let out = plane.kubectl(Who::Admin, &["delete", "bp", "rival", "-n", NS], None);
    assert!(out.status.success());
    set_mode(plane, c, stack, "ForceOpen").await;
    let deleting = Instant::now();
    let deleted = delete_policy(plane, "gw");
    let cm = wait_for(
        Duration::from_secs(5),
        "the policy's fields released",
        || {
            let cm = get_json(plane, &["configmap", TARGET]).expect("the ConfigMap stays");
            cm["data"].is_null().then_some(cm)
        },
    )
    .await;
    figure!(
        "kubectl delete bp --wait: {deleted:?}; its fields released {:?} after the delete",
        deleting.elapsed()
    );
    assert!(cm["metadata"]["ownerReferences"].is_null(), "{cm}");
    assert!(
        cm["metadata"]["labels"]["resilience.demo.dev/policy"].is_null(),
        "{cm}"
    );
    assert_eq!(
        cm["metadata"]["labels"]["resilience.demo.dev/breaker-target"],
        "true"
    );
    let s = wait_status(c, stack, Duration::from_secs(10), |s| s["mode"] == "Auto").await;
    assert_eq!(s["settings"]["failureThreshold"], 29);
    assert!(
        s["config_error"]
            .as_str()
            .unwrap()
            .contains("no BreakerPolicy"),
        "{s}"
    );
    let a = get(c, &stack.v2.url("/product-details/1")).await;
    assert!(!a.degraded());

    // a new policy takes the freed ConfigMap
    let out = kubectl_apply(plane, &policy("rival", "ForceOpen", "failureThreshold: 1"));
    assert!(out.status.success());
    let rival = wait_for(Duration::from_secs(10), "rival Ready", || {
        let bp = get_json(plane, &["bp", "rival"])?;
        (ready_condition(&bp)?["status"] == "True").then_some(bp)
    })
    .await;
    assert_eq!(rival["status"]["observedGeneration"], 1);
    wait_status(c, stack, Duration::from_secs(10), |s| {
        s["mode"] == "ForceOpen" && s["settings"]["failureThreshold"] == 1
    })
    .await;
}

#[actix_web::test]
#[ignore = "control-plane tier: needs kube-apiserver and etcd (make control-plane-bins); run by `make test`"]
async fn controller_and_gateway_ride_out_an_api_server_outage() {
    let _serial = serial();
    let mut plane = control_plane();
    let dir = tempfile::tempdir().unwrap();
    let _controller = start_controller(&plane, dir.path());
    let stack = gateway_stack(&plane);
    let c = client();
    assert!(
        kubectl_apply(&plane, &policy("gw", "Auto", "failureThreshold: 5"))
            .status
            .success()
    );
    wait_status(&c, &stack, Duration::from_secs(10), |s| {
        s["settings"]["failureThreshold"] == 5
    })
    .await;

    plane.stop_apiserver();
    // a fresh HTTP client: the stop blocked this runtime, which awc's pool does not survive
    let c = client();
    let outage = Instant::now();
    let mut answered = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        let a = get(&c, &stack.v2.url("/product-details/2")).await;
        assert_eq!(
            a.status, 200,
            "the gateway failed a request during the outage: {}",
            a.raw
        );
        assert!(!a.degraded());
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = status(&c, &stack).await;
    assert_eq!(
        s["settings"]["failureThreshold"], 5,
        "settings kept through the outage"
    );
    figure!("during the 10 s outage the gateway answered {answered} of {answered} requests; watch error: {}", s["config_watch_error"]);
    plane.start_apiserver().unwrap_or_else(|e| panic!("{e}"));
    let back = Instant::now();
    let c = client();

    // both re-watch by themselves: a change made after the outage arrives
    assert!(
        kubectl_apply(&plane, &policy("gw", "Auto", "failureThreshold: 6"))
            .status
            .success()
    );
    let s = wait_status(&c, &stack, Duration::from_secs(30), |s| {
        s["settings"]["failureThreshold"] == 6
    })
    .await;
    figure!(
        "a change made after the restart reached the gateway {:?} after the API server was back",
        back.elapsed()
    );
    assert!(s["config_watch_error"].is_null(), "{s}");
    let bp = wait_for(Duration::from_secs(30), "observedGeneration 2", || {
        let bp = get_json(&plane, &["bp", "gw"])?;
        (bp["status"]["observedGeneration"] == 2).then_some(bp)
    })
    .await;
    assert_eq!(ready_condition(&bp).unwrap()["status"], "True");
}

#[actix_web::test]
#[ignore = "control-plane tier: needs kube-apiserver and etcd (make control-plane-bins); run by `make test`"]
async fn the_shipped_roles_grant_no_more_than_needed() {
    let _serial = serial();
    let plane = control_plane();
    let can = |who: Who, args: &[&str]| -> bool {
        let mut all = vec!["auth", "can-i", "-n", NS];
        all.extend_from_slice(args);
        let out = plane.kubectl(who, &all, None);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let target = format!("configmaps/{TARGET}");
    // what each needs
    assert!(can(
        Who::Controller,
        &["watch", "breakerpolicies.resilience.demo.dev"]
    ));
    assert!(can(
        Who::Controller,
        &[
            "patch",
            "breakerpolicies.resilience.demo.dev",
            "--subresource=status"
        ]
    ));
    assert!(can(Who::Controller, &["patch", &target]));
    // it watches its target by name (hand edits taken back at once), and no other ConfigMap
    assert!(can(Who::Controller, &["watch", &target]));
    assert!(can(Who::Controller, &["create", "events.events.k8s.io"]));
    // leader election: its own Lease, and no other
    let lease = "leases.coordination.k8s.io/breaker-controller";
    assert!(can(Who::Controller, &["patch", lease]));
    assert!(can(
        Who::Controller,
        &["create", "leases.coordination.k8s.io"]
    ));
    assert!(!can(
        Who::Controller,
        &["patch", "leases.coordination.k8s.io/kube-scheduler"]
    ));
    assert!(!can(Who::Controller, &["delete", lease]));
    assert!(!can(
        Who::Gateway,
        &["create", "leases.coordination.k8s.io"]
    ));
    assert!(can(Who::Gateway, &["watch", &target]));
    // the replica watcher reads pods, and only that
    assert!(can(Who::Controller, &["watch", "pods"]));
    assert!(can(Who::Controller, &["list", "pods"]));
    for verb in ["create", "patch", "delete"] {
        assert!(
            !can(Who::Controller, &[verb, "pods"]),
            "the controller may {verb} pods"
        );
    }
    assert!(!can(Who::Controller, &["create", "pods/exec"]));
    assert!(!can(Who::Controller, &["get", "pods/log"]));
    assert!(
        !can(Who::Gateway, &["list", "pods"]),
        "the gateway may list pods"
    );
    // the gateway reads recommendations' EndpointSlices (scope Endpoint), and only reads them
    for verb in ["list", "watch"] {
        assert!(can(
            Who::Gateway,
            &[verb, "endpointslices.discovery.k8s.io"]
        ));
    }
    for verb in ["create", "patch", "delete"] {
        assert!(!can(
            Who::Gateway,
            &[verb, "endpointslices.discovery.k8s.io"]
        ));
    }
    // what neither may do
    for who in [Who::Controller, Who::Gateway] {
        assert!(
            !can(who, &["get", "secrets"]),
            "{} can read Secrets",
            who.name()
        );
        assert!(
            !can(who, &["list", "secrets"]),
            "{} can list Secrets",
            who.name()
        );
        assert!(
            !can(who, &["patch", "configmaps/other"]),
            "{} can write other ConfigMaps",
            who.name()
        );
        assert!(
            !can(who, &["create", "configmaps"]),
            "{} can create ConfigMaps",
            who.name()
        );
        assert!(!can(who, &["delete", "configmaps/other"]));
        assert!(
            !can(who, &["delete", &target]),
            "{} can delete the gateway's ConfigMap",
            who.name()
        );
        assert!(!can(who, &["get", "configmaps", "-n", "default"]));
        assert!(
            !can(who, &["list", "configmaps"]),
            "{} can list all ConfigMaps",
            who.name()
        );
    }
    assert!(
        !can(Who::Gateway, &["patch", &target]),
        "the gateway may only read its ConfigMap"
    );
    assert!(!can(
        Who::Gateway,
        &["get", "breakerpolicies.resilience.demo.dev"]
    ));
    assert!(!can(
        Who::Controller,
        &["delete", "breakerpolicies.resilience.demo.dev"]
    ));
}

#[actix_web::test]
#[ignore = "control-plane tier: needs kube-apiserver and etcd (make control-plane-bins); run by `make test`"]
async fn the_controller_names_a_missing_crd_at_start_and_is_ready_once_synced() {
    let _serial = serial();
    let plane = control_plane_without_crd();
    // No CRD yet: the controller stops at once and says what to do.
    let mut child = std::process::Command::new(bin_path("breaker-controller"))
        .env("KUBECONFIG", plane.kubeconfig(Who::Controller))
        .env("WATCH_NAMESPACE", NS)
        .env("PORT", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the controller ran on without its CRD"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!status.success());
    assert!(
        said.contains(
            "the BreakerPolicy CRD is not installed: run `kubectl apply -f k8s/crd.yaml`"
        ),
        "{said}"
    );
    // With it, the controller is ready once its watch has listed the policies.
    plane
        .install_crds(&Path::new(ROOT).join("k8s/crd.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let controller = start_controller(&plane, dir.path());
    wait_for_ready(&client(), &controller).await;
    assert!(controller.log_text().contains("BreakerPolicies synced"));
}

/// A Pod object standing for a v2 process on 127.0.0.1:`port` (no kubelet here: the test
/// writes the pod's status as one would).
fn fake_v2_pod(plane: &ControlPlane, name: &str, port: u16) {
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    resilience.demo.dev/breaker-configmap: {TARGET}\nspec:\n  containers:\n    - name: api-gateway-v2\n      image: api-gateway-v2\n      ports:\n        - name: http\n          containerPort: {port}\n"
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
fn watch_policy(
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

fn replica<'a>(bp: &'a Value, pod: &str) -> Option<&'a Value> {
    bp["status"]["replicas"]
        .as_array()?
        .iter()
        .find(|r| r["pod"] == pod)
}

#[actix_web::test]
#[ignore = "control-plane tier: needs kube-apiserver and etcd (make control-plane-bins); run by `make test`"]
async fn each_replicas_live_breaker_reaches_the_policy_status_and_its_events() {
    let _serial = serial();
    let plane = control_plane();
    let dir = tempfile::tempdir().unwrap();
    let controller = start_controller(&plane, dir.path());
    let stack = gateway_stack(&plane);
    let second = stack.start_v2_replica(&[]);
    let c = client();
    let yaml = policy(
        "gw",
        "Auto",
        "failureThreshold: 1\ncallTimeout: 200ms\nopenDuration: 1s",
    );
    assert!(kubectl_apply(&plane, &yaml).status.success());
    fake_v2_pod(&plane, "gw-a", stack.v2.port);
    fake_v2_pod(&plane, "gw-b", second.port);
    let bp = wait_for(Duration::from_secs(15), "both replicas applied", || {
        let bp = get_json(&plane, &["bp", "gw"])?;
        (bp["status"]["applied"] == "2/2" && bp["status"]["open"] == "0/2").then_some(bp)
    })
    .await;
    assert_eq!(replica(&bp, "gw-a").unwrap()["state"], "closed", "{bp}");
    assert_eq!(replica(&bp, "gw-b").unwrap()["mode"], "Auto", "{bp}");
    let table = plane.kubectl(Who::Admin, &["get", "bp", "gw", "-n", NS], None);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["NAME", "MODE", "OPEN", "APPLIED", "EJECTED", "READY", "REASON", "AGE"]),
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..6],
        ["gw", "Auto", "0/2", "2/2", "True", "Applied"],
        "{table}"
    );

    // Replica a flaps against a hanging dependency: every 1 s it opens, probes and re-opens.
    let (mut watch, seen) = watch_policy(&plane, "gw");
    set_fault(&c, &stack, r#"{"mode":"hang","hang":"30s"}"#).await;
    let flap_for = std::env::var("FLAP_FOR")
        .ok()
        .and_then(|v| duration_text::parse(&v).ok())
        .unwrap_or(Duration::from_secs(12));
    let started = Instant::now();
    while started.elapsed() < flap_for {
        let _ = get(&c, &stack.v2.url("/product-details/1")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    set_fault(&c, &stack, r#"{"mode":"none"}"#).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch.kill().ok();
    let arrivals: Vec<(chrono::DateTime<chrono::Utc>, Value)> = seen.try_iter().collect();

    // Each transition of replica a: when it happened, and when `kubectl get -w` showed it.
    let transitions = status(&c, &stack).await["transitions"]
        .as_array()
        .unwrap()
        .clone();
    assert!(transitions.len() >= 6, "{transitions:?}");
    let mut lags = Vec::new();
    for t in &transitions {
        let at: chrono::DateTime<chrono::Utc> = t["at"].as_str().unwrap().parse().unwrap();
        let shown = arrivals.iter().find(|(_, bp)| {
            replica(bp, "gw-a")
                .and_then(|r| r["since"].as_str())
                .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .is_some_and(|since| since >= at)
        });
        // A transition overtaken within the write interval is shown by a later one.
        if let Some((when, _)) = shown {
            lags.push((*when - at).to_std().unwrap_or_default());
        }
    }
    lags.sort();
    let p = |q: f64| lags[((lags.len() as f64 * q).ceil() as usize).clamp(1, lags.len()) - 1];
    figure!(
        "transition → kubectl get bp -w: {} transitions, p50 {:?}, p95 {:?}, max {:?}",
        lags.len(),
        p(0.5),
        p(0.95),
        lags.last().unwrap()
    );
    assert!(p(0.95) < Duration::from_secs(2), "{lags:?}");
    // The other replica kept its own breaker: decisions are never shared.
    let bp = get_json(&plane, &["bp", "gw"]).unwrap();
    assert_eq!(replica(&bp, "gw-b").unwrap()["state"], "closed", "{bp}");
    assert!(arrivals.iter().any(|(_, bp)| bp["status"]["open"] == "1/2"));

    // Events on the policy: one kind per transition, folded while flapping.
    let events = get_json(
        &plane,
        &[
            "events.events.k8s.io",
            "--field-selector",
            "regarding.name=gw",
        ],
    )
    .unwrap();
    let notes: Vec<String> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("Circuit"))
        })
        .map(|e| {
            // Each pod's Events of a kind are their own series: the pod is the related object.
            assert_eq!(e["related"]["kind"], "Pod", "{e}");
            assert!(
                e["note"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("pod {}:", e["related"]["name"].as_str().unwrap())),
                "{e}"
            );
            format!(
                "{} {}",
                e["reason"].as_str().unwrap(),
                e["note"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("CircuitOpened pod gw-a: the circuit opened")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("CircuitHalfOpened pod gw-a")),
        "{notes:?}"
    );
    let m = metrics(&c, &controller).await;
    let sum = |name: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(name) && k.contains("Circuit"))
            .map(|(_, v)| v)
            .sum()
    };
    let (writes, seen_transitions) = (
        sum("controller_event_writes_total"),
        sum("controller_replica_transitions_total"),
    );
    figure!(
        "flapping for {:?}: {} transitions on one replica, {} Event writes, {} status writes",
        flap_for,
        seen_transitions,
        writes,
        m["controller_replica_status_writes_total"]
    );
    assert!(
        writes >= 2.0 && writes < seen_transitions,
        "{writes} writes for {seen_transitions} transitions"
    );

    // A replica that goes away leaves the status.
    assert!(plane
        .kubectl(
            Who::Admin,
            &["delete", "pod", "gw-b", "-n", NS, "--wait=false"],
            None
        )
        .status
        .success());
    wait_for(Duration::from_secs(10), "gw-b gone from the status", || {
        let bp = get_json(&plane, &["bp", "gw"])?;
        (replica(&bp, "gw-b").is_none() && bp["status"]["applied"] == "1/1").then_some(())
    })
    .await;
}

#[actix_web::test]
#[ignore = "control-plane tier: needs kube-apiserver and etcd (make control-plane-bins); run by `make test`"]
async fn observe_mode_lets_every_call_through_and_says_what_it_would_do() {
    let _serial = serial();
    let plane = control_plane();
    let dir = tempfile::tempdir().unwrap();
    let _controller = start_controller(&plane, dir.path());
    let stack = gateway_stack(&plane);
    let c = client();
    let yaml = policy(
        "gw",
        "Observe",
        "failureThreshold: 2\ncallTimeout: 200ms\nopenDuration: 30s",
    );
    assert!(kubectl_apply(&plane, &yaml).status.success());
    wait_status(&c, &stack, Duration::from_secs(10), |s| {
        s["mode"] == "Observe"
    })
    .await;
    fake_v2_pod(&plane, "gw-a", stack.v2.port);
    set_fault(&c, &stack, r#"{"mode":"hang","hang":"30s"}"#).await;
    let before = received(&c, &stack).await;
    for _ in 0..6 {
        let a = get(&c, &stack.v2.url("/product-details/2")).await;
        assert_eq!(a.status, 200, "{}", a.raw);
        assert!(a.degraded());
    }
    // Auto would have opened after 2 failures and rejected the other 4: all 6 went through.
    assert_eq!(received(&c, &stack).await - before, 6, "no call rejected");
    let s = status(&c, &stack).await;
    assert_eq!(
        (s["state"].as_str(), s["mode"].as_str()),
        (Some("open"), Some("Observe")),
        "{s}"
    );
    assert_eq!(s["last_transition"]["mode"], "Observe", "{s}");
    let m = metrics(&c, &stack.v2).await;
    assert_eq!(m["breaker_would_reject_total{outcome=\"open\"}"], 4.0);
    assert!(
        !m.keys()
            .any(|k| k.starts_with("breaker_calls_total{outcome=\"rejected")),
        "{m:?}"
    );
    let bp = wait_for(Duration::from_secs(10), "would-open in the status", || {
        let bp = get_json(&plane, &["bp", "gw"])?;
        (bp["status"]["open"] == "1/1").then_some(bp)
    })
    .await;
    assert_eq!(replica(&bp, "gw-a").unwrap()["mode"], "Observe", "{bp}");
    let events = wait_for(Duration::from_secs(10), "a would-open Event", || {
        let events = get_json(
            &plane,
            &[
                "events.events.k8s.io",
                "--field-selector",
                "regarding.name=gw",
            ],
        )?;
        let found = events["items"].as_array()?.iter().any(|e| {
            e["reason"] == "CircuitOpened"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("would have opened"))
        });
        found.then_some(events)
    })
    .await;
    eprintln!(
        "{}",
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{} {}", e["reason"], e["note"]))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// An EndpointSlice of `service` with these `(pod, ip, ready)` endpoints, as Kubernetes'
/// EndpointSlice controller writes them (no such controller runs here).
fn recommendations_slice(name: &str, service: &str, endpoints: &[(&str, &str, bool)]) -> String {
    slice_managed_by(name, service, endpoints, "endpointslice-controller.k8s.io")
}

fn slice_managed_by(
    name: &str,
    service: &str,
    endpoints: &[(&str, &str, bool)],
    manager: &str,
) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|(pod, ip, ready)| {
            format!(
                "  - addresses: [\"{ip}\"]\n    conditions: {{ready: {ready}}}\n    targetRef: {{kind: Pod, name: {pod}, namespace: {NS}}}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {NS}\n  labels:\n    kubernetes.io/service-name: {service}\n    endpointslice.kubernetes.io/managed-by: {manager}\naddressType: IPv4\nports:\n  - name: http\n    port: 8082\n    protocol: TCP\nendpoints:\n{endpoints}"
    )
}

#[actix_web::test]
#[ignore = "control-plane tier: needs kube-apiserver and etcd (make control-plane-bins); run by `make test`"]
async fn v2_follows_the_ready_endpoints_of_recommendations_endpointslices_as_they_change() {
    let _serial = serial();
    let plane = control_plane();
    let dir = tempfile::tempdir().unwrap();
    let _controller = start_controller(&plane, dir.path());
    let yaml = policy("gw", "Auto", "scope: Endpoint");
    assert!(kubectl_apply(&plane, &yaml).status.success());
    // Under the chart's Role for v2, which may list and watch EndpointSlices.
    let stack = Stack::start(StackConfig {
        gateway_env: vec![(
            "RECOMMENDATIONS_ENDPOINTSLICES",
            format!("{NS}/recommendations-service"),
        )],
        v2_configmap: Some((format!("{NS}/{TARGET}"), plane.kubeconfig(Who::Gateway))),
        ..Default::default()
    });
    let c = client();
    let names = |s: &Value| -> Vec<String> {
        s["endpoints"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let expect = |want: &'static [&'static str]| {
        let (c, stack) = (&c, &stack);
        async move {
            let s = wait_status(c, stack, Duration::from_secs(10), |s| names(s) == want).await;
            assert_eq!(s["scope"], "Endpoint", "{s}");
        }
    };

    let apply = |yaml: String| assert!(kubectl_apply(&plane, &yaml).status.success());
    apply(recommendations_slice(
        "recommendations-a",
        "recommendations-service",
        &[("rec-1", "10.1.0.1", true), ("rec-2", "10.1.0.2", true)],
    ));
    // Another Service's slice is not recommendations', nor is one that something other than
    // Kubernetes' EndpointSlice controller wrote (anyone who may write a slice could otherwise
    // send v2's calls anywhere).
    apply(recommendations_slice(
        "other-a",
        "other-service",
        &[("other-1", "10.1.0.9", true)],
    ));
    apply(slice_managed_by(
        "recommendations-forged",
        "recommendations-service",
        &[("forged-1", "10.1.0.66", true)],
        "someone-else",
    ));
    expect(&["rec-1", "rec-2"]).await;
    // A second slice adds its endpoints.
    apply(recommendations_slice(
        "recommendations-b",
        "recommendations-service",
        &[("rec-3", "10.1.0.3", true)],
    ));
    expect(&["rec-1", "rec-2", "rec-3"]).await;
    // Not ready: out of the set; ready again: back.
    apply(recommendations_slice(
        "recommendations-a",
        "recommendations-service",
        &[("rec-1", "10.1.0.1", true), ("rec-2", "10.1.0.2", false)],
    ));
    expect(&["rec-1", "rec-3"]).await;
    // A slice deleted takes its endpoints with it.
    let out = plane.kubectl(
        Who::Admin,
        &["delete", "endpointslice", "recommendations-b", "-n", NS],
        None,
    );
    assert!(out.status.success());
    expect(&["rec-1"]).await;
    let s = status(&c, &stack).await;
    assert_eq!(s["endpoints"][0]["address"], "http://10.1.0.1:8082", "{s}");
}

fn kubectl_ok(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) {
    let out = plane.kubectl(Who::Admin, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl patch <what> -n demo --type merge -p <patch>`, which must succeed; `what` names the
/// object, and may add `--subresource=status`.
fn merge_patch(plane: &ControlPlane, what: &[&str], patch: &str) {
    let args = [what, &["-n", NS, "--type", "merge", "-p", patch]].concat();
    kubectl_ok(plane, &[&["patch"], args.as_slice()].concat(), None);
}

/// `kubectl delete bp <name> --wait`, which must succeed; how long it took.
fn delete_policy(plane: &ControlPlane, name: &str) -> Duration {
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
async fn apply_until_applied(plane: &ControlPlane, name: &str, settings: &str) {
    assert!(kubectl_apply(plane, &policy(name, "Auto", settings))
        .status
        .success());
    wait_for(Duration::from_secs(10), "Applied", || {
        (ready_reason(plane, name)?.0 == "Applied").then_some(())
    })
    .await;
}

fn ready_reason(plane: &ControlPlane, name: &str) -> Option<(String, String)> {
    let bp = get_json(plane, &["bp", name])?;
    let ready = ready_condition(&bp)?;
    Some((
        ready["reason"].as_str()?.to_string(),
        ready["message"].as_str()?.to_string(),
    ))
}

/// What a policy's deletion, its ConfigMap's deletion, a target outside the Role and a policy
/// from the finalizer's days each come to, with and without a controller running.
#[actix_web::test]
#[ignore = "control-plane tier: needs kube-apiserver and etcd (make control-plane-bins); run by `make test`"]
async fn deletion_waits_on_no_controller_and_what_a_deleted_policy_wrote_is_released_when_one_runs()
{
    let _serial = serial();
    let plane = control_plane();
    let dir = tempfile::tempdir().unwrap();
    let mut controller = start_controller(&plane, dir.path());
    apply_until_applied(&plane, "gw", "failureThreshold: 7").await;

    // No controller: the deletion does not wait, and the fields stay until one runs.
    controller.terminate();
    let deleted = delete_policy(&plane, "gw");
    assert!(deleted < Duration::from_secs(5), "{deleted:?}");
    let cm = get_json(&plane, &["configmap", TARGET]).unwrap();
    assert_eq!(cm["metadata"]["labels"]["resilience.demo.dev/policy"], "gw");
    // A policy as the finalizer's days left it: the finalizer, and its ConfigMap owned.
    let legacy = format!(
        "{}\n",
        policy("old", "ForceClosed", "failureThreshold: 11").replace(
            "metadata:\n  name: old\n",
            "metadata:\n  name: old\n  finalizers: [resilience.demo.dev/configmap]\n"
        )
    );
    assert!(kubectl_apply(&plane, &legacy).status.success());

    // The next controller releases gw's fields, and the legacy policy takes the ConfigMap and
    // loses its finalizer.
    let starting = Instant::now();
    let controller = start_controller(&plane, dir.path());
    wait_for(Duration::from_secs(15), "old Applied", || {
        (ready_reason(&plane, "old")?.0 == "Applied").then_some(())
    })
    .await;
    let taken = starting.elapsed();
    let cm = get_json(&plane, &["configmap", TARGET, "--show-managed-fields"]).unwrap();
    assert_eq!(
        cm["metadata"]["labels"]["resilience.demo.dev/policy"],
        "old"
    );
    assert!(cm["data"]["breaker.yaml"]
        .as_str()
        .unwrap()
        .contains("failureThreshold: 11"));
    let managers: Vec<&str> = cm["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(
        !managers.contains(&"breaker-controller.gw"),
        "gw's fields released: {managers:?}"
    );
    let old = wait_for(Duration::from_secs(5), "legacy finalizer removed", || {
        let bp = get_json(&plane, &["bp", "old"])?;
        bp["metadata"]["finalizers"].is_null().then_some(bp)
    })
    .await;
    assert_eq!(old["status"]["observedGeneration"], 1);
    // During an upgrade the finalizer's controller still runs beside this one and puts its
    // finalizer back, having written the status its own way: that change (not of the spec) is
    // seen, and the finalizer removed again, first time, though this reconcile's status write
    // moves the policy's resourceVersion on.
    let c = awc::Client::default();
    let errors = || async {
        metrics(&c, &controller)
            .await
            .iter()
            .filter(|(k, _)| k.starts_with("controller_reconcile_errors"))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    let errors_before = errors().await;
    merge_patch(
        &plane,
        &["bp", "old", "--subresource=status"],
        r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Applied","message":"as 0.1.0 wrote it","lastTransitionTime":"2026-01-01T00:00:00Z","observedGeneration":1}]}}"#,
    );
    let readding = Instant::now();
    merge_patch(
        &plane,
        &["bp", "old"],
        r#"{"metadata":{"finalizers":["resilience.demo.dev/configmap"]}}"#,
    );
    wait_for(Duration::from_secs(5), "re-added finalizer removed", || {
        get_json(&plane, &["bp", "old"])?["metadata"]["finalizers"]
            .is_null()
            .then_some(())
    })
    .await;
    let readded_removed = readding.elapsed();
    assert_eq!(
        errors().await,
        errors_before,
        "a reconcile failed on the way"
    );
    let old_deleted = delete_policy(&plane, "old");
    wait_for(Duration::from_secs(5), "old's fields released", || {
        get_json(&plane, &["configmap", TARGET])?["data"]
            .is_null()
            .then_some(())
    })
    .await;

    // A deleted target is reported at once, and a new one taken as soon as it exists.
    apply_until_applied(&plane, "gw", "failureThreshold: 8").await;
    let removing = Instant::now();
    kubectl_ok(&plane, &["delete", "configmap", TARGET, "-n", NS], None);
    let (_, message) = wait_for(Duration::from_secs(5), "TargetMissing", || {
        ready_reason(&plane, "gw").filter(|(reason, _)| reason == "TargetMissing")
    })
    .await;
    let missing_after = removing.elapsed();
    assert!(message.contains("not found"), "{message}");
    let restoring = Instant::now();
    kubectl_ok(
        &plane,
        &["apply", "-f", &format!("{ROOT}/k8s/gateway-configmap.yaml")],
        None,
    );
    wait_for(Duration::from_secs(5), "Applied again", || {
        (ready_reason(&plane, "gw")?.0 == "Applied").then_some(())
    })
    .await;
    let restored_after = restoring.elapsed();
    assert!(missing_after < Duration::from_secs(1), "{missing_after:?}");
    assert!(
        restored_after < Duration::from_secs(2),
        "{restored_after:?}"
    );

    // A target outside the controller's Role: not Ready, and what to do.
    let elsewhere = policy("elsewhere", "Auto", "{}").replace(
        &format!("configMap: {TARGET}"),
        "configMap: kube-root-ca.crt",
    );
    assert!(kubectl_apply(&plane, &elsewhere).status.success());
    let (_, message) = wait_for(Duration::from_secs(10), "Forbidden", || {
        ready_reason(&plane, "elsewhere").filter(|(reason, _)| reason == "Forbidden")
    })
    .await;
    assert!(
        message.contains(&format!("may write ConfigMap {TARGET} only")),
        "{message}"
    );
    let cm = get_json(&plane, &["configmap", TARGET]).unwrap();
    assert_eq!(cm["metadata"]["labels"]["resilience.demo.dev/policy"], "gw");
    figure!(
        "lifecycle: delete with no controller {deleted:?}; next controller released the gone policy's fields and applied the legacy one {taken:?} after its start; a finalizer put back removed in {readded_removed:?}; legacy delete {old_deleted:?}; deleted target reported in {missing_after:?}, recreated one taken in {restored_after:?}"
    );
}

async fn leader_of(c: &awc::Client, controllers: &[Proc]) -> Option<usize> {
    for (i, proc) in controllers.iter().enumerate() {
        let answer = get(c, &proc.url("/leader")).await;
        let body: Value = serde_json::from_str(&answer.raw).ok()?;
        if body["leading"] == true {
            return Some(i);
        }
    }
    None
}

fn threshold_in_configmap(plane: &ControlPlane) -> Option<u32> {
    let cm = get_json(plane, &["configmap", TARGET])?;
    let yaml = cm["data"]["breaker.yaml"].as_str()?;
    yaml.lines()
        .find_map(|l| l.strip_prefix("failureThreshold: "))?
        .trim()
        .parse()
        .ok()
}

/// Two controllers: one leads, the other stands by, ready, writing nothing. The leader is
/// killed (no release) in the middle of a stream of policy changes; the standby takes over
/// within the Lease's duration and applies the changes, each once, none lost.
#[actix_web::test]
#[ignore = "control-plane tier: needs kube-apiserver and etcd (make control-plane-bins); run by `make test`"]
async fn the_standby_takes_over_from_a_killed_leader_within_the_lease_and_loses_no_change() {
    let _serial = serial();
    let plane = control_plane();
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let mut controllers = vec![
        start_controller(&plane, dir.path()),
        start_controller(&plane, dir.path()),
    ];
    for proc in &controllers {
        wait_for_ready(&c, proc).await;
    }
    let leader = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = leader_of(&c, &controllers).await {
                break i;
            }
            assert!(Instant::now() < deadline, "no leader within 10 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let standby = 1 - leader;
    let mut threshold = 100;
    let apply = |threshold: u32| {
        let yaml = policy("gw", "Auto", &format!("failureThreshold: {threshold}"));
        assert!(kubectl_apply(&plane, &yaml).status.success());
    };
    // changes while the leader lives: each applied by it alone
    for _ in 0..5 {
        threshold += 1;
        apply(threshold);
        wait_for(Duration::from_secs(5), "applied", || {
            (threshold_in_configmap(&plane)? == threshold).then_some(())
        })
        .await;
    }
    let m = metrics(&c, &controllers[standby]).await;
    assert_eq!(m.get("controller_leading").copied(), Some(0.0));
    assert_eq!(
        m.get(r#"controller_reconciles_total{result="done"}"#)
            .copied()
            .unwrap_or(0.0),
        0.0,
        "the standby reconciled"
    );
    let m = metrics(&c, &controllers[leader]).await;
    assert_eq!(m.get("controller_leading").copied(), Some(1.0));

    // kill the leader (SIGKILL: it cannot release the Lease), and keep changing the policy
    let killed = Instant::now();
    drop(controllers.remove(leader));
    let standby = &controllers[0];
    let mut first_applied = None;
    let mut last = threshold;
    let stream_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < stream_until {
        last += 1;
        apply(last);
        tokio::time::sleep(Duration::from_millis(250)).await;
        if first_applied.is_none() && threshold_in_configmap(&plane) == Some(last) {
            first_applied = Some(killed.elapsed());
        }
    }
    wait_for(Duration::from_secs(10), "the last change applied", || {
        (threshold_in_configmap(&plane)? == last).then_some(())
    })
    .await;
    let takeover = first_applied.unwrap_or_else(|| killed.elapsed());
    let body: Value = serde_json::from_str(&get(&c, &standby.url("/leader")).await.raw).unwrap();
    assert_eq!(body["leading"], true, "{body}");
    let bp = get_json(&plane, &["bp", "gw"]).unwrap();
    assert_eq!(
        bp["status"]["observedGeneration"],
        bp["metadata"]["generation"]
    );
    assert_eq!(ready_condition(&bp).unwrap()["reason"], "Applied");
    // one Applied Event series per generation: the new leader wrote none for a generation the
    // old one had applied
    let events = plane.kubectl(
        Who::Admin,
        &["get", "events.events.k8s.io", "-n", NS, "-o", "json"],
        None,
    );
    let events: Value = serde_json::from_slice(&events.stdout).unwrap();
    let applied: u64 = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "Applied")
        .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
        .sum();
    let generations = bp["metadata"]["generation"].as_u64().unwrap();
    assert!(
        applied <= generations,
        "{applied} Applied Events for {generations} generations"
    );
    figure!(
        "leader killed during a change stream (a change every 250 ms): the standby applied the next change {takeover:?} after the kill (Lease 3 s); {applied} Applied Events for {generations} generations; the last change applied"
    );
    // The Lease lapses 3 s after its last renewal at most, the standby takes it up to 1 s
    // later; the rest is the new leader starting its watches and this loop's own pace (a
    // kubectl apply and get per turn).
    assert!(takeover < Duration::from_secs(5), "{takeover:?}");
}
