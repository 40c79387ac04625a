//! What every part of the controller shares: the [`Context`] (client, metrics, the one Event
//! recorder, the leader gate every write asks, failure counts for backoff), its [`Error`], and
//! the field manager names it writes under.

use std::collections::HashMap;

use breaker_api::policy::Reason;
use breaker_api::BreakerPolicy;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Resource;
use parking_lot::Mutex;

use crate::leader::LeaderGate;
use crate::metrics::Metrics;

pub const MANAGER: &str = "breaker-controller";
/// Objects whose failures are remembered for backoff; a new one past this clears them all (a
/// policy deleted while failing never reconciles again to clear its entry). What that costs is
/// a backoff that starts over for the objects still failing, never a memory that grows.
pub(crate) const MAX_TRACKED_FAILURES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("the BreakerPolicy has no name or no namespace")]
    Unnamed,
    #[error("this replica does not lead now: it writes nothing")]
    NotLeading,
}

impl From<kube::Error> for Error {
    fn from(err: kube::Error) -> Self {
        Error::Kube(err)
    }
}

impl Error {
    /// The variant, and for API errors the reason the API server gave (a bounded set:
    /// `Conflict`, `Forbidden`, `NotFound`…), as a metric label.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(status)) if !status.reason.is_empty() => {
                format!("kube_{}", status.reason)
            }
            Error::Kube(_) => "kube".into(),
            Error::Unnamed => "unnamed".into(),
            Error::NotLeading => "not_leading".into(),
        }
    }
}

/// What every reconcile shares: the client, the metrics, the one Event recorder, the gate.
pub struct Context {
    pub client: kube::Client,
    pub metrics: Metrics,
    recorder: Recorder,
    leader: LeaderGate,
    failures: Mutex<HashMap<String, u32>>,
    /// The one ConfigMap name the controller's Role lets it write, when it was told.
    allowed_target: Option<String>,
}

impl Context {
    pub fn new(client: kube::Client, metrics: Metrics, leader: LeaderGate) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            leader,
            failures: Mutex::new(HashMap::new()),
            allowed_target: None,
        }
    }

    /// The controller may write ConfigMaps of this name only (what its Role allows): a policy
    /// aiming elsewhere is told so in its status instead of failing on `Forbidden`.
    pub fn allow_only(mut self, config_map: Option<String>) -> Self {
        self.allowed_target = config_map;
        self
    }

    pub fn allowed_target(&self) -> Option<&str> {
        self.allowed_target.as_deref()
    }

    /// Asked right before every write: leadership held now, not when the work began (a
    /// reconcile can outlast the renew deadline).
    pub(crate) fn ensure_leading(&self) -> Result<(), Error> {
        if self.leader.is_leading() {
            Ok(())
        } else {
            Err(Error::NotLeading)
        }
    }

    pub(crate) async fn event(
        &self,
        policy: &BreakerPolicy,
        type_: EventType,
        reason: Reason,
        note: String,
    ) {
        self.publish(policy, type_, reason.as_str(), "Reconcile", note, None)
            .await;
    }

    /// Records an Event on the policy, `related` to another object if given, through the
    /// one Recorder, counted by reason. The Recorder makes repeats of the same type, reason,
    /// action and related object into one series (the note is not part of that key).
    pub(crate) async fn publish(
        &self,
        policy: &BreakerPolicy,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
        related: Option<ObjectReference>,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: related,
        };
        if self.ensure_leading().is_err() {
            tracing::debug!(reason, "not leading: Event not written");
            return;
        }
        self.metrics.event_written(reason);
        if let Err(err) = self.recorder.publish(&event, &policy.object_ref(&())).await {
            tracing::warn!(error = %err, reason, "cannot record an Event");
        }
    }

    pub(crate) fn forget_failures(&self, key: &str) {
        self.failures.lock().remove(key);
    }

    /// Failures in a row for this object, this one included.
    pub(crate) fn count_failure(&self, key: String) -> u32 {
        let mut failures = self.failures.lock();
        if failures.len() >= MAX_TRACKED_FAILURES && !failures.contains_key(&key) {
            failures.clear();
        }
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    #[cfg(test)]
    pub(crate) fn tracked_failures(&self) -> usize {
        self.failures.lock().len()
    }
}

/// The field manager a policy's writes to its ConfigMap go under.
pub(crate) fn manager_name(policy: &str) -> String {
    format!("{MANAGER}.{policy}")
}
