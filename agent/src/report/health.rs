//! The device facts a heartbeat reports (proto `Health`): uptime, CPU and memory from `/proc`,
//! free space of the state directory's file system, and the SoC temperature where the board has
//! one. Parsing is pure (tested on sample text); reading the files is the thin part.

use std::path::Path;

use drover_proto::Health;

/// Cumulative CPU time from the first line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// Ticks spent idle (idle + iowait).
    pub idle: u64,
    /// All ticks.
    pub total: u64,
}

impl CpuSample {
    /// Reads `/proc/stat` (zeros where it cannot be read).
    pub fn now() -> CpuSample {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_proc_stat(&text))
            .unwrap_or_default()
    }

    /// CPU use between `earlier` and `self`, 0–100.
    pub fn busy_pct_since(&self, earlier: &CpuSample) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        let idle = self.idle.saturating_sub(earlier.idle);
        if total == 0 {
            return 0.0;
        }
        let pct = 100.0 * (total.saturating_sub(idle)) as f64 / total as f64;
        (pct * 10.0).round() / 10.0
    }
}

/// The `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuSample> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let total = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some(CpuSample { idle, total })
}

/// (used, total) bytes from `/proc/meminfo`: MemTotal − MemAvailable.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some((total.saturating_sub(available), total))
}

/// Seconds since boot from `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<u64> {
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds as u64)
}

/// °C from a thermal zone's `temp` (millidegrees).
pub fn parse_thermal(text: &str) -> Option<f64> {
    let milli: i64 = text.trim().parse().ok()?;
    Some(milli as f64 / 1000.0)
}

/// Free bytes for unprivileged users on the file system holding `path` (0 when unknown).
pub fn disk_free(path: &Path) -> u64 {
    match rustix::fs::statvfs(path) {
        Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
        Err(_) => 0,
    }
}

/// Gathers a health report; `previous` is the CPU sample of the last report (updated here).
/// Spool counts come from the caller; `installed` and `update_state` are the update engine's,
/// filled in by the publisher.
pub fn collect(
    state_dir: &Path,
    previous: &mut CpuSample,
    spool_depth: u64,
    spool_dropped: u64,
    ts: i64,
) -> Health {
    let cpu = CpuSample::now();
    let cpu_pct = cpu.busy_pct_since(previous);
    *previous = cpu;
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let (mem_used, mem_total) = read("/proc/meminfo")
        .and_then(|t| parse_meminfo(&t))
        .unwrap_or((0, 0));
    Health {
        ts,
        uptime_s: read("/proc/uptime")
            .and_then(|t| parse_uptime(&t))
            .unwrap_or(0),
        cpu_pct,
        mem_used,
        mem_total,
        disk_free: disk_free(state_dir),
        temp_c: read("/sys/class/thermal/thermal_zone0/temp").and_then(|t| parse_thermal(&t)),
        installed: Vec::new(),
        spool_depth,
        spool_dropped,
        update_state: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_use_is_the_busy_share_of_the_ticks_between_samples() {
        let a = parse_proc_stat("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        let b = parse_proc_stat("cpu  200 0 200 1500 100 0 0 0 0 0\n").unwrap();
        assert_eq!(a.total, 1000);
        assert_eq!(a.idle, 800);
        assert_eq!(b.busy_pct_since(&a), 20.0);
        assert_eq!(a.busy_pct_since(&a), 0.0);
    }

    #[test]
    fn memory_used_is_total_minus_available() {
        let text = "MemTotal:        2048 kB\nMemFree:          100 kB\nMemAvailable:    1024 kB\n";
        assert_eq!(parse_meminfo(text), Some((1024 * 1024, 2048 * 1024)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn uptime_and_temperature_parse() {
        assert_eq!(parse_uptime("12345.67 2345.00\n"), Some(12345));
        assert_eq!(parse_thermal("48250\n"), Some(48.25));
        assert_eq!(parse_thermal("n/a"), None);
    }

    #[test]
    fn a_report_from_this_machine_has_memory_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut cpu = CpuSample::default();
        let health = collect(dir.path(), &mut cpu, 3, 1, 42);
        assert!(health.mem_total > 0 && health.mem_used <= health.mem_total);
        assert!(health.disk_free > 0);
        assert!((0.0..=100.0).contains(&health.cpu_pct));
        assert_eq!(
            (health.spool_depth, health.spool_dropped, health.ts),
            (3, 1, 42)
        );
        assert!(health.installed.is_empty() && health.update_state.is_none());
    }
}
