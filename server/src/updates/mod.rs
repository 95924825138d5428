//! Updates as devices see them: the offer a device fetches, and the status
//! reports it sends back through its outbox. Reports are idempotent: a
//! retried older report never overwrites a newer one and a final state
//! never changes, so the agent can resend until it hears an answer.

use drover_proto::{Envelope, OfferedPayload, SafeName, Sha256, UpdateOffer, UpdateState};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::on_store;
use crate::store::{Store, now_ms};
use crate::telemetry::events;

/// Longest `detail` kept.
const MAX_DETAIL: usize = 1000;
/// Longest `log_tail` kept (the agent sends the tail of its install and health logs).
const MAX_LOG_TAIL: usize = 8192;

/// True for the states that end an update and never change. `deferred`
/// ends the current attempt but not the update: the agent resumes it when the
/// device's program releases its hold, and reports on with a higher seq.
pub fn is_final(state: UpdateState) -> bool {
    matches!(
        state,
        UpdateState::Succeeded
            | UpdateState::Failed
            | UpdateState::Reverted
            | UpdateState::RolledBack
    )
}

#[derive(sqlx::FromRow)]
struct OfferRow {
    rollout_id: String,
    bundle_id: String,
    envelope: String,
}

#[derive(sqlx::FromRow)]
struct PayloadRow {
    name: String,
    size: i64,
    sha256: String,
}

