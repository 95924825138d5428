//! Devices and their certificates. Status moves pending → accepted, and
//! either → revoked or decommissioned; revoking or decommissioning revokes
//! every certificate of the device in the same transaction.

use serde::Serialize;

use super::Tags;
use crate::error::{Error, Result};
use crate::on_store;
use crate::paging::Page;
use crate::store::{Store, now_ms};
use crate::telemetry::events;

/// A device's lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Enrolled with an approval token; waits for an operator.
    Pending,
    /// May use the device API and MQTT.
    Accepted,
    /// Cut off; its certificates are refused.
    Revoked,
    /// Retired by an operator; kept for history.
    Decommissioned,
}

impl Status {
    /// Every status, for filters.
    pub const ALL: [Status; 4] = [
        Status::Pending,
        Status::Accepted,
        Status::Revoked,
        Status::Decommissioned,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Accepted => "accepted",
            Status::Revoked => "revoked",
            Status::Decommissioned => "decommissioned",
        }
    }

    /// Parses a stored or filtered status.
    pub fn parse(field: &str, s: &str) -> Result<Status> {
        match s {
            "pending" => Ok(Status::Pending),
            "accepted" => Ok(Status::Accepted),
            "revoked" => Ok(Status::Revoked),
            "decommissioned" => Ok(Status::Decommissioned),
            other => Err(Error::invalid(
                field,
                format!(
                    "{other:?} is not a status; use pending, accepted, revoked or decommissioned"
                ),
            )),
        }
    }
}

/// Whether a device is talking to the server: connected now, heard from
/// before but not now, or never heard from since it enrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Connected now.
    Online,
    /// Heard from before, not connected now.
    Offline,
    /// Never heard from since it enrolled.
    Never,
}

impl Presence {
    /// Every presence, for filters.
    pub const ALL: [Presence; 3] = [Presence::Online, Presence::Offline, Presence::Never];

    /// The filter's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Offline => "offline",
            Presence::Never => "never",
        }
    }

    /// Parses a filter value.
    pub fn parse(field: &str, s: &str) -> Result<Presence> {
        match s {
            "online" => Ok(Presence::Online),
            "offline" => Ok(Presence::Offline),
            "never" => Ok(Presence::Never),
            other => Err(Error::invalid(
                field,
                format!("{other:?} is not a presence; use online, offline or never"),
            )),
        }
    }
}

/// A stored device.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Device {
    /// Alphanumeric id (also the certificate's CN and O).
    pub id: String,
    /// Operator-facing name.
    pub name: String,
    /// Device type.
    pub device_type: String,
    /// Host name the device reported.
    pub hostname: String,
    /// Status name.
    pub status: String,
    /// Hex SHA-256 of the enrolled public key.
    pub public_key_sha256: String,
    /// The token it enrolled with.
    pub enrollment_token_id: String,
    /// Enrolled (ms).
    pub created_at: i64,
    /// Last change (ms).
    pub updated_at: i64,
    /// Last contact (ms).
    pub last_seen_at: Option<i64>,
    /// Connected now.
    pub online: bool,
}

impl Device {
    /// The status, which the table's CHECK keeps valid.
    pub fn status(&self) -> Status {
        Status::parse("status", &self.status).unwrap_or(Status::Revoked)
    }
}

/// A certificate issued to a device.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceCertificate {
    /// Serial, lower-case hex.
    pub serial: String,
    /// Owner.
    pub device_id: String,
    /// Hex SHA-256 of the DER.
    pub fingerprint_sha256: String,
    /// Hex SHA-256 of the public key.
    pub public_key_sha256: String,
    /// Validity start (ms).
    pub not_before: i64,
    /// Validity end (ms).
    pub not_after: i64,
    /// `enroll`, `renew` or `recover`.
    pub issued_for: String,
    /// Issued (ms).
    pub created_at: i64,
    /// Revoked (ms).
    pub revoked_at: Option<i64>,
}

pub(crate) const DEVICE_COLUMNS: &str = "id, name, device_type, hostname, status, public_key_sha256, enrollment_token_id, created_at, updated_at, last_seen_at, online";
const CERT_COLUMNS: &str = "serial, device_id, fingerprint_sha256, public_key_sha256, not_before, not_after, issued_for, created_at, revoked_at";

/// A device by id.
pub async fn get(store: &Store, id: &str) -> Result<Option<Device>> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
    ));
    Ok(
        on_store!(store, pool => sqlx::query_as::<_, Device>(sql).bind(id).fetch_optional(pool).await)?,
    )
}

