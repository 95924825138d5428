//! The agent against a fake device API: a real TLS server (rustls, optional client certificates)
//! with a CA of its own, answering as the contract says. It checks what the agent sends (and what
//! it never sends), what it stores, and how it renews and recovers. The real server's end-to-end
//! suites live in tests/e2e.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use drover_agent::enroll::{EnrollFlags, EnrollOptions, Outcome, enroll};
use drover_agent::identity::renewal::Keeper;
use drover_agent::state::StateDir;
use drover_agent::{Error, device_api::ServerUrl};
use drover_proto::{
    EnrollRequest, EnrollResponse, PublicKey, RecoverRequest, SigningKey, Timestamp, TrustDocument,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
    KeyPair, PublicKeyData as _, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const DEVICE_ID: &str = "01JD3Z8Q5V6W7X8Y9Z0A1B2C3D";

/// One request as the fake server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    body: String,
    client_certificate: bool,
}

type Handler = dyn Fn(&Seen, &Fleet) -> (u16, String) + Send + Sync;

/// The fake fleet: its CA, its root key and the certificates it issues.
struct Fleet {
    ca_key: KeyPair,
    ca_params: CertificateParams,
    ca_pem: String,
    ca_der: Vec<u8>,
    root: SigningKey,
}

impl Fleet {
    fn new() -> Fleet {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("the fake device API works");
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "fake fleet CA");
        let ca = ca_params
            .self_signed(&ca_key)
            .expect("the fake device API works");
        Fleet {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            ca_key,
            ca_params,
            root: SigningKey::from_bytes(&[9; 32]),
        }
    }

    fn ca_hash(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.ca_der)))
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.ca_params, &self.ca_key)
    }

    /// A device certificate for the CSR's key, valid over [now + from_s, now + to_s].
    fn issue(&self, csr_pem: &str, from_s: i64, to_s: i64) -> String {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).expect("the fake device API works");
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, DEVICE_ID);
        params.not_before = now + time::Duration::seconds(from_s);
        params.not_after = now + time::Duration::seconds(to_s);
        params
            .signed_by(&csr.public_key, &self.issuer())
            .expect("the fake device API works")
            .pem()
    }

    fn enroll_answer(&self, request: &EnrollRequest) -> EnrollResponse {
        let trust = TrustDocument {
            schema: 1,
            version: 1,
            issued_at: Timestamp::parse("2024-01-01T00:00:00Z").expect("the fake device API works"),
            expires_at: Timestamp::parse("2124-01-01T00:00:00Z")
                .expect("the fake device API works"),
            root_public_key: PublicKey::from(&self.root),
            signing_keys: vec![],
            revoked_keyids: vec![],
            ca_certificates_pem: vec![self.ca_pem.clone()],
        }
        .sign(&self.root)
        .expect("the fake device API works");
        EnrollResponse {
            device_id: DEVICE_ID.into(),
            status: "pending".into(),
            certificate_pem: self.issue(&request.csr_pem, -60, 90 * 86_400),
            ca_pem: self.ca_pem.clone(),
            mqtt_url: "mqtts://127.0.0.1:8883".into(),
            mqtt_topic_prefix: format!("drover/v1/devices/{DEVICE_ID}/"),
            trust_envelope: trust,
            root_public_key: PublicKey::from(&self.root).to_base64(),
        }
    }
}

/// The usual device API: CA, enroll, renew and recover all succeed.
fn contract_handler(seen: &Seen, fleet: &Fleet) -> (u16, String) {
    let json = |v: serde_json::Value| (200, v.to_string());
    match (seen.method.as_str(), seen.path.as_str()) {
        ("GET", "/device/v1/ca") => json(serde_json::json!({ "ca_pem": fleet.ca_pem })),
        ("POST", "/device/v1/enroll") => {
            let request: EnrollRequest =
                serde_json::from_str(&seen.body).expect("the fake device API works");
            (
                200,
                serde_json::to_string(&fleet.enroll_answer(&request))
                    .expect("the fake device API works"),
            )
        }
        ("POST", "/device/v1/renew") if seen.client_certificate => {
            let request: serde_json::Value =
                serde_json::from_str(&seen.body).expect("the fake device API works");
            let csr = request["csr_pem"]
                .as_str()
                .expect("the fake device API works");
            json(serde_json::json!({ "certificate_pem": fleet.issue(csr, -60, 180 * 86_400) }))
        }
        ("POST", "/device/v1/recover") => {
            let request: RecoverRequest =
                serde_json::from_str(&seen.body).expect("the fake device API works");
            json(
                serde_json::json!({ "certificate_pem": fleet.issue(&request.csr_pem, -60, 30 * 86_400) }),
            )
        }
        _ => problem(404, "no such endpoint"),
    }
}

