//! The breaker's settings: a plain [`SettingsSpec`] anyone can fill in, and [`Settings`], which
//! only [`Settings::new`] can make, so the breaker never runs on settings nobody checked.
//!
//! Every rule is written here once: the ranges in [`limits`], the rules between keys in
//! [`Settings::new`]. The API crate derives its schema and CEL rules from these, and a test
//! there fails when the two disagree.

use std::ops::{Deref, RangeInclusive};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The bounds of each setting, by its camelCase name.
pub mod limits {
    use std::ops::RangeInclusive;
    use std::time::Duration;

    pub const FAILURE_THRESHOLD: RangeInclusive<u32> = 1..=1000;
    pub const SLIDING_WINDOW_SIZE: RangeInclusive<u32> = 1..=10_000;
    pub const MINIMUM_CALLS: RangeInclusive<u32> = 1..=10_000;
    pub const HALF_OPEN_MAX_CALLS: RangeInclusive<u32> = 1..=1000;
    pub const MAX_CONCURRENT_CALLS: RangeInclusive<u32> = 1..=100_000;
    /// maxEjectionPercent (one endpoint always stays, whatever it says).
    pub const MAX_EJECTION_PERCENT: RangeInclusive<u32> = 1..=100;
    /// maxRetries: immediate tries after the first, budget allowing.
    pub const MAX_RETRIES: RangeInclusive<u32> = 0..=10;
    /// minRetriesPerSecond: the budget's floor.
    pub const MIN_RETRIES_PER_SECOND: RangeInclusive<u32> = 0..=10_000;
    /// Every percentage: failureRateThreshold, slowCallRateThreshold, retryBudgetPercent.
    pub const PERCENT: RangeInclusive<f64> = 1.0..=100.0;
    /// Every duration.
    pub const DURATION: RangeInclusive<Duration> =
        Duration::from_millis(1)..=Duration::from_secs(24 * 3600);

    /// "1ms and 24h": the duration range in words, for messages.
    pub fn duration_range_text() -> String {
        format!(
            "{} and {}",
            duration_text::format(*DURATION.start()),
            duration_text::format(*DURATION.end())
        )
    }
}

/// What one breaker guards, spelled on the wire as named here. `Service`: one breaker for every
/// call to the service (the seed's, and the default: it is all a service behind one address
/// can have). `Endpoint`: besides it, one breaker per endpoint, so a failing endpoint is taken
/// out of rotation (outlier ejection) and the others keep serving.
// (The variants carry no doc comments: schemars would turn them into a `oneOf`, where the
// schema wants a plain `enum`.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(inline))]
pub enum Scope {
    #[default]
    Service,
    Endpoint,
}

/// Settings as given, unchecked; [`Default`] holds the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsSpec {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// Failure percentage over the sliding window that opens the circuit; off when `None`.
    pub failure_rate_threshold: Option<f64>,
    /// Number of most recent calls the rates are computed over.
    pub sliding_window_size: u32,
    /// Calls the window must hold before a rate can open the circuit (capped at the window size).
    pub minimum_calls: u32,
    /// Calls slower than this count as slow; off when `None`.
    pub slow_call_duration: Option<Duration>,
    /// Slow-call percentage over the window that opens the circuit (needs `slow_call_duration`).
    pub slow_call_rate_threshold: f64,
    /// How long one call to the dependency may take before it counts as failed.
    pub call_timeout: Duration,
    /// How long a user waits for a call: past it they get the fallback while the call runs on
    /// to `call_timeout` and is judged. `None`: the user waits the call out.
    pub fallback_after: Option<Duration>,
    /// How long the circuit stays open before it lets probes through.
    pub open_duration: Duration,
    /// Cap of the open duration, doubled after each failed probe; `open_duration` when `None`.
    pub max_open_duration: Option<Duration>,
    /// Probes admitted while half-open; that many successes close the circuit.
    pub half_open_max_calls: u32,
    /// Bulkhead: calls to the dependency in flight at once; off when `None`.
    pub max_concurrent_calls: Option<u32>,
    /// Service, or per endpoint as well.
    pub scope: Scope,
    /// With `Endpoint` scope: the largest share of endpoints out of rotation at once.
    pub max_ejection_percent: u32,
    /// Tries after the first of a call that failed or timed out, within its call timeout and
    /// the retry budget; 0: none.
    pub max_retries: u32,
    /// The retry budget: retries at most this percentage of the requests of the last 10 s…
    pub retry_budget_percent: f64,
    /// …plus this many a second.
    pub min_retries_per_second: u32,
    /// Backoff before a retry: a random share of this, doubled each retry ("full jitter").
    pub retry_backoff: Duration,
    /// Adaptive concurrency limit (AIMD) on the calls in flight: its largest value; off when
    /// `None`.
    pub adaptive_limit_max: Option<u32>,
    /// Its smallest value (capped at the largest).
    pub adaptive_limit_min: u32,
    /// A call slower than this tells the limit the dependency is queueing.
    pub adaptive_limit_latency: Duration,
}

