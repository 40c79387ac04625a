//! The one duration grammar of the project: whole numbers with units, `ns`, `us`, `ms`, `s`,
//! `m`, `h`, run together (`250ms`, `2s`, `1m30s`). Every service's environment, the settings
//! file, the ConfigMap and the BreakerPolicy CRD read it, and Go's `time.ParseDuration` (the
//! API server's CEL `duration()`) reads it the same way. The demo's Python reads the same
//! [`PATTERN`].

use std::time::Duration;

/// The grammar as a regular expression, for schemas.
pub const PATTERN: &str = "^([0-9]+(ns|us|ms|s|m|h))+$";

/// Longest to shortest, so the longest unit name is tried first (`ms` before `m`).
const UNITS: [(&str, Duration); 6] = [
    ("ns", Duration::from_nanos(1)),
    ("us", Duration::from_micros(1)),
    ("ms", Duration::from_millis(1)),
    ("h", Duration::from_secs(3600)),
    ("m", Duration::from_secs(60)),
    ("s", Duration::from_secs(1)),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration: whole numbers with units (ns, us, ms, s, m, h), such as 250ms, 2s or 1m30s")]
    Syntax(String),
    #[error("{0:?} is too long a duration")]
    Overflow(String),
}

/// Reads `250ms`, `2s`, `1m30s`; surrounding whitespace is ignored.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(text.to_string());
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(syntax());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(syntax());
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::Overflow(text.to_string()))?;
        rest = &rest[digits..];
        let (name, unit) = UNITS
            .iter()
            .find(|(name, _)| rest.starts_with(name))
            .ok_or_else(syntax)?;
        rest = &rest[name.len()..];
        // u64 times at most an hour in nanoseconds fits a u128.
        let nanos = u128::from(number) * unit.as_nanos();
        let secs = u64::try_from(nanos / 1_000_000_000)
            .map_err(|_| DurationError::Overflow(text.to_string()))?;
        let part = Duration::new(secs, (nanos % 1_000_000_000) as u32);
        total = total
            .checked_add(part)
            .ok_or_else(|| DurationError::Overflow(text.to_string()))?;
    }
    Ok(total)
}

/// Writes a duration in the grammar, largest units first: `1m30s`, `1s500ms`, `0s`.
pub fn format(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".into();
    }
    let mut nanos = duration.as_nanos();
    let mut text = String::new();
    for (name, unit) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        let count = nanos / unit;
        if count > 0 {
            text.push_str(&format!("{count}{name}"));
            nanos -= count * unit;
        }
    }
    text
}

/// `#[serde(with = "duration_text::serde")]` on a `Duration`.
pub mod serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*duration))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }

    /// `#[serde(with = "duration_text::serde::option")]` on an `Option<Duration>`.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            duration: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match duration {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| crate::parse(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn reads_the_grammar() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("250ms", ms(250)),
            ("2s", ms(2000)),
            ("1m30s", ms(90_000)),
            ("1h", ms(3_600_000)),
            ("1s500ms", ms(1500)),
            (" 5s ", ms(5000)),
            ("10us", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("0s", Duration::ZERO),
            ("5000000000ns", ms(5000)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for text in [
            "", "90", "1.5s", "2 m", "5min", "1m30", "-5s", "soon", "s", "1d", "1sec",
        ] {
            assert_eq!(
                parse(text),
                Err(DurationError::Syntax(text.into())),
                "{text}"
            );
        }
        assert!(matches!(
            parse("99999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse("18446744073709551615h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_without_spaces() {
        assert_eq!(format(Duration::from_millis(90_000)), "1m30s");
        assert_eq!(format(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format(Duration::from_secs(86_400)), "24h");
        assert_eq!(format(Duration::ZERO), "0s");
    }

    proptest! {
        #[test]
        fn format_then_parse_is_the_identity(nanos in any::<u64>()) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,24}") {
            let _ = parse(&text);
        }
    }

    #[test]
    fn the_serde_helpers_use_the_grammar() {
        #[derive(::serde::Serialize, ::serde::Deserialize, PartialEq, Debug)]
        struct T {
            #[serde(with = "crate::serde")]
            a: Duration,
            #[serde(with = "crate::serde::option")]
            b: Option<Duration>,
        }
        let t = T {
            a: Duration::from_secs(90),
            b: None,
        };
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"a":"1m30s","b":null}"#);
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), t);
        assert!(serde_json::from_str::<T>(r#"{"a":"1.5s","b":null}"#).is_err());
    }
}
