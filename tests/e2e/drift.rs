//! Drift scores from real readings over MQTT: a device whose readings move
//! after its baseline is flagged, a steady one is not, per device, per
//! installed version, as an alert rule's condition and on the dashboard's
//! device and fleet pages; too little data gives no score and says why.

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
    publish_minutes(c, d, now, (BASELINE_MINUTES, RECENT_MINUTES), recent_factor).await;
}

/// [`publish`] with `baseline` and `recent` minutes of readings.
async fn publish_minutes(
    c: &AsyncClient,
    d: &EnrolledDevice,
    now: i64,
    (baseline, recent): (i64, i64),
    recent_factor: f64,
) {
    let baseline = (0..baseline).map(|i| (now - 2 * 3_600_000 - i * MINUTE, level(i)));
    let recent = (0..recent).map(|i| (now - 30_000 - i * MINUTE, level(i) * recent_factor));
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
        async move { app.device_alerts(admin, &id).await.len() }
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

/// The table row whose opening tag holds `marker`, up to its `</tr>`.
fn row<'a>(html: &'a str, marker: &str) -> &'a str {
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("a row with {marker} in:\n{html}"));
    let end = html[start..]
        .find("</tr>")
        .map_or(html.len(), |e| start + e);
    &html[start..end]
}

/// The text of each `<td>` of a row, tags left out.
fn cells(row: &str) -> Vec<String> {
    row.split("<td")
        .skip(1)
        .map(|c| {
            let c = &c[c.find('>').map_or(0, |i| i + 1)..];
            let mut text = String::new();
            let mut in_tag = false;
            for ch in c.split("</td>").next().unwrap_or("").chars() {
                match ch {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    ch if !in_tag => text.push(ch),
                    _ => {}
                }
            }
            text.trim().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_flags_drift_on_the_moved_devices_page_and_per_version_only() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let steady = app.enrolled_device(&admin).await;
    let moved = app.enrolled_device(&admin).await;
    let sparse = app.enrolled_device(&admin).await;
    let (cs, cm, cf) = (
        connect(&app, &steady).await,
        connect(&app, &moved).await,
        connect(&app, &sparse).await,
    );
    let now = now_ms();
    publish(&cs, &steady, now, 1.0).await;
    publish(&cm, &moved, now, 1.4).await;
    // Ten minutes of readings, no baseline: too few for a score.
    publish_minutes(&cf, &sparse, now, (0, 10), 1.0).await;
    report(&cs, &steady, "1.0.0").await;
    report(&cm, &moved, "2.0.0").await;
    report(&cf, &sparse, "1.0.0").await;

    let stored = wait_until(Duration::from_secs(30), || async {
        let mut all = true;
        for (d, recent, baseline) in [
            (&steady, RECENT_MINUTES, BASELINE_MINUTES),
            (&moved, RECENT_MINUTES, BASELINE_MINUTES),
            (&sparse, 10, 0),
        ] {
            let v = drift(&app, &admin, &d.id, "metric=temp_c").await;
            all &= v["recent"]["buckets"] == recent && v["baseline"]["buckets"] == baseline;
        }
        let fleet: Value = app
            .get(
                &admin,
                "/api/v1/fleet/drift?metric=temp_c&group_by=version:firmware",
            )
            .await
            .json()
            .await
            .expect("fleet drift");
        all && fleet["groups"].as_array().is_some_and(|g| g.len() == 2)
    })
    .await;
    assert!(stored, "every reading and version reached the store");
    let api = drift(&app, &admin, &moved.id, "metric=temp_c").await;
    let score = format!("{:.2}", api["score"].as_f64().expect("a score"));

    let password = operator_with_password(&app, "drift-watcher", "viewer").await;
    let (client, res) = sign_in(&app, "drift-watcher", &password).await;
    assert_eq!(res.status(), 303);
    let page = |path: String| {
        let client = &client;
        let app = &app;
        async move {
            let res = client.get(app.url(&path)).send().await.expect("page");
            assert_eq!(res.status(), 200, "{path}");
            res.text().await.expect("html")
        }
    };

    // Columns: metric, PSI, verdict, recent window, its minutes, baseline window, its minutes.
    let html = page(format!("/devices/{}", moved.id)).await;
    assert!(html.contains("id=\"drift-explained\""), "{html}");
    assert!(html.contains("Over 0.25 is flagged as drift"), "{html}");
    let r = row(&html, "data-metric=\"temp_c\"");
    assert!(r.contains("data-drifted=\"true\""), "{r}");
    assert!(
        r.contains("<strong class=\"warn-text\">drift</strong>"),
        "flagged in words: {r}"
    );
    let c = cells(r);
    assert_eq!(c[0], "temp_c");
    assert_eq!(c[1], score, "the API's score, two decimals: {r}");
    assert_eq!(c[2], "drift");
    assert_eq!((c[4].as_str(), c[6].as_str()), ("40", "200"), "{r}");
    assert!(
        c[3].contains(" to ") && c[5].contains(" to "),
        "both windows' spans: {r}"
    );

    // live.js's refetches swap only the data-live sections, so they skip scoring.
    let live = client
        .get(app.url(&format!("/devices/{}", moved.id)))
        .header("X-Drover-Live", "1")
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(live.contains("id=\"latest-values\""), "{live}");
    assert!(!live.contains("id=\"drift\""), "{live}");

    let html = page(format!("/devices/{}", steady.id)).await;
    let r = row(&html, "data-metric=\"temp_c\"");
    assert!(r.contains("data-drifted=\"false\""), "{r}");
    assert!(!html.contains(">drift</strong>"), "steady is not flagged");
    let c = cells(r);
    assert!(
        c[1].parse::<f64>().is_ok_and(|s| s < 0.1),
        "a low score: {r}"
    );
    assert_eq!(c[2], "steady");

    let html = page(format!("/devices/{}", sparse.id)).await;
    let r = row(&html, "data-metric=\"temp_c\"");
    assert!(!html.contains(">drift</strong>"), "no score, no flag");
    let c = cells(r);
    assert_eq!(c[1], "none", "{r}");
    assert!(
        c[2].contains(
            "not enough data: 10 of the 30 minutes with readings needed in the recent window, 0 in the baseline"
        ),
        "the reason: {r}"
    );
    assert_eq!((c[4].as_str(), c[6].as_str()), ("10", "0"), "{r}");

    // Per version: devices, scored, drifting, mean PSI.
    // Scoring every device is costly: the page offers it and scores when asked.
    let html = page("/fleet?metric=temp_c&group_by=version%3Afirmware&window=1h".into()).await;
    assert!(html.contains("id=\"fleet-drift-offer\""), "{html}");
    assert!(!html.contains("id=\"drift-groups\""), "{html}");
    let html =
        page("/fleet?metric=temp_c&group_by=version%3Afirmware&window=1h&drift=1".into()).await;
    assert!(html.contains("id=\"drift-groups\""), "{html}");
    assert!(!html.contains("id=\"fleet-drift-offer\""), "{html}");
    assert!(
        html.contains("A score over 0.25 is drift"),
        "the statistic and threshold explained"
    );
    let old = cells(row(&html, "data-version=\"1.0.0\""));
    assert_eq!(old[..3], ["2", "1", "0"], "the sparse device is not scored");
    assert!(
        old[3].parse::<f64>().is_ok_and(|s| s < 0.1),
        "the steady device's score: {old:?}"
    );
    let new = row(&html, "data-version=\"2.0.0\"");
    assert!(new.contains("1 drifting</strong>"), "{new}");
    assert_eq!(cells(new)[3], score, "one device: its score is the mean");
    // Drift is per installed version only.
    let html = page("/fleet?metric=temp_c&group_by=device_type&window=1h".into()).await;
    assert!(html.contains("id=\"fleet-groups\""), "{html}");
    assert!(!html.contains("id=\"fleet-drift\""), "{html}");
    assert!(!html.contains("id=\"fleet-drift-offer\""), "{html}");
}

/// Devices a drift pass scores in [`a_drift_rule_reaches_every_device_in_its_scope_over_successive_passes`].
const PER_PASS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_rule_reaches_every_device_in_its_scope_over_successive_passes() {
    // Two devices a pass, a pass every two seconds:
    // the drifting device is past the first pass, so only a rotation reaches it.
    let app = spawn_app_with(|s| {
        s.drift_pace = drover_server::alerts::engine::DriftPace {
            every: Duration::from_secs(2),
            devices_per_pass: PER_PASS,
        }
    })
    .await;
    let admin = app.admin_token().await;
    let res = app
        .post_json(
            &admin,
            "/api/v1/alert-rules",
            &json!({"name": "rpi4 temp drift", "metric": "drift.temp_c",
                    "scope": {"device_type": "rpi4"},
                    "condition": {"op": ">", "value": 0.25}, "for_seconds": 0}),
        )
        .await;
    assert_eq!(
        res.status(),
        201,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let mut rpi4 = Vec::new();
    for _ in 0..4 {
        rpi4.push(app.enrolled_device(&admin).await);
    }
    rpi4.sort_by(|a, b| a.id.cmp(&b.id));
    // Out of the rule's scope and drifting: never scored, never taking an in-scope device's place.
    let mut jetson = Vec::new();
    for _ in 0..2 {
        jetson.push(app.enrolled_device_of_type(&admin, "jetson").await);
    }
    let moved = &rpi4[3];
    let mut all: Vec<&str> = rpi4.iter().chain(&jetson).map(|d| d.id.as_str()).collect();
    all.sort();
    let place = all
        .iter()
        .position(|id| *id == moved.id)
        .expect("the moved device");
    assert!(
        place >= PER_PASS,
        "the moved device is not among the first {PER_PASS} by id: {all:?}"
    );

    let now = now_ms();
    // The clients stay connected until the end: dropping one ends its session.
    let mut clients = Vec::new();
    for d in rpi4.iter().chain(&jetson) {
        let drifting = d.id == moved.id || jetson.iter().any(|j| j.id == d.id);
        let c = connect(&app, d).await;
        publish(&c, d, now, if drifting { 1.4 } else { 1.0 }).await;
        clients.push(c);
    }
    let stored = wait_until(Duration::from_secs(30), || async {
        let mut all = true;
        for d in rpi4.iter().chain(&jetson) {
            let v = drift(&app, &admin, &d.id, "metric=temp_c").await;
            all &= v["recent"]["buckets"] == RECENT_MINUTES
                && v["baseline"]["buckets"] == BASELINE_MINUTES;
        }
        all
    })
    .await;
    assert!(stored, "every reading reached the rollups");
    for j in &jetson {
        let v = drift(&app, &admin, &j.id, "metric=temp_c").await;
        assert_eq!(
            v["drifted"], true,
            "the out-of-scope devices drift too: {v}"
        );
    }

    let alerts = |id: String| {
        let (app, admin) = (&app, &admin);
        async move { app.device_alerts(admin, &id).await }
    };
    let fired = wait_until(Duration::from_secs(30), || async {
        !alerts(moved.id.clone()).await.is_empty()
    })
    .await;
    assert!(fired, "the moved device's drift fired the rule");
    let items = alerts(moved.id.clone()).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["metric"], "drift.temp_c");
    assert_eq!(items[0]["rule_name"], "rpi4 temp drift");
    assert!(
        items[0]["value"].as_f64().is_some_and(|v| v > 0.25),
        "{items:?}"
    );
    // A quiet device cannot be waited for: a full round more (three passes of
    // two over four in-scope devices) gives every device its turn again.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for d in rpi4[..3].iter().chain(&jetson) {
        assert_eq!(
            alerts(d.id.clone()).await.len(),
            0,
            "{} is steady or out of scope",
            d.id
        );
    }
}