fn problem(status: u16, detail: &str) -> (u16, String) {
    (
        status,
        serde_json::json!({"type": "about:blank", "title": "Error", "status": status, "detail": detail})
            .to_string(),
    )
}

struct FakeServer {
    url: String,
    fleet: Arc<Fleet>,
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Arc<Mutex<Arc<Handler>>>,
}

impl FakeServer {
    async fn start() -> FakeServer {
        let fleet = Arc::new(Fleet::new());
        let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("the fake device API works");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
        let server_cert = params
            .signed_by(&server_key, &fleet.issuer())
            .expect("the fake device API works");

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(fleet.ca_der.clone()))
            .expect("the fake device API works");
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .expect("the fake device API works");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the fake device API works")
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .expect("the fake device API works");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("the fake device API works");
        let addr = listener.local_addr().expect("the fake device API works");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Mutex<Arc<Handler>>> = Arc::new(Mutex::new(Arc::new(contract_handler)));

        let (task_fleet, task_seen, task_handler) = (fleet.clone(), seen.clone(), handler.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, fleet, seen, handler) = (
                    acceptor.clone(),
                    task_fleet.clone(),
                    task_seen.clone(),
                    task_handler.clone(),
                );
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_certificate = tls.get_ref().1.peer_certificates().is_some();
                    let Some((method, path, body)) = read_request(&mut tls).await else {
                        return;
                    };
                    let request = Seen {
                        method,
                        path,
                        body,
                        client_certificate,
                    };
                    seen.lock()
                        .expect("the fake device API works")
                        .push(request.clone());
                    let handler = handler.lock().expect("the fake device API works").clone();
                    let (status, body) = handler(&request, &fleet);
                    let kind = if status < 400 {
                        "application/json"
                    } else {
                        "application/problem+json"
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        FakeServer {
            url: format!("https://{addr}"),
            fleet,
            seen,
            handler,
        }
    }

    fn answer_with(
        &self,
        handler: impl Fn(&Seen, &Fleet) -> (u16, String) + Send + Sync + 'static,
    ) {
        *self.handler.lock().expect("the fake device API works") = Arc::new(handler);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("the fake device API works").clone()
    }

    fn options(&self) -> EnrollOptions {
        self.options_with_hash(&self.fleet.ca_hash())
    }

    fn options_with_hash(&self, ca_hash: &str) -> EnrollOptions {
        EnrollOptions::from_flags(
            EnrollFlags {
                server: self.url.clone(),
                token: "secret-token".into(),
                ca_hash: ca_hash.into(),
                device_type: "pi4".into(),
                tags: vec!["site=berlin".into()],
                hostname: Some("box-1".into()),
            },
            || "unused".into(),
        )
        .expect("the fake device API works")
    }
}

async fn read_request(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Option<(String, String, String)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
    let mut request_line = head.lines().next()?.split(' ');
    let (method, path) = (
        request_line.next()?.to_owned(),
        request_line.next()?.to_owned(),
    );
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buffer[header_end..header_end + length]).to_string();
    Some((method, path, body))
}

