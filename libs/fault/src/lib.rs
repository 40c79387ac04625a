//! Fault injection for the demo's backends: a [`Fault`] set from the environment
//! ([`FaultArgs`]) or at runtime, applied to each answer; and a [`Capacity`] (workers, a
//! service time and a line) for recommendations-service, whose slowdown is the overload
//! chapter's trigger.

mod capacity;

pub use capacity::{Capacity, CapacitySettings, LineFull, MAX_SLOWDOWN, MAX_WORKERS};

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::HttpResponse;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use service_runtime::{parse_duration, ApiError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FaultMode {
    /// Answer normally.
    None,
    /// Wait `hang`, then answer 408 (the seed's bug).
    Hang,
    /// Answer `status` at once.
    Error,
    /// Wait `delay`, then answer normally.
    Slow,
    /// Answer `status` for `errorRate` percent of requests, normally otherwise.
    Flaky,
    /// Start the response, then drop the connection.
    Reset,
    /// Answer 200 with a body that is not the JSON promised.
    Malformed,
}

/// The fault in force. Every field is kept whatever the mode, so switching modes at runtime
/// reuses the configured timings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    pub mode: FaultMode,
    #[serde(with = "duration_text::serde")]
    pub hang: Duration,
    #[serde(with = "duration_text::serde")]
    pub delay: Duration,
    pub status: u16,
    pub error_rate: f64,
    #[serde(flatten)]
    pub capacity: CapacitySettings,
}

/// A runtime change: `mode` and any fields to change with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultUpdate {
    pub mode: FaultMode,
    #[serde(default, with = "duration_text::serde::option")]
    pub hang: Option<Duration>,
    #[serde(default, with = "duration_text::serde::option")]
    pub delay: Option<Duration>,
    pub status: Option<u16>,
    pub error_rate: Option<f64>,
    pub workers: Option<u32>,
    #[serde(default, with = "duration_text::serde::option")]
    pub service_time: Option<Duration>,
    pub slowdown: Option<f64>,
    pub max_waiting: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("status: {0} is not an HTTP error status (400..=599)")]
    Status(u16),
    #[error("errorRate: {0} must be a percentage from 0 to 100")]
    ErrorRate(f64),
    #[error("hang, delay and serviceTime must be at most 1h")]
    TooLong,
    #[error("workers: {0} is more than {MAX_WORKERS}")]
    Workers(u32),
    #[error("slowdown: {0} must be from 1 to {MAX_SLOWDOWN}")]
    Slowdown(f64),
}

const MAX_WAIT: Duration = Duration::from_secs(3600);

impl Fault {
    fn validate(self) -> Result<Self, FaultError> {
        if !(400..=599).contains(&self.status) {
            return Err(FaultError::Status(self.status));
        }
        if !(0.0..=100.0).contains(&self.error_rate) {
            return Err(FaultError::ErrorRate(self.error_rate));
        }
        let c = self.capacity;
        if self.hang > MAX_WAIT || self.delay > MAX_WAIT || c.service_time > MAX_WAIT {
            return Err(FaultError::TooLong);
        }
        if c.workers > MAX_WORKERS {
            return Err(FaultError::Workers(c.workers));
        }
        if !(1.0..=MAX_SLOWDOWN).contains(&c.slowdown) {
            return Err(FaultError::Slowdown(c.slowdown));
        }
        Ok(self)
    }

    /// This fault with `update` applied, checked.
    pub fn updated(self, update: FaultUpdate) -> Result<Self, FaultError> {
        Fault {
            mode: update.mode,
            hang: update.hang.unwrap_or(self.hang),
            delay: update.delay.unwrap_or(self.delay),
            status: update.status.unwrap_or(self.status),
            error_rate: update.error_rate.unwrap_or(self.error_rate),
            capacity: CapacitySettings {
                workers: update.workers.unwrap_or(self.capacity.workers),
                service_time: update.service_time.unwrap_or(self.capacity.service_time),
                slowdown: update.slowdown.unwrap_or(self.capacity.slowdown),
                max_waiting: update.max_waiting.unwrap_or(self.capacity.max_waiting),
            },
        }
        .validate()
    }

