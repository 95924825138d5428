//! The `drover serve` child process: started with a data directory and
//! listen addresses, found through `DATA_DIR/ports.json`, stopped with
//! SIGTERM. Its stderr is counted and kept in a capped log file, so a
//! server that logs in a loop cannot fill the disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// How long a start may take until `ports.json` appears.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest server log the benchmark keeps on disk.
const LOG_CAP_BYTES: u64 = 8 << 20;
/// Lines of stderr kept in memory for the report.
const FIRST_LINES: usize = 12;

/// The addresses the server bound (`ports.json`).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Dashboard and REST API.
    pub http: SocketAddr,
    /// Device API (mutual TLS).
    pub device: SocketAddr,
    /// The MQTT gateway of the embedded broker.
    pub mqtt: SocketAddr,
}

/// What the server wrote to stderr, over all its starts.
#[derive(Debug, Default)]
pub struct ServerLog {
    lines: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl ServerLog {
    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// The first few lines.
    pub fn first_lines(&self) -> Vec<String> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn add(&self, line: &str) {
        self.lines.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() < FIRST_LINES {
            first.push(line.chars().take(300).collect());
        }
    }
}

/// A running `drover serve`.
pub struct ServerProcess {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// What it bound.
    pub ports: Ports,
    /// The first admin's one-time password (first start only).
    pub admin_password: Option<String>,
}

/// What the server stores into and which broker it uses, where not its defaults (SQLite in the
/// data directory, the embedded broker).
#[derive(Debug, Clone, Default)]
pub struct Backing {
    /// A plain `mqtt://` broker (`DROVER_MQTT_URL`); devices publish there.
    pub broker: Option<SocketAddr>,
    /// `DROVER_DATABASE_URL`, e.g. a PostgreSQL database.
    pub database_url: Option<String>,
}

/// Starts `bin serve` on `data_dir`, listening on the given addresses
/// (`127.0.0.1:0` for any port), and waits until it wrote `ports.json`.
/// With `first_start`, also waits for the one-time admin password on stdout.
pub async fn start(
    bin: &Path,
    data_dir: &Path,
    listen: &Ports,
    first_start: bool,
    log: Arc<ServerLog>,
) -> Result<ServerProcess> {
    start_backed(bin, data_dir, listen, first_start, log, &Backing::default()).await
}

/// [`start`] with another store or an external broker.
pub async fn start_backed(
    bin: &Path,
    data_dir: &Path,
    listen: &Ports,
    first_start: bool,
    log: Arc<ServerLog>,
    backing: &Backing,
) -> Result<ServerProcess> {
    let ports_file = data_dir.join("ports.json");
    match std::fs::remove_file(&ports_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("removing {}", ports_file.display())),
    }
    // The server needs a file descriptor per socket: raise its soft limit to the hard limit
    // before exec (the shell's ulimit, so no unsafe pre_exec of our own).
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -n "$(ulimit -H -n)" 2>/dev/null; exec "$0" serve"#)
        .arg(bin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DROVER_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("DROVER_DATA_DIR", data_dir)
        .env("DROVER_HTTP_LISTEN", listen.http.to_string())
        .env("DROVER_DEVICE_LISTEN", listen.device.to_string())
        .env("DROVER_MQTT_LISTEN", listen.mqtt.to_string())
        .env("DROVER_ENROLL_RATE_PER_MINUTE", "1000000")
        .env("DROVER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(broker) = backing.broker {
        cmd.env("DROVER_MQTT_URL", format!("mqtt://{broker}"));
    }
    if let Some(url) = &backing.database_url {
        cmd.env("DROVER_DATABASE_URL", url);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} serve", bin.display()))?;
    let pid = child
        .id()
        .context("the server exited before its process id could be read")?;

    let (password_tx, mut password_rx) = tokio::sync::mpsc::channel::<String>(1);
    if let Some(stdout) = child.stdout.take() {
        // Stdout carries the banner only; it is read to the end so the pipe never fills.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(password) = one_time_password(&line) {
                    let _ = password_tx.try_send(password);
                }
            }
        });
    }
    if let Some(stderr) = child.stderr.take() {
        let path = data_dir.join("server-stderr.log");
        tokio::spawn(keep_stderr(stderr, path, log.clone()));
    }

    let deadline = Instant::now() + START_TIMEOUT;
    let ports = loop {
        if let Some(status) = child.try_wait().context("waiting for the server")? {
            bail!(
                "the server exited during start ({status}); its first log lines: {:?}",
                log.first_lines()
            );
        }
        if let Some(ports) = read_ports(&ports_file, backing.broker) {
            break ports;
        }
        if Instant::now() > deadline {
            bail!(
                "the server did not write {} within {} s",
                ports_file.display(),
                START_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let admin_password = if first_start {
        let password = tokio::time::timeout(Duration::from_secs(15), password_rx.recv())
            .await
            .ok()
            .flatten()
            .context("the server did not print the first admin's one-time password")?;
        Some(password)
    } else {
        None
    };
    Ok(ServerProcess {
        child,
        pid,
        ports,
        admin_password,
    })
}

impl ServerProcess {
    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits for the exit (killing it after a grace period);
    /// answers how long the stop took and whether it had to be killed.
    pub async fn stop(mut self) -> Result<(Duration, bool)> {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .context("running kill -TERM")?;
        if !status.success() && self.running() {
            bail!("kill -TERM {} failed ({status})", self.pid);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(r) => {
                r.context("waiting for the server to exit")?;
                Ok((started.elapsed(), false))
            }
            Err(_) => {
                self.child
                    .kill()
                    .await
                    .context("killing the server after SIGTERM")?;
                Ok((started.elapsed(), true))
            }
        }
    }
}

/// The password on the server's "… one-time password: XXX" line.
fn one_time_password(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("one-time password:")?;
    let word = rest.split_whitespace().next()?;
    Some(word.to_string())
}

/// The bound addresses; with an external `broker` the file names no MQTT port, and devices
/// publish to the broker.
fn read_ports(path: &Path, broker: Option<SocketAddr>) -> Option<Ports> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let addr = |key: &str| -> Option<SocketAddr> { value.get(key)?.as_str()?.parse().ok() };
    Some(Ports {
        http: addr("http")?,
        device: addr("device")?,
        mqtt: broker.or_else(|| addr("mqtt"))?,
    })
}

async fn keep_stderr(stderr: tokio::process::ChildStderr, path: PathBuf, log: Arc<ServerLog>) {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
        .ok();
    let mut written = 0u64;
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log.add(&line);
        if written < LOG_CAP_BYTES
            && let Some(f) = file.as_mut()
        {
            written += line.len() as u64 + 1;
            if f.write_all(line.as_bytes()).await.is_err() || f.write_all(b"\n").await.is_err() {
                file = None;
            }
        }
    }
    if let Some(mut f) = file {
        let _ = f.flush().await;
    }
}

