//! Per-endpoint breakers on an injected clock: probes per endpoint, the ejection ceiling,
//! endpoints coming and going under traffic, and an endpoint coming back.
use std::sync::{Arc, Barrier};
use std::time::Duration;

use breaker::{ManualClock, Settings, SettingsSpec, State, TransitionReason};
use outlier::{EndpointAddress, EndpointSet, NoEndpoint};

fn set(max_ejection_percent: u32, half_open_max_calls: u32) -> (Arc<EndpointSet>, ManualClock) {
    let clock = ManualClock::new();
    let settings = Settings::new(SettingsSpec {
        failure_threshold: 3,
        open_duration: Duration::from_secs(5),
        half_open_max_calls,
        ..SettingsSpec::default()
    })
    .unwrap();
    let set = EndpointSet::new(
        settings,
        max_ejection_percent,
        Arc::new(clock.clone()),
        None,
        7,
    );
    set.update(&endpoints(&["a", "b", "c"]));
    (Arc::new(set), clock)
}

fn endpoints(names: &[&str]) -> Vec<EndpointAddress> {
    names
        .iter()
        .map(|n| EndpointAddress::new(*n, format!("{n}.local:8082")))
        .collect()
}

/// Sends calls until `bad` endpoints have failed `n` times each; the others succeed.
fn fail_on(set: &EndpointSet, bad: &[&str], n: usize) {
    let mut failures = 0;
    for _ in 0..10_000 {
        let Ok(call) = set.acquire() else { break };
        if bad.contains(&call.endpoint().name.as_str()) {
            failures += 1;
            call.failure();
        } else {
            call.success();
        }
        if failures >= n * bad.len() * 4 {
            break;
        }
    }
}

fn state(set: &EndpointSet, name: &str) -> State {
    set.endpoints()
        .iter()
        .find(|e| e.name == name)
        .unwrap()
        .snapshot()
        .state
}

#[test]
fn a_failing_endpoint_is_ejected_and_calls_go_to_the_others() {
    let (set, _) = set(50, 1);
    fail_on(&set, &["b"], 3);
    assert_eq!(state(&set, "b"), State::Open);
    assert_eq!(set.ejected(), ["b"]);
    for _ in 0..300 {
        let call = set.acquire().unwrap();
        assert_ne!(call.endpoint().name, "b", "an ejected endpoint got a call");
        call.success();
    }
}

#[test]
fn never_more_than_the_ceiling_is_ejected_and_one_always_stays() {
    // 50% of 3: one endpoint out at most, whatever fails.
    let (set, _) = set(50, 1);
    fail_on(&set, &["a", "b", "c"], 6);
    assert_eq!(set.ejected().len(), 1, "{:?}", set.ejected());
    let open = ["a", "b", "c"]
        .iter()
        .filter(|n| state(&set, n) == State::Open)
        .count();
    assert_eq!(open, 1);
    let refused: u64 = set
        .endpoints()
        .iter()
        .map(|e| e.snapshot().counts.refused_opens)
        .sum();
    assert!(refused > 0, "the others asked to open and were kept in");
    assert!(set.acquire().is_ok(), "calls still find an endpoint");
    // 100% of 3: two out, never the third.
    let (set, _) = self::set(100, 1);
    fail_on(&set, &["a", "b", "c"], 6);
    assert_eq!(set.ejected().len(), 2, "{:?}", set.ejected());
    assert!(set.acquire().is_ok());
}

#[test]
fn each_half_open_endpoint_admits_exactly_its_probes_under_concurrency() {
    let (set, clock) = set(100, 2);
    fail_on(&set, &["a", "b"], 3);
    assert_eq!(set.ejected(), ["a", "b"]);
    clock.advance(Duration::from_secs(6));
    let threads = 64;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (set, barrier) = (set.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                // Held, not recorded, so each probe slot stays taken.
                set.acquire().ok()
            })
        })
        .collect();
    let calls: Vec<_> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(calls.len(), threads, "every call found an endpoint");
    for name in ["a", "b"] {
        let probes = calls
            .iter()
            .filter(|c| c.endpoint().name == name && c.permit().is_probe())
            .count();
        let all = calls.iter().filter(|c| c.endpoint().name == name).count();
        assert_eq!(
            (probes, all),
            (2, 2),
            "{name}: exactly halfOpenMaxCalls probes"
        );
    }
    assert_eq!(
        calls.iter().filter(|c| c.endpoint().name == "c").count(),
        threads - 4
    );
}

#[test]
fn an_endpoint_that_recovers_comes_back_into_rotation() {
    let (set, clock) = set(50, 1);
    fail_on(&set, &["c"], 3);
    assert_eq!(set.ejected(), ["c"]);
    clock.advance(Duration::from_secs(6));
    // calls go on until one lands on c as its probe, which succeeds
    for _ in 0..1000 {
        let call = set.acquire().unwrap();
        let probe = call.permit().is_probe();
        call.success();
        if probe {
            break;
        }
    }
    assert_eq!(state(&set, "c"), State::Closed);
    assert!(set.ejected().is_empty());
    let to_c = (0..300)
        .filter(|_| {
            let call = set.acquire().unwrap();
            let c = call.endpoint().name == "c";
            call.success();
            c
        })
        .count();
    assert!(to_c > 50, "c gets its share again: {to_c} of 300");
}

