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

#[test]
fn install_stages_and_stops_until_installers_land() {
    let dir = tempfile::tempdir().unwrap();
    let file = Parts::valid().write(dir.path(), "b.drover");
    let state = enrolled_state(dir.path(), &signed_trust(1), None);
    std::fs::write(
        state.join("agent.toml"),
        "[installers.model]\ntype = \"files\"\ntarget = \"/opt/models\"\n",
    )
    .unwrap();
    let out = agent(&["install", "--state-dir", path(&state), path(&file)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("every check passed for detector 1.2.0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("installers come with the update engine"),
        "{stderr}"
    );
    assert!(staged(&state).is_empty());

    let mut flipped = Parts::valid();
    flipped.payloads[0].1[0] ^= 1;
    let bad = flipped.write(dir.path(), "flipped.drover");
    let out = agent(&["install", "--state-dir", path(&state), path(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("payload check failed"));
    assert!(staged(&state).is_empty());
}
