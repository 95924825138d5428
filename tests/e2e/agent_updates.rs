//! Issue 8 end to end: real agents (`drover-agent run`, restarted by a small supervisor as
//! systemd would) take updates offered by a real server, through the `files`, `ab` (the built-in
//! simulated slots) and self-update paths, and the server records every final state: commits,
//! reverts, bootloader fallbacks, rollbacks, holds, refusals, and the agent killed with SIGKILL at
//! every state boundary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use drover_proto::Command;
use drover_tests::{TestApp, binary, spawn_app, wait_until};
use serde_json::{Value, json};

use crate::bundles::{artifact, create_bundle};

/// How long an update may take to reach a final state on the server.
const FINAL: Duration = Duration::from_secs(60);

/// An enrolled agent.
struct Device {
    dir: PathBuf,
    state: PathBuf,
    id: String,
}

/// Enrolls a real agent as an `rpi4` with a one-second heartbeat and `installers` appended to
/// its agent.toml (`{dir}` in it is replaced by the device's scratch directory).
async fn enroll(app: &TestApp, admin: &str, installers: &str) -> Device {
    let dir = app.scratch().join(format!("device-{}", next_number()));
    let state = dir.join("state");
    let token = app.enrollment_token(admin, json!({"uses": 1})).await;
    let out = drover_tests::agent(&state)
        .args([
            "enroll",
            "--server",
            &app.device_base,
            "--token",
            token["token"].as_str().expect("token"),
            "--ca-hash",
            &app.ca_hash,
            "--device-type",
            "rpi4",
        ])
        .output()
        .await
        .expect("run drover-agent enroll");
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = state.join("agent.toml");
    let toml = std::fs::read_to_string(&path)
        .expect("agent.toml")
        .replace("heartbeat_s = 30", "heartbeat_s = 1");
    let installers = installers.replace("{dir}", &dir.display().to_string());
    std::fs::write(&path, format!("{toml}\n{installers}")).expect("write agent.toml");
    let status = status(&state).await;
    Device {
        id: status["device_id"].as_str().expect("device_id").to_string(),
        dir,
        state,
    }
}

