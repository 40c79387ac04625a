//! The two API gateways share everything but their policy for the recommendations call:
//! v1 waits as long as its timeout and fails the whole page; v2 goes through a circuit
//! breaker and answers with a fallback (`degraded_mode`) instead.
//!
//! Data flows one way: settings sources → applier → breaker (in `guard`) ← handler.

mod applier;
mod config;
mod dashboard;
mod defences;
mod endpoint_slices;
mod guard;
mod handler;
mod journal;
mod metrics;
mod policy;
mod revision;
mod sources;
mod status;
mod upstream;

use std::process::ExitCode;
use std::sync::Arc;

use actix_web::web;
use clap::Parser;
use service_runtime::{resource, Service};

pub use config::{ConfigError, SettingsSource, V1Args, V2Args};

use crate::handler::Gateway;
use crate::metrics::UpstreamMetrics;
use crate::policy::{Endpoints, Policy, Protection};

pub fn run_v1() -> ExitCode {
    let args = V1Args::parse();
    service_runtime::init_logging(args.common.serve.log_format);
    let upstreams = match args.common.upstreams() {
        Ok(u) => u,
        Err(err) => return fail("api-gateway-v1", &err),
    };
    let mut service = Service::new("api-gateway-v1");
    let metrics = UpstreamMetrics::register(service.registry());
    let gateway = Gateway {
        upstreams,
        metrics,
        policy: Policy::AllOrNothing {
            timeout: args.upstream_timeout,
            retries: args.upstream_retries,
        },
    };
    serve(service, gateway, &args.common.serve, 8080)
}

pub fn run_v2() -> ExitCode {
    let args = V2Args::parse();
    service_runtime::init_logging(args.common.serve.log_format);
    let (upstreams, source, endpoints, replica) = match args.common.upstreams().and_then(|u| {
        let endpoints = Endpoints {
            at_start: args.common.recommendation_endpoints()?,
            slices: args.endpoint_slices()?,
        };
        Ok((u, args.settings_source()?, endpoints, args.replica()?))
    }) {
        Ok(all) => all,
        Err(err) => return fail("api-gateway-v2", &err),
    };
    tracing::info!(source = %source.origin.describe(), version = %source.version, "breaker settings loaded");
    let mut service = Service::new("api-gateway-v2");
    let metrics = UpstreamMetrics::register(service.registry());
    let gateway = Gateway {
        upstreams,
        metrics,
        policy: Policy::Protected(Protection::new(
            source,
            replica,
            endpoints,
            args.status_port,
            service.registry(),
        )),
    };
    serve(service, gateway, &args.common.serve, 8090)
}

fn fail(name: &str, err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{name}: {err}");
    ExitCode::from(2)
}

/// Ready once product-service has accepted a connection and the policy knows its settings.
fn serve(
    mut service: Service,
    gateway: Gateway,
    args: &service_runtime::ServeArgs,
    default_port: u16,
) -> ExitCode {
    let product_reachable = service.readiness_gate();
    let settings_loaded = service.readiness_gate();
    let gateway = Arc::new(gateway);
    if let Some(listener) = gateway.policy.status_listener() {
        service.serve_also(listener);
    }
    let result = actix_web::rt::System::new().block_on(async move {
        gateway.policy.start(settings_loaded);
        let upstreams = gateway.clone();
        actix_web::rt::spawn(async move {
            upstreams.upstreams.product_reachable().await;
            product_reachable.set_ready();
        });
        service
            .run(args, default_port, move |cfg| {
                cfg.app_data(web::Data::new(upstream::client()))
                    .app_data(web::Data::from(gateway.clone()))
                    .service(resource("/product-details/{id}").get(handler::product_details));
                gateway.policy.routes(cfg);
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
