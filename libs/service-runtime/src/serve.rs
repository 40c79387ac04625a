use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::ContentType;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpResponse, HttpServer, Resource, ResponseError};
use prometheus_client::registry::Registry;

use crate::error::ApiError;
use crate::http_metrics::{self, HttpMetrics};
use crate::telemetry::LogFormat;

/// Parses a duration such as `250ms`, `2s` or `1m30s` (the project's one grammar).
pub use duration_text::parse as parse_duration;

/// How every service listens, logs and stops; read from the environment or flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Port to listen on (default depends on the service).
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0")]
    pub bind_addr: IpAddr,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// How long in-flight requests may run on after SIGTERM.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// How long an idle keep-alive connection is kept open before the server closes it.
    #[arg(long, env = "KEEP_ALIVE", default_value = "5s", value_parser = parse_duration)]
    pub keep_alive: Duration,
    /// Worker threads (default: one per core).
    #[arg(long, env = "WORKERS")]
    pub workers: Option<usize>,
}

/// What `/readyz` answers: ready once listening and every gate the service took
/// ([`Service::readiness_gate`]) is open.
#[derive(Debug, Clone, Default)]
struct Readiness {
    closed_gates: Arc<AtomicUsize>,
}

impl Readiness {
    fn is_ready(&self) -> bool {
        self.closed_gates.load(Ordering::Acquire) == 0
    }
}

/// One thing a service must have done before it is ready; opening it twice is harmless.
#[derive(Debug)]
pub struct ReadinessGate {
    closed_gates: Arc<AtomicUsize>,
    open: AtomicBool,
}

impl ReadinessGate {
    pub fn set_ready(&self) {
        if !self.open.swap(true, Ordering::AcqRel) {
            self.closed_gates.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A service being assembled: its name and metrics registry, then [`Service::run`].
pub struct Service {
    name: &'static str,
    registry: Registry,
    readiness: Readiness,
    side: Option<SideListener>,
}

type Routes = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// A listener beside the service's port for routes that must not share it: a port of its own
/// (so a NetworkPolicy can admit fewer callers to it), one worker of its own (so what it holds
/// cannot take the main port's workers), and a bound on its connections (past it, new ones wait
/// in the kernel's backlog, costing the service nothing). No request metrics: its answers may
/// be long polls, which would say nothing of the service's latency.
pub struct SideListener {
    name: &'static str,
    port: u16,
    max_connections: usize,
    routes: Routes,
}

impl SideListener {
    pub fn new(
        name: &'static str,
        port: u16,
        max_connections: usize,
        routes: impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            port,
            max_connections,
            routes: Arc::new(routes),
        }
    }
}

/// How long a side listener's requests (long polls) may run on after SIGTERM: they are not
/// pages, and a client asks again elsewhere.
const SIDE_SHUTDOWN_TIMEOUT: u64 = 1;

impl Service {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            registry: Registry::default(),
            readiness: Readiness::default(),
            side: None,
        }
    }

    /// Also serves `listener` (at most one), on the same address, from [`Service::run`].
    pub fn serve_also(&mut self, listener: SideListener) {
        self.side = Some(listener);
    }

    /// `/readyz` answers 503 until the returned gate, and every other one taken, is open.
    pub fn readiness_gate(&mut self) -> ReadinessGate {
        self.readiness.closed_gates.fetch_add(1, Ordering::AcqRel);
        ReadinessGate {
            closed_gates: self.readiness.closed_gates.clone(),
            open: AtomicBool::new(false),
        }
    }

    /// The registry `/metrics` serves; register service metrics before `run`.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Serves until SIGTERM (graceful: in-flight requests finish within the shutdown
    /// timeout) or SIGINT. `configure` adds the service's own routes on every worker.
    pub async fn run<F>(
        mut self,
        args: &ServeArgs,
        default_port: u16,
        configure: F,
    ) -> std::io::Result<()>
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let http_metrics = web::Data::new(HttpMetrics::register(&mut self.registry));
        let registry = web::Data::new(Arc::new(self.registry));
        let readiness = web::Data::new(self.readiness);
        let port = args.port.unwrap_or(default_port);
        let name = self.name;
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(http_metrics.clone())
                .app_data(registry.clone())
                .app_data(readiness.clone())
                .app_data(json_config())
                .app_data(path_config())
                .wrap(from_fn(http_metrics::record))
                .service(resource("/healthz").get(healthz))
                .service(resource("/readyz").get(readyz))
                .service(resource("/metrics").get(metrics))
                .configure(configure.clone())
                .default_service(web::to(not_found))
        })
        .keep_alive(args.keep_alive)
        .shutdown_timeout(args.shutdown_timeout.as_secs().max(1))
        .bind((args.bind_addr, port))?;
        if let Some(workers) = args.workers {
            server = server.workers(workers);
        }
        for addr in server.addrs() {
            tracing::info!(service = name, %addr, "listening");
        }
        let side = match self.side {
            Some(side) => Some(side.run(args, name)?),
            None => None,
        };
        let side_handle = side.as_ref().map(|s| s.handle());
        if let Some(side) = side {
            actix_web::rt::spawn(side);
        }
        let result = server.run().await;
        // Signals stop both; this covers the main port stopping on its own.
        if let Some(side) = side_handle {
            side.stop(true).await;
        }
        tracing::info!(service = name, "stopped");
        result
    }
}

impl SideListener {
    fn run(
        self,
        args: &ServeArgs,
        service: &'static str,
    ) -> std::io::Result<actix_web::dev::Server> {
        let routes = self.routes;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(json_config())
                .app_data(path_config())
                .configure(|cfg| routes(cfg))
                .default_service(web::to(not_found))
        })
        .workers(1)
        .max_connections(self.max_connections)
        .keep_alive(args.keep_alive)
        .shutdown_timeout(SIDE_SHUTDOWN_TIMEOUT)
        .bind((args.bind_addr, self.port))?;
        for addr in server.addrs() {
            // A message of its own: whoever learns the service's port from "listening" (the
            // tests, the demo) is not misled.
            tracing::info!(service, listener = self.name, %addr, "side listener listening");
        }
        Ok(server.run())
    }
}

/// A route whose other methods get a JSON 405.
pub fn resource(path: &str) -> Resource {
    web::resource(path)
        .app_data(http_metrics::Route(path.to_string()))
        .default_service(web::to(method_not_allowed))
}

/// The largest JSON body a service reads.
pub const MAX_JSON_BODY: usize = 16 * 1024;

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_JSON_BODY)
        .error_handler(|err, _| ApiError::bad_request(err.to_string()).into())
}

fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, _| ApiError::bad_request(err.to_string()).into())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    if readiness.is_ready() {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "starting"}))
    }
}

async fn metrics(registry: web::Data<Arc<Registry>>) -> Result<HttpResponse, ApiError> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|err| {
        ApiError::new(
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            err.to_string(),
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type(ContentType(
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
                .parse()
                .expect("valid mime"),
        ))
        .body(text))
}

async fn not_found() -> HttpResponse {
    ApiError::not_found("no such route").error_response()
}

async fn method_not_allowed() -> HttpResponse {
    ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
    .error_response()
}
