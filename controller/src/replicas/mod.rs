//! The live breaker of every v2 replica, in its BreakerPolicy: `status.replicas` with the
//! `OPEN`, `APPLIED` and `EJECTED` summaries, and an Event for each transition.
//!
//! Replicas report nothing themselves, so they keep no write rights on the API: the controller
//! finds them by their pods ([`discovery`]: label [`CONFIGMAP_LABEL`] names the ConfigMap each
//! one watches; `list`/`watch` on pods is all it adds), and keeps one long poll open on each
//! ready pod's `/circuit-status` ([`poll`]), which answers at once on a transition or a
//! settings change. Each answer updates its group's [`summary`], which the group's
//! [`writer`] writes at most every [`WRITE_EVERY`] (the first change at once); its fresh
//! transitions become Events through the [`events`] throttle.

mod discovery;
mod events;
mod poll;
mod summary;
mod writer;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::rt::task::JoinHandle;
use breaker_api::circuit_status::BreakerReport;
use breaker_api::BreakerPolicy;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use parking_lot::Mutex;

pub use discovery::CONFIGMAP_LABEL;
use discovery::{PodKey, ReplicaGroup, ReplicaPod};
pub use events::EVENT_EVERY;
use events::{EventThrottle, TransitionEvent, FLUSH_EVERY};
use poll::Asker;
use summary::ReplicaSet;
use writer::{StatusWriter, RECHECK};
pub use writer::{REPLICAS_MANAGER, WRITE_EVERY};

use crate::reconcile::Context;

/// A group with replicas to report, and its writer; gone (writer and all) once the group's
/// last replica is gone and that was written, so label values that come and go (a renamed
/// ConfigMap, a namespace deleted) leave nothing behind.
struct GroupState {
    replicas: ReplicaSet,
    /// Wakes the group's writer.
    changed: Arc<tokio::sync::Notify>,
    writer: JoinHandle<()>,
}

pub struct Replicas {
    ctx: Arc<Context>,
    policies: Store<BreakerPolicy>,
    asker: Asker,
    groups: Mutex<HashMap<ReplicaGroup, GroupState>>,
    /// Polling tasks by pod.
    polls: Mutex<HashMap<PodKey, JoinHandle<()>>>,
    /// The Event flusher.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    events: Mutex<EventThrottle>,
}

/// Aborts every task [`Replicas::run`] started when it ends or is dropped (leading ended): a
/// replica that stands by polls and writes nothing, and leads afresh with a new [`Replicas`].
struct StopTasks(Rc<Replicas>);

impl Drop for StopTasks {
    fn drop(&mut self) {
        for (_, task) in self.0.polls.lock().drain() {
            task.abort();
        }
        for task in self.0.tasks.lock().drain(..) {
            task.abort();
        }
        for (_, group) in self.0.groups.lock().drain() {
            group.writer.abort();
        }
        self.0.ctx.metrics.set_replica_groups(0);
    }
}

impl Replicas {
    pub fn new(ctx: Arc<Context>, policies: Store<BreakerPolicy>) -> Rc<Self> {
        // Rc: it lives on the controller's one-threaded runtime, as its HTTP client does.
        Rc::new(Self {
            ctx,
            policies,
            asker: Asker::new(),
            groups: Mutex::new(HashMap::new()),
            polls: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            events: Mutex::new(EventThrottle::default()),
        })
    }

    /// Follows the v2 pods until the watch ends.
    pub async fn run(self: Rc<Self>, pods: Api<Pod>) {
        let _stop = StopTasks(self.clone());
        let flusher = actix_web::rt::spawn(self.clone().flush_events());
        self.tasks.lock().push(flusher);
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
        let Some(replica) = ReplicaPod::of(pod) else {
            return;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            return self.pod_gone(pod);
        }
        let Some(address) = replica.address else {
            return;
        };
        let mut polls = self.polls.lock();
        if !polls.contains_key(&replica.key) {
            let this = self.clone();
            tracing::info!(pod = %replica.key, %address, "following a v2 replica's breaker");
            let (group, name) = (replica.group, replica.key.name.clone());
            polls.insert(
                replica.key,
                actix_web::rt::spawn(async move { this.follow(group, name, address).await }),
            );
        }
    }

    fn pod_gone(&self, pod: &Pod) {
        let Some(replica) = ReplicaPod::of(pod) else {
            return;
        };
        if let Some(task) = self.polls.lock().remove(&replica.key) {
            task.abort();
            tracing::info!(pod = %replica.key, "v2 replica gone");
        }
        let mut groups = self.groups.lock();
        if let Some(state) = groups.get_mut(&replica.group) {
            if state.replicas.remove(&replica.key.name) {
                state.changed.notify_one();
            }
        }
    }

