//! The story end to end: v1 falls over with its dependency, v2 degrades and recovers.
use std::time::Duration;

use e2e::*;

const MS: fn(u64) -> Duration = Duration::from_millis;

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn v1_returns_the_page_when_dependencies_are_healthy() {
    let stack = Stack::start(StackConfig::default());
    let c = client();
    let a = get(&c, &stack.v1.url("/product-details/1")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["product"]["id"], 1);
    assert_eq!(a.recommendation_count(), 3);
    assert!(!a.degraded());
    assert!(a.body["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn v1_waits_out_the_hang_then_fails_the_whole_request() {
    let _timing = exclusive_timing();
    // The hang is shorter than v1's timeout: the seed's 408 arrives after the hang.
    let stack = Stack::start(StackConfig {
        recommendations_env: hang("1s"),
        ..Default::default()
    });
    let c = client();
    let a = get(&c, &stack.v1.url("/product-details/1")).await;
    assert_eq!(a.status, 500, "{}", a.raw);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains("recommendations"),
        "{}",
        a.raw
    );
    assert!(
        a.elapsed >= MS(950) && a.elapsed < MS(2500),
        "took {:?}",
        a.elapsed
    );
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn v1_gives_up_at_its_timeout_when_the_hang_is_longer() {
    let _timing = exclusive_timing();
    let stack = Stack::start(StackConfig {
        recommendations_env: hang("30s"),
        v1_timeout: "1200ms",
        ..Default::default()
    });
    let c = client();
    let a = get(&c, &stack.v1.url("/product-details/2")).await;
    assert_eq!(a.status, 500, "{}", a.raw);
    assert!(
        a.elapsed >= MS(1150) && a.elapsed < MS(2500),
        "took {:?}",
        a.elapsed
    );
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn v2_trips_fails_fast_probes_once_and_closes_after_healing() {
    let _timing = exclusive_timing();
    let stack = Stack::start(StackConfig {
        recommendations_env: hang("30s"),
        ..Default::default()
    });
    let c = client();

    // The first failureThreshold (3) requests wait for the call timeout (300ms), degraded.
    for i in 0..3 {
        let a = get(&c, &stack.v2.url("/product-details/1")).await;
        assert_eq!(a.status, 200, "{}", a.raw);
        assert!(a.degraded());
        assert_eq!(a.recommendation_count(), 0);
        assert_eq!(a.body["product"]["id"], 1);
        assert!(
            a.elapsed >= MS(280) && a.elapsed < MS(1000),
            "request {i} took {:?}",
            a.elapsed
        );
    }
    let s = status(&c, &stack).await;
    assert_eq!(s["state"], "open", "{s}");
    assert_eq!(received(&c, &stack).await, 3);

    // Open: 100 requests each answered degraded in under 50 ms, none reaching the service.
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let a = get(
            &c,
            &stack.v2.url(&format!("/product-details/{}", i % 20 + 1)),
        )
        .await;
        assert_eq!(a.status, 200);
        assert!(a.degraded());
        slowest = slowest.max(a.elapsed);
    }
    assert!(
        slowest < MS(50),
        "slowest answer while open took {slowest:?}"
    );
    assert_eq!(received(&c, &stack).await, 3);

    // After openDuration (1.5s) exactly one probe reaches the service, however many ask.
    wait_status(&c, &stack, Duration::from_secs(3), |s| {
        s["state"] == "half_open"
    })
    .await;
    let urls: Vec<String> = (0..20)
        .map(|_| stack.v2.url("/product-details/3"))
        .collect();
    let answers = futures_util::future::join_all(urls.iter().map(|u| get(&c, u))).await;
    assert!(answers.iter().all(|a| a.status == 200 && a.degraded()));
    // Nobody waits out the hanging probe's call timeout (300ms): its user waits at most 100 ms.
    let slowest = answers.iter().map(|a| a.elapsed).max().unwrap();
    assert!(
        slowest < MS(250),
        "slowest answer in half-open took {slowest:?}"
    );
    assert_eq!(received(&c, &stack).await, 4, "exactly one probe");
    // The probe runs on to its call timeout and is judged: the circuit re-opens.
    let s = wait_status(&c, &stack, Duration::from_secs(2), |s| s["state"] == "open").await;
    assert_eq!(s["last_transition"]["reason"], "probe_failed", "{s}");
    let m = metrics(&c, &stack.v2).await;
    assert_eq!(m["gateway_fallbacks_total{outcome=\"probe_running\"}"], 1.0);

    // Heal; the next probe succeeds and closes the circuit.
    set_fault(&c, &stack, r#"{"mode":"none"}"#).await;
    wait_status(&c, &stack, Duration::from_secs(3), |s| {
        s["state"] == "half_open"
    })
    .await;
    let a = get(&c, &stack.v2.url("/product-details/4")).await;
    assert_eq!(a.status, 200);
    assert!(!a.degraded(), "{}", a.raw);
    assert_eq!(a.recommendation_count(), 3);
    let s = status(&c, &stack).await;
    assert_eq!(s["state"], "closed", "{s}");
    let states: Vec<(String, String)> = s["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["from"].as_str().unwrap().into(),
                t["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expect = [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ];
    assert_eq!(states, expect.map(|(a, b)| (a.to_string(), b.to_string())));
    for _ in 0..5 {
        let a = get(&c, &stack.v2.url("/product-details/5")).await;
        assert!(!a.degraded());
        assert_eq!(a.recommendation_count(), 3);
    }
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn with_fallback_after_users_wait_the_budget_while_calls_run_on_to_be_judged() {
    let _timing = exclusive_timing();
    let stack = Stack::start(StackConfig {
        recommendations_env: hang("30s"),
        breaker_yaml: "callTimeout: 800ms\nfallbackAfter: 150ms\nopenDuration: 2s\n".into(),
        ..Default::default()
    });
    let c = client();

    // Three users each get the fallback after about 150 ms, not the 800 ms call timeout ...
    let urls: Vec<String> = (1..=3)
        .map(|i| stack.v2.url(&format!("/product-details/{i}")))
        .collect();
    let answers = futures_util::future::join_all(urls.iter().map(|u| get(&c, u))).await;
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.raw);
        assert!(a.degraded(), "{}", a.raw);
        assert!(
            a.elapsed >= MS(140) && a.elapsed < MS(600),
            "took {:?}",
            a.elapsed
        );
    }
    assert_eq!(status(&c, &stack).await["state"], "closed");
    // ... while their calls run on to it and are judged: three failures open the circuit.
    let s = wait_status(&c, &stack, Duration::from_secs(3), |s| s["state"] == "open").await;
    assert_eq!(
        s["last_transition"]["reason"], "consecutive_failures",
        "{s}"
    );
    let m = metrics(&c, &stack.v2).await;
    assert_eq!(
        m["gateway_fallbacks_total{outcome=\"fallback_after\"}"],
        3.0
    );
    assert_eq!(m["breaker_calls_total{outcome=\"failure\"}"], 3.0);

    // A dependency that answers within the budget still serves the full page.
    set_fault(&c, &stack, r#"{"mode":"none"}"#).await;
    wait_status(&c, &stack, Duration::from_secs(4), |s| {
        s["state"] == "half_open"
    })
    .await;
    let a = get(&c, &stack.v2.url("/product-details/4")).await;
    assert!(!a.degraded(), "{}", a.raw);
    assert_eq!(status(&c, &stack).await["state"], "closed");
    let a = get(&c, &stack.v2.url("/product-details/5")).await;
    assert_eq!(a.recommendation_count(), 3, "{}", a.raw);
}

/// Held waits are bounded: with 64 held, the next is answered at once with `Retry-After` and
/// counted; the held ones still answer at the next transition.
#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn held_status_waits_are_bounded_and_the_refused_ones_answered_at_once() {
    let _timing = exclusive_timing();
    let stack = Stack::start(StackConfig {
        recommendations_env: hang("30s"),
        ..Default::default()
    });
    let c = client();
    let revision = status(&c, &stack).await["revision"].as_u64().unwrap();
    let waiting = stack
        .v2
        .status_url(&format!("/circuit-status?after={revision}&wait=20s"));
    let held: Vec<_> = (0..64).map(|_| get(&c, &waiting)).collect();
    let held = futures_util::future::join_all(held);
    let check = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metrics(&c, &stack.v2)
            .await
            .get("circuit_status_waits_held")
            != Some(&64.0)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "64 waits not held within 10 s"
            );
            tokio::time::sleep(MS(20)).await;
        }
        let started = std::time::Instant::now();
        let refused = c.get(&waiting).send().await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(refused.status(), 200);
        assert_eq!(refused.headers().get("retry-after").unwrap(), "1");
        assert!(elapsed < MS(1000), "the 65th wait was held {elapsed:?}");
        let m = metrics(&c, &stack.v2).await;
        assert_eq!(m.get("circuit_status_waits_refused_total"), Some(&1.0));
        for _ in 0..3 {
            get(&c, &stack.v2.url("/product-details/1")).await;
        }
    };
    let (answers, ()) = tokio::join!(held, check);
    for a in &answers {
        assert_eq!(a.body["state"], "open", "{}", a.raw);
        assert!(
            a.elapsed < MS(15_000),
            "a held wait answered after {:?}",
            a.elapsed
        );
    }
    let m = metrics(&c, &stack.v2).await;
    assert_eq!(m.get("circuit_status_waits_held"), Some(&0.0));
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn circuit_status_can_wait_for_the_next_change() {
    let _timing = exclusive_timing();
    let stack = Stack::start(StackConfig {
        recommendations_env: hang("30s"),
        ..Default::default()
    });
    let c = client();
    let first = status(&c, &stack).await;
    let revision = first["revision"].as_u64().unwrap();

    // Nothing happens: the answer comes when the wait is over, the revision unchanged.
    let a = get(
        &c,
        &stack
            .v2
            .status_url(&format!("/circuit-status?after={revision}&wait=300ms")),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert!(a.elapsed >= MS(280), "answered after {:?}", a.elapsed);
    assert_eq!(a.body["revision"], revision);

    // A transition answers a waiting request at once.
    let waiting = stack
        .v2
        .status_url(&format!("/circuit-status?after={revision}&wait=20s"));
    let trip = async {
        for _ in 0..3 {
            get(&c, &stack.v2.url("/product-details/1")).await;
        }
    };
    let (woken, ()) = tokio::join!(get(&c, &waiting), trip);
    assert_eq!(woken.body["state"], "open", "{}", woken.raw);
    assert!(woken.body["revision"].as_u64().unwrap() > revision);
    assert_eq!(woken.body["transitions"][0]["seq"], 1, "{}", woken.raw);
    assert!(woken.elapsed < MS(3000), "woken after {:?}", woken.elapsed);

    // Unusable questions are refused with a reason.
    for (query, why) in [
        ("after=1", "go together"),
        ("wait=1s", "go together"),
        ("after=1&wait=2m", "at most 1m"),
        ("after=1&wait=soon", "wait:"),
    ] {
        let a = get(
            &c,
            &stack.v2.status_url(&format!("/circuit-status?{query}")),
        )
        .await;
        assert_eq!(a.status, 400, "{query}: {}", a.raw);
        assert!(a.raw.contains(why), "{query}: {}", a.raw);
    }
}

/// v2's own port answers anyone with the seed's `/circuit-status`: no endpoints' addresses,
/// no errors' texts, no waits. Its status port (the controller's) answers with all three.
#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn the_public_circuit_status_leaves_addresses_error_texts_and_waits_to_the_status_port() {
    let stack = Stack::start(StackConfig {
        breaker_yaml: "scope: Endpoint\n".into(),
        ..Default::default()
    });
    let address = stack.recommendations.url("");
    let v2 = stack.start_v2_replica(&[("RECOMMENDATIONS_ENDPOINTS", format!("rec-a={address}"))]);
    let c = client();
    std::fs::write(
        stack.breaker_config_path(),
        "scope: Endpoint\nfailureTreshold: 4\n",
    )
    .unwrap();
    let detailed = wait_status_of(&c, &v2, Duration::from_secs(5), |s| {
        s["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("failureTreshold"))
    })
    .await;
    assert_eq!(detailed["endpoints"][0]["address"], address, "{detailed}");

    let public = get(&c, &v2.url("/circuit-status")).await;
    assert_eq!(public.status, 200, "{}", public.raw);
    let p = &public.body;
    assert_eq!(p["endpoints"][0]["name"], "rec-a", "{p}");
    assert!(p["endpoints"][0].get("address").is_none(), "{p}");
    assert!(!public.raw.contains(&address), "{}", public.raw);
    let error = p["config_error"].as_str().unwrap_or_default();
    assert!(error.contains("were refused"), "{p}");
    assert!(!public.raw.contains("failureTreshold"), "{}", public.raw);
    // The rest is the same answer.
    for key in [
        "state",
        "settings",
        "config_version",
        "config_source",
        "scope",
        "ejected",
    ] {
        assert_eq!(p[key], detailed[key], "{key}");
    }

    let revision = p["revision"].as_u64().unwrap();
    let wait = get(
        &c,
        &v2.url(&format!("/circuit-status?after={revision}&wait=1s")),
    )
    .await;
    assert_eq!(wait.status, 400, "{}", wait.raw);
    assert!(wait.raw.contains("status port"), "{}", wait.raw);
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn with_scope_endpoint_one_hanging_endpoint_of_three_is_ejected_and_pages_stay_full() {
    let _timing = exclusive_timing();
    let stack = Stack::start(StackConfig {
        breaker_yaml:
            "callTimeout: 300ms\nopenDuration: 5s\nscope: Endpoint\nmaxEjectionPercent: 50\n".into(),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let healthy = Proc::start("recommendations-service", &[], dir.path());
    let hanging = Proc::start("recommendations-service", &hang("30s"), dir.path());
    let endpoints = format!(
        "rec-a={},rec-b={},rec-bad={}",
        stack.recommendations.url(""),
        healthy.url(""),
        hanging.url("")
    );
    let v2 = stack.start_v2_replica(&[("RECOMMENDATIONS_ENDPOINTS", endpoints)]);
    let c = client();

    // Until the hanging endpoint is out, a call that lands on it waits the call timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut degraded_before = 0;
    loop {
        let a = get(&c, &v2.url("/product-details/1")).await;
        assert!(a.elapsed < MS(1000), "took {:?}", a.elapsed);
        degraded_before += usize::from(a.degraded());
        let s = get(&c, &v2.url("/circuit-status")).await.body;
        if s["ejected"] == serde_json::json!(["rec-bad"]) {
            assert_eq!(s["scope"], "Endpoint");
            assert_eq!(
                s["state"], "closed",
                "the service's breaker stays closed: {s}"
            );
            let bad = s["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "rec-bad")
                .unwrap();
            assert_eq!(
                (bad["state"].as_str(), bad["reason"].as_str()),
                (Some("open"), Some("consecutive_failures")),
                "{s}"
            );
            assert_eq!(bad["ejected_reason"], "consecutive_failures", "{s}");
            assert_eq!(bad["ejected_since"], bad["since"], "{s}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rec-bad never ejected: {s}"
        );
    }
    // Then every page is full, from the two healthy endpoints, and fast.
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let a = get(&c, &v2.url(&format!("/product-details/{}", i % 24 + 1))).await;
        assert!(!a.degraded(), "{}", a.raw);
        assert_eq!(a.recommendation_count(), 3);
        slowest = slowest.max(a.elapsed);
    }
    assert!(slowest < MS(250), "slowest full page took {slowest:?}");
    let m = metrics(&c, &v2).await;
    assert_eq!(
        m["breaker_endpoint_transitions_total{endpoint=\"rec-bad\",to=\"open\"}"],
        1.0
    );
    figure!("scope Endpoint, one hanging endpoint of three: {degraded_before} degraded answers before it was ejected, then 100 of 100 full (slowest {slowest:?})");

    // A change of scope starts the endpoints' breakers afresh: nothing is out under Service,
    // and back under Endpoint rec-bad is judged anew.
    for scope in ["Service", "Endpoint"] {
        std::fs::write(
            stack.breaker_config_path(),
            format!(
                "callTimeout: 300ms\nopenDuration: 5s\nscope: {scope}\nmaxEjectionPercent: 50\n"
            ),
        )
        .unwrap();
        let s = wait_status_of(&c, &v2, Duration::from_secs(10), |s| s["scope"] == scope).await;
        assert_eq!(s["ejected"], serde_json::json!([]), "{s}");
        for e in s["endpoints"].as_array().unwrap() {
            assert_eq!(
                (&e["state"], &e["transitions"]),
                (&serde_json::json!("closed"), &serde_json::json!(0)),
                "{s}"
            );
        }
    }
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn both_gateways_answer_404_for_unknown_products_and_fail_fast_without_product_service() {
    let _timing = exclusive_timing();
    let mut stack = Stack::start(StackConfig::default());
    let c = client();
    for gw in [&stack.v1, &stack.v2] {
        let a = get(&c, &gw.url("/product-details/999")).await;
        assert_eq!(a.status, 404, "{}", a.raw);
    }
    stack.product.terminate();
    for gw in [&stack.v1, &stack.v2] {
        let a = get(&c, &gw.url("/product-details/1")).await;
        assert_eq!(a.status, 503, "{}", a.raw);
        assert!(
            a.body["error"].as_str().unwrap().contains("product"),
            "{}",
            a.raw
        );
        assert!(a.elapsed < MS(500), "took {:?}", a.elapsed);
    }
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn v2_serves_a_self_contained_dashboard_and_v1_has_none() {
    let stack = Stack::start(StackConfig::default());
    let c = client();
    let page = get(&c, &stack.v2.url("/dashboard")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    // it reads the gateway's own endpoints, relative so a port-forward or prefix still works
    assert!(page.raw.contains(r#"fetch("circuit-status")"#));
    assert!(page.raw.contains(r#"fetch("metrics")"#));
    // nothing from elsewhere: no scripts, styles or fonts from a CDN
    assert!(only_svg_namespace(&page.raw));
    let v1 = get(&c, &stack.v1.url("/dashboard")).await;
    assert_eq!(v1.status, 404);
}

/// The one absolute URL allowed in the page is the SVG namespace, which is never fetched.
fn only_svg_namespace(page: &str) -> bool {
    !page
        .replace("http://www.w3.org/2000/svg", "")
        .contains("://")
}
