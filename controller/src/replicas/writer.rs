//! Writes a group's [`ReplicasSummary`] into each of its policies' status: one server-side
//! apply per policy under a field manager of its own beside the reconciler's, and only when
//! it differs from what was written last.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use breaker_api::BreakerPolicy;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;

use breaker_api::ReplicaStatus;

use super::summary::{summary, ReplicasSummary};
use crate::reconcile::Context;

/// The field manager of `status.replicas`, `status.open`, `status.applied` and `status.ejected`.
pub const REPLICAS_MANAGER: &str = "breaker-controller.replicas";
/// At most one status write per group this often (the first change at once).
pub const WRITE_EVERY: Duration = Duration::from_millis(500);
/// The status is recomputed this often without a change (written only if it differs):
/// `applied` moves when the policy's configMapVersion does, which no replica announces.
pub const RECHECK: Duration = Duration::from_secs(2);

/// What this writer last wrote, by policy name.
#[derive(Default)]
pub struct StatusWriter {
    written: HashMap<String, ReplicasSummary>,
}

impl StatusWriter {
    /// Writes each policy's status where it changed: whether every one is written (a failed
    /// write, or leadership lost, is tried again on the next round).
    pub async fn write(
        &mut self,
        ctx: &Context,
        namespace: &str,
        policies: Vec<Arc<BreakerPolicy>>,
        replicas: &[ReplicaStatus],
    ) -> bool {
        let mut all_written = true;
        for policy in policies {
            let current = policy
                .status
                .as_ref()
                .and_then(|s| s.config_map_version.as_deref());
            let status = summary(replicas, current);
            let name = policy.name_any();
            if self.written.get(&name) == Some(&status) {
                continue;
            }
            let patch = BreakerPolicy::status_patch(&status);
            let api: Api<BreakerPolicy> = Api::namespaced(ctx.client.clone(), namespace);
            let params = PatchParams::apply(REPLICAS_MANAGER).force();
            if ctx.ensure_leading().is_err() {
                // Written by the next leader's writer; this one's memory is now stale.
                self.written.clear();
                return false;
            }
            match api
                .patch_status(&name, &params, &Patch::Apply(&patch))
                .await
            {
                Ok(_) => {
                    ctx.metrics.status_written();
                    self.written.insert(name, status);
                }
                Err(err) => {
                    all_written = false;
                    tracing::warn!(policy = %name, error = %err, "cannot write the replicas' status")
                }
            }
        }
        all_written
    }
}
