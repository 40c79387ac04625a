use std::borrow::Borrow;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::settings::{Scope, Settings, SettingsError};
use crate::window::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub const ALL: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// The share by which the gateways lengthen each open duration at most ([`CircuitBreaker::set_open_jitter`]),
/// drawn per breaker, so that replicas or endpoints which opened together probe apart.
pub const OPEN_JITTER: f64 = 0.1;

/// An operator's override of the state machine (a BreakerPolicy's `spec.mode`).
// Spelled on the wire (the ConfigMap's `mode` key, `/circuit-status`) as named here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Mode {
    /// The state machine decides.
    #[default]
    Auto,
    /// Every call is rejected, as if open, whatever the state machine says.
    ForceOpen,
    /// Every call is let through (the bulkhead still applies); outcomes are counted but
    /// move no state.
    ForceClosed,
    /// A dry run: the state machine judges exactly as in Auto, and every call is let through.
    /// A call Auto would reject gets a permit that says so ([`Permit::would_reject`]); its
    /// outcome is not judged, as Auto would not have made it. Status, metrics and Events say
    /// "would open".
    Observe,
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::Auto,
        Mode::ForceOpen,
        Mode::ForceClosed,
        Mode::Observe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "Auto",
            Mode::ForceOpen => "ForceOpen",
            Mode::ForceClosed => "ForceClosed",
            Mode::Observe => "Observe",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = SettingsError;

    /// The ConfigMap's spelling (surrounding whitespace allowed); an error names the key.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        Mode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = Mode::ALL.iter().map(|m| m.as_str()).collect();
                SettingsError::new(
                    "mode",
                    format!("{text:?} is not one of {}", known.join(", ")),
                )
            })
    }
}

/// Why a call was not let through; the caller serves its fallback at once. Its word (`as_str`,
/// serde) is the one metrics use: `breaker_would_reject{outcome="half_open"}`, and with
/// `rejected_` before it ([`Rejection::outcome`]) a call's outcome, as in [`Counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    #[error("circuit is open")]
    Open,
    #[error("circuit is half-open and all probes are taken")]
    #[serde(rename = "half_open")]
    HalfOpenFull,
    #[error("bulkhead is full")]
    #[serde(rename = "bulkhead")]
    BulkheadFull,
    #[error("circuit is forced open")]
    ForcedOpen,
}

impl Rejection {
    pub const ALL: [Rejection; 4] = [
        Rejection::Open,
        Rejection::HalfOpenFull,
        Rejection::BulkheadFull,
        Rejection::ForcedOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Open => "open",
            Rejection::HalfOpenFull => "half_open",
            Rejection::BulkheadFull => "bulkhead",
            Rejection::ForcedOpen => "forced_open",
        }
    }

    /// The outcome of a call rejected so: `rejected_` and [`as_str`](Self::as_str).
    pub fn outcome(self) -> &'static str {
        match self {
            Rejection::Open => "rejected_open",
            Rejection::HalfOpenFull => "rejected_half_open",
            Rejection::BulkheadFull => "rejected_bulkhead",
            Rejection::ForcedOpen => "rejected_forced_open",
        }
    }
}

/// What became of a permitted call, as the caller judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Not this breaker's to judge: another one answers for it (an endpoint's breaker that
    /// takes its failing endpoint out of rotation). Counted, never judged.
    Excused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum TransitionReason {
    ConsecutiveFailures,
    FailureRate,
    SlowCallRate,
    OpenDurationElapsed,
    ProbeFailed,
    ProbesSucceeded,
}

