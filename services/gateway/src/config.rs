use std::path::PathBuf;
use std::time::Duration;

use breaker::Settings;
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
}

impl CommonArgs {
    pub fn upstreams(&self) -> Result<Upstreams, ConfigError> {
        Ok(Upstreams::new(
            base_url("PRODUCT_SERVICE_URL", &self.product_service_url)?,
            base_url(
                "RECOMMENDATIONS_SERVICE_URL",
                &self.recommendations_service_url,
            )?,
        ))
    }
}

fn base_url(var: &'static str, value: &str) -> Result<String, ConfigError> {
    let bad = |reason: &str| ConfigError::BadUrl {
        var,
        value: value.into(),
        reason: reason.into(),
    };
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
    pub fn replica(&self) -> Replica {
        use std::hash::{BuildHasher, Hasher};
        Replica {
            name: self.pod_name.clone().filter(|name| !name.is_empty()),
            // std's hasher keys are random per process: a seed without a crate for it.
            jitter_seed: self.breaker_jitter_seed.unwrap_or_else(|| {
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            }),
        }
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

fn configmap_ref(reference: &str) -> Result<Origin, ConfigError> {
    let dns_label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    match reference.split_once('/') {
        Some((namespace, name)) if dns_label(namespace) && dns_label(name) => {
            Ok(Origin::ConfigMap {
                namespace: namespace.into(),
                name: name.into(),
            })
        }
        _ => Err(ConfigError::BadConfigMap(reference.into())),
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
