//! `drover backup` and `drover restore`: an archive taken while the server
//! runs brings back users, devices and the fleet CA; a damaged archive, a
//! busy or non-empty target and garbage are refused with nothing written.

use std::path::{Path, PathBuf};
use std::process::Output;

use drover_tests::{TestApp, binary, spawn_app};
use serde_json::{Value, json};

/// `drover` with the app's data directory and database, and nothing else from the environment.
async fn drover(data_dir: &Path, database_url: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(binary("drover-server", "drover"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DROVER_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .env("DROVER_DATA_DIR", data_dir)
        .env("DROVER_DATABASE_URL", database_url)
        .output()
        .await
        .expect("run drover")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Takes a backup of a running app into its scratch directory.
async fn backup_of(app: &TestApp, name: &str) -> PathBuf {
    let out = app.scratch().join(name);
    let run = drover(
        app.data_dir(),
        &app.settings.database_url,
        &["backup", "--out", out.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let said = text(&run.stdout);
    if app.backend() == "postgres" {
        assert!(
            said.contains("NOT in it") && said.contains("pg_dump"),
            "the output sends the database to pg_dump: {said}"
        );
    } else {
        assert!(said.contains("SQLite database"), "{said}");
    }
    out
}

/// The archive's entries and where each one's bytes start in the file.
fn entries(archive: &Path) -> Vec<(String, u64)> {
    let file = std::fs::File::open(archive).expect("open archive");
    let mut tar = tar::Archive::new(file);
    tar.entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.path().expect("path").to_string_lossy().into_owned(),
                e.raw_file_position(),
            )
        })
        .collect()
}

fn sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("drover.db").display())
}