impl TransitionReason {
    pub const ALL: [TransitionReason; 6] = [
        TransitionReason::ConsecutiveFailures,
        TransitionReason::FailureRate,
        TransitionReason::SlowCallRate,
        TransitionReason::OpenDurationElapsed,
        TransitionReason::ProbeFailed,
        TransitionReason::ProbesSucceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransitionReason::ConsecutiveFailures => "consecutive_failures",
            TransitionReason::FailureRate => "failure_rate",
            TransitionReason::SlowCallRate => "slow_call_rate",
            TransitionReason::OpenDurationElapsed => "open_duration_elapsed",
            TransitionReason::ProbeFailed => "probe_failed",
            TransitionReason::ProbesSucceeded => "probes_succeeded",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: TransitionReason,
    /// The mode in force: in Observe a transition only says what Auto would have done.
    pub mode: Mode,
    /// Clock time of the transition.
    #[serde(skip)]
    pub at: Duration,
}

/// Told of every state change, under the breaker's lock: keep it quick and never call
/// back into the breaker.
pub trait BreakerObserver: Send + Sync {
    fn on_transition(&self, transition: &Transition);
}

/// Asked, under the breaker's lock, before a closed circuit opens: `false` keeps it closed,
/// its failures still counted, so the next failure asks again. Outlier ejection uses it to
/// cap how many endpoints of a service may be out at once. Keep it quick; never call back
/// into the breaker.
pub trait OpenGate: Send + Sync {
    fn may_open(&self) -> bool;
}

/// Running totals and the current window, for status pages and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub consecutive_failures: u32,
    pub window_calls: u32,
    pub window_failures: u32,
    pub window_slow_calls: u32,
    pub in_flight: u32,
    pub half_open_in_flight: u32,
    pub successes: u64,
    pub failures: u64,
    pub slow_calls: u64,
    pub rejected_open: u64,
    pub rejected_half_open: u64,
    pub rejected_bulkhead: u64,
    pub rejected_forced_open: u64,
    /// Calls let through in Observe that Auto would have rejected (also counted in the
    /// `rejected_*` count of their reason).
    pub observed_rejections: u64,
    /// Openings an [`OpenGate`] refused: the circuit stayed closed.
    pub refused_opens: u64,
    /// Permits dropped without an outcome (cancelled calls).
    pub abandoned: u64,
    /// Calls recorded as [`Outcome::Excused`].
    pub excused: u64,
    pub transitions: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub state: State,
    pub mode: Mode,
    pub settings: Settings,
    pub counts: Counts,
    pub last_transition: Option<Transition>,
    /// Clock time until which the circuit stays open, while it is open.
    pub opened_until: Option<Duration>,
    /// Failed probes in a row; drives the open-duration backoff.
    pub failed_probes: u32,
}

struct Core {
    settings: Settings,
    mode: Mode,
    state: State,
    /// Bumped on every transition; outcomes of calls admitted in an earlier epoch do not
    /// move the state machine (they still count in the totals).
    epoch: u64,
    window: Window,
    opened_until: Duration,
    failed_probes: u32,
    half_open_successes: u32,
    counts: Counts,
    last_transition: Option<Transition>,
    jitter: Option<Jitter>,
    gate: Option<Arc<dyn OpenGate>>,
}

/// Lengthens each open duration by a random share up to `max_extra`, so that replicas which
/// opened together do not probe together; the same seed gives the same durations.
#[derive(Debug, Clone)]
struct Jitter {
    max_extra: f64,
    rng: fastrand::Rng,
}

impl Jitter {
    fn apply(&mut self, open: Duration) -> Duration {
        open.mul_f64(1.0 + self.max_extra * self.rng.f64())
    }
}

pub struct CircuitBreaker {
    core: Mutex<Core>,
    clock: Arc<dyn Clock>,
    observer: Option<Arc<dyn BreakerObserver>>,
}

/// Leave to make one call. Report it with [`Permit::record`]; dropping it unreported
/// releases its slot without judging the dependency. It holds its breaker by reference
/// ([`CircuitBreaker::try_acquire`]), or by `Arc` ([`Permit::into_owned`]) to outlive its caller.
#[must_use = "a permit must be recorded, or dropped to release it"]
pub struct Permit<B: Borrow<CircuitBreaker>> {
    breaker: B,
    admission: Admission,
    reported: bool,
}

