//! The server with Mosquitto as its external broker, configured from
//! deploy/mosquitto: device telemetry reaches the store through the broker's
//! ACLs, a device cannot publish for another, and revocation ends an open
//! session (session takeover) and refuses reconnects (the server's CRL).

use std::time::Duration;

use drover_tests::{mqtt_connect, spawn_app_on_mosquitto, wait_until};
use rumqttc::{Event, Packet, QoS};
use serde_json::{Value, json};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

async fn ended_within(mut eventloop: rumqttc::EventLoop, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Disconnect))) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_reaches_the_store_through_mosquitto_and_forgery_does_not() {
    let app = spawn_app_on_mosquitto().await;
    let admin = app.admin_token().await;
    let a = app.enrolled_device(&admin).await;
    let b = app.enrolled_device(&admin).await;
    let (client, mut eventloop) = mqtt_connect(app.mqtt_options(&a.id, &a))
        .await
        .expect("a connects to mosquitto");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let reading =
        json!({"epoch": "e1", "seq": 1, "ts": now_ms(), "metrics": {"temp_c": 41.0}}).to_string();
    // The server's subscription may still be arriving: publish until it is stored.
    let stored = wait_until(Duration::from_secs(20), || async {
        client
            .publish(
                a.topic("telemetry"),
                QoS::AtLeastOnce,
                false,
                reading.clone(),
            )
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let v: Value = app
            .get(
                &admin,
                &format!("/api/v1/devices/{}/telemetry?metric=temp_c&from=0", a.id),
            )
            .await
            .json()
            .await
            .expect("json");
        v["points"].as_array().is_some_and(|p| p.len() == 1)
    })
    .await;
    assert!(
        stored,
        "a's reading is stored once, however often it was sent"
    );

    // a publishing under b's prefix: Mosquitto denies it and drops a's connection.
    let (forger, eventloop) = mqtt_connect(app.mqtt_options(&a.id, &a))
        .await
        .expect("connects");
    let forged =
        json!({"epoch": "e1", "seq": 9, "ts": now_ms(), "metrics": {"temp_c": 99.0}}).to_string();
    forger
        .publish(b.topic("telemetry"), QoS::AtLeastOnce, false, forged)
        .await
        .expect("queue");
    assert!(
        ended_within(eventloop, Duration::from_secs(5)).await,
        "the broker drops the forger"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v: Value = app
        .get(
            &admin,
            &format!("/api/v1/devices/{}/telemetry?metric=temp_c&from=0", b.id),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["points"], json!([]), "nothing reached the server as b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_devices_mosquitto_session_ends_and_it_cannot_return() {
    let app = spawn_app_on_mosquitto().await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    let (_client, eventloop) = mqtt_connect(app.mqtt_options(&d.id, &d))
        .await
        .expect("connects");
    let watcher = tokio::spawn(ended_within(eventloop, Duration::from_secs(30)));
    let res = app
        .post_json(
            &admin,
            &format!("/api/v1/devices/{}/revoke", d.id),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        watcher.await.expect("join"),
        "the open session was taken over and closed"
    );
    let refused = wait_until(Duration::from_secs(10), || async {
        mqtt_connect(app.mqtt_options(&d.id, &d)).await.is_err()
    })
    .await;
    assert!(refused, "the reloaded CRL refuses the revoked certificate");
    let crl = std::fs::read_to_string(app.data_dir().join("pki/crl.pem")).expect("crl");
    assert!(crl.contains("BEGIN X509 CRL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_devices_client_id_cannot_take_its_session_and_a_foreign_ca_is_refused() {
    let app = spawn_app_on_mosquitto().await;
    let admin = app.admin_token().await;
    let a = app.enrolled_device(&admin).await;
    let b = app.enrolled_device(&admin).await;
    let (_b_client, b_loop) = mqtt_connect(app.mqtt_options(&b.id, &b))
        .await
        .expect("b connects");
    let b_watch = tokio::spawn(ended_within(b_loop, Duration::from_secs(4)));
    // a presents its own certificate with b's client id: the broker forces the
    // client id to a's certificate, so b's session is untouched.
    let (_a_client, a_loop) = mqtt_connect(app.mqtt_options(&b.id, &a))
        .await
        .expect("a connects as itself");
    let a_pump = tokio::spawn(async move {
        let mut a_loop = a_loop;
        while a_loop.poll().await.is_ok() {}
    });
    assert!(
        !b_watch.await.expect("join"),
        "b's session was not taken over"
    );
    a_pump.abort();
    let log = app.broker.as_ref().expect("broker").log();
    assert!(
        !log.contains(&format!("Client {} already connected", b.id)),
        "no takeover in the broker log"
    );

    let other = drover_tests::spawn_app().await;
    let other_admin = other.admin_token().await;
    let mut foreign = other.enrolled_device(&other_admin).await;
    foreign.ca_pem = app.ca_pem.clone();
    assert!(
        mqtt_connect(app.mqtt_options(&foreign.id, &foreign))
            .await
            .is_err(),
        "another CA's certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_keeps_commands_private_and_bad_clients_delay_nobody() {
    let app = spawn_app_on_mosquitto().await;
    let admin = app.admin_token().await;
    let a = app.enrolled_device(&admin).await;
    let b = app.enrolled_device(&admin).await;
    let port = app.mqtt_port.expect("mosquitto's device port");

    // Ten clients open TCP and never start TLS.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        stalled.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("tcp"),
        );
    }
    let started = tokio::time::Instant::now();
    let (client, mut eventloop) = mqtt_connect(app.mqtt_options(&a.id, &a))
        .await
        .expect("a connects");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not delayed by stalled clients: {:?}",
        started.elapsed()
    );
    // a asks for b's commands and its own; only its own may reach it.
    client
        .subscribe(b.topic("commands"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    client
        .subscribe(a.topic("commands"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let _ = seen_tx.send(p.topic);
            }
        }
    });

    // No client certificate, and garbage after a good handshake: each closes only itself.
    let mut options = rumqttc::MqttOptions::new(b.id.clone(), "127.0.0.1", port);
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca: app.ca_pem.as_bytes().to_vec(),
            alpn: None,
            client_auth: None,
        },
    ));
    assert!(
        mqtt_connect(options).await.is_err(),
        "no client certificate"
    );
    let mut garbage = crate::mqtt::tls_connect(&app, &b, port).await;
    tokio::io::AsyncWriteExt::write_all(&mut garbage, &[0xff; 64])
        .await
        .expect("write");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut garbage, &mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the garbage connection is closed: {read:?}"
    );

    // Commands for both: a, still connected, receives only its own.
    let mut got_own = false;
    for _ in 0..40 {
        for id in [&b.id, &a.id] {
            app.mqtt
                .send_command(id, &drover_proto::Command::RenewCertificate)
                .await
                .expect("send");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        while let Ok(topic) = seen.try_recv() {
            assert_eq!(topic, a.topic("commands"), "a received another's command");
            got_own = true;
        }
        if got_own {
            break;
        }
    }
    assert!(got_own, "a still receives its own commands");
    pump.abort();
    drop(stalled);
}

