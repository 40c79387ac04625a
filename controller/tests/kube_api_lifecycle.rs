//! Deleting policies and ConfigMaps, targets outside the Role and policies from the
//! finalizer's days, with and without a controller running, against a real kube-apiserver.
// Each test has its own thread and runtime; the serializing guard is meant to span awaits.
#![allow(clippy::await_holding_lock)]

mod support;

use std::time::{Duration, Instant};

use control_plane::SYSTEM_NAMESPACE as NS;
use e2e::*;
use serde_json::Value;
use support::*;

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
    let applied = applied_events(&plane);
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
