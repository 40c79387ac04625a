//! Hostile settings documents: the parser never panics, what it accepts is valid, and what it
//! refuses names a key.
use breaker_api::BreakerSettings;
use proptest::prelude::*;

/// Every key the schema has, so a new setting is fuzzed the day it is added.
fn keys() -> Vec<String> {
    let schema = serde_json::to_value(schemars::schema_for!(BreakerSettings)).unwrap();
    let keys: Vec<String> = schema["properties"]
        .as_object()
        .expect("BreakerSettings has properties")
        .keys()
        .cloned()
        .collect();
    assert!(keys.len() >= 11, "{keys:?}");
    keys
}

/// Values of every shape a person (or an attacker) might type.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        (
            0u64..100_000,
            prop::sample::select(vec!["ns", "us", "ms", "s", "m", "h", "d", "", "sec"])
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        "\\PC{0,30}".prop_map(|s| format!("{s:?}")),
        Just("null".to_string()),
        Just("[1, 2]".to_string()),
        Just("{a: 1}".to_string()),
        Just("~".to_string()),
    ]
}

fn document() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec((prop::sample::select(keys()), value()), 0..8)
            .prop_map(|pairs| pairs.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()),
        1 => "\\PC{0,200}",
        1 => (prop::sample::select(keys()), "[a-zA-Z]{1,12}", value())
            .prop_map(|(k, junk, v)| format!("{k}{junk}: {v}\n")),
    ]
}

#[test]
fn hostile_documents_never_panic_and_errors_name_a_key() {
    let cases = 4096;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    // the runner takes a Fn, hence the cells
    let (accepted, refused) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    runner
        .run(&document(), |doc| {
            match BreakerSettings::from_yaml(&doc).and_then(|wire| wire.validate()) {
                Ok(_) => accepted.set(accepted.get() + 1),
                Err(err) => {
                    refused.set(refused.get() + 1);
                    prop_assert!(!err.key.is_empty(), "no key named for {doc:?}: {err}");
                    prop_assert!(!err.message.is_empty());
                }
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "figure: settings parser: {cases} hostile documents tried ({} accepted, {} refused with the key named)",
        accepted.get(),
        refused.get()
    );
}
