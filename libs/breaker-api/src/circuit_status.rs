//! `GET /circuit-status` on api-gateway-v2, both ends of it: the gateway writes
//! [`CircuitStatus`]; breaker-controller reads its [`BreakerReport`] part and shows it in the
//! policy's status as a [`ReplicaState`]. One module, so the writer and the reader cannot
//! drift apart.

use breaker::{Counts, Mode, Scope, State, TransitionReason};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::BreakerSettings;

/// The whole answer: what the controller reads, and what people and the dashboard read too.
#[derive(Debug, Clone, Serialize)]
pub struct CircuitStatus {
    /// This replica's name (its pod's, in Kubernetes).
    pub replica: Option<String>,
    #[serde(flatten)]
    pub report: BreakerReport,
    pub settings: BreakerSettings,
    pub config_source: String,
    pub config_error: Option<String>,
    pub config_watch_error: Option<String>,
    pub counts: Counts,
    /// Service, or Endpoint: then `endpoints` is what calls go through.
    pub scope: Scope,
    pub opened_until: Option<String>,
    pub failed_probes: u32,
}

/// What the adaptive limit and the retry budget are doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadStatus {
    /// The adaptive concurrency limit now; `None` when it is off.
    pub adaptive_limit: Option<u32>,
    /// Calls in flight under it.
    pub in_flight: u32,
    /// Calls it refused (in Observe: would have) since the start.
    pub shed: u64,
    /// Retries made, and refused by the budget (in Observe: would have been) since the start.
    pub retries: u64,
    pub retries_refused: u64,
}

/// The part of the answer breaker-controller reads: a replica's breaker as its policy's status
/// shows it. Keys the reader does not know are ignored, so either end may be newer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerReport {
    /// Moves on each transition and each settings change (`?after=` waits for it to move).
    pub revision: u64,
    pub state: State,
    pub mode: Mode,
    /// The settings' version in force (the ConfigMap's resourceVersion); empty before any.
    pub config_version: String,
    pub last_transition: Option<TransitionRecord>,
    /// The most recent transitions, the newest last.
    #[serde(default)]
    pub transitions: Vec<TransitionRecord>,
    /// Endpoints out of rotation (open or half-open), by name; `endpoints` says since when
    /// and why.
    #[serde(default)]
    pub ejected: Vec<String>,
    #[serde(default)]
    pub endpoints: Vec<EndpointStatus>,
    /// The load defences beside the breaker.
    #[serde(default)]
    pub load: LoadStatus,
}

/// One transition of a replica's breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// 1 for this replica's first transition, then one more each: a reader that saw `seq`
    /// knows what it missed.
    pub seq: u64,
    pub from: State,
    pub to: State,
    pub reason: TransitionReason,
    /// In Observe the transition is what Auto would have done.
    pub mode: Mode,
    /// RFC 3339.
    pub at: String,
}

/// One endpoint's breaker (scope Endpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub name: String,
    #[serde(default)]
    pub address: String,
    pub state: State,
    #[serde(default)]
    pub in_flight: u32,
    /// Transitions of its breaker so far.
    #[serde(default)]
    pub transitions: u64,
    /// Its last transition: when, and why.
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub reason: Option<TransitionReason>,
    /// While out of rotation: since when, and why it went out (its opening from closed; a
    /// failed probe since then does not move it).
    #[serde(default)]
    pub ejected_since: Option<String>,
    #[serde(default)]
    pub ejected_reason: Option<TransitionReason>,
}

/// A replica's breaker as a BreakerPolicy's status lists it: its state, or `unreachable` when
/// the controller's last ask failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    Closed,
    Open,
    HalfOpen,
    Unreachable,
}

impl From<State> for ReplicaState {
    fn from(state: State) -> Self {
        match state {
            State::Closed => ReplicaState::Closed,
            State::Open => ReplicaState::Open,
            State::HalfOpen => ReplicaState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_reads_what_the_gateway_writes() {
        let transition = TransitionRecord {
            seq: 1,
            from: State::Closed,
            to: State::Open,
            reason: TransitionReason::ConsecutiveFailures,
            mode: Mode::Observe,
            at: "2026-11-28T14:00:00.000Z".into(),
        };
        let report = BreakerReport {
            revision: 9,
            state: State::HalfOpen,
            mode: Mode::Observe,
            config_version: "3".into(),
            last_transition: Some(transition.clone()),
            transitions: vec![transition],
            ejected: vec!["rec-2".into()],
            endpoints: vec![EndpointStatus {
                name: "rec-2".into(),
                address: "127.0.0.1:9".into(),
                state: State::Open,
                in_flight: 0,
                transitions: 1,
                since: Some("2026-11-28T14:00:00.000Z".into()),
                reason: Some(TransitionReason::ProbeFailed),
                ejected_since: Some("2026-11-28T14:00:00.000Z".into()),
                ejected_reason: Some(TransitionReason::ConsecutiveFailures),
            }],
            load: LoadStatus {
                adaptive_limit: Some(7),
                ..LoadStatus::default()
            },
        };
        let written = CircuitStatus {
            replica: Some("v2-0".into()),
            report: report.clone(),
            settings: BreakerSettings::default(),
            config_source: "configmap".into(),
            config_error: None,
            config_watch_error: None,
            counts: Counts::default(),
            scope: Scope::Endpoint,
            opened_until: None,
            failed_probes: 0,
        };
        let json = serde_json::to_value(&written).unwrap();
        assert_eq!(json["state"], "half_open", "{json}");
        assert_eq!(json["mode"], "Observe");
        assert_eq!(json["scope"], "Endpoint");
        assert_eq!(json["transitions"][0]["reason"], "consecutive_failures");
        assert_eq!(
            serde_json::from_value::<BreakerReport>(json).unwrap(),
            report
        );
    }

    #[test]
    fn a_replica_state_is_spelled_as_the_breakers_and_unreachable_besides() {
        for state in [State::Closed, State::Open, State::HalfOpen] {
            assert_eq!(
                serde_json::to_value(ReplicaState::from(state)).unwrap(),
                serde_json::to_value(state).unwrap()
            );
        }
        assert_eq!(
            serde_json::to_value(ReplicaState::Unreachable).unwrap(),
            "unreachable"
        );
    }
}
