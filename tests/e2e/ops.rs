//! Health, readiness, metrics, the OpenAPI document and ports.json.

use drover_tests::spawn_app;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(res.status(), 200);
    app.login("admin", "wrong-password").await;
    let text = app.metrics().await;
    assert!(text.contains("# TYPE drover_http_requests_total counter"));
    assert!(text.contains("drover_http_requests_total{route=\"/api/v1/auth/login\",method=\"POST\",status=\"401\"} 1"), "{text}");
    assert!(
        text.contains(
            "drover_http_request_duration_seconds_bucket{route=\"/readyz\",le=\"+Inf\"} 1"
        )
    );
    assert!(text.contains(&format!(
        "drover_store_connections_max{{backend=\"{}\"}}",
        app.backend()
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_json_names_the_bound_addresses() {
    let app = spawn_app().await;
    let ports: Value = serde_json::from_slice(
        &std::fs::read(app.data_dir().join("ports.json")).expect("ports.json"),
    )
    .expect("json");
    assert_eq!(
        format!("http://{}", ports["http"].as_str().expect("http")),
        app.base
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_assets_are_embedded_and_cacheable() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/static/htmx.min.js"))
        .send()
        .await
        .expect("asset");
    assert_eq!(res.status(), 200);
    let etag = res.headers()["etag"].to_str().expect("etag").to_string();
    assert!(res.text().await.expect("js").contains("htmx"));
    let res = app
        .client
        .get(app.url("/static/htmx.min.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("asset");
    assert_eq!(res.status(), 304);
    assert_eq!(
        app.client
            .get(app.url("/static/nope.js"))
            .send()
            .await
            .expect("asset")
            .status(),
        404
    );
}

/// Every `#[get|post|put|patch|delete("…")]` route in the API sources.
fn routes_in_source() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/src/http/api");
    let mut routes = Vec::new();
    for entry in std::fs::read_dir(dir).expect("api sources") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        for line in text.lines() {
            let line = line.trim();
            for method in ["get", "post", "put", "patch", "delete"] {
                if let Some(rest) = line.strip_prefix(&format!("#[{method}(\"")) {
                    let path = rest.split('"').next().expect("path");
                    routes.push((method.to_string(), format!("/api/v1{path}")));
                }
            }
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_endpoint() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    let routes = routes_in_source();
    assert!(routes.len() >= 10, "found the API sources: {routes:?}");
    for (method, path) in &routes {
        let op = &paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not documented"))[method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} documents responses"
        );
        assert!(
            op["description"].is_string() || op["summary"].is_string(),
            "{method} {path} is described"
        );
        let public = path.ends_with("/auth/login") || path.ends_with("/openapi.json");
        assert_eq!(
            op["security"].is_array(),
            !public,
            "{method} {path} documents its auth"
        );
    }
    let documented: usize = paths
        .values()
        .map(|p| p.as_object().map_or(0, |o| o.len()))
        .sum();
    assert_eq!(
        documented,
        routes.len(),
        "no documented operation without a route"
    );
    // Every documented operation is served (not the API's 404).
    let admin = app.admin_token().await;
    for (method, path) in &routes {
        let concrete = path.replace("{id}", "00000000-0000-0000-0000-000000000000");
        let req = app
            .client
            .request(
                method.to_uppercase().parse().expect("method"),
                app.url(&concrete),
            )
            .bearer_auth(&admin);
        let res = req.send().await.expect("request");
        let body = res.text().await.unwrap_or_default();
        assert!(!body.contains("no endpoint"), "{method} {path} is routed");
    }
}
