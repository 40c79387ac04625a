//! etcd and kube-apiserver, built from their Go modules (`make control-plane-bins`), started on
//! 127.0.0.1 on ports reserved below the ephemeral range: a real API server for tests of
//! Kubernetes code, with no cluster, kubelet or Docker. RBAC is on; a static token file gives three identities: an admin, and the
//! service accounts of the controller and of the v2 gateway, so Roles bound to those service
//! accounts (as the chart ships them) are what tests exercise. Everything stops on drop,
//! including during a panic.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use rand::distr::{Alphanumeric, SampleString};

/// The namespace of the service-account identities.
pub const SYSTEM_NAMESPACE: &str = "demo";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is missing: run `make control-plane-bins` (builds etcd and kube-apiserver from their Go modules)")]
    MissingBinary(PathBuf),
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what} did not become ready within {secs} s; its log:\n{log}")]
    NotReady {
        what: &'static str,
        secs: u64,
        log: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("openssl genrsa failed: {0}")]
    KeyGen(String),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
}

/// Who talks to the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Admin,
    Controller,
    Gateway,
}

impl Who {
    pub const ALL: [Who; 3] = [Who::Admin, Who::Controller, Who::Gateway];

    pub fn name(self) -> &'static str {
        match self {
            Who::Admin => "admin",
            Who::Controller => "breaker-controller",
            Who::Gateway => "api-gateway-v2",
        }
    }

    /// The user name RBAC sees.
    pub fn user(self) -> String {
        match self {
            Who::Admin => "admin".into(),
            other => format!("system:serviceaccount:{SYSTEM_NAMESPACE}:{}", other.name()),
        }
    }

    fn groups(self) -> String {
        match self {
            Who::Admin => "system:masters".into(),
            _ => format!("system:serviceaccounts,system:serviceaccounts:{SYSTEM_NAMESPACE}"),
        }
    }
}

pub struct ControlPlane {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    bin: PathBuf,
    etcd: Child,
    apiserver: Option<Child>,
    etcd_port: u16,
    pub api_port: u16,
    /// etcd's client and peer ports and the API server's, held for the plane's life.
    _ports: [ReservedPort; 3],
}

/// Where `make control-plane-bins` puts the binaries (`CONTROL_PLANE_BIN` overrides).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("CONTROL_PLANE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/kubernetes/bin")
        })
}

/// A port for a server the harness starts later by number (etcd and kube-apiserver take a
/// number, not a socket), kept off other planes' until this one is dropped.
///
/// Port 0 would be one of the kernel's ephemeral ports, which any process's outgoing
/// connection may take before the server binds it (a test ran into that): this one lies below
/// the ephemeral range, where nothing is handed out unasked, and a lock file (held while the
/// plane lives) keeps the other test threads and binaries, which pick from the same range,
/// off it.
struct ReservedPort {
    port: u16,
    _lock: std::fs::File,
}

/// Where the reservations are: below the ephemeral range, at most this wide.
const RESERVED_RANGE: u16 = 8192;

fn reserve_port() -> std::io::Result<ReservedPort> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_start.saturating_sub(1);
    let low = high.saturating_sub(RESERVED_RANGE).max(1024);
    if low >= high {
        return Err(std::io::Error::other(format!(
            "no room for test ports below the ephemeral range (it starts at {ephemeral_start})"
        )));
    }
    let dir = std::env::temp_dir().join("control-plane-ports");
    std::fs::create_dir_all(&dir)?;
    for _ in 0..256 {
        let port = rand::random_range(low..=high);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))?;
        // Taken by another plane, or by a server that is not ours: try another.
        if lock.try_lock().is_err() || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        return Ok(ReservedPort { port, _lock: lock });
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port in {low}-{high} after 256 picks"),
    ))
}

fn token() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

impl ControlPlane {
    /// Starts a fresh control plane in a temporary directory removed on drop.
    pub fn start() -> Result<Self, Error> {
        let temp = tempfile::Builder::new()
            .prefix("control-plane-")
            .tempdir()?;
        let dir = temp.path().to_path_buf();
        Self::start_in(dir, Some(temp))
    }

