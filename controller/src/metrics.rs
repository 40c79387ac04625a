//! Reconcile metrics: counts by result, errors by variant, duration.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Histogram,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Histogram::new(service_runtime::latency_buckets()),
        };
        registry.register(
            "controller_reconciles",
            "Reconciles by result: done (the policy is Ready or marked Invalid) or error (retried)",
            metrics.reconciles.clone(),
        );
        registry.register(
            "controller_reconcile_errors",
            "Failed reconciles by error kind",
            metrics.errors.clone(),
        );
        registry.register(
            "controller_reconcile_duration_seconds",
            "Time one reconcile took",
            metrics.duration.clone(),
        );
        metrics
    }

    pub fn reconciled(&self, result: &'static str, took: Duration) {
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn failed(&self, error: &'static str) {
        self.reconciles
            .get_or_create(&ResultLabels { result: "error" })
            .inc();
        self.errors.get_or_create(&ErrorLabels { error }).inc();
    }
}
