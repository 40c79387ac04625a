use std::path::PathBuf;
use std::time::Duration;

use breaker::Settings;
use breaker_api::circuit_status::{bounds, is_name};
use outlier::EndpointAddress;
use service_runtime::{parse_duration, ServeArgs};

use crate::sources::file::{self, FileError};
use crate::sources::Origin;
use crate::upstream::Upstreams;

/// What both gateways read from the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[arg(
        long,
        env = "PRODUCT_SERVICE_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub product_service_url: String,
    #[arg(
        long,
        env = "RECOMMENDATIONS_SERVICE_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub recommendations_service_url: String,
    /// recommendations' endpoints, as `name=http://host:port,...`: v1 and v2 in scope Service
    /// spread calls over them at random, call by call (as a mesh or a client-side balancer
    /// does; kube-proxy picks per connection); v2 in scope Endpoint gives each its own
    /// breaker. Without it, RECOMMENDATIONS_SERVICE_URL is the one endpoint.
    #[arg(long, env = "RECOMMENDATIONS_ENDPOINTS")]
    pub recommendations_endpoints: Option<String>,
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "api-gateway-v1",
    version,
    about = "Product pages without protection: all or nothing"
)]
pub struct V1Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// How long v1 waits for each upstream call.
    #[arg(long, env = "UPSTREAM_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// Immediate retries of a recommendations call that failed or timed out, as many clients
    /// do: no budget, no backoff (the overload chapter's v1; 0, the seed's, elsewhere).
    #[arg(long, env = "UPSTREAM_RETRIES", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub upstream_retries: u32,
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "api-gateway-v2",
    version,
    about = "Product pages behind a circuit breaker with fallback"
)]
pub struct V2Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// YAML BreakerSettings file, watched and hot-reloaded; defaults apply without it.
    #[arg(long, env = "BREAKER_CONFIG", conflicts_with = "breaker_configmap")]
    pub breaker_config: Option<PathBuf>,
    /// `namespace/name` of a ConfigMap (written by breaker-controller) to watch through the
    /// Kubernetes API instead of a file: keys `breaker.yaml` and `mode`.
    #[arg(long, env = "BREAKER_CONFIGMAP")]
    pub breaker_configmap: Option<String>,
    /// This replica's name, shown by `/circuit-status` and the dashboard: the pod's name in
    /// Kubernetes (the chart sets it from the downward API).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Seed of the open-duration jitter, for repeatable runs; a random one without it.
    #[arg(long, env = "BREAKER_JITTER_SEED")]
    pub breaker_jitter_seed: Option<u64>,
    /// `namespace/service`: recommendations' endpoints for scope Endpoint come from this
    /// Service's EndpointSlices, watched through the Kubernetes API (ready ones, named after
    /// their pods), instead of RECOMMENDATIONS_ENDPOINTS.
    #[arg(long, env = "RECOMMENDATIONS_ENDPOINTSLICES")]
    pub recommendations_endpointslices: Option<String>,
    /// Port of the status listener: `/circuit-status` whole (endpoints' addresses, errors'
    /// texts) and its long polls, for the controller (the chart opens it to nothing else).
    #[arg(long, env = "STATUS_PORT", default_value_t = 8091)]
    pub status_port: u16,
}

/// Who this v2 replica is, and what sets its breaker apart from the other replicas'.
#[derive(Debug, Clone)]
pub struct Replica {
    pub name: Option<String>,
    pub jitter_seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {value:?} is not a usable http:// base URL ({reason})")]
    BadUrl {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("BREAKER_CONFIGMAP: {0:?} is not namespace/name")]
    BadConfigMap(String),
    #[error("RECOMMENDATIONS_ENDPOINTS: {0}")]
    BadEndpoints(String),
    #[error("RECOMMENDATIONS_ENDPOINTSLICES: {0:?} is not namespace/service")]
    BadService(String),
    #[error("POD_NAME: {0:?} is not {NAME_FORM}")]
    BadPodName(String),
}