fn next_number() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn status(state: &Path) -> Value {
    let out = drover_tests::agent(state)
        .args(["status", "--json"])
        .output()
        .await
        .expect("run drover-agent status");
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// `drover-agent run` kept running as a service manager would: restarted whenever it exits,
/// until stopped. `first_env` applies to the first start only.
struct Supervisor {
    stop: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<Vec<Option<i32>>>,
}

impl Supervisor {
    fn start(
        state: &Path,
        program: impl Fn() -> PathBuf + Send + 'static,
        first_env: Vec<(&'static str, String)>,
    ) -> Supervisor {
        let stop = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(AtomicU32::new(0));
        let (state, stop2, pid2) = (state.to_owned(), Arc::clone(&stop), Arc::clone(&pid));
        let task = tokio::spawn(async move {
            let mut signals = Vec::new();
            let mut env = first_env;
            while !stop2.load(Ordering::SeqCst) {
                let mut cmd = tokio::process::Command::new(program());
                for (k, _) in std::env::vars() {
                    if k.starts_with("DROVER_") {
                        cmd.env_remove(k);
                    }
                }
                cmd.env("DROVER_AGENT_STATE_DIR", &state)
                    .envs(env.drain(..))
                    .arg("run")
                    .kill_on_drop(true)
                    .stdout(std::process::Stdio::null());
                let mut child = cmd.spawn().expect("start drover-agent run");
                pid2.store(child.id().unwrap_or(0), Ordering::SeqCst);
                let status = child.wait().await.expect("wait for the agent");
                use std::os::unix::process::ExitStatusExt as _;
                signals.push(status.signal());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            signals
        });
        Supervisor { stop, pid, task }
    }

    /// Stops the agent (SIGTERM) and answers the signal that ended each run (None: it exited).
    async fn stop(self) -> Vec<Option<i32>> {
        self.stop.store(true, Ordering::SeqCst);
        let pid = self.pid.load(Ordering::SeqCst);
        if pid != 0 {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the supervisor stops")
            .expect("the supervisor task")
    }
}

fn agent_binary() -> PathBuf {
    binary("drover-agent", "drover-agent")
}

/// Uploads `payloads` and creates a bundle; answers its id.
pub(crate) async fn bundle(
    app: &TestApp,
    admin: &str,
    name: &str,
    kind: &str,
    installer: &str,
    version: &str,
    payloads: &[(&str, Vec<u8>)],
) -> String {
    let mut artifacts = Vec::new();
    for (payload, bytes) in payloads {
        artifacts.push(artifact(app, admin, payload, bytes.clone()).await);
    }
    let body = json!({
        "name": name, "kind": kind, "version": version, "device_types": ["rpi4"],
        "installer": installer, "expires_in_days": 30,
        "artifacts": artifacts.iter().map(|a| a["id"].clone()).collect::<Vec<_>>(),
    });
    create_bundle(app, admin, &body).await["id"]
        .as_str()
        .expect("bundle id")
        .to_string()
}

/// A `detector` model bundle of `version` for rpi4 (files installer), its one payload
/// `model.onnx` holding `weights`; answers its id.
pub(crate) async fn model_bundle(
    app: &TestApp,
    admin: &str,
    version: &str,
    weights: Vec<u8>,
) -> String {
    bundle(
        app,
        admin,
        "detector",
        "model",
        "files",
        version,
        &[("model.onnx", weights)],
    )
    .await
}

async fn offer(app: &TestApp, device: &Device, bundle_id: &str, rollout: &str) {
    drover_server::bundles::offer(&app.store, &device.id, bundle_id, Some(rollout))
        .await
        .expect("offer");
}

async fn command(app: &TestApp, device: &Device, command: Command) {
    app.mqtt
        .send_command(&device.id, &command)
        .await
        .expect("send a command");
}

/// The server's record of `device`'s update in `rollout`, once it reaches `state`.
async fn wait_state(
    app: &TestApp,
    device: &Device,
    rollout: &str,
    state: &str,
) -> drover_server::updates::DeviceUpdate {
    wait_update(app, &device.id, rollout, state).await
}

/// The server's record of a device's update in `rollout`, once it reaches `state`.
pub(crate) async fn wait_update(
    app: &TestApp,
    device_id: &str,
    rollout: &str,
    state: &str,
) -> drover_server::updates::DeviceUpdate {
    let deadline = tokio::time::Instant::now() + FINAL;
    loop {
        let now = drover_server::updates::of_rollout(&app.store, device_id, rollout)
            .await
            .expect("read the update");
        if let Some(update) = now.as_ref().filter(|u| u.state == state) {
            return update.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout {rollout} on {device_id} never reached {state}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn current(device: &Device, bundle: &str) -> Option<PathBuf> {
    std::fs::read_link(device.dir.join("opt").join(bundle).join("current")).ok()
}

const MODEL_INSTALLER: &str = r#"
[installers.model]
type = "files"
target = "{dir}/opt"
restart = "echo restarted >> {dir}/restarts"

[health]
command = "test ! -e {dir}/unhealthy && sleep 0.2"
timeout_s = 10
commit_window_s = 30
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_updates_commit_revert_and_roll_back_as_the_server_orders() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let device = enroll(&app, &admin, MODEL_INSTALLER).await;
    let v1 = model_bundle(&app, &admin, "1.0.0", b"weights 1".to_vec()).await;
    let v2 = model_bundle(&app, &admin, "1.1.0", b"weights 2".to_vec()).await;
    let v3 = model_bundle(&app, &admin, "1.2.0", b"weights 3".to_vec()).await;

    // Offered before the agent runs: it asks at start.
    offer(&app, &device, &v1, "r1").await;
    let agent = Supervisor::start(&device.state, agent_binary, vec![]);
    let done = wait_state(&app, &device, "r1", "succeeded").await;
    assert_eq!(done.version.as_deref(), Some("1.0.0"));
    assert_eq!(
        current(&device, "detector"),
        Some(PathBuf::from("releases/1.0.0"))
    );

    // Offered while it runs: `update_available` brings it.
    offer(&app, &device, &v2, "r2").await;
    command(
        &app,
        &device,
        Command::UpdateAvailable {
            rollout_id: "r2".into(),
        },
    )
    .await;
    wait_state(&app, &device, "r2", "succeeded").await;
    assert_eq!(
        std::fs::read(device.dir.join("opt/detector/current/model.onnx")).expect("model"),
        b"weights 2"
    );
    let s = status(&device.state).await;
    assert_eq!(
        s["installed"],
        json!([{"name": "detector", "kind": "model", "version": "1.1.0"}])
    );
    assert_eq!(s["update_state"], "succeeded");
    // Health carries what is installed.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let shown = app.device(&admin, &device.id).await;
            shown.to_string().contains("\"1.1.0\"")
        })
        .await,
        "the device view shows the installed version"
    );

    // An unhealthy 1.2.0 is reverted; 1.1.0 runs again and the server hears why.
    std::fs::write(device.dir.join("unhealthy"), b"").expect("flag");
    offer(&app, &device, &v3, "r3").await;
    command(
        &app,
        &device,
        Command::UpdateAvailable {
            rollout_id: "r3".into(),
        },
    )
    .await;
    let reverted = wait_state(&app, &device, "r3", "reverted").await;
    assert!(
        reverted
            .detail
            .contains("health check ended with exit status 1"),
        "{}",
        reverted.detail
    );
    assert_eq!(reverted.version.as_deref(), Some("1.1.0"));
    assert_eq!(
        current(&device, "detector"),
        Some(PathBuf::from("releases/1.1.0"))
    );
    std::fs::remove_file(device.dir.join("unhealthy")).expect("flag");

    // A server-ordered rollback of r2 returns to the kept 1.0.0, nothing downloaded.
    command(
        &app,
        &device,
        Command::Rollback {
            rollout_id: "r2".into(),
        },
    )
    .await;
    let rolled = wait_state(&app, &device, "r2", "rolled_back").await;
    assert_eq!(rolled.version.as_deref(), Some("1.0.0"));
    assert_eq!(
        current(&device, "detector"),
        Some(PathBuf::from("releases/1.0.0"))
    );
    assert_eq!(
        status(&device.state).await["installed"][0]["version"],
        "1.0.0"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_offer_is_refused_a_hold_defers_and_a_server_outage_does_not_revert() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let installers = MODEL_INSTALLER.replace("sleep 0.2", "sleep 3");
    let device = enroll(&app, &admin, &installers).await;
    let v1 = model_bundle(&app, &admin, "1.0.0", b"w1".to_vec()).await;
    let v2 = model_bundle(&app, &admin, "2.0.0", b"w2".to_vec()).await;
    let v3 = model_bundle(&app, &admin, "3.0.0", b"w3".to_vec()).await;
    let agent = Supervisor::start(&device.state, agent_binary, vec![]);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            device.state.join("intake.sock").exists()
        })
        .await
    );

    // A second offer while the first is in its (slow) commit window is refused, cleanly.
    offer(&app, &device, &v1, "first").await;
    command(
        &app,
        &device,
        Command::UpdateAvailable {
            rollout_id: "first".into(),
        },
    )
    .await;
    wait_state(&app, &device, "first", "committing").await;
    offer(&app, &device, &v2, "second").await;
    command(
        &app,
        &device,
        Command::UpdateAvailable {
            rollout_id: "second".into(),
        },
    )
    .await;
    let refused = wait_state(&app, &device, "second", "failed").await;
    assert!(
        refused
            .detail
            .contains("busy with the update to detector 1.0.0"),
        "{}",
        refused.detail
    );
    wait_state(&app, &device, "first", "succeeded").await;

    // A device program holds updates: the offer is deferred, then installed when the hold ends.
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 4000;
    let line = format!("{}\n", json!({"control": "defer_updates", "until": until}));
    let mut socket = tokio::net::UnixStream::connect(device.state.join("intake.sock"))
        .await
        .expect("intake");
    tokio::io::AsyncWriteExt::write_all(&mut socket, line.as_bytes())
        .await
        .expect("hold");
    tokio::time::sleep(Duration::from_millis(300)).await;
    offer(&app, &device, &v3, "held").await;
    command(
        &app,
        &device,
        Command::UpdateAvailable {
            rollout_id: "held".into(),
        },
    )
    .await;
    wait_state(&app, &device, "held", "deferred").await;
    let before_end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    assert!(before_end < until, "deferred while the hold lasted");
    assert_eq!(
        current(&device, "detector"),
        Some(PathBuf::from("releases/1.0.0"))
    );

    // The hold ends while the server is down for the whole commit window: a files install
    // (require_server = false) commits anyway, and the outbox delivers once it is back.
    wait_state(&app, &device, "held", "committing").await;
    let stopped = app.shut_down().await;
    assert!(
        wait_until(FINAL, || async {
            status(&device.state).await["update_state"] == "succeeded"
        })
        .await,
        "the agent commits without the server"
    );
    assert_eq!(
        current(&device, "detector"),
        Some(PathBuf::from("releases/3.0.0"))
    );
    let app = stopped.start_on_same_ports().await;
    let done = wait_state(&app, &device, "held", "succeeded").await;
    assert_eq!(done.version.as_deref(), Some("3.0.0"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_firmware_commits_and_a_kernel_that_never_starts_the_agent_falls_back() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let sim = format!("{} ab-sim --dir {{dir}}/ab", agent_binary().display());
    let installers = format!(
        r#"
[installers.firmware]
type = "ab"
install = "{sim} install {{payload}} {{slot}}"
switch_once = "{sim} switch-once {{slot}}"
reboot = "{sim} reboot"
booted_slot = "{sim} booted-slot"
confirm = "{sim} confirm"

[health]
command = "true"
timeout_s = 10
commit_window_s = 20
"#
    );
    let device = enroll(&app, &admin, &installers).await;
    let good = bundle(
        &app,
        &admin,
        "os",
        "firmware",
        "ab",
        "2.0.0",
        &[("rootfs.img", b"kernel 2".to_vec())],
    )
    .await;
    let broken = bundle(
        &app,
        &admin,
        "os",
        "firmware",
        "ab",
        "3.0.0",
        &[("rootfs.img", b"kernel 3 PANIC".to_vec())],
    )
    .await;
    let agent = Supervisor::start(&device.state, agent_binary, vec![]);

    offer(&app, &device, &good, "fw2").await;
    command(
        &app,
        &device,
        Command::UpdateAvailable {
            rollout_id: "fw2".into(),
        },
    )
    .await;
    let done = wait_state(&app, &device, "fw2", "succeeded").await;
    assert_eq!(done.version.as_deref(), Some("2.0.0"));
    let pointer: Value =
        serde_json::from_slice(&std::fs::read(device.dir.join("ab/boot.json")).expect("boot.json"))
            .expect("json");
    assert_eq!(
        (pointer["booted"].clone(), pointer["default"].clone()),
        (json!("b"), json!("b")),
        "confirmed: {pointer}"
    );

    offer(&app, &device, &broken, "fw3").await;
    command(
        &app,
        &device,
        Command::UpdateAvailable {
            rollout_id: "fw3".into(),
        },
    )
    .await;
    let reverted = wait_state(&app, &device, "fw3", "reverted").await;
    assert!(
        reverted.detail.contains("bootloader fell back"),
        "{}",
        reverted.detail
    );
    assert_eq!(reverted.version.as_deref(), Some("2.0.0"));
    let pointer: Value =
        serde_json::from_slice(&std::fs::read(device.dir.join("ab/boot.json")).expect("boot.json"))
            .expect("json");
    assert_eq!(
        (pointer["booted"].clone(), pointer["default"].clone()),
        (json!("b"), json!("b")),
        "{pointer}"
    );
    assert_eq!(
        status(&device.state).await["installed"][0]["version"],
        "2.0.0"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_self_update_that_fails_its_window_returns_to_the_old_agent() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let installers = r#"
[installers.agent]
type = "files"
target = "{dir}/opt"
restart = "kill -TERM $DROVER_AGENT_PID"

[health]
command = "test \"$(readlink {dir}/opt/drover-agent/current)\" != releases/2.0.0"
timeout_s = 10
commit_window_s = 30
"#;
    let device = enroll(&app, &admin, installers).await;
    // The new "agent" is a wrapper that records its version and runs the real binary.
    let wrapper = |version: &str| {
        format!(
            "#!/bin/sh\necho {version} >> {}/starts\nexec {} \"$@\"\n",
            device.dir.display(),
            agent_binary().display()
        )
        .into_bytes()
    };
    let v1 = bundle(
        &app,
        &admin,
        "drover-agent",
        "agent",
        "files",
        "1.0.0",
        &[("drover-agent", wrapper("1.0.0"))],
    )
    .await;
    let v2 = bundle(
        &app,
        &admin,
        "drover-agent",
        "agent",
        "files",
        "2.0.0",
        &[("drover-agent", wrapper("2.0.0"))],
    )
    .await;
    let current_agent = device.dir.join("opt/drover-agent/current/drover-agent");
    let program = {
        let current_agent = current_agent.clone();
        move || {
            if current_agent.exists() {
                current_agent.clone()
            } else {
                agent_binary()
            }
        }
    };
    let agent = Supervisor::start(&device.state, program, vec![]);

    offer(&app, &device, &v1, "a1").await;
    command(
        &app,
        &device,
        Command::UpdateAvailable {
            rollout_id: "a1".into(),
        },
    )
    .await;
    wait_state(&app, &device, "a1", "succeeded").await;
    offer(&app, &device, &v2, "a2").await;
    command(
        &app,
        &device,
        Command::UpdateAvailable {
            rollout_id: "a2".into(),
        },
    )
    .await;
    let reverted = wait_state(&app, &device, "a2", "reverted").await;
    assert!(
        reverted.detail.contains("health check"),
        "{}",
        reverted.detail
    );
    assert!(
        wait_until(Duration::from_secs(20), || async {
            std::fs::read_to_string(device.dir.join("starts")).unwrap_or_default()
                == "1.0.0\n2.0.0\n1.0.0\n"
        })
        .await,
        "the new agent ran its window, then the old one came back: {:?}",
        std::fs::read_to_string(device.dir.join("starts"))
    );
    assert_eq!(
        current(&device, "drover-agent"),
        Some(PathBuf::from("releases/1.0.0"))
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_at_every_state_boundary_ends_committed_or_reverted() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let old = model_bundle(&app, &admin, "1.0.0", b"old".to_vec()).await;
    let new = model_bundle(&app, &admin, "1.1.0", b"new".to_vec()).await;
    let old_file = app.scratch().join("old.drover");
    let res = app
        .get(&admin, &format!("/api/v1/bundles/{old}/file"))
        .await;
    std::fs::write(&old_file, res.bytes().await.expect("bundle file")).expect("write");
    const REVERT_POINTS: [&str; 3] = ["reverting", "switched_back", "reverted"];
    let mut cases = Vec::new();
    for round in 0..3 {
        for point in drover_agent::fault::POINTS {
            cases.push((round, *point));
        }
    }
    for chunk in cases.chunks(7) {
        let runs = chunk.iter().map(|(round, point)| {
            let (app, admin, new, old_file) = (&app, &admin, &new, &old_file);
            async move {
                let device = enroll(app, admin, MODEL_INSTALLER).await;
                let out = drover_tests::agent(&device.state)
                    .arg("install")
                    .arg(old_file)
                    .output()
                    .await
                    .expect("install");
                assert!(
                    out.status.success(),
                    "offline install: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let reverts = REVERT_POINTS.contains(point);
                if reverts {
                    std::fs::write(device.dir.join("unhealthy"), b"").expect("flag");
                }
                let rollout = format!("crash-{point}-{round}");
                offer(app, &device, new, &rollout).await;
                let agent = Supervisor::start(
                    &device.state,
                    agent_binary,
                    vec![("DROVER_AGENT_CRASH_AT", point.to_string())],
                );
                let (state, version, file) = if reverts {
                    ("reverted", "1.0.0", b"old")
                } else {
                    ("succeeded", "1.1.0", b"new")
                };
                let done = wait_state(app, &device, &rollout, state).await;
                assert_eq!(done.version.as_deref(), Some(version), "{point}");
                assert_eq!(
                    std::fs::read(device.dir.join("opt/detector/current/model.onnx"))
                        .expect("current model"),
                    file,
                    "{point}"
                );
                let leftovers: Vec<_> = std::fs::read_dir(device.dir.join("opt/detector/releases"))
                    .expect("releases")
                    .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with('.'))
                    .collect();
                assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
                assert_eq!(
                    status(&device.state).await["installed"][0]["version"],
                    version,
                    "{point}"
                );
                let signals = agent.stop().await;
                assert_eq!(
                    signals.first().copied().flatten(),
                    Some(9),
                    "{point}: the first run was killed at its crash point: {signals:?}"
                );
            }
        });
        futures_util::future::join_all(runs).await;
    }
}