    /// Asks one replica again and again, each ask waiting for its next change.
    async fn follow(self: Rc<Self>, group: ReplicaGroup, pod: String, address: String) {
        let mut revision: Option<u64> = None;
        loop {
            match self.asker.ask(&address, revision).await {
                Ok(report) => {
                    let unchanged = revision == Some(report.revision);
                    revision = Some(report.revision);
                    self.reported(&group, &pod, &report).await;
                    if unchanged {
                        // The wait ended, or the replica answered at once because it holds as
                        // many waits as it may: asked again a second later (nothing is missed,
                        // the next ask names this revision).
                        tokio::time::sleep(poll::RETRY).await;
                    }
                }
                Err(error) => {
                    tracing::debug!(%pod, %error, "cannot ask a v2 replica; retrying");
                    revision = None;
                    self.update(&group, |replicas| (replicas.unreachable(&pod), ()));
                    tokio::time::sleep(poll::RETRY).await;
                }
            }
        }
    }

    /// Changes a group's replicas (a group seen for the first time, or again after it was
    /// retired, gets its writer), waking its writer if `change` says something changed.
    fn update<T>(
        self: &Rc<Self>,
        group: &ReplicaGroup,
        change: impl FnOnce(&mut ReplicaSet) -> (bool, T),
    ) -> T {
        let mut groups = self.groups.lock();
        let groups_before = groups.len();
        let state = groups
            .entry(group.clone())
            .or_insert_with(|| self.new_group(group));
        let (changed, out) = change(&mut state.replicas);
        if changed {
            state.changed.notify_one();
        }
        if groups.len() != groups_before {
            self.ctx.metrics.set_replica_groups(groups.len());
        }
        out
    }

    async fn reported(self: &Rc<Self>, group: &ReplicaGroup, pod: &str, report: &BreakerReport) {
        let fresh = self.update(group, |replicas| replicas.reported(pod, report));
        for transition in &fresh {
            let event = TransitionEvent::new(group, pod, transition);
            self.ctx.metrics.transition_seen(event.kind.reason());
            let now = self.events.lock().offer(event, Instant::now());
            if let Some(event) = now {
                self.write_event(&event).await;
            }
        }
    }

    /// Writes the Events held back whose window has passed; every few seconds, for as long
    /// as the controller runs.
    async fn flush_events(self: Rc<Self>) {
        loop {
            tokio::time::sleep(FLUSH_EVERY).await;
            let due = self.events.lock().due(Instant::now());
            for event in &due {
                self.write_event(event).await;
            }
        }
    }

    async fn write_event(&self, event: &TransitionEvent) {
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
                    event.kind.reason(),
                    "Transition",
                    event.note.clone(),
                    Some(pod.clone()),
                )
                .await;
        }
    }

    fn policies_of(&self, group: &ReplicaGroup) -> Vec<Arc<BreakerPolicy>> {
        self.policies
            .state()
            .into_iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(group.namespace.as_str())
                    && p.spec.target.config_map == group.config_map
            })
            .collect()
    }

    /// A group's state and its one writer: a change is written at once, later ones at most
    /// every [`WRITE_EVERY`]. Once a write leaves the group without replicas, the group is
    /// removed and its writer ends (all under the groups' lock, so a replica reported meanwhile
    /// finds either the group or none, and then makes a new one).
    fn new_group(self: &Rc<Self>, group: &ReplicaGroup) -> GroupState {
        let changed = Arc::new(tokio::sync::Notify::new());
        let (this, group, wake) = (self.clone(), group.clone(), changed.clone());
        let writer = actix_web::rt::spawn(async move {
            let mut writer = StatusWriter::default();
            loop {
                let _ = tokio::time::timeout(RECHECK, wake.notified()).await;
                let Some(replicas) = this
                    .groups
                    .lock()
                    .get(&group)
                    .map(|g| g.replicas.statuses())
                else {
                    return;
                };
                let policies = this.policies_of(&group);
                let written = writer
                    .write(&this.ctx, &group.namespace, policies, &replicas)
                    .await;
                // Retired only once the empty status is written: else gone pods would stay
                // listed with no writer left to take them out.
                if written && replicas.is_empty() && this.retire_if_empty(&group) {
                    tracing::debug!(namespace = %group.namespace, config_map = %group.config_map, "no v2 replicas left in the group");
                    return;
                }
                tokio::time::sleep(WRITE_EVERY).await;
            }
        });
        GroupState {
            replicas: ReplicaSet::default(),
            changed,
            writer,
        }
    }

    /// Removes the group if it still has no replicas: whether it did.
    fn retire_if_empty(&self, group: &ReplicaGroup) -> bool {
        let mut groups = self.groups.lock();
        match groups.get(group) {
            Some(state) if state.replicas.is_empty() => {
                // Its writer is the caller, ending: dropping the handle leaves it to end.
                groups.remove(group);
                self.ctx.metrics.set_replica_groups(groups.len());
                true
            }
            _ => false,
        }
    }
}