fn now() -> Timestamp {
    drover_agent::now()
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("the fake device API works")
        .map(|e| {
            e.expect("the fake device API works")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fn posts(server: &FakeServer) -> Vec<Seen> {
    server
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect()
}

#[tokio::test]
async fn enroll_pins_the_ca_sends_the_csr_and_stores_the_identity() {
    let server = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("the fake device API works");
    let state = StateDir::new(dir.path().join("state"));

    let outcome = enroll(&state, &server.options(), now)
        .await
        .expect("the fake device API works");
    let Outcome::Enrolled(enrollment) = outcome else {
        panic!("expected a fresh enrollment, got {outcome:?}");
    };
    assert_eq!(enrollment.device_id.as_str(), DEVICE_ID);
    assert_eq!(enrollment.status, "pending");
    assert_eq!(enrollment.server, server.url);

    let seen = server.seen();
    assert_eq!(
        seen.iter()
            .map(|s| (s.method.as_str(), s.path.as_str()))
            .collect::<Vec<_>>(),
        [("GET", "/device/v1/ca"), ("POST", "/device/v1/enroll")]
    );
    let request: EnrollRequest =
        serde_json::from_str(&seen[1].body).expect("the fake device API works");
    assert_eq!(request.token, "secret-token");
    assert_eq!(request.device_type, "pi4");
    assert_eq!(request.hostname, "box-1");
    assert_eq!(
        request.tags,
        BTreeMap::from([("site".into(), "berlin".into())])
    );
    assert!(!seen[1].client_certificate);

    assert_eq!(
        files(state.root()),
        [
            "agent.toml",
            "ca.crt",
            "device.crt",
            "device.key",
            "enrollment.json",
            "trust.json"
        ]
    );
    let key_mode = std::fs::metadata(state.file("device.key"))
        .expect("the fake device API works")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let loaded = state.load().expect("the fake device API works");
    assert_eq!(loaded.ca_der, server.fleet.ca_der);
    assert_eq!(loaded.enrollment, enrollment);
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.file("enrollment.json")).expect("the fake device API works"),
    )
    .expect("the fake device API works");
    assert_eq!(
        record["root_public_key"],
        PublicKey::from(&server.fleet.root).to_base64()
    );
    assert_eq!(
        record["mqtt_topic_prefix"],
        format!("drover/v1/devices/{DEVICE_ID}/")
    );
}

#[tokio::test]
async fn a_wrong_ca_hash_stops_before_the_token_is_sent() {
    let server = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("the fake device API works");
    let state = StateDir::new(dir.path());
    let wrong = format!("sha256:{}", "ab".repeat(32));

    let err = enroll(&state, &server.options_with_hash(&wrong), now)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CaHashMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(&wrong), "{message}");
    assert!(message.contains(&server.fleet.ca_hash()), "{message}");
    assert_eq!(err.exit_code(), 1);
    assert!(posts(&server).is_empty());
    assert!(!state.file("enrollment.json").exists());
}

#[tokio::test]
async fn the_binary_with_a_wrong_ca_hash_fails_with_one_line_and_no_post() {
    let server = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("the fake device API works");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .args(["--state-dir", &dir.path().to_string_lossy(), "enroll"])
        .args(["--server", &server.url, "--token", "secret-token"])
        .args(["--ca-hash", &format!("sha256:{}", "00".repeat(32))])
        .output()
        .await
        .expect("the fake device API works");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).expect("the fake device API works");
    assert!(
        stderr.starts_with("drover-agent: the server's CA certificate has hash"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("secret-token"));
    assert!(posts(&server).is_empty());

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .args(["--state-dir", &dir.path().to_string_lossy(), "enroll"])
        .args([
            "--server",
            &server.url,
            "--token",
            "t",
            "--ca-hash",
            "sha256:xyz",
        ])
        .output()
        .await
        .expect("the fake device API works");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).expect("the fake device API works");
    assert!(stderr.starts_with("drover-agent: --ca-hash"), "{stderr}");
    assert!(
        server.seen().len() == 1,
        "a malformed hash contacts no server"
    );
}

