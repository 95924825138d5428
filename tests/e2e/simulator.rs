//! Issue 9 end to end: `drover-agent simulate` runs real simulated devices against a real server:
//! each enrolls with its own key and certificate, reports readings and health over its own MQTT
//! session, comes back as itself after a restart, and takes real signed bundles through the
//! agent's update engine (committing, reverting a `--fail-versions` version, and shifting a metric
//! on a `--degrade-versions` version).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use drover_proto::Command;
use drover_tests::{TestApp, binary, spawn_app, wait_until};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;

use crate::agent_updates::{model_bundle, wait_update};

/// A running `drover-agent simulate`.
pub(crate) struct Simulator {
    child: tokio::process::Child,
}

impl Simulator {
    /// Starts `devices` simulated `rpi4` devices with state in `root` and the extra `flags`.
    pub(crate) fn start(
        app: &TestApp,
        token: &str,
        root: &Path,
        devices: u32,
        flags: &[&str],
    ) -> Simulator {
        let mut cmd = tokio::process::Command::new(binary("drover-agent", "drover-agent"));
        for (k, _) in std::env::vars() {
            if k.starts_with("DROVER_") {
                cmd.env_remove(k);
            }
        }
        cmd.args([
            "simulate",
            "--server",
            &app.device_base,
            "--token",
            token,
            "--ca-hash",
            &app.ca_hash,
            "--devices",
            &devices.to_string(),
            "--device-type",
            "rpi4",
            "--heartbeat",
            "1",
            "--state-dir",
        ])
        .arg(root)
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        Simulator {
            child: cmd.spawn().expect("start drover-agent simulate"),
        }
    }

    /// Kills it with SIGKILL: no goodbye, only the broker's last wills.
    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops it with SIGTERM; answers its exit code, stdout (the summary) and stderr.
    pub(crate) async fn stop(mut self) -> (Option<i32>, String, String) {
        let pid = self.child.id().expect("a running simulator");
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the simulator stops on SIGTERM")
            .expect("wait for the simulator");
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out).await;
        }
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_string(&mut err).await;
        }
        (status.code(), out, err)
    }
}

/// The accepted devices the server lists, by id, with `presence` when given.
pub(crate) async fn devices(app: &TestApp, admin: &str, presence: Option<&str>) -> Vec<Value> {
    let query = presence.map_or(String::new(), |p| format!("&presence={p}"));
    let list: Value = app
        .get(admin, &format!("/api/v1/devices?limit=100{query}"))
        .await
        .json()
        .await
        .expect("device list");
    list["items"].as_array().expect("items").clone()
}

/// The raw points of `metric` a device reported in the last hour.
async fn points(app: &TestApp, admin: &str, id: &str, metric: &str) -> Vec<f64> {
    let series: Value = app
        .get(
            admin,
            &format!("/api/v1/devices/{id}/telemetry?metric={metric}"),
        )
        .await
        .json()
        .await
        .expect("telemetry");
    series["points"]
        .as_array()
        .map(|p| p.iter().filter_map(|x| x["value"].as_f64()).collect())
        .unwrap_or_default()
}

