//! The breaker's API, as the project's users and Kubernetes see it: the wire
//! [`BreakerSettings`] (YAML/JSON, schema, CEL), the [`BreakerPolicy`] custom resource, and the
//! settings ConfigMap that breaker-controller writes and api-gateway-v2 reads.
//!
//! Wire types are turned into the engine's validated [`breaker::Settings`] here, at the edge;
//! the engine never sees raw config. Ranges come from [`breaker::limits`], so the schema, the
//! CEL rules and the validation cannot say different things (`tests/rules.rs` checks it).

pub mod configmap;
pub mod policy;
mod rewatch;
mod settings;

pub use policy::{
    BreakerPolicy, BreakerPolicySpec, BreakerPolicyStatus, EjectedEndpoint, ReplicaStatus, Target,
};
pub use rewatch::RewatchBackoff;
pub use settings::{BreakerSettings, Mode, Scope, DURATION_PATTERN};
