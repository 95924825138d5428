//! Issue 14: the Python device SDK (`sdk/python`) tested with pytest against the real binaries:
//! its fixtures start `drover serve` and enroll and run real agents, and the tests check what the
//! agent and server did with what the SDK sent. This test builds the binaries, hands pytest their
//! paths (and a fresh PostgreSQL database under `DROVER_TEST_DATABASE_URL`), and fails with the
//! fix when pytest is missing. Beside it: the package installs with pip into a fresh venv, and
//! `mypy --strict` (installed from the package index, skipped with the reason when it cannot be)
//! finds nothing in it.

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

/// The version `sdk/python/pyproject.toml` declares.
fn declared_version() -> String {
    let toml = std::fs::read_to_string(repo().join("sdk/python/pyproject.toml"))
        .expect("read sdk/python/pyproject.toml");
    toml.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("pyproject.toml declares version = \"…\"")
        .to_string()
}

/// A fresh virtual environment in `dir`; answers its `python`.
fn venv(dir: &Path) -> PathBuf {
    let env = dir.join("venv");
    let out = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&env)
        .output()
        .expect("run python3 -m venv");
    assert!(
        out.status.success(),
        "python3 -m venv failed (on Debian: apt-get install python3-venv):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.join("bin/python")
}

/// `python -m pip install ARGS` from `dir`, quietly, with no version check.
fn pip_install(python: &Path, dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(args)
        .current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run pip install")
}

#[test]
fn python_sdk_installs_with_pip_into_a_fresh_venv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let python = venv(dir.path());
    // The ordinary install a user runs; its build backend (setuptools) comes from
    // the package index, as a fresh venv has none that builds wheels.
    let sdk = repo().join("sdk/python");
    let out = pip_install(
        &python,
        dir.path(),
        &["--no-deps", sdk.to_str().expect("UTF-8 path")],
    );
    assert!(
        out.status.success(),
        "pip install sdk/python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Run outside the checkout, so the import can only find the installed copy.
    let probe = "import json, pathlib, importlib.metadata as m, drover_device as d\n\
        here = pathlib.Path(d.__file__).parent\n\
        print(json.dumps({'version': d.__version__, 'dist': m.version('drover-device'),\n\
            'dir': str(here), 'typed': (here / 'py.typed').is_file(),\n\
            'client': callable(d.Client)}))";
    let out = Command::new(&python)
        .args(["-I", "-c", probe])
        .current_dir(dir.path())
        .output()
        .expect("run the venv's python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "importing drover_device from the venv failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the probe's JSON");
    let version = declared_version();
    assert_eq!(
        seen["version"],
        version.as_str(),
        "drover_device.__version__"
    );
    assert_eq!(
        seen["dist"],
        version.as_str(),
        "the installed distribution's version"
    );
    let installed = seen["dir"].as_str().expect("dir");
    assert!(
        Path::new(installed).starts_with(dir.path().join("venv")),
        "imported from the venv, not the checkout: {installed}"
    );
    assert_eq!(
        seen["typed"], true,
        "py.typed is installed (Typing :: Typed)"
    );
    assert_eq!(seen["client"], true, "drover_device.Client is exported");
}

/// The mypy that type-checks the SDK: pinned, so a new release cannot fail a build by itself.
const MYPY: &str = "mypy==2.4.1";

#[test]
fn python_sdk_type_checks_under_mypy_strict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let python = venv(dir.path());
    let out = pip_install(&python, dir.path(), &[MYPY]);
    if !out.status.success() {
        // The package index is the only source of mypy; without it there is nothing to run.
        println!(
            "skipped: {MYPY} could not be installed from the package index:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let out = Command::new(&python)
        .args(["-m", "mypy", "--strict", "--cache-dir"])
        .arg(dir.path().join("mypy-cache"))
        .arg(repo().join("sdk/python/src/drover_device"))
        .current_dir(dir.path())
        .output()
        .expect("run mypy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("Success: no issues found in "),
        "mypy --strict sdk/python/src/drover_device found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
