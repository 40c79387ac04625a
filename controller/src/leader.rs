//! Leader election on a Lease (kube-lease-manager): of the controller's replicas one writes
//! (reconciles, releases, status, Events) and the others stand by, ready, to take over when
//! its Lease lapses or is released. A leader that loses the Lease stops at once: two writers
//! would apply changes twice and in either order.

use std::time::Duration;

use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const RELEASE_WITHIN: Duration = Duration::from_secs(3);

/// How the Lease is held: renewed `grace` before it lapses, taken over once `duration` has
/// passed without a renewal.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name in the Lease (the pod's name in the cluster).
    pub identity: String,
    pub duration: Duration,
    pub grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("Lease {0}: {1}")]
    Lease(String, #[source] LeaseManagerError),
    #[error("the lease duration ({duration:?}) must be longer than its renewal grace ({grace:?}), both whole seconds")]
    Settings { duration: Duration, grace: Duration },
    #[error("lost the Lease: another replica leads now")]
    Lost,
}

/// This replica's part in the election, running in the background.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
    pub identity: String,
}

impl Leadership {
    pub async fn start(client: kube::Client, lease: LeaseSettings) -> Result<Self, LeaderError> {
        let (duration, grace) = (lease.duration.as_secs(), lease.grace.as_secs());
        if grace == 0 || duration <= grace {
            return Err(LeaderError::Settings {
                duration: lease.duration,
                grace: lease.grace,
            });
        }
        let name = format!("{}/{}", lease.namespace, lease.name);
        let manager = LeaseManagerBuilder::new(client, &lease.name)
            .with_namespace(&lease.namespace)
            .with_identity(&lease.identity)
            .with_duration(duration)
            .with_grace(grace)
            .build()
            .await
            .map_err(|err| LeaderError::Lease(name, err))?;
        let (leading, task) = manager.watch().await;
        Ok(Self {
            leading,
            task,
            identity: lease.identity,
        })
    }

    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Waits until this replica leads; an error when the election itself has stopped.
    pub async fn acquired(&self) -> Result<(), LeaderError> {
        let mut leading = self.leading.clone();
        leading
            .wait_for(|l| *l)
            .await
            .map_err(|_| LeaderError::Lost)?;
        Ok(())
    }

    /// Resolves when this replica no longer leads.
    pub async fn lost(&self) -> LeaderError {
        let mut leading = self.leading.clone();
        let _ = leading.wait_for(|l| !*l).await;
        LeaderError::Lost
    }

    /// Gives the Lease up (if held) so a standby takes over without waiting for it to lapse;
    /// at most [`RELEASE_WITHIN`], so an unreachable API server does not hold up the exit.
    pub async fn release(self) {
        drop(self.leading);
        match tokio::time::timeout(RELEASE_WITHIN, self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!(identity = %self.identity, "Lease released"),
            Ok(Ok(Err(err))) => tracing::warn!(error = %err, "could not release the Lease"),
            Ok(Err(err)) => tracing::warn!(error = %err, "the Lease task failed"),
            Err(_) => tracing::warn!("the Lease was not released in time; it lapses instead"),
        }
    }
}
