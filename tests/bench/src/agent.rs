//! `drover-bench agent`: what the agent costs on a device. `drover-agent verify` of a bundle with
//! one large payload against `openssl dgst -sha256` of the same file (wall time from a warm page
//! cache, peak RSS from `/usr/bin/time`), the RSS of an enrolled `drover-agent run` at rest, and
//! the size of the stripped `agent` profile binary beside the Debian packages of Mender's client
//! and RAUC.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::connections::{DataDir, command_line};
use crate::intake::{AgentProcess, binaries, enroll, parse_join};
use crate::procfs::{self, Machine, Pid};
use crate::report::{file_header, write_section};
use crate::server;

/// The section this tool owns in docs/BENCHMARKS.md.
pub const HEADING: &str = "## Agent footprint";
/// Debian's package of Mender's client, as the issue compares against.
const MENDER_PACKAGE: &str = "mender-client";
/// Debian's package of RAUC.
const RAUC_PACKAGE: &str = "rauc";

/// Options of `drover-bench agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Payload size of the bundle verified, MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub bundle_mib: u64,
    /// How long the enrolled agent rests before its RSS is read, seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_s: u64,
    /// The bundle maker [default: target/release/examples/make-bundle, built with
    /// `cargo build --release -p drover-agent --example make-bundle`].
    #[arg(long)]
    pub make_bundle_bin: Option<PathBuf>,
    /// Where the bundle is written [default: a scratch directory under the system's temporary
    /// directory]; it needs the payload's size twice.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The server binary [default: target/release/drover].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// The agent binary [default: target/agent/drover-agent].
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Write or update this tool's section of this Markdown file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep the data directory (and the bundle) after the run.
    #[arg(long)]
    pub keep_data: bool,
}

/// One timed command.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timed {
    /// Wall time, seconds.
    pub secs: f64,
    /// Peak RSS, KiB.
    pub peak_kib: u64,
}

/// A Debian package's size as `apt-cache show` gives it.
#[derive(Debug, Clone)]
pub struct Package {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Installed-Size, KiB.
    pub installed_kib: u64,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Bundle file size, bytes.
    pub bundle_bytes: u64,
    /// `openssl dgst -sha256`.
    pub openssl: Timed,
    /// `drover-agent verify`.
    pub verify: Timed,
    /// `openssl version`.
    pub openssl_version: String,
    /// RSS of `drover-agent run` at rest, KiB.
    pub idle_rss_kib: u64,
    /// The agent binary, bytes.
    pub binary_bytes: u64,
    /// Whether `file` calls it stripped (None: `file` is missing).
    pub stripped: Option<bool>,
    /// Mender's client and RAUC, where apt knows them.
    pub packages: Vec<Package>,
}

impl Figures {
    /// verify's throughput as a share of openssl's.
    pub fn verify_ratio(&self) -> f64 {
        if self.verify.secs > 0.0 {
            self.openssl.secs / self.verify.secs
        } else {
            0.0
        }
    }

    fn mib_per_s(&self, t: &Timed) -> f64 {
        if t.secs > 0.0 {
            self.bundle_bytes as f64 / t.secs / (1024.0 * 1024.0)
        } else {
            0.0
        }
    }
}

/// `target/release/examples/make-bundle`: this binary lives in target/release.
fn default_make_bundle() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let dir = exe.parent().context("this binary has no directory")?;
    Ok(dir.join("examples").join("make-bundle"))
}

/// Runs `program args` under `/usr/bin/time` (stdout discarded); answers wall time and peak RSS.
async fn timed(program: &Path, args: &[&std::ffi::OsStr], scratch: &Path) -> Result<Timed> {
    let report = scratch.join("time.txt");
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&report)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("running /usr/bin/time {}", program.display()))?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = std::fs::read_to_string(&report).context("reading /usr/bin/time's report")?;
    let peak_kib = text
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .context("/usr/bin/time reported no peak RSS")?;
    Ok(Timed { secs, peak_kib })
}

