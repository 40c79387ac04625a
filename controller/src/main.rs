use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use breaker_api::BreakerPolicy;
use clap::{Parser, Subcommand};
use controller::reconcile::{error_policy, reconcile, Context};
use controller::replicas::Replicas;
use controller::Metrics;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Error as ControllerError;
use kube::runtime::{watcher, Controller};
use kube::Api;
use service_runtime::{ServeArgs, Service};

// mimalloc, as in every binary of this project (why: services/gateway/src/bin/api-gateway-v2.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "breaker-controller",
    version,
    about = "BreakerPolicy → the v2 gateway's breaker ConfigMap"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Watch BreakerPolicies in this namespace only (needs only a Role); all namespaces when unset.
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the BreakerPolicy CRD as YAML.
    Crd,
    /// Run the controller, with health and metrics on PORT (default 8083).
    Run,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", breaker_api::policy::crd_yaml());
        return ExitCode::SUCCESS;
    }
    service_runtime::init_logging(cli.serve.log_format);
    let result = actix_web::rt::System::new().block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "breaker-controller failed");
            eprintln!("breaker-controller: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let client = kube::Client::try_default().await?;
    let mut service = Service::new("breaker-controller");
    let metrics = Metrics::register(service.registry());
    let synced = service.readiness_gate();
    let policies: Api<BreakerPolicy> = match &cli.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    controller::startup::check_crd(&policies).await?;
    let ctx = Arc::new(Context::new(client, metrics));
    tracing::info!(
        namespace = cli.watch_namespace.as_deref().unwrap_or("(all)"),
        "watching BreakerPolicies"
    );
    let controller = Controller::new(policies, watcher::Config::default().any_semantic())
        .trigger_backoff(breaker_api::RewatchBackoff::default());
    // Ready once the first list has been seen: before that, the controller cannot act.
    // Asked again every 250 ms: the store's readiness wakes only the last task that waited on
    // it, and the controller's own queue waits on it too (kube-runtime 5's DelayedInit).
    let store = controller.store();
    let pods: Api<Pod> = match &cli.watch_namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    actix_web::rt::spawn(Replicas::new(ctx.clone(), store.clone()).run(pods));
    actix_web::rt::spawn(async move {
        loop {
            match tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    tracing::info!("BreakerPolicies synced");
                    synced.set_ready();
                    return;
                }
                // The watch has ended: the controller is stopping.
                Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
    });
    let controller = controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                // Logged with its backoff by error_policy.
                Err(ControllerError::ReconcilerFailed(..)) => {}
                // A policy deleted while queued: nothing to do.
                Err(ControllerError::ObjectNotFound(..)) => {}
                // Watch failures: a missing CRD, an RBAC denial, an API outage.
                Err(err) => tracing::warn!(error = %err, "BreakerPolicy watch failed; retrying"),
            }
        });
    let server = service.run(&cli.serve, 8083, |_| {});
    tokio::select! {
        served = server => served?,
        () = controller => tracing::info!("controller stopped"),
    }
    Ok(())
}
