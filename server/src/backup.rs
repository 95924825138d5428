//! `drover backup` and `drover restore`: one tar archive holding a consistent
//! copy of the SQLite database (`VACUUM INTO`), the data directory's keys and
//! secrets, and a manifest naming every file with its sha256. Restore checks
//! every checksum before it writes anything, and swaps the data directory in whole.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Settings, redact_url};
use crate::store::Store;

/// The manifest's name, the first entry of every backup.
pub const MANIFEST_NAME: &str = "drover-backup.json";
/// The manifest's `format`.
const FORMAT: &str = "drover-backup";
/// The newest manifest schema this version reads and the one it writes.
const SCHEMA: u32 = 1;
/// Where the SQLite database sits in the archive.
const DATABASE_ENTRY: &str = "database/drover.db";
/// Data directory files sit under this prefix in the archive.
const DATA_PREFIX: &str = "data/";
/// What a backup takes from the data directory: the fleet CA and server
/// certificates, the root and signing keys, the JWT secret and the broker client id.
const DATA_ENTRIES: [&str; 4] = ["pki", "keys", "jwt.secret", "replica.id"];

/// Why a backup or restore did not happen; the message is one sentence.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Bad flags or configuration (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// Anything else (exit code 1).
    #[error("{0}")]
    Failed(String),
}

impl BackupError {
    /// The process exit code this error ends with.
    pub fn exit_code(&self) -> u8 {
        match self {
            BackupError::Usage(_) => 2,
            BackupError::Failed(_) => 1,
        }
    }
}

/// The archive's table of contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `drover-backup`.
    pub format: String,
    /// Manifest schema; a restore refuses a newer one.
    pub schema: u32,
    /// The `drover` version that wrote it.
    pub drover_version: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// The newest migration applied to the database backed up.
    pub migration_version: Option<i64>,
    /// The database's entry, absent on PostgreSQL (use `pg_dump`).
    pub database: Option<String>,
    /// Every other entry of the archive.
    pub files: Vec<ManifestFile>,
}

/// One file of the archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path in the archive.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Hex sha256 of the bytes.
    pub sha256: String,
}

fn failed(what: impl std::fmt::Display) -> BackupError {
    BackupError::Failed(what.to_string())
}

/// Writes a backup of the configured database and data directory to `out`.
pub async fn backup(settings: &Settings, out: &Path) -> Result<Manifest, BackupError> {
    if out.exists() {
        return Err(BackupError::Usage(format!(
            "--out {}: the file exists; give a new file name (a backup never overwrites one)",
            out.display()
        )));
    }
    if !settings.data_dir.join("pki").join("ca.crt").is_file() {
        return Err(BackupError::Usage(format!(
            "the data directory {} holds no fleet CA (pki/ca.crt); set DROVER_DATA_DIR (or data_dir in --config) to the server's data directory",
            settings.data_dir.display()
        )));
    }
    let store = Store::connect(&settings.database_url)
        .await
        .map_err(|e| BackupError::Usage(e.to_string()))?;
    let result = snapshot(settings, &store, out).await;
    store.close().await;
    let (manifest, db_tmp) = result?;
    let data_dir = settings.data_dir.clone();
    let out = out.to_path_buf();
    let written = tokio::task::spawn_blocking({
        let manifest = manifest.clone();
        let db_tmp = db_tmp.clone();
        move || write_archive(&data_dir, manifest, db_tmp.as_deref(), &out)
    })
    .await
    .map_err(|e| failed(format!("the backup task failed: {e}")))?;
    if let Some(tmp) = &db_tmp {
        let _ = std::fs::remove_file(tmp);
    }
    written
}

