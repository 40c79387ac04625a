//! BreakerPolicy → the gateway's ConfigMap, with status conditions, Events and backoff.
//!
//! The target ConfigMap is created by the installer (labelled [`TARGET_LABEL`]), never by the
//! controller: RBAC cannot limit `create` to one name, but it can limit `patch`, so the
//! controller's Role may touch that one ConfigMap and no other. It is written with server-side
//! apply under a field manager named after the policy and without force, so a second policy
//! aiming at the same ConfigMap gets a conflict from the API server itself and is marked
//! Invalid (Conflict); nothing is overwritten. Deleting a policy re-applies an empty
//! configuration under its manager, which removes exactly the fields it wrote.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Resource, ResourceExt};
use kube_watch::{MODE_KEY, SETTINGS_KEY};
use parking_lot::Mutex;
use serde_json::json;

use crate::crd::{BreakerPolicy, BreakerPolicyStatus, Condition};
use crate::metrics::Metrics;

pub const FINALIZER: &str = "resilience.demo.dev/configmap";
pub const POLICY_LABEL: &str = "resilience.demo.dev/policy";
/// Marks a ConfigMap as one a BreakerPolicy may write.
pub const TARGET_LABEL: &str = "resilience.demo.dev/breaker-target";
const MANAGER: &str = "breaker-controller";
/// Re-applied this often even without changes, which repairs hand edits of the ConfigMap.
const RESYNC: Duration = Duration::from_secs(300);
/// A conflicting or missing target is looked at again this often, so a freed ConfigMap
/// finds its next policy.
const CONFLICT_RETRY: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("cannot render the settings: {0}")]
    Render(#[from] serde_yaml::Error),
    #[error("the BreakerPolicy has no namespace")]
    NoNamespace,
}

impl Error {
    /// One metric label per variant.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Render(_) => "render",
            Error::NoNamespace => "no_namespace",
        }
    }
}

pub struct Context {
    pub client: kube::Client,
    pub metrics: Metrics,
    reporter: Reporter,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: kube::Client, metrics: Metrics) -> Self {
        Self {
            client,
            metrics,
            reporter: Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
            failures: Mutex::new(HashMap::new()),
        }
    }

    async fn event(&self, policy: &BreakerPolicy, type_: EventType, reason: &str, note: String) {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = recorder.publish(&event, &policy.object_ref(&())).await {
            tracing::warn!(error = %err, "cannot record an Event");
        }
    }
}

fn key(policy: &BreakerPolicy) -> String {
    format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    )
}

