//! What v2's breaker has done: logs, state and transition metrics, and the recent transitions
//! `/circuit-status` lists.

use std::collections::{HashSet, VecDeque};
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
const JOURNAL_LEN: usize = breaker_api::circuit_status::bounds::TRANSITIONS;

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
    /// The endpoints with `breaker_endpoint_transitions` series: a pod's series go with it, so
    /// rollouts do not add series for ever.
    endpoint_series: Mutex<HashSet<String>>,
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
            endpoint_series: Mutex::new(HashSet::new()),
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

    /// Drops the endpoint series of every endpoint not in `followed`.
    pub fn keep_endpoint_series(&self, followed: &[&str]) {
        self.endpoint_series.lock().retain(|endpoint| {
            let keep = followed.contains(&endpoint.as_str());
            if !keep {
                for to in State::ALL {
                    self.endpoint_transitions.remove(&EndpointTransitionLabels {
                        endpoint: endpoint.clone(),
                        to: to.as_str(),
                    });
                }
            }
            keep
        });
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
        // Under the set's lock, so a concurrent keep_endpoint_series cannot drop the name
        // between the two and leave a series it no longer knows of.
        let mut series = self.endpoint_series.lock();
        series.insert(endpoint.to_string());
        self.endpoint_transitions
            .get_or_create(&EndpointTransitionLabels {
                endpoint: endpoint.to_string(),
                to: t.to.as_str(),
            })
            .inc();
        drop(series);
        self.revision.bump();
    }
}

#[cfg(test)]
mod tests {
    use breaker::{Mode, TransitionReason};
    use prometheus_client::encoding::text::encode;

    use super::*;

    fn ejected(journal: &Journal, endpoint: &str) {
        let t = Transition {
            from: State::Closed,
            to: State::Open,
            reason: TransitionReason::ConsecutiveFailures,
            mode: Mode::Auto,
            at: Duration::ZERO,
        };
        EndpointObserver::on_transition(journal, endpoint, &t);
    }

    #[test]
    fn an_endpoint_no_longer_followed_takes_its_series_with_it() {
        let mut registry = Registry::default();
        let journal = Journal::register(&mut registry, Duration::ZERO, Arc::default());
        let series = |registry: &Registry, endpoint: &str| {
            let mut text = String::new();
            encode(&mut text, registry).unwrap();
            text.lines()
                .filter(|l| l.contains(&format!("endpoint=\"{endpoint}\"")))
                .count()
        };
        ejected(&journal, "rec-old");
        ejected(&journal, "rec-kept");
        assert_eq!(series(&registry, "rec-old"), 1);
        journal.keep_endpoint_series(&["rec-kept", "rec-new"]);
        assert_eq!(series(&registry, "rec-old"), 0, "a gone pod's series stays");
        assert_eq!(series(&registry, "rec-kept"), 1);
        // back again, it counts afresh
        ejected(&journal, "rec-old");
        assert_eq!(series(&registry, "rec-old"), 1);
    }
}
