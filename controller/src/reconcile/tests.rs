//! Reconcile against a scripted mock API server (kube-rs/controller-rs's pattern): each test
//! lists the requests the controller must make, in order, and what the API server answers.

use std::time::Duration;

use breaker_api::{BreakerPolicy, BreakerPolicySpec, BreakerSettings, Mode, Target};
use http::{Method, Request, Response};
use kube::client::Body;
use kube::Resource;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

use super::*;
use crate::context::MAX_TRACKED_FAILURES;
use crate::leader::LeaderGate;
use crate::Metrics;

const NS: &str = "demo";
const TARGET: &str = "gw-breaker";

fn policy(settings: BreakerSettings) -> BreakerPolicy {
    let mut policy = BreakerPolicy::new(
        "gw",
        BreakerPolicySpec {
            target: Target {
                config_map: TARGET.into(),
            },
            mode: Mode::Auto,
            settings,
        },
    );
    let meta = policy.meta_mut();
    meta.namespace = Some(NS.into());
    meta.uid = Some("uid-gw".into());
    meta.generation = Some(1);
    meta.resource_version = Some("7".into());
    policy
}

fn invalid_settings() -> BreakerSettings {
    // Past the schema (a hand-made object); only the engine's validation stands in the way.
    BreakerSettings {
        failure_threshold: 0,
        ..BreakerSettings::default()
    }
}

fn test_context() -> (Arc<Context>, ApiHandle, Registry) {
    context_of(LeaderGate::held())
}

fn context_of(leader: LeaderGate) -> (Arc<Context>, ApiHandle, Registry) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    (
        Arc::new(Context::new(client, metrics, leader)),
        handle,
        registry,
    )
}

/// One expected request and the answer to it.
struct Step {
    method: Method,
    path: String,
    /// A part the request's query must contain (a field manager, say).
    query: Option<&'static str>,
    status: u16,
    answer: Value,
}

fn step(method: Method, path: &str, status: u16, answer: Value) -> Step {
    Step {
        method,
        path: path.into(),
        query: None,
        status,
        answer,
    }
}

impl Step {
    fn with_query(mut self, part: &'static str) -> Self {
        self.query = Some(part);
        self
    }
}

/// The status patch, answered with the stored policy.
fn status_patched(p: &BreakerPolicy) -> Step {
    step(
        Method::PATCH,
        &status_path(),
        200,
        serde_json::to_value(p).unwrap(),
    )
}

/// A new Event, answered with itself.
fn event_created() -> Step {
    step(Method::POST, &events_path(), 201, Value::Null)
}

