//! Abuse at the connection level, bounded in count and time, loopback only: oversized URIs and
//! headers, clients that trickle bytes, and thousands of idle keep-alive connections. The
//! gateway keeps answering everyone else, and what it holds comes back down.
#![allow(clippy::await_holding_lock)]

use std::time::{Duration, Instant};

use e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn rss_kb_and_fds(proc: &Proc) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proc.pid())).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{}/fd", proc.pid()))
        .unwrap()
        .count();
    (rss, fds)
}

async fn still_serves(c: &awc::Client, stack: &Stack) {
    let started = Instant::now();
    let a = get(c, &stack.v2.url("/product-details/5")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn oversized_uris_and_headers_are_refused_without_harm() {
    let stack = Stack::start(StackConfig::default());
    let c = client();
    let port = stack.v2.port;
    let mut tried = 0;
    // Up to 64 KB a head may be answered (actix reads heads up to about 128 KB); from 256 KB on
    // it must be refused. Never a 5xx, never a hang, and everyone else is still served.
    for size in [8 << 10, 64 << 10, 256 << 10, 1 << 20, 8 << 20] {
        let uri = format!(
            "GET /product-details/{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "1".repeat(size)
        );
        let header = format!(
            "GET /product-details/1 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        );
        let many = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
            "X-A: b\r\n".repeat(size / 8)
        );
        for (what, request) in [("URI", uri), ("header", header), ("headers", many)] {
            let answer = raw(port, request.as_bytes()).await;
            let first = answer.lines().next().unwrap_or("").to_string();
            let refused = answer == "closed" || first.starts_with("HTTP/1.1 4");
            assert!(
                refused || (size <= 64 << 10 && first.starts_with("HTTP/1.1 ")),
                "{size}-byte {what}: {first}"
            );
            assert!(
                !first.starts_with("HTTP/1.1 5"),
                "{size}-byte {what}: {first}"
            );
            tried += 1;
        }
        still_serves(&c, &stack).await;
    }
    figure!("oversized requests tried: {tried}");
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn clients_that_trickle_bytes_do_not_hold_up_others() {
    let _timing = exclusive_timing();
    let stack = Stack::start(StackConfig::default());
    let c = client();
    let port = stack.v2.port;
    let trickling = 200;
    let mut slow = Vec::new();
    for _ in 0..trickling {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET /product-details/1 HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // one more header byte every 200 ms, for 3 s, while others are served
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        for s in &mut slow {
            let _ = s.write_all(b"X").await;
        }
        still_serves(&c, &stack).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // the server gives up on them (client request timeout), in bounded time
    let mut closed = 0;
    for mut s in slow {
        let mut buf = [0; 512];
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(_)) => closed += 1, // an error answer, then close
            Err(_) => {}
        }
    }
    figure!("trickling clients: {trickling}, closed by the server within 10 s: {closed}");
    assert_eq!(closed, trickling);
    still_serves(&c, &stack).await;
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn thousands_of_idle_keep_alive_connections_are_bounded_and_released() {
    let _timing = exclusive_timing();
    let stack = Stack::start(StackConfig::default());
    let c = client();
    let port = stack.v2.port;
    still_serves(&c, &stack).await;
    let (rss_before, fds_before) = rss_kb_and_fds(&stack.v2);
    let idle = 2000;
    let mut conns = Vec::with_capacity(idle);
    for _ in 0..idle {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        conns.push(s); // kept open, idle
    }
    still_serves(&c, &stack).await;
    let (rss_during, fds_during) = rss_kb_and_fds(&stack.v2);
    // idle keep-alive connections are closed by the server after its keep-alive timeout
    let deadline = Instant::now() + Duration::from_secs(20);
    let (rss_after, fds_after) = loop {
        let (rss, fds) = rss_kb_and_fds(&stack.v2);
        if fds <= fds_before + 10 || Instant::now() > deadline {
            break (rss, fds);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    figure!(
        "{idle} idle keep-alive connections: v2 RSS {} → {} → {} MB, fds {fds_before} → {fds_during} → {fds_after}",
        rss_before / 1024,
        rss_during / 1024,
        rss_after / 1024
    );
    assert!(
        fds_during >= fds_before + idle / 2,
        "the connections were not held"
    );
    assert!(
        fds_after <= fds_before + 10,
        "idle connections not released: {fds_after} fds"
    );
    assert!(
        rss_during - rss_before < 200 * 1024,
        "memory grew by {} KB",
        rss_during - rss_before
    );
    drop(conns);
    still_serves(&c, &stack).await;
}
