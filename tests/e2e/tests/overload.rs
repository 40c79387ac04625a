//! The third chapter's parts, process by process: recommendations with a capacity and a
//! slowdown trigger, v1's immediate retries, and v2's retry budget and adaptive limit.
use std::time::{Duration, Instant};

use e2e::*;

const MS: fn(u64) -> Duration = Duration::from_millis;

fn capacity(workers: u32, service_time: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CAPACITY_WORKERS", workers.to_string()),
        ("SERVICE_TIME", service_time.into()),
    ]
}

/// When each of `n` requests sent at once to `url` was answered, sorted.
async fn answered_at(c: &awc::Client, url: &str, n: usize) -> Vec<Duration> {
    let start = Instant::now();
    let asks = (0..n).map(|_| async {
        let a = get(c, url).await;
        assert_eq!(a.status, 200, "{}", a.raw);
        start.elapsed()
    });
    let mut times = futures_util::future::join_all(asks).await;
    times.sort();
    times
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn recommendations_queues_behind_its_workers_and_a_slowdown_is_switched_at_runtime() {
    let _timing = exclusive_timing();
    let stack = Stack::start(StackConfig {
        recommendations_env: capacity(2, "200ms"),
        ..Default::default()
    });
    let c = client();
    warm_connections(&c, &stack.recommendations, 6).await;
    let url = stack.recommendations.url("/recommendations/1");
    // 2 workers, 200 ms each: the k-th of 6 is answered after ceil(k/2) × 200 ms.
    let times = answered_at(&c, &url, 6).await;
    for (k, at) in times.iter().enumerate() {
        let formula = MS(200 * (k as u64 / 2 + 1));
        assert!(
            *at >= formula - MS(10) && *at < formula + MS(150),
            "request {k}: {at:?}, formula {formula:?}; all {times:?}"
        );
    }
    figure!("capacity 2 workers × 200 ms, 6 at once: answered at {times:?}");
    // The trigger: each request takes 3 times as long.
    set_fault(&c, &stack, r#"{"mode": "none", "slowdown": 3}"#).await;
    let one = get(&c, &url).await;
    assert!(
        one.elapsed >= MS(590) && one.elapsed < MS(900),
        "{:?}",
        one.elapsed
    );
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let shown = request(
        &c,
        "GET",
        &stack.recommendations.url("/admin/fault"),
        &[("authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(shown.body["workers"], 2, "{}", shown.raw);
    assert_eq!(shown.body["serviceTime"], "200ms");
    assert_eq!(shown.body["slowdown"], 3.0);
    set_fault(&c, &stack, r#"{"mode": "none", "slowdown": 1}"#).await;
    // Callers that give up free nothing: their work is done, and the next one waits for it.
    let impatient = awc::Client::builder().timeout(MS(50)).finish();
    let (a, b) = tokio::join!(impatient.get(&url).send(), impatient.get(&url).send());
    assert!(a.is_err() && b.is_err());
    let next = get(&c, &url).await;
    assert!(
        next.elapsed >= MS(330),
        "the abandoned work held the worker: {:?}",
        next.elapsed
    );
    let m = metrics(&c, &stack.recommendations).await;
    assert_eq!(m["recommendation_requests_waiting"], 0.0);
    let bad = request(
        &c,
        "PUT",
        &stack.recommendations.url("/admin/fault"),
        &[("authorization", &auth)],
        Some(r#"{"mode": "none", "slowdown": 0.5}"#),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.raw);
    assert!(bad.raw.contains("slowdown"), "{}", bad.raw);
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn v1_retries_a_failed_call_at_once_as_many_clients_do() {
    let stack = Stack::start(StackConfig {
        recommendations_env: vec![("FAULT_MODE", "error".into())],
        gateway_env: vec![("UPSTREAM_RETRIES", "2".into())],
        ..Default::default()
    });
    let c = client();
    let before = received(&c, &stack).await;
    let a = get(&c, &stack.v1.url("/product-details/1")).await;
    assert_eq!(a.status, 500, "{}", a.raw);
    assert_eq!(
        received(&c, &stack).await - before,
        3,
        "one call and two retries"
    );
    // Healthy: one call, no retry.
    set_fault(&c, &stack, r#"{"mode": "none"}"#).await;
    let a = get(&c, &stack.v1.url("/product-details/1")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(received(&c, &stack).await - before, 4);
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn v2_retries_only_within_its_budget() {
    let stack = Stack::start(StackConfig {
        recommendations_env: vec![("FAULT_MODE", "error".into())],
        // The breaker stays closed: only the budget limits the retries.
        breaker_yaml: "failureThreshold: 1000\ncallTimeout: 1s\nopenDuration: 5s\nmaxRetries: 3\nretryBudgetPercent: 20\nminRetriesPerSecond: 0\nretryBackoff: 1ms\n".into(),
        ..Default::default()
    });
    let c = client();
    let before = received(&c, &stack).await;
    for id in 1..=20 {
        let a = get(&c, &stack.v2.url(&format!("/product-details/{id}"))).await;
        assert!(a.degraded(), "{}", a.raw);
    }
    let calls = received(&c, &stack).await - before;
    let m = metrics(&c, &stack.v2).await;
    let allowed = m[r#"breaker_retries_total{outcome="allowed"}"#];
    // Retries are held under 20% of the 20 requests (the first request's share comes first).
    assert!((1.0..=5.0).contains(&allowed), "{m:?}");
    assert_eq!(
        calls as f64,
        20.0 + allowed,
        "each allowed retry reached recommendations"
    );
    assert!(
        m[r#"breaker_retries_total{outcome="refused"}"#] >= 20.0,
        "{m:?}"
    );
    let s = status(&c, &stack).await;
    assert_eq!(s["load"]["retries"].as_f64(), Some(allowed), "{s}");
    figure!("v2 maxRetries 3 at a failing dependency, budget 20%: {calls} calls for 20 pages ({:.2} a page)", calls as f64 / 20.0);
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn v2_adaptive_limit_sheds_what_a_queueing_dependency_cannot_take() {
    let _timing = exclusive_timing();
    let stack = Stack::start(StackConfig {
        recommendations_env: capacity(1, "50ms"),
        breaker_yaml: "failureThreshold: 1000\ncallTimeout: 5s\nopenDuration: 10s\nadaptiveLimitMax: 8\nadaptiveLimitMin: 1\nadaptiveLimitLatency: 120ms\n".into(),
        ..Default::default()
    });
    let c = client();
    warm_connections(&c, &stack.v2, 40).await;
    let s = status(&c, &stack).await;
    assert_eq!(s["load"]["adaptive_limit"], 8, "{s}");
    // 40 at once at one worker of 50 ms: past a few in line, calls are slow and the limit falls.
    let urls: Vec<String> = (0..40)
        .map(|i| stack.v2.url(&format!("/product-details/{}", i % 20 + 1)))
        .collect();
    let pages = urls.iter().map(|url| get(&c, url));
    let answers = futures_util::future::join_all(pages).await;
    let degraded = answers.iter().filter(|a| a.degraded()).count();
    let m = metrics(&c, &stack.v2).await;
    let shed = m[r#"breaker_calls_total{outcome="rejected_limit"}"#];
    assert!(shed >= 20.0, "{m:?}");
    assert_eq!(
        degraded as f64, shed,
        "each shed call is a degraded page, and only those"
    );
    let s = status(&c, &stack).await;
    let limit = s["load"]["adaptive_limit"].as_u64().unwrap();
    assert!(limit < 8, "the limit came down: {s}");
    assert_eq!(m["breaker_adaptive_limit"], limit as f64);
    figure!(
        "v2 adaptive limit, 40 pages at once at 1 worker × 50 ms: {shed} shed, limit 8 → {limit}"
    );
}
