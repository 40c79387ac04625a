use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use breaker::{
    BreakerObserver, CircuitBreaker, ManualClock, Mode, Outcome, Rejection, Settings, SettingsSpec,
    State, Transition, TransitionReason,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn setup(settings: SettingsSpec) -> (CircuitBreaker, ManualClock) {
    let clock = ManualClock::new();
    (
        CircuitBreaker::new(valid(settings), Arc::new(clock.clone())),
        clock,
    )
}

fn fail(b: &CircuitBreaker, n: u32) {
    for _ in 0..n {
        b.try_acquire().unwrap().failure();
    }
}

#[test]
fn trips_after_consecutive_failures_and_fails_fast() {
    let (b, _) = setup(SettingsSpec::default());
    fail(&b, 2);
    b.try_acquire().unwrap().success(); // a success resets the streak
    fail(&b, 2);
    assert_eq!(b.state(), State::Closed);
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.try_acquire().unwrap_err(), Rejection::Open);
    let snap = b.snapshot();
    assert_eq!(snap.counts.rejected_open, 1);
    assert_eq!(
        snap.last_transition.unwrap().reason,
        TransitionReason::ConsecutiveFailures
    );
}

#[test]
fn half_open_admits_one_probe_and_success_closes() {
    let (b, clock) = setup(SettingsSpec::default());
    fail(&b, 3);
    clock.advance(ms(4999));
    assert_eq!(b.try_acquire().unwrap_err(), Rejection::Open);
    clock.advance(ms(1));
    let probe = b.try_acquire().unwrap();
    assert!(probe.is_probe());
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.try_acquire().unwrap_err(), Rejection::HalfOpenFull);
    probe.success();
    assert_eq!(b.state(), State::Closed);
    assert!(!b.try_acquire().unwrap().is_probe());
}

#[test]
fn backoff_doubles_each_failed_probe_and_resets_on_close() {
    let (b, clock) = setup(SettingsSpec {
        open_duration: ms(1000),
        call_timeout: ms(100),
        max_open_duration: Some(ms(3000)),
        ..Default::default()
    });
    fail(&b, 3);
    let mut open_for = Vec::new();
    for _ in 0..4 {
        // wait out the current opening, measuring it
        let mut waited = 0;
        while b.state() == State::Open {
            clock.advance(ms(100));
            waited += 100;
        }
        open_for.push(waited);
        b.try_acquire().unwrap().failure();
    }
    assert_eq!(open_for, [1000, 2000, 3000, 3000]);
    assert_eq!(b.snapshot().failed_probes, 4);
    clock.advance(ms(3000));
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().failed_probes, 0);
    fail(&b, 3);
    clock.advance(ms(999));
    assert_eq!(b.state(), State::Open);
    clock.advance(ms(1));
    assert_eq!(b.state(), State::HalfOpen);
}

#[test]
fn dropped_probe_releases_its_permit() {
    let (b, clock) = setup(SettingsSpec::default());
    fail(&b, 3);
    clock.advance(ms(5000));
    let probe = b.try_acquire().unwrap();
    assert_eq!(b.try_acquire().unwrap_err(), Rejection::HalfOpenFull);
    drop(probe); // a cancelled request
    let snap = b.snapshot();
    assert_eq!(snap.state, State::HalfOpen);
    assert_eq!(snap.counts.abandoned, 1);
    assert_eq!(snap.counts.in_flight, 0);
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn outcomes_from_before_a_transition_do_not_move_the_new_state() {
    let (b, clock) = setup(SettingsSpec::default());
    let slow_old = b.try_acquire().unwrap();
    fail(&b, 3);
    clock.advance(ms(5000));
    let probe = b.try_acquire().unwrap();
    slow_old.success(); // admitted while closed: must not count as the probe's success
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.try_acquire().unwrap_err(), Rejection::HalfOpenFull);
    probe.failure();
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.snapshot().counts.successes, 1);
}

/// Only the failure rate can open: 50% over the last 10 calls, from 4 calls on.
fn rate_settings() -> SettingsSpec {
    SettingsSpec {
        failure_threshold: 1000,
        failure_rate_threshold: Some(50.0),
        sliding_window_size: 10,
        minimum_calls: 4,
        ..Default::default()
    }
}