#[tokio::test]
async fn an_interrupted_enrollment_is_rerun_with_the_same_key() {
    let server = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("the fake device API works");
    let state = StateDir::new(dir.path());
    enroll(&state, &server.options(), now)
        .await
        .expect("the fake device API works");
    let key = std::fs::read(state.file("device.key")).expect("the fake device API works");
    std::fs::write(state.file("agent.toml"), "heartbeat_s = 5\n")
        .expect("the fake device API works");
    // Power was lost before the commit point.
    std::fs::remove_file(state.file("enrollment.json")).expect("the fake device API works");

    let outcome = enroll(&state, &server.options(), now)
        .await
        .expect("the fake device API works");
    assert!(matches!(outcome, Outcome::Enrolled(_)));
    assert_eq!(
        std::fs::read(state.file("device.key")).expect("the fake device API works"),
        key
    );
    assert_eq!(
        std::fs::read_to_string(state.file("agent.toml")).expect("the fake device API works"),
        "heartbeat_s = 5\n",
        "the owner's configuration is never overwritten"
    );
    let csrs: Vec<String> = posts(&server)
        .iter()
        .map(|s| {
            serde_json::from_str::<EnrollRequest>(&s.body)
                .expect("the fake device API works")
                .csr_pem
        })
        .collect();
    let public_key = |csr: &str| {
        CertificateSigningRequestParams::from_pem(csr)
            .expect("the fake device API works")
            .public_key
            .der_bytes()
            .to_vec()
    };
    assert_eq!(csrs.len(), 2);
    assert_eq!(public_key(&csrs[0]), public_key(&csrs[1]));
}

#[tokio::test]
async fn enrolling_again_reports_the_existing_enrollment_or_refuses_another_server() {
    let server = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("the fake device API works");
    let state = StateDir::new(dir.path());
    enroll(&state, &server.options(), now)
        .await
        .expect("the fake device API works");
    let requests = server.seen().len();

    let again = enroll(&state, &server.options(), now)
        .await
        .expect("the fake device API works");
    assert!(matches!(again, Outcome::AlreadyEnrolled(e) if e.device_id.as_str() == DEVICE_ID));
    assert_eq!(
        server.seen().len(),
        requests,
        "nothing is sent when already enrolled"
    );

    let mut elsewhere = server.options();
    elsewhere.server =
        ServerUrl::parse("https://other.example:8443").expect("the fake device API works");
    let err = enroll(&state, &elsewhere, now).await.unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string().contains("remove the state directory"),
        "{err}"
    );
}

#[tokio::test]
async fn a_refusal_shows_the_problem_detail_and_commits_nothing() {
    let server = FakeServer::start().await;
    server.answer_with(|seen, fleet| match seen.path.as_str() {
        "/device/v1/enroll" => problem(403, "the enrollment token is used up"),
        _ => contract_handler(seen, fleet),
    });
    let dir = tempfile::tempdir().expect("the fake device API works");
    let state = StateDir::new(dir.path());
    let err = enroll(&state, &server.options(), now).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "enrollment failed: the server answered HTTP 403: the enrollment token is used up"
    );
    assert_eq!(err.exit_code(), 1);
    assert_eq!(files(state.root()), ["device.key"]);
}

#[tokio::test]
async fn a_certificate_for_another_key_is_refused() {
    let server = FakeServer::start().await;
    server.answer_with(|seen, fleet| match seen.path.as_str() {
        "/device/v1/enroll" => {
            let stranger = KeyPair::generate().expect("the fake device API works");
            let csr = CertificateParams::default()
                .serialize_request(&stranger)
                .expect("the fake device API works")
                .pem()
                .expect("the fake device API works");
            let mut request: EnrollRequest =
                serde_json::from_str(&seen.body).expect("the fake device API works");
            request.csr_pem = csr;
            (
                200,
                serde_json::to_string(&fleet.enroll_answer(&request))
                    .expect("the fake device API works"),
            )
        }
        _ => contract_handler(seen, fleet),
    });
    let dir = tempfile::tempdir().expect("the fake device API works");
    let state = StateDir::new(dir.path());
    let err = enroll(&state, &server.options(), now).await.unwrap_err();
    assert!(err.to_string().contains("different public key"), "{err}");
    assert!(!state.file("enrollment.json").exists());
}

