//! `GET /circuit-status`: the breaker's state, settings and counts, where the settings came
//! from, and the recent transitions, in two answers:
//!
//! - on v2's port, to anyone: the seed's answer, without what only an operator needs
//!   (endpoints' addresses, the text of a settings error or a watch error) and without waits;
//! - on the status port (`STATUS_PORT`, which the chart's NetworkPolicy opens to the controller
//!   only): the whole answer, and `?after=<revision>&wait=<duration>`, which holds the answer
//!   until the `revision` it gave has moved on (a transition, new settings), or `wait` (at most
//!   [`MAX_WAIT`]) has passed: a watcher (the controller) learns of a transition at once,
//!   without polling.
//!
//! Held answers are bounded twice. At most [`HeldWaits::MAX`] are held; past that a wait is
//! answered at once, with `Retry-After: 1`, and counted. And the status port takes at most
//! [`MAX_CONNECTIONS`] connections, on a worker of its own: a flood of waits waits in the
//! kernel's backlog, and costs the pages nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use breaker_api::circuit_status::{
    bounded_text, bounds, BreakerReport, CircuitStatus, EndpointStatus,
};
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

/// Connections the status port serves at once: a held wait each, and as many again answered at
/// once.
pub const MAX_CONNECTIONS: usize = 2 * HeldWaits::MAX;

/// What the answer on v2's own port says in place of an error's text.
const SETTINGS_REFUSED: &str =
    "the newest settings were refused; v2's log and its status port say why";
const SOURCE_UNREADABLE: &str =
    "the settings source cannot be read; v2's log and its status port say why";

/// Who an answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// Whoever reaches v2's port.
    Anyone,
    /// Whoever reaches the status port: the controller.
    Operator,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    after: Option<u64>,
    wait: Option<String>,
}

/// On v2's port: the answer at once, for anyone.
pub async fn circuit_status(
    sources: web::Data<StatusSources>,
    query: web::Query<WaitQuery>,
) -> Result<HttpResponse, ApiError> {
    if query.after.is_some() || query.wait.is_some() {
        return Err(ApiError::bad_request(
            "?after&wait are answered on the status port (STATUS_PORT) only",
        ));
    }
    Ok(current(&sources, Audience::Anyone))
}

/// On the status port: the whole answer, at once or held.
pub async fn detailed_circuit_status(
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
                let mut answer = current(&sources, Audience::Operator);
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
    Ok(current(&sources, Audience::Operator))
}

fn current(sources: &StatusSources, audience: Audience) -> HttpResponse {
    let detailed = audience == Audience::Operator;
    let journal = sources.guard.journal();
    // Read first: an answer is never older than the revision it carries.
    let revision = sources.guard.revision().current();
    let snapshot = sources.guard.snapshot();
    let config = sources.config.lock().status().clone();
    let transitions = journal.records();
    let endpoints = sources.guard.endpoints();
    // Those out of rotation first, then cut to the bound (as the ejected names).
    let mut listed = endpoints.endpoints();
    listed.sort_by_key(|e| e.ejection().is_none());
    listed.truncate(bounds::ENDPOINTS);
    let mut ejected = endpoints.ejected();
    ejected.truncate(bounds::ENDPOINTS);
    let (config_error, config_watch_error) = match audience {
        Audience::Operator => (
            config.error.map(bounded_text),
            config.watch_error.map(bounded_text),
        ),
        Audience::Anyone => (
            config.error.map(|_| SETTINGS_REFUSED.to_string()),
            config.watch_error.map(|_| SOURCE_UNREADABLE.to_string()),
        ),
    };
    HttpResponse::Ok().json(CircuitStatus {
        replica: sources.replica.clone(),
        report: BreakerReport {
            revision,
            state: snapshot.state,
            mode: snapshot.mode,
            config_version: config.version,
            last_transition: transitions.last().cloned(),
            transitions,
            ejected,
            endpoints: listed
                .iter()
                .map(|e| {
                    let s = e.snapshot();
                    let ejection = e.ejection();
                    EndpointStatus {
                        name: e.name.clone(),
                        address: detailed.then(|| e.address.to_string()),
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
        config_source: bounded_text(config.source),
        config_error,
        config_watch_error,
        counts: snapshot.counts,
        scope: snapshot.settings.scope,
        opened_until: snapshot.opened_until.map(|at| journal.wall(at)),
        failed_probes: snapshot.failed_probes,
    })
}
