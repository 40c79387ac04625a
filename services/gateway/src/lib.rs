//! The two API gateways share everything but their policy for the recommendations call:
//! v1 waits as long as its timeout and fails the whole page; v2 goes through a circuit
//! breaker and answers with a fallback (`degraded_mode`) instead.

mod config;
mod configmap;
mod dashboard;
mod handler;
mod metrics;
mod policy;
mod protected;
mod reload;
mod upstream;

use std::process::ExitCode;
use std::sync::Arc;

use actix_web::web;
use clap::Parser;
use service_runtime::{resource, Service};

pub use config::{ConfigError, V1Args, V2Args};

use crate::handler::Gateway;
use crate::metrics::UpstreamMetrics;
use crate::policy::Policy;
use crate::protected::Protected;

pub fn run_v1() -> ExitCode {
    let args = V1Args::parse();
    service_runtime::init_logging(args.common.serve.log_format);
    let upstreams = match args.common.upstreams() {
        Ok(u) => u,
        Err(err) => return fail("api-gateway-v1", &err),
    };
    let mut service = Service::new("api-gateway-v1");
    let metrics = UpstreamMetrics::register(service.registry());
    let gateway = Arc::new(Gateway {
        upstreams,
        metrics,
        policy: Policy::AllOrNothing {
            timeout: args.upstream_timeout,
        },
    });
    serve(service, gateway, &args.common.serve, 8080, |_| {})
}

pub fn run_v2() -> ExitCode {
    let args = V2Args::parse();
    service_runtime::init_logging(args.common.serve.log_format);
    let (upstreams, source) = match args
        .common
        .upstreams()
        .and_then(|u| Ok((u, args.settings_source()?)))
    {
        Ok(pair) => pair,
        Err(err) => return fail("api-gateway-v2", &err),
    };
    tracing::info!(source = %source.describe(), version = %source.version, "breaker settings loaded");
    let mut service = Service::new("api-gateway-v2");
    let metrics = UpstreamMetrics::register(service.registry());
    let protected = Arc::new(Protected::new(source, service.registry()));
    let gateway = Arc::new(Gateway {
        upstreams,
        metrics,
        policy: Policy::Protected(protected.clone()),
    });
    serve(service, gateway, &args.common.serve, 8090, move |cfg| {
        cfg.app_data(web::Data::from(protected.clone()))
            .service(resource("/circuit-status").get(protected::circuit_status))
            .service(resource("/dashboard").get(dashboard::dashboard));
    })
}

fn fail(name: &str, err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{name}: {err}");
    ExitCode::from(2)
}

fn serve<F>(
    mut service: Service,
    gateway: Arc<Gateway>,
    args: &service_runtime::ServeArgs,
    default_port: u16,
    extra: F,
) -> ExitCode
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let readiness = service.readiness_gate();
    let result = actix_web::rt::System::new().block_on(async move {
        if let Policy::Protected(protected) = &gateway.policy {
            protected.start_background_tasks();
        }
        let upstreams = gateway.clone();
        actix_web::rt::spawn(async move {
            upstreams.upstreams.product_reachable().await;
            readiness.set_ready();
        });
        service
            .run(args, default_port, move |cfg| {
                cfg.app_data(web::Data::new(upstream::client()))
                    .app_data(web::Data::from(gateway.clone()))
                    .service(resource("/product-details/{id}").get(handler::product_details));
                extra(cfg);
            })
            .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}
