//! v2's protection around recommendations-service: the breaker, its bulkhead and the call
//! timeout, with the fallback served whenever the call is not made or fails.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use breaker::{
    BreakerObserver, CircuitBreaker, Clock, Mode, MonotonicClock, Outcome, Rejection, Settings,
    Snapshot,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::journal::Journal;
use crate::upstream::{Recommendations, UpstreamError};

/// How often a quiet breaker is looked at, so open turns half-open on time without traffic.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

pub struct Protected {
    breaker: CircuitBreaker,
    journal: Arc<Journal>,
    calls: Family<OutcomeLabels, Counter>,
    fallbacks: Family<OutcomeLabels, Counter>,
}

impl Protected {
    pub fn new(settings: Settings, registry: &mut Registry) -> Self {
        let clock = Arc::new(MonotonicClock::new());
        let journal = Arc::new(Journal::register(registry, clock.now()));
        let calls = Family::<OutcomeLabels, Counter>::default();
        let fallbacks = Family::<OutcomeLabels, Counter>::default();
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
        let breaker = CircuitBreaker::with_observer(
            settings,
            clock,
            Some(journal.clone() as Arc<dyn BreakerObserver>),
        );
        Self {
            breaker,
            journal,
            calls,
            fallbacks,
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
    }

    pub fn apply_mode(&self, mode: Mode) {
        self.breaker.set_mode(mode);
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

    fn fallback(&self, cause: &'static str) -> Recommendations {
        self.count(&self.fallbacks, cause);
        Recommendations {
            products: Vec::new(),
            degraded: true,
        }
    }

    /// Makes the call if the breaker allows it, within the call timeout; any failure or
    /// rejection yields the fallback (no recommendations, degraded).
    pub async fn call<F, Fut>(&self, make_call: F) -> Recommendations
    where
        F: FnOnce(Duration) -> Fut,
        Fut: Future<Output = Result<Vec<catalog::Product>, UpstreamError>>,
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
                return self.fallback(outcome);
            }
        };
        // A cancelled request drops the permit here, which releases it unjudged.
        match make_call(permit.call_timeout()).await {
            Ok(products) => {
                permit.record(Outcome::Success);
                self.count(&self.calls, "success");
                Recommendations {
                    products,
                    degraded: false,
                }
            }
            Err(err) if err.is_dependency_failure() => {
                permit.record(Outcome::Failure);
                self.count(&self.calls, "failure");
                tracing::info!(error = %err, "recommendations call failed; serving fallback");
                self.fallback(err.kind())
            }
            Err(err) => {
                // The service is up and refused this one request: nothing to hold against it.
                permit.record(Outcome::Success);
                self.count(&self.calls, "refused");
                tracing::info!(error = %err, "recommendations refused the request; serving fallback");
                self.fallback(err.kind())
            }
        }
    }
}
