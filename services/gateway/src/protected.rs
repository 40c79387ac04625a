//! v2's protection around recommendations-service: the breaker, what it has done (journal,
//! metrics), where its settings came from, and `/circuit-status`.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpResponse};
use breaker::{
    BreakerObserver, BreakerSettings, CircuitBreaker, Clock, Counts, Mode, MonotonicClock, Outcome,
    Rejection, State, Transition, TransitionReason,
};
use chrono::{DateTime, SecondsFormat, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::config::{Origin, SettingsSource};
use crate::configmap;
use crate::policy::Recommendations;
use crate::reload;
use crate::upstream::UpstreamError;

/// Transitions kept for `/circuit-status`.
const JOURNAL_LEN: usize = 50;
/// How often a quiet breaker is looked at, so open turns half-open on time without traffic.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    from: &'static str,
    to: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct TransitionRecord {
    pub from: State,
    pub to: State,
    pub reason: TransitionReason,
    pub at: String,
}

/// Observes the breaker: logs, metrics and the recent-transitions journal.
struct Journal {
    wall_origin: DateTime<Utc>,
    records: Mutex<VecDeque<TransitionRecord>>,
    state: Family<StateLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
}

impl Journal {
    fn wall(&self, at: Duration) -> DateTime<Utc> {
        self.wall_origin + chrono::Duration::from_std(at).unwrap_or_default()
    }

    fn show_state(&self, current: State) {
        for state in [State::Closed, State::Open, State::HalfOpen] {
            self.state
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(i64::from(state == current));
        }
    }
}

impl BreakerObserver for Journal {
    fn on_transition(&self, t: &Transition) {
        tracing::warn!(from = t.from.as_str(), to = t.to.as_str(), reason = ?t.reason, "circuit breaker transition");
        self.show_state(t.to);
        self.transitions
            .get_or_create(&TransitionLabels {
                from: t.from.as_str(),
                to: t.to.as_str(),
            })
            .inc();
        let record = TransitionRecord {
            from: t.from,
            to: t.to,
            reason: t.reason,
            at: rfc3339(self.wall(t.at)),
        };
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() == JOURNAL_LEN {
            records.pop_front();
        }
        records.push_back(record);
    }
}

#[derive(Debug, Clone, Serialize)]
struct ConfigStatus {
    source: String,
    version: String,
    error: Option<String>,
    /// Why the settings source cannot be read right now (API unreachable); cleared on recovery.
    watch_error: Option<String>,
    /// Version of the last content looked at, good or bad, so a bad file is reported once.
    #[serde(skip)]
    last_seen: String,
}

pub struct Protected {
    breaker: CircuitBreaker,
    journal: Arc<Journal>,
    calls: Family<OutcomeLabels, Counter>,
    fallbacks: Family<OutcomeLabels, Counter>,
    config: Mutex<ConfigStatus>,
    origin: Origin,
}

impl Protected {
    pub fn new(source: SettingsSource, registry: &mut Registry) -> Self {
        let clock = Arc::new(MonotonicClock::new());
        let journal = Arc::new(Journal {
            wall_origin: Utc::now() - chrono::Duration::from_std(clock.now()).unwrap_or_default(),
            records: Mutex::new(VecDeque::new()),
            state: Family::default(),
            transitions: Family::default(),
        });
        journal.show_state(State::Closed);
        let calls = Family::<OutcomeLabels, Counter>::default();
        let fallbacks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "breaker_state",
            "1 for the circuit's current state",
            journal.state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Circuit state changes",
            journal.transitions.clone(),
        );
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
            source.initial.clone(),
            clock,
            Some(journal.clone() as Arc<dyn BreakerObserver>),
        );
        let config = ConfigStatus {
            source: source.describe(),
            version: source.version.clone(),
            error: None,
            watch_error: None,
            last_seen: source.version.clone(),
        };
        Self {
            breaker,
            journal,
            calls,
            fallbacks,
            config: Mutex::new(config),
            origin: source.origin,
        }
    }

    pub fn call_timeout(&self) -> Duration {
        self.breaker.call_timeout()
    }

    /// Ticks the breaker and watches the settings file; call once inside the runtime.
    pub fn start_background_tasks(self: &Arc<Self>) {
        let this = self.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                this.breaker.state();
            }
        });
        match self.origin.clone() {
            Origin::File(path) => reload::spawn_watch(path, self.clone()),
            Origin::ConfigMap { namespace, name } => {
                configmap::spawn_watch(namespace, name, self.clone());
            }
            Origin::Defaults => {}
        }
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

    /// Applies the settings file if its content changed; bad content keeps the settings in force.
    pub fn reload_file(&self, path: &Path) {
        let read = reload::read(path);
        let seen = match &read {
            Ok(text) => reload::version_of(text),
            Err(_) => "unreadable".to_string(),
        };
        let parsed = read.and_then(|text| reload::parse(path, &text));
        self.apply(
            seen,
            parsed.map(|s| (s, Mode::Auto)).map_err(|e| e.to_string()),
        );
    }

    /// Applies a ConfigMap version (its resourceVersion).
    pub fn apply_configmap(
        &self,
        version: String,
        parsed: Result<(BreakerSettings, Mode), configmap::ContentError>,
    ) {
        self.apply(version, parsed.map_err(|e| e.to_string()));
    }

    /// New content from the settings source, once per version; bad content keeps the
    /// settings in force and is reported.
    fn apply(&self, version: String, parsed: Result<(BreakerSettings, Mode), String>) {
        let mut config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if config.last_seen == version {
            return;
        }
        config.last_seen = version.clone();
        match parsed {
            Ok((settings, mode)) => {
                self.breaker.update_settings(settings);
                self.breaker.set_mode(mode);
                tracing::info!(version = %version, source = %config.source, mode = mode.as_str(), "breaker settings applied");
                config.version = version;
                config.error = None;
            }
            Err(err) => {
                tracing::warn!(error = %err, version = %config.version, "settings rejected; keeping the settings in force");
                config.error = Some(err);
            }
        }
    }

    /// No BreakerPolicy writes the ConfigMap (now): an override ends, the settings stay.
    pub fn no_policy(&self) {
        self.breaker.set_mode(Mode::Auto);
        let mut config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if config.last_seen != "no-policy" {
            tracing::warn!(source = %config.source, "no BreakerPolicy settings in the ConfigMap; keeping the settings in force, mode Auto");
        }
        config.error = Some(
            "no BreakerPolicy settings in the ConfigMap: keeping the settings in force, mode Auto"
                .into(),
        );
        config.last_seen = "no-policy".into();
    }

    pub fn watch_failed(&self, error: String) {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watch_error = Some(error);
    }

    pub fn watch_resumed(&self) {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watch_error = None;
    }
}

#[derive(Serialize)]
struct CircuitStatus {
    state: State,
    mode: Mode,
    settings: breaker::BreakerSettings,
    config_version: String,
    config_source: String,
    config_error: Option<String>,
    config_watch_error: Option<String>,
    counts: Counts,
    last_transition: Option<TransitionRecord>,
    opened_until: Option<String>,
    failed_probes: u32,
    transitions: Vec<TransitionRecord>,
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `GET /circuit-status`
pub async fn circuit_status(protected: web::Data<Protected>) -> HttpResponse {
    let snapshot = protected.breaker.snapshot();
    let config = protected
        .config
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let transitions: Vec<TransitionRecord> = protected
        .journal
        .records
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    HttpResponse::Ok().json(CircuitStatus {
        state: snapshot.state,
        mode: snapshot.mode,
        settings: snapshot.settings,
        config_version: config.version,
        config_source: config.source,
        config_error: config.error,
        config_watch_error: config.watch_error,
        counts: snapshot.counts,
        last_transition: transitions.last().cloned(),
        opened_until: snapshot
            .opened_until
            .map(|at| rfc3339(protected.journal.wall(at))),
        failed_probes: snapshot.failed_probes,
        transitions,
    })
}
