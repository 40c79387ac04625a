//! Hostile input gets 4xx JSON errors, never a 5xx; the admin endpoint needs its token.
use e2e::*;

const BAD_IDS: &[&str] = &[
    "abc",
    "-1",
    "0",
    "12345678901234567890",
    "1.5",
    "+1",
    "0x10",
    "%20",
    "%2F",
    "1%00",
    "%E2%82%AC",
    "1e3",
    "%31%2e",
    "99999999999999999999999999999999999999999",
];

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn malformed_ids_unknown_paths_and_methods_get_json_4xx() {
    let stack = Stack::start(StackConfig::default());
    let c = client();
    let mut tried = 0;
    let targets = [
        (&stack.product, "/products/"),
        (&stack.recommendations, "/recommendations/"),
        (&stack.v1, "/product-details/"),
        (&stack.v2, "/product-details/"),
    ];
    for (proc, prefix) in targets {
        for id in BAD_IDS {
            let a = get(&c, &proc.url(&format!("{prefix}{id}"))).await;
            assert!(
                (400..500).contains(&a.status),
                "{} {prefix}{id} -> {} {}",
                proc.name,
                a.status,
                a.raw
            );
            assert!(
                a.content_type.starts_with("application/json"),
                "{} {prefix}{id}: {}",
                proc.name,
                a.content_type
            );
            assert!(a.body["error"].is_string(), "{}", a.raw);
            tried += 1;
        }
        // Empty id and unknown paths: JSON 404.
        for path in [
            prefix.to_string(),
            "/nope".into(),
            format!("{prefix}1/extra"),
            "/%ff%fe".into(),
        ] {
            let a = get(&c, &proc.url(&path)).await;
            assert_eq!(a.status, 404, "{} {path}: {}", proc.name, a.raw);
            assert!(a.body["error"].is_string());
            tried += 1;
        }
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let a = request(
                &c,
                method,
                &proc.url(&format!("{prefix}1")),
                &[],
                Some("{}"),
            )
            .await;
            assert_eq!(a.status, 405, "{} {method}: {}", proc.name, a.raw);
            assert!(a.body["error"].is_string());
            tried += 1;
        }
    }
    // Unknown product ids: 404, not 5xx.
    for (proc, prefix) in targets {
        let a = get(&c, &proc.url(&format!("{prefix}4000000000"))).await;
        assert_eq!(a.status, 404, "{}: {}", proc.name, a.raw);
    }
    println!("hostile inputs tried: {tried}");
    // Every service is still up and well.
    for (proc, _) in targets {
        assert_eq!(get(&c, &proc.url("/healthz")).await.status, 200);
    }
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn admin_endpoint_refuses_missing_or_wrong_tokens_and_bad_bodies() {
    let stack = Stack::start(StackConfig {
        recommendations_env: vec![("POD_NAME", "recommendations-7".into())],
        ..Default::default()
    });
    let c = client();
    let url = stack.recommendations.url("/admin/fault");
    let body = Some(r#"{"mode":"hang"}"#);
    let a = request(&c, "PUT", &url, &[], body).await;
    assert_eq!(a.status, 401, "{}", a.raw);
    for auth in [
        "Bearer wrong",
        "Bearer ",
        "Basic e2e-admin-token",
        "e2e-admin-token",
        "Bearer e2e-admin-token2",
    ] {
        let a = request(&c, "PUT", &url, &[("authorization", auth)], body).await;
        assert!(
            matches!(a.status, 401 | 403),
            "{auth}: {} {}",
            a.status,
            a.raw
        );
    }
    assert_eq!(
        request(&c, "GET", &url, &[("authorization", "Bearer nope")], None)
            .await
            .status,
        403
    );
    // Authorized before the body is read: a bad body without the token is 401/403, not 400.
    for (auth, status) in [(None, 401), (Some("Bearer wrong"), 403)] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let a = request(&c, "PUT", &url, &headers, Some("not json")).await;
        assert_eq!(a.status, status, "{auth:?}: {}", a.raw);
    }
    // Nor is it waited for: a stranger who announces 200 KB and sends one byte is answered
    // at once (a server that read the body first would wait for the rest).
    for (auth, status) in [("", "401"), ("Authorization: Bearer wrong\r\n", "403")] {
        let head = format!(
            "PUT /admin/fault HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: 200000\r\n\r\n{{"
        );
        let answer = raw(stack.recommendations.port, head.as_bytes()).await;
        let status_line = answer.lines().next().unwrap_or_default();
        assert!(status_line.contains(status), "{auth:?}: {answer:?}");
    }
    let huge = format!(r#"{{"mode":"none","pad":"{}"}}"#, "x".repeat(20_000));
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let a = request(
        &c,
        "PUT",
        &url,
        &[("authorization", auth.as_str())],
        Some(&huge),
    )
    .await;
    assert_eq!(a.status, 413, "{}", a.raw);
    // Still healthy: none of those switched the fault.
    let a = get(&c, &stack.recommendations.url("/recommendations/1")).await;
    assert_eq!(a.status, 200);

    let ok = [("authorization", auth.as_str())];
    for bad in [
        r#"{"mode":"explode"}"#,
        r#"{"mode":"error","status":200}"#,
        r#"{"mode":"flaky","errorRate":150}"#,
        r#"{"mode":"hang","hang":"soon"}"#,
        r#"{"mode":"none","extra":1}"#,
        "not json",
        "{}",
    ] {
        let a = request(&c, "PUT", &url, &ok, Some(bad)).await;
        assert_eq!(a.status, 400, "{bad}: {}", a.raw);
        assert!(a.body["error"].is_string());
    }
    let a = request(
        &c,
        "PUT",
        &url,
        &ok,
        Some(r#"{"mode":"error","status":503}"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["mode"], "error");
    // Which replica took it: behind a Service, the fault is that pod's alone.
    assert_eq!(a.body["pod"], "recommendations-7", "{}", a.raw);
    assert_eq!(
        get(&c, &stack.recommendations.url("/recommendations/1"))
            .await
            .status,
        503
    );
}

#[actix_web::test]
#[ignore = "process tier: starts the built binaries; run by `make test` (cargo test -- --include-ignored)"]
async fn admin_endpoint_is_disabled_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Proc::start("recommendations-service", &[], dir.path());
    let c = client();
    for auth in ["", "Bearer ", "Bearer anything"] {
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            vec![]
        } else {
            vec![("authorization", auth)]
        };
        let a = request(
            &c,
            "PUT",
            &rec.url("/admin/fault"),
            &headers,
            Some(r#"{"mode":"hang"}"#),
        )
        .await;
        assert_eq!(a.status, 404, "{}", a.raw);
    }
    assert_eq!(get(&c, &rec.url("/recommendations/1")).await.status, 200);
}
