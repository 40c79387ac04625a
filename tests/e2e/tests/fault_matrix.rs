//! Every fault of the dependencies against both gateways: status, answer, latency bound and
//! breaker transitions. The table it observes is docs/fault-matrix.md; the test fails when the
//! file differs, and `make fault-matrix` rewrites it.
#![allow(clippy::await_holding_lock)]

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use e2e::*;
use serde_json::Value;

const V1_REQUESTS: usize = 3;
const V2_REQUESTS: usize = 10;

/// Which dependency misbehaves, and how.
enum Break {
    Recommendations(&'static [(&'static str, &'static str)]),
    RecommendationsDown,
    Product(&'static [(&'static str, &'static str)]),
    ProductDown,
}

struct Case {
    name: &'static str,
    fault: Break,
    /// Bounds asserted on every answer: v1, then v2 for the first 3 calls and once open.
    v1_bound: Duration,
    v2_bound: Duration,
    v2_open_bound: Duration,
}

const MS: fn(u64) -> Duration = Duration::from_millis;

fn cases() -> Vec<Case> {
    use Break::*;
    let case = |name, fault, v1_ms, v2_ms, open_ms| Case {
        name,
        fault,
        v1_bound: MS(v1_ms),
        v2_bound: MS(v2_ms),
        v2_open_bound: MS(open_ms),
    };
    // The stack: v1 timeout 3 s; v2 callTimeout 300 ms, openDuration 1500 ms, threshold 3.
    vec![
        case(
            "recommendations hangs (5 s, then 408)",
            Recommendations(&[("FAULT_MODE", "hang"), ("FAILURE_HANG", "5s")]),
            3600,
            600,
            100,
        ),
        case(
            "recommendations slow, 200 ms (under callTimeout)",
            Recommendations(&[("FAULT_MODE", "slow"), ("FAULT_DELAY", "200ms")]),
            1000,
            600,
            600,
        ),
        case(
            "recommendations slow, 400 ms (over callTimeout)",
            Recommendations(&[("FAULT_MODE", "slow"), ("FAULT_DELAY", "400ms")]),
            1000,
            600,
            100,
        ),
        case(
            "recommendations answers 500",
            Recommendations(&[("FAULT_MODE", "error"), ("FAULT_STATUS", "500")]),
            500,
            300,
            100,
        ),
        case(
            "recommendations answers 503",
            Recommendations(&[("FAULT_MODE", "error"), ("FAULT_STATUS", "503")]),
            500,
            300,
            100,
        ),
        case(
            "recommendations down (connection refused)",
            RecommendationsDown,
            500,
            300,
            100,
        ),
        case(
            "recommendations resets mid-response",
            Recommendations(&[("FAULT_MODE", "reset")]),
            500,
            300,
            100,
        ),
        case(
            "recommendations sends malformed JSON",
            Recommendations(&[("FAULT_MODE", "malformed")]),
            500,
            300,
            100,
        ),
        case(
            "recommendations flaky, 30% answer 500",
            Recommendations(&[
                ("FAULT_MODE", "flaky"),
                ("FAULT_ERROR_RATE", "30"),
                ("FAULT_SEED", "7"),
            ]),
            500,
            300,
            300,
        ),
        case(
            "recommendations flaky, 70% answer 500",
            Recommendations(&[
                ("FAULT_MODE", "flaky"),
                ("FAULT_ERROR_RATE", "70"),
                ("FAULT_SEED", "7"),
            ]),
            500,
            300,
            300,
        ),
        case(
            "product down (connection refused)",
            ProductDown,
            500,
            300,
            300,
        ),
        case(
            "product slow, 5 s",
            Product(&[("FAULT_MODE", "slow"), ("FAULT_DELAY", "5s")]),
            3600,
            600,
            600,
        ),
        case(
            "product answers 500",
            Product(&[("FAULT_MODE", "error"), ("FAULT_STATUS", "500")]),
            500,
            300,
            300,
        ),
    ]
}

fn env(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// What a gateway did over a run of requests.
#[derive(Default)]
struct Seen {
    statuses: BTreeMap<u16, usize>,
    full: usize,
    degraded: usize,
    slowest: Duration,
    slowest_once_open: Duration,
}

impl Seen {
    fn statuses(&self) -> String {
        self.statuses
            .iter()
            .map(|(s, n)| format!("{s} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn answers(&self) -> String {
        let errors = self
            .statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(_, n)| n)
            .sum::<usize>();
        let mut parts = Vec::new();
        for (n, what) in [
            (self.full, "full"),
            (self.degraded, "degraded"),
            (errors, "error"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        parts.join(", ")
    }
}

async fn drive(c: &awc::Client, gateway: &Proc, n: usize, stack: Option<&Stack>) -> Seen {
    let mut seen = Seen::default();
    for i in 0..n {
        let a = get(c, &gateway.url(&format!("/product-details/{}", 1 + i % 24))).await;
        *seen.statuses.entry(a.status).or_default() += 1;
        if a.status == 200 {
            if a.degraded() {
                seen.degraded += 1;
            } else {
                seen.full += 1;
            }
        }
        seen.slowest = seen.slowest.max(a.elapsed);
        if let Some(stack) = stack {
            if i >= 3 && status(c, stack).await["state"] == "open" {
                seen.slowest_once_open = seen.slowest_once_open.max(a.elapsed);
            }
        }
    }
    seen
}

fn transitions(s: &Value) -> String {
    let list: Vec<String> = s["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}→{}",
                t["from"].as_str().unwrap(),
                t["to"].as_str().unwrap()
            )
        })
        .collect();
    if list.is_empty() {
        "none (closed)".into()
    } else {
        list.join(", ")
    }
}

fn bound(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("≤ {:.1} s", d.as_secs_f64())
    } else {
        format!("≤ {} ms", d.as_millis())
    }
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn fault_matrix() {
    let _timing = exclusive_timing();
    let mut table = String::from(
        "# Fault matrix\n\n\
         Generated by `make fault-matrix` (`tests/e2e/tests/fault_matrix.rs`); a test fails when it differs.\n\n\
         Each row is a fresh stack: v1 with a 3 s timeout; v2 with `callTimeout: 300ms`, `openDuration: 1500ms`,\n\
         `failureThreshold: 3`. v1 gets 3 requests, then v2 gets 10, one after another. Latency bounds are\n\
         asserted on every answer (v2: all answers / answers once the circuit is open). Flaky faults use\n\
         `FAULT_SEED=7`, so their draws repeat.\n\n\
         | fault | gateway | HTTP statuses | answers | latency bound | breaker transitions |\n\
         |---|---|---|---|---|---|\n",
    );
    for case in cases() {
        let mut config = StackConfig::default();
        match &case.fault {
            Break::Recommendations(pairs) => config.recommendations_env = env(pairs),
            Break::Product(pairs) => config.product_env = env(pairs),
            _ => {}
        }
        let mut stack = Stack::start(config);
        match case.fault {
            Break::RecommendationsDown => drop(stack.recommendations.terminate()),
            Break::ProductDown => drop(stack.product.terminate()),
            _ => {}
        }
        let c = client();
        let v1 = drive(&c, &stack.v1, V1_REQUESTS, None).await;
        let v2 = drive(&c, &stack.v2, V2_REQUESTS, Some(&stack)).await;
        let s = status(&c, &stack).await;
        assert!(
            v1.slowest <= case.v1_bound,
            "{}: v1 took {:?}",
            case.name,
            v1.slowest
        );
        assert!(
            v2.slowest <= case.v2_bound,
            "{}: v2 took {:?}",
            case.name,
            v2.slowest
        );
        assert!(
            v2.slowest_once_open <= case.v2_open_bound,
            "{}: v2 took {:?} while open",
            case.name,
            v2.slowest_once_open
        );
        // what must hold whatever the fault
        let product_broken = matches!(case.fault, Break::Product(_) | Break::ProductDown);
        if product_broken {
            assert_eq!(
                v1.full + v1.degraded + v2.full + v2.degraded,
                0,
                "{}: a page without its product",
                case.name
            );
        } else {
            assert_eq!(
                v2.statuses.keys().copied().collect::<Vec<_>>(),
                [200],
                "{}: v2 failed a page",
                case.name
            );
        }
        let _ = writeln!(
            table,
            "| {} | v1 | {} | {} | {} | |",
            case.name,
            v1.statuses(),
            v1.answers(),
            bound(case.v1_bound)
        );
        let _ = writeln!(
            table,
            "| | v2 | {} | {} | {} / {} once open | {} |",
            v2.statuses(),
            v2.answers(),
            bound(case.v2_bound),
            bound(case.v2_open_bound),
            transitions(&s)
        );
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/fault-matrix.md");
    if std::env::var_os("UPDATE_FAULT_MATRIX").is_some() {
        std::fs::write(path, &table).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(committed == table, "docs/fault-matrix.md differs from what the gateways did; run `make fault-matrix`.\n{table}");
}
