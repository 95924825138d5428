//! A private Mosquitto for tests, configured from the shipped
//! `deploy/mosquitto/mosquitto.conf` and `acl` with only paths, the port and
//! the user changed, so the tests exercise the configuration operators
//! install. It runs as a child process on a free loopback port and only that
//! process is killed when the value is dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shipped broker configuration.
pub const CONF_TEMPLATE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/mosquitto/mosquitto.conf"
));

/// The shipped topic rights.
pub const ACL_TEMPLATE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/mosquitto/acl"
));

/// The broker's TLS material: what the server writes to `DATA_DIR/pki`.
#[derive(Debug, Clone)]
pub struct BrokerTls {
    /// The fleet CA certificate (`ca.crt`).
    pub ca_pem_path: PathBuf,
    /// The broker's server certificate (`server.crt`).
    pub cert_path: PathBuf,
    /// Its key (`server.key`).
    pub key_path: PathBuf,
    /// The CRL (`crl.pem`); it must exist before the broker starts.
    pub crl_path: PathBuf,
}

/// A running Mosquitto.
pub struct Mosquitto {
    /// The devices' TLS listener's port on 127.0.0.1.
    pub port: u16,
    /// The server's TLS listener's port on 127.0.0.1.
    pub server_port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

/// How long a start or a reload may take before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

fn mosquitto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("DROVER_TEST_MOSQUITTO") {
        return PathBuf::from(path);
    }
    let packaged = Path::new("/usr/sbin/mosquitto");
    if packaged.exists() {
        packaged.to_path_buf()
    } else {
        PathBuf::from("mosquitto")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The shipped configuration with this test's paths and port. Panics when a
/// line the harness must replace is missing, so the template and the harness
/// cannot drift apart unnoticed.
pub fn render_conf(template: &str, dir: &Path, tls: &BrokerTls, ports: [u16; 2]) -> String {
    let path = |p: &Path| p.display().to_string();
    // Directives that stand once in the file.
    let once: [(&str, String); 3] = [
        // The test's files live in a 0700 temporary directory: a broker that
        // drops to the `mosquitto` user could not read them.
        ("user", "root".to_string()),
        (
            "persistence_location",
            format!("{}/", dir.join("data").display()),
        ),
        (
            "log_dest",
            format!("file {}", dir.join("mosquitto.log").display()),
        ),
    ];
    // Directives each listener repeats.
    let each: [(&str, String); 5] = [
        ("acl_file", path(&dir.join("acl"))),
        ("cafile", path(&tls.ca_pem_path)),
        ("certfile", path(&tls.cert_path)),
        ("keyfile", path(&tls.key_path)),
        ("crlfile", path(&tls.crl_path)),
    ];
    let mut seen: Vec<&str> = Vec::new();
    let mut listeners = 0;
    let mut out = String::new();
    for line in template.lines() {
        let directive = line.split_whitespace().next().unwrap_or("");
        if directive == "listener" {
            assert!(
                listeners < 2,
                "deploy/mosquitto/mosquitto.conf has a third listener; teach tests/src/mosquitto.rs about it"
            );
            out.push_str(&format!("listener {} 127.0.0.1\n", ports[listeners]));
            listeners += 1;
        } else if let Some((d, value)) = once.iter().find(|(d, _)| *d == directive) {
            assert!(
                !seen.contains(d),
                "deploy/mosquitto/mosquitto.conf has a second `{d}` line"
            );
            seen.push(d);
            out.push_str(&format!("{d} {value}\n"));
        } else if let Some((d, value)) = each.iter().find(|(d, _)| *d == directive) {
            seen.push(d);
            out.push_str(&format!("{d} {value}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_eq!(
        listeners, 2,
        "deploy/mosquitto/mosquitto.conf should have the device and the server listener"
    );
    for (d, _) in once.iter().chain(each.iter()) {
        assert!(
            seen.contains(d),
            "deploy/mosquitto/mosquitto.conf has no `{d}` line, which tests/src/mosquitto.rs replaces"
        );
    }
    // ACL refusals are logged only at debug level; tests read them.
    out.push_str("log_type all\n");
    out
}

impl Mosquitto {
    /// Starts a broker with the shipped configuration on a free port and
    /// waits until it accepts TCP connections.
    pub fn start(tls: &BrokerTls) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("data")).expect("persistence directory");
        std::fs::write(dir.path().join("acl"), ACL_TEMPLATE).expect("write acl");
        let conf_path = dir.path().join("mosquitto.conf");
        // The port is free when chosen but may be taken before the broker
        // binds it: try a few.
        let mut output = String::new();
        for _ in 0..3 {
            let port = free_port();
            let server_port = free_port();
            std::fs::write(
                &conf_path,
                render_conf(CONF_TEMPLATE, dir.path(), tls, [port, server_port]),
            )
            .expect("write mosquitto.conf");
            let out = std::fs::File::create(dir.path().join("mosquitto.out")).expect("out");
            let mut child = Command::new(mosquitto_binary())
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("clone"))
                .stderr(out)
                .spawn()
                .expect("start mosquitto (set DROVER_TEST_MOSQUITTO to its path)");
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    return Mosquitto {
                        port,
                        server_port,
                        child,
                        dir,
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    output = format!("{why}\n{}", output_of(dir.path()));
                    if !output.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("mosquitto did not start: {output}")
    }

    /// The broker's process id (for a reload command such as `kill -HUP PID`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `mqtts://127.0.0.1:PORT` of the devices' listener.
    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    /// `mqtts://127.0.0.1:PORT` of the server's listener.
    pub fn server_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.server_port)
    }

    /// Sends SIGHUP, as `systemctl reload mosquitto` does, and waits until
    /// the broker has reloaded (its configuration, ACL, certificates and
    /// CRL).
    pub fn reload(&self) {
        let count = |log: &str| log.matches("Reloading config.").count();
        let before = count(&self.log());
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP {} failed", self.child.id());
        let deadline = Instant::now() + READY_TIMEOUT;
        // The broker logs this line and then reloads before it serves
        // another connection, so whatever connects after it sees the result.
        while count(&self.log()) == before {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not reload within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the broker has logged so far (log_type all).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Waits up to `READY_TIMEOUT` for `needle` in the log: the broker may
    /// write a line after the client has already seen what it reports
    /// (a refused handshake fails on the client before the broker logs why).
    pub fn logged(&self, needle: &str) -> bool {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the broker accepts TCP connections on `port`, or says why not.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited with {status}"));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "nothing listened on {addr} within {READY_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the broker printed before its log file was open, then its log.
fn output_of(dir: &Path) -> String {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    format!("{}{}", read("mosquitto.out"), read("mosquitto.log"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_server::identity::ca::FleetCa;
    use drover_server::identity::crl::write_crl;
    use rumqttc::{
        AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration,
        Transport,
    };
    use time::OffsetDateTime;
    use tokio::sync::mpsc;

    const WAIT: Duration = Duration::from_secs(5);

    struct Pki {
        ca: FleetCa,
        tls: BrokerTls,
        _dir: tempfile::TempDir,
    }

    /// A fleet CA in a fresh data directory with the server certificate and
    /// an empty CRL written where the server writes them.
    fn pki() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = FleetCa::load_or_create(dir.path(), None).expect("ca");
        ca.server_certificate(&["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server certificate");
        let pki = dir.path().join("pki");
        write_crl(&ca, &[], &pki.join("crl.pem")).expect("crl");
        let tls = BrokerTls {
            ca_pem_path: pki.join("ca.crt"),
            cert_path: pki.join("server.crt"),
            key_path: pki.join("server.key"),
            crl_path: pki.join("crl.pem"),
        };
        Pki { ca, tls, _dir: dir }
    }

    struct Identity {
        cert_pem: String,
        key_pem: String,
        serial: String,
    }

    fn device(ca: &FleetCa, id: &str) -> Identity {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let issued = ca
            .issue_device(
                &key,
                id,
                Duration::from_secs(3600),
                OffsetDateTime::now_utc(),
            )
            .expect("device certificate");
        Identity {
            cert_pem: issued.pem,
            key_pem: key.serialize_pem(),
            serial: issued.serial,
        }
    }

    fn server_client(ca: &FleetCa) -> Identity {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let issued = ca
            .issue_server_client(
                "drover-server",
                &key,
                Duration::from_secs(3600),
                OffsetDateTime::now_utc(),
            )
            .expect("server client certificate");
        Identity {
            cert_pem: issued.pem,
            key_pem: key.serialize_pem(),
            serial: issued.serial,
        }
    }

    /// Connects and waits for the CONNACK; then a task drives the connection
    /// and hands every incoming packet to the receiver, which closes when the
    /// connection ends.
    async fn connect(
        port: u16,
        ca_pem: &str,
        client_id: &str,
        identity: Option<&Identity>,
    ) -> Result<(AsyncClient, mpsc::UnboundedReceiver<Packet>), ConnectionError> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: ca_pem.as_bytes().to_vec(),
            alpn: None,
            client_auth: identity.map(|i| {
                (
                    i.cert_pem.as_bytes().to_vec(),
                    i.key_pem.as_bytes().to_vec(),
                )
            }),
        }));
        let (client, mut events) = AsyncClient::new(options, 64);
        tokio::time::timeout(WAIT, wait_connack(&mut events))
            .await
            .expect("the broker answers or closes within the timeout")?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Stop at the first error: rumqttc would otherwise reconnect.
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(packet) = event
                    && tx.send(packet).is_err()
                {
                    break;
                }
            }
        });
        Ok((client, rx))
    }

    async fn wait_connack(events: &mut EventLoop) -> Result<(), ConnectionError> {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await? {
                return Ok(());
            }
        }
    }

    /// The next packet `pick` accepts, skipping others, or None at the timeout
    /// or when the connection ends.
    async fn next<T>(
        rx: &mut mpsc::UnboundedReceiver<Packet>,
        timeout: Duration,
        mut pick: impl FnMut(Packet) -> Option<T>,
    ) -> Option<T> {
        tokio::time::timeout(timeout, async {
            while let Some(packet) = rx.recv().await {
                if let Some(found) = pick(packet) {
                    return Some(found);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    fn publish(packet: Packet) -> Option<(String, Vec<u8>)> {
        match packet {
            Packet::Publish(p) => Some((p.topic, p.payload.to_vec())),
            _ => None,
        }
    }

    fn puback(packet: Packet) -> Option<()> {
        matches!(packet, Packet::PubAck(_)).then_some(())
    }

    fn suback(packet: Packet) -> Option<()> {
        matches!(packet, Packet::SubAck(_)).then_some(())
    }

    /// True once the connection behind `rx` has ended.
    async fn closed(rx: &mut mpsc::UnboundedReceiver<Packet>) -> bool {
        tokio::time::timeout(WAIT, async { while rx.recv().await.is_some() {} })
            .await
            .is_ok()
    }

    #[test]
    fn the_shipped_config_is_rendered_with_the_test_paths_and_port() {
        let tls = BrokerTls {
            ca_pem_path: "/t/ca.crt".into(),
            cert_path: "/t/server.crt".into(),
            key_path: "/t/server.key".into(),
            crl_path: "/t/crl.pem".into(),
        };
        let conf = render_conf(CONF_TEMPLATE, Path::new("/d"), &tls, [4242, 4243]);
        let lines: Vec<&str> = conf.lines().filter(|l| !l.starts_with('#')).collect();
        for expected in [
            "listener 4242 127.0.0.1",
            "listener 4243 127.0.0.1",
            "per_listener_settings true",
            "use_username_as_clientid true",
            "user root",
            "cafile /t/ca.crt",
            "certfile /t/server.crt",
            "keyfile /t/server.key",
            "crlfile /t/crl.pem",
            "acl_file /d/acl",
            "persistence_location /d/data/",
            "log_dest file /d/mosquitto.log",
            // What the shipped file promises, unchanged by the harness.
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            "max_queued_messages 0",
            "max_queued_bytes 0",
        ] {
            assert!(lines.contains(&expected), "{expected:?} in\n{conf}");
        }
        assert!(!conf.contains("/etc/drover"), "{conf}");
    }

    fn telemetry(id: &str) -> String {
        format!("drover/v1/devices/{id}/telemetry")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_shipped_mosquitto_config_isolates_devices_and_honours_the_crl() {
        let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
        let pki = pki();
        let broker = Mosquitto::start(&pki.tls);
        let ca_pem = pki.ca.cert_pem().to_string();
        let (a_id, b_id) = (
            drover_server::identity::new_device_id(),
            drover_server::identity::new_device_id(),
        );
        let a = device(&pki.ca, &a_id);
        let server = server_client(&pki.ca);

        let (srv, mut srv_rx) = connect(
            broker.server_port,
            &ca_pem,
            "drover-server-test",
            Some(&server),
        )
        .await
        .expect("the server connects with its client certificate");
        srv.subscribe("drover/v1/devices/+/telemetry", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        next(&mut srv_rx, WAIT, suback).await.expect("suback");

        // A device publishes on its own prefix and the server receives it.
        let (dev_a, mut a_rx) = connect(broker.port, &ca_pem, &a_id, Some(&a))
            .await
            .expect("device A connects");
        dev_a
            .publish(telemetry(&a_id), QoS::AtLeastOnce, false, b"own".to_vec())
            .await
            .expect("publish");
        next(&mut a_rx, WAIT, puback).await.expect("puback");
        let got = next(&mut srv_rx, WAIT, publish).await;
        assert_eq!(got, Some((telemetry(&a_id), b"own".to_vec())));

        // Under another device's prefix: dropped, logged, and the broker
        // closes the connection (Mosquitto 2.0.11, QoS 0 and 1 alike).
        dev_a
            .publish(
                telemetry(&b_id),
                QoS::AtLeastOnce,
                false,
                b"forged".to_vec(),
            )
            .await
            .expect("publish");
        let got = next(&mut srv_rx, Duration::from_secs(1), publish).await;
        assert_eq!(
            got, None,
            "a publish under another device's prefix is not delivered"
        );
        assert!(
            closed(&mut a_rx).await,
            "the broker closes a connection that publishes out of bounds"
        );
        assert!(
            broker.logged(&format!("Denied PUBLISH from {a_id} ")),
            "{}",
            broker.log()
        );

        // No certificate, no connection.
        let refused = connect(broker.port, &ca_pem, "anonymous", None).await;
        assert!(
            refused.is_err(),
            "a client without a certificate is refused"
        );
        assert!(
            broker.logged("peer did not return a certificate"),
            "{}",
            broker.log()
        );

        let (dev_a, mut a_rx) = connect(broker.port, &ca_pem, &a_id, Some(&a))
            .await
            .expect("device A connects again");

        // Revoke A: a new connection is refused once the broker reloads the CRL.
        write_crl(&pki.ca, &[(a.serial.clone(), 1)], &pki.tls.crl_path).expect("crl");
        broker.reload();
        let again = connect(broker.port, &ca_pem, &format!("{a_id}x"), Some(&a)).await;
        assert!(again.is_err(), "a revoked certificate is refused");
        // The CRL itself is sound: a device it does not list still gets in.
        let b = device(&pki.ca, &b_id);
        let (dev_b, _b_rx) = connect(broker.port, &ca_pem, &b_id, Some(&b))
            .await
            .expect("device B connects after the reload");
        dev_b.disconnect().await.expect("disconnect");

        // FIXME(mosquitto 2.0): the reload leaves A's open session alone; it
        // still publishes. The server ends it by taking over its client id.
        dev_a
            .publish(telemetry(&a_id), QoS::AtLeastOnce, false, b"still".to_vec())
            .await
            .expect("publish");
        let got = next(&mut srv_rx, WAIT, publish).await;
        assert_eq!(got, Some((telemetry(&a_id), b"still".to_vec())));
        let (takeover, _takeover_rx) = connect(broker.server_port, &ca_pem, &a_id, Some(&server))
            .await
            .expect("the server connects with the device's client id");
        assert!(closed(&mut a_rx).await, "the takeover closes A's session");
        takeover.disconnect().await.expect("disconnect");
    }
}
