//! Random sequences of calls, outcomes, cancellations, clock steps, settings swaps and mode
//! overrides keep the breaker's invariants.
use std::sync::Arc;
use std::time::Duration;

use breaker::{
    BreakerObserver, CircuitBreaker, ManualClock, Mode, Outcome, Permit, Rejection, Settings,
    SettingsSpec, State, Transition,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Record(usize, bool),
    Drop(usize),
    Advance(u64),
    Swap(u32, Option<u32>),
    SetMode(Mode),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Op::Record(i, ok)),
        1 => any::<usize>().prop_map(Op::Drop),
        2 => (0u64..3000).prop_map(Op::Advance),
        1 => (1u32..4, proptest::option::of(1u32..5)).prop_map(|(h, m)| Op::Swap(h, m)),
        1 => prop_oneof![Just(Mode::Auto), Just(Mode::ForceOpen), Just(Mode::ForceClosed)]
            .prop_map(Op::SetMode),
    ]
}

fn settings(half_open: u32, bulkhead: Option<u32>, rate: bool) -> SettingsSpec {
    SettingsSpec {
        failure_threshold: 3,
        failure_rate_threshold: rate.then_some(50.0),
        sliding_window_size: 6,
        minimum_calls: 4,
        slow_call_duration: Some(Duration::from_millis(800)),
        slow_call_rate_threshold: 80.0,
        call_timeout: Duration::from_millis(500),
        fallback_after: None,
        open_duration: Duration::from_millis(1000),
        max_open_duration: Some(Duration::from_millis(4000)),
        half_open_max_calls: half_open,
        max_concurrent_calls: bulkhead,
        ..SettingsSpec::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold(
        ops in proptest::collection::vec(op(), 1..200),
        half_open in 1u32..4,
        bulkhead in proptest::option::of(1u32..6),
        rate in any::<bool>(),
    ) {
        let clock = ManualClock::new();
        let b = CircuitBreaker::new(valid(settings(half_open, bulkhead, rate)), Arc::new(clock.clone()));
        let mut held: Vec<Permit<&CircuitBreaker>> = Vec::new();
        let mut probes_this_half_open = 0u32;
        let mut last_transitions = 0u64;
        for op in ops {
            match op {
                Op::Acquire => {
                    let before = b.state();
                    match b.try_acquire() {
                        Ok(p) => {
                            prop_assert_ne!(b.mode(), Mode::ForceOpen);
                            if p.is_probe() { probes_this_half_open += 1; }
                            held.push(p);
                        }
                        Err(Rejection::Open) => prop_assert_eq!(b.state(), State::Open),
                        Err(Rejection::HalfOpenFull) => prop_assert_eq!(b.state(), State::HalfOpen),
                        Err(Rejection::BulkheadFull) => {
                            let max = b.settings().max_concurrent_calls;
                            prop_assert!(max.is_some_and(|m| held.len() as u32 >= m));
                        }
                        Err(Rejection::ForcedOpen) => prop_assert_eq!(b.mode(), Mode::ForceOpen),
                    }
                    let _ = before;
                }
                Op::Record(i, ok) if !held.is_empty() => {
                    let p = held.swap_remove(i % held.len());
                    p.record(if ok { Outcome::Success } else { Outcome::Failure });
                }
                Op::Drop(i) if !held.is_empty() => {
                    drop(held.swap_remove(i % held.len()));
                }
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                Op::Swap(h, m) => b.update_settings(valid(settings(h, m, rate))),
                Op::SetMode(mode) => b.set_mode(mode),
                _ => {}
            }
            let snap = b.snapshot();
            if snap.counts.transitions != last_transitions {
                last_transitions = snap.counts.transitions;
                probes_this_half_open = 0;
            }
            // Every held permit is counted in flight, and nothing else is.
            prop_assert_eq!(snap.counts.in_flight as usize, held.len());
            let live_probes = held.iter().filter(|p| p.is_probe()).count() as u32;
            prop_assert!(snap.counts.half_open_in_flight <= live_probes);
            if snap.state == State::HalfOpen {
                // Never more probes in flight than allowed (a swap may lower the limit
                // below what was already admitted, never raise what is in flight).
                prop_assert!(snap.counts.half_open_in_flight <= 3);
                prop_assert!(snap.counts.half_open_in_flight <= probes_this_half_open);
            } else {
                prop_assert_eq!(snap.counts.half_open_in_flight, 0);
            }
            if snap.state == State::Closed {
                prop_assert!(snap.counts.consecutive_failures < snap.settings.failure_threshold);
            }
            if let Some(until) = snap.opened_until {
                prop_assert!(until > clock_now(&clock));
                let max = snap.settings.max_open_duration.unwrap();
                prop_assert!(until <= clock_now(&clock) + max);
            }
            let c = snap.counts;
            prop_assert!(c.window_calls <= snap.settings.sliding_window_size);
            prop_assert!(c.window_failures <= c.window_calls && c.window_slow_calls <= c.window_calls);
        }
        // Liveness: once every caller is gone, the override is lifted and the longest opening
        // has passed, a call goes through; the breaker never wedges.
        drop(held);
        b.set_mode(Mode::Auto);
        clock.advance(Duration::from_millis(4000));
        prop_assert!(b.try_acquire().is_ok());
    }

    #[test]
    fn probes_in_one_half_open_period_never_exceed_the_limit(
        max in 1u32..5,
        attempts in 1usize..50,
    ) {
        let clock = ManualClock::new();
        let b = CircuitBreaker::new(valid(settings(max, None, false)), Arc::new(clock.clone()));
        for _ in 0..3 { b.try_acquire().unwrap().failure(); }
        clock.advance(Duration::from_millis(1000));
        let permits: Vec<_> = (0..attempts).filter_map(|_| b.try_acquire().ok()).collect();
        prop_assert_eq!(permits.len(), attempts.min(max as usize));
        prop_assert!(permits.iter().all(|p| p.is_probe()));
    }
}

/// Keeps every transition it is told of.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<Transition>>);

impl BreakerObserver for Recorded {
    fn on_transition(&self, t: &Transition) {
        self.0.lock().unwrap().push(*t);
    }
}

fn recorded_breaker(
    spec: SettingsSpec,
    mode: Mode,
) -> (CircuitBreaker, ManualClock, Arc<Recorded>) {
    let clock = ManualClock::new();
    let seen = Arc::new(Recorded::default());
    let b = CircuitBreaker::with_observer(
        valid(spec),
        Arc::new(clock.clone()),
        Some(seen.clone() as Arc<dyn BreakerObserver>),
    );
    b.set_mode(mode);
    (b, clock, seen)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Observe is Auto that lets everything through: on the same sequence it makes the same
    /// transitions at the same times, and every call Auto rejects is let through, marked
    /// with the rejection Auto gave.
    #[test]
    fn observe_judges_as_auto_and_rejects_nothing(
        ops in proptest::collection::vec(op(), 1..200),
        half_open in 1u32..4,
        bulkhead in proptest::option::of(1u32..6),
        rate in any::<bool>(),
    ) {
        let (auto, auto_clock, auto_seen) = recorded_breaker(settings(half_open, bulkhead, rate), Mode::Auto);
        let (observe, observe_clock, observe_seen) = recorded_breaker(settings(half_open, bulkhead, rate), Mode::Observe);
        let mut held: Vec<(Permit<&CircuitBreaker>, Permit<&CircuitBreaker>)> = Vec::new();
        let mut let_through = 0u64;
        for op in ops {
            match op {
                Op::Acquire => {
                    let o = observe.try_acquire();
                    prop_assert!(o.is_ok(), "Observe rejected a call");
                    let o = o.unwrap();
                    match auto.try_acquire() {
                        Ok(a) => {
                            prop_assert_eq!(o.would_reject(), None);
                            prop_assert_eq!(a.is_probe(), o.is_probe());
                            held.push((a, o));
                        }
                        Err(rejection) => {
                            prop_assert_eq!(o.would_reject(), Some(rejection));
                            let_through += 1;
                            // The call is made; whatever it comes to is not judged.
                            o.failure();
                        }
                    }
                }
                Op::Record(i, ok) if !held.is_empty() => {
                    let (a, o) = held.swap_remove(i % held.len());
                    let outcome = if ok { Outcome::Success } else { Outcome::Failure };
                    a.record(outcome);
                    o.record(outcome);
                }
                Op::Drop(i) if !held.is_empty() => {
                    drop(held.swap_remove(i % held.len()));
                }
                Op::Advance(ms) => {
                    auto_clock.advance(Duration::from_millis(ms));
                    observe_clock.advance(Duration::from_millis(ms));
                }
                Op::Swap(h, m) => {
                    auto.update_settings(valid(settings(h, m, rate)));
                    observe.update_settings(valid(settings(h, m, rate)));
                }
                _ => {}
            }
            let (a, mut o) = (auto.snapshot(), observe.snapshot());
            prop_assert_eq!(o.counts.observed_rejections, let_through);
            o.counts.observed_rejections = 0;
            prop_assert_eq!((a.state, a.counts, a.opened_until), (o.state, o.counts, o.opened_until));
        }
        let strip = |ts: &[Transition]| ts.iter().map(|t| (t.from, t.to, t.reason, t.at)).collect::<Vec<_>>();
        let (a, o) = (auto_seen.0.lock().unwrap(), observe_seen.0.lock().unwrap());
        prop_assert_eq!(strip(&a), strip(&o));
        prop_assert!(o.iter().all(|t| t.mode == Mode::Observe));
    }
}

fn clock_now(clock: &ManualClock) -> Duration {
    use breaker::Clock;
    clock.now()
}

fn valid(spec: SettingsSpec) -> Settings {
    Settings::new(spec).expect("valid settings")
}
