//! The one place settings updates are applied to v2's breaker. [`ConfigState`] is a small
//! state machine (what is in force, what went wrong) that decides; the task in [`spawn`] only
//! carries its decisions out.

use std::sync::Arc;

use breaker::{Mode, Settings};
use parking_lot::Mutex;
use service_runtime::ReadinessGate;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::guard::Guard;
use crate::sources::Update;

const NO_POLICY: &str =
    "no BreakerPolicy settings in the ConfigMap: keeping the settings in force, mode Auto";

/// What the breaker should do about an update.
#[derive(Debug, Clone, PartialEq)]
// One a settings change, moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Effect {
    /// New settings and mode.
    Apply(Settings, Mode),
    /// The override ends (mode Auto); the settings stay.
    EndOverride,
    /// Nothing changes for the breaker.
    Keep,
}

/// What the gateway last looked at, so one bad version is reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Version(String),
    NoPolicy,
}

/// Where the settings in force came from and what is wrong, as `/circuit-status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigStatus {
    pub source: String,
    /// Version of the settings in force.
    pub version: String,
    /// Why the latest content is not in force; `None` when it is.
    pub error: Option<String>,
    /// Why the source cannot be read right now (API unreachable); cleared on recovery.
    pub watch_error: Option<String>,
}

#[derive(Debug)]
pub struct ConfigState {
    status: ConfigStatus,
    seen: Seen,
    /// Whether the source has said what the settings are (a ConfigMap: its first answer).
    loaded: bool,
}

impl ConfigState {
    pub fn new(source: String, version: String, loaded: bool) -> Self {
        Self {
            seen: Seen::Version(version.clone()),
            status: ConfigStatus {
                source,
                version,
                error: None,
                watch_error: None,
            },
            loaded,
        }
    }

    pub fn status(&self) -> &ConfigStatus {
        &self.status
    }

    pub fn loaded(&self) -> bool {
        self.loaded
    }

    /// Takes one update; returns what the breaker must do.
    pub fn on(&mut self, update: Update) -> Effect {
        match update {
            Update::Content { version, parsed } => {
                self.loaded = true;
                let seen = Seen::Version(version.clone());
                if self.seen == seen {
                    return Effect::Keep;
                }
                self.seen = seen;
                match parsed {
                    Ok((settings, mode)) => {
                        tracing::info!(version = %version, source = %self.status.source, mode = mode.as_str(), "breaker settings applied");
                        self.status.version = version;
                        self.status.error = None;
                        Effect::Apply(settings, mode)
                    }
                    Err(error) => {
                        tracing::warn!(%error, version = %self.status.version, "settings rejected; keeping the settings in force");
                        self.status.error = Some(error);
                        Effect::Keep
                    }
                }
            }
            Update::NoPolicy => {
                self.loaded = true;
                if self.seen != Seen::NoPolicy {
                    tracing::warn!(source = %self.status.source, "{NO_POLICY}");
                    self.seen = Seen::NoPolicy;
                }
                self.status.error = Some(NO_POLICY.into());
                Effect::EndOverride
            }
            Update::SourceFailed(error) => {
                self.status.watch_error = Some(error);
                Effect::Keep
            }
            Update::SourceResumed => {
                self.status.watch_error = None;
                Effect::Keep
            }
        }
    }
}

/// Applies updates to the breaker until the sources stop; opens `loaded` once the settings
/// are known.
pub fn spawn(
    state: Arc<Mutex<ConfigState>>,
    mut updates: UnboundedReceiver<Update>,
    guard: Arc<Guard>,
    loaded: ReadinessGate,
) {
    if state.lock().loaded() {
        loaded.set_ready();
    }
    actix_web::rt::spawn(async move {
        while let Some(update) = updates.recv().await {
            let (effect, is_loaded, status_moved) = {
                let mut state = state.lock();
                let before = state.status().clone();
                let effect = state.on(update);
                (effect, state.loaded(), *state.status() != before)
            };
            let changed = !matches!(effect, Effect::Keep) || status_moved;
            match effect {
                Effect::Apply(settings, mode) => guard.apply(settings, mode),
                Effect::EndOverride => guard.apply_mode(Mode::Auto),
                Effect::Keep => {}
            }
            // New settings, or what /circuit-status says of them (a version, an error): tell
            // whoever waits on it.
            if changed {
                guard.revision().bump();
            }
            if is_loaded {
                loaded.set_ready();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use breaker::SettingsSpec;

    use super::*;

    fn settings(threshold: u32) -> Settings {
        Settings::new(SettingsSpec {
            failure_threshold: threshold,
            ..SettingsSpec::default()
        })
        .unwrap()
    }

    fn content(version: &str, parsed: Result<(Settings, Mode), &str>) -> Update {
        Update::Content {
            version: version.into(),
            parsed: parsed.map_err(String::from),
        }
    }

    fn configmap_state() -> ConfigState {
        ConfigState::new("configmap:demo/x".into(), "defaults".into(), false)
    }

    #[test]
    fn good_content_applies_once_per_version() {
        let mut state = configmap_state();
        assert!(!state.loaded());
        let update = content("7", Ok((settings(5), Mode::ForceOpen)));
        assert_eq!(
            state.on(update.clone()),
            Effect::Apply(settings(5), Mode::ForceOpen)
        );
        assert!(state.loaded());
        assert_eq!(state.status().version, "7");
        assert_eq!(state.on(update), Effect::Keep);
    }

    #[test]
    fn bad_content_keeps_the_settings_and_is_reported_until_good_content() {
        let mut state = configmap_state();
        state.on(content("1", Ok((settings(5), Mode::Auto))));
        assert_eq!(state.on(content("2", Err("breaker.yaml: x"))), Effect::Keep);
        assert_eq!(state.status().version, "1");
        assert_eq!(state.status().error.as_deref(), Some("breaker.yaml: x"));
        assert!(matches!(
            state.on(content("3", Ok((settings(6), Mode::Auto)))),
            Effect::Apply(..)
        ));
        assert_eq!(state.status().error, None);
    }

    #[test]
    fn no_policy_ends_the_override_and_says_so_until_settings_return() {
        let mut state = configmap_state();
        state.on(content("1", Ok((settings(5), Mode::ForceOpen))));
        assert_eq!(state.on(Update::NoPolicy), Effect::EndOverride);
        assert_eq!(state.on(Update::NoPolicy), Effect::EndOverride);
        assert_eq!(state.status().version, "1");
        assert!(state
            .status()
            .error
            .as_deref()
            .unwrap()
            .starts_with("no BreakerPolicy"));
        // the same version again after NoPolicy is new content
        assert!(matches!(
            state.on(content("1", Ok((settings(5), Mode::ForceOpen)))),
            Effect::Apply(..)
        ));
        assert_eq!(state.status().error, None);
    }

    #[test]
    fn an_unreachable_source_is_reported_and_cleared_without_touching_the_breaker() {
        let mut state = configmap_state();
        assert_eq!(
            state.on(Update::SourceFailed("connection refused".into())),
            Effect::Keep
        );
        assert!(!state.loaded(), "an outage is not an answer");
        assert_eq!(
            state.status().watch_error.as_deref(),
            Some("connection refused")
        );
        assert_eq!(state.on(Update::SourceResumed), Effect::Keep);
        assert_eq!(state.status().watch_error, None);
    }

    #[test]
    fn a_file_is_loaded_from_the_start() {
        let state = ConfigState::new("file:/x".into(), "ab12".into(), true);
        assert!(state.loaded());
        assert_eq!(state.status().version, "ab12");
    }
}
