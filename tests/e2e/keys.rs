//! Signing keys and trust documents: rotation and revocation through the
//! API, devices told to refresh their trust, and offline-root mode end to
//! end (root exported with the CLI, documents signed offline and published).
//! Every document the server publishes must pass the agent's own checks
//! (proto's `TrustStore`).

use std::process::Command;
use std::time::Duration;

use drover_proto::{Envelope, PublicKey, Timestamp, TrustDocument, TrustStore};
use drover_tests::{TestApp, binary, mqtt_connect, problem, spawn_app};
use rumqttc::{Event, Packet, QoS};
use serde_json::{Value, json};

fn drover(app: &TestApp) -> Command {
    let mut cmd = Command::new(binary("drover-server", "drover"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DROVER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("DROVER_DATA_DIR", &app.settings.data_dir)
        .env("DROVER_DATABASE_URL", &app.settings.database_url);
    cmd
}

fn envelope_of(trust: &Value) -> Envelope {
    Envelope::from_json(trust["envelope"].to_string().as_bytes()).expect("envelope")
}

fn now() -> Timestamp {
    Timestamp::from_unix_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64,
    )
    .expect("now")
}

async fn trust(app: &TestApp, token: &str) -> Value {
    let res = app.get(token, "/api/v1/trust").await;
    assert_eq!(res.status(), 200);
    res.json().await.expect("json")
}

async fn keys(app: &TestApp, token: &str) -> Vec<Value> {
    let res = app.get(token, "/api/v1/keys").await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.expect("json");
    v["items"].as_array().expect("items").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_revocation_publish_documents_agents_accept_and_devices_are_told() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let viewer = app.user_token(&admin, "vera", "viewer").await;

    let first = trust(&app, &viewer).await;
    assert_eq!(first["version"], 1);
    let root = PublicKey::from_base64(first["document"]["root_public_key"].as_str().expect("root"))
        .expect("root key");
    let pinned = TrustStore::new(root)
        .accept_update(&envelope_of(&first), now())
        .expect("the first document passes the agent's checks");
    let listed = keys(&app, &viewer).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "active");
    assert_eq!(listed[0]["held_here"], true);
    let old = listed[0]["keyid"].as_str().expect("keyid").to_string();

    // A connected device hears about the next document.
    let d = app.enrolled_device(&admin).await;
    let (client, mut eventloop) = mqtt_connect(app.mqtt_options(&d.id, &d))
        .await
        .expect("connects");
    client
        .subscribe(d.topic("commands"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let told = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let v: Value = serde_json::from_slice(&p.payload).expect("command json");
                    if v["type"] == "refresh_trust" {
                        return true;
                    }
                }
                Ok(Ok(_)) => {}
                _ => return false,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Viewers may not rotate; admins may.
    assert_eq!(
        app.post_json(&viewer, "/api/v1/keys/rotate", &json!({}))
            .await
            .status(),
        403
    );
    let res = app
        .post_json(&admin, "/api/v1/keys/rotate", &json!({}))
        .await;
    assert_eq!(res.status(), 201);
    let rotated: Value = res.json().await.expect("json");
    assert_eq!(rotated["published"], true);
    let new = rotated["keyid"].as_str().expect("new keyid").to_string();
    assert_ne!(new, old);
    let second = trust(&app, &viewer).await;
    assert_eq!(second["version"], 2);
    let pinned = pinned
        .accept_update(&envelope_of(&second), now())
        .expect("an agent takes the rotated document");
    let doc = pinned.current().expect("held").document();
    let status = |id: &str| {
        doc.signing_keys
            .iter()
            .find(|k| k.keyid.to_string() == id)
            .map(|k| format!("{:?}", k.status))
    };
    assert_eq!(
        status(&old).as_deref(),
        Some("Retired"),
        "old keys still verify"
    );
    assert_eq!(status(&new).as_deref(), Some("Active"));
    assert!(
        told.await.expect("join"),
        "the device was told to refresh its trust"
    );

    // The device API serves the new document.
    let served: Value = app
        .device_client(Some((&d.cert_pem, &d.key_pem)))
        .get(format!("{}/device/v1/trust", app.device_base))
        .send()
        .await
        .expect("trust")
        .json()
        .await
        .expect("json");
    assert_eq!(served, second["envelope"]);

    // Revocation: bad ids, unknown ids, then the real one, then again.
    let bad = app
        .post_json(&admin, "/api/v1/keys/not-hex/revoke", &json!({}))
        .await;
    assert!(
        problem(bad, 400).await["detail"]
            .as_str()
            .expect("detail")
            .contains("keyid")
    );
    let unknown = format!("/api/v1/keys/{}/revoke", "ab".repeat(32));
    problem(app.post_json(&admin, &unknown, &json!({})).await, 404).await;
    let path = format!("/api/v1/keys/{old}/revoke");
    assert_eq!(app.post_json(&admin, &path, &json!({})).await.status(), 200);
    problem(app.post_json(&admin, &path, &json!({})).await, 409).await;
    let third = trust(&app, &viewer).await;
    let pinned = pinned
        .accept_update(&envelope_of(&third), now())
        .expect("an agent takes the revoking document");
    let doc: &TrustDocument = pinned.current().expect("held").document();
    assert!(doc.revoked_keyids.iter().any(|k| k.to_string() == old));
    assert!(doc.signing_keys.iter().all(|k| k.keyid.to_string() != old));
    let listed = keys(&app, &viewer).await;
    assert!(
        listed
            .iter()
            .any(|k| k["keyid"] == old.as_str() && k["status"] == "revoked")
    );

    // Revoking the active key rotates to a fresh one.
    let path = format!("/api/v1/keys/{new}/revoke");
    assert_eq!(app.post_json(&admin, &path, &json!({})).await.status(), 200);
    let listed = keys(&app, &viewer).await;
    let active: Vec<_> = listed.iter().filter(|k| k["status"] == "active").collect();
    assert_eq!(active.len(), 1);
    assert_ne!(active[0]["keyid"], new.as_str());
    assert_eq!(active[0]["held_here"], true);

    // The audit log names every change.
    let audit = app.audit(&admin, "action=keys.revoke").await;
    assert_eq!(
        audit.iter().filter(|e| e["outcome"] == "success").count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_root_mode_works_end_to_end_without_the_root_key_on_the_server() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let first = trust(&app, &admin).await;
    let root_pub =
        PublicKey::from_base64(first["document"]["root_public_key"].as_str().expect("root"))
            .expect("root key");
    let pinned = TrustStore::new(root_pub)
        .accept_update(&envelope_of(&first), now())
        .expect("first");

    let offline = app.scratch().join("root.key");
    let out = drover(&app)
        .args(["keys", "export-root", "--out"])
        .arg(&offline)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!app.settings.data_dir.join("keys/root.key").exists());
    assert!(offline.exists());
    let again = drover(&app)
        .args(["keys", "export-root", "--out"])
        .arg(app.scratch().join("again.key"))
        .output()
        .expect("run");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exported"));

    // The server can no longer sign a trust change: it hands out a draft.
    let res = app
        .post_json(&admin, "/api/v1/keys/rotate", &json!({}))
        .await;
    assert_eq!(res.status(), 202);
    let change: Value = res.json().await.expect("json");
    assert_eq!(change["published"], false);
    assert_eq!(trust(&app, &admin).await["version"], 1, "nothing published");
    let draft = app.scratch().join("draft.json");
    std::fs::write(&draft, change["draft"].to_string()).expect("draft");

    // A non-root key cannot sign it; the root (offline) can.
    let stranger = app.scratch().join("stranger.key");
    let key = drover_proto::SigningKey::from_bytes(&[7u8; 32]);
    std::fs::write(
        &stranger,
        drover_proto::signing_key_to_pem(&key)
            .expect("pem")
            .as_bytes(),
    )
    .expect("write");
    let refused = drover(&app)
        .args(["trust", "sign", "--root-key"])
        .arg(&stranger)
        .arg("--document")
        .arg(&draft)
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("root"));
    // Forge the envelope anyway: the server refuses what agents would refuse.
    let doc = TrustDocument::from_json(change["draft"].to_string().as_bytes()).expect("doc");
    let forged: Value =
        serde_json::from_str(&doc.sign(&key).expect("sign").to_json()).expect("json");
    let res = app.post_json(&admin, "/api/v1/trust", &forged).await;
    problem(res, 400).await;

    let signed = drover(&app)
        .args(["trust", "sign", "--root-key"])
        .arg(&offline)
        .arg("--document")
        .arg(&draft)
        .output()
        .expect("run");
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let envelope: Value = serde_json::from_slice(&signed.stdout).expect("envelope json");
    let res = app.post_json(&admin, "/api/v1/trust", &envelope).await;
    assert_eq!(res.status(), 201);
    let second = trust(&app, &admin).await;
    assert_eq!(second["version"], 2);
    let pinned = pinned
        .accept_update(&envelope_of(&second), now())
        .expect("agents take the offline-signed document");
    assert_eq!(pinned.current().expect("held").document().version, 2);

    // Replays: the same document again, and the older one.
    problem(app.post_json(&admin, "/api/v1/trust", &envelope).await, 409).await;
    let res = app
        .post_json(&admin, "/api/v1/trust", &first["envelope"])
        .await;
    let p = problem(res, 400).await;
    assert!(
        p["detail"].as_str().expect("detail").contains("version"),
        "{p}"
    );
    problem(
        app.post_json(&admin, "/api/v1/trust", &json!({"payload": 1}))
            .await,
        400,
    )
    .await;

    // The key the draft introduced is on the server and now active: the server signs with it.
    let listed = keys(&app, &admin).await;
    assert!(listed.iter().any(|k| k["keyid"] == change["keyid"]
        && k["status"] == "active"
        && k["held_here"] == true));
}
