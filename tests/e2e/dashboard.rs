//! The dashboard's sessions and CSRF protection, driven like a browser would.

use drover_tests::{TestApp, browser, hidden_value, spawn_app};
use serde_json::{Value, json};

/// Signs in through the form; answers the client (holding the cookie) and the page's CSRF token.
pub(crate) async fn sign_in(
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

pub(crate) async fn page_csrf(
    app: &TestApp,
    client: &reqwest::Client,
    path: &str,
) -> (String, String) {
    let res = client.get(app.url(path)).send().await.expect("page");
    assert_eq!(res.status(), 200, "{path}");
    let html = res.text().await.expect("html");
    let csrf = hidden_value(&html, "csrf_token").expect("csrf on page");
    (html, csrf)
}

pub(crate) async fn operator_with_password(app: &TestApp, name: &str, role: &str) -> String {
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

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Publishes telemetry messages as the device and waits until `metric` holds `count` points.
async fn send_telemetry(
    app: &TestApp,
    admin: &str,
    d: &drover_tests::EnrolledDevice,
    messages: &[Value],
    metric: &str,
    count: usize,
) {
    let (client, mut eventloop) = drover_tests::mqtt_connect(app.mqtt_options(&d.id, d))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    for message in messages {
        client
            .publish(
                d.topic("telemetry"),
                rumqttc::QoS::AtLeastOnce,
                false,
                message.to_string(),
            )
            .await
            .expect("publish");
    }
    let path = format!("/api/v1/devices/{}/telemetry?metric={metric}&from=0", d.id);
    let stored = drover_tests::wait_until(std::time::Duration::from_secs(20), || async {
        let body: Value = app.get(admin, &path).await.json().await.expect("json");
        body["points"].as_array().map_or(0, Vec::len) == count
    })
    .await;
    assert!(stored, "{count} readings of {metric} stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_page_shows_latest_values_and_serves_its_last_hour_to_any_signed_in_role() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    let page = format!("/devices/{}", d.id);
    let series = format!("/devices/{}/series", d.id);

    // Without a session both go to the login page.
    for path in [&page, &series] {
        let res = app.client.get(app.url(path)).send().await.expect("get");
        assert_eq!(res.status(), 303, "{path}");
        assert!(
            res.headers()["location"]
                .to_str()
                .expect("location")
                .starts_with("/login?next="),
            "{path}"
        );
    }

    // A viewer may read both; nothing sent yet.
    let password = operator_with_password(&app, "vic", "viewer").await;
    let (client, _) = sign_in(&app, "vic", &password).await;
    let (html, _) = page_csrf(&app, &client, &page).await;
    assert!(html.contains("This device has sent no readings yet"));
    assert!(html.contains("No readings in the last hour."));
    assert!(
        html.contains(&format!("data-series=\"{series}\"")),
        "the charts load anyway: the first live reading draws one"
    );
    let res = client.get(app.url(&series)).send().await.expect("get");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["series"], json!([]));
    assert_eq!(
        body["to"].as_i64().expect("to") - body["from"].as_i64().expect("from"),
        3_600_000
    );

    // Thirty readings in the last hour, from versions whose names hold markup.
    let now = now_ms();
    let batch: Vec<Value> = (0..30i64)
        .map(|i| json!({"seq": i + 1, "ts": now - (29 - i) * 60_000 - 1_000, "metrics": {"temp_c": 20.0 + i as f64, "fan-rpm.v2": 1000.0}}))
        .collect();
    send_telemetry(
        &app,
        &admin,
        &d,
        &[json!({"epoch": "e1", "versions": {"<b>fw</b>": "2.0.0"}, "batch": batch})],
        "temp_c",
        30,
    )
    .await;
    let (html, _) = page_csrf(&app, &client, &page).await;
    assert!(html.contains("<code>fan-rpm.v2</code>") && html.contains("<code>temp_c</code>"));
    assert!(html.contains(">49</td>"), "the newest temp_c reading");
    assert!(
        html.contains("&#60;b&#62;fw&#60;/b&#62; 2.0.0")
            || html.contains("&lt;b&gt;fw&lt;/b&gt; 2.0.0"),
        "version names are escaped"
    );
    assert!(!html.contains("<b>fw</b>"));
    assert!(html.contains(&format!("data-series=\"/devices/{}/series\"", d.id)));
    let body: Value = client
        .get(app.url(&series))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = body["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(|s| s["metric"].as_str())
        .collect();
    assert_eq!(names, ["fan-rpm.v2", "temp_c"], "by name");
    let temp = &body["series"][1];
    assert!(
        temp.get("step").is_none(),
        "few readings are sent one by one"
    );
    assert_eq!(temp["ts"].as_array().expect("ts").len(), 30);
    assert_eq!(temp["value"][29], 49.0);
    assert!(
        temp["ts"][0].as_i64() < temp["ts"][29].as_i64(),
        "oldest first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_metric_is_charted_in_one_minute_buckets() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    let now = now_ms();
    // 900 readings over the last 15 minutes, over the page's raw limit, in
    // batches of 100 (rumqttc refuses packets over 10 KiB by default).
    let messages: Vec<Value> = (0..9i64)
        .map(|b| {
            let batch: Vec<Value> = (b * 100..(b + 1) * 100)
                .map(|i| json!({"seq": i + 1, "ts": now - 900_000 + i * 1000, "metrics": {"load": (i % 10) as f64}}))
                .collect();
            json!({"epoch": "e1", "versions": {}, "batch": batch})
        })
        .collect();
    send_telemetry(&app, &admin, &d, &messages, "load", 900).await;
    let password = operator_with_password(&app, "oli", "operator").await;
    let (client, _) = sign_in(&app, "oli", &password).await;
    let body: Value = client
        .get(app.url(&format!("/devices/{}/series", d.id)))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let load = &body["series"][0];
    assert_eq!(load["step"], 60);
    let buckets = load["ts"].as_array().expect("ts").len();
    assert!((15..=16).contains(&buckets), "{buckets} one-minute buckets");
    assert_eq!(load["min"].as_array().expect("min").len(), buckets);
    assert_eq!(load["max"].as_array().expect("max").len(), buckets);
    assert!(
        load["max"]
            .as_array()
            .expect("max")
            .iter()
            .all(|m| m.as_f64() <= Some(9.0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_devices_are_404_on_the_page_and_its_data() {
    let app = spawn_app().await;
    let password = operator_with_password(&app, "nia", "viewer").await;
    let (client, _) = sign_in(&app, "nia", &password).await;
    for path in ["/devices/NoSuchDevice", "/devices/NoSuchDevice/series"] {
        let res = client.get(app.url(path)).send().await.expect("get");
        assert_eq!(res.status(), 404, "{path}");
        let html = res.text().await.expect("html");
        assert!(html.contains("NoSuchDevice"), "{path} names the device");
    }
    // Markup in the path is escaped in the error page.
    let res = client
        .get(app.url("/devices/%3Cscript%3Ex%3C%2Fscript%3E/series"))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 404);
    assert!(!res.text().await.expect("html").contains("<script>x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_counts_devices_by_presence_and_the_list_filters_by_it() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let online = app.enrolled_device(&admin).await;
    let never = app.enrolled_device(&admin).await;
    let (client_mqtt, mut eventloop) =
        drover_tests::mqtt_connect(app.mqtt_options(&online.id, &online))
            .await
            .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client_mqtt
        .publish(
            online.topic("state"),
            rumqttc::QoS::AtLeastOnce,
            true,
            json!({"online": true, "ts": now_ms()}).to_string(),
        )
        .await
        .expect("publish");
    let up = drover_tests::wait_until(std::time::Duration::from_secs(10), || async {
        app.device(&admin, &online.id).await["online"] == true
    })
    .await;
    assert!(up);

    let password = operator_with_password(&app, "pia", "viewer").await;
    let (client, _) = sign_in(&app, "pia", &password).await;
    let (html, _) = page_csrf(&app, &client, "/").await;
    for (id, n) in [
        ("presence-online", 1),
        ("presence-offline", 0),
        ("presence-never", 1),
    ] {
        assert!(
            html.contains(&format!("id=\"{id}\""))
                && html.contains(&format!(
                    "<span class=\"n\">{n}</span><span>{}",
                    id.trim_start_matches("presence-")
                        .replace("never", "never seen")
                )),
            "{id} shows {n}"
        );
    }
    let (list, _) = page_csrf(&app, &client, "/devices?status=accepted&presence=online").await;
    assert!(list.contains(&online.id));
    assert!(!list.contains(&never.id));
    let (list, _) = page_csrf(&app, &client, "/devices?presence=never").await;
    assert!(list.contains(&never.id) && !list.contains(&online.id));

    let res = client
        .get(app.url("/devices?presence=sometimes"))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 400);
    assert!(
        res.text()
            .await
            .expect("html")
            .contains("use online, offline or never")
    );
    let body = drover_tests::problem(
        app.get(&admin, "/api/v1/devices?presence=sometimes").await,
        400,
    )
    .await;
    assert_eq!(body["field"], "presence");
    let body: Value = app
        .get(&admin, "/api/v1/devices?presence=online")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["total"], 1);
    assert_eq!(body["items"][0]["id"], online.id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_assets_are_served_and_the_page_keeps_its_strict_policy() {
    let app = spawn_app().await;
    for (name, content_type) in [
        ("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("uPlot.min.css", "text/css; charset=utf-8"),
        ("charts.js", "text/javascript; charset=utf-8"),
        ("uPlot.LICENSE", "text/plain; charset=utf-8"),
    ] {
        let res = app
            .client
            .get(app.url(&format!("/static/{name}")))
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 200, "{name}");
        assert_eq!(res.headers()["content-type"], content_type, "{name}");
        assert_eq!(res.headers()["cache-control"], "public, max-age=3600");
        let etag = res.headers()["etag"].clone();
        let again = app
            .client
            .get(app.url(&format!("/static/{name}")))
            .header("if-none-match", etag)
            .send()
            .await
            .expect("get");
        assert_eq!(again.status(), 304, "{name}");
    }
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    let password = operator_with_password(&app, "cyd", "viewer").await;
    let (client, _) = sign_in(&app, "cyd", &password).await;
    let res = client
        .get(app.url(&format!("/devices/{}", d.id)))
        .send()
        .await
        .expect("get");
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = res.text().await.expect("html");
    assert!(html.contains("src=\"/static/uPlot.iife.min.js?v="));
    assert!(html.contains("src=\"/static/charts.js?v="));
    assert!(html.contains("href=\"/static/uPlot.min.css?v="));
    assert!(
        !html.contains("<script>") && !html.contains("<style"),
        "no inline script or style"
    );
}
