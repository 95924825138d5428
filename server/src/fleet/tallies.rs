//! The overview's counts as stored changes keep them (migration 0016): devices per status and
//! presence, and devices per installed bundle version. Triggers append +1 / -1 rows in the
//! transaction that changes a device or its versions, so a count read here is exact; reading
//! sums a few dozen rows instead of counting the fleet. [`run`] folds the appended rows into
//! one per count so that stays true.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::Result;
use crate::identity::devices::PresenceCounts;
use crate::on_store;
use crate::store::Store;

/// How often [`run`] looks for rows to fold.
const COMPACT_EVERY: Duration = Duration::from_secs(30);

/// The counts, as of one read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tallies {
    /// Devices per status.
    pub by_status: BTreeMap<String, i64>,
    /// Presence of the accepted devices.
    pub presence: PresenceCounts,
    /// Devices per (bundle name, version).
    pub versions: BTreeMap<(String, String), i64>,
}

type Row = (String, String, String, i64);

/// Reads every count (one statement, so one consistent snapshot).
pub async fn read(store: &Store) -> Result<Tallies> {
    let rows: Vec<Row> = on_store!(store, pool => sqlx::query_as(
        "SELECT what, a, b, CAST(SUM(n) AS BIGINT) FROM fleet_tallies
          GROUP BY what, a, b HAVING SUM(n) <> 0")
        .fetch_all(pool).await)?;
    let mut out = Tallies::default();
    for (what, a, b, n) in rows {
        match what.as_str() {
            "devices" => {
                *out.by_status.entry(a.clone()).or_default() += n;
                if a == "accepted" {
                    match b.as_str() {
                        "online" => out.presence.online += n,
                        "never" => out.presence.never += n,
                        _ => out.presence.offline += n,
                    }
                }
            }
            "versions" => {
                out.versions.insert((a, b), n);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Folds the rows of each count into one (dropping counts that reached zero) when there is
/// anything to fold; answers how many rows it removed. Rows appended while it runs are left
/// for the next time: the delete sees only rows committed before it, so none is counted twice
/// or lost, on either store, even when two servers fold at once.
pub async fn compact(store: &Store) -> Result<u64> {
    let (rows, keys): (i64, i64) = on_store!(store, pool => sqlx::query_as(
        "SELECT COUNT(*), (SELECT COUNT(*) FROM (SELECT 1 FROM fleet_tallies GROUP BY what, a, b) k)
           FROM fleet_tallies")
        .fetch_one(pool).await)?;
    if rows <= keys {
        return Ok(0);
    }
    let removed = on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        let gone: Vec<Row> = sqlx::query_as("DELETE FROM fleet_tallies RETURNING what, a, b, n")
            .fetch_all(&mut *tx).await?;
        let mut sums: BTreeMap<(String, String, String), i64> = BTreeMap::new();
        for (what, a, b, n) in &gone {
            *sums.entry((what.clone(), a.clone(), b.clone())).or_default() += n;
        }
        let mut kept = 0u64;
        for ((what, a, b), n) in sums.into_iter().filter(|(_, n)| *n != 0) {
            sqlx::query("INSERT INTO fleet_tallies (what, a, b, n) VALUES ($1, $2, $3, $4)")
                .bind(what).bind(a).bind(b).bind(n).execute(&mut *tx).await?;
            kept += 1;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>((gone.len() as u64).saturating_sub(kept))
    })?;
    Ok(removed)
}

/// The background loop: folds the counts' rows every [`COMPACT_EVERY`].
pub async fn run(store: Store) {
    let mut tick = tokio::time::interval(COMPACT_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = compact(&store).await {
            tracing::warn!(error = %e, "cannot fold the overview's counts");
        }
    }
}