impl CommonArgs {
    pub fn upstreams(&self) -> Result<Upstreams, ConfigError> {
        let spread = match &self.recommendations_endpoints {
            Some(_) => self
                .recommendation_endpoints()?
                .into_iter()
                .map(|endpoint| endpoint.address)
                .collect(),
            None => Vec::new(),
        };
        Ok(Upstreams::new(
            base_url("PRODUCT_SERVICE_URL", &self.product_service_url)?,
            base_url(
                "RECOMMENDATIONS_SERVICE_URL",
                &self.recommendations_service_url,
            )?,
            spread,
        ))
    }

    /// recommendations' endpoints.
    pub fn recommendation_endpoints(&self) -> Result<Vec<EndpointAddress>, ConfigError> {
        let Some(list) = &self.recommendations_endpoints else {
            let url = base_url(
                "RECOMMENDATIONS_SERVICE_URL",
                &self.recommendations_service_url,
            )?;
            return Ok(vec![EndpointAddress::new("recommendations-service", url)]);
        };
        endpoint_list(list)
    }
}

/// What a name in `/circuit-status` may be (the controller refuses an answer with any other).
const NAME_FORM: &str = "1 to 253 lowercase letters, digits, '-' or '.'";

fn base_url(var: &'static str, value: &str) -> Result<String, ConfigError> {
    let bad = |reason: &str| ConfigError::BadUrl {
        var,
        value: value.chars().take(80).collect(),
        reason: reason.into(),
    };
    if value.len() > bounds::ADDRESS_BYTES {
        return Err(bad(&format!("longer than {} bytes", bounds::ADDRESS_BYTES)));
    }
    let uri: actix_web::http::Uri = value
        .parse()
        .map_err(|e: actix_web::http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(bad("needs http://host[:port]"));
    }
    if uri.query().is_some() {
        return Err(bad("must not carry a query"));
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// Where v2's settings come from and what they are at start.
#[derive(Debug, Clone)]
pub struct SettingsSource {
    pub origin: Origin,
    pub initial: Settings,
    pub version: String,
}

impl V2Args {
    pub fn replica(&self) -> Result<Replica, ConfigError> {
        use std::hash::{BuildHasher, Hasher};
        let name = self.pod_name.clone().filter(|name| !name.is_empty());
        if let Some(bad) = name.as_deref().filter(|name| !is_name(name)) {
            return Err(ConfigError::BadPodName(bad.chars().take(80).collect()));
        }
        Ok(Replica {
            name,
            // std's hasher keys are random per process: a seed without a crate for it.
            jitter_seed: self.breaker_jitter_seed.unwrap_or_else(|| {
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            }),
        })
    }

    /// The Service whose EndpointSlices give recommendations' endpoints, if one is named.
    pub fn endpoint_slices(&self) -> Result<Option<NamespacedName>, ConfigError> {
        self.recommendations_endpointslices
            .as_deref()
            .map(|reference| {
                NamespacedName::parse(reference)
                    .ok_or_else(|| ConfigError::BadService(reference.into()))
            })
            .transpose()
    }

    /// Reads the settings file once; a bad file at start is an error, not a silent default.
    /// A ConfigMap is read once the API answers; until then the defaults serve.
    pub fn settings_source(&self) -> Result<SettingsSource, ConfigError> {
        let defaults = |origin| SettingsSource {
            origin,
            initial: Settings::default(),
            version: "defaults".into(),
        };
        if let Some(reference) = &self.breaker_configmap {
            return Ok(defaults(configmap_ref(reference)?));
        }
        match &self.breaker_config {
            None => Ok(defaults(Origin::Defaults)),
            Some(path) => {
                let (initial, version) = file::load(path)?;
                Ok(SettingsSource {
                    origin: Origin::File(path.clone()),
                    initial,
                    version,
                })
            }
        }
    }
}

fn endpoint_list(list: &str) -> Result<Vec<EndpointAddress>, ConfigError> {
    let mut endpoints: Vec<EndpointAddress> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((name, url)) = item.split_once('=') else {
            return Err(ConfigError::BadEndpoints(format!(
                "{item:?} is not name=http://host:port"
            )));
        };
        let name = name.trim();
        if endpoints.iter().any(|e| e.name == name) {
            return Err(ConfigError::BadEndpoints(format!(
                "{name:?}: each endpoint needs a name of its own"
            )));
        }
        if !is_name(name) {
            return Err(ConfigError::BadEndpoints(format!(
                "{name:?}: a name is {NAME_FORM}, as a pod's"
            )));
        }
        let url = base_url("RECOMMENDATIONS_ENDPOINTS", url.trim())?;
        endpoints.push(EndpointAddress::new(name, url));
    }
    if endpoints.is_empty() {
        return Err(ConfigError::BadEndpoints("names no endpoint".into()));
    }
    Ok(endpoints)
}

fn configmap_ref(reference: &str) -> Result<Origin, ConfigError> {
    let NamespacedName { namespace, name } = NamespacedName::parse(reference)
        .ok_or_else(|| ConfigError::BadConfigMap(reference.into()))?;
    Ok(Origin::ConfigMap { namespace, name })
}

/// An object of the Kubernetes API by namespace and name, as `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl NamespacedName {
    /// `namespace/name`, each a DNS name.
    fn parse(reference: &str) -> Option<Self> {
        let dns_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        match reference.split_once('/') {
            Some((namespace, name)) if dns_name(namespace) && dns_name(name) => Some(Self {
                namespace: namespace.into(),
                name: name.into(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(
            base_url("X", "http://127.0.0.1:8081/").unwrap(),
            "http://127.0.0.1:8081"
        );
        assert!(base_url("X", "127.0.0.1:8081").is_err());
        assert!(base_url("X", "https://example").is_err());
        assert!(base_url("X", "http://h/?q=1").is_err());
        assert!(base_url("X", "not a url").is_err());
    }

    #[test]
    fn endpoint_lists_are_named_urls() {
        assert_eq!(
            endpoint_list("a=http://127.0.0.1:1/, b = http://127.0.0.1:2").unwrap(),
            [
                EndpointAddress::new("a", "http://127.0.0.1:1"),
                EndpointAddress::new("b", "http://127.0.0.1:2")
            ]
        );
        for bad in [
            "",
            ",",
            "http://127.0.0.1:1",
            "a=x",
            "a=http://h:1,a=http://h:2",
            "=http://h:1",
            // What the controller would refuse to read back (names as pods', bounded).
            "Rec A=http://h:1",
            &format!("{}=http://h:1", "a".repeat(254)),
            &format!("a=http://{}:1", "h".repeat(256)),
        ] {
            assert!(endpoint_list(bad).is_err(), "{bad}");
        }
        assert!(endpoint_list(&format!("{}=http://h:1", "a".repeat(253))).is_ok());
    }

    #[test]
    fn a_pod_name_is_a_name_the_controller_reads_back() {
        let args = |name: &str| {
            <V2Args as clap::Parser>::try_parse_from(["api-gateway-v2", "--pod-name", name])
                .unwrap()
        };
        assert_eq!(
            args("v2-0").replica().unwrap().name.as_deref(),
            Some("v2-0")
        );
        assert_eq!(args("").replica().unwrap().name, None);
        let err = args("V2 zero").replica().unwrap_err().to_string();
        assert!(
            err.contains("POD_NAME") && err.contains("lowercase"),
            "{err}"
        );
    }

    #[test]
    fn configmap_references_are_namespace_slash_name() {
        assert_eq!(
            configmap_ref("demo/api-gateway-v2-breaker").unwrap(),
            Origin::ConfigMap {
                namespace: "demo".into(),
                name: "api-gateway-v2-breaker".into()
            }
        );
        for bad in ["", "demo", "/x", "demo/", "Demo/x", "a/b/c", "demo/x y"] {
            assert!(configmap_ref(bad).is_err(), "{bad}");
        }
    }
}
