//! Each settings rule is written once, in the engine (`breaker::limits`, `Settings::new`);
//! the schema's ranges and the CEL rules are derived from it. These tests fail when the
//! schema, the CEL and the validation stop saying the same thing, for every key the schema
//! has (a new key without a rule fails too).

use breaker_api::policy::ORDER_RULES;
use breaker_api::BreakerSettings;
use serde_json::Value;

fn properties() -> serde_json::Map<String, Value> {
    let schema = serde_json::to_value(schemars::schema_for!(BreakerSettings)).unwrap();
    schema["properties"].as_object().unwrap().clone()
}

/// What the engine says about a document: Ok, or the key and message it refused.
fn verdict(doc: &str) -> Result<(), (String, String)> {
    BreakerSettings::parse_yaml(doc)
        .map(drop)
        .map_err(|e| (e.key, e.message))
}

/// Refused for `key`'s own range, not for an order rule between two keys.
fn refused_by_range(key: &str, value: &str) -> bool {
    let others: Vec<&str> = ORDER_RULES
        .iter()
        .filter_map(|rule| match key {
            k if k == rule.shorter => Some(rule.longer),
            k if k == rule.longer => Some(rule.shorter),
            _ => None,
        })
        .collect();
    match verdict(&format!("{key}: {value}")) {
        Ok(()) => false,
        Err((k, message)) => k == key && !others.iter().any(|o| message.contains(o)),
    }
}

/// The `[min, max]` in milliseconds a duration's CEL rule allows.
fn cel_bounds_ms(rule: &str) -> (u64, u64) {
    let bounds: Vec<u64> = rule
        .split("duration('")
        .skip(1)
        .map(|rest| {
            let text = rest.split("')").next().unwrap();
            duration_text::parse(text).unwrap().as_millis() as u64
        })
        .collect();
    assert_eq!(bounds.len(), 2, "{rule}");
    (bounds[0], bounds[1])
}

#[test]
fn schema_ranges_cel_and_validation_agree_for_every_key() {
    let mut checked = 0;
    for (key, prop) in properties() {
        let types = prop["type"].to_string();
        if let (Some(min), Some(max)) = (prop["minimum"].as_f64(), prop["maximum"].as_f64()) {
            let step = if types.contains("integer") { 1.0 } else { 0.01 };
            for inside in [min, max] {
                assert!(
                    !refused_by_range(&key, &inside.to_string()),
                    "{key}: {inside} is in the schema's range but refused"
                );
            }
            for outside in [min - step, max + step] {
                assert!(
                    refused_by_range(&key, &outside.to_string()),
                    "{key}: {outside} is outside the schema's range but accepted"
                );
            }
        } else if let Some(values) = prop["enum"].as_array() {
            for value in values {
                let value = value.as_str().unwrap();
                assert!(
                    !refused_by_range(&key, value),
                    "{key}: {value} is in the schema's enum but refused"
                );
            }
            assert!(
                refused_by_range(&key, "Sideways"),
                "{key}: a value outside the enum is accepted"
            );
        } else if types.contains("string") {
            let rule = prop["x-kubernetes-validations"][0]["rule"]
                .as_str()
                .unwrap_or_else(|| panic!("{key}: a string with no CEL range"));
            let (min, max) = cel_bounds_ms(rule);
            for inside in [min, max] {
                assert!(
                    !refused_by_range(&key, &format!("{inside}ms")),
                    "{key}: {inside}ms passes CEL but is refused"
                );
            }
            for outside in [min - 1, max + 1] {
                assert!(
                    refused_by_range(&key, &format!("{outside}ms")),
                    "{key}: {outside}ms fails CEL but is accepted"
                );
            }
        } else {
            panic!("{key}: the schema gives no range, so nothing keeps it in step with the validation: {prop}");
        }
        checked += 1;
    }
    eprintln!("figure: settings rules: {checked} keys, schema = CEL = validation at every bound");
}

#[test]
fn order_rules_in_cel_are_the_engines() {
    for rule in ORDER_RULES {
        let (short, long) = (rule.shorter, rule.longer);
        assert!(
            verdict(&rule.document("9s", "10s")).is_ok(),
            "{short} < {long}"
        );
        assert!(
            verdict(&rule.document("10s", "9s")).is_err(),
            "{short} > {long}"
        );
        assert_eq!(
            verdict(&rule.document("10s", "10s")).is_ok(),
            rule.may_equal,
            "{short} = {long}"
        );
    }
    let crd = serde_json::to_value(breaker_api::policy::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let rules = spec["x-kubernetes-validations"].as_array().unwrap();
    assert_eq!(rules.len(), ORDER_RULES.len());
    for (order, rule) in ORDER_RULES.iter().zip(rules) {
        let rule = rule["rule"].as_str().unwrap();
        let op = if order.may_equal { "<=" } else { "<" };
        assert!(
            rule.ends_with(&format!(
                "duration(self.settings.{}) {op} duration(self.settings.{})",
                order.shorter, order.longer
            )),
            "{rule}"
        );
    }
}
