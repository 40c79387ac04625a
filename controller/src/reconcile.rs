//! BreakerPolicy → the gateway's ConfigMap, with a `Ready` condition, Events and backoff.
//!
//! The target ConfigMap is created by the installer (labelled [`TARGET_LABEL`]), never by the
//! controller: RBAC cannot limit `create` to one name, but it can limit `patch`, so the
//! controller's Role may touch that one ConfigMap and no other. It is written with server-side
//! apply under a field manager named after the policy and without force, so a second policy
//! aiming at the same ConfigMap gets a conflict from the API server itself and is marked
//! `Ready=False` (Conflict); nothing is overwritten. The label [`POLICY_LABEL`], written with
//! the settings, names the policy that holds the ConfigMap.
//!
//! No finalizer, and no owner reference from the ConfigMap to the policy: a finalizer waits on a
//! controller that may be gone (`helm uninstall` removes the controller before the chart's
//! policy, and a deleted namespace takes both at once), which left the policy and its namespace
//! terminating for ever; an owner reference would have the garbage collector delete the
//! installer's ConfigMap with the policy. What a deleted policy wrote is taken back from the
//! ConfigMap's side instead ([`crate::release`]), whenever a controller runs. Policies and
//! ConfigMaps from the finalizer's days are brought over as they are reconciled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use breaker_api::configmap;
use breaker_api::policy::{Reason, READY};
use breaker_api::{BreakerPolicy, BreakerPolicyStatus};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::context::manager_name;
pub use crate::context::{Context, Error, MANAGER};
use crate::release;

/// The finalizer earlier versions put on every policy; removed wherever it is seen.
pub const LEGACY_FINALIZER: &str = "resilience.demo.dev/configmap";
pub const POLICY_LABEL: &str = "resilience.demo.dev/policy";
/// Marks a ConfigMap as one a BreakerPolicy may write.
pub const TARGET_LABEL: &str = "resilience.demo.dev/breaker-target";
/// Re-applied this often even without changes, which repairs hand edits of the ConfigMap.
const RESYNC: Duration = Duration::from_secs(300);
/// A conflicting or missing target is looked at again this often, so a freed ConfigMap
/// finds its next policy.
const CONFLICT_RETRY: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

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
    if policy.meta().deletion_timestamp.is_some() {
        // Seen only while another finalizer (or the legacy one) holds the policy: take back
        // what it wrote now rather than after it is gone.
        let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
        let target = &policy.spec.target.config_map;
        if let Some(cm) = configmaps.get_opt(target).await? {
            release::release(ctx, &configmaps, &cm, &policy.name_any()).await?;
        }
        drop_legacy_finalizer(&policy, ctx, &ns).await?;
        ctx.forget_failures(&key(&policy));
        return Ok(Action::await_change());
    }
    let action = apply(policy.clone(), ctx, &ns).await?;
    drop_legacy_finalizer(&policy, ctx, &ns).await?;
    Ok(action)
}

