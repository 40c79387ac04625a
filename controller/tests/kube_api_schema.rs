//! The BreakerPolicy API against a real kube-apiserver: the CRD and its columns, what the API
//! server refuses and accepts (the same as the validation, at every bound), the shipped Roles,
//! and a controller started before its CRD.
// Each test has its own thread and runtime; the serializing guard is meant to span awaits.
#![allow(clippy::await_holding_lock)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use control_plane::{Who, SYSTEM_NAMESPACE as NS};
use e2e::*;
use serde_json::Value;
use support::*;

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
    assert!(can(Who::Controller, &["update", lease]));
    // the previous release's controllers renew with patch, during a rollout
    assert!(can(Who::Controller, &["patch", lease]));
    assert!(can(
        Who::Controller,
        &["create", "leases.coordination.k8s.io"]
    ));
    assert!(!can(
        Who::Controller,
        &["update", "leases.coordination.k8s.io/kube-scheduler"]
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
