//! The `drover` command line: parses arguments, loads the settings, and calls
//! into the library. Exit codes: 0 success, 2 usage or configuration, 1 else.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::audit::{self, Actor};
use crate::config::Settings;
use crate::startup::{self, StartError};
use crate::store::Store;
use crate::users::{self, Role, Username};

/// Drover: an IoT fleet manager (device identities, signed OTA bundles, staged rollouts, telemetry).
#[derive(Debug, Parser)]
#[command(name = "drover", version, propagate_version = true)]
struct Cli {
    /// A TOML configuration file; DROVER_* environment variables override it.
    #[arg(long, global = true, env = "DROVER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: dashboard, REST API, device API and MQTT.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage operator accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Bundle signing keys and the root key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Trust documents signed offline.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Sign bundle manifests offline.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Write one archive with the SQLite database, the keys and the secrets (the server may run).
    Backup {
        /// The archive to write (a new file, mode 0600); keep it encrypted and offline.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Restore an archive from `drover backup` into the data directory (the server stopped).
    Restore {
        /// The archive `drover backup` wrote.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Replace a data directory (and SQLite file) that is not empty; blobs/ is kept.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List the signing keys the trust document names.
    List,
    /// Add a signing key and retire the active one.
    Rotate,
    /// Revoke a signing key: agents that take the next trust document refuse what it signed.
    Revoke {
        /// The key id (hex sha256 of its public key), as `drover keys list` shows it.
        keyid: String,
    },
    /// Move the root key out of the data directory (offline-root mode).
    ExportRoot {
        /// Where to write the root key (a new file, mode 0600); keep it offline.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TrustCommand {
    /// Sign a trust document with the root key offline and print its envelope.
    Sign {
        /// A root key file (PKCS#8 PEM); give two, old and new, for a root change.
        #[arg(long = "root-key", value_name = "FILE", required = true)]
        root_keys: Vec<PathBuf>,
        /// The trust document JSON (e.g. the draft `drover keys rotate` wrote).
        #[arg(long, value_name = "FILE")]
        document: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Sign a manifest and print the DSSE envelope that POST /api/v1/bundles accepts.
    Sign {
        /// The ed25519 signing key (PKCS#8 PEM, optionally passphrase-protected).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The manifest JSON (schema 1, every field given).
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// Read the key's passphrase from the first line of standard input.
        #[arg(long)]
        passphrase_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create an enrollment token and print the agent's join command.
    Create {
        /// How many devices may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is valid: 90s, 15m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        expires: String,
        /// A device type it admits (repeat for several; default: any).
        #[arg(long = "device-type", value_name = "TYPE")]
        device_types: Vec<String>,
        /// A tag given to its devices, KEY=VALUE (repeatable); wins over tags devices claim.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Devices stay pending until an operator accepts them.
        #[arg(long)]
        approval: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user; the password comes from --password-stdin or a prompt.
    Create {
        /// Login name: 1 to 64 letters, digits, '.', '_' or '-'.
        #[arg(long)]
        username: String,
        /// What the user may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Operator,
    Viewer,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::Operator => Role::Operator,
            RoleArg::Viewer => Role::Viewer,
        }
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref(), std::env::vars()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("drover: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drover: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => serve(settings).await,
            Command::Migrate => migrate(settings).await,
            Command::User(UserCommand::Create {
                username,
                role,
                password_stdin,
            }) => create_user(settings, &username, role.into(), password_stdin).await,
            Command::Token(TokenCommand::Create {
                uses,
                expires,
                device_types,
                tags,
                approval,
            }) => create_token(settings, uses, &expires, device_types, &tags, approval).await,
            Command::Keys(command) => keys_command(settings, command).await,
            Command::Backup { out } => backup(settings, &out).await,
            Command::Restore { from, force } => restore(settings, &from, force).await,
            Command::Trust(TrustCommand::Sign {
                root_keys,
                document,
            }) => trust_sign(&root_keys, &document),
            Command::Bundle(BundleCommand::Sign {
                key,
                manifest,
                passphrase_stdin,
            }) => {
                crate::bundles::sign::run(&key, &manifest, passphrase_stdin).map_err(Failure::from)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("drover: {message}");
            ExitCode::from(code)
        }
    }
}

/// A failed command: its exit code and one sentence.
struct Failure {
    code: u8,
    message: String,
}

impl From<StartError> for Failure {
    fn from(e: StartError) -> Self {
        Failure {
            code: u8::try_from(e.exit_code()).unwrap_or(1),
            message: e.to_string(),
        }
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        StartError::from(e).into()
    }
}

impl From<crate::error::Error> for Failure {
    fn from(e: crate::error::Error) -> Self {
        let code = if matches!(e, crate::error::Error::Invalid { .. }) {
            2
        } else {
            1
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<crate::backup::BackupError> for Failure {
    fn from(e: crate::backup::BackupError) -> Self {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(settings: Settings) -> Result<(), Failure> {
    // Every connected device holds a few descriptors (TLS socket, broker
    // link); the usual soft limit of 1024 would cap a fleet at a few hundred.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let app = startup::build(settings).await?;
    if let Some(password) = &app.initial_admin_password {
        println!(
            "Created the first admin user \"admin\" with the one-time password: {password}\n\
             It is shown only now. Sign in at http://{}/login and choose your own password.",
            app.http_addr()
        );
    }
    println!(
        "drover is listening: dashboard and API on http://{}, device API on https://{}",
        app.ports().http,
        app.ports().device
    );
    tracing::info!(http = %app.ports().http, store = app.store().backend(), "drover started");
    let handle = app.handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: finishing requests in flight");
        handle.stop(true).await;
    });
    app.run_until_stopped().await.map_err(|e| Failure {
        code: 1,
        message: format!("the server stopped with an error: {e}"),
    })?;
    tracing::info!("drover stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn migrate(settings: Settings) -> Result<(), Failure> {
    let store = Store::connect(&settings.database_url).await?;
    store.migrate().await?;
    store.close().await;
    println!(
        "migrations applied to {}",
        crate::config::redact_url(&settings.database_url)
    );
    Ok(())
}

async fn create_user(
    settings: Settings,
    username: &str,
    role: Role,
    password_stdin: bool,
) -> Result<(), Failure> {
    let name = Username::parse(username)?;
    let password = read_password(password_stdin)?;
    let store = Store::connect(&settings.database_url).await?;
    store.migrate().await?;
    let result = users::create(&store, &name, &password, role, false).await;
    let result = audit::record_result(
        &store,
        &Actor::cli(),
        "user.create",
        Some(name.as_str()),
        result,
    )
    .await;
    store.close().await;
    let user = result?;
    println!("created user {} with the {} role", user.username, role);
    Ok(())
}

fn read_password(from_stdin: bool) -> Result<String, Failure> {
    let usage = |m: &str| Failure {
        code: 2,
        message: m.to_string(),
    };
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|e| {
            usage(&format!(
                "cannot read the password from standard input: {e}"
            ))
        })?;
        let password = line.trim_end_matches(['\n', '\r']).to_string();
        if password.is_empty() {
            return Err(usage(
                "no password on standard input; pipe one line with the password, or run without --password-stdin for a prompt",
            ));
        }
        return Ok(password);
    }
    let first = rpassword::prompt_password("Password: ")
        .map_err(|e| usage(&format!("cannot read the password: {e}")))?;
    let again = rpassword::prompt_password("Repeat the password: ")
        .map_err(|e| usage(&format!("cannot read the password: {e}")))?;
    if first != again {
        return Err(usage("the two passwords differ; run the command again"));
    }
    Ok(first)
}

async fn create_token(
    settings: Settings,
    uses: u32,
    expires: &str,
    device_types: Vec<String>,
    tags: &[String],
    approval: bool,
) -> Result<(), Failure> {
    use crate::identity::{Tags, tokens};
    let usage = |e: crate::error::Error| Failure {
        code: 2,
        message: format!("--{e}"),
    };
    let new = tokens::NewToken {
        uses,
        expires_in: crate::duration::parse("expires", expires).map_err(usage)?,
        device_types,
        tags: Tags::from_pairs("tag", tags, '=').map_err(usage)?,
        approval,
    };
    new.validate().map_err(|e| {
        usage(match e {
            crate::error::Error::Invalid { field, message } => crate::error::Error::Invalid {
                field: field
                    .replace('_', "-")
                    .replace("expires-in", "expires")
                    .replace("device-types", "device-type"),
                message,
            },
            other => other,
        })
    })?;
    std::fs::create_dir_all(&settings.data_dir).map_err(|e| Failure {
        code: 2,
        message: format!(
            "cannot use the data directory {}: {e}",
            settings.data_dir.display()
        ),
    })?;
    let ca = crate::identity::ca::FleetCa::load_or_create(
        &settings.data_dir,
        settings.ca_passphrase.as_ref().map(|p| p.0.as_str()),
    )?;
    let store = Store::connect(&settings.database_url).await?;
    store.migrate().await?;
    let actor = Actor::cli();
    let result = tokens::create(&store, &new, &actor.name).await;
    let target = result.as_ref().ok().map(|c| c.token.id.clone());
    let result = audit::record_result(
        &store,
        &actor,
        "enrollment_token.create",
        target.as_deref(),
        result,
    )
    .await;
    store.close().await;
    let created = result?;
    let url = device_url(&settings);
    println!(
        "Enrollment token {} ({} use{}, expires {}). Run on the device:\n\n  {}\n",
        created.token.id,
        uses,
        if uses == 1 { "" } else { "s" },
        crate::timefmt::rfc3339(created.token.expires_at),
        crate::identity::views::join_command(&url, &created.secret, &ca.hash())
    );
    Ok(())
}

/// The device API URL devices use: the first public host name and the bound
/// device port (from ports.json when the server runs on port 0).
fn device_url(settings: &Settings) -> String {
    let host = settings
        .public_hostnames
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    let mut port = settings.device_listen.port();
    if let Ok(text) = std::fs::read_to_string(settings.data_dir.join("ports.json"))
        && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(bound) = ports["device"]
            .as_str()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        && (port == 0 || port == bound.port())
    {
        port = bound.port();
    }
    format!("https://{host}:{port}")
}

async fn keys_command(settings: Settings, command: KeysCommand) -> Result<(), Failure> {
    use crate::keys::{self, Change, Keyring};
    let keyring = Keyring::load_or_create(
        &settings.data_dir,
        settings.ca_passphrase.as_ref().map(|p| p.0.as_str()),
    )?;
    if let KeysCommand::ExportRoot { out } = &command {
        let id = keyring.export_root(out)?;
        println!(
            "the root key {id} is now only in {}; keep it offline. From now on sign trust \
             changes with `drover trust sign --root-key {} --document FILE` and publish them \
             with POST /api/v1/trust",
            out.display(),
            out.display()
        );
        return Ok(());
    }
    let store = Store::connect(&settings.database_url).await?;
    store.migrate().await?;
    if keys::current_trust(&store).await?.is_none() {
        store.close().await;
        return Err(Failure {
            code: 1,
            message: "there is no trust document yet; start the server once (`drover serve`) \
                      so it creates the keys and the first one"
                .into(),
        });
    }
    let report = |change: Change| match change {
        Change::Published(envelope) => {
            let version = drover_proto::TrustDocument::from_json(envelope.payload())
                .map(|d| d.version)
                .unwrap_or_default();
            println!("trust document version {version} is published; agents fetch it when told");
        }
        Change::NeedsRootSignature { path, .. } => println!(
            "the root key is offline: sign {} with `drover trust sign --root-key ROOT \
             --document {}` and POST the envelope to /api/v1/trust",
            path.display(),
            path.display()
        ),
    };
    let result = match command {
        KeysCommand::List => keys::list(&store, &keyring).await.map(|keys| {
            println!("{:<64}  {:<8}  {:<5}  kinds", "keyid", "status", "here");
            for k in keys {
                let kinds = if k.kinds.is_empty() {
                    "all".to_string()
                } else {
                    k.kinds.join(",")
                };
                let here = if k.held_here { "yes" } else { "no" };
                println!("{:<64}  {:<8}  {:<5}  {kinds}", k.keyid, k.status, here);
            }
        }),
        KeysCommand::Rotate => {
            let result = keys::rotate(&store, &keyring).await;
            audit::record_result(&store, &Actor::cli(), "keys.rotate", None, result)
                .await
                .map(|(change, id)| {
                    println!("created signing key {id}");
                    report(change);
                })
        }
        KeysCommand::Revoke { keyid } => {
            let result = keys::revoke(&store, &keyring, &keyid).await;
            audit::record_result(&store, &Actor::cli(), "keys.revoke", Some(&keyid), result)
                .await
                .map(|change| {
                    println!("revoked {keyid}");
                    report(change);
                })
        }
        KeysCommand::ExportRoot { .. } => Ok(()),
    };
    store.close().await;
    result.map_err(Failure::from)
}

fn trust_sign(root_keys: &[PathBuf], document: &std::path::Path) -> Result<(), Failure> {
    let bytes = std::fs::read(document).map_err(|e| Failure {
        code: 2,
        message: format!("--document {}: {e}", document.display()),
    })?;
    let envelope = crate::keys::sign_offline(&bytes, root_keys)?;
    println!("{}", envelope.to_json());
    Ok(())
}

async fn backup(settings: Settings, out: &std::path::Path) -> Result<(), Failure> {
    let manifest = crate::backup::backup(&settings, out).await?;
    let keys = manifest
        .files
        .iter()
        .filter(|f| f.path.starts_with("data/"))
        .count();
    let migration = manifest
        .migration_version
        .map(|v| format!(" at migration {v}"))
        .unwrap_or_default();
    if manifest.database.is_some() {
        println!(
            "wrote {}: the SQLite database{migration} and {keys} files of keys and secrets. \
             Keep it encrypted and offline: it holds the fleet CA and the signing keys.",
            out.display()
        );
    } else {
        println!(
            "wrote {}: {keys} files of keys and secrets. The PostgreSQL database{migration} is \
             NOT in it: dump it with `pg_dump --format=custom` before taking this archive (see \
             docs/OPERATIONS.md). Keep both encrypted and offline.",
            out.display()
        );
    }
    Ok(())
}

async fn restore(settings: Settings, from: &std::path::Path, force: bool) -> Result<(), Failure> {
    let restored = crate::backup::restore(&settings, from, force).await?;
    let m = &restored.manifest;
    let what = if m.database.is_some() {
        "the SQLite database, keys and secrets"
    } else {
        "keys and secrets"
    };
    println!(
        "restored {what} from {} (drover {}, {}) into {}.",
        from.display(),
        m.drover_version,
        m.created_at,
        restored.data_dir.display()
    );
    if m.database.is_none() {
        println!(
            "The backup holds no database ({}): restore the pg_dump taken with it (pg_restore) \
             into the database DROVER_DATABASE_URL names before starting the server.",
            m.backend
        );
    }
    println!("Start the server; migrations newer than the backup run at start.");
    Ok(())
}
