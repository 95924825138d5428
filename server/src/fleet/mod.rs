//! The fleet at a glance: what the overview page answers ("is anything
//! wrong right now?"). Every query here is bounded by an index or a LIMIT,
//! so the page costs the same at 100 devices and at 100,000.

pub mod drift;
pub mod metrics;
pub mod tallies;

use crate::error::Result;
use crate::identity::devices::PresenceCounts;
use crate::on_store;
use crate::store::Store;
use crate::telemetry::views::age;

/// A device online whose agent has not sent health for this long is stale
/// (agents report every 30 s).
pub const STALE_HEALTH_MS: i64 = 3 * 60_000;

/// Certificates expiring within this window are flagged (the agent renews
/// well before; one this close means renewal is failing).
pub const EXPIRY_WARNING_MS: i64 = 14 * 86_400_000;

/// Rows shown in each overview list.
const LIST_ROWS: i64 = 10;

/// Everything the overview shows.
#[derive(Debug)]
pub struct Overview {
    /// Devices per status.
    pub by_status: std::collections::BTreeMap<String, i64>,
    /// Presence of accepted devices.
    pub presence: PresenceCounts,
    /// Bundles stored.
    pub bundles: i64,
    /// Installed versions: bundle name → (version, devices), most devices first.
    pub versions: Vec<BundleVersions>,
    /// Rollouts not finished, newest first.
    pub rollouts: Vec<ActiveRollout>,
    /// Newest device events across the fleet.
    pub events: Vec<FleetEvent>,
    /// Online devices without a recent health report (first few) and how many.
    pub stale: (Vec<DeviceNote>, i64),
    /// Accepted devices whose newest certificate expires soon (first few) and how many.
    pub expiring: (Vec<DeviceNote>, i64),
}

/// One bundle's versions in use.
#[derive(Debug)]
pub struct BundleVersions {
    /// The bundle name.
    pub name: String,
    /// (version, devices), most devices first.
    pub versions: Vec<(String, i64)>,
    /// Devices with any version of it.
    pub devices: i64,
}

impl BundleVersions {
    /// A version's share of this bundle's devices, in whole percent (for the bar's width).
    pub fn percent(&self, n: &i64) -> i64 {
        if self.devices == 0 {
            0
        } else {
            (n * 100 + self.devices / 2) / self.devices
        }
    }
}

/// A rollout in progress.
#[derive(Debug)]
pub struct ActiveRollout {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// State.
    pub state: String,
    /// Bundle name and version.
    pub bundle: String,
    /// Current phase (from 1) and how many.
    pub phase: (i64, usize),
    /// Devices finished (any final state), succeeded, failed or reverted, and in the target.
    pub done: i64,
    /// Succeeded.
    pub succeeded: i64,
    /// Failed or reverted.
    pub failed: i64,
    /// Devices in the target.
    pub total: i64,
}

impl ActiveRollout {
    /// Finished share of the target, whole percent.
    pub fn percent(&self) -> i64 {
        if self.total == 0 {
            0
        } else {
            self.done * 100 / self.total
        }
    }
}

/// A device event with its device's name.
#[derive(Debug, sqlx::FromRow)]
pub struct FleetEvent {
    /// The device.
    pub device_id: String,
    /// Its name.
    pub name: String,
    /// When (ms).
    pub at: i64,
    /// Kind.
    pub kind: String,
    /// What happened (first line only on the overview).
    pub detail: String,
}

impl FleetEvent {
    /// RFC 3339 time.
    pub fn time(&self) -> String {
        crate::timefmt::rfc3339(self.at)
    }

    /// The first line of the detail (install failures carry a log tail).
    pub fn summary(&self) -> &str {
        self.detail.lines().next().unwrap_or("")
    }
}

/// A device worth a look, with why.
#[derive(Debug)]
pub struct DeviceNote {
    /// The device.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Why, in words ("last health 12 min ago", "expires in 3 d").
    pub note: String,
}

/// Everything the overview shows, as of `now`.
pub async fn overview(store: &Store, now: i64) -> Result<Overview> {
    let counts = tallies::read(store).await?;
    Ok(Overview {
        by_status: counts.by_status,
        presence: counts.presence,
        bundles: on_store!(store, pool => sqlx::query_scalar("SELECT COUNT(*) FROM bundles")
            .fetch_one(pool).await)?,
        versions: versions(counts.versions),
        rollouts: active_rollouts(store).await?,
        events: recent_events(store).await?,
        stale: stale_health(store, now).await?,
        expiring: expiring_certificates(store, now).await?,
    })
}

/// Installed versions per bundle name (from the kept counts), most devices first.
fn versions(counts: std::collections::BTreeMap<(String, String), i64>) -> Vec<BundleVersions> {
    let mut out: Vec<BundleVersions> = Vec::new();
    for ((name, version), n) in counts.into_iter().filter(|(_, n)| *n > 0) {
        match out.last_mut() {
            Some(b) if b.name == name => {
                b.devices += n;
                b.versions.push((version, n));
            }
            _ => out.push(BundleVersions {
                name,
                versions: vec![(version, n)],
                devices: n,
            }),
        }
    }
    for b in &mut out {
        b.versions
            .sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    }
    out
}

