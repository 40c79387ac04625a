//! What a group's replicas add up to in a BreakerPolicy's status: each replica's breaker as
//! last heard, and the `OPEN`, `APPLIED` and `EJECTED` summaries. Computing only; the writer
//! writes it.

use std::collections::BTreeMap;

use breaker_api::circuit_status::{BreakerReport, ReplicaState, TransitionRecord};
use breaker_api::policy::{MAX_EJECTED_NAMED, MAX_REPLICAS};
use breaker_api::State;
use breaker_api::{EjectedEndpoint, Mode, ReplicaStatus};
use serde::Serialize;

struct Known {
    status: ReplicaStatus,
    /// The newest transition seen; `None` until the first answer (history is not replayed).
    last_seq: Option<u64>,
}

/// The replicas of one group, by pod name.
#[derive(Default)]
pub struct ReplicaSet {
    replicas: BTreeMap<String, Known>,
}

impl ReplicaSet {
    /// Takes a replica's answer: whether its status changed, and the transitions not seen
    /// before (none on the first answer, nor from a replica that restarted).
    pub fn reported(&mut self, pod: &str, report: &BreakerReport) -> (bool, Vec<TransitionRecord>) {
        let status = replica_status(pod, report);
        let newest = report.transitions.last().map_or(0, |t| t.seq);
        let known = self.replicas.entry(pod.to_string()).or_insert(Known {
            status: status.clone(),
            last_seq: None,
        });
        let fresh = match known.last_seq {
            // A restarted replica counts from 1 again: nothing to replay.
            Some(seen) if newest >= seen => report
                .transitions
                .iter()
                .filter(|t| t.seq > seen)
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        let changed = known.last_seq.is_none() || known.status != status;
        known.last_seq = Some(newest);
        known.status = status;
        (changed, fresh)
    }

    /// The replica could not be asked: whether that changes its status.
    pub fn unreachable(&mut self, pod: &str) -> bool {
        let unreachable = ReplicaState::Unreachable;
        match self.replicas.get_mut(pod) {
            Some(known) if known.status.state == unreachable => false,
            Some(known) => {
                known.status.state = unreachable;
                true
            }
            None => {
                let status = ReplicaStatus {
                    pod: pod.to_string(),
                    state: unreachable,
                    mode: None,
                    since: None,
                    reason: None,
                    config_version: None,
                    adaptive_limit: None,
                    ejected: Vec::new(),
                };
                let known = Known {
                    status,
                    last_seq: None,
                };
                self.replicas.insert(pod.to_string(), known);
                true
            }
        }
    }

    /// The replica is gone: whether it was listed.
    pub fn remove(&mut self, pod: &str) -> bool {
        self.replicas.remove(pod).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        self.replicas.values().map(|k| k.status.clone()).collect()
    }
}

/// A replica's line in the status, from its answer.
fn replica_status(pod: &str, report: &BreakerReport) -> ReplicaStatus {
    ReplicaStatus {
        pod: pod.to_string(),
        state: report.state.into(),
        mode: Some(report.mode),
        since: report.last_transition.as_ref().map(|t| t.at.clone()),
        reason: report.last_transition.as_ref().map(|t| t.reason),
        config_version: Some(report.config_version.clone()),
        adaptive_limit: report.load.adaptive_limit,
        ejected: ejected(report),
    }
}

/// The ejected endpoints: since when and why each is out.
fn ejected(report: &BreakerReport) -> Vec<EjectedEndpoint> {
    report
        .ejected
        .iter()
        .map(|name| {
            let endpoint = report.endpoints.iter().find(|e| e.name == *name);
            EjectedEndpoint {
                name: name.clone(),
                state: endpoint.map_or(State::Open, |e| e.state),
                since: endpoint.and_then(|e| e.ejected_since.clone()),
                reason: endpoint.and_then(|e| e.ejected_reason),
            }
        })
        .collect()
}

/// The fields of a policy's status this controller's replica watcher owns; absent ones are
/// removed (the writer's field manager owns them).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplicasSummary {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    replicas: Vec<ReplicaStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    open: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ejected: Option<String>,
}

