//! The one thing the gateways differ in: how they call recommendations-service. Each policy
//! brings its own routes and background work, so serving knows nothing of either.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use outlier::EndpointAddress;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use service_runtime::{resource, ReadinessGate, SideListener};

use crate::applier::{self, ConfigState};
use crate::config::{NamespacedName, Replica, SettingsSource};
use crate::dashboard;
use crate::endpoint_slices;
use crate::guard::Guard;
use crate::metrics::UpstreamMetrics;
use crate::sources::{Origin, Update};
use crate::status::{self, HeldWaits, StatusSources};
use crate::upstream::{Recommendations, UpstreamError, Upstreams};

pub enum Policy {
    /// v1: wait up to `timeout`, try again at once up to `retries` times; a failure fails the
    /// whole page.
    AllOrNothing { timeout: Duration, retries: u32 },
    /// v2: circuit breaker, bulkhead and call timeout, and the load defences its settings turn
    /// on; a failure serves the fallback.
    Protected(Protection),
}

/// What v2 runs: its guard around recommendations, where its settings come from and what it
/// says of them, and who it is.
pub struct Protection {
    guard: Arc<Guard>,
    config: Arc<Mutex<ConfigState>>,
    origin: Origin,
    replica: Option<String>,
    /// The Service whose EndpointSlices keep the endpoints up to date.
    slices: Option<NamespacedName>,
    waits: Arc<HeldWaits>,
    status_port: u16,
}

/// recommendations' endpoints: those known at start, and where later ones come from in
/// Kubernetes.
pub struct Endpoints {
    pub at_start: Vec<EndpointAddress>,
    pub slices: Option<NamespacedName>,
}

impl Protection {
    pub fn new(
        source: SettingsSource,
        replica: Replica,
        endpoints: Endpoints,
        status_port: u16,
        registry: &mut Registry,
    ) -> Self {
        let config = ConfigState::new(
            source.origin.describe(),
            source.version,
            source.origin.loaded_at_start(),
        );
        Self {
            guard: Arc::new(Guard::new(
                source.initial,
                &endpoints.at_start,
                replica.jitter_seed,
                registry,
            )),
            config: Arc::new(Mutex::new(config)),
            origin: source.origin,
            replica: replica.name,
            slices: endpoints.slices,
            waits: Arc::new(HeldWaits::register(registry)),
            status_port,
        }
    }
}

impl Policy {
    /// Deadline for the product call: v2 fails fast there too.
    pub fn product_timeout(&self) -> Duration {
        match self {
            Policy::AllOrNothing { timeout, .. } => *timeout,
            Policy::Protected(v2) => v2.guard.call_timeout(),
        }
    }

    pub async fn recommendations(
        &self,
        upstreams: &Upstreams,
        client: &awc::Client,
        metrics: &UpstreamMetrics,
        id: u32,
    ) -> Result<Recommendations, UpstreamError> {
        match self {
            Policy::AllOrNothing { timeout, retries } => {
                let mut attempt = 0;
                let products = loop {
                    match upstreams
                        .recommendations(client, metrics, id, *timeout, None)
                        .await
                    {
                        Err(_) if attempt < *retries => attempt += 1,
                        answer => break answer?,
                    }
                };
                Ok(Recommendations {
                    products,
                    degraded: false,
                })
            }
            Policy::Protected(v2) => {
                // Owned, so that a half-open probe can run on after its user is answered.
                let (upstreams, client, metrics) =
                    (upstreams.clone(), client.clone(), metrics.clone());
                Ok(v2
                    .guard
                    .call(move |timeout, at| {
                        let (upstreams, client, metrics) =
                            (upstreams.clone(), client.clone(), metrics.clone());
                        async move {
                            upstreams
                                .recommendations(&client, &metrics, id, timeout, at.as_deref())
                                .await
                        }
                    })
                    .await)
            }
        }
    }

    /// Background work, started once inside the runtime. `settings_loaded` opens once the
    /// policy knows its settings.
    pub fn start(&self, settings_loaded: ReadinessGate) {
        match self {
            Policy::AllOrNothing { .. } => settings_loaded.set_ready(),
            Policy::Protected(v2) => {
                v2.guard.spawn_ticker();
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Update>();
                applier::spawn(v2.config.clone(), rx, v2.guard.clone(), settings_loaded);
                v2.origin.spawn_watch(tx);
                if let Some(service) = v2.slices.clone() {
                    let guard = v2.guard.clone();
                    endpoint_slices::spawn_watch(service, move |endpoints| {
                        guard.set_endpoints(&endpoints)
                    });
                }
            }
        }
    }

    /// The policy's own routes.
    pub fn routes(&self, cfg: &mut web::ServiceConfig) {
        if let Policy::Protected(v2) = self {
            cfg.app_data(v2.status_sources())
                .service(resource("/circuit-status").get(status::circuit_status))
                .service(resource("/dashboard").get(dashboard::dashboard));
        }
    }

    /// v2's status port: the whole `/circuit-status` and its waits, for the controller.
    pub fn status_listener(&self) -> Option<SideListener> {
        let Policy::Protected(v2) = self else {
            return None;
        };
        let sources = v2.status_sources();
        Some(SideListener::new(
            "status",
            v2.status_port,
            status::MAX_CONNECTIONS,
            move |cfg| {
                cfg.app_data(sources.clone())
                    .service(resource("/circuit-status").get(status::detailed_circuit_status));
            },
        ))
    }
}

impl Protection {
    fn status_sources(&self) -> web::Data<StatusSources> {
        web::Data::new(StatusSources {
            guard: self.guard.clone(),
            config: self.config.clone(),
            replica: self.replica.clone(),
            waits: self.waits.clone(),
        })
    }
}
