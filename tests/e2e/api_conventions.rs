//! Conventions every API endpoint keeps: problem+json errors naming the
//! field, strict JSON, body limits, paging.

use drover_tests::{problem, spawn_app};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_problem_that_says_so() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let res = app
        .client
        .post(app.url("/api/v1/users"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"username\": \"x\",")
        .send()
        .await
        .expect("request");
    let body = problem(res, 400).await;
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("not valid JSON"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_missing_and_mistyped_fields_are_named() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let body = problem(
        app.post_json(&admin, "/api/v1/users", &json!({"username": "u1", "password": "long-enough-pw", "role": "viewer", "colour": "red"})).await,
        400,
    )
    .await;
    assert_eq!(body["field"], "colour");
    let body = problem(
        app.post_json(
            &admin,
            "/api/v1/users",
            &json!({"username": "u1", "role": "viewer"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(body["field"], "password");
    let body = problem(
        app.post_json(
            &admin,
            "/api/v1/users",
            &json!({"username": "u1", "password": "long-enough-pw", "role": "emperor"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(body["field"], "role");
    let body = problem(
        app.post_json(
            &admin,
            "/api/v1/users",
            &json!({"username": "bad name!", "password": "long-enough-pw", "role": "viewer"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(body["field"], "username");
    let body = problem(
        app.post_json(
            &admin,
            "/api/v1/api-tokens",
            &json!({"name": "t", "expires_in_days": -3}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(body["field"], "expires_in_days");
    let users: Value = app
        .get(&admin, "/api/v1/users")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(users["total"], 1, "no bad request created anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_wrong_types_415() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let huge = "x".repeat(app.settings.max_json_bytes + 10);
    let body = problem(
        app.post_json(
            &admin,
            "/api/v1/users",
            &json!({"username": "u", "password": huge, "role": "viewer"}),
        )
        .await,
        413,
    )
    .await;
    assert!(body["detail"].as_str().expect("detail").contains("limit"));
    let res = app
        .client
        .post(app.url("/api/v1/users"))
        .bearer_auth(&admin)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .expect("request");
    problem(res, 415).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_and_bad_paging_is_named() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for i in 0..3 {
        let res = app.post_json(&admin, "/api/v1/users", &json!({"username": format!("user{i}"), "password": "long-enough-pw", "role": "viewer"})).await;
        assert_eq!(res.status(), 201);
    }
    let page: Value = app
        .get(&admin, "/api/v1/users?page=2&per_page=2")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["total"], 4);
    assert_eq!(page["page"], 2);
    assert_eq!(page["per_page"], 2);
    assert_eq!(page["items"].as_array().expect("items").len(), 2);
    for path in ["/api/v1/users", "/api/v1/api-tokens", "/api/v1/audit"] {
        let list: Value = app.get(&admin, path).await.json().await.expect("json");
        for key in ["items", "total", "page", "per_page"] {
            assert!(list.get(key).is_some(), "{path} has {key}");
        }
    }
    let body = problem(app.get(&admin, "/api/v1/users?per_page=100000").await, 400).await;
    assert_eq!(body["field"], "per_page");
    let body = problem(app.get(&admin, "/api/v1/users?page=abc").await, 400).await;
    assert_eq!(body["field"], "page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_api_paths_and_methods_are_problems() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let body = problem(app.get(&admin, "/api/v1/no-such-thing").await, 404).await;
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("openapi.json")
    );
    let res = app
        .client
        .put(app.url("/api/v1/users"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("request");
    assert!(
        res.status() == 404 || res.status() == 405,
        "{}",
        res.status()
    );
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(ct, "application/problem+json");
}
