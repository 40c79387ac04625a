//! Test harness: starts the real binaries (built by `cargo build --workspace --bins`, which
//! `make test` runs first) on 127.0.0.1 with free ports, and talks to them over HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod stall;

pub const ADMIN_TOKEN: &str = "e2e-admin-token";

/// `target/<profile>/<name>`, next to this test binary's `deps/` folder.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (`make test` does)",
        path.display()
    );
    path
}

/// One running service; killed when dropped. Its log goes to a file shown on failure.
pub struct Proc {
    pub name: &'static str,
    pub port: u16,
    /// v2's status port (STATUS_PORT): the whole `/circuit-status` and its waits.
    pub status_port: Option<u16>,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `name` on ports the kernel picks (PORT=0, and v2's STATUS_PORT=0) and learns them
    /// from the service's own log lines, so no two tests can race for a port.
    pub fn start(name: &'static str, env: &[(&str, String)], dir: &Path) -> Proc {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("{name}-{seq}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin_path(name))
            .env_clear()
            .env("PORT", "0")
            .env("STATUS_PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json")
            .env("WORKERS", "2")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut proc = Proc {
            name,
            port: 0,
            status_port: None,
            child,
            log,
        };
        (proc.port, proc.status_port) = proc.wait_listening();
        proc
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// On v2's status port.
    pub fn status_url(&self, path: &str) -> String {
        let port = self
            .status_port
            .unwrap_or_else(|| panic!("{} has no status port", self.name));
        format!("http://127.0.0.1:{port}{path}")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// The port, and v2's status port, once the log has said them.
    fn wait_listening(&mut self) -> (u16, Option<u16>) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let has_status_port = self.name == "api-gateway-v2";
        while Instant::now() < deadline {
            let log = self.log_text();
            let port_of = |message: &str| {
                log.lines().find_map(|line| {
                    let entry: Value = serde_json::from_str(line).ok()?;
                    (entry["message"] == message).then_some(())?;
                    entry["addr"].as_str()?.rsplit_once(':')?.1.parse().ok()
                })
            };
            let port = port_of("listening");
            let status_port = port_of("side listener listening");
            if let Some(port) = port.filter(|_| status_port.is_some() || !has_status_port) {
                return (port, status_port);
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited with {status}:\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} did not start listening within 15 s:\n{}",
            self.name,
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM (graceful shutdown) and waits for the exit, bounded.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
        }
    }
}

/// How recommendations-service should misbehave at start, and v2's settings file.
pub struct StackConfig {
    pub product_env: Vec<(&'static str, String)>,
    pub recommendations_env: Vec<(&'static str, String)>,
    /// Added to both gateways' environments.
    pub gateway_env: Vec<(&'static str, String)>,
    pub v1_timeout: &'static str,
    pub breaker_yaml: String,
    /// v2 watches this ConfigMap (`namespace/name`) with this kubeconfig instead of a file.
    pub v2_configmap: Option<(String, PathBuf)>,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            product_env: vec![],
            recommendations_env: vec![],
            gateway_env: vec![],
            v1_timeout: "3s",
            breaker_yaml: "callTimeout: 300ms\nopenDuration: 1500ms\n".into(),
            v2_configmap: None,
        }
    }
}

/// All four services.
pub struct Stack {
    pub product: Proc,
    pub recommendations: Proc,
    pub v1: Proc,
    pub v2: Proc,
    /// What v2 was started with, for more replicas of it.
    v2_env: Vec<(&'static str, String)>,
    /// Last, so the processes (which print their logs when a test panics) go first.
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub fn start(config: StackConfig) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let product = Proc::start("product-service", &config.product_env, dir.path());
        let mut rec_env = vec![("ADMIN_TOKEN", ADMIN_TOKEN.to_string())];
        rec_env.extend(config.recommendations_env.iter().cloned());
        let recommendations = Proc::start("recommendations-service", &rec_env, dir.path());
        let mut gateway_env = vec![
            ("PRODUCT_SERVICE_URL", product.url("")),
            ("RECOMMENDATIONS_SERVICE_URL", recommendations.url("")),
        ];
        gateway_env.extend(config.gateway_env.iter().cloned());
        let mut v1_env = gateway_env.clone();
        v1_env.push(("UPSTREAM_TIMEOUT", config.v1_timeout.to_string()));
        let v1 = Proc::start("api-gateway-v1", &v1_env, dir.path());
        let config_path = dir.path().join("breaker.yaml");
        std::fs::write(&config_path, &config.breaker_yaml).unwrap();
        let mut v2_env = gateway_env;
        match &config.v2_configmap {
            Some((reference, kubeconfig)) => {
                v2_env.push(("BREAKER_CONFIGMAP", reference.clone()));
                v2_env.push(("KUBECONFIG", kubeconfig.display().to_string()));
            }
            None => v2_env.push(("BREAKER_CONFIG", config_path.display().to_string())),
        }
        let v2 = Proc::start("api-gateway-v2", &v2_env, dir.path());
        Stack {
            product,
            recommendations,
            v1,
            v2,
            v2_env,
            dir,
        }
    }

    /// Another v2 on the same upstreams and settings source, with `extra` in its environment.
    pub fn start_v2_replica(&self, extra: &[(&'static str, String)]) -> Proc {
        let mut env = self.v2_env.clone();
        env.extend(extra.iter().cloned());
        Proc::start("api-gateway-v2", &env, self.dir.path())
    }

    pub fn breaker_config_path(&self) -> PathBuf {
        self.dir.path().join("breaker.yaml")
    }
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .connector(awc::Connector::new().limit(0))
        .finish()
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub raw: String,
    pub elapsed: Duration,
    pub content_type: String,
}

impl Answer {
    pub fn degraded(&self) -> bool {
        self.body["degraded_mode"]
            .as_bool()
            .expect("degraded_mode in body")
    }

    pub fn recommendation_count(&self) -> usize {
        self.body["recommendations"]
            .as_array()
            .expect("recommendations array")
            .len()
    }
}

pub async fn request(
    client: &awc::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let started = Instant::now();
    let method = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client.request(method, url);
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut resp = match body {
        Some(b) => {
            req.insert_header(("content-type", "application/json"))
                .send_body(b.to_string())
                .await
        }
        None => req.send().await,
    }
    .unwrap_or_else(|e| panic!("{url}: {e}"));
    let bytes = resp.body().limit(4 << 20).await.unwrap();
    let raw = String::from_utf8_lossy(&bytes).to_string();
    Answer {
        status: resp.status().as_u16(),
        body: serde_json::from_str(&raw).unwrap_or(Value::Null),
        raw,
        elapsed: started.elapsed(),
        content_type: resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    }
}

/// Sends raw bytes on a new connection to 127.0.0.1:`port` and reads what comes back
/// (bounded), or reports that the peer closed or did not answer within 5 s.
pub async fn raw(port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let _ = s.write_all(request).await;
    let mut buf = vec![0; 4096];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => String::from_utf8_lossy(&buf[..n]).to_string(),
        Ok(_) => "closed".into(),
        Err(_) => "no answer within 5 s".into(),
    }
}

pub async fn get(client: &awc::Client, url: &str) -> Answer {
    request(client, "GET", url, &[], None).await
}

/// Held by tests that assert tight latencies, so two of them never share the CPU: a lock on
/// a file, so it holds across test binaries and processes (cargo test runs test binaries one
/// after the other, nextest runs every test in its own process).
pub struct ExclusiveTiming(#[allow(dead_code)] std::fs::File);

pub fn exclusive_timing() -> ExclusiveTiming {
    let path = std::env::temp_dir().join("circuit-breaker-demo-exclusive-timing.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Released when the file is closed, also if the test panics.
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    ExclusiveTiming(file)
}

/// A figure a test measured: printed with a `figure:` prefix, which `make test` collects
/// into its summary (cargo shows a passing test's output only with --nocapture, which
/// `make test` passes).
#[macro_export]
macro_rules! figure {
    ($($arg:tt)*) => {
        eprintln!("figure: {}", format_args!($($arg)*))
    };
}

/// Opens `n` pooled connections to `proc`, so later timings are the service's, not TCP setup's.
pub async fn warm_connections(client: &awc::Client, proc: &Proc, n: usize) {
    let urls: Vec<String> = (0..n).map(|_| proc.url("/healthz")).collect();
    futures_util::future::join_all(urls.iter().map(|u| get(client, u))).await;
}

/// Counters and gauges from a `/metrics` page, keyed by the full series name with labels.
pub async fn metrics(client: &awc::Client, proc: &Proc) -> HashMap<String, f64> {
    let answer = get(client, &proc.url("/metrics")).await;
    assert_eq!(answer.status, 200);
    answer
        .raw
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// Requests recommendations-service has received (counted on arrival).
pub async fn received(client: &awc::Client, stack: &Stack) -> u64 {
    metrics(client, &stack.recommendations).await["recommendation_requests_received_total"] as u64
}

/// v2's whole `/circuit-status`, from its status port.
pub async fn status(client: &awc::Client, stack: &Stack) -> Value {
    get(client, &stack.v2.status_url("/circuit-status"))
        .await
        .body
}

/// Polls v2's whole `/circuit-status` until `pred` holds, at most `within`.
pub async fn wait_status(
    client: &awc::Client,
    stack: &Stack,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    wait_status_of(client, &stack.v2, within, pred).await
}

/// Polls this v2's whole `/circuit-status` (its status port) until `pred` holds, at most
/// `within`.
pub async fn wait_status_of(
    client: &awc::Client,
    v2: &Proc,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = get(client, &v2.status_url("/circuit-status")).await.body;
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}; last status {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn set_fault(client: &awc::Client, stack: &Stack, body: &str) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let answer = request(
        client,
        "PUT",
        &stack.recommendations.url("/admin/fault"),
        &[("authorization", &auth)],
        Some(body),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.raw);
}

pub fn hang(duration: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SIMULATE_FAILURE", "true".into()),
        ("FAILURE_HANG", duration.into()),
    ]
}