#[test]
fn endpoints_come_and_go_while_calls_flow_and_nothing_is_lost() {
    let (set, _) = set(50, 1);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (set, stop) = (set.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut made, mut none) = (0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match set.acquire() {
                        Ok(call) => {
                            made += 1;
                            if call.endpoint().name == "b" {
                                call.failure();
                            } else {
                                call.success();
                            }
                        }
                        Err(NoEndpoint::Empty | NoEndpoint::AllRefused) => none += 1,
                    }
                }
                (made, none)
            })
        })
        .collect();
    for round in 0..200 {
        let names: &[&str] = match round % 4 {
            0 => &["a", "b", "c"],
            1 => &["a", "c", "d"],
            2 => &["b", "d"],
            _ => &["a", "b", "c", "d", "e"],
        };
        set.update(&endpoints(names));
        std::thread::sleep(Duration::from_micros(200));
        // Only endpoints in the set can be out, and never all of them.
        let current: Vec<String> = set.endpoints().iter().map(|e| e.name.clone()).collect();
        let out = set.ejected();
        assert!(
            out.iter().all(|n| current.contains(n)),
            "{out:?} not in {current:?}"
        );
        assert!(out.len() < current.len());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (made, none): (u64, u64) = workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .fold((0, 0), |(m, n), (a, b)| (m + a, n + b));
    assert!(made > 1000, "{made} calls made");
    assert_eq!(
        none, 0,
        "a call found no endpoint while healthy ones were there"
    );
    for endpoint in set.endpoints() {
        assert_eq!(
            endpoint.in_flight(),
            0,
            "{} still counts calls",
            endpoint.name
        );
        assert_eq!(endpoint.snapshot().counts.in_flight, 0);
    }
}

#[test]
fn the_less_busy_of_two_gets_the_call() {
    let (set, _) = set(50, 1);
    // 300 calls held at once stay spread evenly: each goes to the less busy of two.
    let held: Vec<_> = (0..300).map(|_| set.acquire().unwrap()).collect();
    let loads: Vec<u32> = set.endpoints().iter().map(|e| e.in_flight()).collect();
    let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
    assert!(max - min <= 4, "{loads:?}");
    drop(held);
    assert!(set.endpoints().iter().all(|e| e.in_flight() == 0));
}

#[test]
fn a_mode_reaches_every_endpoint_and_those_added_later() {
    let (set, _) = set(50, 1);
    set.set_mode(breaker::Mode::ForceOpen);
    assert_eq!(set.acquire().err(), Some(NoEndpoint::AllRefused));
    set.update(&endpoints(&["a", "b", "c", "d"]));
    assert_eq!(
        set.acquire().err(),
        Some(NoEndpoint::AllRefused),
        "d came in forced open too"
    );
    set.set_mode(breaker::Mode::Auto);
    assert!(set.acquire().is_ok());
}

/// Three calls let through to `name` and held: their outcomes are not in yet. (The others are
/// held until then too, or the less busy of two would never be `name` again.)
fn hold_calls_to(set: &EndpointSet, name: &str) -> Vec<outlier::EndpointPermit> {
    let (mut held, mut others) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let call = set.acquire().unwrap();
        if call.endpoint().name == name {
            held.push(call);
            if held.len() == 3 {
                return held;
            }
        } else {
            others.push(call);
        }
    }
    panic!("too few calls went to {name}");
}

#[test]
fn a_reset_starts_every_endpoint_afresh_and_calls_in_flight_eject_nothing() {
    let (set, _) = set(50, 1);
    let held = hold_calls_to(&set, "a");
    fail_on(&set, &["b"], 3);
    assert_eq!(set.ejected(), ["b"]);
    set.reset();
    assert!(set.ejected().is_empty());
    for name in ["a", "b", "c"] {
        let s = set
            .endpoints()
            .into_iter()
            .find(|e| e.name == name)
            .unwrap()
            .snapshot();
        assert_eq!(
            (s.state, s.counts.transitions),
            (State::Closed, 0),
            "{name}"
        );
    }
    // The old breaker of a opens on its three failures, and takes nothing out.
    for call in held {
        call.failure();
    }
    assert!(set.ejected().is_empty(), "{:?}", set.ejected());
    // The new breakers judge afresh: b is out again after three failures of its own.
    fail_on(&set, &["b"], 3);
    assert_eq!(set.ejected(), ["b"]);
}

#[test]
fn an_endpoint_that_left_with_calls_in_flight_is_not_ejected_by_them() {
    let (set, _) = set(50, 1);
    let held = hold_calls_to(&set, "c");
    set.update(&endpoints(&["a", "b"]));
    for call in held {
        call.failure();
    }
    assert!(set.ejected().is_empty(), "{:?}", set.ejected());
    // Back under the same name: a new breaker, in rotation, and the ceiling all there.
    set.update(&endpoints(&["a", "b", "c"]));
    assert_eq!(state(&set, "c"), State::Closed);
    fail_on(&set, &["a"], 3);
    assert_eq!(set.ejected(), ["a"]);
}

#[test]
fn an_ejection_keeps_when_and_why_the_endpoint_went_out_through_failed_probes() {
    let (set, clock) = set(50, 1);
    let ejection = |name: &str| {
        set.endpoints()
            .into_iter()
            .find(|e| e.name == name)
            .unwrap()
            .ejection()
    };
    clock.advance(Duration::from_secs(60));
    fail_on(&set, &["c"], 3);
    let out = ejection("c").expect("c is out");
    assert_eq!(
        (out.at, out.reason),
        (
            Duration::from_secs(60),
            TransitionReason::ConsecutiveFailures
        )
    );
    assert_eq!(ejection("a"), None);
    // Its probe fails: open again, still out since the first opening, for the first reason.
    clock.advance(Duration::from_secs(6));
    for _ in 0..1000 {
        let call = set.acquire().unwrap();
        if call.permit().is_probe() {
            call.failure();
            break;
        }
        call.success();
    }
    let last = set.endpoints()[2].snapshot().last_transition.unwrap();
    assert_eq!(last.reason, TransitionReason::ProbeFailed);
    assert_eq!(ejection("c"), Some(out));
}
