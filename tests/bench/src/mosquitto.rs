//! A private Mosquitto for the ingest benchmarks: its own configuration, port and log in a
//! scratch directory, a plain anonymous listener on loopback, and `max_queued_messages 0` so
//! that it queues without limit rather than dropping what a slow subscriber has not taken.
//! The machine's own Mosquitto (port 1883) is never used or touched.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// Where Debian puts the broker.
const DEFAULT_BIN: &str = "/usr/sbin/mosquitto";
/// How long the broker may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running private broker; killed when dropped.
pub struct Mosquitto {
    child: Child,
    /// Where it listens (plain MQTT, anonymous).
    pub addr: SocketAddr,
    /// `mosquitto -v`'s first line, e.g. "mosquitto version 2.0.11".
    pub version: String,
}

/// The configuration the benchmarks use, as written to `mosquitto.conf`.
pub fn config(port: u16, log: &Path) -> String {
    format!(
        "# drover-bench: a private broker that never drops a queued message\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         max_queued_messages 0\n\
         max_queued_bytes 0\n\
         max_inflight_messages 10000\n\
         log_dest file {}\n\
         log_type error\n\
         log_type warning\n",
        log.display()
    )
}

/// A loopback port nobody listens on now.
pub fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

impl Mosquitto {
    /// Writes `DIR/NAME.conf` and starts `mosquitto -c` on a free loopback port.
    pub async fn start(dir: &Path, name: &str, bin: Option<&PathBuf>) -> Result<Mosquitto> {
        let bin = bin.cloned().unwrap_or_else(|| PathBuf::from(DEFAULT_BIN));
        if !bin.is_file() {
            bail!(
                "{} does not exist; install Debian's mosquitto or pass --mosquitto-bin",
                bin.display()
            );
        }
        let port = free_port()?;
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, config(port, &dir.join(format!("{name}.log"))))
            .with_context(|| format!("writing {}", conf.display()))?;
        let version = Command::new(&bin)
            .arg("-h")
            .output()
            .await
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find(|l| l.contains("version"))
                    .map(|l| l.trim().to_string())
            })
            .unwrap_or_else(|| "mosquitto".into());
        let mut child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} -c {}", bin.display(), conf.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "mosquitto exited at start ({status}); see {}",
                    dir.join(format!("{name}.log")).display()
                );
            }
            if Instant::now() > deadline {
                bail!("mosquitto did not listen on {addr} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Mosquitto {
            child,
            addr,
            version,
        })
    }

    /// Stops it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_queues_without_limit_on_loopback_only() {
        let conf = config(18830, Path::new("/tmp/m.log"));
        assert!(conf.contains("listener 18830 127.0.0.1\n"));
        assert!(conf.contains("max_queued_messages 0\n"));
        assert!(conf.contains("allow_anonymous true\n"));
    }
}
