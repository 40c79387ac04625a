use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use controller::reconcile::{error_policy, reconcile, Context};
use controller::{BreakerPolicy, Metrics};
use futures::StreamExt;
use kube::runtime::{watcher, Controller};
use kube::Api;
use service_runtime::{ServeArgs, Service};

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
        print!("{}", controller::crd::crd_yaml());
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
    let policies: Api<BreakerPolicy> = match &cli.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let ctx = Arc::new(Context::new(client, metrics));
    tracing::info!(
        namespace = cli.watch_namespace.as_deref().unwrap_or("(all)"),
        "watching BreakerPolicies"
    );
    let controller = Controller::new(policies, watcher::Config::default().any_semantic())
        .trigger_backoff(kube_watch::RewatchBackoff::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile loop");
            }
        });
    let server = service.run(&cli.serve, 8083, |_| {});
    tokio::select! {
        served = server => served?,
        () = controller => tracing::info!("controller stopped"),
    }
    Ok(())
}
