//! The figures of a `connections` run and their Markdown, and the writing of
//! a tool's section (such as "## Connections") into docs/BENCHMARKS.md: it
//! replaces its earlier version and leaves every other section as it was.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::procfs::{CpuSplit, Machine, Sample};

/// The issue's memory goal for 10,000 connected devices, MiB.
const GOAL_MIB: f64 = 512.0;
/// The fleet size the goal speaks of.
const GOAL_DEVICES: f64 = 10_000.0;
/// The section `connections` owns.
pub const CONNECTIONS_HEADING: &str = "## Connections";

/// Open-file limits (soft, hard) in use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// This process.
    pub bench_open_files: (String, String),
    /// The server.
    pub server_open_files: (String, String),
}

/// Enrollment figures.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// Devices enrolled.
    pub enrolled: usize,
    /// Wall time.
    pub secs: f64,
    /// Failures by reason.
    pub failures: Vec<(String, u64)>,
}

impl Enrollment {
    /// Devices per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.enrolled as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// One measured step.
#[derive(Debug, Clone)]
pub struct Step {
    /// Devices started.
    pub target: u32,
    /// Connected at the end of the CPU window.
    pub connected: usize,
    /// Gave up without connecting.
    pub failed: usize,
    /// Whether every device connected or gave up before the step's deadline.
    pub settled: bool,
    /// From starting the step's devices until they settled.
    pub connect_secs: f64,
    /// CPU while the step's devices connected.
    pub connecting: CpuSplit,
    /// The server's busiest threads while they connected (name, CPU seconds).
    pub connect_threads: Vec<(String, f64)>,
    /// The server after settling.
    pub server: Sample,
    /// This process after settling.
    pub bench: Sample,
    /// CPU over the steady-state window.
    pub steady: CpuSplit,
}

/// The device that connects for the first time in the middle of the storm.
#[derive(Debug, Clone)]
pub struct Extra {
    /// How many of the fleet were back when it started.
    pub when_back: usize,
    /// Time to CONNACK.
    pub connect_ms: Option<f64>,
    /// Failed attempts before it.
    pub failures: u32,
    /// Why it never connected.
    pub error: Option<String>,
}

/// Reconnect storm figures.
#[derive(Debug, Clone)]
pub struct Storm {
    /// Devices connected when the server was stopped.
    pub before: usize,
    /// SIGTERM to exit.
    pub stop_secs: f64,
    /// Whether the server had to be killed.
    pub killed: bool,
    /// SIGTERM to the restarted server listening.
    pub restart_secs: f64,
    /// Devices back within the timeout.
    pub reconnected: usize,
    /// From the restarted server listening until every device was back.
    pub all_back_ms: Option<u64>,
    /// Each returning device's time from the restarted server listening to its CONNACK, sorted.
    pub reconnect_ms: Vec<u64>,
    /// Devices with at least one failed attempt against the restarted server.
    pub retried: usize,
    /// Sessions lost again after reconnecting.
    pub drops: u64,
    /// The newcomer.
    pub extra: Option<Extra>,
    /// CPU from the restarted server listening until all were back (or the timeout).
    pub cpu: CpuSplit,
    /// The restarted server's busiest threads over that time (name, CPU seconds).
    pub threads: Vec<(String, f64)>,
    /// The server once the storm was over.
    pub after: Step,
    /// Errors by message.
    pub errors: Vec<(String, u64)>,
    /// The longest wait, seconds.
    pub timeout_s: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// MQTT keep-alive, seconds.
    pub keep_alive_s: u64,
    /// Handshakes in flight while connecting in steps.
    pub handshakes: u64,
    /// Open-file limits.
    pub limits: Limits,
    /// The server before enrollment.
    pub idle: Sample,
    /// The server after enrollment, nothing connected.
    pub baseline: Sample,
    /// Enrollment.
    pub enrollment: Enrollment,
    /// The steps.
    pub steps: Vec<Step>,
    /// Errors while connecting in steps.
    pub connect_errors: Vec<(String, u64)>,
    /// The storm, unless skipped.
    pub storm: Option<Storm>,
    /// The server's smaps_rollup at the last step.
    pub smaps: Vec<(String, u64)>,
    /// Lines the server wrote to stderr (warn and above).
    pub server_log_lines: u64,
    /// The first of them.
    pub server_log_first: Vec<String>,
    /// CPU window, seconds.
    pub cpu_window_s: u64,
    /// Pause before reading, seconds.
    pub settle_s: u64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The value at quantile `q` (0..=1) of sorted values (nearest rank).
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl Report {
    /// The file header, written when the file is new.
    pub fn header(&self) -> String {
        file_header(&self.machine)
    }

    /// Marginal server memory per connected device at a step, KiB.
    pub fn kib_per_device(&self, step: &Step) -> Option<f64> {
        (step.connected > 0).then(|| {
            (step.server.rss_kib as f64 - self.baseline.rss_kib as f64) / step.connected as f64
        })
    }

    /// The section, Markdown.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(o, "{CONNECTIONS_HEADING}\n");
        let _ = writeln!(
            o,
            "Measured {} on {} ({} cores, {:.1} GiB, {}; {}). The load generator runs on the \
             same machine as the server.\n",
            m.date, m.cpu, m.cores, m.memory_gib, m.os, m.rustc
        );
        let _ = writeln!(
            o,
            "```sh\ncargo build --release -p drover-server -p drover-bench\n{}\n```\n",
            self.command
        );
        let _ = writeln!(
            o,
            "Every device is a real enrollment (ECDSA P-256 key, CSR, `POST /device/v1/enroll`) \
             and a real MQTT 3.1.1 session over TLS with its own client certificate to the \
             server's MQTT gateway: client id = device id, keep-alive {} s, clean session, a \
             QoS 1 subscription to its `commands`, a retained `state` and a last will. Up to {} \
             first connections are in flight at once. Open-file limits (soft/hard): server \
             {}/{}, load generator {}/{}.\n",
            self.keep_alive_s,
            self.handshakes,
            self.limits.server_open_files.0,
            self.limits.server_open_files.1,
            self.limits.bench_open_files.0,
            self.limits.bench_open_files.1,
        );
        let e = &self.enrollment;
        let _ = write!(
            o,
            "**Enrollment:** {} devices in {:.1} s, **{:.0} devices/s**",
            e.enrolled,
            e.secs,
            e.rate()
        );
        if e.failures.is_empty() {
            let _ = writeln!(o, ", no failures.\n");
        } else {
            let failed: u64 = e.failures.iter().map(|(_, n)| n).sum();
            let _ = writeln!(o, "; {failed} failed:\n");
            for (msg, n) in &e.failures {
                let _ = writeln!(o, "- {n} × `{}`", msg.replace('`', "'"));
            }
            o.push('\n');
        }

        let _ = writeln!(
            o,
            "| devices | connected | failed | server RSS MiB | KiB per device | server fds | server CPU % | bench CPU % | others CPU % | bench RSS MiB |"
        );
        let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (label, sample) in [
            ("0, idle".to_string(), &self.idle),
            (format!("0, {} enrolled", e.enrolled), &self.baseline),
        ] {
            let _ = writeln!(
                o,
                "| {label} | | | {:.1} | | {} | | | | |",
                mib(sample.rss_kib),
                sample.fds
            );
        }
        for s in &self.steps {
            self.row(&mut o, &s.target.to_string(), s, true);
        }
        if let Some(storm) = &self.storm {
            // A new process: the first one's baseline does not apply.
            self.row(&mut o, "after the storm", &storm.after, false);
        }
        let _ = writeln!(
            o,
            "\nKiB per device = (RSS − RSS with the fleet enrolled and nothing connected) / \
             devices connected. CPU is % of one core over {} s at steady state, after a {} s \
             pause; `others` is the rest of the machine (other builds and tests share it).\n",
            self.cpu_window_s, self.settle_s
        );
        let _ = writeln!(
            o,
            "While each step's devices connected (until all were connected or had given up \
             after 3 attempts{}):\n",
            if self.steps.iter().any(|s| !s.settled) {
                "; * = the step's deadline came first"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "| step | took s | connections/s | server CPU % | bench CPU % | others CPU % | server's busiest threads (CPU s) |"
        );
        let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---|");
        let mut previous = 0usize;
        for s in &self.steps {
            let new = s.connected.saturating_sub(previous);
            previous = s.connected;
            let _ = writeln!(
                o,
                "| {}{} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                s.target,
                if s.settled { "" } else { "*" },
                s.connect_secs,
                if s.connect_secs > 0.0 {
                    new as f64 / s.connect_secs
                } else {
                    0.0
                },
                s.connecting.server,
                s.connecting.bench,
                s.connecting.others,
                threads_text(&s.connect_threads)
            );
        }
        o.push('\n');
        if !self.connect_errors.is_empty() {
            let _ = writeln!(o, "Connection errors while connecting in steps:\n");
            errors_list(&mut o, &self.connect_errors);
        }
        if let Some(storm) = &self.storm {
            self.storm_markdown(&mut o, storm);
        }
        if !self.smaps.is_empty() {
            let parts: Vec<String> = self
                .smaps
                .iter()
                .map(|(k, v)| format!("{k} {:.1}", mib(*v)))
                .collect();
            let _ = writeln!(
                o,
                "Server memory at the last step (`/proc/PID/smaps_rollup`, MiB): {}.\n",
                parts.join(", ")
            );
        }
        if self.server_log_lines > 0 {
            let _ = writeln!(
                o,
                "The server wrote {} lines of warnings and errors; the first:\n",
                self.server_log_lines
            );
            let _ = writeln!(o, "```text");
            for line in &self.server_log_first {
                let _ = writeln!(o, "{line}");
            }
            let _ = writeln!(o, "```\n");
        }
        self.bounds(&mut o);
        o
    }

    fn row(&self, o: &mut String, label: &str, s: &Step, per_device: bool) {
        let per_device = self
            .kib_per_device(s)
            .filter(|_| per_device)
            .map(|k| format!("{k:.1}"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "| {label} | {} | {} | {:.1} | {per_device} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            s.connected,
            s.failed,
            mib(s.server.rss_kib),
            s.server.fds,
            s.steady.server,
            s.steady.bench,
            s.steady.others,
            mib(s.bench.rss_kib),
        );
    }

    fn storm_markdown(&self, o: &mut String, s: &Storm) {
        let _ = writeln!(
            o,
            "**Reconnect storm.** With {} devices connected, the server got SIGTERM and was \
             started again on the same data directory and ports; every device reconnects by \
             itself after a jittered 0.5–3 s pause (10 s connect timeout), re-subscribes and \
             republishes its state.\n",
            s.before
        );
        let _ = writeln!(
            o,
            "- Stop: {:.2} s from SIGTERM to exit{}; the restarted server listened {:.2} s after SIGTERM.",
            s.stop_secs,
            if s.killed {
                " (killed after the grace period)"
            } else {
                ""
            },
            s.restart_secs
        );
        match s.all_back_ms {
            Some(ms) => {
                let _ = writeln!(
                    o,
                    "- **All {} back {:.1} s** after the restarted server listened.",
                    s.before,
                    ms as f64 / 1000.0
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "- **Only {} of {} back** within {} s of the restart.",
                    s.reconnected, s.before, s.timeout_s
                );
            }
        }
        let q = |p: f64| {
            percentile(&s.reconnect_ms, p)
                .map(|ms| format!("{:.2} s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "–".into())
        };
        let _ = writeln!(
            o,
            "- Time to reconnect, from the restarted server listening: **p50 {}, p99 {}**, max {}.",
            q(0.5),
            q(0.99),
            q(1.0)
        );
        let _ = writeln!(
            o,
            "- {} devices ({:.1} %) had at least one failed attempt against the restarted server; \
             {} sessions were lost again after reconnecting.",
            s.retried,
            if s.before > 0 {
                s.retried as f64 * 100.0 / s.before as f64
            } else {
                0.0
            },
            s.drops
        );
        match &s.extra {
            Some(Extra {
                when_back,
                connect_ms: Some(ms),
                failures,
                ..
            }) => {
                let _ = writeln!(
                    o,
                    "- A new device that had never connected started its first connection when \
                     {when_back} of {} were back: CONNACK after **{ms:.0} ms**{}.",
                    s.before,
                    if *failures > 0 {
                        format!(" ({failures} failed attempts first)")
                    } else {
                        String::new()
                    }
                );
            }
            Some(Extra {
                when_back,
                error: Some(e),
                ..
            }) => {
                let _ = writeln!(
                    o,
                    "- A new device that started its first connection when {when_back} of {} \
                     were back **did not connect**: {e}.",
                    s.before
                );
            }
            _ => {
                let _ = writeln!(o, "- The new device's attempt was not measured.");
            }
        }
        let _ = writeln!(
            o,
            "- CPU until then: server {:.0} %, load generator {:.0} %, others {:.0} % (of one \
             core); the restarted server's busiest threads: {}.",
            s.cpu.server,
            s.cpu.bench,
            s.cpu.others,
            threads_text(&s.threads)
        );
        let _ = writeln!(
            o,
            "- Afterwards: server RSS {:.1} MiB, CPU {:.1} %, {} fds.\n",
            mib(s.after.server.rss_kib),
            s.after.steady.server,
            s.after.server.fds
        );
        if !s.errors.is_empty() {
            let _ = writeln!(
                o,
                "Connection errors during the storm (the first of each device is the server going away):\n"
            );
            errors_list(o, &s.errors);
        }
    }

    /// What bounds the figures, with the numbers of this run.
    fn bounds(&self, o: &mut String) {
        let mut p = String::from("**What bounds these figures.** ");
        let _ = write!(
            p,
            "The load generator shares the machine's {} cores with the server, so connection, \
             enrollment and storm times include its own TLS and key work (handshakes are \
             client-side ECDSA signatures, enrollment is key generation and a CSR per device) \
             and are upper bounds of what a server alone on the machine would show; RSS and \
             open files are the server's own. ",
            self.machine.cores
        );
        if let Some(last) = self.steps.last() {
            let _ = write!(
                p,
                "At steady state the sessions only exchange keep-alive pings ({} devices / {} s \
                 ≈ {:.0} PINGREQ/s), which is what the CPU column shows. ",
                last.connected,
                self.keep_alive_s,
                last.connected as f64 / self.keep_alive_s as f64
            );
            if let Some(kib) = self.kib_per_device(last) {
                let projected = mib(self.baseline.rss_kib) + kib * GOAL_DEVICES / 1024.0;
                let _ = write!(
                    p,
                    "Memory grows by about {kib:.0} KiB per connected device over a base of \
                     {:.0} MiB, which puts 10,000 devices at about {projected:.0} MiB \
                     ({} the {GOAL_MIB:.0} MiB goal). ",
                    mib(self.baseline.rss_kib),
                    if projected <= GOAL_MIB {
                        "within"
                    } else {
                        "over"
                    }
                );
            }
            let extra_fds = last.server.fds.saturating_sub(self.baseline.fds);
            if last.connected > 0 && extra_fds > 0 {
                let per_device = extra_fds as f64 / last.connected as f64;
                let _ = write!(
                    p,
                    "The server holds {per_device:.1} file descriptors per device"
                );
                // Device sessions end at the gateway, so one socket each is the floor.
                if per_device > 1.5 {
                    let _ = write!(p, " (more than the one TLS socket each needs)");
                } else {
                    let _ = write!(p, " (its TLS socket; sessions end at the gateway)");
                }
                match self.limits.server_open_files.0.parse::<f64>() {
                    Ok(limit) => {
                        let _ = write!(
                            p,
                            "; with its open-file limit of {limit:.0} it can hold at most about \
                             {:.0} devices. ",
                            (limit - self.baseline.fds as f64) / per_device
                        );
                    }
                    Err(_) => p.push_str(". "),
                }
            }
        }
        if let Some(storm) = &self.storm
            && let Some((name, secs)) = storm.threads.first()
        {
            let span = storm
                .all_back_ms
                .map(|ms| ms as f64 / 1000.0)
                .unwrap_or(storm.timeout_s as f64);
            let _ = write!(
                p,
                "In the storm the restarted server's busiest thread was `{name}` with {secs:.1} s \
                 of CPU in the {span:.1} s until the fleet was back; one thread can use one core \
                 at most, so where it is near that, it (not the machine) sets the pace. "
            );
        }
        p.push_str(
            "Enrollment is bounded by the server's work per device (CSR check, signing, database \
             writes) and by the load generator on the same cores.",
        );
        let _ = writeln!(o, "{p}");
    }
}

/// The header of docs/BENCHMARKS.md, written when the file is new.
pub fn file_header(m: &Machine) -> String {
    format!(
        "# Benchmarks\n\n\
         Figures measured with `drover-bench` (tests/bench) against the real `drover` \
         release binary; each section names the command that produced it, and rerunning \
         it with `--out docs/BENCHMARKS.md` replaces that section.\n\n\
         Machine: {} ({} cores), {:.1} GiB memory, {}; {}; first written {}.\n",
        m.cpu, m.cores, m.memory_gib, m.os, m.rustc, m.date
    )
}

fn threads_text(threads: &[(String, f64)]) -> String {
    if threads.is_empty() {
        return "–".into();
    }
    threads
        .iter()
        .map(|(name, secs)| format!("{name} {secs:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn errors_list(o: &mut String, errors: &[(String, u64)]) {
    for (msg, n) in errors.iter().take(8) {
        let _ = writeln!(o, "- {n} × `{}`", msg.replace('`', "'"));
    }
    if errors.len() > 8 {
        let rest: u64 = errors.iter().skip(8).map(|(_, n)| n).sum();
        let _ = writeln!(o, "- {rest} others");
    }
    o.push('\n');
}

/// Writes `section` into `path`: replaces an earlier section under `heading`
/// (up to the next `## ` heading), appends it otherwise, and creates the file
/// with `header` when it does not exist.
pub fn write_section(path: &Path, header: &str, heading: &str, section: &str) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(existing) => replace_section(&existing, heading, section),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!("{header}\n{section}"),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Like [`write_section`], but a section new to the file goes before its first `## ` section
/// rather than at the end (a summary belongs on top).
pub fn write_first_section(path: &Path, header: &str, heading: &str, section: &str) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(existing) if has_section(&existing, heading) => {
            replace_section(&existing, heading, section)
        }
        Ok(existing) => insert_first(&existing, section),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!("{header}\n{section}"),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn has_section(existing: &str, heading: &str) -> bool {
    let mut in_code = false;
    existing.lines().any(|line| {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        !in_code && line.trim_end() == heading
    })
}

fn insert_first(existing: &str, section: &str) -> String {
    let lines: Vec<&str> = existing.lines().collect();
    let Some(first) = lines.iter().position(|l| l.starts_with("## ")) else {
        return format!("{}\n\n{}\n", existing.trim_end(), section.trim_end());
    };
    let mut out = lines[..first].join("\n");
    out.push('\n');
    out.push_str(section.trim_end());
    out.push_str("\n\n");
    out.push_str(&lines[first..].join("\n"));
    out.push('\n');
    out
}

fn replace_section(existing: &str, heading: &str, section: &str) -> String {
    let lines: Vec<&str> = existing.lines().collect();
    let mut in_code = false;
    let mut start = None;
    let mut end = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code {
            continue;
        }
        if start.is_none() && line.trim_end() == heading {
            start = Some(i);
        } else if start.is_some() && line.starts_with("## ") {
            end = i;
            break;
        }
    }
    let section = section.trim_end();
    match start {
        Some(start) => {
            let mut out = lines[..start].join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(section);
            out.push('\n');
            if end < lines.len() {
                out.push('\n');
                out.push_str(&lines[end..].join("\n"));
                out.push('\n');
            }
            out
        }
        None => {
            let mut out = existing.trim_end().to_string();
            out.push_str("\n\n");
            out.push_str(section);
            out.push('\n');
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_replaced_and_its_neighbours_kept() {
        let old = "# Benchmarks\n\nintro\n\n## Connections\n\nold figures\n```sh\n## not a heading\n```\n\n## Telemetry\n\nkept\n";
        let new = replace_section(old, CONNECTIONS_HEADING, "## Connections\n\nnew figures\n");
        assert_eq!(
            new,
            "# Benchmarks\n\nintro\n\n## Connections\n\nnew figures\n\n## Telemetry\n\nkept\n"
        );
    }

    #[test]
    fn a_new_first_section_goes_above_the_others() {
        let new = insert_first(
            "# Benchmarks\n\nintro\n\n## Telemetry\n\nkept\n",
            "## Summary\n\nx\n",
        );
        assert_eq!(
            new,
            "# Benchmarks\n\nintro\n\n## Summary\n\nx\n\n## Telemetry\n\nkept\n"
        );
        assert!(has_section(&new, "## Summary"));
        assert!(!has_section("```\n## Summary\n```\n", "## Summary"));
    }

    #[test]
    fn a_missing_section_is_appended() {
        let new = replace_section(
            "# Benchmarks\n\n## Telemetry\n\nkept\n",
            CONNECTIONS_HEADING,
            "## Connections\n\nx\n",
        );
        assert_eq!(
            new,
            "# Benchmarks\n\n## Telemetry\n\nkept\n\n## Connections\n\nx\n"
        );
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
