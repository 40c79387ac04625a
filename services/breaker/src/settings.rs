use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The one settings type: the v2 gateway's YAML file, the ConfigMap payload and the
/// BreakerPolicy's `spec.settings` all deserialize into it. Every key is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit.
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: u32,
    /// Failure percentage over the sliding window that opens the circuit; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_rate_threshold: Option<f64>,
    /// Number of most recent calls the rates are computed over.
    #[schemars(range(min = 1, max = 10000))]
    pub sliding_window_size: u32,
    /// Calls the window must hold before a rate can open the circuit (capped at the window size).
    #[schemars(range(min = 1, max = 10000))]
    pub minimum_calls: u32,
    /// Calls slower than this count as slow; off when absent.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<DurationText>")]
    pub slow_call_duration: Option<Duration>,
    /// Slow-call percentage over the window that opens the circuit (needs `slowCallDuration`).
    #[schemars(range(min = 1, max = 100))]
    pub slow_call_rate_threshold: f64,
    /// How long one call to the dependency may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationText")]
    pub call_timeout: Duration,
    /// How long the circuit stays open before it lets probes through.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationText")]
    pub open_duration: Duration,
    /// Cap of the open duration, doubled after each failed probe; equal to `openDuration`
    /// (no backoff) when absent.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<DurationText>")]
    pub max_open_duration: Option<Duration>,
    /// Probes admitted while half-open; that many successes close the circuit.
    #[schemars(range(min = 1, max = 1000))]
    pub half_open_max_calls: u32,
    /// Bulkhead: calls to the dependency in flight at once; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_concurrent_calls: Option<u32>,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            failure_rate_threshold: None,
            sliding_window_size: 20,
            minimum_calls: 10,
            slow_call_duration: None,
            slow_call_rate_threshold: 100.0,
            call_timeout: Duration::from_secs(2),
            open_duration: Duration::from_secs(5),
            max_open_duration: None,
            half_open_max_calls: 1,
            max_concurrent_calls: None,
        }
    }
}

/// How durations look in the schema: whole numbers with units, a form both humantime (here)
/// and Go's `time.ParseDuration` (the API server's CEL `duration()`) read the same way.
pub struct DurationText;

pub const DURATION_PATTERN: &str = "^([0-9]+(ns|us|ms|s|m|h))+$";

impl JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DurationText".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // The rule is a Kubernetes extension (other JSON Schema readers ignore it): it lets the
        // API server check the range `validate` checks, in the same words.
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
            "description": "A duration such as 250ms, 2s, 1m30s",
            "x-kubernetes-validations": [{
                "rule": format!("!self.matches('{DURATION_PATTERN}') || (duration(self) >= duration('1ms') && duration(self) <= duration('24h'))"),
                "message": "must be between 1ms and 24h"
            }]
        })
    }
}

/// A settings document that cannot be used, naming the offending key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{key}: {message}")]
pub struct SettingsError {
    /// The camelCase key (or path) at fault; `(document)` when the whole document is.
    pub key: String,
    pub message: String,
}

impl SettingsError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

impl BreakerSettings {
    /// Parses and validates a YAML (or JSON, a YAML subset) settings document.
    pub fn from_yaml(text: &str) -> Result<Self, SettingsError> {
        if text.trim().is_empty() {
            return Err(SettingsError::new("(document)", "is empty"));
        }
        let de = serde_yaml::Deserializer::from_str(text);
        let settings: Self = serde_path_to_error::deserialize(de).map_err(|err| {
            let message = err.inner().to_string();
            let path = err.path().to_string();
            // ".", "" and "?" are serde_path_to_error's words for "no key could be read here".
            let key = if matches!(path.as_str(), "." | "" | "?") {
                unknown_field_name(&message)
            } else {
                path
            };
            SettingsError::new(key, message)
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges and the rules between keys.
    pub fn validate(&self) -> Result<(), SettingsError> {
        int_range("failureThreshold", self.failure_threshold, 1, 1000)?;
        if let Some(rate) = self.failure_rate_threshold {
            percent("failureRateThreshold", rate)?;
        }
        int_range("slidingWindowSize", self.sliding_window_size, 1, 10_000)?;
        int_range("minimumCalls", self.minimum_calls, 1, 10_000)?;
        if let Some(slow) = self.slow_call_duration {
            duration_range("slowCallDuration", slow)?;
        }
        percent("slowCallRateThreshold", self.slow_call_rate_threshold)?;
        duration_range("callTimeout", self.call_timeout)?;
        duration_range("openDuration", self.open_duration)?;
        if self.call_timeout >= self.open_duration {
            return Err(SettingsError::new(
                "callTimeout",
                format!(
                    "must be shorter than openDuration ({}), or the circuit re-opens before a probe can answer",
                    humantime::format_duration(self.open_duration)
                ),
            ));
        }
        if let Some(max) = self.max_open_duration {
            duration_range("maxOpenDuration", max)?;
            if max < self.open_duration {
                return Err(SettingsError::new(
                    "maxOpenDuration",
                    format!(
                        "must not be shorter than openDuration ({})",
                        humantime::format_duration(self.open_duration)
                    ),
                ));
            }
        }
        int_range("halfOpenMaxCalls", self.half_open_max_calls, 1, 1000)?;
        if let Some(max) = self.max_concurrent_calls {
            int_range("maxConcurrentCalls", max, 1, 100_000)?;
        }
        Ok(())
    }

    /// Calls a rate needs before it may open the circuit.
    pub(crate) fn effective_minimum_calls(&self) -> u32 {
        self.minimum_calls.min(self.sliding_window_size)
    }

    /// Open duration after `failed_probes` consecutive failed probes: doubled each time, capped.
    pub(crate) fn open_duration_after(&self, failed_probes: u32) -> Duration {
        let cap = self
            .max_open_duration
            .unwrap_or(self.open_duration)
            .max(self.open_duration);
        let factor = 1u32.checked_shl(failed_probes.min(31)).unwrap_or(u32::MAX);
        self.open_duration.saturating_mul(factor).min(cap)
    }
}

fn unknown_field_name(message: &str) -> String {
    match message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        // `: 3` or `"": 3` (found by the settings-parser property test)
        Some("") => "(empty key)".to_string(),
        Some(name) => name.to_string(),
        None => "(document)".to_string(),
    }
}

fn int_range(key: &str, value: u32, min: u32, max: u32) -> Result<(), SettingsError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(SettingsError::new(
            key,
            format!("{value} is out of range {min}..={max}"),
        ))
    }
}

