//! BREAKER_CONFIG hot reload: edits apply within a second; bad edits are reported and ignored.
use std::time::Duration;

use e2e::*;

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn edits_apply_within_a_second_and_bad_ones_keep_the_last_good_settings() {
    let stack = Stack::start(StackConfig::default());
    let c = client();
    let path = stack.breaker_config_path();
    let first = status(&c, &stack).await;
    assert_eq!(first["settings"]["failureThreshold"], 3);
    assert_eq!(first["config_source"], format!("file:{}", path.display()));
    assert!(first["config_error"].is_null());

    // In-place edit.
    std::fs::write(
        &path,
        "failureThreshold: 7\ncallTimeout: 250ms\nopenDuration: 2s\n",
    )
    .unwrap();
    let s = wait_status(&c, &stack, Duration::from_secs(1), |s| {
        s["settings"]["failureThreshold"] == 7
    })
    .await;
    assert_eq!(s["settings"]["callTimeout"], "250ms");
    assert_ne!(s["config_version"], first["config_version"]);

    // Replace by rename, as editors and Kubernetes do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, "failureThreshold: 9\nmaxConcurrentCalls: 16\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let good = wait_status(&c, &stack, Duration::from_secs(1), |s| {
        s["settings"]["failureThreshold"] == 9
    })
    .await;
    assert_eq!(good["settings"]["maxConcurrentCalls"], 16);

    // Invalid YAML: settings stay, the error is shown.
    std::fs::write(&path, "failureThreshold: [oops\n").unwrap();
    let s = wait_status(&c, &stack, Duration::from_secs(1), |s| {
        !s["config_error"].is_null()
    })
    .await;
    assert_eq!(s["settings"], good["settings"]);
    assert_eq!(s["config_version"], good["config_version"]);

    // Out of range: the error names the key.
    std::fs::write(&path, "failureThreshold: 9\nhalfOpenMaxCalls: 0\n").unwrap();
    let s = wait_status(&c, &stack, Duration::from_secs(1), |s| {
        s["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("halfOpenMaxCalls"))
    })
    .await;
    assert_eq!(s["settings"], good["settings"]);

    // Unknown key: named too.
    std::fs::write(&path, "failureTreshold: 4\n").unwrap();
    wait_status(&c, &stack, Duration::from_secs(1), |s| {
        s["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("failureTreshold"))
    })
    .await;

    // Fixed again: applied and the error clears.
    std::fs::write(&path, "failureThreshold: 4\n").unwrap();
    let s = wait_status(&c, &stack, Duration::from_secs(1), |s| {
        s["settings"]["failureThreshold"] == 4
    })
    .await;
    assert!(s["config_error"].is_null(), "{s}");
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn settings_change_keeps_breaker_state() {
    let stack = Stack::start(StackConfig {
        recommendations_env: hang("30s"),
        ..Default::default()
    });
    let c = client();
    for _ in 0..3 {
        get(&c, &stack.v2.url("/product-details/1")).await;
    }
    assert_eq!(status(&c, &stack).await["state"], "open");
    std::fs::write(
        stack.breaker_config_path(),
        "callTimeout: 300ms\nopenDuration: 1500ms\nfailureThreshold: 5\n",
    )
    .unwrap();
    let s = wait_status(&c, &stack, Duration::from_secs(1), |s| {
        s["settings"]["failureThreshold"] == 5
    })
    .await;
    assert_eq!(s["state"], "open");
    assert_eq!(s["counts"]["failures"], 3);
}

#[test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
fn a_bad_settings_file_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("breaker.yaml");
    std::fs::write(&path, "openDuration: 1s\ncallTimeout: 2s\n").unwrap();
    let out = std::process::Command::new(bin_path("api-gateway-v2"))
        .env("BREAKER_CONFIG", &path)
        .env("PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("callTimeout") && err.contains("openDuration"),
        "{err}"
    );
    let out = std::process::Command::new(bin_path("api-gateway-v2"))
        .env("BREAKER_CONFIG", dir.path().join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

/// Read syscalls the process has made so far (`/proc/<pid>/io`).
fn read_syscalls(proc: &Proc) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/io", proc.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("syscr: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn an_idle_gateway_does_not_keep_rereading_its_settings() {
    let stack = Stack::start(StackConfig::default());
    let c = client();
    status(&c, &stack).await;
    // Reading the file is itself an inotify event on its directory; had the watch reacted
    // to it, the gateway would re-read the file every settle period, forever.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = read_syscalls(&stack.v2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = read_syscalls(&stack.v2) - before;
    // Left alone, only the 5 s safety-net poll may read (a few syscalls per read).
    assert!(reads <= 6, "{reads} read syscalls in 2 s of idleness");
    // And the watch still works.
    std::fs::write(stack.breaker_config_path(), "failureThreshold: 8\n").unwrap();
    wait_status(&c, &stack, Duration::from_secs(1), |s| {
        s["settings"]["failureThreshold"] == 8
    })
    .await;
}
