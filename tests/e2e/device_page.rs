//! The device page as an operator uses it: charts over 1 h, 24 h and 7 d
//! (the longer ones from the rollups, checked against the readings sent),
//! its update history and events, and everything a device or an operator
//! typed shown as text. Readings and reports travel the real way: MQTT and
//! the device API with an enrolled device's certificate.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_tests::{
    EnrolledDevice, TestApp, problem, shows_escaped, spawn_app, spawn_app_with, wait_until,
};
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};

use crate::dashboard::{now_ms, operator_with_password, page_csrf, sign_in};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Connects a device over MQTT and keeps its event loop running.
async fn connect(app: &TestApp, d: &EnrolledDevice) -> AsyncClient {
    let (client, mut eventloop) = drover_tests::mqtt_connect(app.mqtt_options(&d.id, d))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

async fn publish(client: &AsyncClient, d: &EnrolledDevice, topic: &str, body: &Value) {
    client
        .publish(d.topic(topic), QoS::AtLeastOnce, false, body.to_string())
        .await
        .expect("publish");
}

/// How many readings of `metric` the server holds for the device.
async fn stored(app: &TestApp, admin: &str, id: &str, metric: &str) -> usize {
    let body: Value = app
        .get(
            admin,
            &format!("/api/v1/devices/{id}/telemetry?metric={metric}&from=0"),
        )
        .await
        .json()
        .await
        .expect("json");
    body["points"].as_array().map_or(0, Vec::len)
}

/// Sends `readings` (ts, metric, value) as telemetry batches of at most 100
/// (rumqttc refuses packets over 10 KiB), and waits until all are stored.
async fn send(
    app: &TestApp,
    admin: &str,
    d: &EnrolledDevice,
    client: &AsyncClient,
    readings: &[(i64, &str, f64)],
) {
    for (n, chunk) in readings.chunks(100).enumerate() {
        let batch: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, (ts, metric, value))| {
                json!({"seq": n * 100 + i + 1, "ts": ts, "metrics": {*metric: value}})
            })
            .collect();
        publish(
            client,
            d,
            "telemetry",
            &json!({"epoch": "e1", "versions": {}, "batch": batch}),
        )
        .await;
    }
    let mut want: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, metric, _) in readings {
        *want.entry(metric).or_default() += 1;
    }
    let all = wait_until(Duration::from_secs(30), || async {
        for (metric, n) in &want {
            if stored(app, admin, &d.id, metric).await != *n {
                return false;
            }
        }
        true
    })
    .await;
    assert!(all, "every reading is stored: {want:?}");
}

/// One expected bucket: (start, min, max, mean, count).
type Expected = (i64, f64, f64, f64, i64);

/// The buckets of `step` ms that `readings` of `metric` make in `[from, to)`.
fn buckets(
    readings: &[(i64, &str, f64)],
    metric: &str,
    from: i64,
    to: i64,
    step: i64,
) -> Vec<Expected> {
    let mut by_start: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for (ts, m, v) in readings {
        if *m == metric && (from..to).contains(ts) {
            by_start
                .entry(ts - ts.rem_euclid(step))
                .or_default()
                .push(*v);
        }
    }
    by_start
        .into_iter()
        .map(|(start, vs)| {
            let min = vs.iter().copied().fold(f64::INFINITY, f64::min);
            let max = vs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mean = vs.iter().sum::<f64>() / vs.len() as f64;
            (start, min, max, mean, vs.len() as i64)
        })
        .collect()
}

/// A series of the `series` answer as buckets.
fn answered(series: &Value) -> Vec<Expected> {
    let col = |name: &str| series[name].as_array().cloned().unwrap_or_default();
    let (ts, value, min, max, count) = (
        col("ts"),
        col("value"),
        col("min"),
        col("max"),
        col("count"),
    );
    assert!(
        [value.len(), min.len(), max.len(), count.len()]
            .iter()
            .all(|n| *n == ts.len()),
        "every column has one entry per bucket: {series}"
    );
    (0..ts.len())
        .map(|i| {
            (
                ts[i].as_i64().expect("ts"),
                min[i].as_f64().expect("min"),
                max[i].as_f64().expect("max"),
                value[i].as_f64().expect("mean"),
                count[i].as_i64().expect("count"),
            )
        })
        .collect()
}