/// Reads the migration version and, on SQLite, copies the database with `VACUUM INTO`.
async fn snapshot(
    settings: &Settings,
    store: &Store,
    out: &Path,
) -> Result<(Manifest, Option<PathBuf>), BackupError> {
    let no_schema = |e: sqlx::Error| {
        failed(format!(
            "cannot read the migrations of the database at {}: {e}; run `drover migrate` or check DROVER_DATABASE_URL",
            redact_url(&settings.database_url)
        ))
    };
    let migration_version = crate::on_store!(store, pool => sqlx::query_scalar::<_, Option<i64>>(
        "SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE"
    )
    .fetch_one(pool)
    .await)
    .map_err(no_schema)?;
    let db_tmp = match store {
        Store::Sqlite(pool) => {
            let dir = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let tmp = dir.join(format!(
                ".drover-backup-{}.db",
                hex::encode(rand::random::<[u8; 6]>())
            ));
            sqlx::query("VACUUM INTO ?")
                .bind(tmp.to_string_lossy().into_owned())
                .execute(pool)
                .await
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    failed(format!(
                        "cannot copy the SQLite database into {}: {e}; check that the directory of --out is writable",
                        tmp.display()
                    ))
                })?;
            Some(tmp)
        }
        Store::Postgres(_) => None,
    };
    let manifest = Manifest {
        format: FORMAT.into(),
        schema: SCHEMA,
        drover_version: env!("CARGO_PKG_VERSION").into(),
        created_at: crate::timefmt::rfc3339(crate::store::now_ms()),
        backend: store.backend().into(),
        migration_version,
        database: db_tmp.as_ref().map(|_| DATABASE_ENTRY.to_string()),
        files: Vec::new(),
    };
    Ok((manifest, db_tmp))
}

/// The data directory files a backup holds, as (archive path, bytes); taken
/// after the database copy, since keys are only ever added.
fn data_files(data_dir: &Path) -> Result<Vec<(String, Vec<u8>)>, BackupError> {
    let mut files = Vec::new();
    for name in DATA_ENTRIES {
        collect(data_dir, Path::new(name), &mut files)?;
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

fn collect(root: &Path, rel: &Path, files: &mut Vec<(String, Vec<u8>)>) -> Result<(), BackupError> {
    let path = root.join(rel);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(failed(format!("cannot read {}: {e}", path.display()))),
    };
    let hidden = rel
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    if hidden {
        // Half-written secrets (`.NAME.tmp`) are not part of the state.
        return Ok(());
    }
    if meta.is_dir() {
        let entries = std::fs::read_dir(&path)
            .map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
            collect(root, &rel.join(entry.file_name()), files)?;
        }
    } else if meta.is_file() {
        let bytes = std::fs::read(&path)
            .map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
        let rel = rel
            .to_str()
            .ok_or_else(|| failed(format!("{} is not a UTF-8 file name", path.display())))?;
        files.push((format!("{DATA_PREFIX}{rel}"), bytes));
    }
    Ok(())
}

fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    hash_reader(&mut std::fs::File::open(path)?)
}

fn header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(u64::try_from(crate::store::now_ms() / 1000).unwrap_or_default());
    header
}

/// Writes the archive through a temporary file beside `out` and a rename.
fn write_archive(
    data_dir: &Path,
    mut manifest: Manifest,
    db: Option<&Path>,
    out: &Path,
) -> Result<Manifest, BackupError> {
    let data = data_files(data_dir)?;
    if let Some(db) = db {
        let (size, sha256) = sha256_file(db).map_err(|e| {
            failed(format!(
                "cannot read the database copy {}: {e}",
                db.display()
            ))
        })?;
        manifest.files.push(ManifestFile {
            path: DATABASE_ENTRY.into(),
            size,
            sha256,
        });
    }
    for (path, bytes) in &data {
        manifest.files.push(ManifestFile {
            path: path.clone(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        });
    }
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| failed(format!("cannot encode the manifest: {e}")))?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("backup");
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |e: std::io::Error| failed(format!("cannot write {}: {e}", out.display()));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&tmp).map_err(io)?;
        let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
        builder
            .append_data(
                &mut header(json.len() as u64),
                MANIFEST_NAME,
                json.as_slice(),
            )
            .map_err(io)?;
        if let Some(db) = db {
            let file = std::fs::File::open(db).map_err(io)?;
            let size = file.metadata().map_err(io)?.len();
            builder
                .append_data(&mut header(size), DATABASE_ENTRY, file)
                .map_err(io)?;
        }
        for (path, bytes) in &data {
            builder
                .append_data(&mut header(bytes.len() as u64), path, bytes.as_slice())
                .map_err(io)?;
        }
        let mut writer = builder.into_inner().map_err(io)?;
        writer.flush().map_err(io)?;
        writer
            .into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        std::fs::rename(&tmp, out).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| manifest)
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// The data directory written.
    pub data_dir: PathBuf,
}

