//! `GET /circuit-status`: the breaker's state, settings and counts, where the settings came
//! from, and the recent transitions.
//!
//! `?after=<revision>&wait=<duration>` holds the answer until the `revision` it gave has moved
//! on (a transition, new settings), or `wait` (at most [`MAX_WAIT`]) has passed: a watcher (the
//! controller) learns of a transition at once, without polling. Held answers are bounded
//! ([`HeldWaits`]): past the bound a wait is answered at once, with `Retry-After: 1`, and
//! counted, so a flood of waits costs a connection each, not a worker's memory for a minute.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use breaker_api::circuit_status::{BreakerReport, CircuitStatus, EndpointStatus};
use breaker_api::BreakerSettings;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
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
    pub waits: Arc<HeldWaits>,
}

/// How many `?wait` answers are held at once, at most [`HeldWaits::MAX`]. The controller's
/// leader holds one per replica; the rest is room for people watching.
pub struct HeldWaits {
    held: AtomicUsize,
    held_now: Gauge,
    refused: Counter,
}

impl HeldWaits {
    pub const MAX: usize = 64;

    pub fn register(registry: &mut Registry) -> Self {
        let waits = Self {
            held: AtomicUsize::new(0),
            held_now: Gauge::default(),
            refused: Counter::default(),
        };
        registry.register(
            "circuit_status_waits_held",
            "/circuit-status answers held until a change (?after&wait), now",
            waits.held_now.clone(),
        );
        registry.register(
            "circuit_status_waits_refused",
            "/circuit-status waits answered at once because the most that may be held already were",
            waits.refused.clone(),
        );
        waits
    }

    /// A place among the held waits, or `None` (counted) when all are taken.
    fn hold(&self) -> Option<HeldWait<'_>> {
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < Self::MAX).then_some(n + 1)
            });
        match taken {
            Ok(_) => {
                self.held_now.inc();
                Some(HeldWait(self))
            }
            Err(_) => {
                self.refused.inc();
                None
            }
        }
    }
}

/// Gives its place back when the answer goes (or the client does).
struct HeldWait<'a>(&'a HeldWaits);

impl Drop for HeldWait<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.held_now.dec();
    }
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
            let Some(_held) = sources.waits.hold() else {
                let mut answer = current(&sources);
                answer.headers_mut().insert(
                    actix_web::http::header::RETRY_AFTER,
                    actix_web::http::header::HeaderValue::from_static("1"),
                );
                return Ok(answer);
            };
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
