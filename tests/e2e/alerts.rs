//! Alert rules judged as real readings, health reports and presence arrive
//! over MQTT: firing only after `for_seconds`, resolving when the condition
//! clears, surviving a restart, and "heartbeat missing" for a stopped agent.

use std::time::Duration;

use drover_tests::*;
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};

use crate::dashboard::{operator_with_password, sign_in};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

async fn rule(app: &TestApp, token: &str, body: Value) -> Value {
    let res = app.post_json(token, "/api/v1/alert-rules", &body).await;
    assert_eq!(
        res.status(),
        201,
        "{}",
        res.text().await.unwrap_or_default()
    );
    res.json().await.expect("rule")
}

async fn connect(app: &TestApp, d: &EnrolledDevice) -> AsyncClient {
    let (client, mut eventloop) = mqtt_connect(app.mqtt_options(&d.id, d))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

async fn reading(c: &AsyncClient, d: &EnrolledDevice, seq: i64, metric: &str, value: f64) {
    c.publish(
        d.topic("telemetry"),
        QoS::AtLeastOnce,
        false,
        json!({"epoch": "a1", "seq": seq, "ts": now_ms(), "metrics": {metric: value}}).to_string(),
    )
    .await
    .expect("publish");
}

async fn events(app: &TestApp, admin: &str, id: &str) -> String {
    app.get(admin, &format!("/api/v1/devices/{id}/events"))
        .await
        .text()
        .await
        .expect("events")
}

#[tokio::test]
async fn an_alert_fires_only_after_its_time_and_resolves_when_the_condition_clears() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let hot = app.enrolled_device(&admin).await;
    let noisy = app.enrolled_device(&admin).await;
    let r = rule(
        &app,
        &admin,
        json!({"name": "hot board", "metric": "temp_c", "scope": {"device_type": "rpi4"},
               "condition": {"op": ">", "value": 80}, "for_seconds": 3, "severity": "critical"}),
    )
    .await;
    assert_eq!(r["condition"], json!({"op": ">", "value": 80.0}));

    let c = connect(&app, &hot).await;
    let n = connect(&app, &noisy).await;
    let started = now_ms();
    reading(&c, &hot, 1, "temp_c", 85.0).await;
    // One noisy reading pages nobody: it clears before the rule's time is up.
    reading(&n, &noisy, 1, "temp_c", 95.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    reading(&n, &noisy, 2, "temp_c", 60.0).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        app.alerts(&admin, "state=firing").await.is_empty(),
        "nothing fires before 3 s"
    );
    reading(&c, &hot, 2, "temp_c", 86.5).await;
    let fired = wait_until(Duration::from_secs(15), || async {
        !app.alerts(&admin, "state=firing").await.is_empty()
    })
    .await;
    assert!(fired, "the alert fires once the condition held for 3 s");
    let firing = app.alerts(&admin, "state=firing").await;
    assert_eq!(firing.len(), 1, "only the hot device: {firing:?}");
    let a = &firing[0];
    assert_eq!(a["device_id"], hot.id.as_str());
    assert_eq!(a["severity"], "critical");
    assert!(
        a["fired_at"].as_i64().expect("fired_at") - started >= 3000,
        "it fired 3 s after the condition began: {a}"
    );
    assert!(events(&app, &admin, &hot.id).await.contains("alert_firing"));
    assert!(
        !events(&app, &admin, &noisy.id)
            .await
            .contains("alert_firing")
    );

    // The dashboard shows it, with the count in the navigation.
    let password = operator_with_password(&app, "wanda", "viewer").await;
    let (client, _) = sign_in(&app, "wanda", &password).await;
    let page = client
        .get(app.url("/alerts"))
        .send()
        .await
        .expect("alerts page")
        .text()
        .await
        .expect("html");
    assert!(
        page.contains("hot board") && page.contains(&hot.id),
        "{page}"
    );
    assert!(
        page.contains(r#"id="nav-firing" title="alerts firing">1</span>"#),
        "the navigation counts it"
    );
    assert!(
        !page.contains(r#"action="/alerts/rules""#),
        "a viewer gets no create form"
    );

    reading(&c, &hot, 3, "temp_c", 70.0).await;
    let resolved = wait_until(Duration::from_secs(10), || async {
        app.alerts(&admin, "state=firing").await.is_empty()
            && app.alerts(&admin, "state=resolved").await.len() == 1
    })
    .await;
    assert!(resolved, "it resolves when the condition clears");
    assert!(
        events(&app, &admin, &hot.id)
            .await
            .contains("alert_resolved")
    );
}

#[tokio::test]
async fn a_firing_alert_survives_a_restart_and_resolves_after_it() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    rule(
        &app,
        &admin,
        json!({"name": "full spool", "metric": "cpu_pct", "condition": {"op": ">=", "value": 90},
               "for_seconds": 0}),
    )
    .await;
    let c = connect(&app, &d).await;
    reading(&c, &d, 1, "cpu_pct", 99.0).await;
    let fired = wait_until(Duration::from_secs(10), || async {
        app.alerts(&admin, "state=firing").await.len() == 1
    })
    .await;
    assert!(fired, "for_seconds 0 fires at the first reading");
    drop(c);

    let app = app.restart().await;
    let admin = app.admin_token().await;
    let c = connect(&app, &d).await;
    reading(&c, &d, 2, "cpu_pct", 97.0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let firing = app.alerts(&admin, "state=firing").await;
    assert_eq!(
        firing.len(),
        1,
        "still the one alert, not fired again: {firing:?}"
    );
    assert_eq!(app.alerts(&admin, "").await.len(), 1);
    reading(&c, &d, 3, "cpu_pct", 20.0).await;
    let resolved = wait_until(Duration::from_secs(10), || async {
        app.alerts(&admin, "state=resolved").await.len() == 1
    })
    .await;
    assert!(
        resolved,
        "the alert from before the restart resolves after it"
    );
}

#[tokio::test]
async fn heartbeat_missing_fires_for_a_stopped_agent() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    rule(
        &app,
        &admin,
        json!({"name": "silent device", "metric": "heartbeat_missing",
               "condition": {"op": ">=", "value": 1}, "for_seconds": 2, "severity": "warning"}),
    )
    .await;
    let token = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let sim = crate::simulator::Simulator::start(
        &app,
        token["token"].as_str().expect("token"),
        &app.scratch().join("hb"),
        1,
        &[],
    );
    let up = wait_until(Duration::from_secs(60), || async {
        crate::simulator::devices(&app, &admin, Some("online"))
            .await
            .len()
            == 1
    })
    .await;
    assert!(up, "the agent comes online");
    assert!(app.alerts(&admin, "state=firing").await.is_empty());
    sim.stop().await;
    let fired = wait_until(Duration::from_secs(20), || async {
        app.alerts(&admin, "state=firing")
            .await
            .iter()
            .any(|a| a["metric"] == "heartbeat_missing")
    })
    .await;
    assert!(fired, "a stopped agent's missing heartbeat fires after 2 s");
}

#[tokio::test]
async fn bad_rules_name_the_field_and_viewers_cannot_write() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let good = json!({"name": "n", "metric": "temp_c", "condition": {"op": ">", "value": 1}, "for_seconds": 0});
    for (patch, field) in [
        (
            json!({"condition": {"op": "=>", "value": 1}}),
            "condition.op",
        ),
        (
            json!({"condition": {"op": ">", "value": "hot"}}),
            "condition.value",
        ),
        (json!({"for_seconds": -5}), "for_seconds"),
        (json!({"metric": "health.nope"}), "metric"),
        (json!({"metric": "<b>"}), "metric"),
        (json!({"severity": "loud"}), "severity"),
        (json!({"name": ""}), "name"),
        (json!({"scope": {"tags": {"": "x"}}}), "scope.tags"),
    ] {
        let mut body = good.clone();
        for (k, v) in patch.as_object().expect("object") {
            body[k] = v.clone();
        }
        let res = app.post_json(&admin, "/api/v1/alert-rules", &body).await;
        let p = problem(res, 400).await;
        assert!(
            p["detail"].as_str().is_some_and(|d| d.contains(field)),
            "{field}: {p}"
        );
    }
    let res = app.get(&admin, "/api/v1/alerts?state=sometimes").await;
    let p = problem(res, 400).await;
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("state")));
    assert!(
        app.get(&admin, "/api/v1/alert-rules")
            .await
            .json::<Vec<Value>>()
            .await
            .expect("rules")
            .is_empty(),
        "nothing was stored"
    );

    let viewer = app.user_token(&admin, "vic", "viewer").await;
    let res = app.post_json(&viewer, "/api/v1/alert-rules", &good).await;
    assert_eq!(res.status(), 403);
    let created = rule(&app, &admin, good).await;
    let id = created["id"].as_str().expect("id");
    let res = app
        .delete(&viewer, &format!("/api/v1/alert-rules/{id}"))
        .await;
    assert_eq!(res.status(), 403);
    let res = app
        .client
        .patch(app.url(&format!("/api/v1/alert-rules/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"for_seconds": 30}))
        .send()
        .await
        .expect("patch");
    assert_eq!(res.status(), 200);
    let changed: Value = res.json().await.expect("rule");
    assert_eq!(changed["for_seconds"], 30);
    assert_eq!(changed["name"], "n", "unchanged fields stay");
    let res = app
        .delete(&admin, &format!("/api/v1/alert-rules/{id}"))
        .await;
    assert_eq!(res.status(), 204);
}
