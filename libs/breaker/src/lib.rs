//! The circuit breaker at the heart of the demo: a closed/open/half-open state machine with a
//! bulkhead, and beside it an [`AdaptiveLimit`] on calls in flight and a [`RetryBudget`], all
//! driven by an injected [`Clock`] so that every rule can be tested without sleeping.
//!
//! No I/O and no Kubernetes here: callers ask for a [`Permit`], make their call, and report
//! the outcome. A permit that is dropped without a report (a cancelled request) releases its
//! slot, so the breaker can never wedge in half-open.

mod adaptive;
mod circuit;
mod clock;
mod retry;
mod settings;
mod window;

pub use adaptive::{AdaptiveLimit, AdaptiveLimitSettings, LimitPermit, LimitSnapshot};
pub use retry::{jittered_backoff, RetryBudget, RetryBudgetSettings, RetryVerdict, BUDGET_WINDOW};

pub use circuit::{
    BreakerObserver, CircuitBreaker, Counts, Mode, OpenGate, Outcome, Permit, Rejection, Snapshot,
    State, Transition, TransitionReason, OPEN_JITTER,
};
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use settings::{limits, OrderRule, Scope, Settings, SettingsError, SettingsSpec, ORDER_RULES};
