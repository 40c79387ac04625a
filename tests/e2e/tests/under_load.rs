//! Two claims under concurrent load: how many users wait when the dependency starts hanging
//! (failure onset, with and without the bulkhead), and that SIGTERM loses no request in flight.
#![allow(clippy::await_holding_lock)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::*;

const USERS: usize = 100;
const SLOW: Duration = Duration::from_millis(100);

/// 100 users request pages in a loop; after 1.5 s (time to settle) recommendations starts
/// hanging. Returns how many requests finishing after that took longer than 100 ms, and how
/// many finished after it in all.
async fn onset(breaker_yaml: &str) -> (usize, usize) {
    let stack = Stack::start(StackConfig {
        breaker_yaml: breaker_yaml.into(),
        ..Default::default()
    });
    let c = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .connector(awc::Connector::new().limit(0))
        .finish();
    warm_connections(&c, &stack.v2, USERS).await;
    let stop = Arc::new(AtomicBool::new(false));
    let slow = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let users: Vec<_> = (0..USERS)
        .map(|u| {
            let (c, stop, slow, total) = (c.clone(), stop.clone(), slow.clone(), total.clone());
            let url = stack.v2.url(&format!("/product-details/{}", 1 + u % 24));
            actix_web::rt::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let mut resp = c.get(&url).send().await.expect("v2 answers");
                    let _ = resp.body().await;
                    assert_eq!(resp.status(), 200);
                    total.fetch_add(1, Ordering::Relaxed);
                    if started.elapsed() > SLOW {
                        slow.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    slow.store(0, Ordering::Relaxed);
    total.store(0, Ordering::Relaxed);
    set_fault(&c, &stack, r#"{"mode":"hang","hang":"10s"}"#).await;
    wait_status(&c, &stack, Duration::from_secs(10), |s| {
        s["state"] == "open"
    })
    .await;
    // requests admitted before the trip finish within callTimeout
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for u in users {
        u.await.unwrap();
    }
    (slow.load(Ordering::Relaxed), total.load(Ordering::Relaxed))
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn failure_onset_is_bounded_by_the_bulkhead() {
    let _timing = exclusive_timing();
    let settings = "failureThreshold: 3\ncallTimeout: 500ms\nopenDuration: 10s\n";
    let (without, total_without) = onset(settings).await;
    let bulkhead = 8;
    let (with, total_with) = onset(&format!("{settings}maxConcurrentCalls: {bulkhead}\n")).await;
    figure!(
        "failure onset, {USERS} users: {without} requests waited > 100 ms without the bulkhead \
         (of {total_without}), {with} with maxConcurrentCalls {bulkhead} (of {total_with})"
    );
    assert!(
        with <= bulkhead + 3,
        "{with} slow requests with the bulkhead"
    );
    assert!(
        without > with,
        "the bulkhead made no difference: {without} vs {with}"
    );
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn sigterm_under_load_loses_no_request_in_flight() {
    let _timing = exclusive_timing();
    let mut stack = Stack::start(StackConfig {
        recommendations_env: vec![
            ("FAULT_MODE", "slow".into()),
            ("FAULT_DELAY", "150ms".into()),
        ],
        ..Default::default()
    });
    // One connection per request, so "refused after shutdown" is the only way not to get in.
    let c = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .connector(
            awc::Connector::new()
                .limit(0)
                .conn_keep_alive(Duration::ZERO),
        )
        .finish();
    let ok = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let (c, ok, refused, lost) = (c.clone(), ok.clone(), refused.clone(), lost.clone());
            let url = stack.v2.url(&format!("/product-details/{}", 1 + w % 24));
            actix_web::rt::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    match c
                        .get(&url)
                        .insert_header(("connection", "close"))
                        .send()
                        .await
                    {
                        Ok(mut resp) => match resp.body().await {
                            Ok(body) if resp.status() == 200 && body.ends_with(b"}") => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                lost.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                        Err(awc::error::SendRequestError::Connect(_)) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Err(err) => {
                            eprintln!("lost: {err}");
                            lost.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = ok.load(Ordering::Relaxed);
    let pid = stack.v2.pid().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let status = stack.v2.terminate();
    let (ok, refused, lost) = (
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed),
    );
    figure!(
        "SIGTERM under load: {before} answered before the signal, {ok} in all, \
         {} finished after it, {refused} workers refused afterwards, {lost} lost",
        ok - before
    );
    assert!(status.success(), "{status:?}");
    assert_eq!(lost, 0, "requests lost in flight");
    assert!(
        ok > before,
        "requests in flight at the signal did not finish"
    );
    assert_eq!(refused, 32, "every worker ends on a refused connection");
}
