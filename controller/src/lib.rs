//! breaker-controller: watches BreakerPolicy objects and writes the v2 gateway's breaker
//! ConfigMap, which the gateway hot-reloads. The Kubernetes glue lives here; the resource's
//! types and the ConfigMap's format are in `breaker-api`, the breaker itself in `breaker`.

mod context;
pub mod leader;
mod metrics;
pub mod probe;
pub mod reconcile;
pub mod release;
pub mod replicas;
pub mod startup;

pub use metrics::Metrics;