/// The controller's read of the target ConfigMap.
fn configmap_read(status: u16, answer: Value) -> Step {
    step(Method::GET, &configmap_path(), status, answer)
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

fn status_path() -> String {
    format!("/apis/resilience.demo.dev/v1alpha1/namespaces/{NS}/breakerpolicies/gw/status")
}

fn configmap_path() -> String {
    format!("/api/v1/namespaces/{NS}/configmaps/{TARGET}")
}

fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
}

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// Serves the script; returns the request bodies in order, and the handle for more.
async fn serve(mut handle: ApiHandle, script: Vec<Step>) -> (Vec<Value>, ApiHandle) {
    let mut bodies = Vec::new();
    for step in script {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request; expected {} {}", step.method, step.path))
            .expect("the client is alive");
        assert_eq!(
            (request.method(), request.uri().path()),
            (&step.method, step.path.as_str()),
            "unexpected request"
        );
        if let Some(part) = step.query {
            let query = request.uri().query().unwrap_or_default();
            assert!(query.contains(part), "{} {query}: wants {part}", step.path);
        }
        let body = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        // An event is answered with itself, as the API server would.
        let answer = if step.answer.is_null() {
            body.clone()
        } else {
            step.answer
        };
        bodies.push(body);
        send.send_response(
            Response::builder()
                .status(step.status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
    }
    (bodies, handle)
}

/// One reconcile against the script; a request the script does not expect fails the test.
async fn run(
    policy: BreakerPolicy,
    ctx: Arc<Context>,
    handle: ApiHandle,
    script: Vec<Step>,
) -> (Result<Action, Error>, Vec<Value>, ApiHandle) {
    let server = tokio::spawn(serve(handle, script));
    let result = tokio::time::timeout(Duration::from_secs(5), reconcile(Arc::new(policy), ctx))
        .await
        .expect("reconcile finishes");
    let (bodies, handle) = server.await.unwrap();
    (result, bodies, handle)
}

fn ready(status_patch: &Value) -> &Value {
    &status_patch["status"]["conditions"][0]
}

/// The status patch says Ready False for `reason`, its message containing each of `says`.
fn assert_not_ready(status_patch: &Value, reason: &str, says: &[&str]) {
    let condition = ready(status_patch);
    assert_eq!(
        (&condition["status"], &condition["reason"]),
        (&json!("False"), &json!(reason)),
        "{condition}"
    );
    let message = condition["message"].as_str().unwrap();
    for part in says {
        assert!(message.contains(part), "{message} does not say {part:?}");
    }
}

fn metrics_text(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[tokio::test]
async fn invalid_settings_are_not_ready_with_the_key_and_a_warning_event_series() {
    let (ctx, handle, registry) = test_context();
    let p = policy(invalid_settings());
    let script = vec![status_patched(&p), event_created()];
    let (result, bodies, handle) = run(p.clone(), ctx.clone(), handle, script).await;
    assert_eq!(result.unwrap(), Action::await_change());
    let condition = ready(&bodies[0]);
    assert_eq!(condition["type"], "Ready");
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "InvalidSettings");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.settings.failureThreshold: "),
        "{condition}"
    );
    assert_eq!(
        bodies[0]["status"]["conditions"].as_array().unwrap().len(),
        1,
        "one condition"
    );
    assert_eq!(bodies[1]["reason"], "InvalidSettings");
    assert_eq!(bodies[1]["type"], "Warning");
    let text = metrics_text(&registry);
    assert!(
        text.contains("controller_reconciles_total{result=\"done\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("controller_reconcile_duration_seconds_count{result=\"done\"} 1"),
        "{text}"
    );
    let first_event = bodies[1]["metadata"]["name"].as_str().unwrap().to_string();

    // The same Event again extends the first one's series (one Recorder for the controller).
    let script = vec![
        status_patched(&p),
        step(
            Method::PATCH,
            &format!("{}/{first_event}", events_path()),
            200,
            Value::Null,
        ),
    ];
    let (result, bodies, _) = run(p, ctx, handle, script).await;
    assert!(result.is_ok());
    assert_eq!(bodies[1]["series"]["count"], 2, "{}", bodies[1]);
}

#[tokio::test]
async fn a_missing_target_is_not_ready_and_retried_without_an_event() {
    let (ctx, handle, _) = test_context();
    let p = policy(BreakerSettings::default());
    let script = vec![configmap_read(404, not_found()), status_patched(&p)];
    let (result, bodies, _) = run(p, ctx, handle, script).await;
    assert_eq!(result.unwrap(), Action::requeue(CONFLICT_RETRY));
    assert_eq!(ready(&bodies[1])["reason"], "TargetMissing");
    assert_eq!(ready(&bodies[1])["status"], "False");
}

#[tokio::test]
async fn a_configmap_without_the_target_label_is_a_conflict_with_an_event() {
    let (ctx, handle, _) = test_context();
    let p = policy(BreakerSettings::default());
    let unlabelled = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": TARGET, "namespace": NS}});
    let script = vec![
        configmap_read(200, unlabelled),
        status_patched(&p),
        event_created(),
    ];
    let (result, bodies, _) = run(p, ctx, handle, script).await;
    assert_eq!(result.unwrap(), Action::requeue(CONFLICT_RETRY));
    assert_not_ready(
        &bodies[1],
        "Conflict",
        &["label resilience.demo.dev/breaker-target=true is missing"],
    );
    assert_eq!(bodies[2]["reason"], "Conflict");
}

fn prepared_configmap(managers: &[&str]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": TARGET, "namespace": NS,
            "labels": {TARGET_LABEL: "true"},
            "managedFields": managers.iter().map(|m| json!({"manager": m, "operation": "Apply", "apiVersion": "v1"})).collect::<Vec<_>>(),
        }
    })
}

fn conflict_status() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "Apply failed with 1 conflict: conflict with \"someone\""})
}

#[tokio::test]
async fn another_policys_fields_are_a_conflict_told_by_managed_fields_read_afresh() {
    let (ctx, handle, _) = test_context();
    let p = policy(BreakerSettings::default());
    // The rival's first write lands between the read and this policy's apply (two policies
    // created at once): only a fresh read shows it, and nothing is forced over it.
    let script = vec![
        configmap_read(200, prepared_configmap(&["helm"])),
        step(Method::PATCH, &configmap_path(), 409, conflict_status()),
        configmap_read(
            200,
            prepared_configmap(&["helm", "breaker-controller.rival"]),
        ),
        status_patched(&p),
        event_created(),
    ];
    let (result, bodies, _) = run(p, ctx, handle, script).await;
    assert_eq!(result.unwrap(), Action::requeue(CONFLICT_RETRY));
    assert_not_ready(
        &bodies[3],
        "Conflict",
        &["managed by breaker-controller.rival"],
    );
}

