//! What v2's breaker has done: logs, state and transition metrics, and the recent transitions
//! `/circuit-status` lists.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use breaker::{BreakerObserver, State, Transition};
use breaker_api::circuit_status::TransitionRecord;
use chrono::{DateTime, SecondsFormat, Utc};
use outlier::EndpointObserver;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::revision::Revision;

/// Transitions kept for `/circuit-status`.
const JOURNAL_LEN: usize = 50;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    from: &'static str,
    to: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointTransitionLabels {
    endpoint: String,
    to: &'static str,
}

pub struct Journal {
    /// Wall time at the breaker clock's zero.
    wall_origin: DateTime<Utc>,
    records: Mutex<VecDeque<TransitionRecord>>,
    /// Bumped on each transition.
    revision: Arc<Revision>,
    state: Family<StateLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    endpoint_transitions: Family<EndpointTransitionLabels, Counter>,
}

impl Journal {
    /// `clock_now` is the breaker clock's reading now, to map its times to wall times.
    pub fn register(registry: &mut Registry, clock_now: Duration, revision: Arc<Revision>) -> Self {
        let journal = Self {
            wall_origin: Utc::now() - chrono::Duration::from_std(clock_now).unwrap_or_default(),
            records: Mutex::new(VecDeque::new()),
            revision,
            state: Family::default(),
            transitions: Family::default(),
            endpoint_transitions: Family::default(),
        };
        registry.register(
            "breaker_state",
            "1 for the circuit's current state",
            journal.state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Circuit state changes",
            journal.transitions.clone(),
        );
        registry.register(
            "breaker_endpoint_transitions",
            "State changes of the per-endpoint breakers (scope Endpoint): to open is an ejection",
            journal.endpoint_transitions.clone(),
        );
        journal.show_state(State::Closed);
        journal
    }

    /// Wall time of a breaker clock time, RFC 3339.
    pub fn wall(&self, at: Duration) -> String {
        let wall = self.wall_origin + chrono::Duration::from_std(at).unwrap_or_default();
        wall.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub fn records(&self) -> Vec<TransitionRecord> {
        self.records.lock().iter().cloned().collect()
    }

    fn show_state(&self, current: State) {
        for state in State::ALL {
            self.state
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(i64::from(state == current));
        }
    }
}

impl BreakerObserver for Journal {
    fn on_transition(&self, t: &Transition) {
        tracing::warn!(from = t.from.as_str(), to = t.to.as_str(), reason = ?t.reason, "circuit breaker transition");
        self.show_state(t.to);
        self.transitions
            .get_or_create(&TransitionLabels {
                from: t.from.as_str(),
                to: t.to.as_str(),
            })
            .inc();
        let mut records = self.records.lock();
        let record = TransitionRecord {
            seq: records.back().map_or(1, |last| last.seq + 1),
            from: t.from,
            to: t.to,
            reason: t.reason,
            mode: t.mode,
            at: self.wall(t.at),
        };
        if records.len() == JOURNAL_LEN {
            records.pop_front();
        }
        records.push_back(record);
        self.revision.bump();
    }
}

impl EndpointObserver for Journal {
    fn on_transition(&self, endpoint: &str, t: &Transition) {
        tracing::warn!(endpoint, from = t.from.as_str(), to = t.to.as_str(), reason = ?t.reason, "endpoint breaker transition");
        self.endpoint_transitions
            .get_or_create(&EndpointTransitionLabels {
                endpoint: endpoint.to_string(),
                to: t.to.as_str(),
            })
            .inc();
        self.revision.bump();
    }
}