fn ids(list: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = list
        .iter()
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_simulated_devices_enroll_report_and_come_back_as_themselves() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    // Exactly twenty uses: a restart that enrolled anew would run out.
    let token = app.enrollment_token(&admin, json!({"uses": 20})).await;
    let token = token["token"].as_str().expect("token").to_owned();
    let root: PathBuf = app.scratch().join("fleet");
    let sim = Simulator::start(&app, &token, &root, 20, &["--rate", "2"]);
    let all_online = wait_until(Duration::from_secs(60), || async {
        devices(&app, &admin, Some("online")).await.len() == 20
    })
    .await;
    assert!(all_online, "twenty devices online");
    let first = ids(&devices(&app, &admin, None).await);
    assert_eq!(first.len(), 20);
    // Every device has its own certificate, readings of the four metrics, and health.
    for id in &first {
        let reported = wait_until(Duration::from_secs(20), || async {
            for metric in ["temp_c", "cpu_pct", "inference_ms", "confidence"] {
                if points(&app, &admin, id, metric).await.is_empty() {
                    return false;
                }
            }
            app.get(&admin, &format!("/api/v1/devices/{id}/health"))
                .await
                .status()
                == 200
        })
        .await;
        assert!(reported, "{id} reports readings and health");
        let certs: Value = app
            .get(&admin, &format!("/api/v1/devices/{id}/certificates"))
            .await
            .json()
            .await
            .expect("certificates");
        assert_eq!(certs.as_array().map(Vec::len), Some(1), "{certs}");
    }
    let hostnames: Vec<String> = devices(&app, &admin, None)
        .await
        .iter()
        .filter_map(|d| d["hostname"].as_str().map(str::to_owned))
        .collect();
    assert!(hostnames.iter().any(|h| h == "sim-00000"), "{hostnames:?}");
    let confidence = points(&app, &admin, &first[0], "confidence").await;
    assert!(confidence.iter().all(|c| (0.0..=1.0).contains(c)));

    let (code, out, err) = sim.stop().await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("simulated 20 devices for ")
            && out.contains(", 20 at once (20 enrolled now, 0 reused, 0 failed)"),
        "{out}"
    );
    let gone = wait_until(Duration::from_secs(20), || async {
        devices(&app, &admin, Some("online")).await.is_empty()
    })
    .await;
    assert!(gone, "stopped devices say goodbye and go offline");

    // Restarted on the same state directory: the same twenty devices, no new enrollment.
    let sim = Simulator::start(&app, &token, &root, 20, &["--rate", "2"]);
    let back = wait_until(Duration::from_secs(60), || async {
        devices(&app, &admin, Some("online")).await.len() == 20
    })
    .await;
    assert!(back, "the same devices come back online");
    assert_eq!(ids(&devices(&app, &admin, None).await), first);
    let (code, out, err) = sim.stop().await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("(0 enrolled now, 20 reused, 0 failed)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_install_revert_and_degrade_through_the_update_engine() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let token = app.enrollment_token(&admin, json!({"uses": 2})).await;
    let token = token["token"].as_str().expect("token").to_owned();
    let root = app.scratch().join("fleet");
    let good = model_bundle(&app, &admin, "1.5.0", b"weights that run slow".to_vec()).await;
    let bad = model_bundle(&app, &admin, "2.0.0", b"weights that fail".to_vec()).await;
    let sim = Simulator::start(
        &app,
        &token,
        &root,
        2,
        &[
            "--rate",
            "5",
            "--noise",
            "0",
            "--anomaly-rate",
            "0",
            "--fail-versions",
            "2.0.0",
            "--degrade-versions",
            "1.5.0:inference_ms=3",
        ],
    );
    let online = wait_until(Duration::from_secs(60), || async {
        devices(&app, &admin, Some("online")).await.len() == 2
    })
    .await;
    assert!(online, "two devices online");
    let list = devices(&app, &admin, None).await;
    let by_host = |h: &str| {
        list.iter()
            .find(|d| d["hostname"] == h)
            .and_then(|d| d["id"].as_str())
            .expect("device by host name")
            .to_owned()
    };
    let (a, b) = (by_host("sim-00000"), by_host("sim-00001"));
    // Readings before the update: one steady inference time (no noise, no anomalies).
    let before = wait_until(Duration::from_secs(20), || async {
        points(&app, &admin, &a, "inference_ms").await.len() >= 3
    })
    .await;
    assert!(before);
    let plain = points(&app, &admin, &a, "inference_ms").await[0];

    for (device, bundle_id, rollout) in [(&a, &good, "r-good"), (&b, &bad, "r-bad")] {
        drover_server::bundles::offer(&app.store, device, bundle_id, Some(rollout))
            .await
            .expect("offer");
        app.mqtt
            .send_command(
                device,
                &Command::UpdateAvailable {
                    rollout_id: rollout.into(),
                },
            )
            .await
            .expect("send update_available");
    }
    let done = wait_update(&app, &a, "r-good", "succeeded").await;
    assert_eq!(done.version.as_deref(), Some("1.5.0"));
    let reverted = wait_update(&app, &b, "r-bad", "reverted").await;
    assert!(
        reverted.detail.contains("health check"),
        "the reason names the health check: {}",
        reverted.detail
    );
    // The device that reverted still runs nothing new; the one that committed says so in health.
    let shows = wait_until(Duration::from_secs(10), || async {
        app.device(&admin, &a)
            .await
            .to_string()
            .contains("\"1.5.0\"")
    })
    .await;
    assert!(shows, "the committed version is reported");
    assert!(!app.device(&admin, &b).await.to_string().contains("2.0.0"));

    // On 1.5.0 the inference time is three times what it was.
    let degraded = wait_until(Duration::from_secs(20), || async {
        points(&app, &admin, &a, "inference_ms")
            .await
            .iter()
            .any(|v| (v / plain - 3.0).abs() < 0.01)
    })
    .await;
    assert!(degraded, "inference_ms shifts by the factor on 1.5.0");
    let values = points(&app, &admin, &a, "inference_ms").await;
    assert!(
        values
            .iter()
            .all(|v| (v / plain - 1.0).abs() < 0.01 || (v / plain - 3.0).abs() < 0.01),
        "only the plain and the degraded value: {values:?}"
    );
    let other = points(&app, &admin, &b, "inference_ms").await;
    assert!(
        other.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-9),
        "the reverted device's metric never moved: {other:?}"
    );

    let (code, out, err) = sim.stop().await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("updates: 1 succeeded, 1 reverted, 0 failed"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_simulator_flags_and_a_wrong_pin_are_clear_errors() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let token = app.enrollment_token(&admin, json!({"uses": 5})).await;
    let token = token["token"].as_str().expect("token").to_owned();
    let root = app.scratch().join("fleet");
    let run = |extra: Vec<String>| {
        let mut cmd = std::process::Command::new(binary("drover-agent", "drover-agent"));
        cmd.env_remove("DROVER_AGENT_STATE_DIR")
            .env_remove("DROVER_AGENT_TOKEN")
            .args(["simulate", "--server", &app.device_base, "--token", &token])
            .arg("--state-dir")
            .arg(&root)
            .args(extra);
        cmd.output().expect("run drover-agent simulate")
    };
    let pin = app.ca_hash.clone();
    for (flags, says) in [
        (vec!["--ca-hash", &pin, "--devices", "0"], "--devices"),
        (
            vec!["--ca-hash", &pin, "--devices", "2", "--rate", "0"],
            "--rate",
        ),
        (
            vec![
                "--ca-hash",
                &pin,
                "--devices",
                "2",
                "--degrade-versions",
                "1.0.0:humidity=2",
            ],
            "unknown metric `humidity`",
        ),
        (
            vec!["--ca-hash", &pin, "--devices", "2", "--fail-versions", "x"],
            "--fail-versions `x`",
        ),
        (vec!["--ca-hash", "sha256:00", "--devices", "2"], "ca-hash"),
    ] {
        let out = run(flags.iter().map(|s| s.to_string()).collect());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
    }
    // A pin that does not match the server's CA: the first enrollment fails, and so does the run.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = run(vec![
        "--ca-hash".into(),
        wrong,
        "--devices".into(),
        "3".into(),
        "--device-type".into(),
        "rpi4".into(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("drover-agent: "), "{err}");
    assert!(err.to_lowercase().contains("hash"), "{err}");
    assert!(devices(&app, &admin, None).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_of_a_killed_process_go_offline_by_their_last_will() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let token = app.enrollment_token(&admin, json!({"uses": 3})).await;
    let token = token["token"].as_str().expect("token").to_owned();
    let sim = Simulator::start(&app, &token, &app.scratch().join("fleet"), 3, &[]);
    let up = wait_until(Duration::from_secs(60), || async {
        devices(&app, &admin, Some("online")).await.len() == 3
    })
    .await;
    assert!(up);
    sim.kill().await;
    // Well before the 90 s after which silence counts: the wills, stamped like each session's
    // own `online`, are not mistaken for stale ones.
    let gone = wait_until(Duration::from_secs(20), || async {
        devices(&app, &admin, Some("online")).await.is_empty()
    })
    .await;
    assert!(gone, "every device offline by its last will");
    let id = devices(&app, &admin, None).await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let events: Value = app
        .get(&admin, &format!("/api/v1/devices/{id}/events"))
        .await
        .json()
        .await
        .expect("events");
    assert!(
        events.to_string().contains("last will"),
        "the offline event says why: {events}"
    );
}
