//! v2's protection around recommendations-service: the breaker, its bulkhead and the call
//! timeout, with the fallback served whenever the call is not made or fails.
//!
//! A half-open probe is not its user's problem: it runs on a task of its own, the user waits
//! at most [`PROBE_WAIT`] for it (a fast probe still serves the full page), and a slow probe
//! runs on to the call timeout and is judged while its user already has the fallback. With
//! `fallbackAfter` set every call runs that way, and the user waits at most that long.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::borrow::Borrow;

use breaker::{
    BreakerObserver, CircuitBreaker, Clock, Mode, MonotonicClock, Outcome, Permit, Rejection,
    Settings, Snapshot,
};
use catalog::Product;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::journal::Journal;
use crate::upstream::{Recommendations, UpstreamError};

/// How often a quiet breaker is looked at, so open turns half-open on time without traffic.
const TICK: Duration = Duration::from_millis(100);
/// How long a user waits for the half-open probe made on their request: a healthy dependency
/// answers well within it; a hanging one costs the user this, not the call timeout.
pub const PROBE_WAIT: Duration = Duration::from_millis(100);
/// Each open duration is up to this share longer, drawn per replica, so that replicas which
/// opened together probe apart.
const OPEN_JITTER: f64 = 0.1;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// What a call came to: products, or the cause of the fallback.
type Judged = Result<Vec<Product>, &'static str>;

pub struct Protected {
    breaker: Arc<CircuitBreaker>,
    journal: Arc<Journal>,
    calls: Family<OutcomeLabels, Counter>,
    fallbacks: Family<OutcomeLabels, Counter>,
    would_reject: Family<OutcomeLabels, Counter>,
}

impl Protected {
    pub fn new(settings: Settings, jitter_seed: u64, registry: &mut Registry) -> Self {
        let clock = Arc::new(MonotonicClock::new());
        let journal = Arc::new(Journal::register(registry, clock.now()));
        let calls = Family::<OutcomeLabels, Counter>::default();
        let fallbacks = Family::<OutcomeLabels, Counter>::default();
        let would_reject = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "breaker_calls",
            "Recommendation calls by outcome, rejections included",
            calls.clone(),
        );
        registry.register(
            "gateway_fallbacks",
            "Answers served with fallback recommendations, by cause",
            fallbacks.clone(),
        );
        registry.register(
            "breaker_would_reject",
            "Calls let through in Observe mode that Auto would have rejected, by reason",
            would_reject.clone(),
        );
        let breaker = Arc::new(CircuitBreaker::with_observer(
            settings,
            clock,
            Some(journal.clone() as Arc<dyn BreakerObserver>),
        ));
        breaker.set_open_jitter(OPEN_JITTER, jitter_seed);
        Self {
            breaker,
            journal,
            calls,
            fallbacks,
            would_reject,
        }
    }

    pub fn call_timeout(&self) -> Duration {
        self.breaker.call_timeout()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.breaker.snapshot()
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn apply(&self, settings: Settings, mode: Mode) {
        self.breaker.update_settings(settings);
        self.breaker.set_mode(mode);
        self.journal.settings_changed();
    }

    pub fn apply_mode(&self, mode: Mode) {
        self.breaker.set_mode(mode);
        self.journal.settings_changed();
    }

    /// Looks at the breaker every [`TICK`]; call once inside the runtime.
    pub fn spawn_ticker(self: &Arc<Self>) {
        let this = self.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                this.breaker.state();
            }
        });
    }

    fn count(&self, family: &Family<OutcomeLabels, Counter>, outcome: &'static str) {
        family.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// What the user gets: the products, or the fallback (no recommendations, degraded),
    /// counted by cause.
    fn serve(&self, judged: Judged) -> Recommendations {
        match judged {
            Ok(products) => Recommendations {
                products,
                degraded: false,
            },
            Err(cause) => {
                self.count(&self.fallbacks, cause);
                Recommendations {
                    products: Vec::new(),
                    degraded: true,
                }
            }
        }
    }

    /// Makes the call if the breaker allows it, within the call timeout; any failure or
    /// rejection yields the fallback. The call is `'static`, so that a probe can outlive its
    /// user's wait.
    pub async fn call<F, Fut>(self: &Arc<Self>, make_call: F) -> Recommendations
    where
        F: FnOnce(Duration) -> Fut + 'static,
        Fut: Future<Output = Result<Vec<Product>, UpstreamError>> + 'static,
    {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(rejection) => {
                let outcome = match rejection {
                    Rejection::Open => "rejected_open",
                    Rejection::HalfOpenFull => "rejected_half_open",
                    Rejection::BulkheadFull => "rejected_bulkhead",
                    Rejection::ForcedOpen => "rejected_forced_open",
                };
                self.count(&self.calls, outcome);
                return self.serve(Err(outcome));
            }
        };
        if let Some(rejection) = permit.would_reject() {
            self.count(&self.would_reject, rejection.as_str());
        }
        // A probe is never its user's problem; with `fallbackAfter` no call is.
        let user_wait = match (permit.is_probe(), permit.fallback_after()) {
            (true, budget) => Some((
                "probe_running",
                budget.map_or(PROBE_WAIT, |b| b.min(PROBE_WAIT)),
            )),
            (false, Some(budget)) => Some(("fallback_after", budget)),
            (false, None) => None,
        };
        if let Some((cause, wait)) = user_wait {
            let permit = permit.into_owned(&self.breaker);
            return self.run_on(permit, make_call, wait, cause).await;
        }
        // A cancelled request drops the permit here, which releases it unjudged.
        let result = make_call(permit.call_timeout()).await;
        self.serve(self.judge(permit, result))
    }

    /// Runs the call on its own task, judged whatever its user does; the user waits for it at
    /// most `wait`, then gets the fallback (counted as `cause`).
    async fn run_on<F, Fut>(
        self: &Arc<Self>,
        permit: Permit<Arc<CircuitBreaker>>,
        make_call: F,
        wait: Duration,
        cause: &'static str,
    ) -> Recommendations
    where
        F: FnOnce(Duration) -> Fut + 'static,
        Fut: Future<Output = Result<Vec<Product>, UpstreamError>> + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let this = self.clone();
        actix_web::rt::spawn(async move {
            let result = make_call(permit.call_timeout()).await;
            let _ = answer.send(this.judge(permit, result));
        });
        match tokio::time::timeout(wait, answered).await {
            Ok(Ok(judged)) => self.serve(judged),
            _ => {
                tracing::info!(
                    ?wait,
                    cause,
                    "call still running; serving fallback, the call runs on to be judged"
                );
                self.serve(Err(cause))
            }
        }
    }

    /// Records what the call says about the dependency.
    fn judge<B: Borrow<CircuitBreaker>>(
        &self,
        permit: Permit<B>,
        result: Result<Vec<Product>, UpstreamError>,
    ) -> Judged {
        match result {
            Ok(products) => {
                permit.record(Outcome::Success);
                self.count(&self.calls, "success");
                Ok(products)
            }
            Err(err) if err.is_dependency_failure() => {
                permit.record(Outcome::Failure);
                self.count(&self.calls, "failure");
                tracing::info!(error = %err, "recommendations call failed");
                Err(err.kind())
            }
            Err(err) => {
                // The service is up and refused this one request: nothing to hold against it.
                permit.record(Outcome::Success);
                self.count(&self.calls, "refused");
                tracing::info!(error = %err, "recommendations refused the request");
                Err(err.kind())
            }
        }
    }
}
