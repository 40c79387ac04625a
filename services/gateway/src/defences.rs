//! v2's load defences beside the breaker, each a setting (off by default): an adaptive
//! concurrency limit on the calls in flight, and retries within a budget with jittered
//! backoff. In Observe the limit sheds nothing and says what it would have shed; a retry the
//! budget refuses is not made in either mode (a dry run must not add load to a failing
//! dependency), only counted as `would_refuse` instead of `refused`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use breaker::{
    jittered_backoff, AdaptiveLimit, Clock, LimitPermit, Mode, RetryBudget, RetryVerdict, Settings,
};
use breaker_api::circuit_status::LoadStatus;
use catalog::Product;
use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::upstream::UpstreamError;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    outcome: &'static str,
}

/// How a failed call is tried again.
#[derive(Clone)]
pub struct RetryPlan {
    budget: Arc<RetryBudget>,
    max_retries: u32,
    backoff: Duration,
    observe: bool,
}

#[derive(Default)]
struct Current {
    limit: Option<Arc<AdaptiveLimit>>,
    retry: Option<RetryPlan>,
    observe: bool,
}

pub struct Defences {
    clock: Arc<dyn Clock>,
    current: RwLock<Current>,
    retries: Family<RetryLabels, Counter>,
    limit: Gauge,
}

/// What the adaptive limit says of a call.
pub enum Admission {
    /// Let through (with its place under the limit, when there is one); `would_shed`: in
    /// Observe, the limit would have refused it.
    Admitted {
        place: Option<LimitPermit>,
        would_shed: bool,
    },
    Shed,
}

impl Defences {
    pub fn register(registry: &mut Registry, clock: Arc<dyn Clock>) -> Self {
        let defences = Self {
            clock,
            current: RwLock::new(Current::default()),
            retries: Family::default(),
            limit: Gauge::default(),
        };
        registry.register(
            "breaker_retries",
            "Retries of recommendation calls: allowed, or refused by the retry budget (would_refuse in Observe; not made either way)",
            defences.retries.clone(),
        );
        registry.register(
            "breaker_adaptive_limit",
            "The adaptive concurrency limit on recommendation calls (0: off)",
            defences.limit.clone(),
        );
        defences
    }

    /// Follows the settings in force: a defence turned on starts afresh, one that stays on
    /// keeps what it learnt.
    pub fn apply(&self, settings: &Settings, mode: Mode) {
        let mut current = self.current.write();
        current.observe = mode == Mode::Observe;
        current.limit = match (settings.adaptive_limit(), current.limit.take()) {
            (Some(bounds), Some(limit)) => {
                limit.update_settings(bounds);
                Some(limit)
            }
            (Some(bounds), None) => Some(Arc::new(AdaptiveLimit::new(bounds, self.clock.clone()))),
            (None, _) => None,
        };
        current.retry = settings.retry_budget().map(|budget_settings| {
            let budget = match current.retry.take() {
                Some(plan) => {
                    plan.budget.update_settings(budget_settings);
                    plan.budget
                }
                None => Arc::new(RetryBudget::new(budget_settings, self.clock.clone())),
            };
            RetryPlan {
                budget,
                max_retries: settings.max_retries,
                backoff: settings.retry_backoff,
                observe: current.observe,
            }
        });
        self.show_limit(&current);
    }

    pub fn apply_mode(&self, mode: Mode) {
        let observe = mode == Mode::Observe;
        let mut current = self.current.write();
        current.observe = observe;
        if let Some(plan) = current.retry.as_mut() {
            plan.observe = observe;
        }
    }

    fn show_limit(&self, current: &Current) {
        let limit = current.limit.as_ref().map_or(0, |l| l.snapshot().limit);
        self.limit.set(i64::from(limit));
    }

    /// Asks the adaptive limit, if on, for a place for one call.
    pub fn admit(&self) -> Admission {
        let current = self.current.read();
        let Some(limit) = &current.limit else {
            return Admission::Admitted {
                place: None,
                would_shed: false,
            };
        };
        match limit.try_acquire(current.observe) {
            (None, _) => Admission::Shed,
            (place, would_shed) => Admission::Admitted { place, would_shed },
        }
    }

    /// A call ended: the limit learns from it (`failed`: an error or a timeout).
    pub fn record(&self, place: Option<LimitPermit>, failed: bool) {
        if let Some(place) = place {
            place.record(failed);
            self.show_limit(&self.current.read());
        }
    }

    /// The retries to make of a call begun now, if any; the call counts toward the budget.
    pub fn retry_plan(&self) -> Option<RetryPlan> {
        let plan = self.current.read().retry.clone()?;
        plan.budget.record_request();
        Some(plan)
    }

