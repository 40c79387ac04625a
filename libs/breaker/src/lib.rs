//! The circuit breaker at the heart of the demo: a closed/open/half-open state machine with a
//! bulkhead, driven by an injected [`Clock`] so that every rule can be tested without sleeping.
//!
//! No I/O and no Kubernetes here: callers ask for a [`Permit`], make their call, and report
//! the outcome. A permit that is dropped without a report (a cancelled request) releases its
//! slot, so the breaker can never wedge in half-open.

mod circuit;
mod clock;
mod settings;
mod window;

pub use circuit::{
    BreakerObserver, CircuitBreaker, Counts, Mode, OpenGate, Outcome, Permit, Rejection, Snapshot,
    State, Transition, TransitionReason,
};
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use settings::{limits, OrderRule, Scope, Settings, SettingsError, SettingsSpec, ORDER_RULES};
