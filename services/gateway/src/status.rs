//! `GET /circuit-status`: the breaker's state, settings and counts, where the settings came
//! from, and the recent transitions.
//!
//! `?after=<revision>&wait=<duration>` holds the answer until the `revision` it gave has moved
//! on (a transition, new settings), or `wait` (at most [`MAX_WAIT`]) has passed: a watcher (the
//! controller) learns of a transition at once, without polling.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use breaker::{Counts, Mode, State};
use breaker_api::{BreakerSettings, Scope};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use service_runtime::ApiError;

use crate::applier::ConfigState;
use crate::journal::TransitionRecord;
use crate::protected::Protected;

/// What the handler reads; registered as app data by v2's policy.
pub struct StatusSources {
    pub protected: Arc<Protected>,
    pub config: Arc<Mutex<ConfigState>>,
    /// This replica's name (its pod's, in Kubernetes).
    pub replica: Option<String>,
}

#[derive(Serialize)]
struct EndpointStatus {
    name: String,
    address: String,
    state: State,
    in_flight: u32,
    /// Transitions of its breaker so far.
    transitions: u64,
    /// Its last transition: when, and why.
    since: Option<String>,
    reason: Option<breaker::TransitionReason>,
    /// While out of rotation: since when, and why it went out (its opening from closed; a
    /// failed probe since then does not move it).
    ejected_since: Option<String>,
    ejected_reason: Option<breaker::TransitionReason>,
}

#[derive(Serialize)]
struct CircuitStatus {
    replica: Option<String>,
    /// Moves on each transition and each settings change.
    revision: u64,
    state: State,
    mode: Mode,
    settings: BreakerSettings,
    config_version: String,
    config_source: String,
    config_error: Option<String>,
    config_watch_error: Option<String>,
    counts: Counts,
    /// Service, or Endpoint: then `endpoints` is what calls go through.
    scope: Scope,
    endpoints: Vec<EndpointStatus>,
    /// Endpoints out of rotation (open or half-open), by name.
    ejected: Vec<String>,
    last_transition: Option<TransitionRecord>,
    opened_until: Option<String>,
    failed_probes: u32,
    transitions: Vec<TransitionRecord>,
}

/// The longest a request may wait for a transition.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    after: Option<u64>,
    wait: Option<String>,
}

pub async fn circuit_status(
    sources: web::Data<StatusSources>,
    query: web::Query<WaitQuery>,
) -> Result<HttpResponse, ApiError> {
    match (query.after, query.wait.as_deref()) {
        (None, None) => {}
        (Some(after), Some(wait)) => {
            let wait = duration_text::parse(wait)
                .map_err(|err| ApiError::bad_request(format!("wait: {err}")))?;
            if wait > MAX_WAIT {
                return Err(ApiError::bad_request(format!(
                    "wait: at most {}",
                    duration_text::format(MAX_WAIT)
                )));
            }
            let journal = sources.protected.journal();
            let _ = tokio::time::timeout(wait, journal.changed_since(after)).await;
        }
        _ => {
            return Err(ApiError::bad_request(
                "after and wait go together: ?after=<revision>&wait=<duration>",
            ))
        }
    }
    Ok(current(&sources))
}

fn current(sources: &StatusSources) -> HttpResponse {
    let journal = sources.protected.journal();
    // Read first: an answer is never older than the revision it carries.
    let revision = journal.revision();
    let snapshot = sources.protected.snapshot();
    let config = sources.config.lock().status().clone();
    let transitions = journal.records();
    HttpResponse::Ok().json(CircuitStatus {
        replica: sources.replica.clone(),
        revision,
        state: snapshot.state,
        mode: snapshot.mode,
        settings: BreakerSettings::from(snapshot.settings.spec()),
        config_version: config.version,
        config_source: config.source,
        config_error: config.error,
        config_watch_error: config.watch_error,
        counts: snapshot.counts,
        scope: snapshot.settings.scope,
        endpoints: sources
            .protected
            .endpoints()
            .endpoints()
            .iter()
            .map(|e| {
                let s = e.snapshot();
                let ejection = e.ejection();
                EndpointStatus {
                    name: e.name.clone(),
                    address: e.address.to_string(),
                    state: s.state,
                    in_flight: e.in_flight(),
                    transitions: s.counts.transitions,
                    since: s.last_transition.map(|t| journal.wall(t.at)),
                    reason: s.last_transition.map(|t| t.reason),
                    ejected_since: ejection.map(|out| journal.wall(out.at)),
                    ejected_reason: ejection.map(|out| out.reason),
                }
            })
            .collect(),
        ejected: sources.protected.endpoints().ejected(),
        last_transition: transitions.last().cloned(),
        opened_until: snapshot.opened_until.map(|at| journal.wall(at)),
        failed_probes: snapshot.failed_probes,
        transitions,
    })
}
