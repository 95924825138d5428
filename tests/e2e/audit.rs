//! The audit log records every change with who, what, which, when, where and how it ended.

use drover_tests::{problem, spawn_app};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_leaves_an_audit_entry() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let res = app
        .post_json(
            &admin,
            "/api/v1/users",
            &json!({"username": "alice", "password": "long-enough-pw", "role": "operator"}),
        )
        .await;
    let alice: Value = res.json().await.expect("json");
    let token: Value = app
        .post_json(&admin, "/api/v1/api-tokens", &json!({"name": "ci"}))
        .await
        .json()
        .await
        .expect("json");
    app.delete(
        &admin,
        &format!("/api/v1/api-tokens/{}", token["id"].as_str().expect("id")),
    )
    .await;
    app.delete(
        &admin,
        &format!("/api/v1/users/{}", alice["id"].as_str().expect("id")),
    )
    .await;
    // A refused change is recorded too.
    app.post_json(
        &admin,
        "/api/v1/users",
        &json!({"username": "admin", "password": "long-enough-pw", "role": "viewer"}),
    )
    .await;

    let entries = app.audit(&admin, "per_page=100").await;
    let find = |action: &str, outcome: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["outcome"] == outcome)
            .cloned()
            .unwrap_or_else(|| panic!("no {action} {outcome} entry in {entries:#?}"))
    };
    let created = find("user.create", "success");
    assert_eq!(created["actor"], "user:admin");
    assert_eq!(created["target"], "alice");
    assert_eq!(created["source_addr"], "127.0.0.1");
    assert!(created["at"].as_str().is_some_and(|t| t.ends_with('Z')));
    find("api_token.create", "success");
    find("api_token.revoke", "success");
    find("user.delete", "success");
    find("auth.login", "success");
    let conflict = find("user.create", "failure");
    assert!(
        conflict["detail"]
            .as_str()
            .expect("detail")
            .contains("already exists")
    );
    let first_start = entries
        .iter()
        .find(|e| e["actor"] == "system")
        .expect("first start entry");
    assert_eq!(first_start["action"], "user.create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_filters_and_pages() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for i in 0..3 {
        app.post_json(
            &admin,
            "/api/v1/users",
            &json!({"username": format!("u{i}"), "password": "long-enough-pw", "role": "viewer"}),
        )
        .await;
    }
    let by_action = app
        .audit(&admin, "action=user.create&actor=user:admin")
        .await;
    assert_eq!(by_action.len(), 3);
    let by_prefix = app.audit(&admin, "action=user").await;
    assert_eq!(by_prefix.len(), 4, "three by admin and one at first start");
    let page: Value = app
        .get(&admin, "/api/v1/audit?action=user&per_page=2&page=2")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["total"], 4);
    assert_eq!(page["items"].as_array().expect("items").len(), 2);
    let future = app.audit(&admin, "from=2999-01-01T00:00:00Z").await;
    assert!(future.is_empty());
    let past = app.audit(&admin, "to=2000-01-01T00:00:00Z").await;
    assert!(past.is_empty());
    let all_now = app
        .audit(
            &admin,
            "from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z&per_page=500",
        )
        .await;
    assert!(all_now.len() >= 5);
    let body = problem(app.get(&admin, "/api/v1/audit?from=yesterday").await, 400).await;
    assert_eq!(body["field"], "from");
}
