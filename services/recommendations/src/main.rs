//! recommendations-service: related products, with fault injection. The fault comes from the
//! environment at start and can be switched at runtime through `PUT /admin/fault`.

// mimalloc, as in every binary of this project (why: services/gateway/src/bin/api-gateway-v2.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;

use std::sync::{Arc, RwLock};

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use clap::Parser;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use service_runtime::{resource, ApiError, ServeArgs, Service};

use fault::{Capacity, Fault, FaultArgs};

#[derive(Debug, Parser)]
#[command(
    name = "recommendations-service",
    version,
    about = "Related products, with fault injection"
)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    fault: FaultArgs,
    /// Bearer token for `/admin/fault`; without it the admin endpoint is disabled.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// This replica's name (the chart sets the pod's), told with each `/admin/fault` answer:
    /// the fault is this replica's alone, and behind a Service one needs to know which it is.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
}

/// Shared by all workers.
pub(crate) struct AppState {
    fault: RwLock<Fault>,
    admin_token: Option<String>,
    pod_name: Option<String>,
    /// Counted when a request arrives, so hanging requests are seen before they end.
    received: Counter,
    in_flight: Gauge,
    /// Workers and their line (with CAPACITY_WORKERS).
    capacity: Arc<Capacity>,
}

impl AppState {
    pub(crate) fn fault(&self) -> Fault {
        *self.fault.read().unwrap_or_else(|e| e.into_inner())
    }
}

const RELATED_COUNT: usize = 3;

async fn recommendations(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.received.inc();
    state.in_flight.inc();
    let _in_flight = scopeguard(&state.in_flight);
    let id = catalog::parse_id(&id).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let settings = state.clone();
    state
        .capacity
        .work(move || settings.fault().capacity)
        .await
        .map_err(|full| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, full.to_string()))?;
    // The fault as it is once the work is done (a switch meanwhile applies).
    let fault = state.fault();
    fault
        .apply(|| {
            catalog::related(id, RELATED_COUNT)
                .ok_or_else(|| ApiError::not_found(format!("product {id} not found")))
        })
        .await
}

/// Decrements the in-flight gauge however the handler ends (including cancellation).
fn scopeguard(gauge: &Gauge) -> impl Drop + '_ {
    struct Guard<'a>(&'a Gauge);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Guard(gauge)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    service_runtime::init_logging(args.serve.log_format);
    let fault = args.fault.initial_or_exit("recommendations-service");
    tracing::info!(mode = ?fault.mode, admin = args.admin_token.is_some(), "fault injection set");
    let state = web::Data::new(AppState {
        fault: RwLock::new(fault),
        admin_token: args.admin_token.filter(|t| !t.is_empty()),
        pod_name: args.pod_name.filter(|n| !n.is_empty()),
        received: Counter::default(),
        in_flight: Gauge::default(),
        capacity: Arc::new(Capacity::default()),
    });
    let mut service = Service::new("recommendations-service");
    service.registry().register(
        "recommendation_requests_received",
        "Recommendation requests received (counted on arrival)",
        state.received.clone(),
    );
    service.registry().register(
        "recommendation_requests_in_flight",
        "Recommendation requests being answered",
        state.in_flight.clone(),
    );
    service.registry().register(
        "recommendation_requests_waiting",
        "Requests waiting for a worker (with CAPACITY_WORKERS)",
        state.capacity.waiting.clone(),
    );
    service
        .run(&args.serve, 8082, move |cfg| {
            cfg.app_data(state.clone())
                .service(resource("/recommendations/{id}").get(recommendations))
                .service(resource("/admin/fault").get(admin::show).put(admin::update));
        })
        .await
}
