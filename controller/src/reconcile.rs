//! BreakerPolicy → the gateway's ConfigMap, with a `Ready` condition, Events and backoff.
//!
//! The target ConfigMap is created by the installer (labelled [`TARGET_LABEL`]), never by the
//! controller: RBAC cannot limit `create` to one name, but it can limit `patch`, so the
//! controller's Role may touch that one ConfigMap and no other. It is written with server-side
//! apply under a field manager named after the policy and without force, so a second policy
//! aiming at the same ConfigMap gets a conflict from the API server itself and is marked
//! `Ready=False` (Conflict); nothing is overwritten. Deleting a policy re-applies an empty
//! configuration under its manager, which removes exactly the fields it wrote.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use breaker_api::configmap;
use breaker_api::policy::{Reason, READY};
use breaker_api::{BreakerPolicy, BreakerPolicyStatus};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer, Event as FinalizerEvent};
use kube::{Resource, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;

use crate::metrics::Metrics;

pub const FINALIZER: &str = "resilience.demo.dev/configmap";
pub const POLICY_LABEL: &str = "resilience.demo.dev/policy";
/// Marks a ConfigMap as one a BreakerPolicy may write.
pub const TARGET_LABEL: &str = "resilience.demo.dev/breaker-target";
pub const MANAGER: &str = "breaker-controller";
/// Re-applied this often even without changes, which repairs hand edits of the ConfigMap.
const RESYNC: Duration = Duration::from_secs(300);
/// A conflicting or missing target is looked at again this often, so a freed ConfigMap
/// finds its next policy.
const CONFLICT_RETRY: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Objects whose failures are remembered for backoff; past this the oldest memory is dropped
/// (a policy deleted while failing never reconciles again to clear its entry).
const MAX_TRACKED_FAILURES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("cannot add or remove the finalizer: {0}")]
    Finalizer(#[source] kube::Error),
    #[error("the BreakerPolicy has no name or no namespace")]
    Unnamed,
}

impl From<kube::Error> for Error {
    fn from(err: kube::Error) -> Self {
        Error::Kube(err)
    }
}

impl From<finalizer::Error<Error>> for Error {
    /// The finalizer helper wraps our own errors; unwrap them so their variant shows.
    fn from(err: finalizer::Error<Error>) -> Self {
        match err {
            finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => inner,
            finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => {
                Error::Finalizer(e)
            }
            finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer => Error::Unnamed,
        }
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
            Error::Finalizer(_) => "finalizer".into(),
            Error::Unnamed => "unnamed".into(),
        }
    }
}

/// What every reconcile shares: the client, the metrics, the one Event recorder.
pub struct Context {
    pub client: kube::Client,
    pub metrics: Metrics,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: kube::Client, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }

    async fn event(&self, policy: &BreakerPolicy, type_: EventType, reason: Reason, note: String) {
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
        self.metrics.event_written(reason);
        if let Err(err) = self.recorder.publish(&event, &policy.object_ref(&())).await {
            tracing::warn!(error = %err, reason, "cannot record an Event");
        }
    }

    fn forget_failures(&self, key: &str) {
        self.failures.lock().remove(key);
    }

    /// Failures in a row for this object, this one included.
    fn count_failure(&self, key: String) -> u32 {
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

fn key(policy: &BreakerPolicy) -> String {
    format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    )
}

/// One reconcile, timed and counted whatever its result.
pub async fn reconcile(policy: Arc<BreakerPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let k = key(&policy);
    let result = reconcile_policy(policy, &ctx).await;
    let error = result.as_ref().err().map(Error::metric_label);
    ctx.metrics.reconciled(error, started.elapsed());
    if result.is_ok() {
        ctx.forget_failures(&k);
    }
    result
}

async fn reconcile_policy(policy: Arc<BreakerPolicy>, ctx: &Context) -> Result<Action, Error> {
    let ns = policy.namespace().ok_or(Error::Unnamed)?;
    let policies: Api<BreakerPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(finalizer(&policies, FINALIZER, policy, |event| async {
        match event {
            FinalizerEvent::Apply(policy) => apply(policy, ctx, &ns).await,
            FinalizerEvent::Cleanup(policy) => cleanup(policy, ctx, &ns).await,
        }
    })
    .await?)
}

