//! `drover-agent verify` and `install` as a user runs them: the real binary, its exit codes,
//! its summary on stdout and its one-line refusals on stderr.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .args(args)
        .env_remove("DROVER_AGENT_STATE_DIR")
        .output()
        .expect("drover-agent runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

#[test]
fn verify_prints_a_summary_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let file = Parts::valid().write(dir.path(), "b.drover");
    let state = enrolled_state(dir.path(), &signed_trust(1), None);
    let out = agent(&["verify", "--state-dir", path(&state), path(&file)]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.starts_with("valid: every check passed"), "{stdout}");
    assert!(stdout.contains("\nname: detector\n"), "{stdout}");
    assert!(stdout.contains("\nkind: model\n"), "{stdout}");
    assert!(
        stdout.contains("  model.onnx  43 bytes  sha256:"),
        "{stdout}"
    );
    assert!(staged(&state).is_empty());
}

#[test]
fn verify_with_a_root_key_says_what_it_did_not_check() {
    let dir = tempfile::tempdir().unwrap();
    let file = Parts::valid().write(dir.path(), "b.drover");
    let key = write_root_key(dir.path());
    let out = agent(&["verify", "--root-key", path(&key), path(&file)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("device type and version NOT checked"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn verify_refusals_exit_1_naming_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let state = enrolled_state(dir.path(), &signed_trust(1), None);
    let mut flipped = Parts::valid();
    flipped.payloads[0].1[0] ^= 1;
    let stranger = Parts::signed(&manifest(&[("model.onnx", MODEL)]), &stranger());
    let (envelope, trust) = valid_json();
    let symlink = write_raw(
        dir.path(),
        "symlink.drover",
        &[
            RawEntry::file("envelope.json", envelope),
            RawEntry::file("trust.json", trust),
            RawEntry {
                name: "payloads/model.onnx".into(),
                kind: tar::EntryType::Symlink,
                data: vec![],
            },
        ],
    );
    let cases = [
        (
            flipped.write(dir.path(), "flipped.drover"),
            "payload check failed",
        ),
        (
            stranger.write(dir.path(), "stranger.drover"),
            "signature check failed",
        ),
        (symlink, "is a symbolic link"),
    ];
    for (file, words) in cases {
        let out = agent(&["verify", "--state-dir", path(&state), path(&file)]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with("drover-agent: "), "{stderr}");
        assert!(stderr.contains(" refused: "), "{stderr}");
        assert!(stderr.contains(words), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn verify_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = Parts::valid().write(dir.path(), "b.drover");
    let key = write_root_key(dir.path());
    let out = agent(&[
        "verify",
        "--state-dir",
        path(dir.path()),
        "--root-key",
        path(&key),
        path(&file),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not both"),
        "{}",
        text(&out.stderr)
    );
    let out = agent(&["verify"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn verify_on_a_device_that_is_not_enrolled_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = Parts::valid().write(dir.path(), "b.drover");
    let out = agent(&["verify", "--state-dir", path(dir.path()), path(&file)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not enrolled"),
        "{}",
        text(&out.stderr)
    );
}

/// A state directory whose agent.toml has a `files` model installer into `dir/models` and the
/// health command `health`.
fn files_device(dir: &Path, health: &str) -> std::path::PathBuf {
    let state = enrolled_state(dir, &signed_trust(1), None);
    std::fs::write(
        state.join("agent.toml"),
        format!(
            "[installers.model]\ntype = \"files\"\ntarget = \"{}\"\nrestart = \"echo restarted >> {}\"\n\n[health]\ncommand = \"{health}\"\ntimeout_s = 5\ncommit_window_s = 30\n",
            dir.join("models").display(),
            dir.join("restarts").display(),
        ),
    )
    .expect("agent.toml is written");
    state
}

/// `detector` `version`, one `file` payload `model.onnx` holding `content`.
fn model_bundle(dir: &Path, version: &str, content: &[u8]) -> std::path::PathBuf {
    let mut m = manifest(&[("model.onnx", content)]);
    m.version = version.parse().expect("a fixture version");
    let mut parts = Parts::signed(&m, &signer());
    parts.payloads = vec![("model.onnx".into(), content.to_vec())];
    parts.write(dir, &format!("detector-{version}.drover"))
}

/// What `status` reports, read from the files it reads (the fixture has no certificate).
fn status_json(state: &Path) -> serde_json::Value {
    let read = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap_or_default()).unwrap_or_default()
    };
    let installed = read(state.join("installed.json"));
    let update = read(state.join("update/update.json"));
    serde_json::json!({
        "installed": installed["bundles"],
        "update_state": update["journal"]["state"],
    })
}

#[test]
fn install_switches_releases_and_a_failing_health_check_reverts() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("unhealthy");
    let state = files_device(dir.path(), &format!("test ! -e {}", flag.display()));
    let models = dir.path().join("models/detector");

    let out = agent(&[
        "install",
        "--state-dir",
        path(&state),
        path(&model_bundle(dir.path(), "1.2.0", b"v1 weights")),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("installed detector 1.2.0 (model); committed"));
    assert_eq!(
        std::fs::read(models.join("current/model.onnx")).unwrap(),
        b"v1 weights"
    );
    assert_eq!(
        std::fs::read_link(models.join("current")).unwrap(),
        Path::new("releases/1.2.0")
    );
    assert!(staged(&state).is_empty());

    // The second version installs, fails its health check and is reverted: 1.2.0 runs again.
    std::fs::write(&flag, b"").unwrap();
    let out = agent(&[
        "install",
        "--state-dir",
        path(&state),
        path(&model_bundle(dir.path(), "1.3.0", b"v2 weights")),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("detector 1.3.0 reverted: the health check ended with exit status 1"),
        "{stderr}"
    );
    assert!(stderr.contains("--- log tail ---"), "{stderr}");
    assert_eq!(
        std::fs::read(models.join("current/model.onnx")).unwrap(),
        b"v1 weights"
    );
    assert!(!models.join("releases/1.3.0").exists());
    let status = status_json(&state);
    assert_eq!(status["update_state"], "reverted");
    assert_eq!(status["installed"][0]["version"], "1.2.0");
    // Restarted after the switch and again after the switch back.
    let restarts = std::fs::read_to_string(dir.path().join("restarts")).unwrap();
    assert_eq!(restarts.lines().count(), 3, "{restarts}");

    // Healthy again: 1.3.0 commits, 1.2.0 is kept for a rollback.
    std::fs::remove_file(&flag).unwrap();
    let out = agent(&[
        "install",
        "--state-dir",
        path(&state),
        path(&model_bundle(dir.path(), "1.3.0", b"v2 weights")),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(models.join("current/model.onnx")).unwrap(),
        b"v2 weights"
    );
    assert!(models.join("releases/1.2.0").is_dir());
    let installed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("installed.json")).unwrap()).unwrap();
    assert_eq!(installed["kept"][0]["version"], "1.2.0");
    assert_eq!(status_json(&state)["update_state"], "succeeded");

    // Models are installed by name side by side: a second one leaves the first alone.
    let mut m = manifest(&[("model.onnx", b"classifier weights")]);
    m.name = drover_proto::SafeName::parse("classifier").unwrap();
    m.version = "0.1.0".parse().unwrap();
    let mut parts = Parts::signed(&m, &signer());
    parts.payloads = vec![("model.onnx".into(), b"classifier weights".to_vec())];
    let classifier = parts.write(dir.path(), "classifier.drover");
    let out = agent(&["install", "--state-dir", path(&state), path(&classifier)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(dir.path().join("models/classifier/current/model.onnx")).unwrap(),
        b"classifier weights"
    );
    assert_eq!(
        std::fs::read(models.join("current/model.onnx")).unwrap(),
        b"v2 weights"
    );
    let names: Vec<_> = status_json(&state)["installed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            format!(
                "{} {}",
                b["name"].as_str().unwrap(),
                b["version"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(names, ["classifier 0.1.0", "detector 1.3.0"]);

    // The same version again is refused by the version check; nothing changes.
    let out = agent(&[
        "install",
        "--state-dir",
        path(&state),
        path(&model_bundle(dir.path(), "1.3.0", b"v2 weights")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("version check failed"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_full_disk_fails_cleanly_and_the_old_version_stays() {
    let dir = tempfile::tempdir().unwrap();
    let state = files_device(dir.path(), "true");
    let models = dir.path().join("models/detector");
    let out = agent(&[
        "install",
        "--state-dir",
        path(&state),
        path(&model_bundle(dir.path(), "1.2.0", b"v1")),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .args([
            "install",
            "--state-dir",
            path(&state),
            path(&model_bundle(dir.path(), "1.3.0", b"v2")),
        ])
        .env("DROVER_AGENT_RESERVE_BYTES", (u64::MAX / 4).to_string())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("free space check failed"), "{stderr}");
    assert_eq!(
        std::fs::read(models.join("current/model.onnx")).unwrap(),
        b"v1"
    );
    assert!(!models.join("releases/1.3.0").exists());
    assert!(staged(&state).is_empty());
    assert_eq!(status_json(&state)["installed"][0]["version"], "1.2.0");
}

#[test]
fn a_tar_payload_unpacks_into_the_release_and_a_link_in_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = files_device(dir.path(), "true");
    let archive = {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(6);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "labels/classes.txt", &b"cat\ndog"[..6])
            .unwrap();
        builder.into_inner().unwrap()
    };
    let mut m = manifest(&[("model.tar", &archive)]);
    m.payloads[0].format = drover_proto::PayloadFormat::Tar;
    let mut parts = Parts::signed(&m, &signer());
    parts.payloads = vec![("model.tar".into(), archive.clone())];
    let file = parts.write(dir.path(), "tar.drover");
    let out = agent(&["install", "--state-dir", path(&state), path(&file)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(
            dir.path()
                .join("models/detector/current/labels/classes.txt")
        )
        .unwrap(),
        b"cat\ndo"
    );

    let archive = {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_cksum();
        builder.append_link(&mut header, "escape", "/etc").unwrap();
        builder.into_inner().unwrap()
    };
    let mut m = manifest(&[("model.tar", &archive)]);
    m.version = "1.3.0".parse().unwrap();
    m.payloads[0].format = drover_proto::PayloadFormat::Tar;
    let mut parts = Parts::signed(&m, &signer());
    parts.payloads = vec![("model.tar".into(), archive)];
    let file = parts.write(dir.path(), "link.drover");
    let out = agent(&["install", "--state-dir", path(&state), path(&file)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("detector 1.3.0 failed: install failed"),
        "{stderr}"
    );
    assert!(stderr.contains("only files and directories"), "{stderr}");
    assert_eq!(
        std::fs::read_link(dir.path().join("models/detector/current")).unwrap(),
        Path::new("releases/1.2.0")
    );
}

#[test]
fn a_script_installer_runs_the_signed_script_and_reverts_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = enrolled_state(dir.path(), &signed_trust(1), None);
    let log = dir.path().join("script.log");
    let flag = dir.path().join("unhealthy");
    std::fs::write(
        state.join("agent.toml"),
        format!(
            "[installers.config]\ntype = \"script\"\n\n[health]\ncommand = \"test ! -e {}\"\ntimeout_s = 5\n",
            flag.display()
        ),
    )
    .unwrap();
    let script = format!(
        "#!/bin/sh\necho \"$DROVER_ACTION $DROVER_BUNDLE_NAME $DROVER_BUNDLE_VERSION prev=${{DROVER_PREVIOUS_VERSION:-none}} $(cat \"$DROVER_PAYLOAD_DIR/settings.json\")\" >> {}\n",
        log.display()
    );
    let bundle = |version: &str| {
        let settings = format!("{{\"v\":\"{version}\"}}");
        let mut m = manifest(&[
            ("apply.sh", script.as_bytes()),
            ("settings.json", settings.as_bytes()),
        ]);
        m.name = drover_proto::SafeName::parse("settings").unwrap();
        m.kind = drover_proto::Kind::Config;
        m.installer = drover_proto::Installer::Script;
        m.version = version.parse().unwrap();
        let mut parts = Parts::signed(&m, &signer());
        parts.payloads = vec![
            ("apply.sh".into(), script.as_bytes().to_vec()),
            ("settings.json".into(), settings.into_bytes()),
        ];
        parts.write(dir.path(), &format!("settings-{version}.drover"))
    };
    let out = agent(&[
        "install",
        "--state-dir",
        path(&state),
        path(&bundle("1.0.0")),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    std::fs::write(&flag, b"").unwrap();
    let out = agent(&[
        "install",
        "--state-dir",
        path(&state),
        path(&bundle("1.1.0")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let ran = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        ran,
        "install settings 1.0.0 prev=none {\"v\":\"1.0.0\"}\ninstall settings 1.1.0 prev=1.0.0 {\"v\":\"1.1.0\"}\nrevert settings 1.1.0 prev=1.0.0 {\"v\":\"1.1.0\"}\n"
    );
    assert_eq!(status_json(&state)["installed"][0]["version"], "1.0.0");

    // Without a script table, a script bundle is refused before anything runs.
    std::fs::write(state.join("agent.toml"), "").unwrap();
    std::fs::remove_file(&flag).unwrap();
    let out = agent(&[
        "install",
        "--state-dir",
        path(&state),
        path(&bundle("1.2.0")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no [installers.config] table"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 3);
}

#[test]
fn install_refuses_a_bad_payload_and_stages_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = files_device(dir.path(), "true");
    let mut flipped = Parts::valid();
    flipped.payloads[0].1[0] ^= 1;
    let bad = flipped.write(dir.path(), "flipped.drover");
    let out = agent(&["install", "--state-dir", path(&state), path(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("payload check failed"));
    assert!(staged(&state).is_empty());
    assert!(!dir.path().join("models/detector/current").exists());
}