#[tokio::test]
async fn hand_edits_are_taken_back_with_force_and_the_policy_is_ready() {
    let (ctx, handle, _) = test_context();
    let p = policy(BreakerSettings::default());
    let script = vec![
        configmap_read(200, prepared_configmap(&["helm", "kubectl-edit"])),
        step(Method::PATCH, &configmap_path(), 409, conflict_status()),
        configmap_read(200, prepared_configmap(&["helm", "kubectl-edit"])),
        step(
            Method::PATCH,
            &configmap_path(),
            200,
            prepared_configmap(&[]),
        ),
        status_patched(&p),
        event_created(),
    ];
    let (result, bodies, _) = run(p, ctx, handle, script).await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
    let written = &bodies[3]["data"];
    assert_eq!(written["mode"], "Auto");
    assert!(written["breaker.yaml"]
        .as_str()
        .unwrap()
        .contains("failureThreshold: 3"));
    assert_eq!(ready(&bodies[4])["status"], "True");
    assert_eq!(ready(&bodies[4])["reason"], "Applied");
    assert_eq!(bodies[5]["reason"], "Applied");
}

/// A replica that does not lead reads, but writes nothing: the script ends after the read, so
/// a write would fail on the closed mock (a `Kube` error), not stop as `NotLeading`.
#[tokio::test]
async fn a_replica_that_does_not_lead_writes_nothing() {
    let (ctx, handle, registry) = context_of(LeaderGate::standing_by());
    let p = policy(BreakerSettings::default());
    let script = vec![configmap_read(200, prepared_configmap(&["helm"]))];
    let (result, _, _) = run(p, ctx, handle, script).await;
    assert!(matches!(result, Err(Error::NotLeading)), "{result:?}");
    assert!(metrics_text(&registry).contains(r#"error="not_leading""#));
}

#[tokio::test]
async fn an_api_error_keeps_its_variant_and_reason_in_the_metrics_and_is_timed() {
    let (ctx, handle, registry) = test_context();
    let p = policy(BreakerSettings::default());
    let unavailable = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "ServiceUnavailable", "code": 503, "message": "etcd is away"});
    let script = vec![configmap_read(503, unavailable)];
    let (result, _, _) = run(p, ctx, handle, script).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Kube(_)), "{err:?}");
    assert_eq!(err.metric_label(), "kube_ServiceUnavailable");
    let text = metrics_text(&registry);
    assert!(
        text.contains("controller_reconcile_errors_total{error=\"kube_ServiceUnavailable\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("controller_reconciles_total{result=\"error\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("controller_reconcile_duration_seconds_count{result=\"error\"} 1"),
        "failed runs are timed too: {text}"
    );
}

#[tokio::test]
async fn a_target_the_role_does_not_cover_is_not_ready_and_says_what_it_allows() {
    let (ctx, handle, _) = test_context();
    let p = policy(BreakerSettings::default());
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "configmaps \"gw-breaker\" is forbidden"});
    let script = vec![
        configmap_read(403, forbidden),
        status_patched(&p),
        event_created(),
    ];
    let (result, bodies, _) = run(p, ctx, handle, script).await;
    assert_eq!(result.unwrap(), Action::requeue(CONFLICT_RETRY));
    assert_not_ready(
        &bodies[1],
        "Forbidden",
        &["may not write ConfigMap gw-breaker"],
    );
    assert_eq!(bodies[2]["reason"], "Forbidden");

    // Told its Role's one name, the controller says so without asking the API server.
    let (ctx, handle, _) = test_context();
    let ctx = Arc::new(
        Arc::into_inner(ctx)
            .unwrap()
            .allow_only(Some("api-gateway-v2-breaker".into())),
    );
    let p = policy(BreakerSettings::default());
    let script = vec![status_patched(&p), event_created()];
    let (result, bodies, _) = run(p, ctx, handle, script).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_not_ready(
        &bodies[0],
        "Forbidden",
        &[
            "may write ConfigMap api-gateway-v2-breaker only",
            "set spec.target.configMap to api-gateway-v2-breaker",
        ],
    );
}

fn held_configmap(holder: &str) -> Value {
    let mut cm = prepared_configmap(&["helm", &format!("breaker-controller.{holder}")]);
    cm["metadata"]["labels"][POLICY_LABEL] = json!(holder);
    cm
}

fn policy_path(name: &str) -> String {
    format!("/apis/resilience.demo.dev/v1alpha1/namespaces/{NS}/breakerpolicies/{name}")
}

#[tokio::test]
async fn a_configmap_held_by_a_live_policy_is_a_conflict_that_names_it() {
    let (ctx, handle, _) = test_context();
    let p = policy(BreakerSettings::default());
    let mut holder = policy(BreakerSettings::default());
    holder.meta_mut().name = Some("first".into());
    let script = vec![
        configmap_read(200, held_configmap("first")),
        step(
            Method::GET,
            &policy_path("first"),
            200,
            serde_json::to_value(&holder).unwrap(),
        ),
        status_patched(&p),
        event_created(),
    ];
    let (result, bodies, _) = run(p, ctx, handle, script).await;
    assert_eq!(result.unwrap(), Action::requeue(CONFLICT_RETRY));
    assert_not_ready(&bodies[2], "Conflict", &["managed by BreakerPolicy first"]);
}