/// Restores a backup into the configured data directory (and SQLite file).
pub async fn restore(
    settings: &Settings,
    from: &Path,
    force: bool,
) -> Result<Restored, BackupError> {
    match std::fs::metadata(from) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(BackupError::Usage(format!(
                "--from {}: not a file; give the archive `drover backup` wrote",
                from.display()
            )));
        }
        Err(e) => {
            return Err(BackupError::Usage(format!(
                "--from {}: {e}; give the archive `drover backup` wrote",
                from.display()
            )));
        }
    }
    let archive = from.to_path_buf();
    let manifest = tokio::task::spawn_blocking(move || verify(&archive))
        .await
        .map_err(|e| failed(format!("the restore task failed: {e}")))??;
    let sqlite_target = if settings.database_url.starts_with("sqlite:") {
        Some(sqlite_path(&settings.database_url)?)
    } else {
        None
    };
    if manifest.database.is_some() && sqlite_target.is_none() {
        return Err(BackupError::Usage(format!(
            "{} holds a SQLite database but DROVER_DATABASE_URL points at PostgreSQL; set DROVER_DATABASE_URL to the sqlite:// file to restore it into",
            from.display()
        )));
    }
    let data_dir = settings.data_dir.clone();
    if let Some(addr) = running_server(&data_dir).await {
        return Err(failed(format!(
            "a server is running on the data directory {} (http://{addr}/healthz answers); stop it before restoring",
            data_dir.display()
        )));
    }
    let db_target = sqlite_target.filter(|_| manifest.database.is_some());
    if !force {
        if !is_empty_dir(&data_dir) {
            return Err(BackupError::Usage(format!(
                "the data directory {} is not empty; restore into a new directory (DROVER_DATA_DIR) or add --force to replace what the backup holds",
                data_dir.display()
            )));
        }
        if let Some(db) = &db_target
            && std::fs::metadata(db).is_ok_and(|m| m.len() > 0)
        {
            return Err(BackupError::Usage(format!(
                "the database {} exists; set DROVER_DATABASE_URL to a new file or add --force to replace it",
                db.display()
            )));
        }
    }
    let archive = from.to_path_buf();
    let plan = Plan {
        archive,
        data_dir: data_dir.clone(),
        db: db_target,
        manifest: manifest.clone(),
    };
    tokio::task::spawn_blocking(move || plan.apply())
        .await
        .map_err(|e| failed(format!("the restore task failed: {e}")))??;
    Ok(Restored { manifest, data_dir })
}

fn sqlite_path(url: &str) -> Result<PathBuf, BackupError> {
    use std::str::FromStr;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(|e| {
        BackupError::Usage(format!(
            "DROVER_DATABASE_URL {} is not a valid database URL: {e}",
            redact_url(url)
        ))
    })?;
    Ok(options.get_filename().to_path_buf())
}

