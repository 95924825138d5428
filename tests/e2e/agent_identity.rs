//! The real `drover-agent` binary against a real server over real TLS:
//! enrollment with CA pinning, concurrency, crash retry, renewal and recovery.

use std::path::Path;
use std::time::Duration;

use drover_tests::{TestApp, agent, spawn_app, spawn_app_with, wait_until};
use serde_json::{Value, json};

async fn enroll(app: &TestApp, state: &Path, token: &str, ca_hash: &str) -> std::process::Output {
    agent(state)
        .args([
            "enroll",
            "--server",
            &app.device_base,
            "--token",
            token,
            "--ca-hash",
            ca_hash,
        ])
        .args([
            "--device-type",
            "rpi4",
            "--tag",
            "site=lab",
            "--hostname",
            "bench-pi",
        ])
        .output()
        .await
        .expect("run agent")
}

async fn status(state: &Path) -> Value {
    let out = agent(state)
        .args(["status", "--json"])
        .output()
        .await
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status json")
}

async fn certificates(app: &TestApp, admin: &str, id: &str) -> Vec<Value> {
    let res = app
        .get(admin, &format!("/api/v1/devices/{id}/certificates"))
        .await;
    res.json().await.expect("json")
}

fn read(state: &Path, name: &str) -> String {
    std::fs::read_to_string(state.join(name)).expect("state file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolls_and_reports_its_identity() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let token = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let state = app.scratch().join("agent");
    let out = enroll(
        &app,
        &state,
        token["token"].as_str().expect("t"),
        &app.ca_hash,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = status(&state).await;
    let id = s["device_id"].as_str().expect("device_id").to_string();
    assert_eq!(s["server"], app.device_base.as_str());
    assert_eq!(s["mqtt_topic_prefix"], format!("drover/v1/devices/{id}/"));
    assert!(
        s["mqtt_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("mqtts://"))
    );
    assert!(
        s["certificate_expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let device: Value = app.device(&admin, &id).await;
    assert_eq!(device["status"], "accepted");
    assert_eq!(device["hostname"], "bench-pi");
    assert_eq!(device["tags"]["site"], "lab");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("device.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is private");
    }
    assert!(read(&state, "agent.toml").contains("heartbeat_s"));
    // The key never left the device: the server holds only its digest.
    let key_pem = read(&state, "device.key");
    let audit = app.audit(&admin, "per_page=500").await;
    assert!(
        !serde_json::to_string(&audit)
            .expect("json")
            .contains(key_pem.lines().nth(1).expect("line"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_agents_on_a_fifty_use_token_and_the_fifty_first_is_told_why() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let token = app.enrollment_token(&admin, json!({"uses": 50})).await;
    let secret = token["token"].as_str().expect("t").to_string();
    let mut runs = Vec::new();
    for i in 0..51 {
        let state = app.scratch().join(format!("agent-{i}"));
        let mut cmd = agent(&state);
        cmd.args([
            "enroll",
            "--server",
            &app.device_base,
            "--token",
            &secret,
            "--ca-hash",
            &app.ca_hash,
        ]);
        runs.push(tokio::spawn(
            async move { cmd.output().await.expect("run") },
        ));
    }
    let mut ok = 0;
    let mut refused = Vec::new();
    for r in runs {
        let out = r.await.expect("join");
        if out.status.success() {
            ok += 1;
        } else {
            refused.push(String::from_utf8_lossy(&out.stderr).to_string());
        }
    }
    assert_eq!(ok, 50, "{refused:?}");
    assert_eq!(refused.len(), 1);
    assert!(refused[0].contains("used up"), "{}", refused[0]);
    let list: Value = app
        .get(&admin, "/api/v1/devices?per_page=100")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["total"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_interrupted_before_it_was_saved_completes_as_the_same_device() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let token = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let secret = token["token"].as_str().expect("t");
    let state = app.scratch().join("agent");
    assert!(
        enroll(&app, &state, secret, &app.ca_hash)
            .await
            .status
            .success()
    );
    let first = status(&state).await["device_id"].clone();
    // The agent died after the server answered but before it committed the answer.
    std::fs::remove_file(state.join("enrollment.json")).expect("rm");
    std::fs::remove_file(state.join("device.crt")).expect("rm");
    let out = enroll(&app, &state, secret, &app.ca_hash).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status(&state).await["device_id"], first);
    let list: Value = app
        .get(&admin, "/api/v1/devices")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["total"], 1, "one device, not two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_hash_is_refused_before_the_token_is_sent() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let token = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let state = app.scratch().join("agent");
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = enroll(&app, &state, token["token"].as_str().expect("t"), &wrong).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&"ab".repeat(32)) && err.contains(app.ca_hash.trim_start_matches("sha256:")),
        "{err}"
    );
    assert!(
        !err.contains(token["token"].as_str().expect("t")),
        "the token is not echoed"
    );
    let tokens: Value = app
        .get(&admin, "/api/v1/enrollment-tokens")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(tokens["items"][0]["uses_left"], 1);
    assert!(
        app.audit(&admin, "action=device.enroll").await.is_empty(),
        "the server never saw an enrollment"
    );
    let out = agent(&state)
        .args([
            "enroll",
            "--server",
            &app.device_base,
            "--token",
            "x",
            "--ca-hash",
            "md5:1234",
        ])
        .output()
        .await
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed pin is a usage error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_agent_renews_before_expiry_without_a_gap() {
    let app = spawn_app_with(|s| s.device_cert_lifetime = Duration::from_secs(15)).await;
    let admin = app.admin_token().await;
    let token = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let state = app.scratch().join("agent");
    assert!(
        enroll(
            &app,
            &state,
            token["token"].as_str().expect("t"),
            &app.ca_hash
        )
        .await
        .status
        .success()
    );
    let id = status(&state).await["device_id"]
        .as_str()
        .expect("id")
        .to_string();
    let first_cert = read(&state, "device.crt");
    let mut daemon = agent(&state)
        .env("DROVER_AGENT_LOG", "info")
        .arg("run")
        .spawn()
        .expect("run");

    let renewed = wait_until(Duration::from_secs(30), || async {
        certificates(&app, &admin, &id)
            .await
            .iter()
            .any(|c| c["issued_for"] == "renew")
    })
    .await;
    assert!(renewed, "the agent renewed its certificate");
    // Past the first certificate's end, the agent's current certificate still works.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let current = read(&state, "device.crt");
    assert_ne!(current, first_cert);
    let client = app.device_client(Some((&read(&state, "device.key"), &current)));
    let res = client
        .get(format!("{}/device/v1/trust", app.device_base))
        .send()
        .await
        .expect("trust");
    assert_eq!(res.status(), 200);
    let stale = app.device_client(Some((&read(&state, "device.key"), &first_cert)));
    assert!(
        stale
            .get(format!("{}/device/v1/trust", app.device_base))
            .send()
            .await
            .is_err(),
        "the first one has expired"
    );

    let pid = daemon.id().expect("pid");
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), daemon.wait())
        .await
        .expect("stops")
        .expect("wait");
    assert!(exit.success(), "a clean stop on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_recovered_within_the_grace_period() {
    let app = spawn_app_with(|s| s.device_cert_lifetime = Duration::from_secs(4)).await;
    let admin = app.admin_token().await;
    let token = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let state = app.scratch().join("agent");
    assert!(
        enroll(
            &app,
            &state,
            token["token"].as_str().expect("t"),
            &app.ca_hash
        )
        .await
        .status
        .success()
    );
    let id = status(&state).await["device_id"]
        .as_str()
        .expect("id")
        .to_string();
    // The device sat on a shelf past its certificate's end.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut daemon = agent(&state).arg("run").spawn().expect("run");
    let recovered = wait_until(Duration::from_secs(20), || async {
        certificates(&app, &admin, &id)
            .await
            .iter()
            .any(|c| c["issued_for"] == "recover")
    })
    .await;
    assert!(recovered, "the agent recovered by itself");
    let _ = daemon.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_is_refused_after_the_grace_period_and_for_a_revoked_device() {
    let app = spawn_app_with(|s| {
        s.device_cert_lifetime = Duration::from_secs(2);
        s.recovery_grace = Duration::from_secs(1);
    })
    .await;
    let admin = app.admin_token().await;
    let token = app.enrollment_token(&admin, json!({"uses": 2})).await;
    let secret = token["token"].as_str().expect("t");
    let late = drover_tests::DeviceKey::new();
    let late_answer: Value = app
        .enroll(secret, &late, "rpi4")
        .await
        .json()
        .await
        .expect("json");
    let revoked = drover_tests::DeviceKey::new();
    let revoked_answer: Value = app
        .enroll(secret, &revoked, "rpi4")
        .await
        .json()
        .await
        .expect("json");
    let revoked_id = revoked_answer["device_id"].as_str().expect("id");
    app.post_json(
        &admin,
        &format!("/api/v1/devices/{revoked_id}/revoke"),
        &json!({}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let recover = |key: &drover_tests::DeviceKey, answer: &Value| {
        app.device_client(None)
            .post(format!("{}/device/v1/recover", app.device_base))
            .json(&json!({"certificate_pem": answer["certificate_pem"], "csr_pem": key.csr()}))
            .send()
    };
    let body = drover_tests::problem(recover(&late, &late_answer).await.expect("send"), 403).await;
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("expired more than"),
        "{body}"
    );
    let body =
        drover_tests::problem(recover(&revoked, &revoked_answer).await.expect("send"), 403).await;
    assert!(
        body["detail"].as_str().expect("detail").contains("revoked"),
        "{body}"
    );
    // A CSR for another key is refused too: recovery proves possession of the same key.
    let body = drover_tests::problem(
        recover(&drover_tests::DeviceKey::new(), &late_answer)
            .await
            .expect("send"),
        403,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("same key")
            || body["detail"].as_str().expect("detail").contains("expired")
    );
    let body = drover_tests::problem(
        app.device_client(None)
            .post(format!("{}/device/v1/recover", app.device_base))
            .json(&json!({"certificate_pem": "nonsense", "csr_pem": late.csr()}))
            .send()
            .await
            .expect("send"),
        400,
    )
    .await;
    assert_eq!(body["field"], "certificate_pem");
}