/// A backlog larger than ingest's queue (10,000 messages) and the link's request queue
/// together, as a server restarting under a busy fleet finds at its broker: it is stored in
/// full. Acknowledging used to wait on the link's request queue while the link waited for
/// room in ingest's queue, and the server stopped reading for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_bigger_than_every_queue_is_stored_after_a_restart() {
    let app = spawn_app_on_mosquitto().await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    let options = app.mqtt_options(&d.id, &d);
    let stopped = app.shut_down().await;

    // The server's persistent session keeps collecting while it is down.
    const BACKLOG: i64 = 16_000;
    let (client, mut eventloop) = mqtt_connect(options).await.expect("connects");
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let counted = acked.clone();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = event {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let t0 = now_ms() - 3_600_000;
    for seq in 1..=BACKLOG {
        let body = json!({"epoch": "e1", "seq": seq, "ts": t0 + seq, "metrics": {"temp_c": 20.0}});
        client
            .publish(
                d.topic("telemetry"),
                QoS::AtLeastOnce,
                false,
                body.to_string(),
            )
            .await
            .expect("publish");
    }
    let queued = wait_until(Duration::from_secs(120), || async {
        acked.load(std::sync::atomic::Ordering::Relaxed) == BACKLOG
    })
    .await;
    assert!(queued, "the broker took the whole backlog");

    let app = stopped.start_on_same_ports().await;
    let stored = || async {
        let n: i64 = drover_server::on_store!(&app.store, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM telemetry_seen WHERE device_id = $1")
            .bind(&d.id).fetch_one(pool).await)
        .expect("count");
        n
    };
    let all = wait_until(Duration::from_secs(90), || async {
        stored().await == BACKLOG
    })
    .await;
    assert!(all, "stored {} of {BACKLOG}", stored().await);
}
