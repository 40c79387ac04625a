//! BREAKER_CONFIGMAP: the settings ConfigMap watched through the Kubernetes API. An API outage
//! leaves the gateway serving with the settings it has; the watch resumes with backoff. The
//! content is read by `breaker_api::configmap`, the module that also writes it.

use breaker_api::configmap::{self, ContentError};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};

use super::{Update, UpdateSender};

fn update_for(cm: &ConfigMap) -> Update {
    match configmap::read(cm) {
        Err(ContentError::NoSettings) => Update::NoPolicy,
        parsed => Update::Content {
            version: cm.resource_version().unwrap_or_default(),
            parsed: parsed.map_err(|e| e.to_string()),
        },
    }
}

/// Watches the one ConfigMap `namespace/name` for as long as the gateway runs.
pub fn spawn_watch(namespace: String, name: String, updates: UpdateSender) {
    actix_web::rt::spawn(async move {
        let client = super::kube_client("the settings ConfigMap", |why| {
            let _ = updates.send(Update::SourceFailed(why));
        })
        .await;
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        // A field selector on the name: the gateway's RBAC may read this ConfigMap only.
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher::watcher(api, config)
            .backoff(breaker_api::RewatchBackoff::default())
            .boxed();
        let mut seen = false;
        while let Some(event) = events.next().await {
            let update = match event {
                Ok(Event::Apply(cm) | Event::InitApply(cm)) => {
                    seen = true;
                    update_for(&cm)
                }
                Ok(Event::Delete(_)) => {
                    seen = false;
                    Update::NoPolicy
                }
                Ok(Event::Init) => {
                    seen = false;
                    continue;
                }
                Ok(Event::InitDone) => {
                    if updates.send(Update::SourceResumed).is_err() {
                        return;
                    }
                    if seen {
                        continue;
                    }
                    Update::NoPolicy
                }
                Err(err) => {
                    tracing::warn!(configmap = %format!("{namespace}/{name}"), error = %err, "ConfigMap watch failed; serving with the settings in force, retrying");
                    Update::SourceFailed(err.to_string())
                }
            };
            if updates.send(update).is_err() {
                return;
            }
        }
    });
}