/// What the breaker needs, when a call finishes, to judge it.
#[derive(Debug, Clone, Copy)]
struct Admission {
    epoch: u64,
    probe: bool,
    /// Let through by ForceClosed: counted, but never moves the state machine.
    forced: bool,
    /// Clock time at admission; only read when slow calls are judged, to keep the
    /// closed path free of clock reads.
    started: Option<Duration>,
    call_timeout: Duration,
    fallback_after: Option<Duration>,
    scope: Scope,
    /// Let through by Observe where Auto would have rejected: not in flight for the breaker,
    /// and never judged.
    would_reject: Option<Rejection>,
}

impl CircuitBreaker {
    /// Takes [`Settings`], which only validation makes: the breaker never sees raw config.
    pub fn new(settings: Settings, clock: Arc<dyn Clock>) -> Self {
        Self::with_observer(settings, clock, None)
    }

    pub fn with_observer(
        settings: Settings,
        clock: Arc<dyn Clock>,
        observer: Option<Arc<dyn BreakerObserver>>,
    ) -> Self {
        let window = Window::new(settings.sliding_window_size);
        let core = Core {
            settings,
            mode: Mode::Auto,
            state: State::Closed,
            epoch: 0,
            window,
            opened_until: Duration::ZERO,
            failed_probes: 0,
            half_open_successes: 0,
            counts: Counts::default(),
            last_transition: None,
            jitter: None,
            gate: None,
        };
        Self {
            core: Mutex::new(core),
            clock,
            observer,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // parking_lot: no poisoning, and it spins briefly before parking, which keeps the
        // contended call path cheap.
        self.core.lock()
    }

    /// Asks to make a call now.
    pub fn try_acquire(&self) -> Result<Permit<&Self>, Rejection> {
        let mut core = self.lock();
        let admission = match self.admit(&mut core) {
            Ok(admission) => admission,
            Err(rejection) if core.mode == Mode::Observe => {
                core.counts.observed_rejections += 1;
                Admission {
                    epoch: core.epoch,
                    probe: false,
                    forced: false,
                    started: None,
                    call_timeout: core.settings.call_timeout,
                    fallback_after: core.settings.fallback_after,
                    scope: core.settings.scope,
                    would_reject: Some(rejection),
                }
            }
            Err(rejection) => return Err(rejection),
        };
        Ok(Permit {
            breaker: self,
            admission,
            reported: false,
        })
    }

    /// Auto's verdict (or a forced mode's) on a call now, counted.
    fn admit(&self, core: &mut Core) -> Result<Admission, Rejection> {
        self.open_to_half_open(core);
        if let Some(max) = core.settings.max_concurrent_calls {
            if core.counts.in_flight >= max {
                core.counts.rejected_bulkhead += 1;
                return Err(Rejection::BulkheadFull);
            }
        }
        let forced = match core.mode {
            Mode::Auto | Mode::Observe => false,
            Mode::ForceClosed => true,
            Mode::ForceOpen => {
                core.counts.rejected_forced_open += 1;
                return Err(Rejection::ForcedOpen);
            }
        };
        let probe = match core.state {
            _ if forced => false,
            State::Closed => false,
            State::Open => {
                core.counts.rejected_open += 1;
                return Err(Rejection::Open);
            }
            State::HalfOpen => {
                let admitted = core.counts.half_open_in_flight + core.half_open_successes;
                if admitted >= core.settings.half_open_max_calls {
                    core.counts.rejected_half_open += 1;
                    return Err(Rejection::HalfOpenFull);
                }
                core.counts.half_open_in_flight += 1;
                true
            }
        };
        core.counts.in_flight += 1;
        Ok(Admission {
            epoch: core.epoch,
            probe,
            forced,
            started: core.settings.slow_call_duration.map(|_| self.clock.now()),
            call_timeout: core.settings.call_timeout,
            fallback_after: core.settings.fallback_after,
            scope: core.settings.scope,
            would_reject: None,
        })
    }

    /// Current state, moving open to half-open if its time is up.
    pub fn state(&self) -> State {
        let mut core = self.lock();
        self.open_to_half_open(&mut core);
        core.state
    }

    /// The call timeout in force, without copying the whole settings.
    pub fn call_timeout(&self) -> Duration {
        self.lock().settings.call_timeout
    }

    pub fn settings(&self) -> Settings {
        self.lock().settings.clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut core = self.lock();
        self.open_to_half_open(&mut core);
        let mut counts = core.counts;
        counts.window_calls = core.window.len();
        counts.window_failures = core.window.failures();
        counts.window_slow_calls = core.window.slow();
        Snapshot {
            state: core.state,
            mode: core.mode,
            settings: core.settings.clone(),
            counts,
            last_transition: core.last_transition,
            opened_until: (core.state == State::Open).then_some(core.opened_until),
            failed_probes: core.failed_probes,
        }
    }

    /// Swaps the settings in place: state, window contents and counters are kept. An open
    /// circuit keeps the deadline it was given.
    pub fn update_settings(&self, settings: Settings) {
        let mut core = self.lock();
        core.window.resize(settings.sliding_window_size);
        core.settings = settings;
        // Lowering halfOpenMaxCalls to what already succeeded must close the circuit now:
        // no further probe would be admitted to do it.
        if core.state == State::HalfOpen
            && core.half_open_successes >= core.settings.half_open_max_calls
        {
            self.transition(&mut core, State::Closed, TransitionReason::ProbesSucceeded);
        }
    }

    /// From now on each open duration is lengthened by a random share of up to `max_extra`
    /// (0.1: up to 10%), drawn from `seed`; 0 turns it off.
    pub fn set_open_jitter(&self, max_extra: f64, seed: u64) {
        self.lock().jitter = (max_extra > 0.0).then(|| Jitter {
            max_extra,
            rng: fastrand::Rng::with_seed(seed),
        });
    }

    /// From now on `gate` is asked before the circuit opens from closed.
    pub fn set_open_gate(&self, gate: Arc<dyn OpenGate>) {
        self.lock().gate = Some(gate);
    }

    /// Sets the operator override; the state machine underneath keeps its state and resumes
    /// from it when the mode goes back to Auto.
    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    pub fn mode(&self) -> Mode {
        self.lock().mode
    }

    fn open_to_half_open(&self, core: &mut Core) {
        if core.state == State::Open && self.clock.now() >= core.opened_until {
            self.transition(core, State::HalfOpen, TransitionReason::OpenDurationElapsed);
        }
    }

    fn transition(&self, core: &mut Core, to: State, reason: TransitionReason) {
        let now = self.clock.now();
        let from = core.state;
        core.state = to;
        core.epoch += 1;
        core.counts.consecutive_failures = 0;
        core.counts.half_open_in_flight = 0;
        core.half_open_successes = 0;
        match to {
            State::Open => {
                if from == State::HalfOpen {
                    core.failed_probes = core.failed_probes.saturating_add(1);
                }
                let open = core.settings.open_duration_after(core.failed_probes);
                let open = match &mut core.jitter {
                    Some(jitter) => jitter.apply(open),
                    None => open,
                };
                core.opened_until = now + open;
            }
            State::Closed => {
                core.failed_probes = 0;
                core.window.clear();
            }
            State::HalfOpen => {}
        }
        let transition = Transition {
            from,
            to,
            reason,
            mode: core.mode,
            at: now,
        };
        core.last_transition = Some(transition);
        core.counts.transitions += 1;
        if let Some(observer) = &self.observer {
            observer.on_transition(&transition);
        }
    }

    fn finish(&self, permit: &Admission, outcome: Option<Outcome>) {
        if permit.would_reject.is_some() {
            return;
        }
        let mut core = self.lock();
        core.counts.in_flight = core.counts.in_flight.saturating_sub(1);
        let current = permit.epoch == core.epoch && !permit.forced;
        if permit.probe && current {
            core.counts.half_open_in_flight = core.counts.half_open_in_flight.saturating_sub(1);
        }
        let outcome = match outcome {
            None => {
                core.counts.abandoned += 1;
                return;
            }
            Some(Outcome::Excused) => {
                core.counts.excused += 1;
                return;
            }
            Some(outcome) => outcome,
        };
        let slow = match (core.settings.slow_call_duration, permit.started) {
            (Some(limit), Some(started)) => self.clock.now().saturating_sub(started) > limit,
            _ => false,
        };
        let failed = outcome == Outcome::Failure;
        if failed {
            core.counts.failures += 1;
        } else {
            core.counts.successes += 1;
        }
        core.counts.slow_calls += u64::from(slow);
        if !current {
            return;
        }
        match core.state {
            State::Closed => self.judge_closed(&mut core, failed, slow),
            State::HalfOpen if failed || slow => {
                self.transition(&mut core, State::Open, TransitionReason::ProbeFailed);
            }
            State::HalfOpen => {
                core.half_open_successes += 1;
                if core.half_open_successes >= core.settings.half_open_max_calls {
                    self.transition(&mut core, State::Closed, TransitionReason::ProbesSucceeded);
                }
            }
            State::Open => {}
        }
    }

    fn judge_closed(&self, core: &mut Core, failed: bool, slow: bool) {
        core.window.push(failed, slow);
        core.counts.consecutive_failures = if failed {
            core.counts.consecutive_failures + 1
        } else {
            0
        };
        let settings = &core.settings;
        let calls = core.window.len();
        let rates_count = calls >= settings.effective_minimum_calls();
        let over =
            |count: u32, percent: f64| f64::from(count) * 100.0 >= percent * f64::from(calls);
        let reason = if core.counts.consecutive_failures >= settings.failure_threshold {
            Some(TransitionReason::ConsecutiveFailures)
        } else if rates_count
            && settings
                .failure_rate_threshold
                .is_some_and(|p| over(core.window.failures(), p))
        {
            Some(TransitionReason::FailureRate)
        } else if rates_count
            && settings.slow_call_duration.is_some()
            && over(core.window.slow(), settings.slow_call_rate_threshold)
        {
            Some(TransitionReason::SlowCallRate)
        } else {
            None
        };
        if let Some(reason) = reason {
            if core.gate.as_ref().is_some_and(|gate| !gate.may_open()) {
                core.counts.refused_opens += 1;
                return;
            }
            self.transition(core, State::Open, reason);
        }
    }
}

impl<B: Borrow<CircuitBreaker>> Permit<B> {
    /// The call timeout in force when this permit was granted.
    pub fn call_timeout(&self) -> Duration {
        self.admission.call_timeout
    }