fn percent(key: &str, value: f64) -> Result<(), SettingsError> {
    if value.is_finite() && value > 0.0 && value <= 100.0 {
        Ok(())
    } else {
        Err(SettingsError::new(
            key,
            format!("{value} must be a percentage above 0 and at most 100"),
        ))
    }
}

fn duration_range(key: &str, value: Duration) -> Result<(), SettingsError> {
    if value < Duration::from_millis(1) || value > MAX_DURATION {
        Err(SettingsError::new(
            key,
            format!(
                "{} must be between 1ms and 24h",
                humantime::format_duration(value)
            ),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let s = BreakerSettings::from_yaml("{}").unwrap();
        assert_eq!(s, BreakerSettings::default());
        assert_eq!(s.failure_threshold, 3);
        assert_eq!(s.call_timeout, Duration::from_secs(2));
        assert_eq!(s.open_duration, Duration::from_secs(5));
    }

    #[test]
    fn parses_camel_case_and_human_durations() {
        let s = BreakerSettings::from_yaml(
            "failureThreshold: 5\ncallTimeout: 250ms\nopenDuration: 1m\nmaxOpenDuration: 5m\nmaxConcurrentCalls: 8\nfailureRateThreshold: 50\n",
        )
        .unwrap();
        assert_eq!(s.failure_threshold, 5);
        assert_eq!(s.call_timeout, Duration::from_millis(250));
        assert_eq!(s.open_duration, Duration::from_secs(60));
        assert_eq!(s.max_open_duration, Some(Duration::from_secs(300)));
        assert_eq!(s.max_concurrent_calls, Some(8));
        assert_eq!(s.failure_rate_threshold, Some(50.0));
    }

    #[test]
    fn round_trips_through_yaml() {
        let s = BreakerSettings {
            slow_call_duration: Some(Duration::from_millis(1500)),
            max_concurrent_calls: Some(4),
            ..Default::default()
        };
        let text = serde_yaml::to_string(&s).unwrap();
        assert!(text.contains("callTimeout: 2s"), "{text}");
        assert_eq!(BreakerSettings::from_yaml(&text).unwrap(), s);
    }

    fn key_of(doc: &str) -> String {
        BreakerSettings::from_yaml(doc).unwrap_err().key
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(key_of("failureThreshold: 0"), "failureThreshold");
        assert_eq!(key_of("failureThreshold: -1"), "failureThreshold");
        assert_eq!(key_of("failureThreshold: lots"), "failureThreshold");
        assert_eq!(key_of("callTimeout: soon"), "callTimeout");
        assert_eq!(key_of("callTimeout: 0s"), "callTimeout");
        assert_eq!(key_of("callTimeout: 10s\nopenDuration: 5s"), "callTimeout");
        assert_eq!(key_of("maxOpenDuration: 1s"), "maxOpenDuration");
        assert_eq!(key_of("failureRateThreshold: 101"), "failureRateThreshold");
        assert_eq!(key_of("halfOpenMaxCalls: 0"), "halfOpenMaxCalls");
        assert_eq!(key_of("maxConcurrentCalls: 0"), "maxConcurrentCalls");
        assert_eq!(key_of("failureTreshold: 3"), "failureTreshold");
        assert_eq!(key_of(""), "(document)");
        assert_eq!(key_of("- 1\n- 2"), "(document)");
        // an explicit key with nothing in it (found by the settings-parser property test)
        assert_eq!(key_of("?"), "(empty key)");
        assert_eq!(key_of("? : 1"), "(document)");
        assert_eq!(key_of(": 3"), "(document)");
        let err = BreakerSettings::from_yaml("openDuration: 5").unwrap_err();
        assert!(err.to_string().starts_with("openDuration: "), "{err}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = BreakerSettings {
            open_duration: Duration::from_secs(5),
            max_open_duration: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        let got: Vec<u64> = (0..6).map(|n| s.open_duration_after(n).as_secs()).collect();
        assert_eq!(got, [5, 10, 20, 30, 30, 30]);
        assert_eq!(
            BreakerSettings::default().open_duration_after(40),
            Duration::from_secs(5)
        );
    }
}