pub async fn reconcile(policy: Arc<BreakerPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = policy.namespace().ok_or(Error::NoNamespace)?;
    let policies: Api<BreakerPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let k = key(&policy);
    let action = finalizer(&policies, FINALIZER, policy, |event| async {
        match event {
            FinalizerEvent::Apply(policy) => apply(policy, &ctx, &ns).await,
            FinalizerEvent::Cleanup(policy) => cleanup(policy, &ctx, &ns).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.failures.lock().remove(&k);
    ctx.metrics.reconciled("done", started.elapsed());
    Ok(action)
}

/// Exponential backoff per object: 1 s, 2 s, 4 s … up to 5 minutes.
pub fn error_policy(policy: Arc<BreakerPolicy>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(err.metric_label());
    let mut failures = ctx.failures.lock();
    let n = failures.entry(key(&policy)).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*n - 1).min(9)).min(MAX_BACKOFF);
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

async fn apply(policy: Arc<BreakerPolicy>, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let target = &policy.spec.target.config_map;
    if let Err(err) = policy.spec.settings.validate() {
        // The schema rejects nearly everything this would; this is the last word.
        let message = format!("spec.settings.{err}");
        set_status(
            &policy,
            ctx,
            ns,
            invalid("InvalidSettings", &message, &policy),
            None,
        )
        .await?;
        ctx.event(&policy, EventType::Warning, "InvalidSettings", message)
            .await;
        return Ok(Action::await_change());
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let uid = policy.uid().unwrap_or_default();
    let Some(existing) = configmaps.get_opt(target).await? else {
        let message = format!(
            "ConfigMap {target} not found: it is created with the gateway (label {TARGET_LABEL}=true); the controller only writes it"
        );
        set_status(
            &policy,
            ctx,
            ns,
            invalid("TargetMissing", &message, &policy),
            None,
        )
        .await?;
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
        data: Some(
            [
                (
                    SETTINGS_KEY.to_string(),
                    serde_yaml::to_string(&policy.spec.settings)?,
                ),
                (MODE_KEY.to_string(), policy.spec.mode.as_str().to_string()),
            ]
            .into(),
        ),
        ..ConfigMap::default()
    };
    // No force at first: another policy's fields are a conflict, not something to take over.
    // Hand edits (any other manager) are taken back: the policy is the source of truth.
    let apply = Patch::Apply(&configmap);
    match configmaps.patch(target, &manager(&policy), &apply).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {
            if status.message.contains(&format!("\"{MANAGER}.")) {
                return conflict(
                    &policy,
                    ctx,
                    ns,
                    format!("ConfigMap {target}: {}", status.message),
                )
                .await;
            }
            tracing::warn!(policy = %key(&policy), configmap = %target, conflict = %status.message, "taking back hand edits of the ConfigMap");
            configmaps
                .patch(target, &manager(&policy).force(), &apply)
                .await?;
        }
        Err(err) => return Err(err.into()),
    }
    let generation = policy.meta().generation;
    let first_for_generation = policy.status.as_ref().and_then(|s| s.observed_generation)
        != generation
        || !is_ready(&policy);
    let message = format!(
        "ConfigMap {ns}/{target} holds these settings (mode {})",
        policy.spec.mode.as_str()
    );
    let ready = condition("Ready", "True", "Applied", &message, &policy);
    set_status(&policy, ctx, ns, ready, Some(format!("{ns}/{target}"))).await?;
    if first_for_generation {
        tracing::info!(policy = %key(&policy), configmap = %target, generation = ?generation, mode = policy.spec.mode.as_str(), "applied");
        ctx.event(&policy, EventType::Normal, "Applied", message)
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
    set_status(policy, ctx, ns, invalid("Conflict", &message, policy), None).await?;
    if !has_condition(policy, "Invalid", "Conflict") {
        ctx.event(policy, EventType::Warning, "Conflict", message)
            .await;
    }
    Ok(Action::requeue(CONFLICT_RETRY))
}

fn manager(policy: &BreakerPolicy) -> PatchParams {
    PatchParams::apply(&format!("{MANAGER}.{}", policy.name_any()))
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
            .patch(target, &manager(&policy), &Patch::Apply(&empty))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
        tracing::info!(policy = %key(&policy), configmap = %target, "released its ConfigMap");
    }
    Ok(Action::await_change())
}

fn is_ready(policy: &BreakerPolicy) -> bool {
    has_condition(policy, "Ready", "Applied")
}

fn has_condition(policy: &BreakerPolicy, type_: &str, reason: &str) -> bool {
    policy
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .any(|c| c.type_ == type_ && c.status == "True" && c.reason == reason)
}

fn invalid(reason: &str, message: &str, policy: &BreakerPolicy) -> Condition {
    condition("Invalid", "True", reason, message, policy)
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    policy: &BreakerPolicy,
) -> Condition {
    // Keep the transition time while the status stays the same.
    let since = policy
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: policy.meta().generation,
        last_transition_time: since,
    }
}

/// Ready and Invalid are each other's opposite: one True means the other False.
async fn set_status(
    policy: &BreakerPolicy,
    ctx: &Context,
    ns: &str,
    main: Condition,
    config_map: Option<String>,
) -> Result<(), Error> {
    let other_type = if main.type_ == "Ready" {
        "Invalid"
    } else {
        "Ready"
    };
    let other = condition(other_type, "False", &main.reason, &main.message, policy);
    let status = BreakerPolicyStatus {
        conditions: vec![main, other],
        observed_generation: policy.meta().generation,
        config_map: config_map
            .or_else(|| policy.status.as_ref().and_then(|s| s.config_map.clone())),
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