fn is_empty_dir(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// The address of a server that answers `/healthz` for this data directory (from its ports.json).
async fn running_server(data_dir: &Path) -> Option<std::net::SocketAddr> {
    let text = std::fs::read_to_string(data_dir.join("ports.json")).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mut addr: std::net::SocketAddr = ports["http"].as_str()?.parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .ok()?;
    let res = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .ok()?;
    res.status().is_success().then_some(addr)
}

/// Reads the whole archive without writing anything: the manifest first,
/// then every file against its size and sha256.
fn verify(archive: &Path) -> Result<Manifest, BackupError> {
    let shown = archive.display();
    let not_backup = |why: String| {
        failed(format!(
            "{shown} is not a Drover backup ({why}); give the archive `drover backup` wrote"
        ))
    };
    let file = std::fs::File::open(archive)
        .map_err(|e| BackupError::Usage(format!("--from {shown}: {e}")))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    let mut entries = tar
        .entries()
        .map_err(|e| not_backup(format!("not a tar archive: {e}")))?;
    let mut first = match entries.next() {
        Some(Ok(entry)) => entry,
        Some(Err(e)) => return Err(not_backup(format!("not a tar archive: {e}"))),
        None => return Err(not_backup("it is empty".into())),
    };
    let first_name = first
        .path()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if first_name != MANIFEST_NAME {
        return Err(not_backup(format!(
            "it does not begin with {MANIFEST_NAME}"
        )));
    }
    let mut json = Vec::new();
    first
        .read_to_end(&mut json)
        .map_err(|e| not_backup(format!("{MANIFEST_NAME} cannot be read: {e}")))?;
    drop(first);
    let value: serde_json::Value = serde_json::from_slice(&json)
        .map_err(|e| not_backup(format!("{MANIFEST_NAME} is not JSON: {e}")))?;
    if value["format"] != FORMAT {
        return Err(not_backup(format!(
            "{MANIFEST_NAME} is not a Drover manifest"
        )));
    }
    let newer = |what: String| {
        failed(format!(
            "{shown} was written by drover {}, {what}, newer than this drover {}; restore it with drover {} or newer",
            value["drover_version"].as_str().unwrap_or("?"),
            env!("CARGO_PKG_VERSION"),
            value["drover_version"].as_str().unwrap_or("?"),
        ))
    };
    let schema = value["schema"].as_u64().unwrap_or(0);
    if schema > u64::from(SCHEMA) {
        return Err(newer(format!("backup format {schema}")));
    }
    let manifest: Manifest = serde_json::from_value(value.clone())
        .map_err(|e| not_backup(format!("{MANIFEST_NAME} is incomplete: {e}")))?;
    if let Some(version) = manifest.migration_version
        && let Some(known) = crate::store::latest_migration(&manifest.backend)
        && version > known
    {
        return Err(newer(format!("database migration {version}")));
    }
    let mut expected: BTreeMap<&str, &ManifestFile> = BTreeMap::new();
    for f in &manifest.files {
        let allowed = f.path == DATABASE_ENTRY
            || (f.path.starts_with(DATA_PREFIX) && safe_relative(&f.path[DATA_PREFIX.len()..]));
        if !allowed || expected.insert(f.path.as_str(), f).is_some() {
            return Err(not_backup(format!(
                "{MANIFEST_NAME} names an unexpected file {:?}",
                f.path
            )));
        }
    }
    if manifest
        .database
        .as_deref()
        .is_some_and(|d| !expected.contains_key(d))
    {
        return Err(not_backup(format!(
            "{MANIFEST_NAME} names a database it does not list"
        )));
    }
    let mut seen = BTreeSet::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            failed(format!(
                "{shown} is damaged or truncated: {e}; nothing was restored"
            ))
        })?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(file) = expected.get(name.as_str()) else {
            return Err(failed(format!(
                "{shown} holds {name:?}, which its manifest does not list; nothing was restored"
            )));
        };
        if !seen.insert(name.clone()) {
            return Err(failed(format!(
                "{shown} holds {name} twice; nothing was restored"
            )));
        }
        let (size, sha256) = hash_reader(&mut entry).map_err(|e| {
            failed(format!(
                "{shown} is damaged or truncated at {name}: {e}; nothing was restored"
            ))
        })?;
        if size != file.size || sha256 != file.sha256 {
            return Err(failed(format!(
                "{shown} is corrupt: {name} does not match its sha256 in the manifest; nothing was restored"
            )));
        }
    }
    if let Some(missing) = expected.keys().find(|p| !seen.contains(**p)) {
        return Err(failed(format!(
            "{shown} is truncated: {missing} is missing; nothing was restored"
        )));
    }
    Ok(manifest)
}

fn hash_reader(reader: &mut impl Read) -> std::io::Result<(u64, String)> {
    copy_hashed(reader, &mut std::io::sink())
}