/// Whether users meet this replica's breaker as open: forced open counts, an open state pinned
/// closed does not; in Observe the open state is what Auto would do.
fn rejects_as_open(replica: &ReplicaStatus) -> bool {
    match replica.mode {
        Some(Mode::ForceOpen) => true,
        Some(Mode::ForceClosed) => false,
        Some(Mode::Auto | Mode::Observe) | None => replica.state == ReplicaState::Open,
    }
}

/// `status.replicas`, `open`, `applied` and `ejected` for these replicas; `applied` counts
/// those running `current` (the ConfigMap's resourceVersion as last written).
pub fn summary(replicas: &[ReplicaStatus], current: Option<&str>) -> ReplicasSummary {
    if replicas.is_empty() {
        return ReplicasSummary::default();
    }
    let open = replicas.iter().filter(|r| rejects_as_open(r)).count();
    let applied = replicas
        .iter()
        .filter(|r| current.is_some() && r.config_version.as_deref() == current)
        .count();
    let total = replicas.len();
    let mut ejected: BTreeMap<&str, usize> = BTreeMap::new();
    for endpoint in replicas.iter().flat_map(|r| &r.ejected) {
        *ejected.entry(&endpoint.name).or_default() += 1;
    }
    let ejected = (!ejected.is_empty()).then(|| {
        let mut named: Vec<String> = ejected
            .iter()
            .take(MAX_EJECTED_NAMED)
            .map(|(name, n)| format!("{name} ({n}/{total})"))
            .collect();
        if ejected.len() > MAX_EJECTED_NAMED {
            named.push(format!("{} more", ejected.len() - MAX_EJECTED_NAMED));
        }
        named.join(", ")
    });
    ReplicasSummary {
        replicas: replicas[..total.min(MAX_REPLICAS)].to_vec(),
        open: Some(format!("{open}/{total}")),
        applied: Some(format!("{applied}/{total}")),
        ejected,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn replica(pod: &str, state: ReplicaState, version: &str) -> ReplicaStatus {
        ReplicaStatus {
            pod: pod.into(),
            state,
            mode: None,
            since: None,
            reason: None,
            config_version: Some(version.into()),
            adaptive_limit: None,
            ejected: Vec::new(),
        }
    }

    /// The summary as the status patch carries it.
    fn summary(replicas: &[ReplicaStatus], current: Option<&str>) -> serde_json::Value {
        serde_json::to_value(super::summary(replicas, current)).unwrap()
    }

    fn out(name: &str) -> EjectedEndpoint {
        EjectedEndpoint {
            name: name.into(),
            state: State::Open,
            since: None,
            reason: None,
        }
    }

    use ReplicaState::{Closed, Open};

    #[test]
    fn the_summary_counts_open_and_applied_replicas() {
        let replicas = [replica("a", Open, "7"), replica("b", Closed, "6")];
        let s = summary(&replicas, Some("7"));
        assert_eq!(s["open"], "1/2");
        assert_eq!(s["applied"], "1/2");
        assert_eq!(s["replicas"][0]["pod"], "a");
        assert_eq!(summary(&replicas, None)["applied"], "0/2");
        let forced = |mode: Mode, state: ReplicaState| ReplicaStatus {
            mode: Some(mode),
            ..replica("c", state, "7")
        };
        assert_eq!(
            summary(&[forced(Mode::ForceOpen, Closed)], None)["open"],
            "1/1"
        );
        assert_eq!(
            summary(&[forced(Mode::ForceClosed, Open)], None)["open"],
            "0/1"
        );
        assert_eq!(summary(&[forced(Mode::Observe, Open)], None)["open"], "1/1");
        assert_eq!(summary(&[], Some("7")), json!({}));
    }

    #[test]
    fn the_summary_names_each_ejected_endpoint_with_the_replicas_that_have_it_out() {
        let a = ReplicaStatus {
            ejected: vec![out("rec-2"), out("rec-1")],
            ..replica("a", Closed, "7")
        };
        let b = ReplicaStatus {
            ejected: vec![out("rec-2")],
            ..replica("b", Closed, "7")
        };
        let c = replica("c", Closed, "7");
        assert_eq!(
            summary(&[a, b, c.clone()], None)["ejected"],
            "rec-1 (1/3), rec-2 (2/3)"
        );
        assert!(summary(&[c], None).get("ejected").is_none());
    }

    #[test]
    fn the_summary_lists_at_most_its_bound_of_replicas_and_counts_them_all() {
        let replicas: Vec<ReplicaStatus> = (0..MAX_REPLICAS + 20)
            .map(|i| ReplicaStatus {
                ejected: (0..3).map(|e| out(&format!("rec-{i}-{e}"))).collect(),
                ..replica(&format!("v2-{i:03}"), Open, "7")
            })
            .collect();
        let s = summary(&replicas, Some("7"));
        assert_eq!(s["replicas"].as_array().unwrap().len(), MAX_REPLICAS);
        assert_eq!(s["open"], format!("{0}/{0}", MAX_REPLICAS + 20));
        let ejected = s["ejected"].as_str().unwrap();
        assert!(
            ejected.ends_with(&format!(
                "{} more",
                3 * (MAX_REPLICAS + 20) - MAX_EJECTED_NAMED
            )),
            "{ejected}"
        );
        assert!(ejected.len() <= 4096);
    }

    fn report(answer: serde_json::Value) -> BreakerReport {
        serde_json::from_value(answer).unwrap()
    }

    #[test]
    fn a_report_says_since_when_and_why_each_ejected_endpoint_is_out() {
        let report = report(json!({
            "revision": 9, "state": "closed", "mode": "Auto", "config_version": "3",
            "ejected": ["rec-2"],
            "endpoints": [
                {"name": "rec-1", "state": "closed", "ejected_since": null, "ejected_reason": null},
                {"name": "rec-2", "state": "open", "since": "2026-11-28T14:00:09.000Z",
                 "reason": "probe_failed", "ejected_since": "2026-11-28T14:00:00.000Z",
                 "ejected_reason": "consecutive_failures"}
            ]
        }));
        assert_eq!(
            ejected(&report),
            [EjectedEndpoint {
                name: "rec-2".into(),
                state: State::Open,
                since: Some("2026-11-28T14:00:00.000Z".into()),
                reason: Some(breaker_api::TransitionReason::ConsecutiveFailures),
            }]
        );
    }

    fn answer_with_transitions(seqs: std::ops::RangeInclusive<u64>) -> BreakerReport {
        report(json!({
            "revision": 1, "state": "open", "mode": "Auto", "config_version": "3",
            "transitions": seqs.map(|seq| json!({"seq": seq, "from": "closed", "to": "open",
                "reason": "consecutive_failures", "mode": "Auto", "at": "2026-11-28T14:00:00.000Z"}))
                .collect::<Vec<_>>()
        }))
    }

    #[test]
    fn transitions_are_fresh_once_and_never_replayed_from_history_or_a_restart() {
        let mut set = ReplicaSet::default();
        let (changed, fresh) = set.reported("a", &answer_with_transitions(1..=3));
        assert!(changed, "a first answer is news");
        assert!(fresh.is_empty(), "history is not replayed");
        let (changed, fresh) = set.reported("a", &answer_with_transitions(1..=5));
        assert!(!changed, "same state, mode and version");
        assert_eq!(fresh.iter().map(|t| t.seq).collect::<Vec<_>>(), [4, 5]);
        let (_, fresh) = set.reported("a", &answer_with_transitions(1..=2));
        assert!(fresh.is_empty(), "a restarted replica counts from 1 again");
        let (_, fresh) = set.reported("a", &answer_with_transitions(1..=3));
        assert_eq!(fresh.iter().map(|t| t.seq).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn an_unreachable_replica_keeps_its_last_line_with_the_state_unreachable() {
        let mut set = ReplicaSet::default();
        assert!(set.unreachable("new"), "listed at once");
        set.reported("a", &answer_with_transitions(1..=1));
        assert!(set.unreachable("a"));
        assert!(!set.unreachable("a"), "no change the second time");
        let a = set.statuses().into_iter().find(|s| s.pod == "a").unwrap();
        assert_eq!(a.state, ReplicaState::Unreachable);
        assert_eq!(a.config_version.as_deref(), Some("3"), "the rest is kept");
        assert!(set.remove("a") && !set.remove("a"));
    }
}
