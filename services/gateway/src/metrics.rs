use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use service_runtime::latency_buckets;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamName {
    Product,
    Recommendations,
}

impl UpstreamName {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamName::Product => "product",
            UpstreamName::Recommendations => "recommendations",
        }
    }
}

impl std::fmt::Display for UpstreamName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamName::Product => "product-service",
            UpstreamName::Recommendations => "recommendations-service",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: &'static str,
    result: &'static str,
}

/// Latency of every upstream call, by upstream and result.
#[derive(Clone)]
pub struct UpstreamMetrics {
    duration: Family<UpstreamLabels, Histogram>,
}

impl UpstreamMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let duration = Family::<UpstreamLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "upstream_request_duration_seconds",
            "Time spent on calls to product-service and recommendations-service",
            duration.clone(),
        );
        Self { duration }
    }

    pub fn observe(&self, upstream: UpstreamName, result: &'static str, elapsed: Duration) {
        self.duration
            .get_or_create(&UpstreamLabels {
                upstream: upstream.as_str(),
                result,
            })
            .observe(elapsed.as_secs_f64());
    }
}
