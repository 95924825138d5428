//! The `drover` binary: configuration errors, exit codes, admin commands.

use std::io::Write;
use std::process::{Command, Stdio};

use drover_tests::binary;

fn drover() -> Command {
    let mut cmd = Command::new(binary("drover-server", "drover"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DROVER_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn an_invalid_configuration_value_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = drover()
        .args(["serve"])
        .env("DROVER_DATA_DIR", dir.path())
        .env("DROVER_HTTP_LISTEN", "localhost-ish")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DROVER_HTTP_LISTEN") && err.contains("IP:PORT"),
        "{err}"
    );

    let out = drover()
        .args(["serve"])
        .env("DROVER_DATA_DIR", dir.path())
        .env("DROVER_COOKIE_SECURE", "sometimes")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auto, always or never"));

    let file = dir.path().join("drover.toml");
    std::fs::write(&file, "htp_listen = \"127.0.0.1:0\"\n").expect("write");
    let out = drover()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("htp_listen"));
}

#[test]
fn an_unreachable_database_exits_2_with_its_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let out = drover()
        .args(["serve"])
        .env("DROVER_DATA_DIR", dir.path())
        .env("DROVER_HTTP_LISTEN", "127.0.0.1:0")
        .env(
            "DROVER_DATABASE_URL",
            format!("postgres://drover:secret@127.0.0.1:{port}/drover"),
        )
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("secret"), "the password is not shown: {err}");
}

#[test]
fn a_port_in_use_names_the_port_and_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = drover()
        .args(["serve"])
        .env("DROVER_DATA_DIR", dir.path())
        .env("DROVER_HTTP_LISTEN", addr.to_string())
        // Only the HTTP port is taken; the others must not collide with anything else here.
        .env("DROVER_DEVICE_LISTEN", "127.0.0.1:0")
        .env("DROVER_MQTT_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr.to_string())
            && err.contains("DROVER_HTTP_LISTEN")
            && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn user_create_reads_the_password_from_stdin_and_refuses_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str], stdin: &str| {
        let mut child = drover()
            .args(args)
            .env("DROVER_DATA_DIR", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // A command that refuses its arguments exits before reading stdin: a broken pipe
        // then is expected, and its exit code tells the rest.
        let written = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes());
        if let Err(e) = written {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write: {e}");
        }
        child.wait_with_output().expect("wait")
    };
    let out = run(
        &[
            "user",
            "create",
            "--username",
            "carol",
            "--role",
            "operator",
            "--password-stdin",
        ],
        "a-long-password\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &[
            "user",
            "create",
            "--username",
            "carol",
            "--role",
            "operator",
            "--password-stdin",
        ],
        "a-long-password\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = run(
        &[
            "user",
            "create",
            "--username",
            "dan",
            "--role",
            "operator",
            "--password-stdin",
        ],
        "short\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 10"));
    let out = run(
        &[
            "user",
            "create",
            "--username",
            "dan",
            "--role",
            "king",
            "--password-stdin",
        ],
        "a-long-password\n",
    );
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown role");
    let out = run(&["migrate"], "");
    assert!(out.status.success());
}

#[test]
fn serve_starts_prints_the_admin_password_once_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let start = || {
        drover()
            .args(["serve"])
            .env("DROVER_DATA_DIR", dir.path())
            .env("DROVER_HTTP_LISTEN", "127.0.0.1:0")
            .env("DROVER_DEVICE_LISTEN", "127.0.0.1:0")
            .env("DROVER_MQTT_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    for round in 0..2 {
        let child = start();
        let ports = dir.path().join("ports.json");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ports.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(ports.exists(), "ports.json written");
        // ports.json is written before the HTTP server runs and takes over SIGTERM: wait
        // until it answers, so the signal asks for the graceful stop under test.
        let http = std::fs::read_to_string(&ports)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["http"].as_str().map(str::to_owned))
            .expect("ports.json names the http address");
        let answers = || {
            use std::io::Read as _;
            let Ok(mut stream) = std::net::TcpStream::connect(&http) else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let mut reply = [0u8; 12];
            stream
                .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
                .and_then(|()| stream.read_exact(&mut reply))
                .is_ok_and(|()| reply.starts_with(b"HTTP/1.") && reply.ends_with(b" 200"))
        };
        while !answers() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "graceful stop exits 0: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.contains("one-time password"), round == 0, "{stdout}");
        std::fs::remove_file(&ports).expect("remove ports.json");
    }
}

#[test]
fn token_create_prints_a_join_command_and_respects_the_ca_passphrase() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |extra_env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = drover();
        cmd.args(["token", "create"])
            .args(args)
            .env("DROVER_DATA_DIR", dir.path());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.output().expect("run")
    };
    let pass = [("DROVER_CA_PASSPHRASE", "a long ca passphrase")];
    let out = run(
        &pass,
        &[
            "--uses",
            "3",
            "--expires",
            "2h",
            "--device-type",
            "rpi4",
            "--tag",
            "site=berlin",
            "--approval",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("drover-agent enroll --server https://localhost:8443 --token dte_"),
        "{stdout}"
    );
    assert!(stdout.contains("--ca-hash sha256:"), "{stdout}");
    let key = std::fs::read_to_string(dir.path().join("pki/ca.key")).expect("ca key");
    assert!(
        key.contains("ENCRYPTED PRIVATE KEY"),
        "the CA key is protected on disk"
    );

    let out = run(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DROVER_CA_PASSPHRASE"));
    let out = run(&[("DROVER_CA_PASSPHRASE", "not the right passphrase")], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not decrypt"));

    for (args, needle) in [
        (&["--uses", "0"][..], "--uses"),
        (&["--expires", "soon"][..], "--expires"),
        (&["--tag", "nokeyvalue"][..], "--tag"),
        (&["--device-type", "bad type!"][..], "--device-type"),
    ] {
        let out = run(&pass, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
