//! Fleet metrics: a metric compared across the versions devices ran, their
//! types and their tags, as statistics over per-device means — checked
//! against figures computed here from the readings sent and the raw points
//! the API serves back; bad parameters name their field; the dashboard page
//! shows the groups with markup in tag values escaped.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_tests::{EnrolledDevice, TestApp, mqtt_connect, problem, spawn_app, wait_until};
use rumqttc::QoS;
use serde_json::{Value, json};

use crate::dashboard::{operator_with_password, sign_in};

const METRIC: &str = "inference_ms";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Enrolls a device of `device_type` with `tags` (set through the API afterwards).
async fn device(app: &TestApp, admin: &str, device_type: &str, tags: Value) -> EnrolledDevice {
    let d = app.enrolled_device_of_type(admin, device_type).await;
    let res = app
        .client
        .patch(app.url(&format!("/api/v1/devices/{}", d.id)))
        .bearer_auth(admin)
        .json(&json!({ "tags": tags }))
        .send()
        .await
        .expect("patch");
    assert_eq!(res.status(), 200);
    d
}

/// Publishes `batches` (versions map, values) as one message each, a minute
/// apart from ten minutes ago, and waits until all are stored.
async fn publish(app: &TestApp, admin: &str, d: &EnrolledDevice, batches: &[(Value, Vec<f64>)]) {
    let (client, mut eventloop) = mqtt_connect(app.mqtt_options(&d.id, d))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let start = now_ms() - 10 * 60_000;
    let mut seq = 0;
    for (i, (versions, values)) in batches.iter().enumerate() {
        let batch: Vec<Value> = values
            .iter()
            .map(|v| {
                seq += 1;
                json!({"seq": seq, "ts": start + i as i64 * 60_000 + seq, "metrics": {METRIC: v}})
            })
            .collect();
        let message = json!({"epoch": "a1", "versions": versions, "batch": batch});
        client
            .publish(
                d.topic("telemetry"),
                QoS::AtLeastOnce,
                false,
                message.to_string(),
            )
            .await
            .expect("publish");
    }
    let stored = wait_until(Duration::from_secs(20), || async {
        raw_values(app, admin, &d.id).await.len() == seq as usize
    })
    .await;
    if !stored {
        let events = app
            .get(admin, &format!("/api/v1/devices/{}/events", d.id))
            .await
            .text()
            .await
            .unwrap_or_default();
        panic!(
            "{seq} readings of {} not stored; stored: {:?}; events: {events}",
            d.id,
            raw_values(app, admin, &d.id).await
        );
    }
}

/// Sends a health report naming `bundle` at `version` installed, and waits until it is stored.
async fn report_installed(
    app: &TestApp,
    admin: &str,
    d: &EnrolledDevice,
    bundle: &str,
    version: &str,
) {
    let (client, mut eventloop) = mqtt_connect(app.mqtt_options(&d.id, d))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let report = json!({"ts": now_ms(), "uptime_s": 60, "cpu_pct": 1.0, "mem_used": 1, "mem_total": 2,
        "disk_free": 3, "installed": [{"name": bundle, "kind": "model", "version": version}],
        "spool_depth": 0, "spool_dropped": 0, "update_state": null});
    client
        .publish(
            d.topic("health"),
            QoS::AtLeastOnce,
            false,
            report.to_string(),
        )
        .await
        .expect("publish");
    let stored = wait_until(Duration::from_secs(20), || async {
        app.get(admin, &format!("/api/v1/devices/{}/health", d.id))
            .await
            .status()
            == 200
    })
    .await;
    assert!(stored, "health of {} stored", d.id);
}

/// The device's raw points of the metric, as the telemetry API serves them.
async fn raw_values(app: &TestApp, admin: &str, device: &str) -> Vec<f64> {
    let res = app
        .get(
            admin,
            &format!("/api/v1/devices/{device}/telemetry?metric={METRIC}&from=0"),
        )
        .await;
    let body: Value = res.json().await.expect("json");
    body["points"]
        .as_array()
        .map(|p| p.iter().filter_map(|p| p["value"].as_f64()).collect())
        .unwrap_or_default()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// The groups as the contract defines them, computed from per-device means
/// by key: mean of the means, nearest-rank p50 and p95, min and max.
fn expected(by_key: &[(&str, Vec<f64>)]) -> Value {
    let groups: Vec<Value> = by_key
        .iter()
        .map(|(key, means)| {
            let mut sorted = means.clone();
            sorted.sort_by(f64::total_cmp);
            let rank =
                |p: f64| sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).max(1) - 1];
            json!({
                "key": key,
                "devices": sorted.len(),
                "mean": mean(&sorted),
                "p50": rank(50.0),
                "p95": rank(95.0),
                "min": sorted[0],
                "max": sorted[sorted.len() - 1],
            })
        })
        .collect();
    Value::Array(groups)
}