#[test]
fn failure_rate_needs_minimum_calls() {
    let (b, _) = setup(rate_settings());
    for outcome in [Outcome::Failure, Outcome::Failure, Outcome::Failure] {
        b.try_acquire().unwrap().record(outcome);
    }
    assert_eq!(
        b.state(),
        State::Closed,
        "3 of 3 failed, but 3 calls < minimumCalls"
    );
    b.try_acquire().unwrap().success(); // 3 of 4 failed: 75% >= 50%
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        b.snapshot().last_transition.unwrap().reason,
        TransitionReason::FailureRate
    );

    let (b, _) = setup(rate_settings());
    // 1 of 4, 1 of 5, 2 of 6, 3 of 7 stay closed; 4 of 8 is 50% and opens.
    for (outcome, closed) in [
        (Outcome::Failure, true),
        (Outcome::Success, true),
        (Outcome::Success, true),
        (Outcome::Success, true),
        (Outcome::Success, true),
        (Outcome::Failure, true),
        (Outcome::Failure, true),
        (Outcome::Failure, false),
    ] {
        b.try_acquire().unwrap().record(outcome);
        assert_eq!(b.state() == State::Closed, closed);
    }
    assert_eq!(
        b.snapshot().last_transition.unwrap().reason,
        TransitionReason::FailureRate
    );
}

#[test]
fn slow_calls_trip_on_slow_call_rate() {
    let (b, clock) = setup(SettingsSpec {
        slow_call_duration: Some(ms(500)),
        slow_call_rate_threshold: 60.0,
        minimum_calls: 5,
        sliding_window_size: 5,
        ..Default::default()
    });
    for i in 0..5 {
        let p = b.try_acquire().unwrap();
        clock.advance(if i % 5 == 0 { ms(10) } else { ms(600) });
        p.success();
        if i < 4 {
            assert_eq!(b.state(), State::Closed);
        }
    }
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        b.snapshot().last_transition.unwrap().reason,
        TransitionReason::SlowCallRate
    );
    assert_eq!(b.snapshot().counts.slow_calls, 4);
}

#[test]
fn bulkhead_caps_calls_in_flight() {
    let (b, _) = setup(SettingsSpec {
        max_concurrent_calls: Some(2),
        ..Default::default()
    });
    let a = b.try_acquire().unwrap();
    let c = b.try_acquire().unwrap();
    assert_eq!(b.try_acquire().unwrap_err(), Rejection::BulkheadFull);
    drop(a);
    let d = b.try_acquire().unwrap();
    assert_eq!(b.snapshot().counts.in_flight, 2);
    c.success();
    d.success();
    assert_eq!(b.snapshot().counts.rejected_bulkhead, 1);
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn settings_swap_keeps_state_and_counters() {
    let (b, clock) = setup(SettingsSpec::default());
    fail(&b, 2);
    b.update_settings(valid(SettingsSpec {
        failure_threshold: 5,
        ..Default::default()
    }));
    let snap = b.snapshot();
    assert_eq!(snap.counts.consecutive_failures, 2);
    assert_eq!(snap.counts.failures, 2);
    assert_eq!(snap.settings.failure_threshold, 5);
    fail(&b, 2);
    assert_eq!(b.state(), State::Closed);
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
    // An open circuit keeps its deadline; later openings use the new duration.
    b.update_settings(valid(SettingsSpec {
        failure_threshold: 5,
        open_duration: ms(60_000),
        ..Default::default()
    }));
    clock.advance(ms(5000));
    assert_eq!(b.state(), State::HalfOpen);
    b.try_acquire().unwrap().failure();
    clock.advance(ms(59_999));
    assert_eq!(b.state(), State::Open);
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(State, State)>>);

impl BreakerObserver for Recorder {
    fn on_transition(&self, t: &Transition) {
        self.0.lock().unwrap().push((t.from, t.to));
    }
}

#[test]
fn observer_sees_every_transition_in_order() {
    let clock = ManualClock::new();
    let recorder = Arc::new(Recorder::default());
    let b = CircuitBreaker::with_observer(
        valid(SettingsSpec::default()),
        Arc::new(clock.clone()),
        Some(recorder.clone()),
    );
    fail(&b, 3);
    clock.advance(ms(5000));
    b.try_acquire().unwrap().failure();
    clock.advance(ms(5000));
    b.try_acquire().unwrap().success();
    use State::*;
    assert_eq!(
        *recorder.0.lock().unwrap(),
        [
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Open),
            (Open, HalfOpen),
            (HalfOpen, Closed)
        ]
    );
    assert_eq!(b.snapshot().counts.transitions, 5);
}