/// The update offered to a device now: its newest offer in a rollout that
/// has not reached a final state on it, and whose rollout is not stopped
/// (halted, rolling back, rolled back or aborted rollouts withdraw their offers).
pub async fn current_offer(store: &Store, device_id: &str) -> Result<Option<UpdateOffer>> {
    let row: Option<OfferRow> = on_store!(store, pool => sqlx::query_as(
        "SELECT o.rollout_id, o.bundle_id, b.envelope
           FROM device_offers o JOIN bundles b ON b.id = o.bundle_id
          WHERE o.device_id = $1 AND o.rollout_id IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM rollouts r WHERE r.id = o.rollout_id
                             AND r.state IN ('halted','rolling_back','rolled_back','aborted'))
            AND NOT EXISTS (SELECT 1 FROM device_updates u
                             WHERE u.device_id = o.device_id AND u.rollout_id = o.rollout_id
                               AND u.state IN ('succeeded','failed','reverted','rolled_back'))
          ORDER BY o.offered_at DESC LIMIT 1")
        .bind(device_id).fetch_optional(pool).await)?;
    let Some(row) = row else { return Ok(None) };
    let payloads: Vec<PayloadRow> = on_store!(store, pool => sqlx::query_as(
        "SELECT name, size, sha256 FROM bundle_payloads WHERE bundle_id = $1 ORDER BY position")
        .bind(&row.bundle_id).fetch_all(pool).await)?;
    let stored = |what: &str, e: &dyn std::fmt::Display| {
        Error::Internal(format!("bundle {}: stored {what}: {e}", row.bundle_id))
    };
    let envelope =
        Envelope::from_json(row.envelope.as_bytes()).map_err(|e| stored("envelope", &e))?;
    let payloads = payloads
        .into_iter()
        .map(|p| {
            Ok(OfferedPayload {
                name: SafeName::parse(&p.name).map_err(|e| stored("payload name", &e))?,
                size: u64::try_from(p.size).map_err(|e| stored("payload size", &e))?,
                sha256: Sha256::parse(&p.sha256).map_err(|e| stored("payload digest", &e))?,
                url: format!("/device/v1/blobs/{}", p.sha256),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(UpdateOffer {
        rollout_id: row.rollout_id,
        bundle_id: row.bundle_id,
        envelope,
        payloads,
    }))
}

pub use drover_proto::{UpdateStatusRecorded as Recorded, UpdateStatusReport as StatusReport};

#[derive(sqlx::FromRow)]
struct UpdateRow {
    seq: i64,
    state: String,
}

/// Records a device's report on an update it was offered.
pub async fn record(
    store: &Store,
    device_id: &str,
    rollout_id: &str,
    report: &StatusReport,
) -> Result<Recorded> {
    if report
        .version
        .as_ref()
        .is_some_and(|v| v.is_empty() || v.len() > 64)
    {
        return Err(Error::invalid("version", "must be 1 to 64 characters"));
    }
    let seq = i64::try_from(report.seq).map_err(|_| Error::invalid("seq", "is too large"))?;
    let bundle_id: Option<String> = on_store!(store, pool => sqlx::query_scalar(
        "SELECT bundle_id FROM device_offers WHERE device_id = $1 AND rollout_id = $2
          ORDER BY offered_at DESC LIMIT 1")
        .bind(device_id).bind(rollout_id).fetch_optional(pool).await)?;
    let Some(bundle_id) = bundle_id else {
        return Err(Error::NotFound(format!(
            "no update of rollout {rollout_id} was offered to this device"
        )));
    };
    let detail: String = report.detail.chars().take(MAX_DETAIL).collect();
    let log_tail: Option<String> = report
        .log_tail
        .as_ref()
        .map(|t| tail(t, MAX_LOG_TAIL).to_string());
    let state = report.state.as_str();
    let now = now_ms();
    // One statement decides, so two replicas or a retry racing a newer report
    // cannot both win: the row changes only for a higher seq and a non-final stored state
    // (or a server-ordered rollback of a succeeded update, the one change after a final state).
    let changed = on_store!(store, pool => sqlx::query(
        "INSERT INTO device_updates (device_id, rollout_id, bundle_id, seq, state, detail, version, log_tail, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (device_id, rollout_id) DO UPDATE SET
            seq = excluded.seq, state = excluded.state, detail = excluded.detail,
            version = excluded.version, log_tail = excluded.log_tail, updated_at = excluded.updated_at
         WHERE device_updates.seq < excluded.seq
           AND (device_updates.state NOT IN ('succeeded','failed','reverted','rolled_back')
                OR (device_updates.state = 'succeeded' AND excluded.state = 'rolled_back'))")
        .bind(device_id).bind(rollout_id).bind(&bundle_id).bind(seq).bind(state)
        .bind(&detail).bind(&report.version).bind(&log_tail).bind(now)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    if changed > 0 && matches!(report.state, UpdateState::Failed | UpdateState::Reverted) {
        let mut text = format!("update {state} (rollout {rollout_id}): {detail}");
        if let Some(t) = &log_tail {
            text.push_str("\n--- log tail ---\n");
            text.push_str(t);
        }
        events::record(store, device_id, &format!("update_{state}"), &text).await?;
    }
    let now_row: UpdateRow = on_store!(store, pool => sqlx::query_as(
        "SELECT seq, state FROM device_updates WHERE device_id = $1 AND rollout_id = $2")
        .bind(device_id).bind(rollout_id).fetch_one(pool).await)?;
    Ok(Recorded {
        recorded: changed > 0,
        state: now_row.state,
        seq: u64::try_from(now_row.seq).unwrap_or(0),
    })
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A device's update as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeviceUpdate {
    /// The rollout.
    pub rollout_id: String,
    /// The bundle offered.
    pub bundle_id: Option<String>,
    /// Report sequence.
    pub seq: i64,
    /// Update state.
    pub state: String,
    /// What happened.
    pub detail: String,
    /// Version running.
    pub version: Option<String>,
    /// When (ms).
    pub updated_at: i64,
}

/// The device's newest update report, if any.
pub async fn latest(store: &Store, device_id: &str) -> Result<Option<DeviceUpdate>> {
    Ok(on_store!(store, pool => sqlx::query_as(
        "SELECT rollout_id, bundle_id, seq, state, detail, version, updated_at
           FROM device_updates WHERE device_id = $1 ORDER BY updated_at DESC LIMIT 1")
        .bind(device_id).fetch_optional(pool).await)?)
}

/// A device's report on one rollout, if any.
pub async fn of_rollout(
    store: &Store,
    device_id: &str,
    rollout_id: &str,
) -> Result<Option<DeviceUpdate>> {
    Ok(on_store!(store, pool => sqlx::query_as(
        "SELECT rollout_id, bundle_id, seq, state, detail, version, updated_at
           FROM device_updates WHERE device_id = $1 AND rollout_id = $2")
        .bind(device_id).bind(rollout_id).fetch_optional(pool).await)?)
}

/// One of a device's updates as its page lists them: its report on a
/// rollout, with the rollout's name and the bundle's name and version.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HistoryEntry {
    /// The rollout.
    pub rollout_id: String,
    /// The rollout's name; `None` once the rollout is deleted.
    pub rollout_name: Option<String>,
    /// The bundle offered.
    pub bundle_id: Option<String>,
    /// The bundle's name, from the bundle or, once it is deleted, its rollout.
    pub bundle_name: Option<String>,
    /// The bundle's version, found the same way.
    pub bundle_version: Option<String>,
    /// Update state.
    pub state: String,
    /// What happened.
    pub detail: String,
    /// Version running, as the device reported it.
    pub version: Option<String>,
    /// The install and health log's end, when the device sent one.
    pub log_tail: Option<String>,
    /// When the newest report arrived (ms).
    pub updated_at: i64,
}

/// A device's updates, newest report first, at most `limit`.
pub async fn history(store: &Store, device_id: &str, limit: i64) -> Result<Vec<HistoryEntry>> {
    // A finished rollout outlives its bundle and keeps the bundle's name and
    // version, but only for the bundle it rolled out.
    Ok(on_store!(store, pool => sqlx::query_as::<_, HistoryEntry>(
        "SELECT u.rollout_id, r.name AS rollout_name, u.bundle_id,
                COALESCE(b.name, CASE WHEN r.bundle_id = u.bundle_id THEN r.bundle_name END) AS bundle_name,
                COALESCE(b.version, CASE WHEN r.bundle_id = u.bundle_id THEN r.bundle_version END) AS bundle_version,
                u.state, u.detail, u.version, u.log_tail, u.updated_at
           FROM device_updates u
           LEFT JOIN rollouts r ON r.id = u.rollout_id
           LEFT JOIN bundles b ON b.id = u.bundle_id
          WHERE u.device_id = $1
          ORDER BY u.updated_at DESC, u.rollout_id LIMIT $2")
        .bind(device_id).bind(limit).fetch_all(pool).await)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_end_at_a_character_boundary() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("xaé", 2), "é");
    }

    #[test]
    fn final_states_are_the_contract_ones() {
        let finals: Vec<_> = UpdateState::ALL
            .into_iter()
            .filter(|s| is_final(*s))
            .map(|s| s.as_str())
            .collect();
        assert_eq!(finals, ["succeeded", "failed", "reverted", "rolled_back"]);
    }
}