    /// Starts a control plane whose files (kubeconfigs, logs, etcd data) live in `dir`.
    pub fn start_in(dir: PathBuf, temp: Option<tempfile::TempDir>) -> Result<Self, Error> {
        let bin = bin_dir();
        for name in ["etcd", "kube-apiserver", "kubectl"] {
            if !bin.join(name).is_file() {
                return Err(Error::MissingBinary(bin.join(name)));
            }
        }
        std::fs::create_dir_all(&dir)?;
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(dir.join("sa.key"))
            .arg("2048")
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| Error::KeyGen(e.to_string()))?;
        if !status.status.success() {
            return Err(Error::KeyGen(
                String::from_utf8_lossy(&status.stderr).into(),
            ));
        }
        let mut tokens = String::new();
        for who in Who::ALL {
            let t = token();
            tokens.push_str(&format!(
                "{t},{},{},\"{}\"\n",
                who.user(),
                who.name(),
                who.groups()
            ));
            std::fs::write(dir.join(format!("{}.token", who.name())), &t)?;
        }
        std::fs::write(dir.join("tokens.csv"), tokens)?;
        let ports = [reserve_port()?, reserve_port()?, reserve_port()?];
        let [etcd_port, etcd_peer_port, api_port] = ports.each_ref().map(|p| p.port);
        let etcd = spawn_etcd(&bin, &dir, etcd_port, etcd_peer_port)?;
        let mut plane = ControlPlane {
            dir,
            _temp: temp,
            bin,
            etcd,
            apiserver: None,
            etcd_port,
            api_port,
            _ports: ports,
        };
        plane.wait_etcd()?;
        plane.start_apiserver()?;
        for who in Who::ALL {
            plane.write_kubeconfig(who)?;
        }
        Ok(plane)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn wait_etcd(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.etcd_port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
                let mut body = String::new();
                let _ = s.read_to_string(&mut body);
                if body.contains("\"health\":\"true\"") {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Error::NotReady {
            what: "etcd",
            secs: 30,
            log: self.log("etcd"),
        })
    }

    /// Starts (or restarts, on the same port and etcd) kube-apiserver and waits for /readyz.
    pub fn start_apiserver(&mut self) -> Result<(), Error> {
        let dir = &self.dir;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("kube-apiserver.log"))?;
        let child = Command::new(self.bin.join("kube-apiserver"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.api_port))
            .arg(format!(
                "--etcd-servers=http://127.0.0.1:{}",
                self.etcd_port
            ))
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg(format!(
                "--token-auth-file={}",
                dir.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg(format!(
                "--service-account-issuer=https://127.0.0.1:{}",
                self.api_port
            ))
            .arg(format!(
                "--service-account-key-file={}",
                dir.join("sa.key").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ))
            // No controller-manager runs here to mint service-account tokens.
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--allow-privileged=false")
            // Every write, with who made it (user agent) and when: what tests of "one writer"
            // count.
            .arg(format!(
                "--audit-policy-file={}",
                self.audit_policy()?.display()
            ))
            .arg(format!("--audit-log-path={}", self.audit_log().display()))
            .arg("--audit-log-format=json")
            .arg("--v=1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|source| Error::Spawn {
                what: "kube-apiserver",
                source,
            })?;
        self.apiserver = Some(child);
        self.wait_apiserver()
    }