/// A device by id, or a 404-style error.
pub async fn require(store: &Store, id: &str) -> Result<Device> {
    get(store, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no device with id {id}")))
}

/// The device enrolled with a token and key, if any.
pub async fn find_by_token_and_key(
    store: &Store,
    token_id: &str,
    key_sha256: &str,
) -> Result<Option<Device>> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE enrollment_token_id = $1 AND public_key_sha256 = $2"
    ));
    Ok(
        on_store!(store, pool => sqlx::query_as::<_, Device>(sql).bind(token_id).bind(key_sha256).fetch_optional(pool).await)?,
    )
}

/// A device's tags.
pub async fn tags(store: &Store, id: &str) -> Result<Tags> {
    let rows: Vec<(String, String)> = on_store!(store, pool => sqlx::query_as(
        "SELECT key, value FROM device_tags WHERE device_id = $1 ORDER BY key")
        .bind(id).fetch_all(pool).await)?;
    Ok(Tags(rows.into_iter().collect()))
}

/// Filters of the device list; all optional.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Status.
    pub status: Option<Status>,
    /// Device type.
    pub device_type: Option<String>,
    /// A tag that must be present with this value.
    pub tag: Option<(String, String)>,
    /// Text found in the id, name or host name.
    pub q: Option<String>,
    /// Connected now, heard from before, or never heard from.
    pub presence: Option<Presence>,
}

/// One page of devices by name, with the total matching.
pub async fn list(store: &Store, filter: &Filter, page: Page) -> Result<(Vec<Device>, i64)> {
    const WHERE: &str = "WHERE ($1 IS NULL OR d.status = $1)
          AND ($2 IS NULL OR d.device_type = $2)
          AND ($3 IS NULL OR EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.key = $3 AND t.value = $4))
          AND ($5 IS NULL OR LOWER(d.id) LIKE $5 OR LOWER(d.name) LIKE $5 OR LOWER(d.hostname) LIKE $5)
          AND ($6 IS NULL
               OR ($6 = 'online' AND d.online)
               OR ($6 = 'offline' AND NOT d.online AND d.last_seen_at IS NOT NULL)
               OR ($6 = 'never' AND NOT d.online AND d.last_seen_at IS NULL))";
    let columns = DEVICE_COLUMNS
        .split(", ")
        .map(|c| format!("d.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let items_sql = sqlx::AssertSqlSafe(format!(
        "SELECT {columns} FROM devices d {WHERE} ORDER BY d.name, d.id LIMIT $7 OFFSET $8"
    ));
    let count_sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM devices d {WHERE}"));
    let status = filter.status.map(Status::as_str);
    let (tag_key, tag_value) = match &filter.tag {
        Some((k, v)) => (Some(k.as_str()), Some(v.as_str())),
        None => (None, None),
    };
    let q = filter.q.as_ref().map(|q| {
        let escaped = q.to_lowercase().replace(['%', '_'], "");
        format!("%{escaped}%")
    });
    let presence = filter.presence.map(Presence::as_str);
    let items = on_store!(store, pool => sqlx::query_as::<_, Device>(items_sql)
        .bind(status).bind(filter.device_type.as_deref()).bind(tag_key).bind(tag_value).bind(q.as_deref())
        .bind(presence).bind(page.limit()).bind(page.offset()).fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar(count_sql)
        .bind(status).bind(filter.device_type.as_deref()).bind(tag_key).bind(tag_value).bind(q.as_deref())
        .bind(presence).fetch_one(pool).await)?;
    Ok((items, total))
}

/// Renames a device and/or replaces its tags.
pub async fn update(
    store: &Store,
    id: &str,
    name: Option<&str>,
    tags: Option<&Tags>,
) -> Result<Device> {
    let device = require(store, id).await?;
    if let Some(name) = name {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
            return Err(Error::invalid("name", "use 1 to 128 printable characters"));
        }
        on_store!(store, pool => sqlx::query("UPDATE devices SET name = $1, updated_at = $2 WHERE id = $3")
            .bind(name).bind(now_ms()).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    }
    if let Some(tags) = tags {
        on_store!(store, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM device_tags WHERE device_id = $1").bind(id).execute(&mut *tx).await?;
            for (k, v) in &tags.0 {
                sqlx::query("INSERT INTO device_tags (device_id, key, value) VALUES ($1, $2, $3)")
                    .bind(id).bind(k).bind(v).execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE devices SET updated_at = $1 WHERE id = $2").bind(now_ms()).bind(id).execute(&mut *tx).await?;
            tx.commit().await
        })?;
    }
    let _ = device;
    require(store, id).await
}