/// A package's version and Installed-Size from `apt-cache show` (its first stanza).
async fn package(name: &str) -> Option<Package> {
    let out = Command::new("apt-cache")
        .args(["show", name])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    Some(Package {
        name: name.to_string(),
        version: field("Version:")?,
        installed_kib: field("Installed-Size:")?.parse().ok()?,
    })
}

/// Runs the benchmark and prints (and optionally writes) the report.
pub async fn run(args: Args) -> Result<Figures> {
    let (server_bin, agent_bin) = binaries(args.server_bin.as_ref(), args.agent_bin.as_ref())?;
    let make_bundle = match &args.make_bundle_bin {
        Some(p) => p.clone(),
        None => default_make_bundle()?,
    };
    if !make_bundle.is_file() {
        bail!(
            "{} does not exist; build it with `cargo build --release -p drover-agent --example make-bundle`",
            make_bundle.display()
        );
    }
    let command = command_line();
    let machine = procfs::machine();
    let data = DataDir::create(args.keep_data)?;
    let dir = args.dir.clone().unwrap_or_else(|| data.path.join("bundle"));

    eprintln!("making a bundle with a {} MiB payload", args.bundle_mib);
    let made = Command::new(&make_bundle)
        .arg("--out")
        .arg(&dir)
        .args(["--size", &format!("{}M", args.bundle_mib)])
        .stdout(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", make_bundle.display()))?;
    if !made.status.success() {
        bail!(
            "make-bundle failed: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        );
    }
    let bundle = dir.join("bundle.drover");
    let root = dir.join("root.pub");
    // The payload is not needed any more; the bundle carries it.
    let _ = std::fs::remove_file(dir.join("payload.bin"));
    let bundle_bytes = std::fs::metadata(&bundle)
        .with_context(|| format!("reading {}", bundle.display()))?
        .len();
    // Warm the page cache, so both read from memory.
    let _ = Command::new("cat")
        .arg(&bundle)
        .stdout(Stdio::null())
        .status()
        .await;
    let openssl_version = Command::new("openssl")
        .arg("version")
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "openssl (version unknown)".into());
    eprintln!("timing openssl dgst -sha256 and drover-agent verify");
    let openssl = timed(
        Path::new("openssl"),
        &["dgst".as_ref(), "-sha256".as_ref(), bundle.as_os_str()],
        &data.path,
    )
    .await?;
    let verify = timed(
        &agent_bin,
        &[
            "verify".as_ref(),
            "--root-key".as_ref(),
            root.as_os_str(),
            bundle.as_os_str(),
        ],
        &data.path,
    )
    .await?;
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }

    eprintln!("measuring an enrolled agent at rest for {} s", args.idle_s);
    let idle_rss_kib = idle_rss(&server_bin, &agent_bin, &data.path, args.idle_s).await?;

    let binary_bytes = std::fs::metadata(&agent_bin)?.len();
    let stripped = Command::new("file")
        .arg(&agent_bin)
        .output()
        .await
        .ok()
        .map(|o| {
            let t = String::from_utf8_lossy(&o.stdout).to_string();
            t.contains(", stripped")
        });
    let mut packages = Vec::new();
    for name in [MENDER_PACKAGE, RAUC_PACKAGE] {
        if let Some(p) = package(name).await {
            packages.push(p);
        }
    }
    let figures = Figures {
        bundle_bytes,
        openssl,
        verify,
        openssl_version,
        idle_rss_kib,
        binary_bytes,
        stripped,
        packages,
    };
    let section = markdown(&figures, &args, &command, &machine);
    println!("{section}");
    if let Some(out) = &args.out {
        write_section(out, &file_header(&machine), HEADING, &section)?;
        eprintln!("wrote the {} section of {}", &HEADING[3..], out.display());
    }
    Ok(figures)
}