async fn active_rollouts(store: &Store) -> Result<Vec<ActiveRollout>> {
    let mut out = Vec::new();
    let mut active = crate::rollouts::in_states(store, crate::rollouts::ACTIVE_STATES).await?;
    active.reverse();
    for r in active.into_iter().take(LIST_ROWS as usize) {
        let counts = crate::rollouts::counts(store, &r.id).await?;
        let n = |s: &str| counts.get(s).copied().unwrap_or(0);
        let failed = n("failed") + n("reverted");
        let phases = r.phase_specs().map(|p| p.len()).unwrap_or(0);
        out.push(ActiveRollout {
            done: crate::rollouts::finished_count(&counts),
            succeeded: n("succeeded"),
            failed,
            total: counts.values().sum(),
            // Stored from 0; shown from 1, as the API and the rollout page do.
            phase: (r.phase + 1, phases),
            bundle: format!("{} {}", r.bundle_name, r.bundle_version),
            id: r.id,
            name: r.name,
            state: r.state,
        });
    }
    Ok(out)
}

async fn recent_events(store: &Store) -> Result<Vec<FleetEvent>> {
    Ok(on_store!(store, pool => sqlx::query_as(
        "SELECT e.device_id, d.name, e.at, e.kind, e.detail FROM device_events e
           JOIN devices d ON d.id = e.device_id
          ORDER BY e.id DESC LIMIT $1")
        .bind(LIST_ROWS).fetch_all(pool).await)?)
}

/// Online devices whose newest health report is older than [`STALE_HEALTH_MS`] (or missing),
/// stalest first, and how many.
async fn stale_health(store: &Store, now: i64) -> Result<(Vec<DeviceNote>, i64)> {
    // Each device carries its newest report's time (0: none yet; migration 0017), and the
    // index on (status, online, health_at) puts the stale ones at the start of one range:
    // both the list and the count read only those entries, however large the fleet.
    const WHERE: &str =
        "FROM devices WHERE status = 'accepted' AND online = TRUE AND health_at < $1";
    let cut = now - STALE_HEALTH_MS;
    let rows: Vec<(String, String, i64)> = on_store!(store, pool => sqlx::query_as(
        sqlx::AssertSqlSafe(format!("SELECT id, name, health_at {WHERE} ORDER BY health_at, id LIMIT {LIST_ROWS}")))
        .bind(cut).fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar(
        sqlx::AssertSqlSafe(format!("SELECT COUNT(*) {WHERE}"))).bind(cut).fetch_one(pool).await)?;
    let notes = rows
        .into_iter()
        .map(|(id, name, at)| DeviceNote {
            id,
            name,
            note: if at > 0 {
                format!("last health report {}", age(now, at))
            } else {
                "online, no health report yet".into()
            },
        })
        .collect();
    Ok((notes, total))
}

/// Accepted devices whose newest unrevoked certificate expires within [`EXPIRY_WARNING_MS`].
async fn expiring_certificates(store: &Store, now: i64) -> Result<(Vec<DeviceNote>, i64)> {
    // Starting from the certificates that expire soon (an index range) keeps this
    // small however large the fleet; a renewed device has a later one and drops out.
    // CROSS JOIN: SQLite takes the certificates first (it has no statistics to know that
    // the expiring ones are few); PostgreSQL reads it as an inner join and plans freely.
    // `+c.revoked_at` keeps SQLite from reading every unrevoked certificate through the
    // revoked_at index instead of the few expiring ones through not_after.
    const WHERE: &str = "FROM device_certificates c CROSS JOIN devices d
          WHERE d.id = c.device_id AND c.not_after < $1 AND +c.revoked_at IS NULL AND d.status = 'accepted'
            AND NOT EXISTS (SELECT 1 FROM device_certificates n
                             WHERE n.device_id = c.device_id AND n.not_after > c.not_after)";
    let soon = now + EXPIRY_WARNING_MS;
    let rows: Vec<(String, String, i64)> = on_store!(store, pool => sqlx::query_as(
        sqlx::AssertSqlSafe(format!("SELECT d.id, d.name, c.not_after {WHERE} ORDER BY c.not_after, d.id LIMIT {LIST_ROWS}")))
        .bind(soon).fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar(
        sqlx::AssertSqlSafe(format!("SELECT COUNT(*) {WHERE}"))).bind(soon).fetch_one(pool).await)?;
    let notes = rows
        .into_iter()
        .map(|(id, name, not_after)| DeviceNote {
            id,
            name,
            note: if not_after <= now {
                format!("certificate expired {}", age(now, not_after))
            } else {
                format!("certificate expires in {}", until(not_after - now))
            },
        })
        .collect();
    Ok((notes, total))
}

/// A time ahead in its largest whole unit ("3 d", "5 h", "12 min").
fn until(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        s if s >= 86_400 => format!("{} d", s / 86_400),
        s if s >= 3600 => format!("{} h", s / 3600),
        s => format!("{} min", (s / 60).max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_round_and_never_divide_by_zero() {
        let b = BundleVersions {
            name: "model".into(),
            versions: vec![("1.0".into(), 2), ("2.0".into(), 1)],
            devices: 3,
        };
        assert_eq!(b.percent(&2), 67);
        assert_eq!(b.percent(&1), 33);
        let empty = BundleVersions { devices: 0, ..b };
        assert_eq!(empty.percent(&0), 0);
        assert_eq!(until(3 * 86_400_000 + 5), "3 d");
        assert_eq!(until(5 * 3_600_000), "5 h");
        assert_eq!(until(10_000), "1 min");
    }
}