impl Default for SettingsSpec {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            failure_rate_threshold: None,
            sliding_window_size: 20,
            minimum_calls: 10,
            slow_call_duration: None,
            slow_call_rate_threshold: 100.0,
            call_timeout: Duration::from_secs(2),
            fallback_after: None,
            open_duration: Duration::from_secs(5),
            max_open_duration: None,
            half_open_max_calls: 1,
            max_concurrent_calls: None,
            scope: Scope::Service,
            max_ejection_percent: 50,
            max_retries: 0,
            retry_budget_percent: 20.0,
            min_retries_per_second: 10,
            retry_backoff: Duration::from_millis(25),
            adaptive_limit_max: None,
            adaptive_limit_min: 1,
            adaptive_limit_latency: Duration::from_millis(250),
        }
    }
}

/// Settings that passed every rule. Read them through [`Deref`] to [`SettingsSpec`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings(SettingsSpec);

impl Deref for Settings {
    type Target = SettingsSpec;

    fn deref(&self) -> &SettingsSpec {
        &self.0
    }
}

impl TryFrom<SettingsSpec> for Settings {
    type Error = SettingsError;

    fn try_from(spec: SettingsSpec) -> Result<Self, SettingsError> {
        Settings::new(spec)
    }
}

/// A setting that cannot be used, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{key}: {message}")]
pub struct SettingsError {
    /// The camelCase key (or path) at fault; `(document)` when the whole document is.
    pub key: String,
    pub message: String,
}

