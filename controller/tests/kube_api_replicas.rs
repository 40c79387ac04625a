//! Every v2 replica's live breaker in its policy's status and Events, and v2 following
//! recommendations' EndpointSlices, against a real kube-apiserver.
// Each test has its own thread and runtime; the serializing guard is meant to span awaits.
#![allow(clippy::await_holding_lock)]

mod support;

use std::time::{Duration, Instant};

use control_plane::{Who, SYSTEM_NAMESPACE as NS};
use e2e::*;
use serde_json::Value;
use support::*;

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
    fake_v2_pod(&plane, "gw-a", &stack.v2);
    fake_v2_pod(&plane, "gw-b", &second);
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
    let delete_pod = |name: &str| {
        let out = plane.kubectl(
            Who::Admin,
            &["delete", "pod", name, "-n", NS, "--wait=false"],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    delete_pod("gw-b");
    wait_for(Duration::from_secs(10), "gw-b gone from the status", || {
        let bp = get_json(&plane, &["bp", "gw"])?;
        (replica(&bp, "gw-b").is_none() && bp["status"]["applied"] == "1/1").then_some(())
    })
    .await;
    let groups =
        |m: &std::collections::HashMap<String, f64>| m.get("controller_replica_groups").copied();
    assert_eq!(groups(&metrics(&c, &controller).await), Some(1.0));

    // The last one gone, the group is too: its status written empty, its writer ended.
    delete_pod("gw-a");
    wait_for(Duration::from_secs(10), "no replica in the status", || {
        let bp = get_json(&plane, &["bp", "gw"])?;
        bp["status"]["replicas"]
            .as_array()
            .is_none_or(|r| r.is_empty())
            .then_some(())
    })
    .await;
    let mut left = None;
    for _ in 0..50 {
        left = groups(&metrics(&c, &controller).await);
        if left == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, Some(0.0), "the group outlived its replicas");
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
