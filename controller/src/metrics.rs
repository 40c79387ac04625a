//! Reconcile metrics: counts by result, errors by variant, and the duration of every run,
//! failed ones included; and what the replica watcher wrote: Events by reason, status writes,
//! and the transitions it saw; and whether this replica leads.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<ResultLabels, Histogram>,
    event_writes: Family<ReasonLabels, Counter>,
    transitions: Family<ReasonLabels, Counter>,
    status_writes: Counter,
    replica_groups: Gauge,
    leading: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(service_runtime::latency_buckets())
            }),
            event_writes: Family::default(),
            transitions: Family::default(),
            status_writes: Counter::default(),
            replica_groups: Gauge::default(),
            leading: Gauge::default(),
        };
        registry.register(
            "controller_leading",
            "1 while this replica holds the Lease and writes, 0 while it stands by",
            metrics.leading.clone(),
        );
        registry.register(
            "controller_event_writes",
            "Events written to the API (created, or a series bumped), by reason",
            metrics.event_writes.clone(),
        );
        registry.register(
            "controller_replica_transitions",
            "Breaker transitions seen on v2 replicas, by Event reason (written or folded)",
            metrics.transitions.clone(),
        );
        registry.register(
            "controller_replica_status_writes",
            "Writes of BreakerPolicy status.replicas",
            metrics.status_writes.clone(),
        );
        registry.register(
            "controller_replica_groups",
            "Groups of v2 replicas (a namespace and the ConfigMap they watch) followed now, each with its status writer",
            metrics.replica_groups.clone(),
        );
        registry.register(
            "controller_reconciles",
            "Reconciles by result: done (the policy is Ready or says why not) or error (retried)",
            metrics.reconciles.clone(),
        );
        registry.register(
            "controller_reconcile_errors",
            "Failed reconciles by error kind",
            metrics.errors.clone(),
        );
        registry.register(
            "controller_reconcile_duration_seconds",
            "Time one reconcile took, by result",
            metrics.duration.clone(),
        );
        metrics
    }

    pub fn event_written(&self, reason: &str) {
        count(&self.event_writes, reason);
    }

    pub fn transition_seen(&self, reason: &str) {
        count(&self.transitions, reason);
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.set(i64::from(leading));
    }

    /// What `/leader` says: the gauge is the one record of it.
    pub fn is_leading(&self) -> bool {
        self.leading.get() == 1
    }

    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    pub fn set_replica_groups(&self, groups: usize) {
        self.replica_groups
            .set(i64::try_from(groups).unwrap_or(i64::MAX));
    }

    /// One run: done, or failed with the error's label.
    pub fn reconciled(&self, error: Option<String>, took: Duration) {
        let labels = ResultLabels {
            result: if error.is_none() { "done" } else { "error" },
        };
        if let Some(error) = error {
            self.errors.get_or_create(&ErrorLabels { error }).inc();
        }
        self.reconciles.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}

fn count(family: &Family<ReasonLabels, Counter>, reason: &str) {
    family
        .get_or_create(&ReasonLabels {
            reason: reason.into(),
        })
        .inc();
}