async fn enrolled(server: &FakeServer, dir: &Path) -> (StateDir, Keeper) {
    let state = StateDir::new(dir);
    enroll(&state, &server.options(), now)
        .await
        .expect("the fake device API works");
    let loaded = state.load().expect("the fake device API works");
    let keeper = Keeper::new(
        state.clone(),
        ServerUrl::parse(&server.url).expect("the fake device API works"),
        loaded.key,
        loaded.certificate,
        loaded.ca_der,
    );
    (state, keeper)
}

/// Version `version` of the fake fleet's trust document, signed by `key`.
fn fleet_trust(fleet: &Fleet, version: u64, key: &SigningKey) -> String {
    TrustDocument {
        schema: 1,
        version,
        issued_at: Timestamp::parse("2024-06-01T00:00:00Z").expect("the fake device API works"),
        expires_at: Timestamp::parse("2124-01-01T00:00:00Z").expect("the fake device API works"),
        root_public_key: PublicKey::from(&fleet.root),
        signing_keys: vec![],
        revoked_keyids: vec![],
        ca_certificates_pem: vec![fleet.ca_pem.clone()],
    }
    .sign(key)
    .expect("the fake device API works")
    .to_json()
}

#[tokio::test]
async fn refresh_trust_fetches_with_the_client_certificate_and_takes_only_a_newer_root_signed_document()
 {
    let server = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("the fake device API works");
    let (state, _) = enrolled(&server, dir.path()).await;
    let held =
        std::fs::read_to_string(state.file("trust.json")).expect("the fake device API works");

    // Signed by a stranger: refused, trust.json untouched.
    server.answer_with(
        |seen, fleet| match (seen.method.as_str(), seen.path.as_str()) {
            ("GET", "/device/v1/trust") if seen.client_certificate => (
                200,
                fleet_trust(fleet, 2, &SigningKey::from_bytes(&[5; 32])),
            ),
            _ => problem(404, "no such endpoint"),
        },
    );
    let err = drover_agent::trust::refresh(&state, now).await.unwrap_err();
    assert!(err.to_string().starts_with("trust check failed"), "{err}");
    assert_eq!(
        std::fs::read_to_string(state.file("trust.json")).expect("the fake device API works"),
        held
    );

    // Version 2 signed by the root: taken and written.
    server.answer_with(
        |seen, fleet| match (seen.method.as_str(), seen.path.as_str()) {
            ("GET", "/device/v1/trust") if seen.client_certificate => {
                (200, fleet_trust(fleet, 2, &fleet.root))
            }
            _ => problem(404, "no such endpoint"),
        },
    );
    let taken = drover_agent::trust::refresh(&state, now)
        .await
        .expect("the fake device API works");
    assert_eq!(
        taken,
        drover_agent::trust::Taken::Updated {
            from: Some(1),
            to: 2,
            root_changed: false
        }
    );
    let stored = drover_proto::Envelope::from_json(
        &std::fs::read(state.file("trust.json")).expect("the fake device API works"),
    )
    .expect("the fake device API works");
    assert_eq!(
        stored.to_json(),
        fleet_trust(&server.fleet, 2, &server.fleet.root)
    );
    state.load().expect("the fake device API works");

    // Version 1 replayed: refused as older.
    server.answer_with(|_, fleet| (200, fleet_trust(fleet, 1, &fleet.root)));
    let err = drover_agent::trust::refresh(&state, now).await.unwrap_err();
    assert!(
        err.to_string().contains("older than the held version 2"),
        "{err}"
    );
    let gets: Vec<bool> = server
        .seen()
        .iter()
        .filter(|s| s.path == "/device/v1/trust")
        .map(|s| s.client_certificate)
        .collect();
    assert_eq!(gets, [true, true, true]);
}

#[tokio::test]
async fn renewal_uses_the_client_certificate_and_replaces_device_crt() {
    let server = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("the fake device API works");
    let (state, mut keeper) = enrolled(&server, dir.path()).await;
    let before = state.certificate().expect("the fake device API works");

    keeper.renew().await.expect("the fake device API works");
    let renew = posts(&server).pop().expect("the fake device API works");
    assert_eq!(renew.path, "/device/v1/renew");
    assert!(renew.client_certificate, "renewal is mutual TLS");
    let after = state.certificate().expect("the fake device API works");
    assert!(after.not_after() > before.not_after());
    assert_eq!(keeper.certificate(), &after);
    // Still the same key: the new certificate loads with it.
    state.load().expect("the fake device API works");
}

