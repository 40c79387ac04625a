//! What every demo service shares: the serving loop with graceful shutdown, `/healthz`,
//! `/readyz` and `/metrics`, HTTP metrics, JSON errors and logging set up from the environment.

mod error;
mod http_metrics;
mod serve;
mod telemetry;

pub use error::ApiError;
pub use http_metrics::latency_buckets;
pub use serve::{
    parse_duration, resource, ReadinessGate, ServeArgs, Service, SideListener, MAX_JSON_BODY,
};
pub use telemetry::{init_logging, LogFormat};
