//! `GET /circuit-status`: the breaker's state, settings and counts, where the settings came
//! from, and the recent transitions.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use breaker::{Counts, Mode, State};
use breaker_api::BreakerSettings;
use parking_lot::Mutex;
use serde::Serialize;

use crate::applier::ConfigState;
use crate::journal::TransitionRecord;
use crate::protected::Protected;

/// What the handler reads; registered as app data by v2's policy.
pub struct StatusSources {
    pub protected: Arc<Protected>,
    pub config: Arc<Mutex<ConfigState>>,
}

#[derive(Serialize)]
struct CircuitStatus {
    state: State,
    mode: Mode,
    settings: BreakerSettings,
    config_version: String,
    config_source: String,
    config_error: Option<String>,
    config_watch_error: Option<String>,
    counts: Counts,
    last_transition: Option<TransitionRecord>,
    opened_until: Option<String>,
    failed_probes: u32,
    transitions: Vec<TransitionRecord>,
}

pub async fn circuit_status(sources: web::Data<StatusSources>) -> HttpResponse {
    let snapshot = sources.protected.snapshot();
    let config = sources.config.lock().status().clone();
    let journal = sources.protected.journal();
    let transitions = journal.records();
    HttpResponse::Ok().json(CircuitStatus {
        state: snapshot.state,
        mode: snapshot.mode,
        settings: BreakerSettings::from(snapshot.settings.spec()),
        config_version: config.version,
        config_source: config.source,
        config_error: config.error,
        config_watch_error: config.watch_error,
        counts: snapshot.counts,
        last_transition: transitions.last().cloned(),
        opened_until: snapshot.opened_until.map(|at| journal.wall(at)),
        failed_probes: snapshot.failed_probes,
        transitions,
    })
}
