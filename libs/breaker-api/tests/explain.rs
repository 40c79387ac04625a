//! `kubectl explain breakerpolicy…` prints each field's description: every field of the CRD,
//! in spec and status, has one of its own, and every duration names its grammar.

use serde_json::Value;

/// Every schema node under `path`, with its path as `kubectl explain` spells it.
fn nodes<'a>(schema: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    out.push((path.clone(), schema));
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (key, child) in properties {
            nodes(child, format!("{path}.{key}"), out);
        }
    }
    if let Some(items) = schema.get("items") {
        nodes(items, format!("{path}[]"), out);
    }
}

fn crd_nodes() -> Vec<(String, Value)> {
    let crd = serde_json::to_value(breaker_api::policy::crd()).unwrap();
    let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    let mut out = Vec::new();
    nodes(&schema, "breakerpolicy".into(), &mut out);
    out.into_iter()
        .map(|(path, node)| (path, node.clone()))
        .collect()
}

#[test]
fn every_field_explains_itself() {
    let nodes = crd_nodes();
    // apiVersion, kind and metadata are the API server's own; kube's derive leaves them bare.
    let ours = |path: &str| {
        !["apiVersion", "kind", "metadata"]
            .iter()
            .any(|k| path == format!("breakerpolicy.{k}"))
    };
    let missing: Vec<&str> = nodes
        .iter()
        .filter(|(path, _)| ours(path))
        .filter(|(_, node)| {
            let text = node
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            // A line break mid-paragraph is a doc comment's wrap, which explain prints ragged.
            text.trim().is_empty()
                || text.contains("Auto-generated")
                || text.replace("\n\n", "").contains('\n')
        })
        .map(|(path, _)| path.as_str())
        .collect();
    assert!(
        nodes.len() > 50,
        "the walk found only {} fields",
        nodes.len()
    );
    assert!(
        missing.is_empty(),
        "fields without a description of their own, or with a doc comment's line breaks: {missing:?}"
    );
}

#[test]
fn every_duration_names_its_grammar_and_an_example() {
    let durations: Vec<(String, Value)> = crd_nodes()
        .into_iter()
        .filter(|(_, node)| {
            node.get("pattern").and_then(Value::as_str) == Some(breaker_api::DURATION_PATTERN)
        })
        .collect();
    assert!(
        durations.len() >= 7,
        "only {} duration fields found",
        durations.len()
    );
    for (path, node) in durations {
        let text = node["description"].as_str().unwrap_or_default();
        assert!(
            text.contains("ms, s, m, h") && text.contains("`2s`"),
            "{path}: {text:?}"
        );
    }
}
