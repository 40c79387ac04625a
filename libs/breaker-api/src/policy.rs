//! The BreakerPolicy custom resource. `spec.settings` is the wire [`BreakerSettings`], so the
//! API server, the controller and the gateway read one definition.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use breaker::{OrderRule, ORDER_RULES};

use breaker::{State, TransitionReason};

use crate::circuit_status::ReplicaState;
use crate::settings::DURATION_PATTERN;
use crate::{BreakerSettings, Mode};

/// The one condition a BreakerPolicy carries.
pub const READY: &str = "Ready";

/// A circuit breaker policy for the v2 gateway: its settings and an operator override.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "resilience.demo.dev",
    version = "v1alpha1",
    kind = "BreakerPolicy",
    doc = "A BreakerPolicy sets the circuit breaker of the v2 gateway's calls to recommendations: breaker-controller writes `spec` into the gateway's ConfigMap (`spec.target`), every v2 replica applies it within a second, and `status` shows each replica's live breaker. `kubectl explain breakerpolicy.spec.settings` lists the settings.",
    plural = "breakerpolicies",
    shortname = "bp",
    namespaced,
    status = "BreakerPolicyStatus",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode","description":"Auto, ForceOpen, ForceClosed or Observe"}"#,
    printcolumn = r#"{"name":"Open","type":"string","jsonPath":".status.open","description":"v2 replicas that reject calls as open (forced open included; in Observe: would), of those reporting"}"#,
    printcolumn = r#"{"name":"Applied","type":"string","jsonPath":".status.applied","description":"v2 replicas running the ConfigMap as last written, of those reporting"}"#,
    printcolumn = r#"{"name":"Ejected","type":"string","jsonPath":".status.ejected","description":"With scope Endpoint: endpoints out of rotation, each with the replicas that have it out"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target.configMap","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = add_order_rules)]
pub struct BreakerPolicySpec {
    /// The gateway ConfigMap (in this namespace) that carries the settings.
    pub target: Target,
    /// Auto lets the breaker decide; ForceOpen trips it by hand; ForceClosed pins it closed;
    /// Observe judges as Auto and reports what it would do, but lets every call through.
    #[serde(default)]
    pub mode: Mode,
    /// The breaker's settings; every key is optional and defaults as documented.
    #[serde(default)]
    pub settings: BreakerSettings,
}

fn add_order_rules(schema: &mut schemars::Schema) {
    let rules: Vec<serde_json::Value> = ORDER_RULES
        .iter()
        .map(|rule| {
            let OrderRule { shorter, longer, may_equal, why, .. } = *rule;
            let op = if may_equal { "<=" } else { "<" };
            let well_formed = |key: &str| {
                format!("has(self.settings.{key}) && self.settings.{key}.matches('{DURATION_PATTERN}')")
            };
            let relation = if may_equal { "must not be longer than" } else { "must be shorter than" };
            serde_json::json!({
                "rule": format!(
                    "!has(self.settings) || !({} && {}) || duration(self.settings.{shorter}) {op} duration(self.settings.{longer})",
                    well_formed(shorter), well_formed(longer)
                ),
                "message": format!("settings.{shorter} {relation} settings.{longer}, {why}"),
            })
        })
        .collect();
    schema.insert("x-kubernetes-validations".into(), rules.into());
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Name of the ConfigMap the v2 gateway watches (its BREAKER_CONFIGMAP).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub config_map: String,
}

/// Replicas listed in a policy's status (all are counted in `open` and `applied`): the bound
/// the schema states and the controller keeps.
pub const MAX_REPLICAS: usize = 100;
/// Ejected endpoints listed for one replica.
pub const MAX_EJECTED: usize = 32;
/// Endpoints named in `status.ejected`; more are counted after them.
pub const MAX_EJECTED_NAMED: usize = 8;

/// What breaker-controller last wrote and what the v2 replicas run: the `Ready` condition, the
/// ConfigMap version, and each replica's live breaker (state, reason, ejected endpoints).
/// Written by the controller only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerPolicyStatus {
    /// `Ready`: True once the ConfigMap holds these settings; False with the reason otherwise.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The ConfigMap last written, as namespace/name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 317))]
    pub config_map: Option<String>,
    /// The ConfigMap's resourceVersion as last written: a replica running it has applied
    /// the policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub config_map_version: Option<String>,
    /// The live breaker of each v2 replica watching the ConfigMap, as it last told the
    /// controller; a replica that goes away leaves the list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["pod"]),
        length(max = MAX_REPLICAS)
    )]
    pub replicas: Vec<ReplicaStatus>,
    /// Replicas that reject calls as open (forced open included; in Observe: would), of
    /// those reporting: `1/2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub open: Option<String>,
    /// Replicas running `configMapVersion`, of those reporting: `2/2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub applied: Option<String>,
    /// With scope Endpoint: the endpoints out of rotation, each with the replicas that have it
    /// out, of those reporting: `recommendations-7d9f-x2 (2/2)`; past the first few, how many
    /// more.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub ejected: Option<String>,
}

