//! BREAKER_CONFIGMAP: the settings ConfigMap watched through the Kubernetes API. An API outage
//! leaves the gateway serving with the settings it has; the watch resumes with backoff. A
//! ConfigMap without settings (no BreakerPolicy writes it), or none at all, ends any mode
//! override and keeps the settings in force.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use breaker::{BreakerSettings, Mode};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};

use kube_watch::{MODE_KEY, SETTINGS_KEY};

use crate::protected::Protected;

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("ConfigMap has no {SETTINGS_KEY:?} key")]
    NoSettings,
    #[error("{SETTINGS_KEY}: {0}")]
    Settings(breaker::SettingsError),
    #[error("{MODE_KEY}: {0}")]
    Mode(breaker::SettingsError),
}

pub fn parse(cm: &ConfigMap) -> Result<(BreakerSettings, Mode), ContentError> {
    let data = cm.data.as_ref();
    let text = data
        .and_then(|d| d.get(SETTINGS_KEY))
        .ok_or(ContentError::NoSettings)?;
    let settings = BreakerSettings::from_yaml(text).map_err(ContentError::Settings)?;
    let mode = match data.and_then(|d| d.get(MODE_KEY)) {
        Some(text) => Mode::from_str(text).map_err(ContentError::Mode)?,
        None => Mode::Auto,
    };
    Ok((settings, mode))
}

/// Watches the one ConfigMap `namespace/name` for as long as the gateway runs.
pub fn spawn_watch(namespace: String, name: String, protected: Arc<Protected>) {
    actix_web::rt::spawn(async move {
        let client = loop {
            match kube::Client::try_default().await {
                Ok(client) => break client,
                Err(err) => {
                    tracing::error!(error = %err, "no Kubernetes client (KUBECONFIG or in-cluster); retrying in 5 s");
                    protected.watch_failed(format!("no Kubernetes client: {err}"));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        };
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        // A field selector on the name: the gateway's RBAC may read this ConfigMap only.
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher::watcher(api, config)
            .backoff(kube_watch::RewatchBackoff::default())
            .boxed();
        let mut seen = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Apply(cm) | Event::InitApply(cm)) => {
                    seen = true;
                    match parse(&cm) {
                        Err(ContentError::NoSettings) => protected.no_policy(),
                        parsed => protected
                            .apply_configmap(cm.resource_version().unwrap_or_default(), parsed),
                    }
                }
                Ok(Event::Delete(_)) => {
                    seen = false;
                    protected.no_policy();
                }
                Ok(Event::Init) => seen = false,
                Ok(Event::InitDone) => {
                    protected.watch_resumed();
                    if !seen {
                        protected.no_policy();
                    }
                }
                Err(err) => {
                    tracing::warn!(configmap = %format!("{namespace}/{name}"), error = %err, "ConfigMap watch failed; serving with the settings in force, retrying");
                    protected.watch_failed(err.to_string());
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(pairs: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn reads_settings_and_mode() {
        let (settings, mode) = parse(&cm(&[
            (SETTINGS_KEY, "failureThreshold: 7\n"),
            (MODE_KEY, "ForceOpen"),
        ]))
        .unwrap();
        assert_eq!(settings.failure_threshold, 7);
        assert_eq!(mode, Mode::ForceOpen);
        let (_, mode) = parse(&cm(&[(SETTINGS_KEY, "{}")])).unwrap();
        assert_eq!(mode, Mode::Auto);
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(
            parse(&cm(&[])).unwrap_err().to_string(),
            "ConfigMap has no \"breaker.yaml\" key"
        );
        let err = parse(&cm(&[(SETTINGS_KEY, "failureTreshold: 3")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("breaker.yaml: failureTreshold"), "{err}");
        let err = parse(&cm(&[(SETTINGS_KEY, "{}"), (MODE_KEY, "Open")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("mode: mode: \"Open\" is not one of"),
            "{err}"
        );
    }
}
