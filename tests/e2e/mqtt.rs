//! MQTT for devices through the gateway of the embedded broker: topic
//! rights, client ids, certificates, revocation of open sessions, stalled
//! and malformed clients, and commands from the server.

use std::time::Duration;

use drover_proto::{Command, TopicKind};
use drover_tests::{EnrolledDevice, TestApp, mqtt_connect, spawn_app};
use rumqttc::{Event, Packet, QoS};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// Waits for the next message the server receives from `device_id`.
async fn received(
    rx: &mut tokio::sync::broadcast::Receiver<drover_server::mqtt::client::Inbound>,
    device_id: &str,
    within: Duration,
) -> Option<drover_server::mqtt::client::Inbound> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(m)) if m.device_id == device_id => return Some(m),
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            _ => return None,
        }
    }
}

/// Polls a device's event loop until it ends; answers whether it ended within `within`.
async fn closed_within(mut eventloop: rumqttc::EventLoop, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Disconnect))) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

async fn device(app: &TestApp) -> (String, EnrolledDevice) {
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    (admin, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_publishes_under_its_own_prefix_and_the_server_receives_it() {
    let app = spawn_app().await;
    let (admin, d) = device(&app).await;
    let mut inbox = app.mqtt.subscribe();
    let (client, mut eventloop) = mqtt_connect(app.mqtt_options(&d.id, &d))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
        .publish(
            d.topic("telemetry"),
            QoS::AtLeastOnce,
            false,
            r#"{"seq":1,"ts":1,"metrics":{"temp_c":40.5}}"#,
        )
        .await
        .expect("publish");
    let m = received(&mut inbox, &d.id, Duration::from_secs(10))
        .await
        .expect("the server got it");
    assert_eq!(m.kind, TopicKind::Telemetry);
    assert!(String::from_utf8_lossy(&m.payload).contains("temp_c"));

    client
        .publish(
            d.topic("state"),
            QoS::AtLeastOnce,
            true,
            r#"{"online":true,"ts":1}"#,
        )
        .await
        .expect("publish");
    let m = received(&mut inbox, &d.id, Duration::from_secs(10))
        .await
        .expect("state arrives");
    assert_eq!(m.kind, TopicKind::State);
    let online = drover_tests::wait_until(Duration::from_secs(10), || async {
        let v: Value = app.device(&admin, &d.id).await;
        v["online"] == true
    })
    .await;
    assert!(online, "presence reaches the device record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_or_subscribing_outside_the_prefix_closes_the_connection_and_reaches_nothing() {
    let app = spawn_app().await;
    let (admin, a) = device(&app).await;
    let b = app.enrolled_device(&admin).await;
    let mut inbox = app.mqtt.subscribe();

    let (client, eventloop) = mqtt_connect(app.mqtt_options(&a.id, &a))
        .await
        .expect("connects");
    client
        .publish(
            b.topic("telemetry"),
            QoS::AtLeastOnce,
            false,
            r#"{"forged":true}"#,
        )
        .await
        .expect("queue");
    assert!(
        closed_within(eventloop, Duration::from_secs(5)).await,
        "the gateway closes the connection"
    );
    assert!(
        received(&mut inbox, &b.id, Duration::from_secs(1))
            .await
            .is_none(),
        "nothing reaches the server as b"
    );

    let (client, eventloop) = mqtt_connect(app.mqtt_options(&a.id, &a))
        .await
        .expect("connects");
    client
        .subscribe(b.topic("commands"), QoS::AtLeastOnce)
        .await
        .expect("queue");
    assert!(
        closed_within(eventloop, Duration::from_secs(5)).await,
        "subscribing to b's commands is refused"
    );

    let (client, eventloop) = mqtt_connect(app.mqtt_options(&a.id, &a))
        .await
        .expect("connects");
    client
        .subscribe("drover/#", QoS::AtLeastOnce)
        .await
        .expect("queue");
    assert!(
        closed_within(eventloop, Duration::from_secs(5)).await,
        "wildcards are refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_devices_client_id_or_no_certificate_is_refused() {
    let app = spawn_app().await;
    let (admin, a) = device(&app).await;
    let b = app.enrolled_device(&admin).await;
    assert!(
        mqtt_connect(app.mqtt_options(&b.id, &a)).await.is_err(),
        "a's certificate with b's client id"
    );
    assert!(
        mqtt_connect(app.mqtt_options("", &a)).await.is_err(),
        "an empty client id"
    );

    let mut options =
        rumqttc::MqttOptions::new(a.id.clone(), "127.0.0.1", app.mqtt_port.expect("port"));
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

    let other = spawn_app().await;
    let other_admin = other.admin_token().await;
    let foreign = other.enrolled_device(&other_admin).await;
    let mut foreign_at_app = foreign.clone();
    foreign_at_app.ca_pem = app.ca_pem.clone();
    assert!(
        mqtt_connect(app.mqtt_options(&foreign.id, &foreign_at_app))
            .await
            .is_err(),
        "a certificate of another CA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_devices_open_session_ends_within_a_second_and_it_cannot_return() {
    let app = spawn_app().await;
    let (admin, d) = device(&app).await;
    let (_client, eventloop) = mqtt_connect(app.mqtt_options(&d.id, &d))
        .await
        .expect("connects");
    let watcher = tokio::spawn(closed_within(eventloop, Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    let res = app
        .post_json(
            &admin,
            &format!("/api/v1/devices/{}/revoke", d.id),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(watcher.await.expect("join"), "the session ended");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "within about a second: {:?}",
        started.elapsed()
    );
    assert!(
        mqtt_connect(app.mqtt_options(&d.id, &d)).await.is_err(),
        "and it cannot reconnect"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("drover_mqtt_refused_total{reason=\"revoked\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drover_mqtt_sessions_accepted_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_delays_nobody_and_garbage_closes_only_its_own_connection() {
    let app = spawn_app().await;
    let (_admin, d) = device(&app).await;
    let port = app.mqtt_port.expect("port");
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
    let (client, mut eventloop) = mqtt_connect(app.mqtt_options(&d.id, &d))
        .await
        .expect("connects");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not delayed: {:?}",
        started.elapsed()
    );

    // Another client completes TLS and sends garbage instead of MQTT.
    let (admin, _) = (app.admin_token().await, ());
    let e = app.enrolled_device(&admin).await;
    let tls = tls_connect(&app, &e, port).await;
    let mut tls = tls;
    tls.write_all(&[0xff; 64]).await.expect("write");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut tls, &mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the garbage connection is closed: {read:?}"
    );

    // The healthy device still works.
    let mut inbox = app.mqtt.subscribe();
    client
        .publish(d.topic("health"), QoS::AtLeastOnce, false, "{}")
        .await
        .expect("publish");
    let pump = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    assert!(
        received(&mut inbox, &d.id, Duration::from_secs(10))
            .await
            .is_some()
    );
    pump.abort();
    drop(stalled);
}

pub(crate) async fn tls_connect(
    app: &TestApp,
    d: &EnrolledDevice,
    port: u16,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(app.ca_pem.as_bytes()).expect("ca"))
        .expect("root");
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(d.cert_pem.as_bytes()).expect("cert")],
            PrivateKeyDer::from_pem_slice(d.key_pem.as_bytes()).expect("key"),
        )
        .expect("config");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp");
    connector
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sends_commands_to_a_device() {
    let app = spawn_app().await;
    let (_admin, d) = device(&app).await;
    let (client, mut eventloop) = mqtt_connect(app.mqtt_options(&d.id, &d))
        .await
        .expect("connects");
    client
        .subscribe(d.topic("commands"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let got = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {}
                Ok(Event::Incoming(Packet::Publish(p))) => return Some(p),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    });
    // Give the subscription a moment, then keep sending until it arrives.
    let mut delivered = None;
    for _ in 0..20 {
        app.mqtt
            .send_command(&d.id, &Command::RenewCertificate)
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(250)).await;
        if got.is_finished() {
            delivered = got.await.expect("join");
            break;
        }
    }
    let p = delivered.expect("the device received a command");
    assert_eq!(p.topic, d.topic("commands"));
    let cmd: Command = serde_json::from_slice(&p.payload).expect("command json");
    assert_eq!(cmd, Command::RenewCertificate);
}

/// Writes one MQTT packet to a raw connection.
async fn send_packet<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, packet: Packet) {
    let mut out = bytes::BytesMut::new();
    packet.write(&mut out, 1 << 20).expect("encode");
    w.write_all(&out).await.expect("write");
}

/// Reads one MQTT packet from a raw connection, or None when it closed.
async fn read_packet<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut bytes::BytesMut,
) -> Option<Packet> {
    loop {
        if let Ok(p) = Packet::read(buf, 1 << 20) {
            return Some(p);
        }
        match tokio::io::AsyncReadExt::read_buf(r, buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_takes_the_session_a_silent_one_leaves_its_will_and_qos_2_arrives() {
    let app = spawn_app().await;
    let (_admin, d) = device(&app).await;
    let port = app.mqtt_port.expect("port");
    let mut inbox = app.mqtt.subscribe();
    let offline = r#"{"online":false,"ts":1}"#;

    // A raw session with a one-second keep-alive and a will, then silence.
    let mut raw = tls_connect(&app, &d, port).await;
    let mut connect = rumqttc::Connect::new(d.id.clone());
    connect.keep_alive = 1;
    connect.last_will = Some(rumqttc::LastWill::new(
        d.topic("state"),
        offline,
        QoS::AtLeastOnce,
        true,
    ));
    send_packet(&mut raw, Packet::Connect(connect)).await;
    let mut buf = bytes::BytesMut::new();
    assert!(matches!(
        read_packet(&mut raw, &mut buf).await,
        Some(Packet::ConnAck(a)) if a.code == rumqttc::ConnectReturnCode::Success
    ));
    let started = tokio::time::Instant::now();
    let will = received(&mut inbox, &d.id, Duration::from_secs(5))
        .await
        .expect("the will arrives after one and a half keep-alives of silence");
    assert_eq!(will.kind, TopicKind::State);
    assert_eq!(&will.payload[..], offline.as_bytes());
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert!(read_packet(&mut raw, &mut buf).await.is_none(), "closed");

    // Two connections of one device: the newer takes over, the older's will stays unsent.
    let mut first = app.mqtt_options(&d.id, &d);
    first.set_last_will(rumqttc::LastWill::new(
        d.topic("state"),
        offline,
        QoS::AtLeastOnce,
        true,
    ));
    let (_c1, eventloop1) = mqtt_connect(first).await.expect("first connects");
    let (c2, mut eventloop2) = mqtt_connect(app.mqtt_options(&d.id, &d))
        .await
        .expect("second connects");
    assert!(
        closed_within(eventloop1, Duration::from_secs(5)).await,
        "the older connection is closed"
    );
    c2.publish(d.topic("telemetry"), QoS::ExactlyOnce, false, "{}")
        .await
        .expect("publish");
    let mut acks = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !acks.contains(&"pubcomp") {
        match tokio::time::timeout_at(deadline, eventloop2.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubRec(_)))) => acks.push("pubrec"),
            Ok(Ok(Event::Incoming(Packet::PubComp(_)))) => acks.push("pubcomp"),
            Ok(Ok(_)) => {}
            other => panic!("QoS 2 handshake did not finish: {other:?} after {acks:?}"),
        }
    }
    assert_eq!(acks, ["pubrec", "pubcomp"]);
    let m = received(&mut inbox, &d.id, Duration::from_secs(5))
        .await
        .expect("the QoS 2 message reaches the server");
    assert_eq!(
        m.kind,
        TopicKind::Telemetry,
        "nothing else (no will from the taken-over connection) came first"
    );
}
