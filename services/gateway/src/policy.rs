use std::sync::Arc;
use std::time::Duration;

use catalog::Product;

use crate::metrics::UpstreamMetrics;
use crate::protected::Protected;
use crate::upstream::{UpstreamError, Upstreams};

/// The one thing the gateways differ in: how they call recommendations-service.
pub enum Policy {
    /// v1: wait up to `timeout`; a failure fails the whole page.
    AllOrNothing { timeout: Duration },
    /// v2: circuit breaker, bulkhead and call timeout; a failure serves the fallback.
    Protected(Arc<Protected>),
}

pub struct Recommendations {
    pub products: Vec<Product>,
    pub degraded: bool,
}

impl Policy {
    /// Deadline for the product call: v2 fails fast there too.
    pub fn product_timeout(&self) -> Duration {
        match self {
            Policy::AllOrNothing { timeout } => *timeout,
            Policy::Protected(protected) => protected.call_timeout(),
        }
    }

    pub async fn recommendations(
        &self,
        upstreams: &Upstreams,
        client: &awc::Client,
        metrics: &UpstreamMetrics,
        id: u32,
    ) -> Result<Recommendations, UpstreamError> {
        match self {
            Policy::AllOrNothing { timeout } => {
                let products = upstreams
                    .recommendations(client, metrics, id, *timeout)
                    .await?;
                Ok(Recommendations {
                    products,
                    degraded: false,
                })
            }
            Policy::Protected(protected) => Ok(protected
                .call(|timeout| upstreams.recommendations(client, metrics, id, timeout))
                .await),
        }
    }
}