/// Removes the finalizer earlier versions added, once the policy's ConfigMap no longer has
/// the owner reference that came with it (the apply before this took it back). The patch
/// carries the resourceVersion, so a concurrent change of the list fails it and it is retried:
/// the version of the policy as it is now, read here, since this reconcile's own status write
/// has moved it on since the policy was handed in (with that one, every such patch would fail).
async fn drop_legacy_finalizer(
    policy: &BreakerPolicy,
    ctx: &Context,
    ns: &str,
) -> Result<(), Error> {
    let has_legacy = |p: &BreakerPolicy| p.finalizers().iter().any(|f| f == LEGACY_FINALIZER);
    if !has_legacy(policy) {
        return Ok(());
    }
    let policies: Api<BreakerPolicy> = Api::namespaced(ctx.client.clone(), ns);
    let Some(current) = policies.get_opt(&policy.name_any()).await? else {
        return Ok(());
    };
    if !has_legacy(&current) {
        return Ok(());
    }
    let kept: Vec<&String> = current
        .finalizers()
        .iter()
        .filter(|f| *f != LEGACY_FINALIZER)
        .collect();
    let patch =
        json!({"metadata": {"finalizers": kept, "resourceVersion": current.resource_version()}});
    ctx.ensure_leading()?;
    policies
        .patch(
            &policy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    tracing::info!(policy = %key(policy), finalizer = LEGACY_FINALIZER, "removed the legacy finalizer");
    Ok(())
}

/// Exponential backoff per object: 1 s, 2 s, 4 s … up to 5 minutes.
pub fn error_policy(policy: Arc<BreakerPolicy>, err: &Error, ctx: Arc<Context>) -> Action {
    if matches!(err, Error::NotLeading) {
        // Not a failure of the policy: the controller stops with this term; the next leader
        // reconciles it afresh.
        tracing::debug!(policy = %key(&policy), "not leading: reconcile stopped before its write");
        return Action::await_change();
    }
    let n = ctx.count_failure(key(&policy));
    let delay = Duration::from_secs(1u64 << (n - 1).min(9)).min(MAX_BACKOFF);
    tracing::warn!(policy = %key(&policy), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Why the ConfigMap is not this policy's to write, if it is not: something else controls it,
/// it was not made a breaker target, or another live policy holds it. A policy that held it
/// and is gone has its fields released here, so the next one takes over at once.
async fn held_elsewhere(
    cm: &ConfigMap,
    configmaps: &Api<ConfigMap>,
    policy: &BreakerPolicy,
    ctx: &Context,
    ns: &str,
) -> Result<Option<String>, Error> {
    let target = cm.name_any();
    // Owner references to a BreakerPolicy are the finalizer days' mark of the holder, which
    // the label carries now; the apply removes them.
    if let Some(owner) = cm
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind != BreakerPolicy::kind(&()))
    {
        return Ok(Some(format!(
            "ConfigMap {target} is managed by {} {}",
            owner.kind, owner.name
        )));
    }
    if cm.labels().get(TARGET_LABEL).map(String::as_str) != Some("true") {
        return Ok(Some(format!(
            "ConfigMap {target} is not a breaker target (label {TARGET_LABEL}=true is missing)"
        )));
    }
    let ours = policy.name_any();
    match cm.labels().get(POLICY_LABEL) {
        Some(holder) if *holder != ours => {
            let policies: Api<BreakerPolicy> = Api::namespaced(ctx.client.clone(), ns);
            if release::is_live(&policies, holder).await? {
                return Ok(Some(format!(
                    "ConfigMap {target} is managed by BreakerPolicy {holder}"
                )));
            }
            release::release(ctx, configmaps, cm, holder).await?;
            Ok(None)
        }
        _ => Ok(None),
    }
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
    if let Some(allowed) = ctx.allowed_target().filter(|allowed| *allowed != target) {
        let message = format!(
            "this controller may write ConfigMap {allowed} only (its Role; the chart's gatewayV2.configMapName): set spec.target.configMap to {allowed}"
        );
        return not_ready(
            &policy,
            ctx,
            ns,
            Reason::Forbidden,
            message,
            Action::await_change(),
        )
        .await;
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let existing = match configmaps.get_opt(target).await {
        Ok(Some(existing)) => existing,
        Ok(None) => {
            let message = format!(
                "ConfigMap {target} not found: it is created with the gateway (label {TARGET_LABEL}=true); the controller only writes it"
            );
            set_ready(&policy, ctx, ns, Reason::TargetMissing, &message, None).await?;
            return Ok(Action::requeue(CONFLICT_RETRY));
        }
        Err(kube::Error::Api(status)) if status.code == 403 => {
            let message = forbidden_message(target, &status.message);
            return retry_later(&policy, ctx, ns, Reason::Forbidden, message).await;
        }
        Err(err) => return Err(err.into()),
    };
    if let Some(message) = held_elsewhere(&existing, &configmaps, &policy, ctx, ns).await? {
        return retry_later(&policy, ctx, ns, Reason::Conflict, message).await;
    }
    let configmap = ConfigMap {
        metadata: ObjectMeta {
            name: Some(target.clone()),
            namespace: Some(ns.into()),
            labels: Some([(POLICY_LABEL.to_string(), policy.name_any())].into()),
            ..ObjectMeta::default()
        },
        data: Some(configmap::data(&policy.spec.settings, policy.spec.mode)),
        ..ConfigMap::default()
    };
    // No force at first: another policy's fields are a conflict, not something to take over.
    // Hand edits (any other manager) are taken back: the policy is the source of truth.
    let manager = manager_name(&policy.name_any());
    let apply = Patch::Apply(&configmap);
    ctx.ensure_leading()?;
    let written = match configmaps
        .patch(target, &PatchParams::apply(&manager), &apply)
        .await
    {
        Ok(written) => written,
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Who holds the fields is asked of a fresh read: `existing` may predate another
            // policy's first write (two created at once), and forcing on it would overwrite it.
            let now = configmaps.get(target).await?;
            if let Some(other) = other_policy_manager(&now, &manager) {
                let message = format!("ConfigMap {target}: its fields are managed by {other}");
                return retry_later(&policy, ctx, ns, Reason::Conflict, message).await;
            }
            tracing::warn!(policy = %key(&policy), configmap = %target, conflict = %status.message, "taking back hand edits of the ConfigMap");
            ctx.ensure_leading()?;
            configmaps
                .patch(target, &PatchParams::apply(&manager).force(), &apply)
                .await?
        }
        Err(kube::Error::Api(status)) if status.code == 403 => {
            let message = forbidden_message(target, &status.message);
            return retry_later(&policy, ctx, ns, Reason::Forbidden, message).await;
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

fn forbidden_message(target: &str, api_message: &str) -> String {
    format!(
        "the controller may not write ConfigMap {target} ({api_message}): its Role must allow get, list, watch and patch on it (the chart grants exactly gatewayV2.configMapName)"
    )
}

/// [`not_ready`], looked at again in [`CONFLICT_RETRY`]: what holds the policy back may go.
async fn retry_later(
    policy: &BreakerPolicy,
    ctx: &Context,
    ns: &str,
    reason: Reason,
    message: String,
) -> Result<Action, Error> {
    not_ready(
        policy,
        ctx,
        ns,
        reason,
        message,
        Action::requeue(CONFLICT_RETRY),
    )
    .await
}

/// Not Ready for `reason` (a conflict, a target outside the Role): said in the status, and as
/// a Warning Event when the reason is new.
async fn not_ready(
    policy: &BreakerPolicy,
    ctx: &Context,
    ns: &str,
    reason: Reason,
    message: String,
    then: Action,
) -> Result<Action, Error> {
    tracing::warn!(policy = %key(policy), reason = reason.as_str(), %message, "not ready");
    set_ready(policy, ctx, ns, reason, &message, None).await?;
    if !has_reason(policy, reason) {
        ctx.event(policy, EventType::Warning, reason, message).await;
    }
    Ok(then)
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
    let patch = BreakerPolicy::status_patch(&status);
    ctx.ensure_leading()?;
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
