//! BREAKER_CONFIG: read once at start, then watched. The directory is watched, not the file:
//! editors and Kubernetes replace files by renaming, which a watch on the file itself misses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use breaker::{Mode, Settings, SettingsError};
use breaker_api::BreakerSettings;
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use super::{Update, UpdateSender};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("BREAKER_CONFIG {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("BREAKER_CONFIG {path}: {source}")]
    Settings {
        path: PathBuf,
        source: SettingsError,
    },
}

/// Content version: the start of the SHA-256 of the file, so equal content is one version.
fn version_of(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.into(),
        source,
    })
}

fn parse(path: &Path, text: &str) -> Result<Settings, FileError> {
    BreakerSettings::parse_yaml(text).map_err(|source| FileError::Settings {
        path: path.into(),
        source,
    })
}

/// The settings and their version, read once (at start).
pub fn load(path: &Path) -> Result<(Settings, String), FileError> {
    let text = read(path)?;
    Ok((parse(path, &text)?, version_of(&text)))
}

/// What the file holds now, as an update; a file always means mode Auto.
fn look(path: &Path) -> Update {
    let read = read(path);
    let version = match &read {
        Ok(text) => version_of(text),
        Err(_) => "unreadable".to_string(),
    };
    let parsed = read
        .and_then(|text| parse(path, &text))
        .map(|settings| (settings, Mode::Auto))
        .map_err(|e| e.to_string());
    Update::Content { version, parsed }
}

/// A safety net beside the watch: a missed event is caught within this time.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// Editors write in bursts; wait for the burst to end before reading.
const SETTLE: Duration = Duration::from_millis(50);

/// Re-reads `path` whenever its directory changes, and every [`POLL_EVERY`].
pub fn spawn_watch(path: PathBuf, updates: UpdateSender) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own read of the file is an access event: reacting to it would re-read forever.
        if !matches!(&event, Ok(e) if e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .and_then(|mut watcher| {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map(|()| watcher)
    });
    let watcher = match watcher {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            tracing::error!(dir = %dir.display(), error = %err, "cannot watch the config directory; polling only");
            None
        }
    };
    actix_web::rt::spawn(async move {
        let _keep_alive = watcher;
        let mut watching = _keep_alive.is_some();
        loop {
            tokio::select! {
                event = rx.recv(), if watching => {
                    if event.is_none() {
                        watching = false;
                        continue;
                    }
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
            if updates.send(look(&path)).is_err() {
                return;
            }
        }
    });
}
