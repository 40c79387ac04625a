//! breaker-controller: watches BreakerPolicy objects and writes the v2 gateway's breaker
//! ConfigMap, which the gateway hot-reloads. The Kubernetes glue lives here; the breaker's
//! logic and its settings type stay in the `breaker` crate.

pub mod crd;
mod metrics;
pub mod reconcile;

pub use crd::{BreakerPolicy, BreakerPolicySpec, BreakerPolicyStatus, Condition, Target};
pub use metrics::Metrics;