    /// The scope in force when it was admitted: with `Endpoint`, an endpoint's breaker is
    /// asked too.
    pub fn scope(&self) -> Scope {
        self.admission.scope
    }

    /// How long its user waits for this call (`fallbackAfter`), when that is shorter than the
    /// call timeout.
    pub fn fallback_after(&self) -> Option<Duration> {
        self.admission.fallback_after
    }

    /// In Observe: the rejection Auto would have given this call, which was let through.
    pub fn would_reject(&self) -> Option<Rejection> {
        self.admission.would_reject
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.admission.probe
    }

    pub fn record(mut self, outcome: Outcome) {
        self.reported = true;
        self.breaker.borrow().finish(&self.admission, Some(outcome));
    }

    pub fn success(self) {
        self.record(Outcome::Success);
    }

    pub fn failure(self) {
        self.record(Outcome::Failure);
    }
}

impl Permit<&CircuitBreaker> {
    /// The same permit (its slot kept, nothing counted twice), holding `breaker`, which must be
    /// the one it came from, by `Arc`: for a call that runs on after its caller has moved on.
    pub fn into_owned(mut self, breaker: &Arc<CircuitBreaker>) -> Permit<Arc<CircuitBreaker>> {
        assert!(
            std::ptr::eq(self.breaker, Arc::as_ptr(breaker)),
            "a permit moves only to its own breaker"
        );
        // Handed over, not released.
        self.reported = true;
        Permit {
            breaker: breaker.clone(),
            admission: self.admission,
            reported: false,
        }
    }
}

impl<B: Borrow<CircuitBreaker>> Drop for Permit<B> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.borrow().finish(&self.admission, None);
        }
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.lock().state)
            .finish()
    }
}

impl<B: Borrow<CircuitBreaker>> std::fmt::Debug for Permit<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("admission", &self.admission)
            .finish()
    }
}
