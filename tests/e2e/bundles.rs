//! Artifacts, bundles, `.drover` files and payload downloads, as operators,
//! scripts and devices use them.

use std::collections::BTreeMap;
use std::io::Read;

use drover_proto::{
    DeviceFacts, Envelope, Manifest, PublicKey, SigningKey, Timestamp, TrustStore,
    signing_key_from_pem, verify_bundle,
};
use drover_tests::{TestApp, problem, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use sha2::Digest;

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Bytes that differ from test to test and are not all one value.
pub(crate) fn sample(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn upload(app: &TestApp, token: &str, name: &str, bytes: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/artifacts"))
        .bearer_auth(token)
        .header("X-Artifact-Name", name)
        .body(bytes)
        .send()
        .await
        .expect("upload")
}

pub(crate) async fn artifact(app: &TestApp, token: &str, name: &str, bytes: Vec<u8>) -> Value {
    let res = upload(app, token, name, bytes).await;
    assert_eq!(res.status(), 201, "upload {name}");
    res.json().await.expect("json")
}

pub(crate) fn bundle_body(name: &str, version: &str, artifacts: &[&Value]) -> Value {
    json!({
        "name": name, "kind": "model", "version": version, "device_types": ["rpi4"],
        "installer": "files", "expires_in_days": 30,
        "artifacts": artifacts.iter().map(|a| a["id"].clone()).collect::<Vec<_>>(),
    })
}

pub(crate) async fn create_bundle(app: &TestApp, token: &str, body: &Value) -> Value {
    let res = app.post_json(token, "/api/v1/bundles", body).await;
    let status = res.status();
    let answer: Value = res.json().await.expect("json");
    assert_eq!(status, 201, "create bundle: {answer}");
    answer
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn stamp(s: i64) -> String {
    Timestamp::from_unix_seconds(s).expect("time").to_string()
}

/// A manifest for one payload, signed offline with `key`.
fn presigned(
    key: &SigningKey,
    bundle_id: &str,
    version: &str,
    payload: (&str, usize, &str),
    expires_s: i64,
) -> Value {
    let manifest = json!({
        "schema": 1, "bundle_id": bundle_id, "name": "detector", "kind": "model",
        "version": version, "device_types": ["rpi4"], "installer": "files",
        "created_at": stamp(now_s() - 7200), "expires_at": stamp(expires_s),
        "allow_downgrade": false,
        "payloads": [{"name": payload.0, "size": payload.1, "sha256": payload.2, "type": "file"}],
    });
    let manifest = Manifest::from_json(manifest.to_string().as_bytes()).expect("valid manifest");
    let envelope = manifest.sign(key).expect("sign");
    serde_json::from_str(&envelope.to_json()).expect("json")
}

fn server_signing_key(app: &TestApp) -> SigningKey {
    let pem = std::fs::read_to_string(app.signing_key_path()).expect("signing key");
    signing_key_from_pem(&pem).expect("pem")
}

fn blob_files(app: &TestApp) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![app.data_dir().join("blobs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_streams_in_and_the_same_bytes_are_stored_once() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let bytes = sample(3 * 1024 * 1024 + 17, 1);
    // A chunked body of unknown length, as a pipe from a build job would send.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = bytes
        .chunks(100_000)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let res = app
        .client
        .post(app.url("/api/v1/artifacts"))
        .bearer_auth(&admin)
        .header("X-Artifact-Name", "model.onnx")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status(), 201);
    let first: Value = res.json().await.expect("json");
    assert_eq!(first["sha256"], sha_hex(&bytes));
    assert_eq!(first["size"], bytes.len());
    assert_eq!(first["name"], "model.onnx");
    assert!(first["id"].is_string() && first["created_at"].is_string());
    let hex = sha_hex(&bytes);
    let path = app
        .data_dir()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(&hex);
    assert_eq!(std::fs::read(&path).expect("blob on disk"), bytes);

    let res = upload(&app, &admin, "renamed.onnx", bytes.clone()).await;
    assert_eq!(
        res.status(),
        200,
        "the same bytes answer the existing artifact"
    );
    let again: Value = res.json().await.expect("json");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["name"], "model.onnx");
    assert_eq!(blob_files(&app).len(), 1, "one copy, no temporary files");

    let list: Value = app
        .get(&admin, "/api/v1/artifacts")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], first["id"]);
    assert_eq!(list["page"], 1);
    let created = app.audit(&admin, "action=artifact.create").await;
    assert!(!created.is_empty() && created[0]["outcome"] == "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_limit_is_413_and_leaves_nothing() {
    let app = spawn_app_with(|s| s.max_artifact_bytes = 4096).await;
    let admin = app.admin_token().await;
    let res = upload(&app, &admin, "big.bin", sample(5000, 2)).await;
    let body = problem(res, 413).await;
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("4096 bytes"),
        "{body}"
    );
    // Without a declared length the limit holds while reading.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..5)
        .map(|i| Ok(bytes::Bytes::from(sample(1000, i))))
        .collect();
    let res = app
        .client
        .post(app.url("/api/v1/artifacts"))
        .bearer_auth(&admin)
        .header("X-Artifact-Name", "big.bin")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("upload");
    problem(res, 413).await;
    let list: Value = app
        .get(&admin, "/api/v1/artifacts")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["total"], 0);
    assert!(blob_files(&app).is_empty(), "{:?}", blob_files(&app));
    let res = upload(&app, &admin, "small.bin", sample(4096, 3)).await;
    assert_eq!(res.status(), 201, "exactly the limit is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_names_must_be_file_names_and_viewers_cannot_upload() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for name in ["", "a/b.bin", "..\\x", "tab\there", &"x".repeat(201)] {
        let body = problem(upload(&app, &admin, name, b"x".to_vec()).await, 400).await;
        assert_eq!(body["field"], "X-Artifact-Name", "{name:?}: {body}");
    }
    let res = app
        .client
        .post(app.url("/api/v1/artifacts"))
        .bearer_auth(&admin)
        .body("x")
        .send()
        .await
        .expect("upload");
    let body = problem(res, 400).await;
    assert_eq!(body["field"], "X-Artifact-Name");

    let viewer = app.user_token(&admin, "vera", "viewer").await;
    problem(upload(&app, &viewer, "a.bin", b"x".to_vec()).await, 403).await;
    let a = artifact(&app, &admin, "a.bin", b"abc".to_vec()).await;
    let res = app
        .post_json(
            &viewer,
            "/api/v1/bundles",
            &bundle_body("det", "1.0.0", &[&a]),
        )
        .await;
    problem(res, 403).await;
    assert_eq!(app.get(&viewer, "/api/v1/artifacts").await.status(), 200);
    assert_eq!(app.get(&viewer, "/api/v1/bundles").await.status(), 200);
    problem(
        app.delete(
            &viewer,
            &format!("/api/v1/artifacts/{}", a["id"].as_str().expect("id")),
        )
        .await,
        403,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_bundle_verifies_against_the_fleet_trust_and_is_immutable() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let model = sample(70_000, 4);
    let a = artifact(&app, &admin, "model.onnx", model.clone()).await;
    let b = artifact(&app, &admin, "labels.txt", b"cat\ndog\n".to_vec()).await;
    let created = create_bundle(&app, &admin, &bundle_body("detector", "1.2.0", &[&a, &b])).await;
    assert_eq!(created["name"], "detector");
    assert_eq!(created["version"], "1.2.0");
    assert_eq!(created["payload_count"], 2);
    assert_eq!(created["total_size"], model.len() + 8);
    let id = created["id"].as_str().expect("id").to_string();
    let detail: Value = app
        .get(&admin, &format!("/api/v1/bundles/{id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(detail["manifest"]["bundle_id"], id);
    assert_eq!(detail["manifest"]["payloads"][0]["sha256"], sha_hex(&model));
    assert_eq!(detail["manifest"]["payloads"][1]["name"], "labels.txt");
    assert_eq!(detail["payloads"][0]["artifact_id"], a["id"]);

    // A device checks it against the trust document it got at enrollment.
    let token = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let res = app
        .enroll(
            token["token"].as_str().expect("token"),
            &drover_tests::DeviceKey::new(),
            "rpi4",
        )
        .await;
    let answer: Value = res.json().await.expect("json");
    let trust =
        Envelope::from_json(answer["trust_envelope"].to_string().as_bytes()).expect("trust");
    let root =
        PublicKey::from_base64(answer["root_public_key"].as_str().expect("root")).expect("root");
    let now = Timestamp::from_unix_seconds(now_s()).expect("now");
    let trusted = TrustStore::new(root)
        .accept_update(&trust, now)
        .expect("trust accepted");
    let envelope =
        Envelope::from_json(detail["envelope"].to_string().as_bytes()).expect("envelope");
    let installed = BTreeMap::new();
    let facts = DeviceFacts {
        device_type: "rpi4",
        installed: &installed,
        now,
        signed_time_floor: Timestamp::UNIX_EPOCH,
    };
    let verified =
        verify_bundle(trusted.current().expect("doc"), &envelope, &facts).expect("verifies");
    assert_eq!(verified.signer().to_string(), detail["signer_keyid"]);
    assert_eq!(verified.manifest().kind.as_str(), "model");
    let days = (verified.manifest().expires_at.unix_seconds()
        - verified.manifest().created_at.unix_seconds())
        / 86_400;
    assert_eq!(days, 30);

    let res = app
        .post_json(
            &admin,
            "/api/v1/bundles",
            &bundle_body("detector", "1.2.0", &[&b]),
        )
        .await;
    let body = problem(res, 409).await;
    assert!(
        body["detail"].as_str().expect("detail").contains("1.2.0"),
        "{body}"
    );
    // Build metadata does not make another version (semver precedence ignores it).
    let res = app
        .post_json(
            &admin,
            "/api/v1/bundles",
            &bundle_body("detector", "1.2.0+build.7", &[&b]),
        )
        .await;
    problem(res, 409).await;
    create_bundle(&app, &admin, &bundle_body("detector", "1.3.0", &[&b])).await;
    let list: Value = app
        .get(&admin, "/api/v1/bundles")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"][1]["id"], id);
    assert_eq!(app.audit(&admin, "action=bundle.create").await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_bundle_request_names_the_field() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let a = artifact(&app, &admin, "m.bin", b"abc".to_vec()).await;
    let good = bundle_body("det", "1.0.0", &[&a]);
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    for (body, field) in [
        (with("kind", json!("kernel")), "kind"),
        (with("version", json!("1.0")), "version"),
        (with("device_types", json!([])), "device_types"),
        (with("device_types", json!(["rpi 4"])), "device_types"),
        (with("installer", json!("apt")), "installer"),
        (with("name", json!("a/b")), "name"),
        (with("expires_in_days", json!(0)), "expires_in_days"),
        (with("artifacts", json!([])), "artifacts"),
        (with("colour", json!("red")), "colour"),
    ] {
        let res = app.post_json(&admin, "/api/v1/bundles", &body).await;
        let problem = problem(res, 400).await;
        assert_eq!(problem["field"], field, "{problem}");
    }
    let mut missing = good.clone();
    missing.as_object_mut().expect("object").remove("version");
    let body = problem(
        app.post_json(&admin, "/api/v1/bundles", &missing).await,
        400,
    )
    .await;
    assert_eq!(body["field"], "version");
    let res = app
        .post_json(
            &admin,
            "/api/v1/bundles",
            &with("artifacts", json!([a["id"], "no-such-id"])),
        )
        .await;
    let body = problem(res, 422).await;
    let detail = body["detail"].as_str().expect("detail");
    assert!(
        detail.contains("artifacts[1]") && detail.contains("no-such-id"),
        "{detail}"
    );
    let list: Value = app
        .get(&admin, "/api/v1/bundles")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_signed_envelope_is_accepted_only_when_it_verifies() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let bytes = sample(1234, 5);
    let hex = sha_hex(&bytes);
    artifact(&app, &admin, "weights.bin", bytes.clone()).await;
    let key = server_signing_key(&app);
    let later = now_s() + 86_400;

    let envelope = presigned(
        &key,
        "offline-1",
        "2.0.0",
        ("weights.bin", bytes.len(), &hex),
        later,
    );
    let res = app
        .post_json(&admin, "/api/v1/bundles", &json!({"envelope": envelope}))
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.expect("json");
    assert_eq!(created["id"], "offline-1");
    assert_eq!(created["envelope"], envelope, "stored as signed");
    assert_eq!(
        created["signer_keyid"],
        PublicKey::from(&key).key_id().to_string()
    );

    let refused = |body: Value| {
        let app = &app;
        let admin = &admin;
        async move {
            let res = app
                .post_json(admin, "/api/v1/bundles", &json!({"envelope": body}))
                .await;
            let body = problem(res, 422).await;
            body["detail"].as_str().expect("detail").to_string()
        }
    };
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let detail = refused(presigned(
        &stranger,
        "offline-2",
        "2.1.0",
        ("weights.bin", bytes.len(), &hex),
        later,
    ))
    .await;
    assert!(detail.contains("does not list"), "{detail}");

    let mut tampered = presigned(
        &key,
        "offline-3",
        "2.2.0",
        ("weights.bin", bytes.len(), &hex),
        later,
    );
    let payload = base64_decode(tampered["payload"].as_str().expect("payload"));
    let altered = String::from_utf8(payload)
        .expect("utf8")
        .replace("2.2.0", "9.9.9");
    tampered["payload"] = json!(base64_encode(altered.as_bytes()));
    let detail = refused(tampered).await;
    assert!(detail.contains("does not match"), "{detail}");

    let detail = refused(presigned(
        &key,
        "offline-4",
        "2.3.0",
        ("weights.bin", bytes.len(), &hex),
        now_s() - 60,
    ))
    .await;
    assert!(detail.contains("expired"), "{detail}");

    let other = sha_hex(b"never uploaded");
    let detail = refused(presigned(
        &key,
        "offline-5",
        "2.4.0",
        ("other.bin", 14, &other),
        later,
    ))
    .await;
    assert!(
        detail.contains("other.bin") && detail.contains("not an uploaded artifact"),
        "{detail}"
    );
    let detail = refused(presigned(
        &key,
        "offline-6",
        "2.5.0",
        ("weights.bin", bytes.len() + 1, &hex),
        later,
    ))
    .await;
    assert!(detail.contains("weights.bin"), "{detail}");

    let res = app
        .post_json(
            &admin,
            "/api/v1/bundles",
            &json!({"envelope": {"payloadType": "x"}}),
        )
        .await;
    assert_eq!(problem(res, 400).await["field"], "envelope");
    let res = app
        .post_json(
            &admin,
            "/api/v1/bundles",
            &json!({"envelope": envelope, "name": "x"}),
        )
        .await;
    assert_eq!(problem(res, 400).await["field"], "envelope");
    let list: Value = app
        .get(&admin, "/api/v1/bundles")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["total"], 1);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_in_use_cannot_be_deleted_until_its_bundle_is() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let a = artifact(&app, &admin, "fw.img", sample(2048, 6)).await;
    let a_id = a["id"].as_str().expect("id");
    let bundle = create_bundle(&app, &admin, &bundle_body("fw", "1.0.0", &[&a])).await;
    let b_id = bundle["id"].as_str().expect("id");
    let body = problem(
        app.delete(&admin, &format!("/api/v1/artifacts/{a_id}"))
            .await,
        409,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("fw 1.0.0"),
        "{body}"
    );
    assert_eq!(blob_files(&app).len(), 1);

    assert_eq!(
        app.delete(&admin, &format!("/api/v1/bundles/{b_id}"))
            .await
            .status(),
        204
    );
    problem(
        app.get(&admin, &format!("/api/v1/bundles/{b_id}")).await,
        404,
    )
    .await;
    assert_eq!(
        app.delete(&admin, &format!("/api/v1/artifacts/{a_id}"))
            .await
            .status(),
        204
    );
    assert!(
        blob_files(&app).is_empty(),
        "the bytes leave with their last artifact"
    );
    problem(
        app.delete(&admin, &format!("/api/v1/artifacts/{a_id}"))
            .await,
        404,
    )
    .await;
    assert_eq!(app.audit(&admin, "action=artifact.delete").await.len(), 3);
    assert_eq!(app.audit(&admin, "action=bundle.delete").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drover_file_holds_the_envelope_the_trust_document_and_every_payload() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let model = sample(100_003, 7);
    let a = artifact(&app, &admin, "model.onnx", model.clone()).await;
    let long_name = format!("{}.bin", "n".repeat(120));
    let b = artifact(&app, &admin, &long_name, b"tiny".to_vec()).await;
    let bundle = create_bundle(&app, &admin, &bundle_body("detector", "3.0.0", &[&a, &b])).await;
    let id = bundle["id"].as_str().expect("id");
    let res = app.get(&admin, &format!("/api/v1/bundles/{id}/file")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-disposition"],
        "attachment; filename=\"detector-3.0.0.drover\""
    );
    let declared: usize = res.headers()["content-length"]
        .to_str()
        .expect("length")
        .parse()
        .expect("number");
    let body = res.bytes().await.expect("body");
    assert_eq!(body.len(), declared);

    let mut archive = tar::Archive::new(&body[..]);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read");
        files.push((path, data));
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "envelope.json".to_string(),
            "trust.json".to_string(),
            "payloads/model.onnx".to_string(),
            format!("payloads/{long_name}"),
        ]
    );
    let envelope: Value = serde_json::from_slice(&files[0].1).expect("envelope json");
    assert_eq!(envelope, bundle["envelope"]);
    let trust = Envelope::from_json(&files[1].1).expect("trust envelope");
    assert_eq!(trust.payload_type(), "application/vnd.drover.trust+json");
    assert_eq!(sha_hex(&files[2].1), sha_hex(&model));
    assert_eq!(files[3].1, b"tiny");
    problem(app.get(&admin, "/api/v1/bundles/nope/file").await, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_download_only_payloads_of_bundles_offered_to_them_with_ranges() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let bytes = sample(200_000, 8);
    let hex = sha_hex(&bytes);
    let a = artifact(&app, &admin, "model.onnx", bytes.clone()).await;
    let bundle = create_bundle(&app, &admin, &bundle_body("detector", "1.0.0", &[&a])).await;
    let bundle_id = bundle["id"].as_str().expect("id");
    let one = app.enrolled_device(&admin).await;
    let other = app.enrolled_device(&admin).await;
    let client = app.device_client(Some((&one.key_pem, &one.cert_pem)));
    let url = format!("{}/device/v1/blobs/{hex}", app.device_base);
    let get = |range: Option<&str>| {
        let mut req = client.get(&url);
        if let Some(r) = range {
            req = req.header("Range", r);
        }
        req.send()
    };

    problem(get(None).await.expect("request"), 404).await;
    drover_server::bundles::offer(&app.store, &one.id, bundle_id, None)
        .await
        .expect("offer");

    let res = get(None).await.expect("request");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["accept-ranges"], "bytes");
    assert_eq!(res.headers()["etag"], format!("\"{hex}\""));
    assert_eq!(
        res.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    assert_eq!(res.bytes().await.expect("body").as_ref(), &bytes[..]);

    let res = get(Some("bytes=1000-1999")).await.expect("request");
    assert_eq!(res.status(), 206);
    assert_eq!(res.headers()["content-range"], "bytes 1000-1999/200000");
    assert_eq!(
        res.bytes().await.expect("body").as_ref(),
        &bytes[1000..2000]
    );
    let res = get(Some("bytes=199990-")).await.expect("request");
    assert_eq!(res.status(), 206);
    assert_eq!(res.bytes().await.expect("body").as_ref(), &bytes[199_990..]);
    let res = get(Some("bytes=-100")).await.expect("request");
    assert_eq!(res.status(), 206);
    assert_eq!(res.headers()["content-range"], "bytes 199900-199999/200000");
    assert_eq!(res.bytes().await.expect("body").as_ref(), &bytes[199_900..]);
    let res = get(Some("bytes=200000-")).await.expect("request");
    assert_eq!(res.status(), 416);
    assert_eq!(res.headers()["content-range"], "bytes */200000");
    // A multi-range request gets the whole payload.
    let res = get(Some("bytes=0-1,5-6")).await.expect("request");
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.expect("body").len(), bytes.len());
    let res = client
        .get(&url)
        .header("Range", "bytes=0-9")
        .header("If-Range", "\"something-else\"")
        .send()
        .await
        .expect("request");
    assert_eq!(
        res.status(),
        200,
        "If-Range with another ETag gets the whole payload"
    );

    let unknown = format!("{}/device/v1/blobs/{}", app.device_base, sha_hex(b"other"));
    problem(client.get(&unknown).send().await.expect("request"), 404).await;
    let bad = format!("{}/device/v1/blobs/not-a-digest", app.device_base);
    problem(client.get(&bad).send().await.expect("request"), 404).await;

    let stranger = app.device_client(Some((&other.key_pem, &other.cert_pem)));
    problem(stranger.get(&url).send().await.expect("request"), 404).await;
    let anonymous = app.device_client(None);
    problem(anonymous.get(&url).send().await.expect("request"), 401).await;

    // Deleting the bundle withdraws its offers.
    assert_eq!(
        app.delete(&admin, &format!("/api/v1/bundles/{bundle_id}"))
            .await
            .status(),
        204
    );
    problem(get(None).await.expect("request"), 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_signing_command_makes_an_envelope_the_server_accepts() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let bytes = sample(4321, 9);
    artifact(&app, &admin, "app.tar", bytes.clone()).await;
    let dir = app.scratch();
    let manifest = dir.join("manifest.json");
    std::fs::write(
        &manifest,
        json!({
            "schema": 1, "bundle_id": "cli-signed-1", "name": "app", "kind": "application",
            "version": "0.1.0", "device_types": ["rpi4"], "installer": "files",
            "created_at": stamp(now_s() - 60), "expires_at": stamp(now_s() + 86_400),
            "payloads": [{"name": "app.tar", "size": bytes.len(), "sha256": sha_hex(&bytes), "type": "tar"}],
        })
        .to_string(),
    )
    .expect("write manifest");
    let drover = |args: &[&std::ffi::OsStr]| {
        let mut cmd = std::process::Command::new(drover_tests::binary("drover-server", "drover"));
        for (k, _) in std::env::vars() {
            if k.starts_with("DROVER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("DROVER_DATA_DIR", dir.join("cli-data"));
        cmd.args(args).output().expect("run drover")
    };
    let key = app.signing_key_path();
    let out = drover(&[
        "bundle".as_ref(),
        "sign".as_ref(),
        "--key".as_ref(),
        key.as_os_str(),
        "--manifest".as_ref(),
        manifest.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envelope: Value = serde_json::from_slice(&out.stdout).expect("envelope JSON on stdout");
    let res = app
        .post_json(&admin, "/api/v1/bundles", &json!({"envelope": envelope}))
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.expect("json");
    assert_eq!(created["id"], "cli-signed-1");
    assert_eq!(created["kind"], "application");

    std::fs::write(&manifest, "{\"schema\": 1}").expect("write");
    let out = drover(&[
        "bundle".as_ref(),
        "sign".as_ref(),
        "--key".as_ref(),
        key.as_os_str(),
        "--manifest".as_ref(),
        manifest.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("manifest"));
}

/// Signs in through the login form like a browser; answers the cookie-keeping client.
async fn sign_in(app: &TestApp, username: &str, role: &str) -> reqwest::Client {
    let admin = app.admin_token().await;
    let password = format!("{username}-password-123");
    let res = app
        .post_json(
            &admin,
            "/api/v1/users",
            &json!({"username": username, "password": password, "role": role}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let client = drover_tests::browser();
    let page = client
        .get(app.url("/login"))
        .send()
        .await
        .expect("login page")
        .text()
        .await
        .expect("html");
    let csrf = drover_tests::hidden_value(&page, "csrf_token").expect("csrf");
    let res = client
        .post(app.url("/login"))
        .form(&[
            ("username", username),
            ("password", password.as_str()),
            ("csrf_token", &csrf),
        ])
        .send()
        .await
        .expect("login");
    assert_eq!(res.status(), 303);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_upload_create_inspect_download_and_delete_in_the_dashboard() {
    let app = spawn_app().await;
    let browser = sign_in(&app, "olga", "operator").await;
    let page = browser.get(app.url("/bundles")).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("No bundles yet") && html.contains("data-upload"),
        "{html}"
    );
    assert!(html.contains("/static/upload.js?v="));
    let csrf = drover_tests::hidden_value(&html, "csrf_token").expect("csrf");

    let upload = |name: &str, token: Option<&str>, body: Vec<u8>| {
        let mut req = browser
            .post(app.url("/bundles/artifacts"))
            .query(&[("name", name)])
            .body(body);
        if let Some(t) = token {
            req = req.header("X-CSRF-Token", t);
        }
        req.send()
    };
    let res = upload("model.onnx", None, b"weights".to_vec())
        .await
        .expect("upload");
    assert_eq!(res.status(), 403, "no CSRF token, no upload");
    let res = upload("<i>model.onnx", Some(&csrf), sample(5000, 10))
        .await
        .expect("upload");
    assert_eq!(res.status(), 201);
    let artifact: Value = res.json().await.expect("json");
    let res = upload("a/b", Some(&csrf), b"x".to_vec())
        .await
        .expect("upload");
    assert_eq!(res.status(), 400);

    let res = browser
        .post(app.url("/bundles"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("name", "detector"),
            ("kind", "model"),
            ("version", "1.0.0"),
            ("device_types", "rpi4, jetson-orin"),
            ("installer", "files"),
            ("expires_in_days", "90"),
            ("artifact", artifact["id"].as_str().expect("id")),
        ])
        .send()
        .await
        .expect("create");
    assert_eq!(res.status(), 303);
    let location = res.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert!(
        location.starts_with("/bundles/") && location.ends_with("?done=created"),
        "{location}"
    );
    let id = location
        .trim_start_matches("/bundles/")
        .trim_end_matches("?done=created")
        .to_string();

    let html = browser
        .get(app.url("/bundles"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(
        html.contains(&format!("href=\"/bundles/{id}\"")) && html.contains("1.0.0"),
        "{html}"
    );
    assert!(
        html.contains("&#60;i&#62;model.onnx") && !html.contains("<i>model"),
        "names are escaped: {}",
        html.lines()
            .filter(|l| l.contains("model.onnx"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let page = browser.get(app.url(&location)).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("Bundle created and signed."));
    assert!(html.contains(artifact["sha256"].as_str().expect("sha")));
    assert!(html.contains(&format!("/bundles/{id}/download")));
    assert!(html.contains("jetson-orin"));

    let res = browser
        .get(app.url(&format!("/bundles/{id}/download")))
        .send()
        .await
        .expect("download");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/x-tar");
    let body = res.bytes().await.expect("body");
    assert_eq!(
        tar::Archive::new(&body[..]).entries().expect("tar").count(),
        3
    );

    let res = browser
        .post(app.url(&format!("/bundles/{id}/delete")))
        .form(&[("csrf_token", "wrong")])
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), 403);
    let res = browser
        .post(app.url(&format!("/bundles/{id}/delete")))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/bundles?done=deleted");
    assert_eq!(
        browser
            .get(app.url(&location))
            .send()
            .await
            .expect("page")
            .status(),
        404
    );
    let res = browser
        .post(app.url(&format!(
            "/bundles/artifacts/{}/delete",
            artifact["id"].as_str().expect("id")
        )))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), 303);
    assert!(blob_files(&app).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_see_bundles_without_controls() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let a = artifact(&app, &admin, "m.bin", b"abc".to_vec()).await;
    let bundle = create_bundle(&app, &admin, &bundle_body("det", "1.0.0", &[&a])).await;
    let browser = sign_in(&app, "vera", "viewer").await;
    let html = browser
        .get(app.url("/bundles"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(
        html.contains("det") && !html.contains("data-upload") && !html.contains("Create and sign")
    );
    let html = browser
        .get(app.url(&format!("/bundles/{}", bundle["id"].as_str().expect("id"))))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(html.contains("Download .drover file") && !html.contains("Delete bundle"));
    let csrf = drover_tests::hidden_value(&html, "csrf_token").expect("csrf");
    let res = browser
        .post(app.url("/bundles/artifacts"))
        .query(&[("name", "x.bin")])
        .header("X-CSRF-Token", csrf)
        .body("x")
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status(), 403);
}
