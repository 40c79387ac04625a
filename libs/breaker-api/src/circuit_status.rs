//! `GET /circuit-status` on api-gateway-v2, both ends of it: the gateway writes
//! [`CircuitStatus`]; breaker-controller reads its [`BreakerReport`] part and shows it in the
//! policy's status as a [`ReplicaState`]. One module, so the writer and the reader cannot
//! drift apart.

use breaker::{Counts, Mode, Scope, State, TransitionReason};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::BreakerSettings;

/// What one answer holds at most: the gateway cuts its lists and texts to these, so a reader
/// can bound what it reads ([`MAX_ANSWER_BYTES`]) without cutting a true answer short.
pub mod bounds {
    /// Endpoints listed, those out of rotation first; `ejected` names as many at most.
    pub const ENDPOINTS: usize = 128;
    /// Transitions listed, the newest last.
    pub const TRANSITIONS: usize = 50;
    /// A free text (`config_source`, `config_error`, `config_watch_error`), in bytes.
    pub const TEXT_BYTES: usize = 512;
    /// A name (the replica's, an endpoint's, a resourceVersion): a DNS subdomain's bound.
    pub const NAME_BYTES: usize = 253;
    /// An endpoint's address (its base URL).
    pub const ADDRESS_BYTES: usize = 256;
}

/// A byte a name in the answer may hold: a DNS subdomain's (the controller refuses an answer
/// with any other).
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
}

/// A name the controller reads back: 1 to [`bounds::NAME_BYTES`] bytes, each [`is_name_byte`].
pub fn is_name(name: &str) -> bool {
    (1..=bounds::NAME_BYTES).contains(&name.len()) && name.bytes().all(is_name_byte)
}

/// `text` cut to [`bounds::TEXT_BYTES`] on a character boundary, `…` marking a cut.
pub fn bounded_text(mut text: String) -> String {
    const MARK: &str = "…";
    if text.len() > bounds::TEXT_BYTES {
        let mut end = bounds::TEXT_BYTES - MARK.len();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(MARK);
    }
    text
}

/// The largest answer in bytes, from [`bounds`]: what a reader of `/circuit-status` needs to
/// read at most. A free text may take six bytes per byte once JSON-escaped (`\u0001`).
pub const MAX_ANSWER_BYTES: usize = {
    use bounds::*;
    // Keys, states, modes, reasons, times and numbers; settings, counts and load.
    const FIXED: usize = 4096;
    const TRANSITION: usize = 256;
    const ENDPOINT: usize = NAME_BYTES + ADDRESS_BYTES + 512;
    FIXED
        + 2 * NAME_BYTES
        + 3 * 6 * TEXT_BYTES
        + (TRANSITIONS + 1) * TRANSITION
        + ENDPOINTS * (ENDPOINT + NAME_BYTES + 3)
};

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
    /// Where the gateway calls it: only in the status port's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
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
                address: Some("127.0.0.1:9".into()),
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

    /// Every list full, every name, address and text at its bound (the texts of characters
    /// JSON escapes the longest), every number at its largest: within the bound, and near it.
    #[test]
    fn the_largest_answer_fits_the_bound_it_is_read_with() {
        use bounds::*;
        let name = |i: usize| format!("{i:0>width$}", width = NAME_BYTES);
        let time = || "2026-11-28T14:00:00.000000000+00:00".to_string();
        let text = || bounded_text("\u{1}".repeat(2 * TEXT_BYTES));
        assert_eq!(text().len(), TEXT_BYTES - 3 + "…".len());
        let transition = |seq| TransitionRecord {
            seq,
            from: State::HalfOpen,
            to: State::HalfOpen,
            reason: TransitionReason::OpenDurationElapsed,
            mode: Mode::ForceClosed,
            at: time(),
        };
        let endpoint = |i| EndpointStatus {
            name: name(i),
            address: Some(format!("{:x<width$}", "http://", width = ADDRESS_BYTES)),
            state: State::HalfOpen,
            in_flight: u32::MAX,
            transitions: u64::MAX,
            since: Some(time()),
            reason: Some(TransitionReason::OpenDurationElapsed),
            ejected_since: Some(time()),
            ejected_reason: Some(TransitionReason::OpenDurationElapsed),
        };
        let largest = CircuitStatus {
            replica: Some(name(0)),
            report: BreakerReport {
                revision: u64::MAX,
                state: State::HalfOpen,
                mode: Mode::ForceClosed,
                config_version: name(0),
                last_transition: Some(transition(u64::MAX)),
                transitions: (0..TRANSITIONS as u64)
                    .map(|s| transition(u64::MAX - s))
                    .collect(),
                ejected: (0..ENDPOINTS).map(name).collect(),
                endpoints: (0..ENDPOINTS).map(endpoint).collect(),
                load: LoadStatus {
                    adaptive_limit: Some(u32::MAX),
                    in_flight: u32::MAX,
                    shed: u64::MAX,
                    retries: u64::MAX,
                    retries_refused: u64::MAX,
                },
            },
            settings: BreakerSettings::default(),
            config_source: text(),
            config_error: Some(text()),
            config_watch_error: Some(text()),
            counts: Counts::default(),
            scope: Scope::Endpoint,
            opened_until: Some(time()),
            failed_probes: u32::MAX,
        };
        let bytes = serde_json::to_vec(&largest).unwrap().len();
        println!("figure: the largest /circuit-status answer: {bytes} bytes, read up to {MAX_ANSWER_BYTES}");
        assert!(bytes <= MAX_ANSWER_BYTES, "{bytes} > {MAX_ANSWER_BYTES}");
        assert!(
            bytes > MAX_ANSWER_BYTES * 3 / 4,
            "{bytes}: the bound is loose"
        );
    }

    #[test]
    fn a_long_text_is_cut_on_a_character_boundary_and_marked() {
        assert_eq!(bounded_text("short".into()), "short");
        let cut = bounded_text("é".repeat(bounds::TEXT_BYTES));
        assert!(
            cut.len() <= bounds::TEXT_BYTES && cut.ends_with('…'),
            "{}",
            cut.len()
        );
        assert_eq!(
            bounded_text("x".repeat(bounds::TEXT_BYTES)).len(),
            bounds::TEXT_BYTES
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
