//! One policy's life against a real kube-apiserver, the controller and a gateway running: its
//! changes reaching the gateway, an API server outage ridden out, and Observe.
// Each test has its own thread and runtime; the serializing guard is meant to span awaits.
#![allow(clippy::await_holding_lock)]

mod support;

use std::time::{Duration, Instant};

use control_plane::{ControlPlane, Who, SYSTEM_NAMESPACE as NS};
use e2e::*;
use serde_json::Value;
use support::*;

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
    two_policies_created_at_once_one_applies_one_conflicts(&plane).await;
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

/// Two policies for the freed ConfigMap in one `kubectl apply`: whichever writes first holds
/// it; the other is a Conflict, and what the first wrote is not overwritten.
async fn two_policies_created_at_once_one_applies_one_conflicts(plane: &ControlPlane) {
    let out = plane.kubectl(Who::Admin, &["delete", "bp", "rival", "-n", NS], None);
    assert!(out.status.success());
    wait_for(Duration::from_secs(5), "the ConfigMap released", || {
        get_json(plane, &["configmap", TARGET]).filter(|cm| cm["data"].is_null())
    })
    .await;
    let both = format!(
        "{}---\n{}",
        policy("left", "Auto", "failureThreshold: 11"),
        policy("right", "Auto", "failureThreshold: 12")
    );
    assert!(kubectl_apply(plane, &both).status.success());
    let ready = wait_for(Duration::from_secs(10), "both told", || {
        let ready = |name| ready_condition(&get_json(plane, &["bp", name])?).cloned();
        Some([ready("left")?, ready("right")?])
    })
    .await;
    let applied: Vec<usize> = (0..2)
        .filter(|&i| ready[i]["reason"] == "Applied")
        .collect();
    assert_eq!(applied.len(), 1, "{ready:?}");
    let (winner, threshold) = [("left", 11), ("right", 12)][applied[0]];
    assert_eq!(ready[1 - applied[0]]["reason"], "Conflict", "{ready:?}");
    let cm = get_json(plane, &["configmap", TARGET]).unwrap();
    assert_eq!(
        cm["metadata"]["labels"]["resilience.demo.dev/policy"],
        winner
    );
    assert!(
        cm["data"]["breaker.yaml"]
            .as_str()
            .unwrap()
            .contains(&format!("failureThreshold: {threshold}")),
        "{cm}"
    );
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
    fake_v2_pod(&plane, "gw-a", &stack.v2);
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

/// A dry run is dry for retries: recommendations failing at once, `maxRetries: 10` within a
/// budget of 10% of the requests (none a second, so the count does not hang on the run's
/// length), a breaker that never opens (so Auto and Observe judge alike): the calls that reach
/// recommendations per page in Observe are no more than in Auto. Before Observe's retries were
/// dry, each page in Observe made up to 11.
#[actix_web::test]
#[ignore = "control-plane tier: needs kube-apiserver and etcd (make control-plane-bins); run by `make test`"]
async fn observe_makes_no_retry_auto_would_not() {
    let _serial = serial();
    let plane = control_plane();
    let dir = tempfile::tempdir().unwrap();
    let _controller = start_controller(&plane, dir.path());
    let stack = gateway_stack(&plane);
    let c = client();
    let settings = "failureThreshold: 1000\ncallTimeout: 2s\nmaxRetries: 10\nretryBudgetPercent: 10\nminRetriesPerSecond: 0\nretryBackoff: 1ms";
    set_fault(&c, &stack, r#"{"mode":"error"}"#).await;
    const PAGES: u64 = 200;
    let mut per_page = Vec::new();
    for (n, mode) in ["Auto", "Observe"].into_iter().enumerate() {
        if n > 0 {
            // The budget counts the last 10 s: each mode starts from an empty one.
            tokio::time::sleep(Duration::from_secs(11)).await;
        }
        assert!(kubectl_apply(&plane, &policy("gw", mode, settings))
            .status
            .success());
        wait_status(&c, &stack, Duration::from_secs(10), |s| {
            s["mode"] == mode && s["settings"]["maxRetries"] == 10
        })
        .await;
        let before = received(&c, &stack).await;
        for id in 0..PAGES {
            let a = get(
                &c,
                &stack.v2.url(&format!("/product-details/{}", id % 24 + 1)),
            )
            .await;
            assert!(a.status == 200 && a.degraded(), "{}", a.raw);
        }
        let calls = received(&c, &stack).await - before;
        per_page.push(calls as f64 / PAGES as f64);
    }
    let (auto, observe) = (per_page[0], per_page[1]);
    figure!(
        "recommendations failing, maxRetries 10, budget 10%: calls per page Auto {auto:.3}, Observe {observe:.3} ({PAGES} pages each)"
    );
    assert!(auto < 1.5, "the budget holds Auto's retries: {auto}");
    assert!(observe <= auto, "Observe {observe} > Auto {auto}");
}
