//! The gateways' pooled keep-alive connections to their upstreams: one the upstream closed
//! while it sat idle in the pool is never handed to a request.
#![allow(clippy::await_holding_lock)]
use std::time::Duration;

use e2e::*;

/// More pooled connections than tokio's per-task budget (128 polls): awc checks each pooled
/// connection before reuse, and once the budget ran out every check said "alive", so the first
/// request after an idle spell went out on a closed connection and got a 503.
const CONCURRENT: usize = 300;

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn connections_the_upstream_closed_while_idle_are_never_reused() {
    let _exclusive = exclusive_timing();
    let stack = Stack::start(StackConfig {
        // Slow answers keep every request's product connection busy at once, so the pool
        // ends up holding one connection per request; product closes idle ones after 1 s.
        product_env: vec![
            ("KEEP_ALIVE", "1s".into()),
            ("FAULT_MODE", "slow".into()),
            ("FAULT_DELAY", "300ms".into()),
        ],
        // One worker: the whole pool in one place.
        gateway_env: vec![("WORKERS", "1".into())],
        breaker_yaml: "callTimeout: 2s\nopenDuration: 5s\n".into(),
        ..Default::default()
    });
    let c = client();
    for gateway in [&stack.v1, &stack.v2] {
        let urls: Vec<String> = (0..CONCURRENT)
            .map(|i| gateway.url(&format!("/product-details/{}", i % 20 + 1)))
            .collect();
        let answers = futures_util::future::join_all(urls.iter().map(|u| get(&c, u))).await;
        let ok = answers.iter().filter(|a| a.status == 200).count();
        assert_eq!(ok, CONCURRENT, "{} under load", gateway.name);
        // Past product's keep-alive: every pooled connection is now closed at its end.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for i in 0..5 {
            let a = get(&c, &gateway.url("/product-details/1")).await;
            assert_eq!(
                a.status, 200,
                "{} request {i} after the idle spell: {}",
                gateway.name, a.raw
            );
        }
    }
}