impl SettingsError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A rule between two durations of the settings: `shorter` must be shorter than `longer` (or
/// no longer, if `may_equal`) when both are set. [`Settings::new`] checks it; the API crate
/// writes it as the API server's CEL.
#[derive(Debug, Clone, Copy)]
pub struct OrderRule {
    pub shorter: &'static str,
    pub longer: &'static str,
    pub may_equal: bool,
    /// Why, for the message.
    pub why: &'static str,
    /// The key an error names: the one a person most likely set wrong.
    pub blames_longer: bool,
    values: fn(&SettingsSpec) -> (Option<Duration>, Option<Duration>),
}

pub const ORDER_RULES: &[OrderRule] = &[
    OrderRule {
        shorter: "fallbackAfter",
        longer: "callTimeout",
        may_equal: false,
        why: "or it never comes first",
        blames_longer: false,
        values: |s| (s.fallback_after, Some(s.call_timeout)),
    },
    OrderRule {
        shorter: "callTimeout",
        longer: "openDuration",
        may_equal: false,
        why: "or the circuit re-opens before a probe can answer",
        blames_longer: false,
        values: |s| (Some(s.call_timeout), Some(s.open_duration)),
    },
    OrderRule {
        shorter: "openDuration",
        longer: "maxOpenDuration",
        may_equal: true,
        why: "or the open time would shrink",
        blames_longer: true,
        values: |s| (Some(s.open_duration), s.max_open_duration),
    },
];

impl OrderRule {
    fn check(&self, spec: &SettingsSpec) -> Result<(), SettingsError> {
        let (Some(shorter), Some(longer)) = (self.values)(spec) else {
            return Ok(());
        };
        if shorter < longer || (self.may_equal && shorter == longer) {
            return Ok(());
        }
        let (key, relation, other, value) = match (self.blames_longer, self.may_equal) {
            (false, false) => (self.shorter, "must be shorter than", self.longer, longer),
            (false, true) => (self.shorter, "must not be longer than", self.longer, longer),
            (true, false) => (self.longer, "must be longer than", self.shorter, shorter),
            (true, true) => (
                self.longer,
                "must not be shorter than",
                self.shorter,
                shorter,
            ),
        };
        Err(SettingsError::new(
            key,
            format!(
                "{relation} {other} ({}), {}",
                duration_text::format(value),
                self.why
            ),
        ))
    }

    /// A settings document giving the two keys these values, with room around them (the
    /// neighbouring keys set far apart), so that only this rule can refuse it: for tests.
    pub fn document(&self, shorter: &str, longer: &str) -> String {
        let mut doc = format!("{}: {shorter}\n{}: {longer}\n", self.shorter, self.longer);
        for (key, value) in [("callTimeout", "1ms"), ("openDuration", "24h")] {
            if key != self.shorter && key != self.longer {
                doc.push_str(&format!("{key}: {value}\n"));
            }
        }
        doc
    }
}

impl Settings {
    /// Checks ranges and the rules between keys.
    pub fn new(spec: SettingsSpec) -> Result<Self, SettingsError> {
        use limits::*;
        let s = &spec;
        in_range("failureThreshold", s.failure_threshold, &FAILURE_THRESHOLD)?;
        if let Some(rate) = s.failure_rate_threshold {
            percent("failureRateThreshold", rate)?;
        }
        in_range(
            "slidingWindowSize",
            s.sliding_window_size,
            &SLIDING_WINDOW_SIZE,
        )?;
        in_range("minimumCalls", s.minimum_calls, &MINIMUM_CALLS)?;
        if let Some(slow) = s.slow_call_duration {
            duration("slowCallDuration", slow)?;
        }
        percent("slowCallRateThreshold", s.slow_call_rate_threshold)?;
        duration("callTimeout", s.call_timeout)?;
        if let Some(wait) = s.fallback_after {
            duration("fallbackAfter", wait)?;
        }
        duration("openDuration", s.open_duration)?;
        if let Some(max) = s.max_open_duration {
            duration("maxOpenDuration", max)?;
        }
        for rule in ORDER_RULES {
            rule.check(s)?;
        }
        in_range(
            "halfOpenMaxCalls",
            s.half_open_max_calls,
            &HALF_OPEN_MAX_CALLS,
        )?;
        if let Some(max) = s.max_concurrent_calls {
            in_range("maxConcurrentCalls", max, &MAX_CONCURRENT_CALLS)?;
        }
        in_range(
            "maxEjectionPercent",
            s.max_ejection_percent,
            &MAX_EJECTION_PERCENT,
        )?;
        in_range("maxRetries", s.max_retries, &MAX_RETRIES)?;
        percent("retryBudgetPercent", s.retry_budget_percent)?;
        in_range(
            "minRetriesPerSecond",
            s.min_retries_per_second,
            &MIN_RETRIES_PER_SECOND,
        )?;
        duration("retryBackoff", s.retry_backoff)?;
        if let Some(max) = s.adaptive_limit_max {
            in_range("adaptiveLimitMax", max, &MAX_CONCURRENT_CALLS)?;
        }
        in_range(
            "adaptiveLimitMin",
            s.adaptive_limit_min,
            &MAX_CONCURRENT_CALLS,
        )?;
        duration("adaptiveLimitLatency", s.adaptive_limit_latency)?;
        Ok(Self(spec))
    }

    /// The settings as given, for showing them.
    pub fn spec(&self) -> &SettingsSpec {
        &self.0
    }

    /// The retry budget, when retries are on.
    pub fn retry_budget(&self) -> Option<crate::RetryBudgetSettings> {
        (self.max_retries > 0).then(|| crate::RetryBudgetSettings {
            ratio: self.retry_budget_percent / 100.0,
            min_per_second: self.min_retries_per_second,
        })
    }

    /// The adaptive limit's bounds, when it is on.
    pub fn adaptive_limit(&self) -> Option<crate::AdaptiveLimitSettings> {
        self.adaptive_limit_max
            .map(|max| crate::AdaptiveLimitSettings {
                min: self.adaptive_limit_min,
                max,
                slow_after: self.adaptive_limit_latency,
            })
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

/// `value` within `range`, or an error for `key` saying `why`.
fn within<T: PartialOrd>(
    key: &str,
    value: T,
    range: &RangeInclusive<T>,
    why: impl FnOnce() -> String,
) -> Result<(), SettingsError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(SettingsError::new(key, why()))
    }
}

fn in_range(key: &str, value: u32, range: &RangeInclusive<u32>) -> Result<(), SettingsError> {
    within(key, value, range, || {
        format!(
            "{value} is out of range {}..={}",
            range.start(),
            range.end()
        )
    })
}

fn percent(key: &str, value: f64) -> Result<(), SettingsError> {
    let range = limits::PERCENT;
    within(key, value, &range, || {
        format!(
            "{value} must be a percentage from {} to {}",
            range.start(),
            range.end()
        )
    })
}

fn duration(key: &str, value: Duration) -> Result<(), SettingsError> {
    within(key, value, &limits::DURATION, || {
        format!(
            "{} must be between {}",
            duration_text::format(value),
            limits::duration_range_text()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(spec: SettingsSpec) -> String {
        Settings::new(spec).unwrap_err().key
    }

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let s = Settings::new(SettingsSpec::default()).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.failure_threshold, 3);
        assert_eq!(s.call_timeout, Duration::from_secs(2));
        assert_eq!(s.open_duration, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_the_key() {
        let spec = SettingsSpec::default;
        assert_eq!(
            key_of(SettingsSpec {
                failure_threshold: 0,
                ..spec()
            }),
            "failureThreshold"
        );
        assert_eq!(
            key_of(SettingsSpec {
                call_timeout: Duration::from_secs(10),
                ..spec()
            }),
            "callTimeout"
        );
        assert_eq!(
            key_of(SettingsSpec {
                max_open_duration: Some(Duration::from_secs(1)),
                ..spec()
            }),
            "maxOpenDuration"
        );
        assert_eq!(
            key_of(SettingsSpec {
                failure_rate_threshold: Some(f64::NAN),
                ..spec()
            }),
            "failureRateThreshold"
        );
        assert_eq!(
            key_of(SettingsSpec {
                slow_call_rate_threshold: 0.5,
                ..spec()
            }),
            "slowCallRateThreshold"
        );
        assert_eq!(
            key_of(SettingsSpec {
                call_timeout: Duration::ZERO,
                ..spec()
            }),
            "callTimeout"
        );
        // The user's wait must end before the call's, or it is never the one that ends first.
        assert_eq!(
            key_of(SettingsSpec {
                fallback_after: Some(Duration::from_secs(2)),
                ..spec()
            }),
            "fallbackAfter"
        );
        assert!(Settings::new(SettingsSpec {
            fallback_after: Some(Duration::from_millis(1999)),
            ..spec()
        })
        .is_ok());
    }

    #[test]
    fn the_duration_range_reads_as_people_write_it() {
        assert_eq!(limits::duration_range_text(), "1ms and 24h");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Settings::new(SettingsSpec {
            open_duration: Duration::from_secs(5),
            max_open_duration: Some(Duration::from_secs(30)),
            ..Default::default()
        })
        .unwrap();
        let got: Vec<u64> = (0..6).map(|n| s.open_duration_after(n).as_secs()).collect();
        assert_eq!(got, [5, 10, 20, 30, 30, 30]);
        assert_eq!(
            Settings::default().open_duration_after(40),
            Duration::from_secs(5)
        );
    }
}
