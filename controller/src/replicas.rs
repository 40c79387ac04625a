//! The live breaker of every v2 replica, in its BreakerPolicy: `status.replicas` with the
//! `OPEN` and `APPLIED` summaries, and an Event for each transition.
//!
//! Replicas report nothing themselves, so they keep no write rights on the API: the controller
//! finds them by their pods (label [`CONFIGMAP_LABEL`] names the ConfigMap each one watches;
//! `list`/`watch` on pods is all it adds), and keeps one long poll open on each ready pod's
//! `/circuit-status?after=<revision>&wait=30s`, which answers at once on a transition or a
//! settings change. What changed is written as one server-side apply of the status per
//! policy, at most every [`WRITE_EVERY`] (the first change at once), under a field manager of
//! its own beside the reconciler's. A replica's Event of one kind is written at most every
//! [`EVENT_EVERY`] (repeats become a series; one held back is written when its window ends),
//! so a flapping breaker cannot flood the API.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use breaker_api::policy::MAX_EJECTED_NAMED;
use breaker_api::{BreakerPolicy, EjectedEndpoint, Mode, ReplicaStatus};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;

use crate::reconcile::Context;

/// On a v2 pod: the name of the ConfigMap it watches (BREAKER_CONFIGMAP's name).
pub const CONFIGMAP_LABEL: &str = "resilience.demo.dev/breaker-configmap";
/// The field manager of `status.replicas`, `status.open` and `status.applied`.
pub const REPLICAS_MANAGER: &str = "breaker-controller.replicas";
/// How long one ask may wait for a change before it is asked again.
const LONG_POLL: &str = "30s";
const ASK_TIMEOUT: Duration = Duration::from_secs(40);
/// After a failed ask.
const RETRY: Duration = Duration::from_secs(1);
/// At most one status write per policy this often.
pub const WRITE_EVERY: Duration = Duration::from_millis(500);
/// The status is recomputed this often without a change (written only if it differs).
const RECHECK: Duration = Duration::from_secs(2);
/// At most one Event per replica and kind (opened, half-opened, closed) this often; one held
/// back is written when the window ends, so the latest always shows.
pub const EVENT_EVERY: Duration = Duration::from_secs(30);
const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// A replica's answer is read up to this size: pods are not trusted (any pod with the label
/// is asked), so what one says is bounded before it is parsed and checked after
/// ([`Report::checked`]) before any of it reaches the API.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// At most this many ejected endpoints of one replica reach the status (the CRD says so too).
pub const MAX_EJECTED: usize = breaker_api::policy::MAX_EJECTED;
/// At most this many replicas of one policy are listed in the status (all are counted).
pub const MAX_REPLICAS: usize = breaker_api::policy::MAX_REPLICAS;

/// The part of a replica's `/circuit-status` read here.
#[derive(Debug, Clone, Deserialize)]
struct Report {
    revision: u64,
    state: String,
    /// A mode outside the known set fails the parse: Event keys come from a fixed set.
    mode: Mode,
    config_version: String,
    last_transition: Option<TransitionReport>,
    #[serde(default)]
    transitions: Vec<TransitionReport>,
    /// Names of the endpoints out of rotation; `endpoints` says since when and why.
    #[serde(default)]
    ejected: Vec<String>,
    #[serde(default)]
    endpoints: Vec<EndpointReport>,
}

#[derive(Debug, Clone, Deserialize)]
struct EndpointReport {
    name: String,
    state: String,
    ejected_since: Option<String>,
    ejected_reason: Option<String>,
}

