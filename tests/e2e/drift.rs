//! Drift scores from real readings over MQTT: a device whose readings move
//! after its baseline is flagged, a steady one is not, per device, per
//! installed version and as an alert rule's condition; too little data gives
//! no score and says why.

use std::time::Duration;

use drover_tests::*;
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

const MINUTE: i64 = 60_000;

/// Minutes of baseline and of recent readings, whole cycles of [`level`]'s 20 values.
const BASELINE_MINUTES: i64 = 200;
const RECENT_MINUTES: i64 = 40;

/// A value that walks evenly through 20 steps around 40, one step a minute.
fn level(i: i64) -> f64 {
    39.0 + (i % 20) as f64 * 0.1
}

async fn connect(app: &TestApp, d: &EnrolledDevice) -> AsyncClient {
    let (client, mut eventloop) = mqtt_connect(app.mqtt_options(&d.id, d))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

/// Publishes one reading a minute: a baseline ending two hours before `now`
/// (the device never updated, so the baseline is the week before the last
/// hour), then the last 40 minutes with every value multiplied by `recent_factor`.
async fn publish(c: &AsyncClient, d: &EnrolledDevice, now: i64, recent_factor: f64) {
    let baseline = (0..BASELINE_MINUTES).map(|i| (now - 2 * 3_600_000 - i * MINUTE, level(i)));
    let recent = (0..RECENT_MINUTES).map(|i| (now - 30_000 - i * MINUTE, level(i) * recent_factor));
    let batch: Vec<Value> = baseline
        .chain(recent)
        .enumerate()
        .map(|(seq, (ts, v))| json!({"seq": seq + 1, "ts": ts, "metrics": {"temp_c": v}}))
        .collect();
    // Several messages: the test client's packets are limited to 10 KiB.
    for chunk in batch.chunks(50) {
        let message = json!({"epoch": "d41f", "versions": {"firmware": "1.0.0"}, "batch": chunk});
        c.publish(
            d.topic("telemetry"),
            QoS::AtLeastOnce,
            false,
            message.to_string(),
        )
        .await
        .expect("publish");
    }
}

/// Reports `firmware` at `version` installed.
async fn report(c: &AsyncClient, d: &EnrolledDevice, version: &str) {
    let health = json!({"ts": now_ms(), "uptime_s": 5, "cpu_pct": 1.0, "mem_used": 1,
        "mem_total": 2, "disk_free": 3, "spool_depth": 0, "spool_dropped": 0, "update_state": null,
        "installed": [{"name": "firmware", "kind": "firmware", "version": version}]});
    c.publish(
        d.topic("health"),
        QoS::AtLeastOnce,
        false,
        health.to_string(),
    )
    .await
    .expect("publish health");
}

async fn drift(app: &TestApp, token: &str, id: &str, query: &str) -> Value {
    let res = app
        .get(token, &format!("/api/v1/devices/{id}/drift?{query}"))
        .await;
    let status = res.status();
    let body: Value = res.json().await.expect("drift");
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_injected_into_one_devices_readings_is_flagged_and_a_steady_one_is_not() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let viewer = app.user_token(&admin, "drift-viewer", "viewer").await;
    // The rule exists before the readings, so the engine's next drift pass judges them.
    let res = app
        .post_json(
            &admin,
            "/api/v1/alert-rules",
            &json!({"name": "temp drift", "metric": "drift.temp_c",
                    "condition": {"op": ">", "value": 0.25}, "for_seconds": 0}),
        )
        .await;
    assert_eq!(
        res.status(),
        201,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let steady = app.enrolled_device(&admin).await;
    let moved = app.enrolled_device(&admin).await;
    let (cs, cm) = (connect(&app, &steady).await, connect(&app, &moved).await);
    let now = now_ms();
    publish(&cs, &steady, now, 1.0).await;
    publish(&cm, &moved, now, 1.4).await;
    report(&cs, &steady, "1.0.0").await;
    report(&cm, &moved, "2.0.0").await;

    let stored = wait_until(Duration::from_secs(30), || async {
        let mut all = true;
        for d in [&steady, &moved] {
            let v = drift(&app, &viewer, &d.id, "metric=temp_c").await;
            all &= v["recent"]["buckets"] == RECENT_MINUTES
                && v["baseline"]["buckets"] == BASELINE_MINUTES;
        }
        all
    })
    .await;
    assert!(
        stored,
        "every reading reached the rollups: {}",
        app.get(&admin, &format!("/api/v1/devices/{}/events", moved.id))
            .await
            .text()
            .await
            .unwrap_or_default()
    );

    let s = drift(&app, &viewer, &steady.id, "metric=temp_c&window=1h").await;
    let score = s["score"].as_f64().expect("a score");
    assert!(score < 0.1, "steady: {s}");
    assert_eq!(s["drifted"], false);
    assert_eq!(s["threshold"], 0.25);
    assert!(s.get("reason").is_none(), "{s}");
    let m = drift(&app, &viewer, &moved.id, "metric=temp_c").await;
    let score = m["score"].as_f64().expect("a score");
    assert!(score > 0.25, "moved: {m}");
    assert_eq!(m["drifted"], true);
    let (recent, baseline) = (
        m["recent"]["mean"].as_f64().expect("mean"),
        m["baseline"]["mean"].as_f64().expect("mean"),
    );
    assert!(
        (recent / baseline - 1.4).abs() < 0.01,
        "the windows' means show the 40 % move: {m}"
    );

    // Too little data: a metric never sent, and a window whose baseline is empty.
    let none = drift(&app, &viewer, &steady.id, "metric=fan_rpm").await;
    assert!(none["score"].is_null(), "{none}");
    assert_eq!(none["drifted"], false);
    assert!(
        none["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not enough data")),
        "{none}"
    );
    let week = drift(&app, &viewer, &moved.id, "metric=temp_c&window=7d").await;
    assert!(
        week["score"].is_null(),
        "the week before the last 7 days is empty: {week}"
    );
    assert_eq!(week["baseline"]["buckets"], 0);

    // Per version: the devices now on each version of the firmware.
    let fleet_drift = || async {
        let res = app
            .get(
                &viewer,
                "/api/v1/fleet/drift?metric=temp_c&group_by=version:firmware",
            )
            .await;
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.expect("fleet drift")
    };
    let grouped = wait_until(Duration::from_secs(20), || async {
        fleet_drift().await["groups"]
            .as_array()
            .is_some_and(|g| g.len() == 2)
    })
    .await;
    let fleet = fleet_drift().await;
    assert!(grouped, "both versions reported: {fleet}");
    assert_eq!(fleet["truncated"], false);
    assert_eq!(fleet["groups"][0]["key"], "1.0.0");
    assert_eq!(fleet["groups"][0]["devices"], 1);
    assert_eq!(fleet["groups"][0]["drifted"], 0);
    assert_eq!(fleet["groups"][1]["key"], "2.0.0");
    assert_eq!(fleet["groups"][1]["drifted"], 1);
    assert!(
        fleet["groups"][1]["mean_score"]
            .as_f64()
            .is_some_and(|s| s > 0.25)
    );

    // Bad input names its field.
    for (path, field) in [
        (format!("/api/v1/devices/{}/drift", steady.id), "metric"),
        (
            format!(
                "/api/v1/devices/{}/drift?metric=temp_c&window=2h",
                steady.id
            ),
            "window",
        ),
        (
            "/api/v1/fleet/drift?metric=temp_c&group_by=device_type".into(),
            "group_by",
        ),
        (
            "/api/v1/fleet/drift?metric=a%20b&group_by=version:firmware".into(),
            "metric",
        ),
    ] {
        let body = problem(app.get(&viewer, &path).await, 400).await;
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    let res = app
        .get(&viewer, "/api/v1/devices/nope/drift?metric=temp_c")
        .await;
    assert_eq!(res.status(), 404);

    // The alert rule on drift.temp_c fires for the moved device only (the
    // engine scores once a minute).
    let alerts = |id: String| {
        let (app, admin) = (&app, &admin);
        async move {
            let body: Value = app
                .get(admin, &format!("/api/v1/alerts?device_id={id}"))
                .await
                .json()
                .await
                .expect("alerts");
            body["items"].as_array().expect("items").len()
        }
    };
    let fired = wait_until(Duration::from_secs(90), || async {
        alerts(moved.id.clone()).await > 0
    })
    .await;
    assert!(fired, "the moved device's drift fired the rule");
    assert_eq!(
        alerts(steady.id.clone()).await,
        0,
        "the steady device is quiet"
    );
}
