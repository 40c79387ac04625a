//! The settings ConfigMap, both ends of it: breaker-controller writes [`data`], api-gateway-v2
//! reads it back with [`read`]. One module, so the writer and the reader cannot drift apart.

use std::collections::BTreeMap;
use std::str::FromStr;

use breaker::{Settings, SettingsError};
use k8s_openapi::api::core::v1::ConfigMap;

use crate::{BreakerSettings, Mode};

/// The key holding BreakerSettings as YAML.
pub const SETTINGS_KEY: &str = "breaker.yaml";
/// The key holding the mode: Auto, ForceOpen, ForceClosed or Observe.
pub const MODE_KEY: &str = "mode";

/// Why a ConfigMap's content cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContentError {
    /// No BreakerPolicy writes this ConfigMap (now).
    #[error("ConfigMap has no {SETTINGS_KEY:?} key")]
    NoSettings,
    #[error("{SETTINGS_KEY}: {0}")]
    Settings(SettingsError),
    #[error("{MODE_KEY}: {0}")]
    Mode(SettingsError),
}

/// The ConfigMap's `data` for these settings and mode.
pub fn data(settings: &BreakerSettings, mode: Mode) -> BTreeMap<String, String> {
    [
        (SETTINGS_KEY.to_string(), settings.to_yaml()),
        (MODE_KEY.to_string(), mode.as_str().to_string()),
    ]
    .into()
}

/// The settings and mode a ConfigMap holds; a missing mode is Auto.
pub fn read(cm: &ConfigMap) -> Result<(Settings, Mode), ContentError> {
    let data = cm.data.as_ref();
    let text = data
        .and_then(|d| d.get(SETTINGS_KEY))
        .ok_or(ContentError::NoSettings)?;
    let settings = BreakerSettings::parse_yaml(text).map_err(ContentError::Settings)?;
    let mode = match data.and_then(|d| d.get(MODE_KEY)) {
        Some(text) => Mode::from_str(text).map_err(ContentError::Mode)?,
        None => Mode::Auto,
    };
    Ok((settings, mode))
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
        let (settings, mode) = read(&cm(&[
            (SETTINGS_KEY, "failureThreshold: 7\n"),
            (MODE_KEY, "ForceOpen"),
        ]))
        .unwrap();
        assert_eq!(settings.failure_threshold, 7);
        assert_eq!(mode, breaker::Mode::ForceOpen);
        let (_, mode) = read(&cm(&[(SETTINGS_KEY, "{}")])).unwrap();
        assert_eq!(mode, breaker::Mode::Auto);
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(
            read(&cm(&[])).unwrap_err().to_string(),
            "ConfigMap has no \"breaker.yaml\" key"
        );
        let err = read(&cm(&[(SETTINGS_KEY, "failureTreshold: 3")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("breaker.yaml: failureTreshold"), "{err}");
        let err = read(&cm(&[(SETTINGS_KEY, "{}"), (MODE_KEY, "Open")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("mode: mode: \"Open\" is not one of"),
            "{err}"
        );
    }
}