#[tokio::test]
async fn a_refused_renewal_keeps_the_old_certificate() {
    let server = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("the fake device API works");
    let (state, mut keeper) = enrolled(&server, dir.path()).await;
    server.answer_with(|_, _| problem(403, "the device is revoked"));
    let before = std::fs::read(state.file("device.crt")).expect("the fake device API works");
    let err = keeper.renew().await.unwrap_err();
    assert!(err.to_string().contains("the device is revoked"), "{err}");
    assert_eq!(
        std::fs::read(state.file("device.crt")).expect("the fake device API works"),
        before
    );
}

#[tokio::test]
async fn recovery_sends_the_old_certificate_without_a_client_certificate() {
    let server = FakeServer::start().await;
    let dir = tempfile::tempdir().expect("the fake device API works");
    let (state, mut keeper) = enrolled(&server, dir.path()).await;
    let old = state.certificate().expect("the fake device API works");

    keeper.recover().await.expect("the fake device API works");
    let recover = posts(&server).pop().expect("the fake device API works");
    assert_eq!(recover.path, "/device/v1/recover");
    assert!(
        !recover.client_certificate,
        "recovery presents no client certificate"
    );
    let request: RecoverRequest =
        serde_json::from_str(&recover.body).expect("the fake device API works");
    assert_eq!(request.certificate_pem, old.pem());
    assert_ne!(state.certificate().expect("the fake device API works"), old);
}

/// Enrolls with a certificate valid over [now + from_s, now + to_s], then runs the binary's `run`
/// until `device.crt` changes; stops it with SIGTERM and returns the last request and exit code.
async fn run_until_the_certificate_changes(from_s: i64, to_s: i64) -> (Seen, Option<i32>) {
    let server = FakeServer::start().await;
    server.answer_with(move |seen, fleet| match seen.path.as_str() {
        "/device/v1/enroll" => {
            let request: EnrollRequest =
                serde_json::from_str(&seen.body).expect("the fake device API works");
            let mut answer = fleet.enroll_answer(&request);
            answer.certificate_pem = fleet.issue(&request.csr_pem, from_s, to_s);
            (
                200,
                serde_json::to_string(&answer).expect("the fake device API works"),
            )
        }
        _ => contract_handler(seen, fleet),
    });
    let dir = tempfile::tempdir().expect("the fake device API works");
    let state = StateDir::new(dir.path());
    enroll(&state, &server.options(), now)
        .await
        .expect("the fake device API works");
    let before = std::fs::read(state.file("device.crt")).expect("the fake device API works");

    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .args(["--state-dir", &dir.path().to_string_lossy(), "run"])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the fake device API works");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read(state.file("device.crt")).expect("the fake device API works") == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the certificate was never replaced"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = child.id().expect("the fake device API works").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("the fake device API works");
    assert!(killed.success());
    let output = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("the agent stops promptly on SIGTERM")
        .expect("the fake device API works");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("stopping"), "{log}");
    state.load().expect("the fake device API works");
    (
        posts(&server).pop().expect("the fake device API works"),
        output.status.code(),
    )
}

#[tokio::test]
async fn run_renews_a_certificate_near_its_end_and_stops_cleanly_on_sigterm() {
    // Lifetime 70 s, 10 s left: less than a third remains, so `run` renews at once.
    let (last, code) = run_until_the_certificate_changes(-60, 10).await;
    assert_eq!(last.path, "/device/v1/renew");
    assert!(last.client_certificate);
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn run_recovers_an_expired_certificate() {
    let (last, code) = run_until_the_certificate_changes(-120, -60).await;
    assert_eq!(last.path, "/device/v1/recover");
    assert!(!last.client_certificate);
    assert_eq!(code, Some(0));
}