/// Accepts a pending device (accepting an accepted one changes nothing).
pub async fn accept(store: &Store, id: &str) -> Result<Device> {
    let device = require(store, id).await?;
    match device.status() {
        Status::Accepted => Ok(device),
        Status::Pending => {
            on_store!(store, pool => sqlx::query(
                "UPDATE devices SET status = 'accepted', updated_at = $1 WHERE id = $2 AND status = 'pending'")
                .bind(now_ms()).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
            require(store, id).await
        }
        s => Err(Error::Conflict(format!(
            "device {id} is {}; a {} device cannot be accepted, enroll it again",
            s.as_str(),
            s.as_str()
        ))),
    }
}

/// Revokes (or decommissions) a device and all its certificates; answers the revoked serials.
pub async fn cut_off(store: &Store, id: &str, to: Status) -> Result<(Device, Vec<String>)> {
    let device = require(store, id).await?;
    if device.status() == Status::Decommissioned
        || (device.status() == Status::Revoked && to == Status::Revoked)
    {
        return Ok((device, Vec::new()));
    }
    let now = now_ms();
    let serials: Vec<String> = on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query("UPDATE devices SET status = $1, online = FALSE, updated_at = $2 WHERE id = $3")
            .bind(to.as_str()).bind(now).bind(id).execute(&mut *tx).await?;
        sqlx::query("UPDATE device_certificates SET revoked_at = $1 WHERE device_id = $2 AND revoked_at IS NULL")
            .bind(now).bind(id).execute(&mut *tx).await?;
        let serials: Vec<String> = sqlx::query_scalar("SELECT serial FROM device_certificates WHERE device_id = $1")
            .bind(id).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(serials)
    })?;
    Ok((require(store, id).await?, serials))
}

/// A device's certificates, newest first.
pub async fn certificates(store: &Store, id: &str) -> Result<Vec<DeviceCertificate>> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {CERT_COLUMNS} FROM device_certificates WHERE device_id = $1 ORDER BY created_at DESC, serial"
    ));
    Ok(
        on_store!(store, pool => sqlx::query_as::<_, DeviceCertificate>(sql).bind(id).fetch_all(pool).await)?,
    )
}

/// A certificate by serial.
pub async fn certificate(store: &Store, serial: &str) -> Result<Option<DeviceCertificate>> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {CERT_COLUMNS} FROM device_certificates WHERE serial = $1"
    ));
    Ok(
        on_store!(store, pool => sqlx::query_as::<_, DeviceCertificate>(sql).bind(serial).fetch_optional(pool).await)?,
    )
}

/// Every revoked serial (loaded into the TLS verifier at start).
pub async fn revoked_serials(store: &Store) -> Result<Vec<String>> {
    Ok(on_store!(store, pool => sqlx::query_scalar(
        "SELECT serial FROM device_certificates WHERE revoked_at IS NOT NULL").fetch_all(pool).await)?)
}

