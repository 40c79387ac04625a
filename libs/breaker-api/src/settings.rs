//! BreakerSettings on the wire: the v2 gateway's YAML file, the ConfigMap payload and the
//! BreakerPolicy's `spec.settings`. Every key is optional; the defaults are the engine's.

use std::time::Duration;

use breaker::{limits, Settings, SettingsError, SettingsSpec};
pub use breaker::{Mode, Scope};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Settings as written by people: camelCase keys, durations such as `250ms` or `1m30s`.
/// Turn them into the engine's [`Settings`] with [`BreakerSettings::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[schemars(transform = name_duration_grammar)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit.
    #[schemars(range(min = *limits::FAILURE_THRESHOLD.start(), max = *limits::FAILURE_THRESHOLD.end()))]
    pub failure_threshold: u32,
    /// Failure percentage over the sliding window that opens the circuit; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = *limits::PERCENT.start(), max = *limits::PERCENT.end()))]
    pub failure_rate_threshold: Option<f64>,
    /// Number of most recent calls the rates are computed over.
    #[schemars(range(min = *limits::SLIDING_WINDOW_SIZE.start(), max = *limits::SLIDING_WINDOW_SIZE.end()))]
    pub sliding_window_size: u32,
    /// Calls the window must hold before a rate can open the circuit (capped at the window size).
    #[schemars(range(min = *limits::MINIMUM_CALLS.start(), max = *limits::MINIMUM_CALLS.end()))]
    pub minimum_calls: u32,
    /// Calls slower than this count as slow; off when absent.
    #[serde(
        with = "duration_text::serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DurationText>")]
    pub slow_call_duration: Option<Duration>,
    /// Slow-call percentage over the window that opens the circuit (needs `slowCallDuration`).
    #[schemars(range(min = *limits::PERCENT.start(), max = *limits::PERCENT.end()))]
    pub slow_call_rate_threshold: f64,
    /// How long one call to the dependency may take before it counts as failed.
    #[serde(with = "duration_text::serde")]
    #[schemars(with = "DurationText")]
    pub call_timeout: Duration,
    /// How long a user waits for a call: past it they get the fallback while the call runs on
    /// to `callTimeout` and is judged. Off when absent: the user waits up to `callTimeout`.
    #[serde(
        with = "duration_text::serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DurationText>")]
    pub fallback_after: Option<Duration>,
    /// How long the circuit stays open before it lets probes through.
    #[serde(with = "duration_text::serde")]
    #[schemars(with = "DurationText")]
    pub open_duration: Duration,
    /// Cap of the open duration, doubled after each failed probe; equal to `openDuration`
    /// (no backoff) when absent.
    #[serde(
        with = "duration_text::serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DurationText>")]
    pub max_open_duration: Option<Duration>,
    /// Probes admitted while half-open; that many successes close the circuit.
    #[schemars(range(min = *limits::HALF_OPEN_MAX_CALLS.start(), max = *limits::HALF_OPEN_MAX_CALLS.end()))]
    pub half_open_max_calls: u32,
    /// Bulkhead: calls to the dependency in flight at once; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = *limits::MAX_CONCURRENT_CALLS.start(), max = *limits::MAX_CONCURRENT_CALLS.end()))]
    pub max_concurrent_calls: Option<u32>,
    /// Service: one breaker for the whole service. Endpoint: besides it, one per endpoint,
    /// and a failing endpoint is taken out of rotation while the others serve.
    pub scope: Scope,
    /// With scope Endpoint: the largest share of endpoints out of rotation at once (one
    /// always stays).
    #[schemars(range(min = *limits::MAX_EJECTION_PERCENT.start(), max = *limits::MAX_EJECTION_PERCENT.end()))]
    pub max_ejection_percent: u32,
    /// Tries after the first of a call that failed or timed out, within its call timeout and
    /// the retry budget; 0: none.
    #[schemars(range(min = *limits::MAX_RETRIES.start(), max = *limits::MAX_RETRIES.end()))]
    pub max_retries: u32,
    /// The retry budget's share: retries may add at most this percentage of the requests of
    /// the last 10 s (plus `minRetriesPerSecond`); a retry past the budget is not made.
    #[schemars(range(min = *limits::PERCENT.start(), max = *limits::PERCENT.end()))]
    pub retry_budget_percent: f64,
    /// The retry budget's floor: retries allowed each second on top of `retryBudgetPercent`,
    /// so a quiet service can still retry.
    #[schemars(range(min = *limits::MIN_RETRIES_PER_SECOND.start(), max = *limits::MIN_RETRIES_PER_SECOND.end()))]
    pub min_retries_per_second: u32,
    /// Backoff before a retry: a random share of this, doubled each retry ("full jitter").
    #[serde(with = "duration_text::serde")]
    #[schemars(with = "DurationText")]
    pub retry_backoff: Duration,
    /// Adaptive concurrency limit (AIMD) on the calls in flight: its largest value (where it
    /// starts); off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = *limits::MAX_CONCURRENT_CALLS.start(), max = *limits::MAX_CONCURRENT_CALLS.end()))]
    pub adaptive_limit_max: Option<u32>,
    /// The adaptive concurrency limit's smallest value, however slow calls get (capped at
    /// `adaptiveLimitMax`; unused without it).
    #[schemars(range(min = *limits::MAX_CONCURRENT_CALLS.start(), max = *limits::MAX_CONCURRENT_CALLS.end()))]
    pub adaptive_limit_min: u32,
    /// A call slower than this tells the limit the dependency is queueing: it shrinks by a
    /// tenth (a quick call with the limit in use raises it by one).
    #[serde(with = "duration_text::serde")]
    #[schemars(with = "DurationText")]
    pub adaptive_limit_latency: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self::from(&SettingsSpec::default())
    }
}

