//! The dashboard's sessions and CSRF protection, driven like a browser would.

use drover_tests::{TestApp, browser, hidden_value, spawn_app};
use serde_json::{Value, json};

/// Signs in through the form; answers the client (holding the cookie) and the page's CSRF token.
async fn sign_in(
    app: &TestApp,
    username: &str,
    password: &str,
) -> (reqwest::Client, reqwest::Response) {
    let client = browser();
    let page = client
        .get(app.url("/login"))
        .send()
        .await
        .expect("login page")
        .text()
        .await
        .expect("html");
    let csrf = hidden_value(&page, "csrf_token").expect("login form csrf");
    let res = client
        .post(app.url("/login"))
        .form(&[
            ("username", username),
            ("password", password),
            ("csrf_token", &csrf),
            ("next", "/users"),
        ])
        .send()
        .await
        .expect("login post");
    (client, res)
}

async fn page_csrf(app: &TestApp, client: &reqwest::Client, path: &str) -> (String, String) {
    let res = client.get(app.url(path)).send().await.expect("page");
    assert_eq!(res.status(), 200, "{path}");
    let html = res.text().await.expect("html");
    let csrf = hidden_value(&html, "csrf_token").expect("csrf on page");
    (html, csrf)
}

async fn operator_with_password(app: &TestApp, name: &str, role: &str) -> String {
    let admin = app.admin_token().await;
    let password = format!("{name}-password-123");
    let res = app
        .post_json(
            &admin,
            "/api/v1/users",
            &json!({"username": name, "password": password, "role": role}),
        )
        .await;
    assert_eq!(res.status(), 201);
    password
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_need_a_session_and_login_sets_a_strict_cookie() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/devices"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/login?next=%2Fdevices");

    let password = operator_with_password(&app, "olga", "operator").await;
    let (client, res) = sign_in(&app, "olga", &password).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/users");
    let cookie = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("drover_session="))
        .expect("session cookie")
        .to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP without a proxy gets no Secure flag: {cookie}"
    );
    for path in [
        "/",
        "/devices",
        "/bundles",
        "/rollouts",
        "/alerts",
        "/tokens",
        "/users",
        "/audit",
        "/account",
    ] {
        let res = client.get(app.url(path)).send().await.expect("page");
        assert_eq!(res.status(), 200, "{path}");
        let html = res.text().await.expect("html");
        assert!(
            html.contains("aria-current=\"page\""),
            "{path} marks its section"
        );
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{path} loads nothing from outside"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_form_rejects_wrong_passwords_and_missing_csrf() {
    let app = spawn_app().await;
    let (_, res) = sign_in(&app, "admin", "wrong-password").await;
    assert_eq!(res.status(), 401);
    assert!(
        res.text()
            .await
            .expect("html")
            .contains("Wrong user name or password")
    );
    let client = browser();
    let res = client
        .post(app.url("/login"))
        .form(&[
            ("username", "admin"),
            ("password", app.admin_password.as_str()),
            ("csrf_token", "forged"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 403);
    assert!(
        res.headers()
            .get("set-cookie")
            .is_none_or(|c| !c.to_str().unwrap_or("").starts_with("drover_session="))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_admin_must_replace_the_one_time_password() {
    let app = spawn_app().await;
    let (client, res) = sign_in(&app, "admin", &app.admin_password).await;
    assert_eq!(res.headers()["location"], "/account");
    let res = client.get(app.url("/users")).send().await.expect("page");
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/account");
    let (_, csrf) = page_csrf(&app, &client, "/account").await;
    let res = client
        .post(app.url("/account/password"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("current_password", app.admin_password.as_str()),
            ("new_password", "my-own-password-1"),
            ("confirm_password", "my-own-password-1"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 303);
    let res = client.get(app.url("/users")).send().await.expect("page");
    assert_eq!(
        res.status(),
        200,
        "the session survives its own password change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_without_the_csrf_token_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let password = operator_with_password(&app, "ada", "admin").await;
    let (client, _) = sign_in(&app, "ada", &password).await;
    let (_, csrf) = page_csrf(&app, &client, "/users").await;

    let res = client
        .post(app.url("/users"))
        .form(&[
            ("username", "eve"),
            ("password", "long-enough-pw"),
            ("role", "admin"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 403);
    assert!(res.text().await.expect("html").contains("reload the page"));
    let res = client
        .post(app.url("/users"))
        .header("x-csrf-token", "not-the-token")
        .form(&[
            ("username", "eve"),
            ("password", "long-enough-pw"),
            ("role", "admin"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 403);
    let users: Value = app
        .get(&admin, "/api/v1/users")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(users["total"], 2, "no user was created");

    // The same request with the token (as a form field, then as htmx's header) works and is audited.
    let res = client
        .post(app.url("/users"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("username", "eve"),
            ("password", "long-enough-pw"),
            ("role", "viewer"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 303);
    let res = client
        .post(app.url("/users"))
        .header("x-csrf-token", &csrf)
        .form(&[
            ("username", "fay"),
            ("password", "long-enough-pw"),
            ("role", "viewer"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 303);
    let entries = app.audit(&admin, "actor=user:ada&action=user.create").await;
    assert_eq!(entries.len(), 2);

    // Markup in names is escaped: the dashboard shows a failed action's message safely.
    let res = client
        .post(app.url("/users"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("username", "<script>x</script>"),
            ("password", "long-enough-pw"),
            ("role", "viewer"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 400);
    let html = res.text().await.expect("html");
    assert!(
        html.contains("username: use 1 to 64 letters"),
        "the server's message is shown"
    );
    assert!(!html.contains("<script>x</script>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_controls_and_posting_anyway_is_403() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let password = operator_with_password(&app, "val", "viewer").await;
    let (client, _) = sign_in(&app, "val", &password).await;
    let (html, csrf) = page_csrf(&app, &client, "/users").await;
    assert!(
        !html.contains("action=\"/users\""),
        "no add-user form for a viewer"
    );
    assert!(!html.contains("Delete"), "no delete buttons for a viewer");
    let res = client
        .post(app.url("/users"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("username", "sneaky"),
            ("password", "long-enough-pw"),
            ("role", "admin"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 403);
    let users: Value = app
        .get(&admin, "/api/v1/users")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(users["total"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_are_created_in_the_dashboard_and_shown_once() {
    let app = spawn_app().await;
    let password = operator_with_password(&app, "ari", "admin").await;
    let (client, _) = sign_in(&app, "ari", &password).await;
    let (_, csrf) = page_csrf(&app, &client, "/tokens").await;
    let res = client
        .post(app.url("/tokens/api"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("name", "deploy"),
            ("role", "operator"),
            ("expires_in_days", "30"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 200);
    let html = res.text().await.expect("html");
    let start = html.find("drv_").expect("secret shown");
    let secret: String = html[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    let me: Value = app
        .get(&secret, "/api/v1/auth/me")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["role"], "operator");
    let again = client
        .get(app.url("/tokens"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(!again.contains(&secret), "the secret is not shown again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session() {
    let app = spawn_app().await;
    let password = operator_with_password(&app, "lou", "viewer").await;
    let (client, _) = sign_in(&app, "lou", &password).await;
    let (_, csrf) = page_csrf(&app, &client, "/").await;
    let res = client
        .post(app.url("/logout"))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 303);
    let res = client.get(app.url("/")).send().await.expect("page");
    assert_eq!(res.status(), 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_users_sessions_and_tokens() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let password = operator_with_password(&app, "rita", "operator").await;
    let (client, _) = sign_in(&app, "rita", &password).await;
    let created: Value = app
        .post_json(&admin, "/api/v1/api-tokens", &json!({"name": "keep"}))
        .await
        .json()
        .await
        .expect("json");
    let secret = created["secret"].as_str().expect("secret").to_string();
    let app = app.restart().await;
    assert_eq!(
        app.get(&admin, "/api/v1/auth/me").await.status(),
        200,
        "JWTs survive: the secret is on disk"
    );
    assert_eq!(
        app.get(&secret, "/api/v1/auth/me").await.status(),
        200,
        "API tokens survive"
    );
    let users: Value = app
        .get(&admin, "/api/v1/users")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(users["total"], 2);
    // Cookies are scoped by host, not port, so the same browser presents its session to the new port.
    let res = client.get(app.url("/users")).send().await.expect("page");
    assert_eq!(res.status(), 200, "dashboard sessions survive a restart");
}
