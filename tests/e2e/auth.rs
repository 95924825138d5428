//! Operator and admin authentication: passwords, JWTs, API tokens, roles, throttling.

use drover_tests::{problem, spawn_app};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn forge(secret: &[u8], claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_succeeds_with_the_generated_admin_password() {
    let app = spawn_app().await;
    let res = app.login("admin", &app.admin_password).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert!(
        body["token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3)
    );
    assert!(
        body["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(body["password_change_required"], true);
    let me: Value = app
        .get(body["token"].as_str().expect("token"), "/api/v1/auth/me")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["username"], "admin");
    assert_eq!(me["role"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_fails_with_a_wrong_password_or_unknown_user() {
    let app = spawn_app().await;
    let body = problem(app.login("admin", "not-the-password").await, 401).await;
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("wrong user name or password")
    );
    problem(app.login("nobody", "whatever-password").await, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_is_throttled_after_repeated_failures() {
    let app = spawn_app().await;
    for _ in 0..5 {
        problem(app.login("admin", "wrong-password-x").await, 401).await;
    }
    let res = app.login("admin", &app.admin_password).await;
    assert!(
        res.headers().get("retry-after").is_some(),
        "429 carries Retry-After"
    );
    let body = problem(res, 429).await;
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("try again")
    );
    let token_user_is_unaffected = app.login("someone-else", "wrong-password-y").await;
    assert_eq!(token_user_is_unaffected.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_expired_and_foreign_jwts_are_rejected() {
    let app = spawn_app().await;
    let token = app.admin_token().await;
    let secret = std::fs::read(app.data_dir().join("jwt.secret")).expect("secret");
    let me: Value = app
        .get(&token, "/api/v1/auth/me")
        .await
        .json()
        .await
        .expect("json");
    let sub = me["id"].as_str().expect("id").to_string();
    let t = now();

    let expired = forge(
        &secret,
        json!({"sub": sub, "iat": t - 7200, "exp": t - 3600, "aud": "drover-api", "iss": "drover"}),
    );
    let body = problem(app.get(&expired, "/api/v1/users").await, 401).await;
    assert!(body["detail"].as_str().expect("detail").contains("expired"));

    let wrong_key = forge(
        b"another-secret-of-sufficient-length-0123456789",
        json!({"sub": sub, "iat": t, "exp": t + 600, "aud": "drover-api", "iss": "drover"}),
    );
    problem(app.get(&wrong_key, "/api/v1/users").await, 401).await;

    let wrong_audience = forge(
        &secret,
        json!({"sub": sub, "iat": t, "exp": t + 600, "aud": "other", "iss": "drover"}),
    );
    let body = problem(app.get(&wrong_audience, "/api/v1/users").await, 401).await;
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("not meant")
    );

    let wrong_issuer = forge(
        &secret,
        json!({"sub": sub, "iat": t, "exp": t + 600, "aud": "drover-api", "iss": "evil"}),
    );
    problem(app.get(&wrong_issuer, "/api/v1/users").await, 401).await;

    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": sub, "iat": t, "exp": t + 600, "aud": "drover-api", "iss": "drover"}))
    );
    problem(app.get(&none, "/api/v1/users").await, 401).await;

    let mut flipped = token.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    problem(
        app.get(&String::from_utf8(flipped).expect("utf8"), "/api/v1/users")
            .await,
        401,
    )
    .await;

    problem(app.get("garbage", "/api/v1/users").await, 401).await;
    let res = app
        .client
        .get(app.url("/api/v1/users"))
        .send()
        .await
        .expect("request");
    assert!(res.headers().get("www-authenticate").is_some());
    problem(res, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_cannot_change_anything() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let viewer = app.user_token(&admin, "vera", "viewer").await;
    assert_eq!(app.get(&viewer, "/api/v1/users").await.status(), 200);
    let body = problem(
        app.post_json(
            &viewer,
            "/api/v1/users",
            &json!({"username": "mallory", "password": "long-enough-pw", "role": "admin"}),
        )
        .await,
        403,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("admin role")
    );
    let users: Value = app
        .get(&admin, "/api/v1/users")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(users["total"], 2, "nothing was created");
    let denied = app.audit(&admin, "actor=user:vera").await;
    assert!(
        denied.iter().any(|e| e["outcome"] == "denied"
            && e["action"]
                .as_str()
                .is_some_and(|a| a.contains("/api/v1/users"))),
        "{denied:?}"
    );
    let operator = app.user_token(&admin, "otto", "operator").await;
    problem(
        app.post_json(&operator, "/api/v1/api-tokens", &json!({"name": "x"}))
            .await,
        403,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_work_until_revoked() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let res = app
        .post_json(
            &admin,
            "/api/v1/api-tokens",
            &json!({"name": "ci", "role": "operator"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.expect("json");
    let secret = created["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("drv_"));
    let me: Value = app
        .get(&secret, "/api/v1/auth/me")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["role"], "operator");
    assert_eq!(me["token_name"], "ci");

    let listed: Value = app
        .get(&admin, "/api/v1/api-tokens")
        .await
        .json()
        .await
        .expect("json");
    let item = &listed["items"][0];
    assert!(
        item["last_used_at"].is_string(),
        "last use recorded: {item}"
    );
    assert!(
        item.get("secret").is_none(),
        "the secret is shown only once"
    );

    let id = created["id"].as_str().expect("id");
    assert_eq!(
        app.delete(&admin, &format!("/api/v1/api-tokens/{id}"))
            .await
            .status(),
        204
    );
    let body = problem(app.get(&secret, "/api/v1/auth/me").await, 401).await;
    assert!(body["detail"].as_str().expect("detail").contains("revoked"));
    problem(app.get(&format!("{secret}x"), "/api/v1/auth/me").await, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_never_acts_above_its_owner() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let created: Value = app
        .post_json(
            &admin,
            "/api/v1/api-tokens",
            &json!({"name": "auto", "role": "admin"}),
        )
        .await
        .json()
        .await
        .expect("json");
    let secret = created["secret"].as_str().expect("secret");
    // A second admin deletes the first; the first's token dies with it.
    let second = app.user_token(&admin, "root2", "admin").await;
    let users: Value = app
        .get(&second, "/api/v1/users?per_page=10")
        .await
        .json()
        .await
        .expect("json");
    let admin_id = users["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|u| u["username"] == "admin")
        .expect("admin")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        app.delete(&second, &format!("/api/v1/users/{admin_id}"))
            .await
            .status(),
        204
    );
    problem(app.get(secret, "/api/v1/auth/me").await, 401).await;
    problem(app.get(&admin, "/api/v1/auth/me").await, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_admin_cannot_be_deleted() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let me: Value = app
        .get(&admin, "/api/v1/auth/me")
        .await
        .json()
        .await
        .expect("json");
    let body = problem(
        app.delete(
            &admin,
            &format!("/api/v1/users/{}", me["id"].as_str().expect("id")),
        )
        .await,
        409,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("last admin")
    );
    problem(app.delete(&admin, "/api/v1/users/no-such-user").await, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_replaces_the_one_time_password() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let body = problem(
        app.post_json(
            &admin,
            "/api/v1/auth/password",
            &json!({"current_password": "wrong-one-here", "new_password": "a-brand-new-password"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(body["field"], "current_password");
    let body = problem(
        app.post_json(
            &admin,
            "/api/v1/auth/password",
            &json!({"current_password": app.admin_password, "new_password": "short"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(body["field"], "new_password");
    let res = app
        .post_json(&admin, "/api/v1/auth/password", &json!({"current_password": app.admin_password, "new_password": "a-brand-new-password"}))
        .await;
    assert_eq!(res.status(), 204);
    problem(app.login("admin", &app.admin_password).await, 401).await;
    let res = app.login("admin", "a-brand-new-password").await;
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["password_change_required"], false);
}