#[test]
fn half_open_admits_exactly_max_probes_under_contention() {
    for max in [1u32, 3] {
        let (b, clock) = setup(SettingsSpec {
            half_open_max_calls: max,
            ..Default::default()
        });
        fail(&b, 3);
        clock.advance(ms(5000));
        let threads = 64;
        let tried = Barrier::new(threads);
        let start = Barrier::new(threads);
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        let permit = b.try_acquire().ok();
                        // Hold every permit until all threads have tried.
                        tried.wait();
                        permit.is_some()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|ok| *ok)
                .count()
        });
        assert_eq!(admitted as u32, max);
        let snap = b.snapshot();
        assert_eq!(snap.counts.rejected_half_open, u64::from(64 - max));
        assert_eq!(snap.counts.abandoned, u64::from(max));
        assert_eq!(snap.counts.in_flight, 0);
        assert_eq!(snap.state, State::HalfOpen);
    }
}

#[test]
fn force_open_rejects_everything_and_auto_resumes_the_state_machine() {
    let (b, _) = setup(SettingsSpec::default());
    fail(&b, 1);
    b.set_mode(Mode::ForceOpen);
    for _ in 0..5 {
        assert_eq!(b.try_acquire().unwrap_err(), Rejection::ForcedOpen);
    }
    let snap = b.snapshot();
    assert_eq!((snap.mode, snap.state), (Mode::ForceOpen, State::Closed));
    assert_eq!(snap.counts.rejected_forced_open, 5);
    b.set_mode(Mode::Auto);
    // the streak of one failure survived the override
    fail(&b, 2);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn force_closed_lets_calls_through_an_open_circuit_without_moving_it() {
    let (b, clock) = setup(SettingsSpec::default());
    fail(&b, 3);
    assert_eq!(b.state(), State::Open);
    b.set_mode(Mode::ForceClosed);
    fail(&b, 10);
    b.try_acquire().unwrap().success();
    let snap = b.snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!((snap.counts.failures, snap.counts.successes), (13, 1));
    assert_eq!(snap.counts.transitions, 1);
    // a permit granted while forced cannot close (or reopen) the circuit after Auto returns
    let forced = b.try_acquire().unwrap();
    b.set_mode(Mode::Auto);
    clock.advance(ms(5_000));
    assert_eq!(b.state(), State::HalfOpen);
    forced.success();
    assert_eq!(b.state(), State::HalfOpen);
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn force_closed_keeps_the_bulkhead() {
    let (b, _) = setup(SettingsSpec {
        max_concurrent_calls: Some(1),
        ..SettingsSpec::default()
    });
    b.set_mode(Mode::ForceClosed);
    let held = b.try_acquire().unwrap();
    assert_eq!(b.try_acquire().unwrap_err(), Rejection::BulkheadFull);
    drop(held);
    assert!(b.try_acquire().is_ok());
}

fn valid(spec: SettingsSpec) -> Settings {
    Settings::new(spec).expect("valid settings")
}

#[test]
fn a_probe_handed_over_keeps_its_slot_and_is_judged_once() {
    let clock = ManualClock::new();
    let b = Arc::new(CircuitBreaker::new(
        valid(SettingsSpec::default()),
        Arc::new(clock.clone()),
    ));
    fail(&b, 3);
    clock.advance(ms(5000));
    let probe = b.try_acquire().unwrap();
    assert!(probe.is_probe());
    let owned = probe.into_owned(&b);
    // the slot is still taken: no second probe, nothing released or abandoned
    assert_eq!(b.try_acquire().unwrap_err(), Rejection::HalfOpenFull);
    assert_eq!(b.snapshot().counts.abandoned, 0);
    let handed = std::thread::spawn(move || owned.failure());
    handed.join().unwrap();
    let snap = b.snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!(snap.counts.failures, 4);
    assert_eq!(snap.counts.in_flight, 0);
}

#[test]
fn open_jitter_spreads_replicas_and_repeats_under_a_seed() {
    let opened_until = |seed: u64| {
        let (b, clock) = setup(SettingsSpec {
            call_timeout: ms(500),
            open_duration: ms(1000),
            max_open_duration: Some(ms(8000)),
            ..SettingsSpec::default()
        });
        b.set_open_jitter(0.1, seed);
        let mut deadlines = Vec::new();
        fail(&b, 3);
        for _ in 0..4 {
            let open = b.snapshot().opened_until.unwrap() - breaker::Clock::now(&clock);
            deadlines.push(open);
            clock.advance(open);
            b.try_acquire().unwrap().failure(); // the probe fails: open again, doubled
        }
        deadlines
    };
    let a = opened_until(1);
    assert_eq!(a, opened_until(1), "the same seed gives the same durations");
    assert_ne!(a, opened_until(2), "another seed, other durations");
    for (n, open) in a.iter().enumerate() {
        let base = ms(1000) * 2u32.pow(n as u32);
        assert!(
            *open >= base && *open <= base.mul_f64(1.1),
            "{open:?} not within 10% over {base:?}"
        );
    }
}

#[test]
fn observe_lets_an_open_circuit_through_and_says_what_auto_would_do() {
    let (b, clock) = setup(SettingsSpec::default());
    b.set_mode(Mode::Observe);
    fail(&b, 3);
    assert_eq!(b.state(), State::Open);
    let snap = b.snapshot();
    assert_eq!(snap.last_transition.unwrap().mode, Mode::Observe);
    // open: let through, marked, and its outcome moves nothing
    for _ in 0..5 {
        let p = b.try_acquire().unwrap();
        assert_eq!(p.would_reject(), Some(Rejection::Open));
        p.success();
    }
    let snap = b.snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!(snap.counts.observed_rejections, 5);
    assert_eq!(snap.counts.rejected_open, 5);
    assert_eq!(snap.counts.in_flight, 0);
    // half-open: one real probe as in Auto, the rest let through unjudged
    clock.advance(ms(5000));
    let probe = b.try_acquire().unwrap();
    assert!(probe.is_probe() && probe.would_reject().is_none());
    let extra = b.try_acquire().unwrap();
    assert_eq!(extra.would_reject(), Some(Rejection::HalfOpenFull));
    extra.failure();
    assert_eq!(b.state(), State::HalfOpen);
    probe.success();
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn an_open_gate_can_keep_the_circuit_closed_and_is_asked_again() {
    struct Gate(std::sync::atomic::AtomicU32);
    impl breaker::OpenGate for Gate {
        fn may_open(&self) -> bool {
            // refuses twice, then allows
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 2
        }
    }
    let (b, _) = setup(SettingsSpec::default());
    let gate = Arc::new(Gate(Default::default()));
    b.set_open_gate(gate.clone());
    fail(&b, 3);
    assert_eq!(b.state(), State::Closed, "refused at the threshold");
    fail(&b, 1);
    assert_eq!(b.state(), State::Closed, "refused again");
    assert_eq!(b.snapshot().counts.refused_opens, 2);
    fail(&b, 1);
    assert_eq!(b.state(), State::Open, "the third ask is allowed");
    assert_eq!(gate.0.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[test]
fn an_excused_call_frees_its_slot_and_moves_nothing() {
    let (b, _) = setup(SettingsSpec {
        max_concurrent_calls: Some(1),
        ..SettingsSpec::default()
    });
    for _ in 0..5 {
        b.try_acquire().unwrap().record(Outcome::Excused);
    }
    let snap = b.snapshot();
    assert_eq!(snap.state, State::Closed);
    assert_eq!(
        (
            snap.counts.excused,
            snap.counts.failures,
            snap.counts.successes
        ),
        (5, 0, 0)
    );
    assert_eq!(snap.counts.in_flight, 0);
    assert_eq!(snap.counts.window_calls, 0);
}
