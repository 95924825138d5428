//! Retention and presence upkeep, run periodically: raw readings past their
//! retention are deleted in bounded batches (so SQLite's writer is never held
//! for long), rollups live longer, and devices silent for longer than the
//! offline timeout are marked offline with an event. The webhook delivery log
//! is pruned in the same pass.

use std::time::Duration;

use crate::error::Result;
use crate::on_store;
use crate::store::{Store, now_ms};

/// How many rows one delete statement removes at most.
const DELETE_BATCH: i64 = 10_000;

/// What retention keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Raw readings and de-duplication keys.
    pub raw: Duration,
    /// One-minute rollups.
    pub rollups: Duration,
    /// Finished webhook deliveries (the log).
    pub deliveries: Duration,
}

/// Rows removed by one pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Raw readings.
    pub readings: u64,
    /// De-duplication keys.
    pub seen: u64,
    /// Rollups.
    pub rollups: u64,
}

/// The time (ms) before which what is kept for `keep` goes.
pub(crate) fn cutoff(now: i64, keep: Duration) -> i64 {
    now - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX / 2)
}

/// One retention pass at `now` (ms).
pub async fn run_once(store: &Store, retention: Retention, now: i64) -> Result<Removed> {
    let raw_cutoff = cutoff(now, retention.raw);
    let rollup_cutoff = cutoff(now, retention.rollups);
    let mut removed = Removed::default();
    // SQLite has no DELETE … LIMIT by default: delete by rowid in batches.
    // PostgreSQL deletes in one statement without holding other writers.
    let (readings_sql, seen_sql, rollups_sql) = match store {
        Store::Sqlite(_) => (
            "DELETE FROM telemetry_readings WHERE rowid IN (SELECT rowid FROM telemetry_readings WHERE ts < $1 LIMIT $2)",
            "DELETE FROM telemetry_seen WHERE rowid IN (SELECT rowid FROM telemetry_seen WHERE ts < $1 LIMIT $2)",
            "DELETE FROM telemetry_rollups WHERE rowid IN (SELECT rowid FROM telemetry_rollups WHERE bucket < $1 LIMIT $2)",
        ),
        Store::Postgres(_) => (
            "DELETE FROM telemetry_readings WHERE ts < $1 AND $2 > 0",
            "DELETE FROM telemetry_seen WHERE ts < $1 AND $2 > 0",
            "DELETE FROM telemetry_rollups WHERE bucket < $1 AND $2 > 0",
        ),
    };
    for (sql, cut, counter) in [
        (readings_sql, raw_cutoff, &mut removed.readings),
        (seen_sql, raw_cutoff, &mut removed.seen),
        (rollups_sql, rollup_cutoff, &mut removed.rollups),
    ] {
        loop {
            let n = on_store!(store, pool => sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(cut).bind(DELETE_BATCH).execute(pool).await.map(|r| r.rows_affected()))?;
            *counter += n;
            if n < DELETE_BATCH as u64 || matches!(store, Store::Postgres(_)) {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    Ok(removed)
}

/// Marks devices silent since before `now - offline_after` offline, with an event each.
pub async fn mark_silent_offline(
    store: &Store,
    offline_after: Duration,
    now: i64,
) -> Result<Vec<String>> {
    let cut = cutoff(now, offline_after);
    let detail = super::events::clip(&format!(
        "no message for {}",
        crate::duration::format(offline_after)
    ));
    // Marked offline and its event together: nobody sees one without the other.
    let ids: Vec<String> = on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE devices SET online = FALSE WHERE online AND (last_seen_at IS NULL OR last_seen_at < $1) RETURNING id")
            .bind(cut).fetch_all(&mut *tx).await?;
        for id in &ids {
            sqlx::query(super::events::INSERT).bind(id).bind(now_ms()).bind("offline").bind(&detail)
                .execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(ids)
    })?;
    Ok(ids)
}

/// The background loop: presence every 10 s, retention every 10 minutes.
pub async fn run(
    store: Store,
    retention: Retention,
    offline_after: Duration,
    live: crate::live::Live,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let mut passes = 0u64;
    loop {
        tick.tick().await;
        match mark_silent_offline(&store, offline_after, now_ms()).await {
            Ok(ids) => ids.iter().for_each(|id| live.presence(id, false)),
            Err(e) => tracing::warn!(error = %e, "cannot update device presence"),
        }
        if passes.is_multiple_of(60) {
            match run_once(&store, retention, now_ms()).await {
                Ok(r) if r != Removed::default() => tracing::info!(
                    readings = r.readings,
                    rollups = r.rollups,
                    "telemetry retention"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "telemetry retention failed"),
            }
            let until = cutoff(now_ms(), retention.deliveries);
            match crate::webhooks::prune(&store, until).await {
                Ok((0, 0)) => {}
                Ok((deliveries, targets)) => {
                    tracing::info!(deliveries, targets, "webhook log retention")
                }
                Err(e) => tracing::warn!(error = %e, "webhook log retention failed"),
            }
        }
        passes += 1;
    }
}
