//! Issue 14: the Python device SDK (`sdk/python`) tested with pytest against the real binaries:
//! its fixtures start `drover serve` and enroll and run real agents, and the tests check what the
//! agent and server did with what the SDK sent. This test builds the binaries, hands pytest their
//! paths (and a fresh PostgreSQL database under `DROVER_TEST_DATABASE_URL`), and fails with the
//! fix when pytest is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use drover_tests::{TestDb, binary};

/// The workspace root (this crate lives in `tests/`).
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `python3` with the binaries' paths and the store to use, and no other `DROVER_*` setting.
pub(crate) fn python(db: &TestDb) -> Command {
    let mut cmd = Command::new("python3");
    for (k, _) in std::env::vars() {
        if k.starts_with("DROVER_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(repo())
        .env("DROVER_BIN", binary("drover-server", "drover"))
        .env("DROVER_AGENT_BIN", binary("drover-agent", "drover-agent"))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    if db.backend() == "postgres" {
        cmd.env("DROVER_STACK_DATABASE_URL", &db.url);
    }
    cmd
}

/// The `N passed` of pytest's closing line.
fn passed(summary: &str) -> usize {
    summary
        .lines()
        .rev()
        .find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words
                .windows(2)
                .find(|w| w[1].trim_end_matches(',') == "passed")
                .and_then(|w| w[0].parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_pytest_suite_passes_against_a_real_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = Command::new("python3")
        .args(["-m", "pytest", "--version"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "pytest is missing, and the Python SDK's tests need it: python3 -m pip install pytest ({})",
        probe.map_or_else(
            |e| e.to_string(),
            |o| String::from_utf8_lossy(&o.stderr).into_owned()
        )
    );
    let db = TestDb::new(dir.path()).await;
    let out = python(&db)
        .args([
            "-m",
            "pytest",
            "sdk/python/tests",
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
        ])
        .arg(dir.path().join("pytest"))
        .output()
        .expect("run python3 -m pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pytest sdk/python/tests failed:\n{stdout}\n{stderr}"
    );
    // Every test ran: none skipped or deselected on the way.
    assert!(
        passed(&stdout) >= 26 && !stdout.contains("skipped"),
        "expected the whole SDK suite to run:\n{stdout}"
    );
}

#[test]
fn pytest_closing_lines_are_read() {
    assert_eq!(passed("...\n25 passed in 12.3s\n"), 25);
    assert_eq!(passed("1 failed, 24 passed, 2 warnings in 9s"), 24);
    assert_eq!(passed("no tests ran"), 0);
}
