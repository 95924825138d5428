//! Telemetry from devices to the store and back out through the API:
//! batching, de-duplication, refusals that do not stop good readings,
//! rollups, health, and the real agent's intake.

use std::time::Duration;

use drover_tests::{EnrolledDevice, TestApp, agent, mqtt_connect, spawn_app, wait_until};
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

async fn points(app: &TestApp, admin: &str, device: &str, query: &str) -> Value {
    let res = app
        .get(
            admin,
            &format!("/api/v1/devices/{device}/telemetry?{query}"),
        )
        .await;
    assert_eq!(res.status(), 200);
    res.json().await.expect("json")
}

async fn count(app: &TestApp, admin: &str, device: &str, metric: &str) -> usize {
    points(app, admin, device, &format!("metric={metric}&from=0")).await["points"]
        .as_array()
        .map_or(0, Vec::len)
}

/// A server, its admin's token, and an enrolled device connected over MQTT.
async fn app_with_device() -> (TestApp, String, EnrolledDevice, AsyncClient) {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    let (client, mut eventloop) = mqtt_connect(app.mqtt_options(&d.id, &d))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    (app, admin, d, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_are_stored_once_and_bad_ones_are_refused_without_stopping_the_rest() {
    let (app, admin, d, client) = app_with_device().await;
    let t0 = now_ms() - 10 * 60_000;
    let batch: Vec<Value> = (1..=100)
        .map(|i| json!({"seq": i, "ts": t0 + i * 1000, "metrics": {"temp_c": 40.0 + i as f64 / 10.0, "cpu_pct": 5.0}}))
        .collect();
    let message =
        json!({"epoch": "a1b2", "versions": {"model": "1.2.0"}, "batch": batch}).to_string();
    // The same batch twice (a QoS 1 redelivery or a spool replay), garbage in between.
    client
        .publish(
            d.topic("telemetry"),
            QoS::AtLeastOnce,
            false,
            message.clone(),
        )
        .await
        .expect("publish");
    client
        .publish(d.topic("telemetry"), QoS::AtLeastOnce, false, "{not json")
        .await
        .expect("publish");
    let bad = json!({"epoch": "a1b2", "seq": 500, "ts": now_ms() + 3 * 86_400_000, "metrics": {"temp_c": 1.0}}).to_string();
    client
        .publish(d.topic("telemetry"), QoS::AtLeastOnce, false, bad)
        .await
        .expect("publish");
    let too_many: serde_json::Map<String, Value> =
        (0..70).map(|i| (format!("m{i}"), json!(1.0))).collect();
    let bad = json!({"epoch": "a1b2", "seq": 501, "ts": now_ms(), "metrics": too_many}).to_string();
    client
        .publish(d.topic("telemetry"), QoS::AtLeastOnce, false, bad)
        .await
        .expect("publish");
    client
        .publish(d.topic("telemetry"), QoS::AtLeastOnce, false, message)
        .await
        .expect("publish");
    let more =
        json!({"epoch": "a1b2", "seq": 101, "ts": t0 + 101_000, "metrics": {"temp_c": 50.0}})
            .to_string();
    client
        .publish(d.topic("telemetry"), QoS::AtLeastOnce, false, more)
        .await
        .expect("publish");

    let all = wait_until(Duration::from_secs(20), || async {
        count(&app, &admin, &d.id, "temp_c").await == 101
    })
    .await;
    assert!(
        all,
        "101 readings, each stored once: {}",
        count(&app, &admin, &d.id, "temp_c").await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&app, &admin, &d.id, "temp_c").await,
        101,
        "the replay stored nothing twice"
    );
    let series = points(&app, &admin, &d.id, "metric=temp_c&from=0").await;
    assert_eq!(series["points"][0]["ts"], t0 + 1000, "oldest first");
    assert_eq!(series["points"][100]["value"], 50.0);

    let rolled = points(
        &app,
        &admin,
        &d.id,
        &format!("metric=temp_c&from={}&step=5m", t0 - 600_000),
    )
    .await;
    let buckets = rolled["points"].as_array().expect("buckets");
    let total: i64 = buckets
        .iter()
        .map(|b| b["count"].as_i64().expect("count"))
        .sum();
    assert_eq!(total, 101, "rollups count every reading once");
    assert_eq!(rolled["step"], 300);
    let max = buckets
        .iter()
        .map(|b| b["max"].as_f64().expect("max"))
        .fold(f64::MIN, f64::max);
    assert_eq!(max, 50.0);

    let events: Value = app
        .get(&admin, &format!("/api/v1/devices/{}/events", d.id))
        .await
        .json()
        .await
        .expect("json");
    let details: Vec<String> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["detail"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        details
            .iter()
            .any(|t| t.contains("not a telemetry message")),
        "{details:?}"
    );
    assert!(
        details.iter().any(|t| t.contains("a day ahead")),
        "{details:?}"
    );
    assert!(
        details.iter().any(|t| t.contains("70 metrics")),
        "{details:?}"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("drover_telemetry_readings_stored_total 101"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drover_telemetry_duplicates_total 100"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drover_telemetry_messages_total 6"),
        "every telemetry message taken is counted, refused ones too: {metrics}"
    );
    assert!(
        metrics.contains("drover_telemetry_rejected_total{reason=\"invalid_json\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_telemetry_api_names_bad_parameters() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    for (query, field) in [
        ("", "metric"),
        ("metric=x&from=yesterday", "from"),
        ("metric=x&from=2000&to=1000", "from"),
        ("metric=x&step=90s", "step"),
        ("metric=x&step=soon", "step"),
    ] {
        let body = drover_tests::problem(
            app.get(
                &admin,
                &format!("/api/v1/devices/{}/telemetry?{query}", d.id),
            )
            .await,
            400,
        )
        .await;
        assert_eq!(body["field"], field, "{query}");
    }
    drover_tests::problem(
        app.get(&admin, "/api/v1/devices/nope/telemetry?metric=x")
            .await,
        404,
    )
    .await;
    drover_tests::problem(
        app.get(&admin, &format!("/api/v1/devices/{}/health", d.id))
            .await,
        404,
    )
    .await;
    let empty = points(&app, &admin, &d.id, "metric=never_sent").await;
    assert_eq!(empty["points"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_carries_readings_from_its_intake_to_the_store_and_reports_health() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let token = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let state = app.scratch().join("agent");
    let out = agent(&state)
        .args([
            "enroll",
            "--server",
            &app.device_base,
            "--token",
            token["token"].as_str().expect("t"),
            "--ca-hash",
            &app.ca_hash,
        ])
        .output()
        .await
        .expect("enroll");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = std::fs::read_to_string(state.join("agent.toml")).expect("agent.toml");
    std::fs::write(
        state.join("agent.toml"),
        toml.replace("heartbeat_s = 30", "heartbeat_s = 1"),
    )
    .expect("write");
    let status: Value = serde_json::from_slice(
        &agent(&state)
            .args(["status", "--json"])
            .output()
            .await
            .expect("status")
            .stdout,
    )
    .expect("json");
    let id = status["device_id"].as_str().expect("id").to_string();
    let mut daemon = agent(&state).arg("run").spawn().expect("run");
    let sock = state.join("intake.sock");
    assert!(
        wait_until(Duration::from_secs(10), || async { sock.exists() }).await,
        "the intake socket appears"
    );
    for i in 0..5 {
        let out = agent(&state)
            .args(["send", &format!("temp_c={}", 40 + i), "inference_ms=12.5"])
            .output()
            .await
            .expect("send");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stored = wait_until(Duration::from_secs(20), || async {
        count(&app, &admin, &id, "temp_c").await == 5
    })
    .await;
    assert!(
        stored,
        "five readings arrived: {}",
        count(&app, &admin, &id, "inference_ms").await
    );
    let healthy = wait_until(Duration::from_secs(10), || async {
        app.get(&admin, &format!("/api/v1/devices/{id}/health"))
            .await
            .status()
            == 200
    })
    .await;
    assert!(healthy, "a health report arrived");
    let h: Value = app
        .get(&admin, &format!("/api/v1/devices/{id}/health"))
        .await
        .json()
        .await
        .expect("json");
    assert!(
        h["report"]["mem_total"].as_u64().is_some_and(|m| m > 0),
        "{h}"
    );
    // Presence is written by its own task, in arrival order but not before the readings.
    let online = wait_until(Duration::from_secs(10), || async {
        app.device(&admin, &id).await["online"] == true
    })
    .await;
    assert!(
        online,
        "the device is online: {}",
        app.device(&admin, &id).await
    );
    let _ = daemon.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_raw_points_and_keeps_rollups() {
    let (app, admin, d, client) = app_with_device().await;
    let day = 86_400_000;
    let old = now_ms() - 10 * day;
    let recent = now_ms() - day;
    let message = json!({"epoch": "ff", "versions": {}, "batch": [
        {"seq": 1, "ts": old, "metrics": {"temp_c": 30.0}},
        {"seq": 2, "ts": old + 1000, "metrics": {"temp_c": 31.0}},
        {"seq": 3, "ts": recent, "metrics": {"temp_c": 40.0}},
    ]})
    .to_string();
    client
        .publish(d.topic("telemetry"), QoS::AtLeastOnce, false, message)
        .await
        .expect("publish");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            count(&app, &admin, &d.id, "temp_c").await == 3
        })
        .await
    );

    let store = drover_server::store::Store::connect(&app.settings.database_url)
        .await
        .expect("store");
    let removed = drover_server::telemetry::retention::run_once(
        &store,
        drover_server::telemetry::retention::Retention {
            raw: Duration::from_secs(7 * 86_400),
            rollups: Duration::from_secs(365 * 86_400),
            deliveries: Duration::from_secs(30 * 86_400),
        },
        now_ms(),
    )
    .await
    .expect("retention");
    store.close().await;
    assert_eq!((removed.readings, removed.seen, removed.rollups), (2, 2, 0));
    let raw = points(&app, &admin, &d.id, "metric=temp_c&from=0").await;
    assert_eq!(
        raw["points"].as_array().expect("points").len(),
        1,
        "only the recent raw point is left"
    );
    let rolled = points(
        &app,
        &admin,
        &d.id,
        &format!("metric=temp_c&from={}&step=1h", old - day),
    )
    .await;
    let total: i64 = rolled["points"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["count"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(total, 3, "rollups outlive raw points");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_changes_are_events_and_silent_devices_go_offline() {
    let (app, admin, d, client) = app_with_device().await;
    client
        .publish(
            d.topic("state"),
            QoS::AtLeastOnce,
            true,
            r#"{"online":true,"ts":1000}"#,
        )
        .await
        .expect("publish");
    // A last will from an older connection, delivered late, is stale.
    client
        .publish(
            d.topic("state"),
            QoS::AtLeastOnce,
            true,
            r#"{"online":false,"ts":500}"#,
        )
        .await
        .expect("publish");
    let online = wait_until(Duration::from_secs(10), || async {
        let v: Value = app.device(&admin, &d.id).await;
        v["online"] == true
    })
    .await;
    assert!(online);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v: Value = app.device(&admin, &d.id).await;
    assert_eq!(v["online"], true, "the stale will changed nothing");
    // Ninety seconds of silence later (the clock passed in), the device is offline.
    let store = drover_server::store::Store::connect(&app.settings.database_url)
        .await
        .expect("store");
    let gone = drover_server::telemetry::retention::mark_silent_offline(
        &store,
        Duration::from_secs(90),
        now_ms() + 91_000,
    )
    .await
    .expect("presence");
    store.close().await;
    assert_eq!(gone, vec![d.id.clone()]);
    let v: Value = app.device(&admin, &d.id).await;
    assert_eq!(v["online"], false);
    // Its next message brings it back.
    client
        .publish(d.topic("health"), QoS::AtLeastOnce, false, json!({"ts": now_ms(), "uptime_s": 5, "cpu_pct": 1.0, "mem_used": 1, "mem_total": 2, "disk_free": 3, "installed": [], "spool_depth": 0, "spool_dropped": 0, "update_state": null}).to_string())
        .await
        .expect("publish");
    let back = wait_until(Duration::from_secs(10), || async {
        let v: Value = app.device(&admin, &d.id).await;
        v["online"] == true
    })
    .await;
    assert!(back, "heard from again");
    let events: Value = app
        .get(&admin, &format!("/api/v1/devices/{}/events", d.id))
        .await
        .json()
        .await
        .expect("json");
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, vec!["online", "offline", "online"], "newest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubacked_reading_is_already_stored() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    let (client, mut eventloop) = mqtt_connect(app.mqtt_options(&d.id, &d))
        .await
        .expect("connects");
    let t0 = now_ms() - 60_000;
    let d_topic = d.topic("telemetry");
    let messages = 200;
    // Publish from a task: the client's request queue is small and only
    // drains while the event loop below is polled.
    let publisher = tokio::spawn(async move {
        for m in 0..messages {
            let batch: Vec<Value> = (0..10)
                .map(|i| {
                    let seq = m * 10 + i + 1;
                    json!({"seq": seq, "ts": t0 + seq, "metrics": {"load": seq as f64}})
                })
                .collect();
            client
                .publish(
                    d_topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    json!({"epoch": "c0ffee", "batch": batch}).to_string(),
                )
                .await
                .expect("publish");
        }
        client
    });
    let mut acked = 0;
    while acked < messages {
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("after {acked} acknowledgements: {other:?}"),
        }
    }
    let _client = publisher.await.expect("publisher");
    // No waiting: the device dropped these from its spool on PUBACK.
    let stored = count(&app, &admin, &d.id, "load").await;
    assert_eq!(stored, 2000, "every acknowledged reading is stored by then");
}

/// Points stored a row per metric, before migration 0020, come through it as one
/// row per reading with every value exactly as stored, and are read back with the
/// versions their device ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_stored_a_row_per_metric_are_kept_exactly_as_one_row_per_reading() {
    use drover_server::on_store;
    use drover_server::store::Store;
    use drover_server::telemetry::{Catalog, query};

    let dir = tempfile::tempdir().expect("tempdir");
    let db = drover_tests::TestDb::new(dir.path()).await;
    let store = Store::connect(&db.url).await.expect("store");
    on_store!(&store, pool => match db.backend() {
        "postgres" => sqlx::migrate!("../migrations/postgres").run_to(19, pool).await,
        _ => sqlx::migrate!("../migrations/sqlite").run_to(19, pool).await,
    })
    .expect("the migrations before 0020");

    // SQLite's migration writes values through its quote(), which keeps every
    // double from about 1e-80 to 1e100 exactly (beyond, the last digit may move).
    let awkward = [0.1 + 0.2, -2.5e-60, 7.1e99, 123_456_789.123_456_79, 40.0];
    on_store!(&store, pool => {
        // Ids as the store assigns them (PostgreSQL's are GENERATED ALWAYS).
        let mut ids = Vec::new();
        for (sql, key) in [
            ("INSERT INTO metric_names (name) VALUES ($1) RETURNING id", "temp_c"),
            ("INSERT INTO metric_names (name) VALUES ($1) RETURNING id", "cpu.pct"),
            ("INSERT INTO version_sets (versions) VALUES ($1) RETURNING id", r#"{"bundle":"1.0.0"}"#),
            ("INSERT INTO version_sets (versions) VALUES ($1) RETURNING id", r#"{"bundle":"1.1.0"}"#),
        ] {
            let id: i64 = sqlx::query_scalar(sql).bind(key).fetch_one(pool).await.expect("catalog");
            ids.push(id);
        }
        let [temp, cpu, v1, v2] = ids[..] else { unreachable!("four ids") };
        // d1: three readings, the last two under 1.1.0; d2: one reading.
        let points: [(&str, i64, i64, f64, i64); 6] = [
            ("d1", temp, 1_000, awkward[0], v1),
            ("d1", cpu, 1_000, awkward[4], v1),
            ("d1", temp, 2_000, awkward[1], v2),
            ("d1", temp, 3_000, awkward[2], v2),
            ("d1", cpu, 3_000, awkward[3], v2),
            ("d2", temp, 1_000, 21.5, v1),
        ];
        for (device, metric, ts, value, vset) in points {
            sqlx::query("INSERT INTO telemetry_points (device_id, metric_id, ts, value, version_set_id)
                         VALUES ($1, $2, $3, $4, $5)")
                .bind(device).bind(metric).bind(ts).bind(value).bind(vset)
                .execute(pool).await.expect("point");
        }
        sqlx::query("INSERT INTO telemetry_latest (device_id, metric_id, ts, value)
                     VALUES ('d1', $1, 3000, $2), ('d1', $3, 3000, $4)")
            .bind(temp).bind(awkward[2]).bind(cpu).bind(awkward[3]).execute(pool).await.expect("latest");
    });

    store.migrate().await.expect("migration 0020");

    let rows: i64 =
        on_store!(&store, pool => sqlx::query_scalar("SELECT COUNT(*) FROM telemetry_readings")
        .fetch_one(pool).await)
        .expect("count");
    assert_eq!(rows, 4, "one row per (device, ts, version set)");
    let old_table = on_store!(&store, pool => sqlx::query("SELECT 1 FROM telemetry_points")
        .fetch_all(pool).await.map(|r| r.len()));
    assert!(old_table.is_err(), "the per-metric table is gone");

    let catalog = Catalog::default();
    let series = |metric: &'static str, device: &'static str| {
        let (store, catalog) = (&store, &catalog);
        async move {
            query::raw(store, catalog, device, metric, 0, 10_000)
                .await
                .expect("raw")
                .into_iter()
                .map(|p| (p.ts, p.value))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        series("temp_c", "d1").await,
        vec![
            (1_000, awkward[0]),
            (2_000, awkward[1]),
            (3_000, awkward[2])
        ]
    );
    assert_eq!(
        series("cpu.pct", "d1").await,
        vec![(1_000, awkward[4]), (3_000, awkward[3])]
    );
    assert_eq!(series("temp_c", "d2").await, vec![(1_000, 21.5)]);
    assert_eq!(series("cpu.pct", "d2").await, vec![]);
    assert_eq!(series("nothing", "d1").await, vec![]);

    let latest = query::latest(&store, "d1").await.expect("latest");
    let seen: Vec<(&str, f64, Option<&str>)> = latest
        .iter()
        .map(|l| (l.metric.as_str(), l.value, l.versions.as_deref()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("cpu.pct", awkward[3], Some(r#"{"bundle":"1.1.0"}"#)),
            ("temp_c", awkward[2], Some(r#"{"bundle":"1.1.0"}"#)),
        ]
    );
    store.close().await;
}

/// Every double a device sends comes back out of the API as the same double,
/// the extremes included, and a metric missing from a reading is no point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_come_back_exactly_as_sent() {
    let (app, admin, d, client) = app_with_device().await;
    let sent = [
        0.1 + 0.2,
        5e-324,
        -2.5e-310,
        1e-300,
        -1.797_693_134_862_315_7e308,
        1e300,
        123_456_789.123_456_79,
        40.0,
    ];
    let t0 = now_ms() - 60_000;
    let batch: Vec<Value> = sent
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut metrics = json!({"x": v});
            if i % 2 == 0 {
                metrics["even"] = json!(i);
            }
            json!({"seq": i + 1, "ts": t0 + i as i64, "metrics": metrics})
        })
        .collect();
    let message = json!({"epoch": "e1", "versions": {}, "batch": batch}).to_string();
    client
        .publish(d.topic("telemetry"), QoS::AtLeastOnce, false, message)
        .await
        .expect("publish");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            count(&app, &admin, &d.id, "x").await == sent.len()
        })
        .await
    );
    // One field of every point of a series, as the API answers it.
    let field = |metric: &'static str, name: &'static str| {
        let (app, admin, device) = (&app, &admin, &d.id);
        async move {
            let answer = points(app, admin, device, &format!("metric={metric}&from=0")).await;
            answer["points"]
                .as_array()
                .expect("points")
                .iter()
                .map(|p| p[name].clone())
                .collect::<Vec<Value>>()
        }
    };
    assert_eq!(field("x", "value").await, sent.map(|v| json!(v)));
    assert_eq!(
        field("even", "ts").await,
        [t0, t0 + 2, t0 + 4, t0 + 6].map(|t| json!(t)),
        "only the readings that had it"
    );
}