#[tokio::test]
async fn a_backup_taken_while_the_server_runs_restores_users_devices_and_the_fleet_ca() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.user_token(&admin, "kept-operator", "operator").await;
    let token = app
        .enrollment_token(&admin, json!({"uses": 5, "tags": {"site": "north"}}))
        .await;
    let token_id = token["id"].as_str().expect("token id").to_string();
    let device = app.enrolled_device(&admin).await;
    let ca_pem = app.ca_pem.clone();

    let archive = backup_of(&app, "drover.backup").await;
    let names: Vec<String> = entries(&archive).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names[0], "drover-backup.json");
    for secret in [
        "data/pki/ca.key",
        "data/pki/ca.crt",
        "data/keys/root.key",
        "data/jwt.secret",
    ] {
        assert!(names.iter().any(|n| n == secret), "{secret} in {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("data/keys/signing-")),
        "{names:?}"
    );
    let manifest: Value = {
        let mut tar = tar::Archive::new(std::fs::File::open(&archive).expect("open"));
        let first = tar.entries().expect("entries").next().expect("manifest");
        serde_json::from_reader(first.expect("entry")).expect("manifest json")
    };
    assert_eq!(manifest["backend"], app.backend());
    assert!(
        manifest["migration_version"].as_i64().is_some(),
        "{manifest}"
    );
    if app.backend() == "postgres" {
        assert!(manifest["database"].is_null(), "{manifest}");
        assert!(!names.iter().any(|n| n.starts_with("database/")));
    } else {
        assert_eq!(manifest["database"], "database/drover.db");
    }

    let scratch = app.scratch();
    let backend = app.backend();
    let original_url = app.settings.database_url.clone();
    let stopped = app.shut_down().await;
    let restored = scratch.join("restored");
    // On PostgreSQL the database stays where it is (pg_dump and pg_restore are its backup);
    // on SQLite the restore writes the file the configuration names.
    let database_url = if backend == "postgres" {
        original_url
    } else {
        sqlite_url(&restored)
    };
    let run = drover(
        &restored,
        &database_url,
        &["restore", "--from", archive.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    if backend == "postgres" {
        assert!(
            text(&run.stdout).contains("pg_restore"),
            "{}",
            text(&run.stdout)
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |p: PathBuf| std::fs::metadata(p).expect("restored").permissions().mode() & 0o777;
        assert_eq!(mode(restored.clone()), 0o700);
        assert_eq!(mode(restored.join("pki/ca.key")), 0o600);
        assert_eq!(mode(restored.join("keys/root.key")), 0o600);
        assert_eq!(mode(restored.join("jwt.secret")), 0o600);
    }
    assert_eq!(
        std::fs::read_to_string(restored.join("pki/ca.crt")).expect("ca.crt"),
        ca_pem,
        "the fleet CA is byte for byte the same"
    );

    let app = stopped
        .start_changed(|s| {
            s.data_dir = restored.clone();
            s.database_url = database_url.clone();
        })
        .await;
    assert_eq!(app.data_dir(), restored.as_path());
    assert_eq!(app.ca_pem, ca_pem);
    let res = app
        .login("kept-operator", "kept-operator-password-123")
        .await;
    assert_eq!(
        res.status(),
        200,
        "the user created before the backup logs in"
    );
    let admin = app.admin_token().await;
    let listed: Value = app
        .get(&admin, &format!("/api/v1/devices?q={}", device.id))
        .await
        .json()
        .await
        .expect("devices");
    assert!(
        listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|d| d["id"] == device.id.as_str()),
        "the device is listed: {listed}"
    );
    let tokens: Value = app
        .get(&admin, "/api/v1/enrollment-tokens")
        .await
        .json()
        .await
        .expect("tokens");
    assert!(
        tokens["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|t| t["id"] == token_id.as_str()),
        "the enrollment token is listed: {tokens}"
    );
    // The device's certificate, issued before the backup, still passes mutual TLS.
    let res = app
        .device_client(Some((&device.key_pem, &device.cert_pem)))
        .get(format!("{}/device/v1/trust", app.device_base))
        .send()
        .await
        .expect("trust request");
    assert_eq!(res.status(), 200);
}

/// A copy of `archive` with one byte of `entry`'s content flipped.
fn corrupt(archive: &Path, entry: &str, to: &Path) {
    let at = entries(archive)
        .into_iter()
        .find(|(n, _)| n == entry)
        .map(|(_, at)| at)
        .expect("entry in the archive");
    let mut bytes = std::fs::read(archive).expect("read");
    bytes[usize::try_from(at).expect("offset")] ^= 0x01;
    std::fs::write(to, bytes).expect("write");
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restore"))
        .collect()
}

#[tokio::test]
async fn restore_refuses_bad_archives_busy_and_non_empty_targets_writing_nothing() {
    let app = spawn_app().await;
    let archive = backup_of(&app, "drover.backup").await;
    let scratch = app.scratch();
    let target = scratch.join("target");
    let url = if app.backend() == "postgres" {
        app.settings.database_url.clone()
    } else {
        sqlite_url(&target)
    };
    let restore = |from: PathBuf, force: bool| {
        let target = target.clone();
        let url = url.clone();
        async move {
            let mut args = vec!["restore".to_string(), "--from".into()];
            args.push(from.to_string_lossy().into_owned());
            if force {
                args.push("--force".into());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            drover(&target, &url, &args).await
        }
    };

    // One flipped byte in the CA key: refused, naming the file, and nothing written.
    let bad = scratch.join("corrupt.backup");
    corrupt(&archive, "data/pki/ca.key", &bad);
    let run = restore(bad, false).await;
    assert_eq!(run.status.code(), Some(1));
    let err = text(&run.stderr);
    assert!(
        err.contains("data/pki/ca.key") && err.contains("sha256") && err.contains("nothing"),
        "{err}"
    );
    assert!(!target.exists(), "nothing is written");
    assert!(leftovers(&scratch).is_empty(), "{:?}", leftovers(&scratch));

    // Cut in the middle.
    let bytes = std::fs::read(&archive).expect("read");
    let cut = scratch.join("truncated.backup");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let run = restore(cut, false).await;
    assert_eq!(run.status.code(), Some(1), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).contains("truncated"),
        "{}",
        text(&run.stderr)
    );
    assert!(!target.exists());

    // Not a backup at all.
    let garbage = scratch.join("garbage.backup");
    std::fs::write(
        &garbage,
        b"PK this is a zip file, not a tar archive".repeat(40),
    )
    .expect("write");
    let run = restore(garbage, false).await;
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("not a Drover backup"),
        "{}",
        text(&run.stderr)
    );
    let other_tar = scratch.join("other.tar");
    {
        let mut builder = tar::Builder::new(std::fs::File::create(&other_tar).expect("create"));
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "readme.txt", &b"hello"[..])
            .expect("append");
        builder.finish().expect("finish");
    }
    let run = restore(other_tar, false).await;
    assert_eq!(run.status.code(), Some(1));
    assert!(text(&run.stderr).contains("not a Drover backup"));

    // A manifest from a newer drover.
    let newer = scratch.join("newer.backup");
    {
        let manifest = json!({"format": "drover-backup", "schema": 99, "drover_version": "9.0.0",
            "created_at": "2030-01-01T00:00:00Z", "backend": "sqlite", "migration_version": 1,
            "database": null, "files": []});
        let body = serde_json::to_vec(&manifest).expect("json");
        let mut builder = tar::Builder::new(std::fs::File::create(&newer).expect("create"));
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o600);
        builder
            .append_data(&mut header, "drover-backup.json", body.as_slice())
            .expect("append");
        builder.finish().expect("finish");
    }
    let run = restore(newer, false).await;
    assert_eq!(run.status.code(), Some(1));
    let err = text(&run.stderr);
    assert!(err.contains("newer") && err.contains("9.0.0"), "{err}");

    // No such file.
    let run = restore(scratch.join("missing.backup"), false).await;
    assert_eq!(run.status.code(), Some(2));
    assert!(text(&run.stderr).contains("missing.backup"));
    assert!(!target.exists());

    // A non-empty target needs --force; what the backup does not hold (blobs/) stays.
    std::fs::create_dir_all(target.join("blobs")).expect("mkdir");
    std::fs::write(target.join("blobs/kept"), b"payload").expect("write");
    std::fs::write(target.join("jwt.secret"), b"old").expect("write");
    let run = restore(archive.clone(), false).await;
    assert_eq!(run.status.code(), Some(2));
    assert!(
        text(&run.stderr).contains("--force"),
        "{}",
        text(&run.stderr)
    );
    assert_eq!(
        std::fs::read(target.join("jwt.secret")).expect("kept"),
        b"old"
    );
    let run = restore(archive.clone(), true).await;
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert_eq!(
        std::fs::read(target.join("jwt.secret")).expect("restored"),
        std::fs::read(app.data_dir().join("jwt.secret")).expect("original")
    );
    assert_eq!(
        std::fs::read(target.join("blobs/kept")).expect("kept"),
        b"payload"
    );
    assert!(leftovers(&scratch).is_empty(), "{:?}", leftovers(&scratch));
    assert!(leftovers(&target).is_empty(), "{:?}", leftovers(&target));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(target.join("pki/ca.key"))
            .expect("restored")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Never over the data directory of a running server, --force or not.
    let run = drover(
        app.data_dir(),
        &app.settings.database_url,
        &[
            "restore",
            "--from",
            archive.to_str().expect("utf-8"),
            "--force",
        ],
    )
    .await;
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("running"),
        "{}",
        text(&run.stderr)
    );
}
