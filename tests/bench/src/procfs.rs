//! Readings from `/proc` about a process (resident memory, CPU time, open
//! files, limits) and about the machine, for the benchmark report. Each
//! reading answers `None` rather than failing when `/proc` lacks it.

use std::path::PathBuf;
use std::time::Duration;

/// Which process to read: another by id, or this one.
#[derive(Debug, Clone, Copy)]
pub enum Pid {
    /// This process.
    Own,
    /// Another process.
    Of(u32),
}

impl Pid {
    fn dir(self) -> PathBuf {
        match self {
            Pid::Own => PathBuf::from("/proc/self"),
            Pid::Of(pid) => PathBuf::from(format!("/proc/{pid}")),
        }
    }
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Resident set size (VmRSS), KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// Reads RSS and open files; `None` when the process is gone.
pub fn sample(pid: Pid) -> Option<Sample> {
    let status = std::fs::read_to_string(pid.dir().join("status")).ok()?;
    let rss_kib = status_field(&status, "VmRSS:")?;
    let fds = std::fs::read_dir(pid.dir().join("fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(Sample { rss_kib, fds })
}

/// The number after `name` in a `/proc/PID/status` text (kB fields come out in KiB).
fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// User plus system CPU time of a process so far, in clock ticks.
pub fn cpu_ticks(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(pid.dir().join("stat")).ok()?;
    parse_cpu_ticks(&stat)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14 and stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time so far of a process's threads, in clock ticks, summed by thread name.
pub fn thread_ticks(pid: Pid) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(pid.dir().join("task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let Some(ticks) = std::fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|s| parse_cpu_ticks(&s))
        else {
            continue;
        };
        *out.entry(name.trim().to_string()).or_insert(0) += ticks;
    }
    out
}

/// The threads that used the most CPU between two readings: (name, seconds), busiest first.
pub fn busiest_threads(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    ticks_per_second: u64,
) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = after
        .iter()
        .map(|(name, &t)| {
            let used = t.saturating_sub(before.get(name).copied().unwrap_or(0));
            (name.clone(), used as f64 / ticks_per_second.max(1) as f64)
        })
        .filter(|(_, secs)| *secs >= 0.05)
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out.truncate(4);
    out
}

/// Busy CPU time of the whole machine so far (all cores), in clock ticks.
pub fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some(total.saturating_sub(idle))
}

/// Clock ticks per second (USER_HZ), from `getconf`; 100 where it cannot be asked.
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100)
}

/// CPU time read at one moment: the server, this process and the whole machine.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    at: std::time::Instant,
    server: u64,
    bench: u64,
    machine: u64,
}

/// CPU use over an interval, each as % of one core.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSplit {
    /// The server.
    pub server: f64,
    /// This load generator.
    pub bench: f64,
    /// Everything else on the machine (other builds and tests share it).
    pub others: f64,
}

impl CpuMark {
    /// Reads the CPU time of `server`, this process and the machine now.
    pub fn now(server: u32) -> CpuMark {
        CpuMark {
            at: std::time::Instant::now(),
            server: cpu_ticks(Pid::Of(server)).unwrap_or(0),
            bench: cpu_ticks(Pid::Own).unwrap_or(0),
            machine: machine_busy_ticks().unwrap_or(0),
        }
    }

    /// CPU use from this mark until now.
    pub fn split_since(&self, server: u32, ticks_per_second: u64) -> CpuSplit {
        let now = CpuMark::now(server);
        let window = now.at.duration_since(self.at);
        let server_ticks = now.server.saturating_sub(self.server);
        let bench_ticks = now.bench.saturating_sub(self.bench);
        let others = now
            .machine
            .saturating_sub(self.machine)
            .saturating_sub(server_ticks + bench_ticks);
        CpuSplit {
            server: cpu_percent(server_ticks, ticks_per_second, window),
            bench: cpu_percent(bench_ticks, ticks_per_second, window),
            others: cpu_percent(others, ticks_per_second, window),
        }
    }
}

/// CPU use over a window as a percentage of one core.
pub fn cpu_percent(ticks: u64, ticks_per_second: u64, window: Duration) -> f64 {
    let secs = window.as_secs_f64();
    if secs <= 0.0 || ticks_per_second == 0 {
        return 0.0;
    }
    ticks as f64 / ticks_per_second as f64 / secs * 100.0
}

/// The soft and hard "Max open files" of a process, as `/proc/PID/limits` prints them.
pub fn open_files_limit(pid: Pid) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(pid.dir().join("limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut parts = line["Max open files".len()..].split_whitespace();
    Some((parts.next()?.to_string(), parts.next()?.to_string()))
}

/// The memory summary of a process (`/proc/PID/smaps_rollup`), KiB by field.
pub fn smaps_rollup(pid: Pid) -> Vec<(String, u64)> {
    let Ok(text) = std::fs::read_to_string(pid.dir().join("smaps_rollup")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let kib = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.trim().to_string(), kib))
        })
        .filter(|(name, _)| {
            matches!(
                name.as_str(),
                "Rss" | "Pss_Anon" | "Pss_File" | "Anonymous" | "Private_Dirty" | "Shared_Clean"
            )
        })
        .collect()
}

/// What the benchmark ran on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Cores this process may use.
    pub cores: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// OS name and kernel release.
    pub os: String,
    /// `rustc --version`.
    pub rustc: String,
    /// Today (UTC), `YYYY-MM-DD`.
    pub date: String,
}

/// Describes this machine.
pub fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| status_field(&t, "MemTotal:"))
        .map(|kib| kib as f64 / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    let os_name = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rustc (unknown version)".into());
    Machine {
        cpu,
        cores,
        memory_gib,
        os: format!("{os_name}, kernel {kernel}"),
        rustc,
        date: today_utc(),
    }
}

fn today_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces() {
        let stat = "1234 (drover (x) y) S 1 2 3 4 5 6 7 8 9 10 170 30 0 0 20 0 9 0 100 2000 300";
        assert_eq!(parse_cpu_ticks(stat), Some(200));
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tdrover\nVmRSS:\t  123456 kB\nThreads:\t9\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(123_456));
        assert_eq!(status_field(status, "Threads:"), Some(9));
        assert_eq!(status_field(status, "VmSwap:"), None);
    }

    #[test]
    fn days_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn cpu_percent_is_of_one_core() {
        assert!((cpu_percent(150, 100, Duration::from_secs(10)) - 15.0).abs() < 1e-9);
        assert_eq!(cpu_percent(5, 100, Duration::ZERO), 0.0);
    }
}