fn assert_same_buckets(got: &[Expected], want: &[Expected], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} != {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.0, g.1, g.2, g.4), (w.0, w.1, w.2, w.4), "{what}");
        assert!((g.3 - w.3).abs() < 1e-9, "{what}: mean {} != {}", g.3, w.3);
    }
}

async fn series(client: &reqwest::Client, app: &TestApp, id: &str, range: &str) -> Value {
    let res = client
        .get(app.url(&format!("/devices/{id}/series?range={range}")))
        .send()
        .await
        .expect("series");
    assert_eq!(res.status(), 200, "range {range}");
    assert_eq!(res.headers()["cache-control"], "no-store");
    res.json().await.expect("json")
}

/// The metric names of a `series` answer, in order.
fn metrics(body: &Value) -> Vec<String> {
    body["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(|s| s["metric"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_and_a_week_are_charted_from_the_rollups_with_the_readings_min_max_and_mean() {
    // Raw points kept past the eight days sent, so the counts that say
    // "stored" hold even if a retention pass runs meanwhile.
    let app =
        spawn_app_with(|s| s.telemetry_raw_retention = Duration::from_secs(30 * 86_400)).await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    let client_mqtt = connect(&app, &d).await;
    let now = now_ms();
    // temp_c: every 20 minutes over the last eight days (so some fall
    // outside each window), plus three readings in one five-minute bucket
    // of two hours ago, so min, max and mean differ within a bucket.
    let mut readings: Vec<(i64, &str, f64)> = (0..8 * 72i64)
        .map(|i| {
            let ts = now - 1_000 - i * 20 * MINUTE;
            (ts, "temp_c", 20.0 + (i % 17) as f64 * 0.5)
        })
        .collect();
    let two_hours_ago = now - 2 * HOUR;
    let bucket = two_hours_ago - two_hours_ago.rem_euclid(5 * MINUTE) + 10_000;
    for (k, v) in [(0, 11.5), (1, -4.25), (2, 30.0)] {
        readings.push((bucket + k * 1_000, "temp_c", v));
    }
    // A metric last heard from three days ago belongs to the week only.
    readings.push((now - 3 * DAY, "door_open", 1.0));
    send(&app, &admin, &d, &client_mqtt, &readings).await;

    let password = operator_with_password(&app, "vera", "viewer").await;
    let (client, _) = sign_in(&app, "vera", &password).await;

    for (range, span, step) in [("24h", DAY, 5 * MINUTE), ("7d", 7 * DAY, HOUR)] {
        let body = series(&client, &app, &d.id, range).await;
        assert_eq!(body["range"], range);
        let (from, to) = (
            body["from"].as_i64().expect("from"),
            body["to"].as_i64().expect("to"),
        );
        assert_eq!(from.rem_euclid(step), 0, "{range} starts on a bucket");
        assert!(
            to - from >= span && to - from < span + step,
            "{range}: the window spans the range ({from}..{to})"
        );
        assert!(to >= now && to - now < 60_000, "{range} ends now");
        let temp = body["series"]
            .as_array()
            .expect("series")
            .iter()
            .find(|s| s["metric"] == "temp_c")
            .expect("temp_c is charted");
        assert_eq!(temp["step"], step / 1000, "{range} buckets");
        let got = answered(temp);
        let want = buckets(&readings, "temp_c", from, to, step);
        assert_same_buckets(&got, &want, range);
        // The buckets reach from the window's start to its end.
        let (first, last) = (got[0].0, got[got.len() - 1].0);
        assert!(first - from < 20 * MINUTE, "{range} starts at {first}");
        assert!(to - last < 20 * MINUTE + step, "{range} ends at {last}");
        assert!(got.iter().all(|b| (from..to).contains(&b.0)), "{range}");
        // The bucket of three readings shows all three.
        let three = got
            .iter()
            .find(|b| b.0 == bucket - bucket.rem_euclid(step))
            .expect("the busy bucket");
        assert!(three.1 <= -4.25 && three.2 >= 30.0, "{range}: {three:?}");
    }
    assert_eq!(
        metrics(&series(&client, &app, &d.id, "24h").await),
        ["temp_c"]
    );
    assert_eq!(
        metrics(&series(&client, &app, &d.id, "7d").await),
        ["door_open", "temp_c"],
        "a metric silent for three days is in the week"
    );

    // The hour is unchanged: few readings, sent one by one; no range means 1h.
    for path in [
        format!("/devices/{}/series", d.id),
        format!("/devices/{}/series?range=1h", d.id),
    ] {
        let body: Value = client
            .get(app.url(&path))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(body["range"], "1h", "{path}");
        assert_eq!(
            body["to"]
                .as_i64()
                .zip(body["from"].as_i64())
                .map(|(t, f)| t - f),
            Some(HOUR)
        );
        let temp = &body["series"][0];
        assert!(temp.get("step").is_none(), "{path}: {temp}");
        assert_eq!(temp["ts"].as_array().map(Vec::len), Some(3), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_other_than_1h_24h_or_7d_is_refused_naming_range() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    let password = operator_with_password(&app, "rita", "viewer").await;
    let (client, _) = sign_in(&app, "rita", &password).await;
    for bad in ["2h", "7D", "week", "%3Cb%3E"] {
        let res = client
            .get(app.url(&format!("/devices/{}/series?range={bad}", d.id)))
            .send()
            .await
            .expect("get");
        let body = problem(res, 400).await;
        assert_eq!(body["field"], "range", "{bad}: {body}");
        assert_eq!(body["detail"], "range: must be 1h, 24h or 7d");
    }
    // The page itself still shows the device, charting the hour, and says why.
    let res = client
        .get(app.url(&format!("/devices/{}?range=2h", d.id)))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 400);
    let html = res.text().await.expect("html");
    assert!(html.contains("range: must be 1h, 24h or 7d"), "{html}");
    assert!(html.contains(&d.id));
    assert!(html.contains("data-range=\"1h\" aria-pressed=\"true\""));
    // A good one marks its button and the charts.
    let (html, _) = page_csrf(&app, &client, &format!("/devices/{}?range=7d", d.id)).await;
    assert!(html.contains("data-range=\"7d\" aria-pressed=\"true\""));
    assert!(html.contains("data-range=\"1h\" aria-pressed=\"false\""));
    assert!(html.contains(&format!(
        "data-series=\"/devices/{}/series\" data-range=\"7d\"",
        d.id
    )));
}

fn assert_escaped(html: &str, text: &str, what: &str) {
    assert!(shows_escaped(html, text), "{what} is shown escaped: {text}");
}

/// The HTML of the element with `id` up to its closing `tag` (no nesting of `tag` inside).
fn part<'a>(html: &'a str, id: &str, tag: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("#{id} on the page"));
    let end = html[start..]
        .find(&format!("</{tag}>"))
        .map_or(html.len(), |e| start + e);
    &html[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_update_history_and_events_newest_first_with_markup_as_text() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    let page = format!("/devices/{}", d.id);
    let password = operator_with_password(&app, "opal", "operator").await;
    let (client, _) = sign_in(&app, "opal", &password).await;

    // Before anything happened, each section says what will fill it.
    let (html, _) = page_csrf(&app, &client, &page).await;
    assert!(html.contains("No updates yet: when a rollout offers this device a bundle"));
    assert!(html.contains("No events yet:"));
    assert!(html.contains("No health report yet:"));
    assert!(
        html.contains(&format!("data-live=\"/live?device={}\"", d.id)),
        "the page listens for its device"
    );
    for id in [
        "device-facts",
        "health-card",
        "versions",
        "latest-values",
        "updates",
        "events",
    ] {
        assert!(
            html.contains(&format!("id=\"{id}\" data-live=\"device\"")),
            "#{id} is refreshed live"
        );
    }
    let form = part(&html, "d-name", "form");
    assert!(
        !form.contains("data-live"),
        "the edit form is never swapped"
    );

    // A name with markup, given by an operator.
    let name = "<i>Press</i> & \"B\" <script>alert(1)</script>";
    let res = app
        .client
        .patch(app.url(&format!("/api/v1/devices/{}", d.id)))
        .bearer_auth(&admin)
        .json(&json!({"name": name}))
        .send()
        .await
        .expect("rename");
    assert_eq!(res.status(), 200);

    // Online, so the rollout engine offers it the update.
    let mqtt = connect(&app, &d).await;
    publish(&mqtt, &d, "state", &json!({"online": true, "ts": now_ms()})).await;
    let up = wait_until(Duration::from_secs(10), || async {
        app.device(&admin, &d.id).await["online"] == true
    })
    .await;
    assert!(up, "the device is online");
    // A metric name with markup is refused at ingest; the event names it.
    publish(
        &mqtt,
        &d,
        "telemetry",
        &json!({"epoch": "e1", "seq": 1, "ts": now_ms(), "versions": {}, "metrics": {"<b>bad</b>": 1.0}}),
    )
    .await;
    let refused = wait_until(Duration::from_secs(10), || async {
        let events: Value = app
            .get(&admin, &format!("/api/v1/devices/{}/events", d.id))
            .await
            .json()
            .await
            .expect("events");
        events.to_string().contains("telemetry_rejected")
    })
    .await;
    assert!(refused, "the refused reading is an event");

    let v1 = crate::agent_updates::model_bundle(&app, &admin, "1.2.0", b"weights 1".to_vec()).await;
    let res = app
        .post_json(
            &admin,
            "/api/v1/rollouts",
            &json!({"name": "Spring <b>detector</b> & co", "bundle_id": v1,
                    "target": {"device_ids": [d.id]}, "phases": [{"percent": 100}],
                    "failure_threshold_pct": 100, "max_in_flight": 1}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let rollout: Value = res.json().await.expect("rollout");
    let rollout_id = rollout["id"].as_str().expect("id").to_string();
    let device = app.device_client(Some((&d.cert_pem, &d.key_pem)));
    let url = |path: &str| format!("{}/device/v1{path}", app.device_base);
    let offered = wait_until(Duration::from_secs(20), || async {
        let res = device.get(url("/update")).send().await.expect("update");
        res.status() == 200
    })
    .await;
    assert!(offered, "the rollout offers the update");
    let report = |rollout: String, body: Value| {
        let device = device.clone();
        let url = url(&format!("/update/{rollout}/status"));
        async move {
            let res = device.post(url).json(&body).send().await.expect("report");
            assert_eq!(res.status(), 200, "report {body}");
        }
    };
    report(
        rollout_id.clone(),
        json!({"seq": 1, "state": "downloading", "detail": ""}),
    )
    .await;
    let detail = "install exited 3: <script>alert(2)</script>";
    let log_tail = "unpacking model.onnx\n<img src=x onerror=alert(3)>\ncamera not found";
    report(
        rollout_id.clone(),
        json!({"seq": 2, "state": "failed", "detail": detail, "version": "1.1.0", "log_tail": log_tail}),
    )
    .await;
    // A second update, offered outside any rollout this server knows by name.
    let v2 = crate::agent_updates::model_bundle(&app, &admin, "1.3.0", b"weights 2".to_vec()).await;
    drover_server::bundles::offer(&app.store, &d.id, &v2, Some("manual1"))
        .await
        .expect("offer");
    report(
        "manual1".into(),
        json!({"seq": 1, "state": "succeeded", "detail": "committed", "version": "1.3.0"}),
    )
    .await;

    let (html, _) = page_csrf(&app, &client, &page).await;
    // The name: escaped in the title, the heading and the confirmations.
    assert_escaped(&html, name, "the device name");
    assert!(!html.contains("<i>Press</i>") && !html.contains("<script>alert"));
    let heading = part(&html, "device-name", "h1");
    assert_escaped(heading, name, "the heading");

    // Update history: newest first, with rollout, bundle, state, version and detail.
    let updates = part(&html, "update-history", "table");
    let newest = updates.find("manual1").expect("the second update");
    let older = updates.find("Spring").expect("the rollout's update");
    assert!(newest < older, "newest first");
    assert!(updates.contains(&format!("href=\"/rollouts/{rollout_id}\"")));
    assert_escaped(updates, "Spring <b>detector</b> & co", "the rollout name");
    assert!(updates.contains("detector 1.2.0") && updates.contains("detector 1.3.0"));
    assert!(updates.contains("state-failed") && updates.contains("state-succeeded"));
    assert_escaped(updates, detail, "the report's detail");
    assert_escaped(updates, log_tail, "the log tail");
    assert!(updates.contains("<details><summary>Log tail</summary>"));

    // Events: the install failure with its log tail apart, the refused metric, going online.
    let events = part(&html, "event-list", "table");
    for kind in ["update_failed", "telemetry_rejected", "online"] {
        assert!(events.contains(kind), "{kind} in {events}");
    }
    assert!(
        events.find("update_failed") < events.find("telemetry_rejected"),
        "newest first"
    );
    assert_escaped(
        events,
        &format!("update failed (rollout {rollout_id}): {detail}"),
        "the failure's summary",
    );
    assert_escaped(events, log_tail, "the failure's log tail");
    assert_escaped(events, "<b>bad</b>", "the refused metric name");
    assert!(
        !html.contains("<b>") && !html.contains("<img src=x"),
        "no markup from device data reaches the page"
    );
    assert!(!html.contains("No updates yet") && !html.contains("No events yet"));
}

/// How many of the device's alerts the API lists in `state`.
async fn alert_count(app: &TestApp, admin: &str, id: &str, state: &str) -> usize {
    let body: Value = app
        .get(
            admin,
            &format!("/api/v1/alerts?device_id={id}&state={state}"),
        )
        .await
        .json()
        .await
        .expect("alerts");
    body["items"].as_array().map_or(0, Vec::len)
}

/// The alert of a `series` answer fired by the rule `name`.
fn alert_of<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| a["rule_name"] == name)
        .unwrap_or_else(|| panic!("an alert of {name} in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_alerts_are_in_its_series_and_on_its_page_and_not_another_devices() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let hot = app.enrolled_device(&admin).await;
    let cold = app.enrolled_device(&admin).await;
    let password = operator_with_password(&app, "alma", "viewer").await;
    let (client, _) = sign_in(&app, "alma", &password).await;
    let page = format!("/devices/{}", hot.id);

    let (html, _) = page_csrf(&app, &client, &page).await;
    let section = part(&html, "device-alerts", "section");
    assert!(
        section.contains("id=\"device-alerts\" data-live=\"device\""),
        "the alerts are refreshed live: {section}"
    );
    assert!(section.contains("No alerts: rules are under"), "{section}");
    assert!(section.contains("data-alerts-key=\"0-0\""), "{section}");
    assert_eq!(
        series(&client, &app, &hot.id, "1h").await["alerts"],
        json!([])
    );

    let hot_rule = "Hot <b>board</b> & \"co\"";
    for body in [
        json!({"name": hot_rule, "metric": "temp_c", "condition": {"op": ">", "value": 80},
               "for_seconds": 0, "severity": "critical"}),
        json!({"name": "busy", "metric": "cpu_pct", "condition": {"op": ">", "value": 90},
               "for_seconds": 0, "severity": "info"}),
        json!({"name": "frozen", "metric": "temp_c", "condition": {"op": "<", "value": 0},
               "for_seconds": 0, "severity": "warning"}),
    ] {
        let res = app.post_json(&admin, "/api/v1/alert-rules", &body).await;
        assert_eq!(res.status(), 201, "{body}");
    }

    // The hot device: temp_c fires and keeps firing; cpu_pct fires and resolves.
    let hot_mqtt = connect(&app, &hot).await;
    let sent_at = now_ms() - 2_000;
    publish(
        &hot_mqtt,
        &hot,
        "telemetry",
        &json!({"epoch": "e1", "versions": {}, "seq": 1, "ts": sent_at,
                "metrics": {"temp_c": 85.5, "cpu_pct": 95.0}}),
    )
    .await;
    let fired = wait_until(Duration::from_secs(15), || async {
        alert_count(&app, &admin, &hot.id, "firing").await == 2
    })
    .await;
    assert!(fired, "both rules fire on the hot device");
    publish(
        &hot_mqtt,
        &hot,
        "telemetry",
        &json!({"epoch": "e1", "versions": {}, "seq": 2, "ts": now_ms(),
                "metrics": {"cpu_pct": 10.0}}),
    )
    .await;
    // The cold device fires a rule of its own.
    let cold_mqtt = connect(&app, &cold).await;
    publish(
        &cold_mqtt,
        &cold,
        "telemetry",
        &json!({"epoch": "e1", "versions": {}, "seq": 1, "ts": now_ms(),
                "metrics": {"temp_c": -3.0}}),
    )
    .await;
    let settled = wait_until(Duration::from_secs(15), || async {
        alert_count(&app, &admin, &hot.id, "firing").await == 1
            && alert_count(&app, &admin, &hot.id, "resolved").await == 1
            && alert_count(&app, &admin, &cold.id, "firing").await == 1
    })
    .await;
    assert!(
        settled,
        "cpu_pct resolves on the hot device, frozen fires on the cold one"
    );

    // The series answer: the two alerts of the hot device, with their times.
    let body = series(&client, &app, &hot.id, "1h").await;
    assert_eq!(
        metrics(&body),
        ["cpu_pct", "temp_c"],
        "the series are as before"
    );
    for key in ["range", "from", "to", "omitted"] {
        assert!(body.get(key).is_some(), "{key} is still answered: {body}");
    }
    assert_eq!(body["alerts"].as_array().map(Vec::len), Some(2), "{body}");
    let temp = alert_of(&body, hot_rule);
    let want = json!({"metric": "temp_c", "rule_name": hot_rule, "severity": "critical",
                      "started_at": sent_at, "fired_at": sent_at, "resolved_at": null,
                      "state": "firing"});
    assert_eq!(
        temp, &want,
        "a rule of for_seconds 0 fires at the reading's time"
    );
    let busy = alert_of(&body, "busy");
    assert_eq!(
        (
            &busy["metric"],
            &busy["severity"],
            &busy["state"],
            &busy["fired_at"]
        ),
        (
            &json!("cpu_pct"),
            &json!("info"),
            &json!("resolved"),
            &json!(sent_at)
        )
    );
    let resolved_at = busy["resolved_at"].as_i64().expect("resolved_at");
    assert!(resolved_at >= sent_at && resolved_at <= now_ms(), "{busy}");
    let cold_body = series(&client, &app, &cold.id, "24h").await;
    let names: Vec<&Value> = cold_body["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| &a["rule_name"])
        .collect();
    assert_eq!(
        names,
        [&json!("frozen")],
        "only the cold device's own alert"
    );

    // Alerts holding at some time in the window, and no others.
    let (store, hot_id) = (&app.store, hot.id.as_str());
    let overlapping = |from: i64, to: i64| async move {
        drover_server::alerts::overlapping(store, hot_id, from, to)
            .await
            .expect("overlapping")
            .into_iter()
            .map(|a| a.rule_name)
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert!(
        overlapping(sent_at - HOUR, sent_at).await.is_empty(),
        "a window ending before they began"
    );
    assert_eq!(
        overlapping(sent_at - HOUR, sent_at + 1).await,
        ["busy".to_string(), hot_rule.to_string()].into(),
        "a window holding their start"
    );
    assert_eq!(
        overlapping(resolved_at + 1, resolved_at + HOUR).await,
        [hot_rule.to_string()].into(),
        "after busy resolved only the firing one holds"
    );

    // The page: firing first, then resolved, every field escaped.
    let (html, _) = page_csrf(&app, &client, &page).await;
    let section = part(&html, "device-alerts", "section");
    assert!(
        !section.contains("No alerts") && !section.contains("data-alerts-key=\"0-0\""),
        "the key the charts watch moved: {section}"
    );
    let table = part(&html, "device-alert-list", "table");
    assert_escaped(table, hot_rule, "the rule name");
    assert_escaped(table, "temp_c > 80 for 0 s", "the condition");
    assert_escaped(
        table,
        "cpu_pct > 90 for 0 s",
        "the resolved one's condition",
    );
    for text in ["critical", "85.5", "firing", "busy", "info"] {
        assert!(table.contains(text), "{text} in {table}");
    }
    assert!(!table.contains("<b>board"), "markup stays text");
    assert!(
        !table.contains("frozen"),
        "another device's alert is not listed"
    );
    let firing_row = table.find("85.5").expect("the firing alert");
    let resolved_row = table.find("busy").expect("the resolved alert");
    assert!(firing_row < resolved_row, "firing alerts first");
    let (html, _) = page_csrf(&app, &client, &format!("/devices/{}", cold.id)).await;
    let table = part(&html, "device-alert-list", "table");
    assert!(
        table.contains("frozen") && table.contains("warning"),
        "{table}"
    );
    assert!(
        !table.contains("busy") && !table.contains("board"),
        "{table}"
    );
}