impl Report {
    /// The ejected endpoints: since when and why each is out.
    fn ejected(&self) -> Vec<EjectedEndpoint> {
        self.ejected
            .iter()
            .map(|name| {
                let endpoint = self.endpoints.iter().find(|e| e.name == *name);
                EjectedEndpoint {
                    name: name.clone(),
                    state: endpoint.map_or_else(|| "open".into(), |e| e.state.clone()),
                    since: endpoint.and_then(|e| e.ejected_since.clone()),
                    reason: endpoint.and_then(|e| e.ejected_reason.clone()),
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
struct TransitionReport {
    seq: u64,
    from: String,
    to: String,
    reason: String,
    mode: Mode,
    at: String,
}

/// A form a field of a replica's answer must have: 1 to `max` bytes, each `allowed`.
struct Form {
    what: &'static str,
    max: usize,
    allowed: fn(u8) -> bool,
}

impl Form {
    /// The first of `values` not of this form, as an error naming what it should have been.
    fn check<'a>(&self, values: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
        match values
            .into_iter()
            .find(|v| !(1..=self.max).contains(&v.len()) || !v.bytes().all(self.allowed))
        {
            Some(bad) => Err(format!("not {}: {:.40?}", self.what, bad)),
            None => Ok(()),
        }
    }
}

/// A state or reason as the breaker spells it: a short snake_case word.
const WORD: Form = Form {
    what: "a state or reason",
    max: 32,
    allowed: |b| b.is_ascii_lowercase() || b == b'_',
};
/// An RFC 3339 time as the gateway writes it.
const TIME: Form = Form {
    what: "a time",
    max: 40,
    allowed: |b| b.is_ascii_digit() || b"TZ:.+-".contains(&b),
};
/// A pod's name (DNS subdomain) or a resourceVersion.
const NAME: Form = Form {
    what: "a name",
    max: 253,
    allowed: |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.',
};

/// Transitions read from one answer, the newest last.
const MAX_TRANSITIONS: usize = 64;

impl Report {
    /// The report, if every field that reaches the status or an Event has the form the gateway
    /// gives it; lists cut to their bounds.
    fn checked(mut self) -> Result<Self, String> {
        let words = [&self.state]
            .into_iter()
            .chain(
                self.last_transition
                    .iter()
                    .chain(&self.transitions)
                    .flat_map(|t| [&t.from, &t.to, &t.reason]),
            )
            .chain(self.endpoints.iter().map(|e| &e.state))
            .chain(
                self.endpoints
                    .iter()
                    .filter_map(|e| e.ejected_reason.as_ref()),
            );
        WORD.check(words)?;
        let times = self
            .last_transition
            .iter()
            .chain(&self.transitions)
            .map(|t| &t.at)
            .chain(
                self.endpoints
                    .iter()
                    .filter_map(|e| e.ejected_since.as_ref()),
            );
        TIME.check(times)?;
        // (no version yet is an empty one)
        let names = std::iter::once(&self.config_version)
            .filter(|v| !v.is_empty())
            .chain(&self.ejected)
            .chain(self.endpoints.iter().map(|e| &e.name));
        NAME.check(names)?;
        self.ejected.truncate(MAX_EJECTED);
        // Only the newest transitions are Events; older ones were seen on an earlier ask.
        let keep_from = self.transitions.len().saturating_sub(MAX_TRANSITIONS);
        self.transitions.drain(..keep_from);
        Ok(self)
    }
}

/// A group of replicas: those in one namespace watching one ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Group {
    namespace: String,
    config_map: String,
}

#[derive(Default)]
struct Known {
    status: ReplicaStatus,
    /// The newest transition seen; `None` until the first answer (history is not replayed).
    last_seq: Option<u64>,
}

struct EventGate {
    written: Instant,
    pending: Option<PendingEvent>,
}

struct PendingEvent {
    group: Group,
    /// The replica's pod: each pod's Events of a kind are a series of their own.
    pod: String,
    reason: &'static str,
    note: String,
}

#[derive(Default)]
struct GroupState {
    replicas: BTreeMap<String, Known>,
    /// Wakes the group's writer.
    changed: Arc<tokio::sync::Notify>,
}

pub struct Replicas {
    ctx: Arc<Context>,
    policies: Store<BreakerPolicy>,
    http: awc::Client,
    groups: Mutex<HashMap<Group, GroupState>>,
    /// Polling tasks by pod (`namespace/name`).
    polls: Mutex<HashMap<String, actix_web::rt::task::JoinHandle<()>>>,
    /// Per replica, mode and kind of Event: when one was last written, and the latest held
    /// back since.
    events: Mutex<HashMap<(String, Mode, &'static str), EventGate>>,
}

impl Replicas {
    pub fn new(ctx: Arc<Context>, policies: Store<BreakerPolicy>) -> Rc<Self> {
        // Rc: it lives on the controller's one-threaded runtime, as its HTTP client does.
        Rc::new(Self {
            ctx,
            policies,
            // A pod's redirect would send the controller's asks wherever the pod likes.
            http: awc::Client::builder()
                .timeout(ASK_TIMEOUT)
                .disable_redirects()
                .finish(),
            groups: Mutex::new(HashMap::new()),
            polls: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
        })
    }

    /// Follows the v2 pods until the watch ends.
    pub async fn run(self: Rc<Self>, pods: Api<Pod>) {
        actix_web::rt::spawn(self.clone().flush_events());
        let config = watcher::Config::default().labels(CONFIGMAP_LABEL);
        let mut events = watcher(pods, config).default_backoff().boxed_local();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    self.pod_seen(&pod)
                }
                Ok(watcher::Event::Delete(pod)) => self.pod_gone(&pod),
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                Err(err) => tracing::warn!(error = %err, "v2 pod watch failed; retrying"),
            }
        }
    }

    fn pod_seen(self: &Rc<Self>, pod: &Pod) {
        let Some((key, group, address)) = target(pod) else {
            return;
        };
        let gone = pod.metadata.deletion_timestamp.is_some();
        let mut polls = self.polls.lock();
        match (address, gone) {
            (Some(address), false) if !polls.contains_key(&key) => {
                let this = self.clone();
                let name = pod.name_any();
                tracing::info!(pod = %key, %address, "following a v2 replica's breaker");
                polls.insert(
                    key,
                    actix_web::rt::spawn(async move { this.follow(group, name, address).await }),
                );
            }
            (_, true) => {
                drop(polls);
                self.pod_gone(pod);
            }
            _ => {}
        }
    }

    fn pod_gone(&self, pod: &Pod) {
        let Some((key, group, _)) = target(pod) else {
            return;
        };
        if let Some(task) = self.polls.lock().remove(&key) {
            task.abort();
            tracing::info!(pod = %key, "v2 replica gone");
        }
        let mut groups = self.groups.lock();
        if let Some(state) = groups.get_mut(&group) {
            if state.replicas.remove(&pod.name_any()).is_some() {
                state.changed.notify_one();
            }
        }
    }

    /// Asks one replica again and again, each ask waiting for its next change.
    async fn follow(self: Rc<Self>, group: Group, pod: String, address: String) {
        self.ensure_writer(&group);
        let mut revision: Option<u64> = None;
        loop {
            let url = match revision {
                Some(r) => format!("http://{address}/circuit-status?after={r}&wait={LONG_POLL}"),
                None => format!("http://{address}/circuit-status"),
            };
            let answer = match self.http.get(&url).send().await {
                Ok(mut response) if response.status().is_success() => response
                    .json::<Report>()
                    .limit(MAX_ANSWER_BYTES)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(Report::checked),
                Ok(response) => Err(format!("HTTP {}", response.status())),
                Err(err) => Err(err.to_string()),
            };
            match answer {
                Ok(report) => {
                    revision = Some(report.revision);
                    self.reported(&group, &pod, report).await;
                }
                Err(error) => {
                    tracing::debug!(%pod, %error, "cannot ask a v2 replica; retrying");
                    revision = None;
                    self.unreachable(&group, &pod);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    fn unreachable(&self, group: &Group, pod: &str) {
        let mut groups = self.groups.lock();
        let state = groups.entry(group.clone()).or_default();
        let known = state.replicas.entry(pod.to_string()).or_default();
        if known.status.state != "unreachable" {
            known.status = ReplicaStatus {
                pod: pod.to_string(),
                state: "unreachable".into(),
                ..known.status.clone()
            };
            state.changed.notify_one();
        }
    }

    async fn reported(&self, group: &Group, pod: &str, report: Report) {
        let fresh: Vec<TransitionReport> = {
            let mut groups = self.groups.lock();
            let state = groups.entry(group.clone()).or_default();
            let known = state.replicas.entry(pod.to_string()).or_default();
            let newest = report.transitions.last().map_or(0, |t| t.seq);
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
            known.last_seq = Some(newest);
            let status = ReplicaStatus {
                pod: pod.to_string(),
                state: report.state.clone(),
                mode: Some(report.mode.as_str().into()),
                since: report.last_transition.as_ref().map(|t| t.at.clone()),
                reason: report.last_transition.as_ref().map(|t| t.reason.clone()),
                config_version: Some(report.config_version.clone()),
                ejected: report.ejected(),
            };
            if known.status != status {
                known.status = status;
                state.changed.notify_one();
            }
            fresh
        };
        for transition in fresh {
            self.transition_event(group, pod, &transition).await;
        }
    }

    async fn transition_event(&self, group: &Group, pod: &str, t: &TransitionReport) {
        let (reason, verb) = match t.to.as_str() {
            "open" => ("CircuitOpened", "opened"),
            "half_open" => ("CircuitHalfOpened", "half-opened"),
            _ => ("CircuitClosed", "closed"),
        };
        self.ctx.metrics.transition_seen(reason);
        let would = if t.mode == Mode::Observe {
            "would have "
        } else {
            ""
        };
        let event = PendingEvent {
            group: group.clone(),
            pod: pod.to_string(),
            reason,
            note: format!(
                "pod {pod}: the circuit {would}{verb} ({} → {}, {})",
                t.from, t.to, t.reason
            ),
        };
        let key = (format!("{}/{pod}", group.namespace), t.mode, reason);
        {
            let mut gates = self.events.lock();
            if gates.len() >= 4096 {
                gates.retain(|_, g| g.pending.is_some() || g.written.elapsed() < EVENT_EVERY);
            }
            if let Some(gate) = gates.get_mut(&key) {
                if gate.written.elapsed() < EVENT_EVERY {
                    // Written at the end of the window by `flush_events`: the latest stays.
                    gate.pending = Some(event);
                    return;
                }
            }
            gates.insert(
                key,
                EventGate {
                    written: Instant::now(),
                    pending: None,
                },
            );
        }
        self.write_event(&event).await;
    }

    /// Writes the events held back whose window has passed; every few seconds, for as long
    /// as the controller runs.
    async fn flush_events(self: Rc<Self>) {
        loop {
            tokio::time::sleep(FLUSH_EVERY).await;
            let due: Vec<PendingEvent> = {
                let mut gates = self.events.lock();
                gates
                    .values_mut()
                    .filter(|g| g.pending.is_some() && g.written.elapsed() >= EVENT_EVERY)
                    .filter_map(|g| {
                        g.written = Instant::now();
                        g.pending.take()
                    })
                    .collect()
            };
            for event in &due {
                self.write_event(event).await;
            }
        }
    }

    async fn write_event(&self, event: &PendingEvent) {
        let pod = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(event.group.namespace.clone()),
            name: Some(event.pod.clone()),
            ..ObjectReference::default()
        };
        for policy in self.policies_of(&event.group) {
            self.ctx
                .publish(
                    &policy,
                    EventType::Normal,
                    event.reason,
                    "Transition",
                    event.note.clone(),
                    Some(pod.clone()),
                )
                .await;
        }
    }

    fn policies_of(&self, group: &Group) -> Vec<Arc<BreakerPolicy>> {
        self.policies
            .state()
            .into_iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(group.namespace.as_str())
                    && p.spec.target.config_map == group.config_map
            })
            .collect()
    }

    /// One writer per group: a change is written at once, later ones at most every
    /// [`WRITE_EVERY`].
    fn ensure_writer(self: &Rc<Self>, group: &Group) {
        let mut groups = self.groups.lock();
        if groups.contains_key(group) {
            return;
        }
        let state = groups.entry(group.clone()).or_default();
        let changed = state.changed.clone();
        let this = self.clone();
        let group = group.clone();
        actix_web::rt::spawn(async move {
            let mut written: HashMap<String, serde_json::Value> = HashMap::new();
            loop {
                // Also looked at now and then: APPLIED moves when the policy's
                // configMapVersion does, which no replica announces.
                let _ = tokio::time::timeout(RECHECK, changed.notified()).await;
                this.write(&group, &mut written).await;
                tokio::time::sleep(WRITE_EVERY).await;
            }
        });
    }

    async fn write(&self, group: &Group, written: &mut HashMap<String, serde_json::Value>) {
        let replicas: Vec<ReplicaStatus> = {
            let groups = self.groups.lock();
            groups
                .get(group)
                .map(|s| s.replicas.values().map(|k| k.status.clone()).collect())
                .unwrap_or_default()
        };
        for policy in self.policies_of(group) {
            let current = policy
                .status
                .as_ref()
                .and_then(|s| s.config_map_version.clone());
            let status = summary(&replicas, current.as_deref());
            let name = policy.name_any();
            if written.get(&name) == Some(&status) {
                continue;
            }
            let patch = json!({
                "apiVersion": BreakerPolicy::api_version(&()),
                "kind": BreakerPolicy::kind(&()),
                "status": status,
            });
            let api: Api<BreakerPolicy> =
                Api::namespaced(self.ctx.client.clone(), &group.namespace);
            match api
                .patch_status(
                    &name,
                    &PatchParams::apply(REPLICAS_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => {
                    self.ctx.metrics.status_written();
                    written.insert(name, status);
                }
                Err(err) => {
                    tracing::warn!(policy = %name, error = %err, "cannot write the replicas' status")
                }
            }
        }
    }
}

/// `status.replicas`, `open` and `applied` for these replicas; `applied` counts those running
/// `current` (the ConfigMap's resourceVersion as last written).
fn summary(replicas: &[ReplicaStatus], current: Option<&str>) -> serde_json::Value {
    if replicas.is_empty() {
        // Leaving the fields out removes them: this manager owns them.
        return json!({});
    }
    // What users meet: forced open counts, an open state pinned closed does not; in Observe
    // the open state is what Auto would do.
    let open = replicas
        .iter()
        .filter(|r| match r.mode.as_deref() {
            Some("ForceOpen") => true,
            Some("ForceClosed") => false,
            _ => r.state == "open",
        })
        .count();
    let applied = replicas
        .iter()
        .filter(|r| current.is_some() && r.config_version.as_deref() == current)
        .count();
    let total = replicas.len();
    let mut ejected: BTreeMap<&str, usize> = BTreeMap::new();
    for endpoint in replicas.iter().flat_map(|r| &r.ejected) {
        *ejected.entry(&endpoint.name).or_default() += 1;
    }
    let mut status = json!({
        "replicas": &replicas[..total.min(MAX_REPLICAS)],
        "open": format!("{open}/{total}"),
        "applied": format!("{applied}/{total}"),
    });
    if !ejected.is_empty() {
        let mut named: Vec<String> = ejected
            .iter()
            .take(MAX_EJECTED_NAMED)
            .map(|(name, n)| format!("{name} ({n}/{total})"))
            .collect();
        if ejected.len() > MAX_EJECTED_NAMED {
            named.push(format!("{} more", ejected.len() - MAX_EJECTED_NAMED));
        }
        status["ejected"] = named.join(", ").into();
    }
    status
}

/// A v2 pod's key (`namespace/name`), group, and `ip:port` once it has an address.
fn target(pod: &Pod) -> Option<(String, Group, Option<String>)> {
    let namespace = pod.namespace()?;
    let config_map = pod.labels().get(CONFIGMAP_LABEL)?.clone();
    let key = format!("{namespace}/{}", pod.name_any());
    let spec = pod.spec.as_ref()?;
    let port = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("http"))
        .map(|p| p.container_port)?;
    let address = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .filter(|_| is_running(pod))
        .map(|ip| {
            if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            }
        });
    Some((
        key,
        Group {
            namespace,
            config_map,
        },
        address,
    ))
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(pod: &str, state: &str, version: &str) -> ReplicaStatus {
        ReplicaStatus {
            pod: pod.into(),
            state: state.into(),
            config_version: Some(version.into()),
            ..ReplicaStatus::default()
        }
    }

    #[test]
    fn the_summary_counts_open_and_applied_replicas() {
        let replicas = [replica("a", "open", "7"), replica("b", "closed", "6")];
        let s = summary(&replicas, Some("7"));
        assert_eq!(s["open"], "1/2");
        assert_eq!(s["applied"], "1/2");
        assert_eq!(s["replicas"][0]["pod"], "a");
        assert_eq!(summary(&replicas, None)["applied"], "0/2");
        let forced = |mode: &str, state: &str| ReplicaStatus {
            mode: Some(mode.into()),
            ..replica("c", state, "7")
        };
        assert_eq!(
            summary(&[forced("ForceOpen", "closed")], None)["open"],
            "1/1"
        );
        assert_eq!(
            summary(&[forced("ForceClosed", "open")], None)["open"],
            "0/1"
        );
        assert_eq!(summary(&[forced("Observe", "open")], None)["open"], "1/1");
        assert_eq!(summary(&[], Some("7")), json!({}));
    }

    #[test]
    fn the_summary_names_each_ejected_endpoint_with_the_replicas_that_have_it_out() {
        let out = |name: &str| EjectedEndpoint {
            name: name.into(),
            state: "open".into(),
            ..EjectedEndpoint::default()
        };
        let a = ReplicaStatus {
            ejected: vec![out("rec-2"), out("rec-1")],
            ..replica("a", "closed", "7")
        };
        let b = ReplicaStatus {
            ejected: vec![out("rec-2")],
            ..replica("b", "closed", "7")
        };
        let c = replica("c", "closed", "7");
        assert_eq!(
            summary(&[a, b, c.clone()], None)["ejected"],
            "rec-1 (1/3), rec-2 (2/3)"
        );
        assert!(summary(&[c], None).get("ejected").is_none());
    }

    fn answer() -> serde_json::Value {
        json!({
            "revision": 9, "state": "open", "mode": "Auto", "config_version": "3",
            "last_transition": {"seq": 1, "from": "closed", "to": "open", "reason": "consecutive_failures",
                                "mode": "Auto", "at": "2026-11-28T14:00:00.000Z"},
            "transitions": [],
            "ejected": ["rec-2"],
            "endpoints": [{"name": "rec-2", "state": "open", "ejected_since": "2026-11-28T14:00:00.000Z",
                           "ejected_reason": "consecutive_failures"}]
        })
    }

    fn checked(answer: serde_json::Value) -> Result<Report, String> {
        serde_json::from_value::<Report>(answer)
            .map_err(|e| e.to_string())
            .and_then(Report::checked)
    }

    #[test]
    fn a_replicas_answer_is_untrusted_input_checked_field_by_field_and_cut_to_its_bounds() {
        assert!(checked(answer()).is_ok());
        let hostile: [(&str, serde_json::Value); 8] = [
            ("/state", json!("open\nInjected: yes")),
            ("/state", json!("x".repeat(33))),
            ("/mode", json!("Sometimes")),
            ("/last_transition/reason", json!("a <b>reason</b>")),
            ("/last_transition/at", json!("yesterday at noon")),
            ("/config_version", json!("x".repeat(254))),
            ("/ejected/0", json!("Rec 2")),
            ("/endpoints/0/ejected_since", json!("9".repeat(41))),
        ];
        for (path, value) in hostile {
            let mut bad = answer();
            *bad.pointer_mut(path).unwrap() = value.clone();
            assert!(checked(bad).is_err(), "{path} = {value} was taken");
        }
        let mut many = answer();
        many["ejected"] = (0..500).map(|i| json!(format!("rec-{i}"))).collect();
        many["transitions"] = (1..=1000)
            .map(|seq| json!({"seq": seq, "from": "open", "to": "half_open", "reason": "open_duration_elapsed",
                              "mode": "Auto", "at": "2026-11-28T14:00:00.000Z"}))
            .collect();
        let report = checked(many).unwrap();
        assert_eq!(report.ejected.len(), MAX_EJECTED);
        assert_eq!(report.transitions.len(), MAX_TRANSITIONS);
        assert_eq!(
            report.transitions.last().unwrap().seq,
            1000,
            "the newest are kept"
        );
    }

    #[test]
    fn the_summary_lists_at_most_its_bound_of_replicas_and_counts_them_all() {
        let replicas: Vec<ReplicaStatus> = (0..MAX_REPLICAS + 20)
            .map(|i| ReplicaStatus {
                ejected: (0..3)
                    .map(|e| EjectedEndpoint {
                        name: format!("rec-{i}-{e}"),
                        state: "open".into(),
                        ..EjectedEndpoint::default()
                    })
                    .collect(),
                ..replica(&format!("v2-{i:03}"), "open", "7")
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

    #[test]
    fn a_report_says_since_when_and_why_each_ejected_endpoint_is_out() {
        let report: Report = serde_json::from_value(json!({
            "revision": 9, "state": "closed", "mode": "Auto", "config_version": "3",
            "ejected": ["rec-2"],
            "endpoints": [
                {"name": "rec-1", "state": "closed", "ejected_since": null, "ejected_reason": null},
                {"name": "rec-2", "state": "open", "since": "2026-11-28T14:00:09.000Z",
                 "reason": "probe_failed", "ejected_since": "2026-11-28T14:00:00.000Z",
                 "ejected_reason": "consecutive_failures"}
            ]
        }))
        .unwrap();
        assert_eq!(
            report.ejected(),
            [EjectedEndpoint {
                name: "rec-2".into(),
                state: "open".into(),
                since: Some("2026-11-28T14:00:00.000Z".into()),
                reason: Some("consecutive_failures".into()),
            }]
        );
    }
}