/// Compares two group lists, numbers to within rounding.
fn assert_groups(actual: &Value, expected: &Value, what: &str) {
    let (a, e) = (
        actual.as_array().expect("groups"),
        expected.as_array().expect("groups"),
    );
    assert_eq!(a.len(), e.len(), "{what}: {actual} vs {expected}");
    for (a, e) in a.iter().zip(e) {
        assert_eq!(a["key"], e["key"], "{what}: {actual} vs {expected}");
        assert_eq!(a["devices"], e["devices"], "{what}: {actual} vs {expected}");
        for stat in ["mean", "p50", "p95", "min", "max"] {
            let (x, y) = (
                a[stat].as_f64().expect("number"),
                e[stat].as_f64().expect("number"),
            );
            assert!(
                (x - y).abs() <= 1e-9 * y.abs().max(1.0),
                "{what} {} {stat}: {x} vs {y}",
                e["key"]
            );
        }
    }
}

async fn fleet(app: &TestApp, token: &str, query: &str) -> Value {
    let res = app
        .get(
            token,
            &format!("/api/v1/fleet/metrics?metric={METRIC}&{query}"),
        )
        .await;
    assert_eq!(res.status(), 200, "{query}");
    res.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_types_and_tags_compare_the_means_of_their_devices() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let a = device(&app, &admin, "rpi4", json!({"site": "north"})).await;
    let b = device(&app, &admin, "rpi4", json!({"site": "south"})).await;
    let c = device(&app, &admin, "jetson", json!({})).await;
    let d = device(&app, &admin, "jetson", json!({"site": "north"})).await;
    // `a` updates the detector in the middle of the window; `c` runs none.
    let a_old = vec![10.0, 20.0];
    let a_new = vec![40.0, 50.0, 60.0];
    let b_old = vec![30.0, 30.0, 61.0];
    let c_none = vec![5.0, 7.0];
    let d_new = vec![100.0];
    let old = json!({"detector": "1.0.0", "os": "5.1.0"});
    let new = json!({"detector": "1.1.0", "os": "5.1.0"});
    publish(
        &app,
        &admin,
        &a,
        &[(old.clone(), a_old.clone()), (new.clone(), a_new.clone())],
    )
    .await;
    publish(&app, &admin, &b, &[(old.clone(), b_old.clone())]).await;
    publish(
        &app,
        &admin,
        &c,
        &[(json!({"os": "5.1.0"}), c_none.clone())],
    )
    .await;
    publish(&app, &admin, &d, &[(new.clone(), d_new.clone())]).await;

    // By version: what each device ran when it measured; `a` counts under both.
    let by_version = fleet(&app, &admin, "group_by=version:detector").await;
    assert_eq!(by_version["metric"], METRIC);
    assert_eq!(by_version["group_by"], "version:detector");
    assert_eq!(by_version["resolution"], "hour");
    assert_groups(
        &by_version["groups"],
        &expected(&[
            ("1.0.0", vec![mean(&a_old), mean(&b_old)]),
            ("1.1.0", vec![mean(&a_new), mean(&d_new)]),
            ("(none)", vec![mean(&c_none)]),
        ]),
        "by version",
    );

    // By type and tag: each device's mean over every reading, from the raw points served back.
    let mut all = BTreeMap::new();
    for dev in [&a, &b, &c, &d] {
        all.insert(
            dev.id.clone(),
            mean(&raw_values(&app, &admin, &dev.id).await),
        );
    }
    assert_eq!(all[&a.id], mean(&[a_old.clone(), a_new.clone()].concat()));
    let by_type = fleet(&app, &admin, "group_by=device_type").await;
    assert_groups(
        &by_type["groups"],
        &expected(&[
            ("jetson", vec![all[&c.id], all[&d.id]]),
            ("rpi4", vec![all[&a.id], all[&b.id]]),
        ]),
        "by type",
    );
    let by_site = fleet(&app, &admin, "group_by=tag:site").await;
    assert_groups(
        &by_site["groups"],
        &expected(&[
            ("north", vec![all[&a.id], all[&d.id]]),
            ("south", vec![all[&b.id]]),
            ("(none)", vec![all[&c.id]]),
        ]),
        "by site",
    );

    // An explicit window (RFC 3339) around the readings answers the same;
    // one that ended days before them finds nothing. Viewers may read.
    let viewer = app.user_token(&admin, "watcher", "viewer").await;
    let now = now_ms();
    let window = format!(
        "from={}&to={}",
        rfc3339(now - 2 * 3_600_000),
        rfc3339(now + 60_000)
    );
    let same = fleet(
        &app,
        &viewer,
        &format!("group_by=version:detector&{window}"),
    )
    .await;
    assert_eq!(same["groups"], by_version["groups"]);
    // A day's window reads today's daily sums less the hours after this one.
    let day = fleet(
        &app,
        &viewer,
        &format!("group_by=version:detector&from={}", now - 86_400_000),
    )
    .await;
    assert_eq!(day["resolution"], "hour");
    assert_groups(&day["groups"], &by_version["groups"], "over a day");
    let (from, to) = (
        same["from"].as_str().expect("from"),
        same["to"].as_str().expect("to"),
    );
    assert!(
        from.ends_with(":00:00Z") && to.ends_with(":00:00Z"),
        "whole hours: {from} {to}"
    );
    let before = fleet(
        &app,
        &viewer,
        &format!(
            "group_by=device_type&from={}&to={}",
            now - 20 * 86_400_000,
            now - 3 * 86_400_000
        ),
    )
    .await;
    assert_eq!(before["resolution"], "day");
    assert_eq!(before["groups"], json!([]));
}

