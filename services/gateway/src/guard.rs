//! v2's guard around recommendations-service: the breaker, its bulkhead, the call timeout and
//! the load defences its settings turn on ([`crate::defences`]: an adaptive limit, retries
//! within a budget), with the fallback served whenever the call is not made or fails.
//!
//! A half-open probe is not its user's problem: it runs on a task of its own, the user waits
//! at most [`PROBE_WAIT`] for it (a fast probe still serves the full page), and a slow probe
//! runs on to the call timeout and is judged while its user already has the fallback. With
//! `fallbackAfter` set every call runs that way, and the user waits at most that long. Such
//! detached calls are capped ([`MAX_DETACHED`]): past it a call is not made and its user gets
//! the fallback at once, so a slow dependency cannot pile up tasks without a bulkhead set.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use breaker::{
    BreakerObserver, CircuitBreaker, Clock, LimitPermit, Mode, MonotonicClock, Outcome, Permit,
    Scope, Settings, Snapshot, OPEN_JITTER,
};
use catalog::Product;
use outlier::{EndpointAddress, EndpointObserver, EndpointPermit, EndpointSet};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use crate::defences::{Admission, Defences};
use crate::journal::Journal;
use crate::revision::Revision;
use crate::upstream::{Recommendations, UpstreamError};

/// How often a quiet breaker is looked at, so open turns half-open on time without traffic.
const TICK: Duration = Duration::from_millis(100);
/// How long a user waits for the half-open probe made on their request: a healthy dependency
/// answers well within it; a hanging one costs the user this, not the call timeout.
pub const PROBE_WAIT: Duration = Duration::from_millis(100);
/// Calls running on their own task (`fallbackAfter`, probes) at once, at most. Each ends within
/// the call timeout, so this is far above what a healthy replica runs (its request rate times
/// its call timeout) and bounds what a hanging dependency can pile up.
pub const MAX_DETACHED: usize = 2048;
/// The outcome and fallback cause of a call the adaptive limit shed.
const LIMIT_SHED: &str = "rejected_limit";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// What a call came to: products, or the cause of the fallback.
type Judged = Result<Vec<Product>, &'static str>;

pub struct Guard {
    breaker: Arc<CircuitBreaker>,
    /// recommendations' endpoints, each with its breaker; called through when the scope is
    /// Endpoint.
    endpoints: EndpointSet,
    journal: Arc<Journal>,
    revision: Arc<Revision>,
    calls: Family<OutcomeLabels, Counter>,
    fallbacks: Family<OutcomeLabels, Counter>,
    would_reject: Family<OutcomeLabels, Counter>,
    /// Places for calls running detached from their users, [`MAX_DETACHED`] in all.
    detached: Arc<Semaphore>,
    /// The adaptive limit and the retries, as the settings say.
    defences: Defences,
}

impl Guard {
    /// `endpoints`: recommendations' endpoints, for scope Endpoint.
    pub fn new(
        settings: Settings,
        endpoints: &[EndpointAddress],
        jitter_seed: u64,
        registry: &mut Registry,
    ) -> Self {
        let clock = Arc::new(MonotonicClock::new());
        let revision = Arc::new(Revision::default());
        let journal = Arc::new(Journal::register(registry, clock.now(), revision.clone()));
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
        let defences = Defences::register(registry, clock.clone());
        defences.apply(&settings, Mode::Auto);
        let endpoint_set = EndpointSet::new(
            settings.clone(),
            settings.max_ejection_percent,
            clock.clone(),
            Some(journal.clone() as Arc<dyn EndpointObserver>),
            jitter_seed.rotate_left(17),
        );
        endpoint_set.update(endpoints);
        let breaker = Arc::new(CircuitBreaker::with_observer(
            settings,
            clock,
            Some(journal.clone() as Arc<dyn BreakerObserver>),
        ));
        breaker.set_open_jitter(OPEN_JITTER, jitter_seed);
        Self {
            breaker,
            endpoints: endpoint_set,
            journal,
            revision,
            calls,
            fallbacks,
            would_reject,
            detached: Arc::new(Semaphore::new(MAX_DETACHED)),
            defences,
        }
    }

