use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use breaker_api::BreakerPolicy;
use clap::{Parser, Subcommand};
use controller::leader::{Leadership, LeaseSettings};
use controller::reconcile::{error_policy, reconcile, Context, TARGET_LABEL};
use controller::release;
use controller::replicas::Replicas;
use controller::Metrics;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::runtime::controller::Error as ControllerError;
use kube::runtime::reflector::{store, ObjectRef};
use kube::runtime::{predicates, reflector, watcher, Controller, Predicate, WatchStreamExt};
use kube::{Api, ResourceExt};
use service_runtime::{resource, ReadinessGate, ServeArgs, Service};

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
    /// The one ConfigMap name the controller's Role lets it write (and watch by that name); any
    /// name carrying the label resilience.demo.dev/breaker-target=true when unset (which needs
    /// list and watch on ConfigMaps).
    #[arg(long, env = "TARGET_CONFIGMAP")]
    target_configmap: Option<String>,
    /// The Lease its replicas elect a leader on.
    #[arg(long, env = "LEASE_NAME", default_value = "breaker-controller")]
    lease_name: String,
    /// The Lease's namespace; the watched namespace (or `default`) when unset.
    #[arg(long, env = "LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// How long a standby waits, from the last change of the Lease it saw, before it takes the
    /// Lease over (whole seconds): how long a killed leader's work waits.
    #[arg(long, env = "LEASE_DURATION", default_value = "10s", value_parser = service_runtime::parse_duration)]
    lease_duration: Duration,
    /// The leader stops leading this long after the start of its last successful renewal.
    /// Shorter than the Lease by a margin for a write sent just before it to land; long enough
    /// for two renewals at 3 s each (a slow API server keeps its leader).
    #[arg(long, env = "LEASE_RENEW_DEADLINE", default_value = "7s", value_parser = service_runtime::parse_duration)]
    lease_renew_deadline: Duration,
    /// How often the leader renews and a standby tries (standbys up to 20% later).
    #[arg(long, env = "LEASE_RETRY_PERIOD", default_value = "1s", value_parser = service_runtime::parse_duration)]
    lease_retry_period: Duration,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the BreakerPolicy CRD as YAML.
    Crd,
    /// Run the controller, with health and metrics on PORT (default 8083).
    Run,
    /// GET each URL and exit 0 only if every one answers 2xx within 10 s: the chart's
    /// `helm test` pod (the image has no curl).
    Probe {
        #[arg(required = true)]
        urls: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Crd) => {
            print!("{}", breaker_api::policy::crd_yaml());
            return ExitCode::SUCCESS;
        }
        Some(Command::Probe { urls }) => {
            return actix_web::rt::System::new().block_on(controller::probe::all(urls));
        }
        Some(Command::Run) | None => {}
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
    let identity = lease_identity();
    let mut config = kube::Config::infer().await?;
    // Which replica made a request, in the API server's audit log.
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&format!(
            "breaker-controller/{} ({identity})",
            env!("CARGO_PKG_VERSION")
        ))?,
    ));
    let client = kube::Client::try_from(config)?;
    let mut service = Service::new("breaker-controller");
    let metrics = Metrics::register(service.registry());
    let ready = Arc::new(service.readiness_gate());
    let policies: Api<BreakerPolicy> = namespaced_or_all(&client, &cli.watch_namespace);
    controller::startup::check_crd(&policies).await?;
    let lease = LeaseSettings {
        namespace: cli
            .lease_namespace
            .clone()
            .or_else(|| cli.watch_namespace.clone())
            .unwrap_or_else(|| "default".into()),
        name: cli.lease_name.clone(),
        identity,
        duration: cli.lease_duration,
        renew_deadline: cli.lease_renew_deadline,
        retry_period: cli.lease_retry_period,
    };
    let leadership = Leadership::start(client.clone(), lease)?;
    let (identity, leading) = (leadership.identity.clone(), leadership.gate());
    let server = service.run(&cli.serve, 8083, move |config| {
        let (identity, leading) = (identity.clone(), leading.clone());
        config.service(resource("/leader").get(move || {
            let body = serde_json::json!({
                "identity": identity,
                "leading": leading.is_leading(),
            });
            async move { actix_web::HttpResponse::Ok().json(body) }
        }));
    });
    let gate = leadership.gate();
    let ctx = Arc::new(
        Context::new(client, metrics, gate.clone()).allow_only(cli.target_configmap.clone()),
    );
    let lead = async {
        // A free Lease is taken at once; one still held keeps this replica a standby, which is
        // healthy and ready (a rollout must be able to count it) while it waits.
        if tokio::time::timeout(FIRST_ELECTION, gate.acquired())
            .await
            .is_err()
        {
            tracing::info!(identity = %leadership.identity, "standing by for the Lease");
            ready.set_ready();
        }
        // Leading ends at the renew deadline: the controllers stop (their writes are gated
        // already) and this replica stands by again, ready to lead once more.
        loop {
            gate.acquired().await;
            ctx.metrics.set_leading(true);
            tracing::info!(identity = %leadership.identity, "leading");
            tokio::select! {
                () = run_controllers(&cli, policies.clone(), ctx.clone(), ready.clone()) => return,
                () = gate.lost() => {}
            }
            ctx.metrics.set_leading(false);
            // A term that ended before its first sync must not leave this replica unready.
            ready.set_ready();
            tracing::warn!(identity = %leadership.identity, "stopped leading: standing by");
        }
    };
    let result: Result<(), Box<dyn std::error::Error>> = tokio::select! {
        served = server => served.map_err(Into::into),
        () = lead => Ok(()),
    };
    ctx.metrics.set_leading(false);
    leadership.release().await;
    result
}

