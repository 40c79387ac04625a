//! Calls to the product and recommendations services, with one deadline per call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use catalog::Product;
use serde::de::DeserializeOwned;

use crate::metrics::{UpstreamMetrics, UpstreamName};

/// Largest upstream body we read; a catalogue answer is a few KiB.
const BODY_LIMIT: usize = 256 * 1024;

/// Recommendations for a page, and whether they are the fallback.
pub struct Recommendations {
    pub products: Vec<Product>,
    pub degraded: bool,
}

/// Base URLs; cheap to clone (a probe's call owns a copy).
#[derive(Debug, Clone)]
pub struct Upstreams {
    product: Arc<str>,
    recommendations: Arc<str>,
    /// When set, a call not aimed at one endpoint goes to one of these at random, call by
    /// call, as a mesh spreads calls over a Service's pods (the demo's second chapter runs
    /// three recommendations processes without a cluster).
    spread: Arc<[Arc<str>]>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0} timed out after {1:?}")]
    Timeout(UpstreamName, Duration),
    #[error("{0} unreachable: {1}")]
    Connect(UpstreamName, String),
    #[error("{0} answered {1}")]
    Status(UpstreamName, StatusCode),
    #[error("{0} sent an unusable body: {1}")]
    Body(UpstreamName, String),
}

impl UpstreamError {
    /// Whether this says the dependency is unhealthy (as opposed to it refusing one request).
    pub fn is_dependency_failure(&self) -> bool {
        match self {
            UpstreamError::Status(_, status) => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => true,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Timeout(..) => "timeout",
            UpstreamError::Connect(..) => "connect",
            UpstreamError::Status(_, s) if s.is_server_error() => "status_5xx",
            UpstreamError::Status(..) => "status_4xx",
            UpstreamError::Body(..) => "body",
        }
    }
}

impl Upstreams {
    /// Resolves once product-service accepts a TCP connection, trying every 200 ms. A gateway
    /// is ready only after that: a new pod that a NetworkPolicy has not admitted yet has its
    /// connections refused, and would otherwise take pages it cannot serve. Only once, at
    /// start: readiness that followed the dependency would take every gateway out of the
    /// Service in an outage, and their fast 503s would become connection errors.
    pub async fn product_reachable(&self) {
        let uri: actix_web::http::Uri = self.product.parse().expect("validated at start");
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(80);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let attempt = tokio::net::TcpStream::connect((host.as_str(), port));
            match tokio::time::timeout(Duration::from_secs(1), attempt).await {
                Ok(Ok(_)) => {
                    tracing::info!(upstream = %self.product, attempts, "product-service reachable; ready");
                    return;
                }
                Ok(Err(err)) if attempts == 1 => {
                    tracing::info!(upstream = %self.product, error = %err, "product-service not reachable yet; not ready")
                }
                Err(_) if attempts == 1 => {
                    tracing::info!(upstream = %self.product, "product-service not reachable yet (connect timed out); not ready")
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One HTTP client per worker: pooled keep-alive connections, no pool cap (a bulkhead is an
/// explicit policy of v2, not an accident of the pool), deadlines set per call. A redirect
/// from an upstream is its answer (a 502 here), never a reason to call somewhere else.
pub fn client() -> awc::Client {
    awc::Client::builder()
        .disable_timeout()
        .disable_redirects()
        .connector(
            awc::Connector::new()
                .limit(0)
                .timeout(Duration::from_secs(5)),
        )
        .finish()
}

impl Upstreams {
    pub fn new(product: String, recommendations: String, spread: Vec<String>) -> Self {
        Self {
            product: product.into(),
            recommendations: recommendations.into(),
            spread: spread.into_iter().map(Arc::from).collect(),
        }
    }

    /// The service's address, or one of `spread` drawn at random.
    fn recommendations_base(&self) -> &str {
        if self.spread.is_empty() {
            return &self.recommendations;
        }
        &self.spread[fastrand::usize(..self.spread.len())]
    }

    pub async fn product(
        &self,
        client: &awc::Client,
        metrics: &UpstreamMetrics,
        id: u32,
        timeout: Duration,
    ) -> Result<Product, UpstreamError> {
        let url = format!("{}/products/{id}", self.product);
        get_json(client, metrics, UpstreamName::Product, &url, timeout).await
    }

    /// From the service's address, or from one of its endpoints (`at`, a base URL).
    pub async fn recommendations(
        &self,
        client: &awc::Client,
        metrics: &UpstreamMetrics,
        id: u32,
        timeout: Duration,
        at: Option<&str>,
    ) -> Result<Vec<Product>, UpstreamError> {
        let base = at.unwrap_or_else(|| self.recommendations_base());
        let url = format!("{base}/recommendations/{id}");
        get_json(
            client,
            metrics,
            UpstreamName::Recommendations,
            &url,
            timeout,
        )
        .await
    }
}

async fn get_json<T: DeserializeOwned>(
    client: &awc::Client,
    metrics: &UpstreamMetrics,
    name: UpstreamName,
    url: &str,
    timeout: Duration,
) -> Result<T, UpstreamError> {
    let started = Instant::now();
    let call = async {
        // Unconstrained: awc checks each pooled connection before reuse, and once tokio's
        // task budget runs out (busy pools hold more than 128) every check answers "alive", so
        // a connection the upstream closed while idle would carry the request and fail it.
        let mut response = tokio::task::unconstrained(client.get(url).send())
            .await
            .map_err(|err| UpstreamError::Connect(name, err.to_string()))?;
        if !response.status().is_success() {
            return Err(UpstreamError::Status(name, response.status()));
        }
        let body = response
            .body()
            .limit(BODY_LIMIT)
            .await
            .map_err(|err| UpstreamError::Body(name, err.to_string()))?;
        serde_json::from_slice(&body).map_err(|err| UpstreamError::Body(name, err.to_string()))
    };
    let result = match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::Timeout(name, timeout)),
    };
    metrics.observe(
        name,
        result.as_ref().err().map_or("ok", UpstreamError::kind),
        started.elapsed(),
    );
    result
}