/// One v2 replica's breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = keep_optional_field_docs)]
pub struct ReplicaStatus {
    /// The v2 replica: its pod's name (the list's key).
    #[schemars(length(max = 253))]
    pub pod: String,
    /// closed, open, half_open; `unreachable` when the last ask failed.
    pub state: ReplicaState,
    /// The mode the replica runs: its policy's `spec.mode`, once applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// When it entered this state (its last transition).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub since: Option<String>,
    /// Why it entered this state: consecutive_failures, failure_rate or slow_call_rate
    /// (opened); open_duration_elapsed (half-open); probe_failed (opened again);
    /// probes_succeeded (closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<TransitionReason>,
    /// The ConfigMap resourceVersion it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub config_version: Option<String>,
    /// With adaptiveLimitMax: the replica's adaptive concurrency limit now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_limit: Option<u32>,
    /// With scope Endpoint: recommendations' endpoints this replica has out of rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]),
        length(max = MAX_EJECTED)
    )]
    pub ejected: Vec<EjectedEndpoint>,
}

/// An endpoint a replica has out of rotation: which, since when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EjectedEndpoint {
    /// The endpoint: its pod's name in Kubernetes.
    #[schemars(length(max = 253))]
    pub name: String,
    /// Its breaker's state: open, or half_open while a probe runs.
    pub state: State,
    /// When it went out of rotation (failed probes since then keep it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub since: Option<String>,
    /// Why its breaker is in this state: consecutive_failures, failure_rate or slow_call_rate
    /// (opened); open_duration_elapsed (half-open, a probe running); probe_failed (opened
    /// again); probes_succeeded does not occur here (a closed endpoint is back in rotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<TransitionReason>,
}

/// Why `Ready` is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The ConfigMap holds the policy's settings and mode.
    Applied,
    /// The settings break a rule the schema could not check.
    InvalidSettings,
    /// The target ConfigMap does not exist (it is created with the gateway).
    TargetMissing,
    /// Another policy, or something else, manages the target ConfigMap.
    Conflict,
    /// The controller's Role does not let it write the target ConfigMap.
    Forbidden,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Applied => "Applied",
            Reason::InvalidSettings => "InvalidSettings",
            Reason::TargetMissing => "TargetMissing",
            Reason::Conflict => "Conflict",
            Reason::Forbidden => "Forbidden",
        }
    }

    /// `Ready`'s status for this reason.
    pub fn ready(self) -> bool {
        self == Reason::Applied
    }
}

impl BreakerPolicy {
    /// A server-side apply patch of `status` (the fields its field manager owns).
    pub fn status_patch(status: &impl Serialize) -> serde_json::Value {
        use kube::Resource;
        serde_json::json!({
            "apiVersion": Self::api_version(&()),
            "kind": Self::kind(&()),
            "status": status,
        })
    }

    /// The `Ready` condition, if the status has one.
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
    }
}

/// The schema of `metav1.Condition` (k8s-openapi's type has no JsonSchema), as a list keyed
/// by type.
fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "description": "One condition of the policy, as metav1.Condition.",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "maxLength": 316,
                    "description": "The condition: Ready, the only one a BreakerPolicy carries."},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"],
                    "description": "True once the target ConfigMap holds this spec; False with the reason."},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0,
                    "description": "The metadata.generation this condition was set for."},
                "lastTransitionTime": {"type": "string", "format": "date-time",
                    "description": "When the status last changed (RFC 3339)."},
                "reason": {"type": "string", "maxLength": 1024, "minLength": 1,
                    "description": "Applied, InvalidSettings (a rule the schema cannot check), TargetMissing (no such ConfigMap), Conflict (something else manages it) or Forbidden (the controller may not write it)."},
                "message": {"type": "string", "maxLength": 32768,
                    "description": "The reason in words, naming the setting or the object at fault."}
            }
        }
    })
}

/// kube turns an optional field's `anyOf: [T, null]` into T, nullable, and T's own description
/// then replaces the field's: give T the field's, so `replicas[].mode` keeps "The mode the
/// replica runs" rather than the Mode type's words.
fn keep_optional_field_docs(schema: &mut schemars::Schema) {
    let Some(properties) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for property in properties.values_mut() {
        let Some(description) = property.get("description").cloned() else {
            continue;
        };
        let Some(variants) = property.get_mut("anyOf").and_then(|a| a.as_array_mut()) else {
            continue;
        };
        let is_null =
            |v: &serde_json::Value| v.get("type").and_then(|t| t.as_str()) == Some("null");
        if variants.len() == 2 && variants.iter().any(is_null) {
            for variant in variants.iter_mut().filter(|v| !is_null(v)) {
                if let Some(variant) = variant.as_object_mut() {
                    variant.insert("description".into(), description.clone());
                }
            }
        }
    }
}

/// The CRD the API server is given: BreakerPolicy's, with each description's doc-comment line
/// breaks taken out (`kubectl explain` wraps the text itself and keeps a break it is given, so
/// a wrapped doc comment printed as ragged lines).
pub fn crd() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(<BreakerPolicy as kube::CustomResourceExt>::crd())
        .expect("the CRD serializes");
    unwrap_descriptions(&mut crd);
    serde_json::from_value(crd).expect("only descriptions changed")
}

/// Joins the lines of every paragraph of every description under `node`.
fn unwrap_descriptions(node: &mut serde_json::Value) {
    match node {
        serde_json::Value::Object(fields) => {
            for (key, value) in fields {
                match value {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| {
                                paragraph
                                    .split('\n')
                                    .map(str::trim)
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(value),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// The CRD as YAML, as `breaker-controller crd` prints it and `k8s/` holds it.
pub fn crd_yaml() -> String {
    format!(
        "# Generated by `breaker-controller crd`; do not edit (a test fails when this drifts).\n{}",
        serde_yaml::to_string(&crd()).expect("the CRD serializes")
    )
}
