//! Where v2's breaker settings come from. A source only reports what it sees, as
//! [`Update`]s on a channel; the [`crate::applier`] alone decides what to do with them.

pub mod configmap;
pub mod file;

use std::path::PathBuf;

use breaker::{Mode, Settings};
use tokio::sync::mpsc;

/// What a settings source saw.
// One a settings change, moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Content at `version` (a content hash or a resourceVersion), usable or not.
    Content {
        version: String,
        parsed: Result<(Settings, Mode), String>,
    },
    /// The ConfigMap holds no settings, or is gone: no BreakerPolicy writes it now.
    NoPolicy,
    /// The source cannot be read right now (API unreachable); the settings in force stay.
    SourceFailed(String),
    /// The source can be read again.
    SourceResumed,
}

pub type UpdateSender = mpsc::UnboundedSender<Update>;

/// A Kubernetes client (KUBECONFIG or in-cluster), asked for every 5 s until one comes;
/// `failed` hears why each try failed.
pub async fn kube_client(what: &str, failed: impl Fn(String)) -> kube::Client {
    loop {
        match kube::Client::try_default().await {
            Ok(client) => return client,
            Err(err) => {
                tracing::error!(error = %err, what, "no Kubernetes client (KUBECONFIG or in-cluster); retrying in 5 s");
                failed(format!("no Kubernetes client: {err}"));
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }
    }
}

/// Where v2's settings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Defaults,
    File(PathBuf),
    ConfigMap { namespace: String, name: String },
}

impl Origin {
    pub fn describe(&self) -> String {
        match self {
            Origin::File(path) => format!("file:{}", path.display()),
            Origin::ConfigMap { namespace, name } => format!("configmap:{namespace}/{name}"),
            Origin::Defaults => "defaults".to_string(),
        }
    }

    /// Whether the settings are known at start, or only once the source has answered.
    pub fn loaded_at_start(&self) -> bool {
        !matches!(self, Origin::ConfigMap { .. })
    }

    /// Starts watching; call once inside the runtime.
    pub fn spawn_watch(&self, updates: UpdateSender) {
        match self.clone() {
            Origin::File(path) => file::spawn_watch(path, updates),
            Origin::ConfigMap { namespace, name } => {
                configmap::spawn_watch(namespace, name, updates)
            }
            Origin::Defaults => {}
        }
    }
}