    pub fn defences(&self) -> &Defences {
        &self.defences
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

    /// Moves on with anything `/circuit-status` shows.
    pub fn revision(&self) -> &Revision {
        &self.revision
    }

    pub fn apply(&self, settings: Settings, mode: Mode) {
        let scope_changed = self.breaker.settings().scope != settings.scope;
        let max_ejection = settings.max_ejection_percent;
        self.endpoints.apply(settings.clone(), mode, max_ejection);
        // The endpoints' breakers judge only under scope Endpoint: across a change of scope
        // what they knew is stale (nothing is out under Service; all start closed under
        // Endpoint). The service's breaker keeps its state, as on any settings change.
        if scope_changed {
            self.endpoints.reset();
        }
        self.defences.apply(&settings, mode);
        self.breaker.update_settings(settings);
        self.breaker.set_mode(mode);
    }

    pub fn apply_mode(&self, mode: Mode) {
        self.defences.apply_mode(mode);
        self.endpoints.set_mode(mode);
        self.breaker.set_mode(mode);
    }

    pub fn endpoints(&self) -> &EndpointSet {
        &self.endpoints
    }

    /// recommendations' endpoints are now these; each that stays keeps its breaker.
    pub fn set_endpoints(&self, endpoints: &[EndpointAddress]) {
        let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
        tracing::info!(endpoints = ?names, "recommendations endpoints");
        self.endpoints.update(endpoints);
        self.journal.keep_endpoint_series(&names);
        self.revision.bump();
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

    /// Makes the call if the breaker allows it (and, with scope Endpoint, an endpoint's breaker
    /// too, and the adaptive limit when on), within the call timeout, retried as the settings
    /// allow; any failure or rejection yields the fallback. The call is `'static` and gets
    /// the time it may take and the endpoint to call (`None`: the service's address), so that
    /// a probe can outlive its user's wait.
    pub async fn call<F, Fut>(self: &Arc<Self>, make_call: F) -> Recommendations
    where
        F: Fn(Duration, Option<Arc<str>>) -> Fut + 'static,
        Fut: Future<Output = Result<Vec<Product>, UpstreamError>> + 'static,
    {
        let service = match self.breaker.try_acquire() {
            Ok(permit) => permit.into_owned(&self.breaker),
            Err(rejection) => {
                self.count(&self.calls, rejection.outcome());
                return self.serve(Err(rejection.outcome()));
            }
        };
        if let Some(rejection) = service.would_reject() {
            self.count(&self.would_reject, rejection.as_str());
        }
        let place = match self.defences.admit() {
            // The service permit goes back unjudged: no call was made.
            Admission::Shed => {
                self.count(&self.calls, LIMIT_SHED);
                return self.serve(Err(LIMIT_SHED));
            }
            Admission::Admitted { place, would_shed } => {
                if would_shed {
                    self.count(&self.would_reject, "limit");
                }
                place
            }
        };
        let endpoint = if service.scope() == Scope::Endpoint {
            match self.endpoints.acquire() {
                Ok(endpoint) => Some(endpoint),
                Err(none) => {
                    // The service permit goes back unjudged: no call was made.
                    self.count(&self.calls, none.as_str());
                    return self.serve(Err(none.as_str()));
                }
            }
        } else {
            None
        };
        let call = Call {
            service,
            endpoint,
            place,
        };
        // A probe is never its user's problem; with `fallbackAfter` no call is.
        let user_wait = match (call.is_probe(), call.service.fallback_after()) {
            (true, budget) => Some((
                "probe_running",
                budget.map_or(PROBE_WAIT, |b| b.min(PROBE_WAIT)),
            )),
            (false, Some(budget)) => Some(("fallback_after", budget)),
            (false, None) => None,
        };
        let (timeout, at) = (call.service.call_timeout(), call.address());
        let plan = self.defences.retry_plan();
        let this = self.clone();
        let made = async move {
            this.defences
                .call_with_retries(make_call, timeout, at, plan)
                .await
        };
        match user_wait {
            Some((cause, wait)) => self.run_on(call, made, wait, cause).await,
            // A cancelled request drops the permits here, which releases them unjudged.
            None => {
                let result = made.await;
                self.serve(self.judge(call, result))
            }
        }
    }

    /// Runs the call on its own task, judged whatever its user does; the user waits for it at
    /// most `wait`, then gets the fallback (counted as `cause`).
    async fn run_on<Fut>(
        self: &Arc<Self>,
        call: Call,
        made: Fut,
        wait: Duration,
        cause: &'static str,
    ) -> Recommendations
    where
        Fut: Future<Output = Result<Vec<Product>, UpstreamError>> + 'static,
    {
        let Ok(slot) = self.detached.clone().try_acquire_owned() else {
            // The permits go back unjudged: no call was made.
            drop(call);
            self.count(&self.calls, "detached_full");
            return self.serve(Err("detached_full"));
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let this = self.clone();
        actix_web::rt::spawn(async move {
            let result = made.await;
            let _ = answer.send(this.judge(call, result));
            drop(slot);
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

    /// Records what the call says about the dependency (and its endpoint).
    fn judge(&self, mut call: Call, result: Result<Vec<Product>, UpstreamError>) -> Judged {
        let endpoint = call.endpoint.as_ref().map(|e| e.endpoint().name.clone());
        let failed = matches!(&result, Err(err) if err.is_dependency_failure());
        self.defences.record(call.place.take(), failed);
        match result {
            Ok(products) => {
                call.record(Outcome::Success);
                self.count(&self.calls, "success");
                Ok(products)
            }
            Err(err) if err.is_dependency_failure() => {
                call.record_failure(&self.endpoints);
                self.count(&self.calls, "failure");
                tracing::info!(error = %err, endpoint, "recommendations call failed");
                Err(err.kind())
            }
            Err(err) => {
                // The service is up and refused this one request: nothing to hold against it.
                call.record(Outcome::Success);
                self.count(&self.calls, "refused");
                tracing::info!(error = %err, endpoint, "recommendations refused the request");
                Err(err.kind())
            }
        }
    }
}

/// Leave for one call: the service's breaker's, and with scope Endpoint the chosen endpoint's.
struct Call {
    service: Permit<Arc<CircuitBreaker>>,
    endpoint: Option<EndpointPermit>,
    /// Its place under the adaptive limit, when that is on.
    place: Option<LimitPermit>,
}

impl Call {
    fn is_probe(&self) -> bool {
        self.service.is_probe()
            || self
                .endpoint
                .as_ref()
                .is_some_and(|e| e.permit().is_probe())
    }

    fn address(&self) -> Option<Arc<str>> {
        self.endpoint.as_ref().map(|e| e.endpoint().address.clone())
    }

    fn record(self, outcome: Outcome) {
        self.service.record(outcome);
        if let Some(endpoint) = self.endpoint {
            endpoint.record(outcome);
        }
    }

    /// A failure is its endpoint's breaker's to judge while the set can take that endpoint
    /// out; the service's breaker judges it only past the ejection ceiling, when failures mean
    /// the service itself is failing.
    fn record_failure(self, endpoints: &EndpointSet) {
        match self.endpoint {
            Some(endpoint) if endpoints.contains_failure(endpoint.endpoint()) => {
                self.service.record(Outcome::Excused);
                endpoint.record(Outcome::Failure);
            }
            endpoint => {
                self.service.record(Outcome::Failure);
                if let Some(endpoint) = endpoint {
                    endpoint.record(Outcome::Failure);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn with_fallback_after() -> Arc<Guard> {
        let settings = Settings::new(breaker::SettingsSpec {
            fallback_after: Some(Duration::from_millis(50)),
            ..breaker::SettingsSpec::default()
        })
        .unwrap();
        Arc::new(Guard::new(settings, &[], 1, &mut Registry::default()))
    }

    #[actix_web::test]
    async fn detached_calls_are_capped_and_a_call_past_the_cap_is_not_made() {
        let guard = with_fallback_after();
        let made = Arc::new(AtomicUsize::new(0));
        let call = |made: Arc<AtomicUsize>| {
            move |_timeout: Duration, _at: Option<Arc<str>>| {
                made.fetch_add(1, Ordering::Relaxed);
                async { Ok(Vec::new()) }
            }
        };
        // Room: the call is made and answers within the budget.
        let answer = guard.call(call(made.clone())).await;
        assert!(!answer.degraded);
        assert_eq!(made.load(Ordering::Relaxed), 1);
        assert_eq!(
            guard.detached.available_permits(),
            MAX_DETACHED,
            "its slot is free again"
        );
        // Full: no call, the fallback at once, the breaker's permit back unjudged.
        let _all = guard
            .detached
            .clone()
            .try_acquire_many_owned(MAX_DETACHED as u32)
            .unwrap();
        let answer = guard.call(call(made.clone())).await;
        assert!(answer.degraded);
        assert_eq!(
            made.load(Ordering::Relaxed),
            1,
            "a call was made past the cap"
        );
        assert_eq!(guard.snapshot().counts.in_flight, 0);
        let calls = guard.calls.get_or_create(&OutcomeLabels {
            outcome: "detached_full",
        });
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn a_detached_slot_is_never_handed_out_past_the_cap_under_concurrency() {
        let guard = with_fallback_after();
        let _taken_before = guard
            .detached
            .clone()
            .try_acquire_many_owned(MAX_DETACHED as u32 - 100)
            .unwrap();
        let taken: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let detached = guard.detached.clone();
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        for _ in 0..50 {
                            if let Ok(slot) = detached.clone().try_acquire_owned() {
                                mine.push(slot);
                            }
                        }
                        let n = mine.len();
                        std::mem::forget(mine);
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(taken.iter().sum::<usize>(), 100);
        assert_eq!(guard.detached.available_permits(), 0);
    }
}