/// Records a certificate issued to an existing device.
pub async fn record_certificate(store: &Store, cert: &DeviceCertificate) -> Result<()> {
    on_store!(store, pool => sqlx::query(
        "INSERT INTO device_certificates (serial, device_id, fingerprint_sha256, public_key_sha256, not_before, not_after, issued_for, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(&cert.serial).bind(&cert.device_id).bind(&cert.fingerprint_sha256).bind(&cert.public_key_sha256)
        .bind(cert.not_before).bind(cert.not_after).bind(&cert.issued_for).bind(cert.created_at)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Notes a message from a device; one that was offline comes back online
/// with its "heard from again" event in the same transaction, so whoever sees
/// it online also sees why. Answers true when it came back.
pub async fn touch(store: &Store, id: &str) -> Result<bool> {
    let now = now_ms();
    // The common case, a device already online, is one statement.
    let seen = on_store!(store, pool => sqlx::query(
        "UPDATE devices SET last_seen_at = $1 WHERE id = $2 AND online")
        .bind(now).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    if seen == 1 {
        return Ok(false);
    }
    let detail = events::clip("heard from again");
    let came_online = on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        let n = sqlx::query("UPDATE devices SET online = TRUE, last_seen_at = $1 WHERE id = $2 AND NOT online")
            .bind(now).bind(id).execute(&mut *tx).await?.rows_affected();
        if n == 1 {
            sqlx::query(events::INSERT).bind(id).bind(now).bind("online").bind(&detail)
                .execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(n)
    })?;
    Ok(came_online == 1)
}

/// The newest certificate of each listed device.
pub async fn latest_certificates(
    store: &Store,
    ids: &[String],
) -> Result<std::collections::HashMap<String, DeviceCertificate>> {
    let mut out = std::collections::HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let placeholders = (1..=ids.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {CERT_COLUMNS} FROM device_certificates WHERE device_id IN ({placeholders}) ORDER BY not_after"
    ));
    let rows = on_store!(store, pool => {
        let mut q = sqlx::query_as::<_, DeviceCertificate>(sql);
        for id in ids {
            q = q.bind(id);
        }
        q.fetch_all(pool).await
    })?;
    for cert in rows {
        out.insert(cert.device_id.clone(), cert);
    }
    Ok(out)
}

/// Ids of every accepted device (those that may connect).
pub async fn accepted_ids(store: &Store) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = on_store!(store, pool => sqlx::query_as(
        "SELECT id FROM devices WHERE status = 'accepted' ORDER BY id").fetch_all(pool).await)?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// How many devices have each status.
pub async fn count_by_status(store: &Store) -> Result<std::collections::BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = on_store!(store, pool => sqlx::query_as(
        "SELECT status, COUNT(*) FROM devices GROUP BY status").fetch_all(pool).await)?;
    Ok(rows.into_iter().collect())
}

/// How many accepted devices are online, offline and never seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceCounts {
    /// Connected now.
    pub online: i64,
    /// Heard from before, not connected now.
    pub offline: i64,
    /// Never heard from since enrolling.
    pub never: i64,
}

/// Presence of the accepted devices (the others may not connect, so their
/// presence says nothing about the fleet's health).
pub async fn count_by_presence(store: &Store) -> Result<PresenceCounts> {
    let (online, offline, never): (i64, i64, i64) = on_store!(store, pool => sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(CASE WHEN online THEN 1 ELSE 0 END), 0) AS BIGINT),
                CAST(COALESCE(SUM(CASE WHEN NOT online AND last_seen_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT),
                CAST(COALESCE(SUM(CASE WHEN NOT online AND last_seen_at IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT)
         FROM devices WHERE status = 'accepted'").fetch_one(pool).await)?;
    Ok(PresenceCounts {
        online,
        offline,
        never,
    })
}

/// Records a device's presence from its `state` topic (and its last contact),
/// with its presence event in the same transaction; a message stamped before
/// the last applied one is stale (a last will delivered after the reconnect)
/// and changes nothing. Answers true when the presence changed.
pub async fn set_online(store: &Store, id: &str, online: bool, ts: i64) -> Result<bool> {
    let now = now_ms();
    let (kind, detail) = if online {
        ("online", "connected")
    } else {
        ("offline", "disconnected (its state or last will)")
    };
    let changed = on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        let n = sqlx::query(
            "UPDATE devices SET online = $1, presence_ts = $4, last_seen_at = $2
             WHERE id = $3 AND online <> $1 AND presence_ts <= $4")
            .bind(online).bind(now).bind(id).bind(ts).execute(&mut *tx).await?.rows_affected();
        if n == 1 {
            sqlx::query(events::INSERT).bind(id).bind(now).bind(kind).bind(detail)
                .execute(&mut *tx).await?;
        } else {
            sqlx::query(
                "UPDATE devices SET last_seen_at = $1, presence_ts = CASE WHEN presence_ts < $3 THEN $3 ELSE presence_ts END
                 WHERE id = $2")
                .bind(now).bind(id).bind(ts).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(n)
    })?;
    Ok(changed == 1)
}

/// Every revoked certificate: serial and revocation time (for the CRL).
pub async fn revoked_certificates(store: &Store) -> Result<Vec<(String, i64)>> {
    let rows: Vec<(String, Option<i64>)> = on_store!(store, pool => sqlx::query_as(
        "SELECT serial, revoked_at FROM device_certificates WHERE revoked_at IS NOT NULL ORDER BY serial")
        .fetch_all(pool).await)?;
    Ok(rows
        .into_iter()
        .map(|(s, at)| (s, at.unwrap_or(0)))
        .collect())
}