fn rfc3339(ms: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).expect("time");
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    publish(
        &app,
        &admin,
        &d,
        &[(json!({"detector": "1.0.0"}), vec![1.0])],
    )
    .await;
    for (query, field) in [
        ("group_by=device_type", "metric"),
        ("metric=a%20b&group_by=device_type", "metric"),
        ("metric=never_sent&group_by=device_type", "metric"),
        ("metric=inference_ms", "group_by"),
        ("metric=inference_ms&group_by=model", "group_by"),
        ("metric=inference_ms&group_by=version:", "group_by"),
        ("metric=inference_ms&group_by=tag:a%20b", "group_by"),
        (
            "metric=inference_ms&group_by=device_type&from=yesterday",
            "from",
        ),
        ("metric=inference_ms&group_by=device_type&to=soon", "to"),
        (
            "metric=inference_ms&group_by=device_type&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "from",
        ),
        (
            "metric=inference_ms&group_by=device_type&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:01Z",
            "from",
        ),
    ] {
        let body = problem(
            app.get(&admin, &format!("/api/v1/fleet/metrics?{query}"))
                .await,
            400,
        )
        .await;
        assert_eq!(body["field"], field, "{query}: {body}");
    }
    // 31 days exactly is allowed.
    let res = app
        .get(
            &admin,
            "/api/v1/fleet/metrics?metric=inference_ms&group_by=device_type&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .get(app.url("/api/v1/fleet/metrics?metric=inference_ms&group_by=device_type"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 401);
    let openapi: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert!(
        openapi["paths"]["/api/v1/fleet/metrics"]["get"].is_object(),
        "documented"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_compares_groups_with_tag_values_as_text() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let raw = "<script>alert(\"site\")</script>";
    let a = device(&app, &admin, "rpi4", json!({"site": raw})).await;
    let b = device(&app, &admin, "rpi4", json!({"site": "plain"})).await;
    publish(
        &app,
        &admin,
        &a,
        &[(json!({"detector": "1.0.0"}), vec![4.0, 6.0])],
    )
    .await;
    publish(
        &app,
        &admin,
        &b,
        &[(json!({"detector": "2.0.0"}), vec![9.0])],
    )
    .await;
    report_installed(&app, &admin, &b, "detector", "2.0.0").await;

    let password = operator_with_password(&app, "looker", "viewer").await;
    let (client, res) = sign_in(&app, "looker", &password).await;
    assert_eq!(res.status(), 303);
    let overview = client
        .get(app.url("/"))
        .send()
        .await
        .expect("overview")
        .text()
        .await
        .expect("html");
    assert!(
        overview.contains("href=\"/fleet\""),
        "linked from the overview"
    );

    let res = client
        .get(app.url("/fleet?metric=inference_ms&group_by=tag%3Asite&window=24h"))
        .send()
        .await
        .expect("page");
    assert_eq!(res.status(), 200);
    let html = res.text().await.expect("html");
    assert!(!html.contains(raw), "tag value reached the page raw");
    assert!(
        html.contains("&#60;script&#62;alert(&#34;site&#34;)&#60;/script&#62;")
            || html.contains("&lt;script&gt;alert(&quot;site&quot;)&lt;/script&gt;"),
        "tag value shown as text"
    );
    assert!(html.contains("id=\"fleet-groups\""), "the table");
    assert!(
        html.contains("data-mean=\"5\""),
        "the device mean of 4 and 6"
    );
    assert!(html.contains("/static/fleet.js"), "the chart script");
    assert!(
        html.contains("<option value=\"version:detector\""),
        "bundle names offered"
    );
    assert!(
        html.contains("<option value=\"tag:site\" selected"),
        "the grouping kept"
    );
    assert!(
        html.contains("<option value=\"24h\" selected"),
        "the window kept"
    );

    // The default view groups by the first installed bundle's version, or by
    // type when no device has reported any; a bad grouping is explained.
    let res = client.get(app.url("/fleet")).send().await.expect("page");
    assert_eq!(res.status(), 200);
    let res = client
        .get(app.url("/fleet?metric=inference_ms&group_by=bogus"))
        .send()
        .await
        .expect("page");
    assert_eq!(res.status(), 400);
    assert!(res.text().await.expect("html").contains("group_by:"));
    let js = client
        .get(app.url("/static/fleet.js"))
        .send()
        .await
        .expect("asset");
    assert_eq!(js.status(), 200);
}
