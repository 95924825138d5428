//! The dashboard in a real Chromium (Debian's `chromium`, driven by
//! playwright-core from tests/browser): a real server, devices that send real
//! telemetry over MQTT, and a script that signs in through the login form
//! and checks the device page (growing live as readings arrive) and the
//! overview as a person would see them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use drover_tests::{EnrolledDevice, TestApp, mqtt_connect, spawn_app, wait_until};
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Fails (never skips) when the browser side is not installed, naming the fix.
fn require_browser_tools() -> PathBuf {
    let chromium = std::env::var("DROVER_CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_string());
    let dir = browser_dir();
    let mut missing = Vec::new();
    if !dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        missing.push("playwright-core: run `npm ci --prefix tests/browser`".to_string());
    }
    if !Path::new(&chromium).is_file() {
        missing.push(format!(
            "{chromium}: install Chromium with `apt-get install -y chromium` (or set DROVER_CHROMIUM)"
        ));
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        missing.push("node: install Node.js (`apt-get install -y nodejs npm`)".to_string());
    }
    assert!(
        missing.is_empty(),
        "the browser tests need what is missing here:\n  {}\n(.ci/run installs both; see the README's Tests section)",
        missing.join("\n  ")
    );
    PathBuf::from(chromium)
}

/// Runs a script of tests/browser against `app` in Chromium, passing the base URL, the
/// browser, a screenshot directory and `env`; fails with its output unless it exits 0.
async fn run_browser_script(
    app: &TestApp,
    chromium: &Path,
    script: &str,
    limit: Duration,
    env: &[(&str, String)],
) {
    // One folder per script, so that two scripts' "overview.png" do not overwrite each other.
    let out = std::env::var("DROVER_BROWSER_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| app.scratch().join("browser"))
        .join(script.trim_end_matches(".mjs"));
    let script = browser_dir().join(script);
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .current_dir(browser_dir())
        .env("DROVER_BASE_URL", &app.base)
        .env("DROVER_CHROMIUM", chromium)
        .env("DROVER_BROWSER_OUT", &out)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(limit, run)
        .await
        .expect("the browser script finishes in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "{} exited with {}:\n{stdout}\n{stderr}",
        script.display(),
        output.status
    );
}

/// Adds the operator `olga` (password `olga-password-123`) the scripts sign in as.
async fn add_operator(app: &TestApp, admin: &str) {
    let res = app
        .post_json(
            admin,
            "/api/v1/users",
            &json!({"username": "olga", "password": "olga-password-123", "role": "operator"}),
        )
        .await;
    assert_eq!(res.status(), 201);
}

async fn rename(app: &TestApp, admin: &str, id: &str, name: &str) {
    let res = app
        .client
        .patch(app.url(&format!("/api/v1/devices/{id}")))
        .bearer_auth(admin)
        .json(&json!({"name": name}))
        .send()
        .await
        .expect("rename");
    assert_eq!(res.status(), 200, "rename {id}");
}

/// Connects a device over MQTT and keeps its event loop running.
async fn connect(app: &TestApp, d: &EnrolledDevice) -> AsyncClient {
    let (client, mut eventloop) = mqtt_connect(app.mqtt_options(&d.id, d))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

async fn publish(client: &AsyncClient, d: &EnrolledDevice, topic: &str, body: Value) {
    client
        .publish(d.topic(topic), QoS::AtLeastOnce, false, body.to_string())
        .await
        .expect("publish");
}

async fn stored(app: &TestApp, admin: &str, id: &str, metric: &str) -> usize {
    let body: Value = app
        .get(
            admin,
            &format!("/api/v1/devices/{id}/telemetry?metric={metric}&from=0"),
        )
        .await
        .json()
        .await
        .expect("json");
    body["points"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_page_charts_real_telemetry_in_chromium() {
    let chromium = require_browser_tools();
    let app = spawn_app().await;
    let admin = app.admin_token().await;

    // Three accepted devices: one sending now, one heard from two hours ago
    // and gone offline since, one never heard from.
    let live = app.enrolled_device(&admin).await;
    let quiet = app.enrolled_device(&admin).await;
    let never = app.enrolled_device(&admin).await;
    // Names and version names with markup: the page must show them as text.
    let live_name = "Press <1> & \"A\"";
    rename(&app, &admin, &live.id, live_name).await;
    rename(&app, &admin, &quiet.id, "quiet-one").await;
    rename(&app, &admin, &never.id, "never-seen").await;

    let now = now_ms();
    let odd = "model.conf-score_v2";
    // Thirty readings two minutes apart, the newest a few seconds ago.
    let batch: Vec<Value> = (0..30i64)
        .map(|i| {
            let age = (29 - i) * 120_000 + 5_000;
            json!({"seq": i + 1, "ts": now - age, "metrics": {
                "temp_c": 40.0 + i as f64 / 4.0,
                odd: 0.5 + i as f64 / 8.0,
            }})
        })
        .collect();
    let c = connect(&app, &live).await;
    publish(
        &c,
        &live,
        "telemetry",
        json!({"epoch": "e1", "versions": {"model": "1.2.0", "<img src=x onerror=alert(1)>": "2.0.0"}, "batch": batch}),
    )
    .await;
    publish(&c, &live, "health", json!({"ts": now, "uptime_s": 93_784, "cpu_pct": 12.5, "mem_used": 536_870_912u64, "mem_total": 2_147_483_648u64,
        "disk_free": 1_073_741_824u64, "temp_c": 47.3, "installed": [{"name": "detector", "kind": "model", "version": "1.2.0"}],
        "spool_depth": 2, "spool_dropped": 0, "update_state": null}))
    .await;

    let q = connect(&app, &quiet).await;
    publish(
        &q,
        &quiet,
        "telemetry",
        json!({"epoch": "e2", "versions": {}, "seq": 1, "ts": now - 2 * 3_600_000, "metrics": {"temp_c": 21.5}}),
    )
    .await;

    let all_stored = wait_until(Duration::from_secs(20), || async {
        stored(&app, &admin, &live.id, "temp_c").await == 30
            && stored(&app, &admin, &live.id, odd).await == 30
            && stored(&app, &admin, &quiet.id, "temp_c").await == 1
    })
    .await;
    assert!(all_stored, "the readings reach the store");
    // Its own state message takes the quiet device offline, as an agent's last will would.
    publish(
        &q,
        &quiet,
        "state",
        json!({"online": false, "ts": now_ms()}),
    )
    .await;
    let presence = wait_until(Duration::from_secs(10), || async {
        app.device(&admin, &live.id).await["online"] == true
            && app.device(&admin, &quiet.id).await["online"] == false
    })
    .await;
    assert!(presence, "one device online, one offline");
    // Above every temp_c sent so far and below every one sent once the page
    // is open, so the first live reading fires it (with markup in its name).
    let alert_rule = "Too hot <img src=x onerror=alert(7)>";
    let res = app
        .post_json(
            &admin,
            "/api/v1/alert-rules",
            &json!({"name": alert_rule, "metric": "temp_c", "condition": {"op": ">", "value": 48},
                    "for_seconds": 0, "severity": "critical"}),
        )
        .await;
    assert_eq!(res.status(), 201, "the alert rule is created");

    let expect = json!({
        "live": {
            "id": live.id,
            "name": live_name,
            "latest": {"temp_c": "47.25", odd: "4.125"},
            "versions": ["model 1.2.0", "<img src=x onerror=alert(1)> 2.0.0"],
            "charts": [odd, "temp_c"],
            "health": {"CPU": "12.5 %", "Memory": "512.0 MiB of 2.0 GiB (25 %)", "Temperature": "47.3 °C",
                       "Uptime": "1 d 2 h", "Spool": "2 waiting"},
            "installed": [["detector", "model", "1.2.0"]],
            "fresh": "fresh_metric",
            "alert": {"rule": alert_rule, "metric": "temp_c", "severity": "critical"},
        },
        "quiet": {"id": quiet.id, "name": "quiet-one", "latest": {"temp_c": "21.5"}},
        "never": {"id": never.id, "name": "never-seen"},
        "missing": "NoSuchDevice",
        "overview": {"total": 3, "accepted": 3, "online": 1, "offline": 1, "never": 1},
    });
    // Once the script has the page open it creates this file; from then on the
    // device sends a reading a second: temp_c alone for ten seconds (points
    // added to the drawn chart, the first firing the alert, which the drawn
    // chart must mark before anything loads the charts again), then also a
    // metric not charted yet (a new chart), which the open page must draw
    // without a reload.
    let signal = app.scratch().join("device-page-open");
    let feeder = {
        let (c, live, signal) = (c.clone(), live.clone(), signal.clone());
        tokio::spawn(async move {
            let opened = wait_until(Duration::from_secs(90), || async { signal.exists() }).await;
            if !opened {
                return;
            }
            for seq in 1i64.. {
                let temp = 48.0 + seq as f64 / 10.0;
                let metrics = if seq <= 10 {
                    json!({"temp_c": temp})
                } else {
                    json!({"temp_c": temp, "fresh_metric": seq as f64})
                };
                publish(
                    &c,
                    &live,
                    "telemetry",
                    json!({"epoch": "abc1", "versions": {"model": "1.2.0"}, "seq": seq, "ts": now_ms(), "metrics": metrics}),
                )
                .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    run_browser_script(
        &app,
        &chromium,
        "device_page.mjs",
        Duration::from_secs(150),
        &[
            ("DROVER_USERNAME", "admin".to_string()),
            ("DROVER_PASSWORD", app.admin_password.to_string()),
            ("DROVER_NEW_PASSWORD", "a-password-of-my-own".to_string()),
            ("DROVER_EXPECT", expect.to_string()),
            ("DROVER_LIVE_SIGNAL", signal.display().to_string()),
        ],
    )
    .await;
    feeder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_uploads_and_creates_a_bundle_in_chromium() {
    let chromium = require_browser_tools();
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    add_operator(&app, &admin).await;
    run_browser_script(
        &app,
        &chromium,
        "bundles_page.mjs",
        Duration::from_secs(120),
        &[
            ("DROVER_USERNAME", "olga".to_string()),
            ("DROVER_PASSWORD", "olga-password-123".to_string()),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_starts_pauses_and_follows_a_rollout_in_chromium() {
    let chromium = require_browser_tools();
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    add_operator(&app, &admin).await;
    let token = app.enrollment_token(&admin, json!({"uses": 2})).await;
    let sim = crate::simulator::Simulator::start(
        &app,
        token["token"].as_str().expect("token"),
        &app.scratch().join("fleet"),
        2,
        &["--rate", "1"],
    );
    let up = wait_until(Duration::from_secs(60), || async {
        crate::simulator::devices(&app, &admin, Some("online"))
            .await
            .len()
            == 2
    })
    .await;
    assert!(up, "two simulated devices online");
    let bundle =
        crate::agent_updates::model_bundle(&app, &admin, "1.0.0", b"weights".to_vec()).await;
    run_browser_script(
        &app,
        &chromium,
        "rollouts_page.mjs",
        Duration::from_secs(180),
        &[
            ("DROVER_USERNAME", "olga".to_string()),
            ("DROVER_PASSWORD", "olga-password-123".to_string()),
            ("DROVER_BUNDLE_ID", bundle.to_string()),
            ("DROVER_EXPECT_MATCH", "2".to_string()),
        ],
    )
    .await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_the_fleet_from_the_browser_and_a_viewer_only_watches() {
    let chromium = require_browser_tools();
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for (name, role) in [("ada", "admin"), ("vera", "viewer")] {
        let res = app
            .post_json(
                &admin,
                "/api/v1/users",
                &json!({"username": name, "password": format!("{name}-password-123"), "role": role}),
            )
            .await;
        assert_eq!(res.status(), 201);
    }
    let token = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let state_dir = app.scratch().join("journey-fleet");
    let sim = vec![
        drover_tests::binary("drover-agent", "drover-agent")
            .display()
            .to_string(),
        "simulate".into(),
        "--server".into(),
        app.device_base.clone(),
        "--token".into(),
        token["token"].as_str().expect("token").to_string(),
        "--ca-hash".into(),
        app.ca_hash.clone(),
        "--devices".into(),
        "1".into(),
        "--device-type".into(),
        "journey-box".into(),
        "--heartbeat".into(),
        "1".into(),
        "--rate".into(),
        "1".into(),
        "--state-dir".into(),
        state_dir.display().to_string(),
    ];
    run_browser_script(
        &app,
        &chromium,
        "fleet_journey.mjs",
        Duration::from_secs(240),
        &[
            ("DROVER_USERNAME", "ada".to_string()),
            ("DROVER_PASSWORD", "ada-password-123".to_string()),
            ("DROVER_VIEWER", "vera".to_string()),
            ("DROVER_VIEWER_PASSWORD", "vera-password-123".to_string()),
            ("DROVER_SIM_CMD", serde_json::to_string(&sim).expect("json")),
            ("DROVER_DEVICE_TYPE", "journey-box".to_string()),
        ],
    )
    .await;
}
