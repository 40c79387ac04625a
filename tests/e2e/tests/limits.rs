//! Concurrency limits measured at the dependency: half-open probes and the bulkhead.
// Each test runs its own runtime on its own thread: holding the timing lock across awaits
// only makes the other test wait to start, which is the point.
#![allow(clippy::await_holding_lock)]
use std::time::Duration;

use e2e::*;

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn half_open_lets_exactly_max_probes_through_64_concurrent_requests() {
    let _exclusive = exclusive_timing();
    for max in [1u64, 2] {
        let stack = Stack::start(StackConfig {
            recommendations_env: hang("30s"),
            breaker_yaml: format!(
                "callTimeout: 500ms\nopenDuration: 1s\nhalfOpenMaxCalls: {max}\n"
            ),
            ..Default::default()
        });
        let c = client();
        for _ in 0..3 {
            get(&c, &stack.v2.url("/product-details/1")).await;
        }
        wait_status(&c, &stack, Duration::from_secs(3), |s| {
            s["state"] == "half_open"
        })
        .await;
        warm_connections(&c, &stack.v2, 64).await;
        let before = received(&c, &stack).await;
        let urls: Vec<String> = (0..64)
            .map(|i| stack.v2.url(&format!("/product-details/{}", i % 20 + 1)))
            .collect();
        let answers = futures_util::future::join_all(urls.iter().map(|u| get(&c, u))).await;
        assert!(answers.iter().all(|a| a.status == 200 && a.degraded()));
        let probes = received(&c, &stack).await - before;
        assert_eq!(probes, max, "probes that reached recommendations-service");
        let fast = answers
            .iter()
            .filter(|a| a.elapsed < Duration::from_millis(300))
            .count() as u64;
        assert!(
            fast >= 64 - max,
            "only {fast} of 64 were turned away at once"
        );
    }
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn bulkhead_caps_calls_in_flight_and_turns_the_rest_away_fast() {
    let _exclusive = exclusive_timing();
    let n = 4u64;
    let stack = Stack::start(StackConfig {
        recommendations_env: hang("30s"),
        breaker_yaml: format!(
            "callTimeout: 1s\nopenDuration: 5s\nfailureThreshold: 1000\nmaxConcurrentCalls: {n}\n"
        ),
        ..Default::default()
    });
    let c = client();
    let watcher = client();
    let urls: Vec<String> = (0..40)
        .map(|i| stack.v2.url(&format!("/product-details/{}", i % 20 + 1)))
        .collect();
    warm_connections(&c, &stack.v2, 40).await;
    let load = futures_util::future::join_all(urls.iter().map(|u| get(&c, u)));
    // Sample what the dependency has in flight while the load runs.
    let sample = async {
        let mut peak = 0.0f64;
        for _ in 0..40 {
            let m = metrics(&watcher, &stack.recommendations).await;
            peak = peak.max(m["recommendation_requests_in_flight"]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    };
    let (answers, peak) = tokio::join!(load, sample);
    assert!(peak <= n as f64, "peak in flight {peak} > {n}");
    assert!(answers.iter().all(|a| a.status == 200 && a.degraded()));
    // The exact counts are the breaker's (below); time only bounds them: at least the rest
    // were answered at once, whatever else shares the machine.
    let fast = answers
        .iter()
        .filter(|a| a.elapsed < Duration::from_millis(250))
        .count() as u64;
    assert!(
        fast >= 40 - n,
        "only {fast} of the {} turned away got the fallback in under 250 ms",
        40 - n
    );
    assert_eq!(received(&c, &stack).await, n);
    let s = status(&c, &stack).await;
    assert_eq!(s["counts"]["rejected_bulkhead"], 40 - n);
    assert_eq!(s["state"], "closed");
}