    fn wait_apiserver(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let token = std::fs::read_to_string(self.dir.join("admin.token"))?;
        while Instant::now() < deadline {
            if let Some(child) = self.apiserver.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::NotReady {
                        what: "kube-apiserver",
                        secs: 0,
                        log: format!("exited with {status}\n{}", self.log("kube-apiserver")),
                    });
                }
            }
            let out = Command::new("curl")
                .args(["-sk", "--max-time", "2", "-H"])
                .arg(format!("Authorization: Bearer {token}"))
                .arg(format!("https://127.0.0.1:{}/readyz", self.api_port))
                .output()?;
            if out.stdout == b"ok" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(Error::NotReady {
            what: "kube-apiserver",
            secs: 90,
            log: self.log("kube-apiserver"),
        })
    }

    /// Stops kube-apiserver (etcd keeps the data); `start_apiserver` brings it back.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            stop(&mut child);
        }
    }

    fn log(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The API server's port (a proxy in front of it forwards here).
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// The audit log: one JSON line per write (create, update, patch, delete), at its
    /// response, with `userAgent`, `objectRef`, `responseStatus` and both timestamps.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    fn audit_policy(&self) -> Result<PathBuf, Error> {
        let path = self.dir.join("audit-policy.yaml");
        std::fs::write(
            &path,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n  verbs: [create, update, patch, delete]\n- level: None\n",
        )?;
        Ok(path)
    }

    /// A kubeconfig for `who` that reaches the API server at `server` instead (a proxy's
    /// address: the API server's certificate is not checked here).
    pub fn kubeconfig_via(&self, who: Who, server: &str) -> Result<PathBuf, Error> {
        let direct = std::fs::read_to_string(self.kubeconfig(who))?;
        let path = self.dir.join(format!(
            "{}-via-{}.kubeconfig",
            who.name(),
            server.rsplit(':').next().unwrap_or("proxy")
        ));
        std::fs::write(&path, direct.replace(&self.url(), server))?;
        Ok(path)
    }

    pub fn kubeconfig(&self, who: Who) -> PathBuf {
        self.dir.join(format!("{}.kubeconfig", who.name()))
    }

    fn write_kubeconfig(&self, who: Who) -> Result<(), Error> {
        let token = std::fs::read_to_string(self.dir.join(format!("{}.token", who.name())))?;
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    insecure-skip-tls-verify: true\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: {name}\n  context:\n    cluster: local\n    user: {name}\n    namespace: default\ncurrent-context: {name}\n",
            self.url(),
            name = who.name(),
        );
        std::fs::write(self.kubeconfig(who), yaml)?;
        Ok(())
    }

    pub async fn client(&self, who: Who) -> Result<kube::Client, Error> {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig(who))?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        kube::Client::try_from(config).map_err(|e| Error::Io(std::io::Error::other(e)))
    }

    /// Applies the CustomResourceDefinitions in `file` as admin and waits until they are
    /// Established (served), so objects of their kinds can be created at once.
    pub fn install_crds(&self, file: &Path) -> Result<(), String> {
        let file = file.display().to_string();
        for args in [
            vec!["apply", "-f", file.as_str()],
            vec![
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "-f",
                file.as_str(),
            ],
        ] {
            let out = self.kubectl(Who::Admin, &args, None);
            if !out.status.success() {
                return Err(format!(
                    "kubectl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    }

    /// kubectl as `who`, to spawn and read while it runs (`get -w`).
    pub fn kubectl_command(&self, who: Who) -> Command {
        let mut command = Command::new(self.bin.join("kubectl"));
        command.arg(format!("--kubeconfig={}", self.kubeconfig(who).display()));
        command
    }

    /// Runs kubectl (built with the API server) as `who`.
    pub fn kubectl(&self, who: Who, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(self.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig(who).display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).expect("kubectl stdin");
        }
        drop(pipe);
        child.wait_with_output().expect("kubectl finishes")
    }
}

fn spawn_etcd(bin: &Path, dir: &Path, port: u16, peer: u16) -> Result<Child, Error> {
    let log = std::fs::File::create(dir.join("etcd.log"))?;
    Command::new(bin.join("etcd"))
        .arg("--name=default")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
        // Test data: speed over durability.
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|source| Error::Spawn {
            what: "etcd",
            source,
        })
}

fn stop(child: &mut Child) {
    // SIGTERM first so etcd and the API server shut down cleanly; SIGKILL if they hang.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop_apiserver();
        stop(&mut self.etcd);
    }
}
