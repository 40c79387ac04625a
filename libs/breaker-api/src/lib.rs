//! The breaker's API, as the project's users and Kubernetes see it: the wire
//! [`BreakerSettings`] (YAML/JSON, schema, CEL), the [`BreakerPolicy`] custom resource, and the
//! two contracts between api-gateway-v2 and breaker-controller: the settings [`configmap`]
//! the controller writes and the gateway reads, and the gateway's [`circuit_status`] answer
//! the controller reads.
//!
//! Wire types are turned into the engine's validated [`breaker::Settings`] here, at the edge;
//! the engine never sees raw config. Its vocabulary (state, mode, scope, reasons) is the
//! engine's own, re-exported; its ranges ([`breaker::limits`]) and the rules between keys
//! ([`breaker::ORDER_RULES`]) are written there once, and the schema and the CEL rules are
//! derived from them (`tests/rules.rs` checks the result).

pub mod circuit_status;
pub mod configmap;
pub mod policy;
mod rewatch;
mod settings;

pub use breaker::{State, TransitionReason};
pub use policy::{
    BreakerPolicy, BreakerPolicySpec, BreakerPolicyStatus, EjectedEndpoint, ReplicaStatus, Target,
};
pub use rewatch::RewatchBackoff;
pub use settings::{BreakerSettings, Mode, Scope, DURATION_PATTERN};
