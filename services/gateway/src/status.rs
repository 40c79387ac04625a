//! `GET /circuit-status`: the breaker's state, settings and counts, where the settings came
//! from, and the recent transitions.
//!
//! `?after=<revision>&wait=<duration>` holds the answer until the `revision` it gave has moved
//! on (a transition, new settings), or `wait` (at most [`MAX_WAIT`]) has passed: a watcher (the
//! controller) learns of a transition at once, without polling.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use breaker_api::circuit_status::{BreakerReport, CircuitStatus, EndpointStatus};
use breaker_api::BreakerSettings;
use parking_lot::Mutex;
use serde::Deserialize;
use service_runtime::ApiError;

use crate::applier::ConfigState;
use crate::guard::Guard;

/// What the handler reads; registered as app data by v2's policy.
pub struct StatusSources {
    pub guard: Arc<Guard>,
    pub config: Arc<Mutex<ConfigState>>,
    /// This replica's name (its pod's, in Kubernetes).
    pub replica: Option<String>,
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
            let revision = sources.guard.revision();
            let _ = tokio::time::timeout(wait, revision.moved_past(after)).await;
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
    let journal = sources.guard.journal();
    // Read first: an answer is never older than the revision it carries.
    let revision = sources.guard.revision().current();
    let snapshot = sources.guard.snapshot();
    let config = sources.config.lock().status().clone();
    let transitions = journal.records();
    let endpoints = sources.guard.endpoints();
    HttpResponse::Ok().json(CircuitStatus {
        replica: sources.replica.clone(),
        report: BreakerReport {
            revision,
            state: snapshot.state,
            mode: snapshot.mode,
            config_version: config.version,
            last_transition: transitions.last().cloned(),
            transitions,
            ejected: endpoints.ejected(),
            endpoints: endpoints
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
            load: sources.guard.defences().status(),
        },
        settings: BreakerSettings::from(snapshot.settings.spec()),
        config_source: config.source,
        config_error: config.error,
        config_watch_error: config.watch_error,
        counts: snapshot.counts,
        scope: snapshot.settings.scope,
        opened_until: snapshot.opened_until.map(|at| journal.wall(at)),
        failed_probes: snapshot.failed_probes,
    })
}