    /// Makes a call, and tries it again as `plan` allows while it fails as the dependency's
    /// fault: all tries within `timeout`, each after a jittered backoff.
    pub async fn call_with_retries<F, Fut>(
        &self,
        make_call: F,
        timeout: Duration,
        at: Option<Arc<str>>,
        plan: Option<RetryPlan>,
    ) -> Result<Vec<Product>, UpstreamError>
    where
        F: Fn(Duration, Option<Arc<str>>) -> Fut,
        Fut: Future<Output = Result<Vec<Product>, UpstreamError>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut retry = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let result = make_call(left, at.clone()).await;
            let Some(plan) = plan.as_ref() else {
                return result;
            };
            match result {
                Err(err) if err.is_dependency_failure() && retry < plan.max_retries => {
                    let outcome = match (plan.budget.try_retry(), plan.observe) {
                        (RetryVerdict::Allowed, _) => "allowed",
                        (RetryVerdict::Refused, true) => "would_refuse",
                        (RetryVerdict::Refused, false) => "refused",
                    };
                    self.retries.get_or_create(&RetryLabels { outcome }).inc();
                    if outcome != "allowed" {
                        return Err(err);
                    }
                    retry += 1;
                    let pause = jittered_backoff(plan.backoff, retry, fastrand::f64());
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if pause >= left {
                        return Err(err);
                    }
                    tokio::time::sleep(pause).await;
                }
                result => return result,
            }
        }
    }

    pub fn status(&self) -> LoadStatus {
        let current = self.current.read();
        let limit = current.limit.as_ref().map(|l| l.snapshot());
        let count = |outcome| self.retries.get_or_create(&RetryLabels { outcome }).get();
        LoadStatus {
            adaptive_limit: limit.map(|l| l.limit),
            in_flight: limit.map_or(0, |l| l.in_flight),
            shed: limit.map_or(0, |l| l.shed),
            retries: count("allowed"),
            retries_refused: count("refused") + count("would_refuse"),
        }
    }
}

#[cfg(test)]
mod tests {
    use breaker::{ManualClock, SettingsSpec};

    use super::*;

    fn defences(spec: SettingsSpec, mode: Mode) -> Defences {
        let d = Defences::register(&mut Registry::default(), Arc::new(ManualClock::new()));
        d.apply(&Settings::new(spec).unwrap(), mode);
        d
    }

    fn limited(max: u32) -> SettingsSpec {
        SettingsSpec {
            adaptive_limit_max: Some(max),
            ..SettingsSpec::default()
        }
    }

    #[test]
    fn off_by_default_and_past_the_limit_a_call_is_shed() {
        let off = defences(SettingsSpec::default(), Mode::Auto);
        assert!(matches!(
            off.admit(),
            Admission::Admitted {
                place: None,
                would_shed: false
            }
        ));
        assert!(off.retry_plan().is_none());
        assert_eq!(off.status(), LoadStatus::default());
        let on = defences(limited(2), Mode::Auto);
        let held: Vec<_> = (0..2).map(|_| on.admit()).collect();
        assert!(matches!(on.admit(), Admission::Shed));
        drop(held);
        assert_eq!(on.status().shed, 1);
        assert_eq!(on.status().adaptive_limit, Some(2));
    }

    #[test]
    fn in_observe_nothing_is_shed_and_what_would_have_been_is_said() {
        let observing = defences(limited(1), Mode::Observe);
        let _first = observing.admit();
        assert!(matches!(
            observing.admit(),
            Admission::Admitted {
                place: Some(_),
                would_shed: true
            }
        ));
        assert_eq!(observing.status().shed, 1);
    }

    #[actix_web::test]
    async fn retries_stop_at_the_budget_in_observe_too_and_observe_says_it_would_refuse() {
        let spec = SettingsSpec {
            max_retries: 3,
            retry_budget_percent: 100.0,
            min_retries_per_second: 0,
            retry_backoff: Duration::from_millis(1),
            ..SettingsSpec::default()
        };
        for mode in [Mode::Auto, Mode::Observe] {
            let d = defences(spec.clone(), mode);
            let made = std::sync::atomic::AtomicU32::new(0);
            let failing = |_: Duration, _: Option<Arc<str>>| {
                made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async {
                    Err(UpstreamError::Timeout(
                        crate::metrics::UpstreamName::Recommendations,
                        Duration::ZERO,
                    ))
                }
            };
            // One request in the budget at 100%: one retry; the next is refused in both modes
            // (in Observe, counted as one the budget would have refused): two calls made.
            let plan = d.retry_plan();
            let result = d
                .call_with_retries(failing, Duration::from_secs(1), None, plan)
                .await;
            assert!(result.is_err());
            assert_eq!(made.into_inner(), 2, "{mode:?}");
            let status = d.status();
            assert_eq!(status.retries, 1, "{mode:?}");
            assert_eq!(status.retries_refused, 1, "{mode:?}");
            let refused = if mode == Mode::Auto {
                "refused"
            } else {
                "would_refuse"
            };
            let counted = |outcome| d.retries.get_or_create(&RetryLabels { outcome }).get();
            assert_eq!((counted(refused), counted("allowed")), (1, 1), "{mode:?}");
        }
    }
}
