//! Health, metrics, fault modes at the service and graceful shutdown.
use std::time::Duration;

use e2e::*;

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn every_service_serves_health_readiness_and_metrics() {
    let stack = Stack::start(StackConfig::default());
    let c = client();
    get(&c, &stack.v2.url("/product-details/1")).await;
    for proc in [&stack.product, &stack.recommendations, &stack.v1, &stack.v2] {
        assert_eq!(
            get(&c, &proc.url("/healthz")).await.status,
            200,
            "{}",
            proc.name
        );
        assert_eq!(
            get(&c, &proc.url("/readyz")).await.status,
            200,
            "{}",
            proc.name
        );
        let m = get(&c, &proc.url("/metrics")).await;
        assert_eq!(m.status, 200);
        assert!(
            m.raw.contains("http_requests_total"),
            "{}: {}",
            proc.name,
            m.raw
        );
        assert!(m.raw.trim_end().ends_with("# EOF"));
    }
    // Requests are labelled by the route that served them, never by the raw path.
    get(&c, &stack.v2.url("/product-details/2")).await;
    get(&c, &stack.v2.url("/no/such/path")).await;
    request(&c, "DELETE", &stack.v2.url("/product-details/1"), &[], None).await;
    let m = get(&c, &stack.v2.url("/metrics")).await.raw;
    for series in [
        r#"http_requests_total{method="GET",route="/product-details/{id}",status="200"} 2"#,
        r#"http_requests_total{method="DELETE",route="/product-details/{id}",status="405"} 1"#,
        r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"http_requests_total{method="GET",route="/healthz",status="200"} 1"#,
    ] {
        assert!(m.contains(series), "v2 metrics lack {series}:\n{m}");
    }
    assert!(!m.contains("/no/such/path"), "{m}");
    for series in [
        "breaker_state{state=\"closed\"} 1",
        "breaker_calls_total{outcome=\"success\"} 2",
        "upstream_request_duration_seconds_bucket",
        "http_request_duration_seconds_bucket",
    ] {
        assert!(m.contains(series), "v2 metrics lack {series}:\n{m}");
    }
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn fault_modes_behave_as_documented() {
    let stack = Stack::start(StackConfig {
        recommendations_env: vec![
            ("FAULT_MODE", "slow".into()),
            ("FAULT_DELAY", "400ms".into()),
        ],
        ..Default::default()
    });
    let c = client();
    let url = stack.recommendations.url("/recommendations/1");
    let a = get(&c, &url).await;
    assert_eq!(a.status, 200);
    assert!(a.elapsed >= Duration::from_millis(390), "{:?}", a.elapsed);
    set_fault(&c, &stack, r#"{"mode":"error","status":502}"#).await;
    assert_eq!(get(&c, &url).await.status, 502);
    set_fault(
        &c,
        &stack,
        r#"{"mode":"flaky","errorRate":50,"status":500}"#,
    )
    .await;
    let mut failed = 0;
    for _ in 0..200 {
        if get(&c, &url).await.status == 500 {
            failed += 1;
        }
    }
    assert!(
        (60..=140).contains(&failed),
        "flaky 50% failed {failed} of 200"
    );
    set_fault(&c, &stack, r#"{"mode":"reset"}"#).await;
    let broken = c.get(&url).send().await;
    let body_failed = match broken {
        Err(_) => true,
        Ok(mut resp) => resp.body().await.is_err(),
    };
    assert!(body_failed, "reset must break the response");
    set_fault(&c, &stack, r#"{"mode":"hang","hang":"300ms"}"#).await;
    let a = get(&c, &url).await;
    assert_eq!(a.status, 408);
    assert!(a.elapsed >= Duration::from_millis(290));
    // v2 sees the reset as a failure and serves the fallback.
    set_fault(&c, &stack, r#"{"mode":"reset"}"#).await;
    let a = get(&c, &stack.v2.url("/product-details/1")).await;
    assert_eq!(a.status, 200);
    assert!(a.degraded());
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn sigterm_lets_in_flight_requests_finish() {
    let mut stack = Stack::start(StackConfig {
        recommendations_env: vec![
            ("FAULT_MODE", "slow".into()),
            ("FAULT_DELAY", "800ms".into()),
        ],
        ..Default::default()
    });
    let c = client();
    let urls: Vec<String> = (1..=10)
        .map(|i| stack.v1.url(&format!("/product-details/{i}")))
        .collect();
    let in_flight = futures_util::future::join_all(urls.iter().map(|u| get(&c, u)));
    let pid = stack.v1.pid();
    let stop = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
    };
    let (answers, ()) = tokio::join!(in_flight, stop);
    let ok = answers
        .iter()
        .filter(|a| a.status == 200 && a.recommendation_count() == 3)
        .count();
    assert_eq!(ok, 10, "every in-flight request completes");
    let status = stack.v1.terminate();
    assert!(status.success(), "{status:?}");
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn a_gateway_is_ready_once_product_service_accepts_and_stays_ready() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on yet: a NetworkPolicy that has not admitted a new pod refuses
    // its connections just like this.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = [
        ("PRODUCT_SERVICE_URL", format!("http://127.0.0.1:{port}")),
        (
            "RECOMMENDATIONS_SERVICE_URL",
            "http://127.0.0.1:9".to_string(),
        ),
        ("UPSTREAM_TIMEOUT", "1s".to_string()),
    ];
    let gateway = Proc::start("api-gateway-v1", &env, dir.path());
    let c = client();
    for _ in 0..3 {
        let answer = get(&c, &gateway.url("/readyz")).await;
        assert_eq!(answer.status, 503, "{}", answer.raw);
        assert!(answer.raw.contains("starting"), "{}", answer.raw);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut ready_after = None;
    for attempt in 0..50 {
        if get(&c, &gateway.url("/readyz")).await.status == 200 {
            ready_after = Some(attempt);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ready_after.is_some(),
        "not ready within 5 s of product-service listening"
    );
    // Readiness does not follow the dependency afterwards.
    drop(listener);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&c, &gateway.url("/readyz")).await.status, 200);
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn v2_reading_a_configmap_is_not_ready_until_the_api_has_answered() {
    let dir = tempfile::tempdir().unwrap();
    let product = Proc::start("product-service", &[], dir.path());
    // An API server that refuses every connection.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let env = [
        ("PRODUCT_SERVICE_URL", product.url("")),
        (
            "RECOMMENDATIONS_SERVICE_URL",
            "http://127.0.0.1:9".to_string(),
        ),
        (
            "BREAKER_CONFIGMAP",
            "demo/api-gateway-v2-breaker".to_string(),
        ),
        ("KUBECONFIG", kubeconfig.display().to_string()),
    ];
    let v2 = Proc::start("api-gateway-v2", &env, dir.path());
    let c = client();
    // product-service is reachable, but the settings are not known: not ready, and it says why
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = get(&c, &v2.status_url("/circuit-status")).await;
        if s.body["config_watch_error"].is_string() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no watch error: {}",
            s.raw
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.body["config_source"],
        "configmap:demo/api-gateway-v2-breaker"
    );
    for _ in 0..5 {
        let answer = get(&c, &v2.url("/readyz")).await;
        assert_eq!(answer.status, 503, "{}", answer.raw);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // it still serves with the defaults meanwhile
    let page = get(&c, &v2.url("/product-details/1")).await;
    assert_eq!(page.status, 200, "{}", page.raw);
}
