//! Device events: what happened to a device that an operator should see
//! (refused telemetry, going on- and offline, install failures later).

use serde::Serialize;

use crate::error::Result;
use crate::on_store;
use crate::paging::Page;
use crate::store::{Store, now_ms};
use crate::timefmt::rfc3339;

/// Longest detail kept.
const MAX_DETAIL: usize = 2000;

/// The insert every event takes, also inside a caller's transaction.
pub(crate) const INSERT: &str =
    "INSERT INTO device_events (device_id, at, kind, detail) VALUES ($1, $2, $3, $4)";

/// A detail cut to the longest kept.
pub(crate) fn clip(detail: &str) -> String {
    detail.chars().take(MAX_DETAIL).collect()
}

/// Records an event.
pub async fn record(store: &Store, device_id: &str, kind: &str, detail: &str) -> Result<()> {
    let detail = clip(detail);
    on_store!(store, pool => sqlx::query(INSERT)
        .bind(device_id).bind(now_ms()).bind(kind).bind(&detail)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// An event as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Event {
    /// Increasing id.
    pub id: i64,
    /// When (ms since the epoch).
    #[serde(skip)]
    pub at: i64,
    /// What kind of event.
    pub kind: String,
    /// What happened.
    pub detail: String,
}

/// An event with its time as RFC 3339.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// Increasing id.
    pub id: i64,
    /// RFC 3339 time.
    pub at: String,
    /// What kind of event.
    pub kind: String,
    /// What happened.
    pub detail: String,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        EventView {
            id: e.id,
            at: rfc3339(e.at),
            kind: e.kind,
            detail: e.detail,
        }
    }
}

/// One page of a device's events, newest first, and the total.
pub async fn list(store: &Store, device_id: &str, page: Page) -> Result<(Vec<Event>, i64)> {
    let items = on_store!(store, pool => sqlx::query_as::<_, Event>(
        "SELECT id, at, kind, detail FROM device_events WHERE device_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3")
        .bind(device_id).bind(page.limit()).bind(page.offset()).fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar(
        "SELECT COUNT(*) FROM device_events WHERE device_id = $1").bind(device_id).fetch_one(pool).await)?;
    Ok((items, total))
}
