//! Bundles from the server checked by the real agent (`drover-agent verify`
//! on the `.drover` file the server exports): key rotation keeps old bundles
//! installable, revocation makes them fail closed, and offline-root mode
//! works end to end without the root key on the server.

use std::path::{Path, PathBuf};
use std::process::Command;

use drover_tests::{TestApp, binary, spawn_app};
use serde_json::{Value, json};

use crate::bundles::{artifact, bundle_body, create_bundle, sample};

/// Runs `drover-agent verify --root-key ROOT FILE`; answers (success, output).
fn verify(root: &Path, file: &Path) -> (bool, String) {
    let mut cmd = Command::new(binary("drover-agent", "drover-agent"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DROVER") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg("verify")
        .arg("--root-key")
        .arg(root)
        .arg(file)
        .output()
        .expect("run drover-agent verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn root_file(app: &TestApp, token: &str) -> PathBuf {
    let trust: Value = app
        .get(token, "/api/v1/trust")
        .await
        .json()
        .await
        .expect("trust");
    let path = app.scratch().join("root.pub");
    std::fs::write(
        &path,
        trust["document"]["root_public_key"].as_str().expect("root"),
    )
    .expect("write root");
    path
}

async fn drover_file(app: &TestApp, token: &str, bundle: &Value, name: &str) -> PathBuf {
    let id = bundle["id"].as_str().expect("id");
    let res = app.get(token, &format!("/api/v1/bundles/{id}/file")).await;
    assert_eq!(res.status(), 200);
    let path = app.scratch().join(name);
    std::fs::write(&path, res.bytes().await.expect("bytes")).expect("write");
    path
}

fn keyid_of(bundle: &Value) -> String {
    bundle["signer_keyid"]
        .as_str()
        .or_else(|| bundle["signer"].as_str())
        .unwrap_or_else(|| panic!("signer key id in {bundle}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_bundles_installable_and_revocation_fails_them_closed() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let root = root_file(&app, &admin).await;
    let a = artifact(&app, &admin, "model.onnx", sample(50_000, 9)).await;
    let old = create_bundle(&app, &admin, &bundle_body("detector", "1.0.0", &[&a])).await;
    let (ok, out) = verify(
        &root,
        &drover_file(&app, &admin, &old, "old-v1.drover").await,
    );
    assert!(ok, "a fresh bundle verifies: {out}");

    let res = app
        .post_json(&admin, "/api/v1/keys/rotate", &json!({}))
        .await;
    assert_eq!(res.status(), 201);
    let (ok, out) = verify(
        &root,
        &drover_file(&app, &admin, &old, "old-v2.drover").await,
    );
    assert!(
        ok,
        "a bundle signed by the retired key still verifies: {out}"
    );
    let new = create_bundle(&app, &admin, &bundle_body("detector", "1.1.0", &[&a])).await;
    assert_ne!(
        keyid_of(&new),
        keyid_of(&old),
        "new bundles use the new key"
    );

    let path = format!("/api/v1/keys/{}/revoke", keyid_of(&old));
    assert_eq!(app.post_json(&admin, &path, &json!({})).await.status(), 200);
    let (ok, out) = verify(
        &root,
        &drover_file(&app, &admin, &old, "old-v3.drover").await,
    );
    assert!(!ok, "a bundle signed by a revoked key fails closed");
    assert!(
        out.to_lowercase().contains("revoked"),
        "names the reason: {out}"
    );
    let (ok, out) = verify(
        &root,
        &drover_file(&app, &admin, &new, "new-v3.drover").await,
    );
    assert!(ok, "bundles of the unrevoked key still verify: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_root_mode_signs_bundles_agents_accept_without_the_root_on_the_server() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let root = root_file(&app, &admin).await;
    let offline = app.scratch().join("offline-root.key");
    let drover = |args: &[&std::ffi::OsStr]| {
        let mut cmd = Command::new(binary("drover-server", "drover"));
        for (k, _) in std::env::vars() {
            if k.starts_with("DROVER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("DROVER_DATA_DIR", &app.settings.data_dir)
            .env("DROVER_DATABASE_URL", &app.settings.database_url)
            .args(args)
            .output()
            .expect("run drover")
    };
    let out = drover(&[
        "keys".as_ref(),
        "export-root".as_ref(),
        "--out".as_ref(),
        offline.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!app.settings.data_dir.join("keys/root.key").exists());

    // Rotation without the root: a draft, signed offline, published.
    let res = app
        .post_json(&admin, "/api/v1/keys/rotate", &json!({}))
        .await;
    assert_eq!(res.status(), 202);
    let change: Value = res.json().await.expect("json");
    let draft = app.scratch().join("draft.json");
    std::fs::write(&draft, change["draft"].to_string()).expect("draft");
    let out = drover(&[
        "trust".as_ref(),
        "sign".as_ref(),
        "--root-key".as_ref(),
        offline.as_os_str(),
        "--document".as_ref(),
        draft.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envelope: Value = serde_json::from_slice(&out.stdout).expect("envelope");
    assert_eq!(
        app.post_json(&admin, "/api/v1/trust", &envelope)
            .await
            .status(),
        201
    );

    // Bundles now carry the offline-signed trust and verify on a device.
    let a = artifact(&app, &admin, "app.bin", sample(20_000, 4)).await;
    let bundle = create_bundle(&app, &admin, &bundle_body("app", "2.0.0", &[&a])).await;
    assert_eq!(keyid_of(&bundle), change["keyid"].as_str().expect("keyid"));
    let (ok, out) = verify(
        &root,
        &drover_file(&app, &admin, &bundle, "app.drover").await,
    );
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_takes_a_trust_document_published_while_it_was_away() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let token = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let state = app.scratch().join("agent");
    let out = drover_tests::agent(&state)
        .args([
            "enroll",
            "--server",
            &app.device_base,
            "--token",
            token["token"].as_str().expect("token"),
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
    let held = || {
        let text = std::fs::read_to_string(state.join("trust.json")).expect("trust.json");
        let envelope = drover_proto::Envelope::from_json(text.as_bytes()).expect("envelope");
        drover_proto::TrustDocument::from_json(envelope.payload())
            .expect("document")
            .version
    };
    assert_eq!(held(), 1);
    // Rotated while the agent is not running: the refresh_trust command finds no one.
    let res = app
        .post_json(&admin, "/api/v1/keys/rotate", &json!({}))
        .await;
    assert_eq!(res.status(), 201);
    // Past the server's announcement (it looks for new documents every 5 s).
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let mut daemon = drover_tests::agent(&state).arg("run").spawn().expect("run");
    let took =
        drover_tests::wait_until(std::time::Duration::from_secs(15), || async { held() == 2 })
            .await;
    let _ = daemon.kill().await;
    assert!(
        took,
        "the agent takes the newer trust document when it starts"
    );
}
