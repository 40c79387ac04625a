//! Takes back what a deleted BreakerPolicy wrote to its target ConfigMap.
//!
//! Policies carry no finalizer (why: [`crate::reconcile`]), so nothing holds up their deletion
//! and this controller, keyed on the target ConfigMaps, cleans up after it: at once while a
//! controller runs, else when one next starts, since its first list sees every target. A
//! policy's fields are known by their field manager, `breaker-controller.<policy>`;
//! re-applying an empty object under that manager removes exactly them (settings, mode,
//! label). The gateway then keeps its last settings, in mode Auto.

use std::sync::Arc;
use std::time::Duration;

use breaker_api::BreakerPolicy;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::context::{manager_name, Context, Error, MANAGER};

/// One pass over a target ConfigMap: every policy that wrote fields there and is gone (or
/// going) has them released.
pub async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cm.namespace().ok_or(Error::Unnamed)?;
    let policies: Api<BreakerPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    for holder in policy_managers(&cm) {
        if !is_live(&policies, &holder).await? {
            release(&ctx, &configmaps, &cm, &holder).await?;
        }
    }
    Ok(Action::await_change())
}

pub fn error_policy(cm: Arc<ConfigMap>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(configmap = %cm.name_any(), error = %err, "releasing a deleted policy's fields failed");
    Action::requeue(Duration::from_secs(5))
}

/// Whether the policy exists and is not being deleted.
pub async fn is_live(policies: &Api<BreakerPolicy>, name: &str) -> Result<bool, Error> {
    Ok(policies
        .get_opt(name)
        .await?
        .is_some_and(|p| p.meta().deletion_timestamp.is_none()))
}

/// The policies with fields on this ConfigMap, by their field managers.
fn policy_managers(cm: &ConfigMap) -> Vec<String> {
    let prefix = format!("{MANAGER}.");
    let mut names: Vec<String> = cm
        .managed_fields()
        .iter()
        .filter_map(|entry| entry.manager.as_deref()?.strip_prefix(&prefix))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Removes the fields `policy` wrote to the ConfigMap, if it wrote any.
pub async fn release(
    ctx: &Context,
    configmaps: &Api<ConfigMap>,
    cm: &ConfigMap,
    policy: &str,
) -> Result<(), Error> {
    if !policy_managers(cm).iter().any(|name| name == policy) {
        return Ok(());
    }
    let name = cm.name_any();
    let empty = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": cm.namespace()}});
    ctx.ensure_leading()?;
    match configmaps
        .patch(
            &name,
            &PatchParams::apply(&manager_name(policy)),
            &Patch::Apply(&empty),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(err) => return Err(err.into()),
    }
    tracing::info!(configmap = %name, policy, "released a deleted policy's fields");
    Ok(())
}
