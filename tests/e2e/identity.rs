//! Device identity through the device API with a Rust client: enrollment
//! rules, the certificate profile, revocation, renewal and recovery.

use drover_tests::{DeviceKey, TestApp, problem, spawn_app};
use serde_json::{Value, json};

async fn device_count(app: &TestApp, admin: &str) -> i64 {
    let list: Value = app
        .get(admin, "/api/v1/devices")
        .await
        .json()
        .await
        .expect("json");
    list["total"].as_i64().expect("total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_certificate_follows_the_contract_profile_whatever_the_csr_asks() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let created = app
        .enrollment_token(&admin, json!({"uses": 1, "tags": {"site": "berlin"}}))
        .await;
    let token = created["token"].as_str().expect("token");
    assert!(
        created["join_command"]
            .as_str()
            .expect("join")
            .contains(&format!("--ca-hash {}", app.ca_hash))
    );

    // A CSR that asks for CA rights, key usages and names.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let res = app
        .device_client(None)
        .post(format!("{}/device/v1/enroll", app.device_base))
        .json(&json!({"token": token, "csr_pem": csr, "device_type": "rpi4", "hostname": "pi-1", "tags": {"site": "paris", "rack": "7"}}))
        .send()
        .await
        .expect("enroll");
    assert_eq!(res.status(), 201);
    let answer: drover_proto::EnrollResponse = res.json().await.expect("answer");
    assert_eq!(answer.status, "accepted");
    assert_eq!(
        answer.mqtt_topic_prefix,
        format!("drover/v1/devices/{}/", answer.device_id)
    );
    assert!(answer.device_id.chars().all(|c| c.is_ascii_alphanumeric()));
    let root = drover_proto::PublicKey::from_base64(&answer.root_public_key).expect("root key");
    drover_proto::TrustStore::new(root)
        .accept_update(
            &answer.trust_envelope,
            drover_proto::Timestamp::from_unix_millis(0).expect("ts"),
        )
        .expect("the trust document is signed by the root it names");

    let (_, pem) =
        x509_parser::pem::parse_x509_pem(answer.certificate_pem.as_bytes()).expect("pem");
    let cert = pem.parse_x509().expect("x509");
    assert!(
        !cert
            .basic_constraints()
            .expect("ext")
            .expect("present")
            .value
            .ca,
        "CA:FALSE"
    );
    let eku = cert
        .extended_key_usage()
        .expect("ext")
        .expect("present")
        .value
        .clone();
    assert!(eku.client_auth && !eku.server_auth);
    let san = format!(
        "{:?}",
        cert.subject_alternative_name()
            .expect("ext")
            .expect("present")
            .value
    );
    assert!(
        san.contains(&format!("urn:drover:device:{}", answer.device_id)) && !san.contains("evil"),
        "{san}"
    );
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .expect("cn")
        .as_str()
        .expect("str")
        .to_string();
    assert_eq!(cn, answer.device_id);
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(
        (89 * 86_400..=91 * 86_400).contains(&lifetime),
        "90 days: {lifetime}"
    );

    let device: Value = app.device(&admin, &answer.device_id).await;
    assert_eq!(device["tags"]["site"], "berlin", "the token's tags win");
    assert_eq!(device["tags"]["rack"], "7");
    assert_eq!(device["device_type"], "rpi4");
    assert_eq!(device["certificate"]["serial"], hex_serial(&cert));
}

fn hex_serial(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_csrs_are_refused_and_do_not_spend_the_token() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let created = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let token = created["token"].as_str().expect("token");
    let client = app.device_client(None);
    let url = format!("{}/device/v1/enroll", app.device_base);
    let send = |csr: String| {
        client
            .post(&url)
            .json(&json!({"token": token, "csr_pem": csr, "device_type": "rpi4"}))
            .send()
    };
    let body = problem(send("garbage".into()).await.expect("send"), 400).await;
    assert_eq!(body["field"], "csr_pem");
    let body = problem(send("A".repeat(20_000)).await.expect("send"), 400).await;
    assert!(body["detail"].as_str().expect("detail").contains("larger"));
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("p")
        .serialize_request(&p384)
        .expect("csr")
        .pem()
        .expect("pem");
    let body = problem(send(csr).await.expect("send"), 400).await;
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("P-256 or Ed25519")
    );
    let res = client.post(&url).json(&json!({"token": token, "csr_pem": DeviceKey::new().csr(), "device_type": "rpi4", "surprise": 1})).send().await.expect("send");
    assert_eq!(problem(res, 400).await["field"], "surprise");
    let tokens: Value = app
        .get(&admin, "/api/v1/enrollment-tokens")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        tokens["items"][0]["uses_left"], 1,
        "no bad request spent the token"
    );
    assert_eq!(device_count(&app, &admin).await, 0);
    assert_eq!(
        app.enroll(token, &DeviceKey::new(), "rpi4").await.status(),
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_expired_used_up_and_wrong_type_tokens_create_nothing() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let body = problem(app.enroll("dte_nope", &DeviceKey::new(), "rpi4").await, 403).await;
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("not known")
    );

    let one = app
        .enrollment_token(&admin, json!({"uses": 1, "device_types": ["rpi4"]}))
        .await;
    let token = one["token"].as_str().expect("token");
    let body = problem(app.enroll(token, &DeviceKey::new(), "jetson").await, 403).await;
    assert!(body["detail"].as_str().expect("detail").contains("rpi4"));
    assert_eq!(
        app.enroll(token, &DeviceKey::new(), "rpi4").await.status(),
        201
    );
    let body = problem(app.enroll(token, &DeviceKey::new(), "rpi4").await, 403).await;
    assert!(body["detail"].as_str().expect("detail").contains("used up"));

    let revoked = app.enrollment_token(&admin, json!({"uses": 5})).await;
    app.delete(
        &admin,
        &format!(
            "/api/v1/enrollment-tokens/{}",
            revoked["id"].as_str().expect("id")
        ),
    )
    .await;
    let body = problem(
        app.enroll(
            revoked["token"].as_str().expect("t"),
            &DeviceKey::new(),
            "rpi4",
        )
        .await,
        403,
    )
    .await;
    assert!(body["detail"].as_str().expect("detail").contains("revoked"));

    // Expired: make one that expired a moment ago through the store.
    let soon = app
        .enrollment_token(&admin, json!({"uses": 5, "expires_in": "1m"}))
        .await;
    let store = drover_server::store::Store::connect(&app.settings.database_url)
        .await
        .expect("store");
    drover_server::on_store!(&store, pool => sqlx::query("UPDATE enrollment_tokens SET expires_at = 1 WHERE id = $1")
        .bind(soon["id"].as_str().expect("id")).execute(pool).await.map(|_| ())).expect("expire");
    store.close().await;
    let body = problem(
        app.enroll(
            soon["token"].as_str().expect("t"),
            &DeviceKey::new(),
            "rpi4",
        )
        .await,
        403,
    )
    .await;
    assert!(body["detail"].as_str().expect("detail").contains("expired"));

    assert_eq!(
        device_count(&app, &admin).await,
        1,
        "only the one valid enrollment created a device"
    );
    let body = problem(
        app.post_json(&admin, "/api/v1/enrollment-tokens", &json!({"uses": 0}))
            .await,
        400,
    )
    .await;
    assert_eq!(body["field"], "uses");
    let body = problem(
        app.post_json(
            &admin,
            "/api/v1/enrollment-tokens",
            &json!({"expires_in": "forever"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(body["field"], "expires_in");
    let body = problem(
        app.post_json(
            &admin,
            "/api/v1/enrollment-tokens",
            &json!({"tags": {"bad key": "x"}}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(body["field"], "tags");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enrollments_never_exceed_the_uses() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let created = app.enrollment_token(&admin, json!({"uses": 20})).await;
    let token = created["token"].as_str().expect("token").to_string();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let client = app.device_client(None);
        let url = format!("{}/device/v1/enroll", app.device_base);
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let key = DeviceKey::new();
            client
                .post(url)
                .json(&json!({"token": token, "csr_pem": key.csr(), "device_type": "rpi4"}))
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("task") {
            201 => ok += 1,
            403 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, refused), (20, 10));
    assert_eq!(device_count(&app, &admin).await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_an_enrollment_with_the_same_key_answers_the_same_device() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let created = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let token = created["token"].as_str().expect("token");
    let key = DeviceKey::new();
    let first: Value = app
        .enroll(token, &key, "rpi4")
        .await
        .json()
        .await
        .expect("json");
    let res = app.enroll(token, &key, "rpi4").await;
    assert_eq!(res.status(), 200, "a repeat is not a new device");
    let second: Value = res.json().await.expect("json");
    assert_eq!(first["device_id"], second["device_id"]);
    assert_eq!(device_count(&app, &admin).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_device_gets_nothing_until_accepted_and_a_revoked_one_is_cut_off() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let created = app
        .enrollment_token(&admin, json!({"uses": 1, "approval": true}))
        .await;
    let key = DeviceKey::new();
    let answer: Value = app
        .enroll(created["token"].as_str().expect("t"), &key, "rpi4")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(answer["status"], "pending");
    let id = answer["device_id"].as_str().expect("id").to_string();
    let cert = answer["certificate_pem"]
        .as_str()
        .expect("cert")
        .to_string();
    let client = app.device_client(Some((&key.key_pem(), &cert)));
    let trust_url = format!("{}/device/v1/trust", app.device_base);
    let body = problem(client.get(&trust_url).send().await.expect("send"), 403).await;
    assert!(body["detail"].as_str().expect("detail").contains("pending"));

    let viewer = app.user_token(&admin, "vic", "viewer").await;
    problem(
        app.post_json(&viewer, &format!("/api/v1/devices/{id}/accept"), &json!({}))
            .await,
        403,
    )
    .await;
    let accepted: Value = app
        .post_json(&admin, &format!("/api/v1/devices/{id}/accept"), &json!({}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(accepted["status"], "accepted");
    let res = client.get(&trust_url).send().await.expect("send");
    assert_eq!(res.status(), 200);
    let envelope: Value = res.json().await.expect("json");
    assert_eq!(envelope["payloadType"], "application/vnd.drover.trust+json");
    let no_cert = app
        .device_client(None)
        .get(&trust_url)
        .send()
        .await
        .expect("send");
    problem(no_cert, 401).await;

    let revoked: Value = app
        .post_json(&admin, &format!("/api/v1/devices/{id}/revoke"), &json!({}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(revoked["status"], "revoked");
    // A fresh connection with the revoked certificate fails the TLS handshake itself.
    let fresh = app.device_client(Some((&key.key_pem(), &cert)));
    assert!(
        fresh.get(&trust_url).send().await.is_err(),
        "the handshake refuses a revoked certificate"
    );
    let entries = app.audit(&admin, "action=device&per_page=50").await;
    for action in ["device.enroll", "device.accept", "device.revoke"] {
        assert!(
            entries.iter().any(|e| e["action"] == action),
            "{action} audited"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let app = spawn_app().await;
    let other = spawn_app().await;
    let admin = other.admin_token().await;
    let created = other.enrollment_token(&admin, json!({"uses": 1})).await;
    let key = DeviceKey::new();
    let answer: Value = other
        .enroll(created["token"].as_str().expect("t"), &key, "rpi4")
        .await
        .json()
        .await
        .expect("json");
    let foreign = app.device_client(Some((
        &key.key_pem(),
        answer["certificate_pem"].as_str().expect("cert"),
    )));
    assert!(
        foreign
            .get(format!("{}/device/v1/trust", app.device_base))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_is_rate_limited_per_address() {
    let app = drover_tests::spawn_app_with(|s| s.enroll_rate_per_minute = 3).await;
    let admin = app.admin_token().await;
    let created = app.enrollment_token(&admin, json!({"uses": 10})).await;
    let token = created["token"].as_str().expect("token");
    for _ in 0..3 {
        assert_eq!(
            app.enroll(token, &DeviceKey::new(), "rpi4").await.status(),
            201
        );
    }
    let res = app.enroll(token, &DeviceKey::new(), "rpi4").await;
    assert!(res.headers().get("retry-after").is_some());
    problem(res, 429).await;
    assert_eq!(device_count(&app, &admin).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_devices_in_the_dashboard() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let created = app
        .enrollment_token(
            &admin,
            json!({"uses": 1, "approval": true, "tags": {"site": "<b>lab</b>"}}),
        )
        .await;
    let key = DeviceKey::new();
    let answer: Value = app
        .device_client(None)
        .post(format!("{}/device/v1/enroll", app.device_base))
        .json(&json!({"token": created["token"], "csr_pem": key.csr(), "device_type": "rpi4", "hostname": "<script>alert(1)</script>"}))
        .send()
        .await
        .expect("enroll")
        .json()
        .await
        .expect("json");
    let id = answer["device_id"].as_str().expect("id").to_string();

    let password = "operator-password-1";
    app.post_json(
        &admin,
        "/api/v1/users",
        &json!({"username": "opal", "password": password, "role": "operator"}),
    )
    .await;
    let browser = drover_tests::browser();
    let login = browser
        .get(app.url("/login"))
        .send()
        .await
        .expect("login")
        .text()
        .await
        .expect("html");
    let csrf = drover_tests::hidden_value(&login, "csrf_token").expect("csrf");
    browser
        .post(app.url("/login"))
        .form(&[
            ("username", "opal"),
            ("password", password),
            ("csrf_token", &csrf),
        ])
        .send()
        .await
        .expect("login");

    let list = browser
        .get(app.url("/devices?status=pending"))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("html");
    assert!(
        list.contains(&format!("/devices/{id}")),
        "the pending device is listed"
    );
    assert!(
        !list.contains("<script>alert(1)</script>"),
        "names are escaped: {}",
        &list[list.find("alert").unwrap_or(0).saturating_sub(40)..]
    );
    assert!(!list.contains("<b>lab</b>"), "tags are escaped");
    let detail = browser
        .get(app.url(&format!("/devices/{id}")))
        .send()
        .await
        .expect("detail")
        .text()
        .await
        .expect("html");
    assert!(
        detail.contains("Certificate serial") && detail.contains("Fingerprint"),
        "identity is shown"
    );
    let csrf = drover_tests::hidden_value(&detail, "csrf_token").expect("csrf");
    let res = browser
        .post(app.url(&format!("/devices/{id}/accept")))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("accept");
    assert_eq!(res.status(), 303);
    let device: Value = app.device(&admin, &id).await;
    assert_eq!(device["status"], "accepted");
    let res = browser
        .post(app.url(&format!("/devices/{id}")))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("name", "line-3-camera"),
            ("tags", "site=berlin\nline=3"),
        ])
        .send()
        .await
        .expect("update");
    assert_eq!(res.status(), 303);
    let res = browser
        .post(app.url(&format!("/devices/{id}")))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("name", "x"),
            ("tags", "not a pair"),
        ])
        .send()
        .await
        .expect("update");
    assert_eq!(res.status(), 400, "bad input is the operator's to fix");
    assert!(
        res.text().await.expect("html").contains("KEY=VALUE"),
        "the failed action shows the server's message"
    );
    let res = browser
        .post(app.url(&format!("/devices/{id}/revoke")))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("revoke");
    assert_eq!(res.status(), 303);
    let device: Value = app.device(&admin, &id).await;
    assert_eq!(device["status"], "revoked");
    assert_eq!(device["name"], "line-3-camera");
    assert_eq!(device["tags"]["line"], "3");
    let audit = app.audit(&admin, "actor=user:opal").await;
    for action in ["device.accept", "device.update", "device.revoke"] {
        assert!(
            audit.iter().any(|e| e["action"] == action),
            "{action} audited"
        );
    }
}