/// `<pod>_<start>`: the pod says which replica holds the Lease; the start time keeps a
/// restarted container from taking its predecessor's Lease for its own (it is a new candidate,
/// as client-go's leader election has it).
fn lease_identity() -> String {
    let pod = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("breaker-controller-{}", std::process::id()));
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{pod}_{:x}", started.as_micros())
}

/// How long a replica tries for the Lease before it calls itself a standby.
const FIRST_ELECTION: Duration = Duration::from_secs(1);

fn namespaced_or_all<K>(client: &kube::Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What the leader runs until SIGTERM: the policy reconciler, the release of deleted policies'
/// fields, and the replica watcher.
async fn run_controllers(
    cli: &Cli,
    policies: Api<BreakerPolicy>,
    ctx: Arc<Context>,
    ready: Arc<ReadinessGate>,
) {
    let client = ctx.client.clone();
    // The target ConfigMaps: by name when the Role names it (what RBAC can grant), else by label.
    let targets = match &cli.target_configmap {
        Some(name) => watcher::Config::default().fields(&format!("metadata.name={name}")),
        None => watcher::Config::default().labels(&format!("{TARGET_LABEL}=true")),
    };
    let configmaps: Api<ConfigMap> = namespaced_or_all(&client, &cli.watch_namespace);
    let (store, writer) = store();
    // Reconciles follow spec changes, not status writes (the replica watcher's, up to 2/s per
    // policy while a breaker flaps, would each wake a reconcile for nothing). And finalizer
    // changes: during an upgrade from 0.1.0 its controller still runs for a while and puts its
    // finalizer back, which must come off again at once, not at the next resync.
    let spec_changes = reflector(
        writer,
        watcher(policies.clone(), watcher::Config::default().any_semantic()),
    )
    .applied_objects()
    .predicate_filter(
        predicates::generation.combine(predicates::finalizers),
        Default::default(),
    );
    let by_target = store.clone();
    let policy_controller = Controller::for_stream(spec_changes, store.clone())
        // A hand edit is taken back, and a deleted target reported, as soon as it happens.
        // Its own writes (the version its status records) wake nothing.
        .watches(configmaps.clone(), targets.clone(), move |cm| {
            let (ns, name, version) = (cm.namespace(), cm.name_any(), cm.resource_version());
            by_target
                .state()
                .into_iter()
                .filter(|p| p.namespace() == ns && p.spec.target.config_map == name)
                .filter(|p| p.status.as_ref().and_then(|s| s.config_map_version.clone()) != version)
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        })
        // One backoff paces all of a controller's watches after an error (kube's default
        // grows to 30 s and more: changes made meanwhile would wait with it).
        .trigger_backoff(breaker_api::RewatchBackoff::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
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
    // A deleted policy's fields are released from the ConfigMap's side; its deletion wakes it.
    let deletions = watcher(policies, watcher::Config::default().any_semantic()).filter_map(
        |event| async move {
            match event {
                Ok(watcher::Event::Delete(policy)) => Some(Ok(policy)),
                Ok(_) => None,
                Err(err) => Some(Err(err)),
            }
        },
    );
    let release_controller = Controller::new(configmaps, targets)
        .watches_stream(deletions, |policy: BreakerPolicy| {
            let target = ObjectRef::new(&policy.spec.target.config_map);
            Some(match policy.namespace() {
                Some(ns) => target.within(&ns),
                None => target,
            })
        })
        .trigger_backoff(breaker_api::RewatchBackoff::default())
        .shutdown_on_signal()
        .run(release::reconcile, release::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(err @ ControllerError::QueueError(_)) = result {
                tracing::warn!(error = %err, "ConfigMap watch failed; retrying");
            }
        });
    let pods: Api<Pod> = namespaced_or_all(&client, &cli.watch_namespace);
    // Stopped with the rest when leading ends (its tasks are aborted on drop).
    let replicas = Replicas::new(ctx.clone(), store.clone()).run(pods);
    actix_web::rt::spawn(async move {
        // Ready once the first list has been seen: before that, the controller cannot act.
        // Asked again every 250 ms: the store's readiness wakes only the last task that waited
        // on it, and the controller's own queue waits on it too (kube-runtime 5's DelayedInit).
        loop {
            match tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    tracing::info!("BreakerPolicies synced");
                    ready.set_ready();
                    return;
                }
                // The watch has ended: the controller is stopping.
                Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
    });
    tracing::info!(
        namespace = cli.watch_namespace.as_deref().unwrap_or("(all)"),
        "watching BreakerPolicies"
    );
    tokio::select! {
        _ = futures::future::join(policy_controller, release_controller) => {}
        () = replicas => {}
    }
    tracing::info!("controller stopped");
}
