//! What breaker-controller writes ([`configmap::data`]) api-gateway-v2 reads back
//! ([`configmap::read`]) as the same settings and mode, and refuses what the engine refuses.

use std::time::Duration;

use breaker_api::{configmap, BreakerSettings, Mode, Scope};
use k8s_openapi::api::core::v1::ConfigMap;
use proptest::prelude::*;

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..100_000).prop_map(Duration::from_millis),
        (0u64..100_000).prop_map(Duration::from_secs),
    ]
}

fn settings() -> impl Strategy<Value = BreakerSettings> {
    (
        (
            0u32..1200,
            proptest::option::of(0.0f64..120.0),
            0u32..12_000,
            0u32..12_000,
        ),
        (
            proptest::option::of(duration()),
            0.0f64..120.0,
            duration(),
            duration(),
        ),
        (
            proptest::option::of(duration()),
            0u32..1200,
            proptest::option::of(0u32..120_000),
            proptest::option::of(duration()),
        ),
        (
            prop_oneof![Just(Scope::Service), Just(Scope::Endpoint)],
            0u32..120,
        ),
        (
            (0u32..12, 0.0f64..120.0, 0u32..12_000, duration()),
            (
                proptest::option::of(0u32..120_000),
                0u32..120_000,
                duration(),
            ),
        ),
    )
        .prop_map(
            |(
                (ft, frt, sws, mc),
                (scd, scrt, ct, od),
                (mod_, homc, mcc, fa),
                (scope, mep),
                ((mr, rbp, mrps, rb), (alx, aln, all)),
            )| {
                BreakerSettings {
                    failure_threshold: ft,
                    failure_rate_threshold: frt,
                    sliding_window_size: sws,
                    minimum_calls: mc,
                    slow_call_duration: scd,
                    slow_call_rate_threshold: scrt,
                    call_timeout: ct,
                    fallback_after: fa,
                    open_duration: od,
                    max_open_duration: mod_,
                    half_open_max_calls: homc,
                    max_concurrent_calls: mcc,
                    scope,
                    max_ejection_percent: mep,
                    max_retries: mr,
                    retry_budget_percent: rbp,
                    min_retries_per_second: mrps,
                    retry_backoff: rb,
                    adaptive_limit_max: alx,
                    adaptive_limit_min: aln,
                    adaptive_limit_latency: all,
                }
            },
        )
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Auto),
        Just(Mode::ForceOpen),
        Just(Mode::ForceClosed),
        Just(Mode::Observe)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn the_gateway_reads_what_the_controller_writes(written in settings(), mode in mode()) {
        let cm = ConfigMap {
            data: Some(configmap::data(&written, mode)),
            ..ConfigMap::default()
        };
        match (written.validate(), configmap::read(&cm)) {
            (Ok(settings), Ok((read, read_mode))) => {
                prop_assert_eq!(read, settings);
                prop_assert_eq!(read_mode, mode);
            }
            (Err(expected), Err(configmap::ContentError::Settings(got))) => prop_assert_eq!(got, expected),
            (expected, got) => prop_assert!(false, "validate: {:?}, read: {:?}", expected, got),
        }
    }
}