    fn error_status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Answers a request under this fault; `answer` computes the healthy answer.
    pub async fn apply<T: Serialize>(
        self,
        answer: impl FnOnce() -> Result<T, ApiError>,
    ) -> Result<HttpResponse, ApiError> {
        match self.mode {
            FaultMode::None => {}
            FaultMode::Hang => {
                tokio::time::sleep(self.hang).await;
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "Service timeout",
                ));
            }
            FaultMode::Error => {
                return Err(ApiError::new(self.error_status(), "injected error"));
            }
            FaultMode::Slow => tokio::time::sleep(self.delay).await,
            FaultMode::Flaky => {
                if draw() * 100.0 < self.error_rate {
                    return Err(ApiError::new(self.error_status(), "injected flaky error"));
                }
            }
            FaultMode::Reset => return Ok(reset_mid_response()),
            FaultMode::Malformed => {
                return Ok(HttpResponse::Ok()
                    .content_type("application/json")
                    .body(r#"{"recommendations": [{"id": 1, "name": "#));
            }
        }
        Ok(HttpResponse::Ok().json(answer()?))
    }
}

/// FAULT_SEED makes `flaky` repeatable (the fault matrix relies on it); otherwise entropy.
static RNG: Mutex<Option<StdRng>> = Mutex::new(None);

fn draw() -> f64 {
    let mut rng = RNG.lock();
    rng.get_or_insert_with(|| {
        match std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        }
    })
    .random()
}

/// A 200 whose body breaks off after its first bytes: the server drops the connection.
fn reset_mid_response() -> HttpResponse {
    let chunks: [Result<Bytes, std::io::Error>; 2] = [
        Ok(Bytes::from_static(b"[{\"id\":1,\"name\":")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected reset",
        )),
    ];
    HttpResponse::Ok()
        .content_type("application/json")
        .streaming(futures_util::stream::iter(chunks))
}

/// The fault at start, from the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct FaultArgs {
    /// The seed's switch: `true` means `FAULT_MODE=hang`.
    #[arg(long, env = "SIMULATE_FAILURE", default_value_t = false,
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    simulate_failure: bool,
    /// none, hang, error, slow, flaky, reset or malformed (overrides SIMULATE_FAILURE).
    #[arg(long, env = "FAULT_MODE", value_enum)]
    fault_mode: Option<FaultMode>,
    /// How long `hang` waits before answering 408.
    #[arg(long, env = "FAILURE_HANG", default_value = "30s", value_parser = parse_duration)]
    failure_hang: Duration,
    /// How long `slow` waits before answering.
    #[arg(long, env = "FAULT_DELAY", default_value = "1s", value_parser = parse_duration)]
    fault_delay: Duration,
    /// Status of `error` and of `flaky`'s failures.
    #[arg(long, env = "FAULT_STATUS", default_value_t = 500)]
    fault_status: u16,
    /// Percentage of `flaky` requests that fail.
    #[arg(long, env = "FAULT_ERROR_RATE", default_value_t = 50.0)]
    fault_error_rate: f64,
    /// Requests worked on at once, the rest waiting in line; 0: no capacity limit.
    #[arg(long, env = "CAPACITY_WORKERS", default_value_t = 0)]
    capacity_workers: u32,
    /// How long one request takes a worker (with CAPACITY_WORKERS).
    #[arg(long, env = "SERVICE_TIME", default_value = "20ms", value_parser = parse_duration)]
    service_time: Duration,
    /// Requests that may wait for a worker; more are answered 503 at once. 0: no bound.
    #[arg(long, env = "MAX_WAITING", default_value_t = 0)]
    max_waiting: u32,
}

impl FaultArgs {
    /// The fault at start, for `main`: a bad setting ends the process with status 2 and a
    /// message naming it.
    pub fn initial_or_exit(&self, service: &str) -> Fault {
        self.initial().unwrap_or_else(|err| {
            eprintln!("{service}: {err}");
            std::process::exit(2);
        })
    }

    pub fn initial(&self) -> Result<Fault, FaultError> {
        let mode = match (self.fault_mode, self.simulate_failure) {
            (Some(mode), _) => mode,
            (None, true) => FaultMode::Hang,
            (None, false) => FaultMode::None,
        };
        Fault {
            mode,
            hang: self.failure_hang,
            delay: self.fault_delay,
            status: self.fault_status,
            error_rate: self.fault_error_rate,
            capacity: CapacitySettings {
                workers: self.capacity_workers,
                service_time: self.service_time,
                slowdown: 1.0,
                max_waiting: self.max_waiting,
            },
        }
        .validate()
    }
}