/// Copies `reader` into `writer`; answers the bytes copied and their sha256.
fn copy_hashed(reader: &mut impl Read, writer: &mut impl Write) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// A relative path of plain names only (no `..`, no root).
fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// A verified archive and where its files go.
struct Plan {
    archive: PathBuf,
    data_dir: PathBuf,
    /// The SQLite file to restore the database into.
    db: Option<PathBuf>,
    manifest: Manifest,
}

impl Plan {
    /// Unpacks into a new directory, then moves it into place: the whole
    /// directory when the data directory does not exist yet, else entry by
    /// entry from a directory inside it (a volume's mount point cannot be renamed).
    fn apply(self) -> Result<(), BackupError> {
        let parent = self
            .data_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let name = self
            .data_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("drover-data")
            .to_string();
        std::fs::create_dir_all(&parent)
            .map_err(|e| failed(format!("cannot create {}: {e}", parent.display())))?;
        let suffix = hex::encode(rand::random::<[u8; 6]>());
        let exists = self.data_dir.is_dir();
        let staged = if exists {
            self.data_dir.join(format!(".restore-{suffix}"))
        } else {
            parent.join(format!(".{name}.restore-{suffix}"))
        };
        // The database goes inside the staged directory when it lives in the data directory.
        let db_inside = self.db.as_ref().and_then(|db| inside(db, &self.data_dir));
        let db_staged = match (&self.db, &db_inside) {
            (Some(_), Some(rel)) => Some(staged.join(rel)),
            (Some(db), None) => Some(db.with_file_name(format!(
                ".{}.restore-{suffix}",
                db.file_name().and_then(|n| n.to_str()).unwrap_or("drover.db")
            ))),
            (None, _) => None,
        };
        let result = self.unpack(&staged, db_staged.as_deref());
        let result = result.and_then(|()| {
            if exists {
                self.swap_entries(&staged, &suffix, db_inside.as_deref())
            } else {
                std::fs::rename(&staged, &self.data_dir)
                    .map_err(|e| failed(format!("cannot restore {}: {e}", self.data_dir.display())))
            }
        });
        let result = result.and_then(|()| self.place_database(db_staged.as_deref(), &db_inside));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staged);
            if let (Some(tmp), None) = (&db_staged, &db_inside) {
                let _ = std::fs::remove_file(tmp);
            }
        }
        result
    }

    /// Moves the staged entries into the existing data directory; what they
    /// replace, `ports.json` and the old database go, and the rest (blobs/) stays.
    /// On an error every entry moved goes back where it was.
    fn swap_entries(
        &self,
        staged: &Path,
        suffix: &str,
        db_inside: Option<&Path>,
    ) -> Result<(), BackupError> {
        let io = |what: &Path, e: std::io::Error| {
            failed(format!("cannot restore {}: {e}", what.display()))
        };
        let new: Vec<std::ffi::OsString> = std::fs::read_dir(staged)
            .map_err(|e| io(staged, e))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        let mut gone: Vec<std::ffi::OsString> = new.clone();
        gone.push("ports.json".into());
        if let Some(rel) = db_inside.and_then(|r| r.to_str()) {
            for end in ["", "-wal", "-shm", "-journal"] {
                gone.push(format!("{rel}{end}").into());
            }
        }
        let old = self.data_dir.join(format!(".restore-old-{suffix}"));
        private_dir(&old)?;
        let mut aside = Vec::new();
        let mut placed = Vec::new();
        let undo = |aside: &[std::ffi::OsString], placed: &[std::ffi::OsString]| {
            for n in placed {
                let _ = std::fs::rename(self.data_dir.join(n), staged.join(n));
            }
            for n in aside {
                let _ = std::fs::rename(old.join(n), self.data_dir.join(n));
            }
            let _ = std::fs::remove_dir_all(&old);
        };
        for n in &gone {
            let path = self.data_dir.join(n);
            if std::fs::symlink_metadata(&path).is_err() {
                continue;
            }
            if let Err(e) = std::fs::rename(&path, old.join(n)) {
                undo(&aside, &placed);
                return Err(io(&path, e));
            }
            aside.push(n.clone());
        }
        for n in &new {
            if let Err(e) = std::fs::rename(staged.join(n), self.data_dir.join(n)) {
                undo(&aside, &placed);
                return Err(io(&self.data_dir.join(n), e));
            }
            placed.push(n.clone());
        }
        let _ = std::fs::remove_dir_all(&old);
        let _ = std::fs::remove_dir(staged);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ =
                std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700));
        }
        Ok(())
    }

    /// Renames a database restored outside the data directory into place.
    fn place_database(
        &self,
        db_staged: Option<&Path>,
        db_inside: &Option<PathBuf>,
    ) -> Result<(), BackupError> {
        if let (Some(db), Some(tmp), None) = (&self.db, db_staged, db_inside) {
            for end in ["-wal", "-shm", "-journal"] {
                let mut side = db.as_os_str().to_owned();
                side.push(end);
                let _ = std::fs::remove_file(PathBuf::from(side));
            }
            std::fs::rename(tmp, db)
                .map_err(|e| failed(format!("cannot restore {}: {e}", db.display())))?;
        }
        Ok(())
    }

    fn unpack(&self, staged: &Path, db_staged: Option<&Path>) -> Result<(), BackupError> {
        private_dir(staged)?;
        let shown = self.archive.display();
        let file = std::fs::File::open(&self.archive)
            .map_err(|e| failed(format!("cannot read {shown}: {e}")))?;
        let mut tar = tar::Archive::new(std::io::BufReader::new(file));
        let expected: BTreeMap<&str, &ManifestFile> = self
            .manifest
            .files
            .iter()
            .map(|f| (f.path.as_str(), f))
            .collect();
        let entries = tar
            .entries()
            .map_err(|e| failed(format!("cannot read {shown}: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| failed(format!("cannot read {shown}: {e}")))?;
            let name = entry
                .path()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == MANIFEST_NAME {
                continue;
            }
            let Some(file) = expected.get(name.as_str()) else {
                return Err(failed(format!("{shown} changed while it was restored")));
            };
            let dest = if name == DATABASE_ENTRY {
                match db_staged {
                    Some(p) => p.to_path_buf(),
                    None => continue,
                }
            } else {
                staged.join(&name[DATA_PREFIX.len()..])
            };
            if let Some(dir) = dest.parent() {
                private_dir_all(dir)?;
            }
            let (size, sha256) = write_private(&mut entry, &dest)
                .map_err(|e| failed(format!("cannot write {}: {e}", dest.display())))?;
            if size != file.size || sha256 != file.sha256 {
                return Err(failed(format!("{shown} changed while it was restored")));
            }
        }
        Ok(())
    }
}

/// The database's path relative to the data directory, when it lies inside it.
fn inside(db: &Path, data_dir: &Path) -> Option<PathBuf> {
    if let Ok(rel) = db.strip_prefix(data_dir) {
        return Some(rel.to_path_buf());
    }
    let dir = std::fs::canonicalize(data_dir).ok()?;
    let parent = std::fs::canonicalize(db.parent()?).ok()?;
    Some(parent.strip_prefix(&dir).ok()?.join(db.file_name()?))
}

fn private_dir(path: &Path) -> Result<(), BackupError> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(path)
        .map_err(|e| failed(format!("cannot create {}: {e}", path.display())))
}

fn private_dir_all(path: &Path) -> Result<(), BackupError> {
    if path.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(path)
        .map_err(|e| failed(format!("cannot create {}: {e}", path.display())))
}

/// Copies a reader into a new file readable only by its owner; answers its size and sha256.
fn write_private(reader: &mut impl Read, dest: &Path) -> std::io::Result<(u64, String)> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(dest)?;
    let copied = copy_hashed(reader, &mut file)?;
    file.sync_all()?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_safe() {
        assert!(safe_relative("keys/root.key"));
        assert!(!safe_relative("../etc/passwd"));
        assert!(!safe_relative("/etc/passwd"));
        assert!(!safe_relative("keys/../../x"));
        assert!(!safe_relative(""));
    }
}