#[tokio::test]
async fn a_deleted_holders_fields_are_released_and_the_policy_takes_over_at_once() {
    let (ctx, handle, _) = test_context();
    let p = policy(BreakerSettings::default());
    let script = vec![
        configmap_read(200, held_configmap("gone")),
        step(Method::GET, &policy_path("gone"), 404, not_found()),
        step(
            Method::PATCH,
            &configmap_path(),
            200,
            prepared_configmap(&["helm"]),
        )
        .with_query("fieldManager=breaker-controller.gone"),
        step(
            Method::PATCH,
            &configmap_path(),
            200,
            prepared_configmap(&[]),
        )
        .with_query("fieldManager=breaker-controller.gw"),
        status_patched(&p),
        event_created(),
    ];
    let (result, bodies, _) = run(p, ctx, handle, script).await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
    // the release is an empty apply: the gone policy's manager keeps no field
    assert!(bodies[2].get("data").is_none(), "{}", bodies[2]);
    assert!(
        bodies[2]["metadata"].get("labels").is_none(),
        "{}",
        bodies[2]
    );
    assert_eq!(bodies[3]["metadata"]["labels"][POLICY_LABEL], "gw");
    assert!(
        bodies[3]["metadata"].get("ownerReferences").is_none(),
        "no owner reference: the garbage collector would delete the ConfigMap with the policy"
    );
    assert_eq!(ready(&bodies[4])["reason"], "Applied");
}

#[tokio::test]
async fn the_legacy_finalizer_is_removed_after_the_apply_and_on_deletion_after_the_release() {
    let (ctx, handle, _) = test_context();
    let mut p = policy(BreakerSettings::default());
    p.meta_mut().finalizers = Some(vec![LEGACY_FINALIZER.into(), "example.dev/keep".into()]);
    // The policy as the status write left it: a newer resourceVersion.
    let mut written = p.clone();
    written.meta_mut().resource_version = Some("8".into());
    let written = serde_json::to_value(&written).unwrap();
    let script = vec![
        configmap_read(200, prepared_configmap(&["helm"])),
        step(
            Method::PATCH,
            &configmap_path(),
            200,
            prepared_configmap(&[]),
        ),
        status_patched(&p),
        event_created(),
        step(Method::GET, &policy_path("gw"), 200, written.clone()),
        step(Method::PATCH, &policy_path("gw"), 200, written.clone()),
    ];
    let (result, bodies, handle) = run(p.clone(), ctx.clone(), handle, script).await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
    assert_eq!(
        bodies[5]["metadata"],
        json!({"finalizers": ["example.dev/keep"], "resourceVersion": "8"}),
        "only ours goes, from the list as it is now (not as this reconcile was handed it, \
         which its own status write has moved on)"
    );

    // Deleting (another finalizer holds it): its fields are released, then ours goes.
    p.meta_mut().deletion_timestamp = Some(Time(Timestamp::now()));
    let script = vec![
        configmap_read(200, held_configmap("gw")),
        step(
            Method::PATCH,
            &configmap_path(),
            200,
            prepared_configmap(&["helm"]),
        )
        .with_query("fieldManager=breaker-controller.gw"),
        step(
            Method::GET,
            &policy_path("gw"),
            200,
            serde_json::to_value(&p).unwrap(),
        ),
        step(
            Method::PATCH,
            &policy_path("gw"),
            200,
            serde_json::to_value(&p).unwrap(),
        ),
    ];
    let (result, bodies, _) = run(p, ctx, handle, script).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(bodies[1].get("data").is_none(), "{}", bodies[1]);
    assert_eq!(
        bodies[3]["metadata"]["finalizers"],
        json!(["example.dev/keep"])
    );
}

#[tokio::test]
async fn backoff_grows_per_object_and_its_memory_is_bounded() {
    let (ctx, _handle, _) = test_context();
    let p = Arc::new(policy(BreakerSettings::default()));
    let err = Error::Unnamed;
    let delays: Vec<Action> = (0..3)
        .map(|_| error_policy(p.clone(), &err, ctx.clone()))
        .collect();
    assert_eq!(
        delays,
        [1, 2, 4].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    for i in 0..(MAX_TRACKED_FAILURES + 10) {
        let mut other = policy(BreakerSettings::default());
        other.meta_mut().name = Some(format!("p{i}"));
        error_policy(Arc::new(other), &err, ctx.clone());
    }
    assert!(ctx.tracked_failures() <= MAX_TRACKED_FAILURES);
    ctx.forget_failures("demo/p1");
}