/// Enrolls one agent with a fresh server, runs it, lets it rest, and reads its RSS.
async fn idle_rss(server_bin: &Path, agent_bin: &Path, dir: &Path, idle_s: u64) -> Result<u64> {
    let server_dir = dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    let server::Fresh {
        server, api, jwt, ..
    } = server::start_fresh(server_bin, &server_dir).await?;
    let join_command = api.join_command(&jwt, 1).await?;
    let join = parse_join(&join_command)
        .with_context(|| format!("the join command `{join_command}` lacks a flag"))?;
    let state = dir.join("agent");
    enroll(agent_bin, &state, &join, 0).await?;
    let agent = AgentProcess::start(agent_bin, &state).await?;
    tokio::time::sleep(Duration::from_secs(idle_s)).await;
    let rss = procfs::sample(Pid::Of(agent.pid))
        .map(|s| s.rss_kib)
        .context("the agent stopped while at rest")?;
    agent.stop().await;
    let _ = server.stop().await;
    Ok(rss)
}

fn markdown(f: &Figures, args: &Args, command: &str, m: &Machine) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{HEADING}\n");
    let _ = writeln!(
        o,
        "Measured {} on {} ({} cores, {:.1} GiB, {}; {}).\n",
        m.date, m.cpu, m.cores, m.memory_gib, m.os, m.rustc
    );
    let _ = writeln!(
        o,
        "```sh\ncargo build --release -p drover-server -p drover-bench\n\
         cargo build --profile agent -p drover-agent\n\
         cargo build --release -p drover-agent --example make-bundle\n{command}\n```\n"
    );
    let _ = writeln!(
        o,
        "**Method.** A bundle with one {} MiB random payload ({} bytes of file) is read once \
         into the page cache, then `openssl dgst -sha256` ({}) and `drover-agent verify \
         --root-key` (every check: tar structure, trust, signature, manifest, payload size and \
         SHA-256) each read it, timed wall to wall, with peak RSS from `/usr/bin/time`. At rest: \
         one `drover-agent run`, enrolled with a release server, {} s after its start.\n",
        args.bundle_mib, f.bundle_bytes, f.openssl_version, args.idle_s
    );
    let _ = writeln!(o, "| figure | value |\n|---|---|");
    let _ = writeln!(
        o,
        "| `openssl dgst -sha256` | {:.2} s, {:.0} MiB/s, peak RSS {:.1} MiB |",
        f.openssl.secs,
        f.mib_per_s(&f.openssl),
        f.openssl.peak_kib as f64 / 1024.0
    );
    let _ = writeln!(
        o,
        "| `drover-agent verify` | {:.2} s, {:.0} MiB/s, peak RSS **{:.1} MiB** |",
        f.verify.secs,
        f.mib_per_s(&f.verify),
        f.verify.peak_kib as f64 / 1024.0
    );
    let _ = writeln!(
        o,
        "| verify / openssl throughput | **{:.0} %** |",
        f.verify_ratio() * 100.0
    );
    let _ = writeln!(
        o,
        "| `drover-agent run` at rest (RSS) | **{:.1} MiB** |",
        f.idle_rss_kib as f64 / 1024.0
    );
    let _ = writeln!(
        o,
        "| `agent` profile binary | **{:.1} MiB** ({} bytes, {}) |",
        f.binary_bytes as f64 / (1024.0 * 1024.0),
        f.binary_bytes,
        match f.stripped {
            Some(true) => "stripped",
            Some(false) => "not stripped",
            None => "`file` not installed",
        }
    );
    for p in &f.packages {
        let _ = writeln!(
            o,
            "| Debian `{}` {} (Installed-Size, for comparison) | {:.1} MiB |",
            p.name,
            p.version,
            p.installed_kib as f64 / 1024.0
        );
    }
    o.push('\n');
    let _ = writeln!(
        o,
        "The Debian sizes are those of the packages alone (`apt-cache show`), without the \
         shared libraries they depend on (RAUC's GLib and OpenSSL, for one)."
    );
    o
}