/// Exponential backoff per object: 1 s, 2 s, 4 s … up to 5 minutes.
pub fn error_policy(policy: Arc<BreakerPolicy>, err: &Error, ctx: Arc<Context>) -> Action {
    let n = ctx.count_failure(key(&policy));
    let delay = Duration::from_secs(1u64 << (n - 1).min(9)).min(MAX_BACKOFF);
    tracing::warn!(policy = %key(&policy), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn controller_owner(cm: &ConfigMap) -> Option<&OwnerReference> {
    cm.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

fn manager_name(policy: &BreakerPolicy) -> String {
    format!("{MANAGER}.{}", policy.name_any())
}

/// Another policy's field manager on the ConfigMap, if one applied fields there.
fn other_policy_manager(cm: &ConfigMap, ours: &str) -> Option<String> {
    cm.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|entry| entry.manager.as_deref())
        .find(|manager| manager.starts_with(&format!("{MANAGER}.")) && *manager != ours)
        .map(str::to_string)
}

async fn apply(policy: Arc<BreakerPolicy>, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let target = &policy.spec.target.config_map;
    if let Err(err) = policy.spec.settings.validate() {
        // The schema rejects nearly everything this would; this is the last word.
        let message = format!("spec.settings.{err}");
        set_ready(&policy, ctx, ns, Reason::InvalidSettings, &message, None).await?;
        ctx.event(
            &policy,
            EventType::Warning,
            Reason::InvalidSettings,
            message,
        )
        .await;
        return Ok(Action::await_change());
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let uid = policy.uid().unwrap_or_default();
    let Some(existing) = configmaps.get_opt(target).await? else {
        let message = format!(
            "ConfigMap {target} not found: it is created with the gateway (label {TARGET_LABEL}=true); the controller only writes it"
        );
        set_ready(&policy, ctx, ns, Reason::TargetMissing, &message, None).await?;
        return Ok(Action::requeue(CONFLICT_RETRY));
    };
    let owner = controller_owner(&existing);
    if owner.map(|o| o.uid.as_str()) != Some(uid.as_str()) {
        let prepared = existing.labels().get(TARGET_LABEL).map(String::as_str) == Some("true");
        let message = match owner {
            Some(o) => Some(format!(
                "ConfigMap {target} is managed by {} {}",
                o.kind, o.name
            )),
            None if !prepared => Some(format!(
                "ConfigMap {target} is not a breaker target (label {TARGET_LABEL}=true is missing)"
            )),
            None => None,
        };
        if let Some(message) = message {
            return conflict(&policy, ctx, ns, message).await;
        }
    }
    let owner = policy
        .controller_owner_ref(&())
        .expect("a stored object has a name and uid");
    let configmap = ConfigMap {
        metadata: ObjectMeta {
            name: Some(target.clone()),
            namespace: Some(ns.into()),
            owner_references: Some(vec![owner]),
            labels: Some([(POLICY_LABEL.to_string(), policy.name_any())].into()),
            ..ObjectMeta::default()
        },
        data: Some(configmap::data(&policy.spec.settings, policy.spec.mode)),
        ..ConfigMap::default()
    };
    // No force at first: another policy's fields are a conflict, not something to take over.
    // Hand edits (any other manager) are taken back: the policy is the source of truth.
    let manager = manager_name(&policy);
    let apply = Patch::Apply(&configmap);
    let written = match configmaps
        .patch(target, &PatchParams::apply(&manager), &apply)
        .await
    {
        Ok(written) => written,
        Err(kube::Error::Api(status)) if status.code == 409 => {
            if let Some(other) = other_policy_manager(&existing, &manager) {
                let message = format!("ConfigMap {target}: its fields are managed by {other}");
                return conflict(&policy, ctx, ns, message).await;
            }
            tracing::warn!(policy = %key(&policy), configmap = %target, conflict = %status.message, "taking back hand edits of the ConfigMap");
            configmaps
                .patch(target, &PatchParams::apply(&manager).force(), &apply)
                .await?
        }
        Err(err) => return Err(err.into()),
    };
    let generation = policy.meta().generation;
    let first_for_generation = policy.status.as_ref().and_then(|s| s.observed_generation)
        != generation
        || !has_reason(&policy, Reason::Applied);
    let message = format!(
        "ConfigMap {ns}/{target} holds these settings (mode {})",
        policy.spec.mode.as_str()
    );
    let written = Some(Written {
        config_map: format!("{ns}/{target}"),
        version: written.resource_version(),
    });
    set_ready(&policy, ctx, ns, Reason::Applied, &message, written).await?;
    if first_for_generation {
        tracing::info!(policy = %key(&policy), configmap = %target, generation = ?generation, mode = policy.spec.mode.as_str(), "applied");
        ctx.event(&policy, EventType::Normal, Reason::Applied, message)
            .await;
    }
    Ok(Action::requeue(RESYNC))
}

async fn conflict(
    policy: &BreakerPolicy,
    ctx: &Context,
    ns: &str,
    message: String,
) -> Result<Action, Error> {
    tracing::warn!(policy = %key(policy), %message, "conflict");
    set_ready(policy, ctx, ns, Reason::Conflict, &message, None).await?;
    if !has_reason(policy, Reason::Conflict) {
        ctx.event(policy, EventType::Warning, Reason::Conflict, message)
            .await;
    }
    Ok(Action::requeue(CONFLICT_RETRY))
}

/// Deleting a policy takes back what it wrote to the ConfigMap (settings, mode, owner
/// reference, label) and leaves the ConfigMap itself; the gateway then keeps its last settings
/// and returns to mode Auto.
async fn cleanup(policy: Arc<BreakerPolicy>, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let target = &policy.spec.target.config_map;
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let ours = configmaps
        .get_opt(target)
        .await?
        .is_some_and(|cm| controller_owner(&cm).map(|o| o.uid.as_str()) == policy.uid().as_deref());
    if ours {
        let empty = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": target, "namespace": ns}});
        match configmaps
            .patch(
                target,
                &PatchParams::apply(&manager_name(&policy)),
                &Patch::Apply(&empty),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
        tracing::info!(policy = %key(&policy), configmap = %target, "released its ConfigMap");
    }
    ctx.forget_failures(&key(&policy));
    Ok(Action::await_change())
}

/// Whether the policy's `Ready` condition already says this.
fn has_reason(policy: &BreakerPolicy, reason: Reason) -> bool {
    policy
        .ready_condition()
        .is_some_and(|c| c.reason == reason.as_str())
}

/// The `Ready` condition for this reason; the transition time stays while the status does.
fn new_ready_condition(policy: &BreakerPolicy, reason: Reason, message: &str) -> Condition {
    let status = if reason.ready() { "True" } else { "False" };
    let since = policy
        .ready_condition()
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: READY.into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message: message.into(),
        observed_generation: policy.meta().generation,
        last_transition_time: since,
    }
}

/// The ConfigMap a policy wrote, and its resourceVersion after the write.
struct Written {
    config_map: String,
    version: Option<String>,
}

async fn set_ready(
    policy: &BreakerPolicy,
    ctx: &Context,
    ns: &str,
    reason: Reason,
    message: &str,
    written: Option<Written>,
) -> Result<(), Error> {
    let last = policy.status.as_ref();
    let (config_map, config_map_version) = match written {
        Some(w) => (Some(w.config_map), w.version),
        None => (
            last.and_then(|s| s.config_map.clone()),
            last.and_then(|s| s.config_map_version.clone()),
        ),
    };
    // The replicas' fields are the replica watcher's (another field manager): not sent here.
    let status = BreakerPolicyStatus {
        conditions: vec![new_ready_condition(policy, reason, message)],
        observed_generation: policy.meta().generation,
        config_map,
        config_map_version,
        ..BreakerPolicyStatus::default()
    };
    let policies: Api<BreakerPolicy> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({
        "apiVersion": "resilience.demo.dev/v1alpha1",
        "kind": "BreakerPolicy",
        "status": status,
    });
    policies
        .patch_status(
            &policy.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
