//! Two server replicas on one PostgreSQL database and one Mosquitto (issue 16):
//! telemetry split through the shared subscription with nothing lost or
//! doubled, a page on either replica following readings the other ingested
//! (LISTEN/NOTIFY), one rollout engine whose crash hands the rollout to the
//! other replica within seconds, and an artifact uploaded through one replica
//! downloaded by devices through the other (a shared blob directory).
//!
//! Replicas need a shared PostgreSQL store: these tests run in the
//! PostgreSQL pass (`DROVER_TEST_DATABASE_URL`, as `.ci/run` sets it) and say
//! so and pass in the SQLite one, where one server owns its store.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_tests::*;
use rumqttc::QoS;
use serde_json::{Value, json};

use crate::dashboard::{operator_with_password, sign_in};
use crate::rollouts::{create, fleet, model, rollout, until_state};

fn on_postgres() -> bool {
    let set = std::env::var("DROVER_TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty());
    if !set {
        eprintln!(
            "replicas share a PostgreSQL store: this test runs with DROVER_TEST_DATABASE_URL \
             (the PostgreSQL pass of .ci/run)"
        );
    }
    set
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

async fn stored(app: &TestApp) -> u64 {
    app.counter("drover_telemetry_readings_stored_total").await
}

async fn duplicates(app: &TestApp) -> u64 {
    app.counter("drover_telemetry_duplicates_total").await
}

/// The timestamps of one device's readings an open `/live?device=` stream delivered.
struct Readings {
    res: reqwest::Response,
    buf: String,
    hello: bool,
    ts: BTreeMap<i64, u32>,
}

impl Readings {
    async fn open(app: &TestApp, client: &reqwest::Client, device: &str) -> Readings {
        let res = client
            .get(app.url(&format!("/live?device={device}")))
            .send()
            .await
            .expect("live");
        assert_eq!(res.status(), 200);
        let mut r = Readings {
            res,
            buf: String::new(),
            hello: false,
            ts: BTreeMap::new(),
        };
        assert!(r.read_until(|r| r.hello).await, "the stream opens");
        r
    }

    /// Reads events until `done` holds or 30 s pass; answers whether it held.
    async fn read_until(&mut self, done: impl Fn(&Readings) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.res.chunk()).await {
                Ok(Ok(Some(c))) => self.buf.push_str(&String::from_utf8_lossy(&c)),
                _ => return false,
            }
            while let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                self.hello |= event.contains("event: hello");
                let Some(data) = event.strip_prefix("event: readings\ndata: ").map(str::trim)
                else {
                    continue;
                };
                let v: Value = serde_json::from_str(data).expect("readings json");
                for p in v["points"].as_array().expect("points") {
                    *self.ts.entry(p[1].as_i64().expect("ts")).or_default() += 1;
                }
            }
        }
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_splits_between_replicas_stored_once_and_pages_on_both_see_all_of_it() {
    if !on_postgres() {
        return;
    }
    let a = spawn_app_on_mosquitto().await;
    let b = a.replica().await;
    let admin = a.admin_token().await;
    let devices = [
        a.enrolled_device(&admin).await,
        b.enrolled_device(&b.admin_token().await).await,
        a.enrolled_device(&admin).await,
    ];
    let mut clients = Vec::new();
    for d in &devices {
        let (client, mut eventloop) = mqtt_connect(a.mqtt_options(&d.id, d))
            .await
            .expect("the device connects to mosquitto");
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        clients.push(client);
    }
    let reading = |seq: i64, ts: i64| {
        json!({"epoch": "e1", "seq": seq, "ts": ts, "metrics": {"temp_c": 20.0 + seq as f64}})
            .to_string()
    };

    // Until both replicas have stored something, one of their subscriptions may still be on
    // its way; the probes are readings like any other and are counted below.
    let t0 = now_ms() - 600_000;
    let mut probes = 0i64;
    let both = wait_until(Duration::from_secs(30), || {
        probes += 1;
        let (client, topic, seq) = (&clients[0], devices[0].topic("telemetry"), probes);
        let a = &a;
        let b = &b;
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, reading(seq, t0 + seq))
                .await
                .expect("publish");
            tokio::time::sleep(Duration::from_millis(100)).await;
            stored(a).await > 0 && stored(b).await > 0
        }
    })
    .await;
    assert!(
        both,
        "both replicas store readings from the shared subscription"
    );
    let quiet = wait_until(Duration::from_secs(10), || async {
        stored(&a).await + stored(&b).await == probes as u64
    })
    .await;
    assert!(quiet, "every probe stored");
    let (a_before, b_before) = (stored(&a).await, stored(&b).await);

    // One browser session (signed in on a) watches device 1 on both replicas.
    let password = operator_with_password(&a, "watcher", "viewer").await;
    let (browser, _) = sign_in(&a, "watcher", &password).await;
    let watched = &devices[1].id;
    let mut on_a = Readings::open(&a, &browser, watched).await;
    let mut on_b = Readings::open(&b, &browser, watched).await;

    const EACH: i64 = 200;
    let t1 = now_ms() - 300_000;
    for (i, (client, d)) in clients.iter().zip(&devices).enumerate() {
        let seq0 = if i == 0 { probes } else { 0 };
        for n in 1..=EACH {
            client
                .publish(
                    d.topic("telemetry"),
                    QoS::AtLeastOnce,
                    false,
                    reading(seq0 + n, t1 + n),
                )
                .await
                .expect("publish");
        }
    }
    let flood = EACH as u64 * devices.len() as u64;
    let all = wait_until(Duration::from_secs(60), || async {
        stored(&a).await + stored(&b).await >= a_before + b_before + flood
    })
    .await;
    assert!(all, "the whole flood is stored");
    // Anything delivered twice would show now as a duplicate or an extra row.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a_flood, b_flood) = (stored(&a).await - a_before, stored(&b).await - b_before);
    assert_eq!(
        a_flood + b_flood,
        flood,
        "stored once: {a_flood} + {b_flood}"
    );
    assert!(
        a_flood > 0 && b_flood > 0,
        "the flood was split: {a_flood} on a, {b_flood} on b"
    );
    assert_eq!(
        duplicates(&a).await + duplicates(&b).await,
        0,
        "no reading reached both replicas"
    );
    let rows: i64 = drover_server::on_store!(&a.store, pool => sqlx::query_scalar(
        "SELECT COUNT(*) FROM telemetry_readings WHERE device_id IN ($1, $2, $3)")
        .bind(&devices[0].id).bind(&devices[1].id).bind(&devices[2].id)
        .fetch_one(pool).await)
    .expect("count rows");
    assert_eq!(rows, probes + flood as i64, "one row per reading sent");

    // Each page saw every reading of its device, whichever replica stored it.
    let expected: Vec<i64> = (1..=EACH).map(|n| t1 + n).collect();
    let complete = |r: &Readings| r.ts.len() >= expected.len();
    assert!(
        on_a.read_until(complete).await,
        "the page on a got {} of {EACH}",
        on_a.ts.len()
    );
    assert!(
        on_b.read_until(complete).await,
        "the page on b got {} of {EACH}",
        on_b.ts.len()
    );
    for (name, page) in [("a", &on_a), ("b", &on_b)] {
        assert_eq!(
            page.ts.keys().copied().collect::<Vec<_>>(),
            expected,
            "the page on {name} saw each reading"
        );
        assert!(
            page.ts.values().all(|&n| n == 1),
            "the page on {name} saw no reading twice"
        );
    }
}