/// A fresh release server on any free ports, with its first admin signed in.
pub struct Fresh {
    /// The process.
    pub server: ServerProcess,
    /// Its log lines.
    pub log: Arc<ServerLog>,
    /// Its API.
    pub api: crate::api::Api,
    /// The first admin's token.
    pub jwt: String,
}

/// Starts `bin serve` on `data_dir` (every listener on 127.0.0.1, any port) and signs in as
/// the first admin with the one-time password it printed.
pub async fn start_fresh(bin: &Path, data_dir: &Path) -> Result<Fresh> {
    start_fresh_backed(bin, data_dir, &Backing::default()).await
}

/// [`start_fresh`] with another store or an external broker.
pub async fn start_fresh_backed(bin: &Path, data_dir: &Path, backing: &Backing) -> Result<Fresh> {
    let log = Arc::new(ServerLog::default());
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let listen = Ports {
        http: any_port,
        device: any_port,
        mqtt: any_port,
    };
    let server = start_backed(bin, data_dir, &listen, true, log.clone(), backing).await?;
    let password = server
        .admin_password
        .clone()
        .context("the server printed no admin password")?;
    let api = crate::api::Api::new(server.ports.http)?;
    let jwt = api.login(&password).await?;
    Ok(Fresh {
        server,
        log,
        api,
        jwt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_the_word_after_the_marker() {
        let line = "Created the first admin user \"admin\" with the one-time password: aB3-xY9\n";
        assert_eq!(one_time_password(line).as_deref(), Some("aB3-xY9"));
        assert_eq!(one_time_password("drover is listening"), None);
        assert_eq!(one_time_password("one-time password:   "), None);
    }

    #[test]
    fn ports_need_all_three_addresses() {
        let dir = std::env::temp_dir().join(format!("drover-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("ports.json");
        std::fs::write(&file, r#"{"http":"127.0.0.1:1","device":"127.0.0.1:2"}"#).expect("write");
        assert!(read_ports(&file, None).is_none());
        let broker = SocketAddr::from(([127, 0, 0, 1], 4));
        assert_eq!(
            read_ports(&file, Some(broker)).map(|p| p.mqtt),
            Some(broker)
        );
        std::fs::write(
            &file,
            r#"{"http":"127.0.0.1:1","device":"127.0.0.1:2","mqtt":"127.0.0.1:3"}"#,
        )
        .expect("write");
        let ports = read_ports(&file, None).expect("ports");
        assert_eq!(ports.mqtt.port(), 3);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
