//! What the controller checks before it watches: that the BreakerPolicy CRD is installed and
//! readable, with a message that says what to do when not.

use breaker_api::BreakerPolicy;
use kube::api::ListParams;
use kube::Api;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("the BreakerPolicy CRD is not installed: run `kubectl apply -f k8s/crd.yaml` (or install the Helm chart), then start the controller again")]
    CrdMissing,
    #[error("not allowed to list BreakerPolicies ({0}): the controller's Role or ClusterRole needs get, list, watch and patch on breakerpolicies and breakerpolicies/status")]
    Forbidden(String),
    #[error("cannot reach the Kubernetes API: {0}")]
    Api(#[source] kube::Error),
}

/// One cheap list call: 404 means the CRD is missing, 403 that RBAC is.
pub async fn check_crd(policies: &Api<BreakerPolicy>) -> Result<(), StartupError> {
    match policies
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(StartupError::CrdMissing),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            Err(StartupError::Forbidden(status.message))
        }
        Err(err) => Err(StartupError::Api(err)),
    }
}
