//! Text that users and devices choose reaches every dashboard page as text:
//! markup in device names, tags, bundle names (created and reported as
//! installed), version names, rollout names and event details comes out
//! escaped; metric names with markup are refused with an event, bundle
//! names with a path separator with a problem naming the field.

use std::time::Duration;

use drover_tests::*;
use rumqttc::QoS;
use serde_json::json;

use crate::dashboard::{operator_with_password, sign_in};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Markup each page must show as text; none may reach a page raw.
const RAW: [&str; 5] = [
    "<script>alert(\"name\")</script>",
    "<b>tagged</b>",
    "<svg onload=alert(1)>",
    "<u>rollout</u>",
    "<img src=x>",
];

#[tokio::test]
async fn markup_from_users_and_devices_is_text_on_every_page() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    let res = app
        .client
        .patch(app.url(&format!("/api/v1/devices/{}", d.id)))
        .bearer_auth(&admin)
        .json(&json!({"name": RAW[0], "tags": {"site": RAW[1]}}))
        .send()
        .await
        .expect("patch");
    assert_eq!(res.status(), 200);

    let (mqtt, mut eventloop) = mqtt_connect(app.mqtt_options(&d.id, &d))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    mqtt.publish(
        d.topic("state"),
        QoS::AtLeastOnce,
        true,
        json!({"online": true, "ts": now_ms()}).to_string(),
    )
    .await
    .expect("publish");
    // Version and bundle names are the device's own words (bundle names only need to be
    // path components); metric names must be safe, so markup there is refused with an event.
    mqtt.publish(
        d.topic("telemetry"),
        QoS::AtLeastOnce,
        false,
        json!({"epoch": "e1", "seq": 1, "ts": now_ms(), "versions": {RAW[2]: "1.0.0"}, "metrics": {"temp_c": 40.0}})
            .to_string(),
    )
    .await
    .expect("publish");
    mqtt.publish(
        d.topic("telemetry"),
        QoS::AtLeastOnce,
        false,
        json!({"epoch": "e1", "seq": 2, "ts": now_ms(), "metrics": {RAW[4]: 1.0}}).to_string(),
    )
    .await
    .expect("publish");
    mqtt.publish(
        d.topic("health"),
        QoS::AtLeastOnce,
        false,
        json!({"ts": now_ms(), "uptime_s": 60, "cpu_pct": 1.0, "mem_used": 1, "mem_total": 2, "disk_free": 3,
               "installed": [{"name": RAW[2], "kind": "model", "version": "1.0.0"}],
               "spool_depth": 0, "spool_dropped": 0, "update_state": null})
        .to_string(),
    )
    .await
    .expect("publish");
    let stored = wait_until(Duration::from_secs(15), || async {
        let events = app
            .get(&admin, &format!("/api/v1/devices/{}/events", d.id))
            .await
            .text()
            .await
            .unwrap_or_default();
        let health = app
            .get(&admin, &format!("/api/v1/devices/{}/health", d.id))
            .await
            .text()
            .await
            .unwrap_or_default();
        events.contains("telemetry_rejected") && health.contains("svg onload")
    })
    .await;
    assert!(
        stored,
        "the health report is stored, the markup metric name refused with an event"
    );

    // A bundle name is a path component: markup without a slash is allowed, a slash is not.
    let res = app
        .post_json(
            &admin,
            "/api/v1/bundles",
            &json!({"name": RAW[3], "kind": "model", "version": "1.0.0", "device_types": ["rpi4"],
                    "installer": "files", "artifacts": []}),
        )
        .await;
    let p = problem(res, 400).await;
    assert!(
        p["detail"].as_str().is_some_and(|t| t.contains("name")),
        "{p}"
    );
    let bundle = crate::agent_updates::bundle(
        &app,
        &admin,
        RAW[2],
        "model",
        "files",
        "1.0.0",
        &[("model.onnx", b"weights".to_vec())],
    )
    .await;
    let res = app
        .post_json(
            &admin,
            "/api/v1/rollouts",
            &json!({"name": RAW[3], "bundle_id": bundle, "target": {"device_ids": [d.id]},
                    "phases": [{"percent": 100, "soak_seconds": 0}]}),
        )
        .await;
    assert_eq!(
        res.status(),
        201,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let rollout: serde_json::Value = app
        .get(&admin, "/api/v1/rollouts")
        .await
        .json()
        .await
        .expect("json");
    let rollout_id = rollout["items"][0]["id"].as_str().expect("id").to_string();

    let password = operator_with_password(&app, "esc", "viewer").await;
    let (client, _) = sign_in(&app, "esc", &password).await;
    let pages = [
        "/".to_string(),
        "/devices".to_string(),
        "/devices?q=script".to_string(),
        format!("/devices/{}", d.id),
        "/bundles".to_string(),
        "/rollouts".to_string(),
        format!("/rollouts/{rollout_id}"),
        "/audit".to_string(),
        // Grouped by the reported bundle's version, with its drift table.
        "/fleet".to_string(),
        "/fleet?drift=1".to_string(),
    ];
    let mut shown = String::new();
    for path in &pages {
        let res = client.get(app.url(path)).send().await.expect("page");
        assert_eq!(res.status(), 200, "{path}");
        let html = res.text().await.expect("html");
        for raw in RAW {
            assert!(
                !html.contains(raw),
                "{path} shows {raw:?} as markup:\n{html}"
            );
        }
        shown.push_str(&html);
    }
    // askama writes numeric character references.
    for escaped in [
        "&#60;script&#62;alert(&#34;name&#34;)&#60;/script&#62;",
        "&#60;b&#62;tagged&#60;/b&#62;",
        "&#60;svg onload=alert(1)&#62;",
        "&#60;u&#62;rollout&#60;/u&#62;",
        "&#60;img src=x&#62;",
    ] {
        assert!(
            shown.contains(escaped),
            "{escaped} appears as text somewhere"
        );
    }
}