/// Both conversions between the wire and the engine's spec, from one list of their common
/// fields (a field missing from either type, or from the list, does not compile).
macro_rules! same_fields {
    ($a:ty, $b:ty: $($field:ident),* $(,)?) => {
        impl From<&$a> for $b {
            fn from(s: &$a) -> Self {
                Self { $($field: s.$field.into()),* }
            }
        }
        impl From<&$b> for $a {
            fn from(s: &$b) -> Self {
                Self { $($field: s.$field.into()),* }
            }
        }
    };
}

same_fields!(SettingsSpec, BreakerSettings:
    failure_threshold,
    failure_rate_threshold,
    sliding_window_size,
    minimum_calls,
    slow_call_duration,
    slow_call_rate_threshold,
    call_timeout,
    fallback_after,
    open_duration,
    max_open_duration,
    half_open_max_calls,
    max_concurrent_calls,
    scope,
    max_ejection_percent,
    max_retries,
    retry_budget_percent,
    min_retries_per_second,
    retry_backoff,
    adaptive_limit_max,
    adaptive_limit_min,
    adaptive_limit_latency,
);

impl BreakerSettings {
    /// Parses and validates a YAML (or JSON, a YAML subset) settings document.
    pub fn parse_yaml(text: &str) -> Result<Settings, SettingsError> {
        Self::from_yaml(text)?.validate()
    }

    /// Reads a YAML document without checking the rules; errors name the key.
    pub fn from_yaml(text: &str) -> Result<Self, SettingsError> {
        if text.trim().is_empty() {
            return Err(SettingsError::new("(document)", "is empty"));
        }
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|err| {
            let message = err.inner().to_string();
            let path = err.path().to_string();
            // ".", "" and "?" are serde_path_to_error's words for "no key could be read here".
            let key = if matches!(path.as_str(), "." | "" | "?") {
                unknown_field_name(&message)
            } else {
                path
            };
            SettingsError::new(key, message)
        })
    }

    /// The engine's settings, if every rule holds.
    pub fn validate(&self) -> Result<Settings, SettingsError> {
        Settings::new(self.into())
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("BreakerSettings serialize")
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

/// Durations as whole numbers with units, which Go's `time.ParseDuration` (the API server's
/// CEL `duration()`) reads as we do.
pub const DURATION_PATTERN: &str = duration_text::PATTERN;

/// How durations are written, said in every duration field's description (a field's own
/// doc replaces its type's).
const DURATION_GRAMMAR: &str =
    "A duration: whole numbers with units ns, us, ms, s, m, h, such as `250ms`, `2s`, `1m30s`";

fn name_duration_grammar(schema: &mut schemars::Schema) {
    let range = limits::duration_range_text();
    let Some(properties) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for property in properties.values_mut() {
        let Some(property) = property.as_object_mut() else {
            continue;
        };
        if property.get("pattern").and_then(|p| p.as_str()) != Some(DURATION_PATTERN) {
            continue;
        }
        let own = property
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or_default();
        let described = format!("{own}\n{DURATION_GRAMMAR}; between {range}.");
        property.insert("description".into(), described.trim_start().into());
    }
}

/// How durations look in the schema.
struct DurationText;

impl JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DurationText".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let (min, max) = (*limits::DURATION.start(), *limits::DURATION.end());
        // The rule is a Kubernetes extension (other JSON Schema readers ignore it): it lets the
        // API server check the range the engine checks.
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
            "description": DURATION_GRAMMAR,
            "x-kubernetes-validations": [{
                "rule": format!(
                    "!self.matches('{DURATION_PATTERN}') || (duration(self) >= duration('{}') && duration(self) <= duration('{}'))",
                    duration_text::format(min), duration_text::format(max)
                ),
                "message": format!("must be between {}", limits::duration_range_text()),
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_engine_defaults() {
        let s = BreakerSettings::parse_yaml("{}").unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(BreakerSettings::default(), BreakerSettings::from(s.spec()));
    }

    #[test]
    fn parses_camel_case_and_human_durations() {
        let s = BreakerSettings::parse_yaml(
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
        let text = s.to_yaml();
        assert!(text.contains("callTimeout: 2s"), "{text}");
        assert_eq!(BreakerSettings::from_yaml(&text).unwrap(), s);
    }

    fn key_of(doc: &str) -> String {
        BreakerSettings::parse_yaml(doc).unwrap_err().key
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
        let err = BreakerSettings::parse_yaml("openDuration: 5").unwrap_err();
        assert!(err.to_string().starts_with("openDuration: "), "{err}");
    }

    #[test]
    fn mode_parses_the_configmap_spelling_and_names_bad_values() {
        assert_eq!("ForceOpen".parse::<Mode>().unwrap(), Mode::ForceOpen);
        assert_eq!(" Auto\n".parse::<Mode>().unwrap(), Mode::Auto);
        let err = "forceopen".parse::<Mode>().unwrap_err();
        assert_eq!(err.key, "mode");
        assert!(err.message.contains("Auto, ForceOpen, ForceClosed"));
    }
}