/// The rollout lease: (epoch, holder).
async fn lease(app: &TestApp) -> Option<(i64, String)> {
    drover_server::on_store!(&app.store, pool => sqlx::query_as(
        "SELECT epoch, holder FROM engine_leases WHERE name = 'rollouts'")
        .fetch_optional(pool).await)
    .expect("read the lease")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rollout_engine_fails_over_and_the_rollout_completes_with_blobs_from_the_other() {
    if !on_postgres() {
        return;
    }
    let a = spawn_app_on_mosquitto().await;
    let led = wait_until(Duration::from_secs(10), || async {
        lease(&a).await.is_some()
    })
    .await;
    assert!(led, "the first replica leads the rollout engine");
    let b = a.replica().await;
    let (admin_a, admin_b) = (a.admin_token().await, b.admin_token().await);

    // The devices know only b: enrollment, offers, downloads and reports go through it.
    let sim = fleet(&b, &admin_b, 6, "fleet", &[]).await;
    // The artifact is uploaded through a, into the blob directory both replicas use.
    let v1 = model(&a, &admin_a, "1.0.0").await;
    let r = create(
        &a,
        &admin_a,
        json!({"name": "across replicas", "bundle_id": v1, "target": {"device_type": "rpi4"},
               "phases": [{"percent": 34, "soak_seconds": 3}, {"percent": 100}],
               "max_in_flight": 2}),
    )
    .await;
    let id = r["id"].as_str().expect("id").to_owned();
    let (epoch, holder) = lease(&a).await.expect("a lease");

    let canaries_done = wait_until(Duration::from_secs(90), || async {
        rollout(&a, &admin_a, &id).await["counts"]["succeeded"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    assert!(canaries_done, "a canary updated through b");
    assert_eq!(
        lease(&a).await,
        Some((epoch, holder.clone())),
        "while a lives, b never took the engine over"
    );
    let before = rollout(&b, &admin_b, &id).await;
    assert_ne!(before["state"], "completed", "a dies mid-rollout: {before}");

    let crashed = tokio::time::Instant::now();
    let _remains = a.crash().await;
    let took_over = wait_until(Duration::from_secs(20), || async {
        lease(&b)
            .await
            .is_some_and(|(e, h)| e > epoch && h != holder)
    })
    .await;
    let failover = crashed.elapsed();
    eprintln!("the rollout engine failed over in {failover:?}");
    assert!(took_over, "b takes the engine over");
    assert!(
        failover < Duration::from_secs(12),
        "within seconds: {failover:?}"
    );

    let done = until_state(&b, &admin_b, &id, "completed").await;
    assert_eq!(done["counts"]["succeeded"], 6, "{done}");
    let offered: Vec<(String, i64)> = drover_server::on_store!(&b.store, pool => sqlx::query_as(
        "SELECT device_id, COUNT(*) FROM device_offers WHERE rollout_id = $1 GROUP BY device_id")
        .bind(&id).fetch_all(pool).await)
    .expect("offers");
    assert_eq!(offered.len(), 6, "every device offered: {offered:?}");
    assert!(
        offered.iter().all(|(_, n)| *n == 1),
        "each device offered once across both engines: {offered:?}"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_are_judged_once_by_one_replica_and_by_the_other_after_a_crash() {
    if !on_postgres() {
        return;
    }
    let a = spawn_app_on_mosquitto().await;
    let b = a.replica().await;
    let admin = b.admin_token().await;
    let hot = a.enrolled_device(&admin).await;
    let later = a.enrolled_device(&admin).await;
    // Made through b; a judges (it started first) and must hear of the rule.
    let res = b
        .post_json(
            &admin,
            "/api/v1/alert-rules",
            &json!({"name": "hot board", "metric": "temp_c", "scope": {"device_type": "rpi4"},
                    "condition": {"op": ">", "value": 80}, "for_seconds": 1, "severity": "critical"}),
        )
        .await;
    assert_eq!(res.status(), 201);

    let send = |client: rumqttc::AsyncClient, d: EnrolledDevice, from: i64| async move {
        // Hot readings for 4 s, split between the replicas by the broker.
        for seq in from..from + 20 {
            let body =
                json!({"epoch": "e1", "seq": seq, "ts": now_ms(), "metrics": {"temp_c": 85.0}});
            client
                .publish(
                    d.topic("telemetry"),
                    QoS::AtLeastOnce,
                    false,
                    body.to_string(),
                )
                .await
                .expect("publish");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (c, mut eventloop) = mqtt_connect(a.mqtt_options(&hot.id, &hot))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    send(c, hot.clone(), 1).await;
    let fired = wait_until(Duration::from_secs(15), || async {
        !b.device_alerts(&admin, &hot.id).await.is_empty()
    })
    .await;
    assert!(fired, "the hot board fires");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list = b.device_alerts(&admin, &hot.id).await;
    assert_eq!(list.len(), 1, "one alert, not one per replica: {list:?}");

    let _remains = a.crash().await;
    let (c, mut eventloop) = mqtt_connect(b.mqtt_options(&later.id, &later))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    // a's broker session keeps its share of readings; b sees the rest, enough to judge.
    let judged = wait_until(Duration::from_secs(30), || {
        let c = c.clone();
        let later = later.clone();
        let b = &b;
        let admin = &admin;
        async move {
            send(c, later.clone(), now_ms()).await;
            !b.device_alerts(admin, &later.id).await.is_empty()
        }
    })
    .await;
    assert!(judged, "b judges once a is gone");
}
