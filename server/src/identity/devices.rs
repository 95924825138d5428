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

/// The tags of each listed device, in one query.
pub async fn tags_of(
    store: &Store,
    ids: &[String],
) -> Result<std::collections::HashMap<String, Tags>> {
    let mut out: std::collections::HashMap<String, Tags> = std::collections::HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT device_id, key, value FROM device_tags WHERE device_id IN ({}) ORDER BY device_id, key",
        placeholders(ids.len())
    ));
    let rows: Vec<(String, String, String)> = on_store!(store, pool => {
        let mut q = sqlx::query_as(sql);
        for id in ids {
            q = q.bind(id);
        }
        q.fetch_all(pool).await
    })?;
    for (id, k, v) in rows {
        out.entry(id).or_default().0.insert(k, v);
    }
    Ok(out)
}

/// A bundle a device reported installed in its newest health report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Bundle name.
    pub name: String,
    /// Bundle kind.
    pub kind: String,
    /// Version, as the device reported it.
    pub version: String,
    /// When the server first saw the device on this version (ms).
    pub since: i64,
}

/// What each listed device has installed, by bundle name, in one query.
pub async fn installed_of(
    store: &Store,
    ids: &[String],
) -> Result<std::collections::HashMap<String, Vec<Installed>>> {
    let mut out: std::collections::HashMap<String, Vec<Installed>> =
        std::collections::HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT device_id, name, kind, version, since FROM device_versions WHERE device_id IN ({}) ORDER BY device_id, name",
        placeholders(ids.len())
    ));
    let rows: Vec<(String, String, String, String, i64)> = on_store!(store, pool => {
        let mut q = sqlx::query_as(sql);
        for id in ids {
            q = q.bind(id);
        }
        q.fetch_all(pool).await
    })?;
    for (id, name, kind, version, since) in rows {
        out.entry(id).or_default().push(Installed {
            name,
            kind,
            version,
            since,
        });
    }
    Ok(out)
}

/// A device's stored installed set as (name, kind, version), by name.
pub(crate) const INSTALLED_OF_DEVICE: &str =
    "SELECT name, kind, version FROM device_versions WHERE device_id = $1 ORDER BY name";
/// Forgets a bundle a device no longer reports: `$1` device, `$2` name.
pub(crate) const DELETE_INSTALLED: &str =
    "DELETE FROM device_versions WHERE device_id = $1 AND name = $2";
/// Records a bundle at a new version (or a new bundle): `$1` device, `$2`
/// name, `$3` kind, `$4` version, `$5` now. A report from an id that is not
/// a device (the foreign key) writes nothing rather than failing its batch.
pub(crate) const UPSERT_INSTALLED: &str = "INSERT INTO device_versions (device_id, name, kind, version, since)
     SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM devices WHERE id = $1)
     ON CONFLICT (device_id, name) DO UPDATE SET kind = excluded.kind, version = excluded.version, since = excluded.since";

/// How a device's stored installed rows become its newly reported set.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct InstalledChanges {
    /// Names no longer reported.
    pub gone: Vec<String>,
    /// (name, kind, version) reported new or changed; their `since` restarts.
    pub upsert: Vec<(String, String, String)>,
}

/// Compares the stored rows (name, kind, version) with a report's installed
/// bundles. Entries that did not change are left out, so they keep their
/// `since`; a name reported twice counts once, first entry first.
pub(crate) fn installed_changes(
    stored: &[(String, String, String)],
    reported: &[drover_proto::InstalledBundle],
) -> InstalledChanges {
    let mut wanted: std::collections::BTreeMap<&str, (String, String)> =
        std::collections::BTreeMap::new();
    for b in reported {
        wanted
            .entry(b.name.as_str())
            .or_insert_with(|| (b.kind.as_str().to_string(), b.version.to_string()));
    }
    let mut changes = InstalledChanges::default();
    for (name, kind, version) in stored {
        match wanted.get(name.as_str()) {
            Some((k, v)) if k == kind && v == version => {
                wanted.remove(name.as_str());
            }
            Some(_) => {}
            None => changes.gone.push(name.clone()),
        }
    }
    changes.upsert = wanted
        .into_iter()
        .map(|(name, (kind, version))| (name.to_string(), kind, version))
        .collect();
    changes
}

/// `$1, $2, …, $n`.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The installed-version filter: `NAME:VERSION`, or `NAME` (also `NAME:`)
/// for NAME at any version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionFilter {
    /// Bundle name.
    pub name: String,
    /// Exact version; `None` for any.
    pub version: Option<String>,
}

impl VersionFilter {
    /// Parses `NAME:VERSION`, `NAME:` or `NAME`, naming `field` when wrong.
    pub fn parse(field: &str, s: &str) -> Result<VersionFilter> {
        const USE: &str = "use NAME:VERSION (such as detector:1.2.0), or NAME for any version";
        // A version has no colon, so the last one separates it from the name.
        let (name, version) = match s.rsplit_once(':') {
            Some((name, version)) => (name, Some(version)),
            None => (s, None),
        };
        let name = drover_proto::SafeName::parse(name)
            .map_err(|e| Error::invalid(field, format!("{e}; {USE}")))?;
        let version = match version.filter(|v| !v.is_empty()) {
            Some(v) => Some(
                drover_proto::Version::parse(v)
                    .map_err(|e| Error::invalid(field, format!("{e}; {USE}")))?
                    .to_string(),
            ),
            None => None,
        };
        Ok(VersionFilter {
            name: name.as_str().to_string(),
            version,
        })
    }
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
    /// A bundle installed (at a version).
    pub version: Option<VersionFilter>,
}

/// The order of the device list; each breaks ties on the id, so paging is stable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    /// Name, A to Z.
    #[default]
    Name,
    /// Name, Z to A.
    NameDesc,
    /// Heard from longest ago first; never-seen devices first of all.
    LastSeen,
    /// Heard from most recently first; never-seen devices last.
    LastSeenDesc,
    /// Device type.
    Type,
    /// Status name.
    Status,
    /// Enrolled earliest first.
    Created,
    /// Enrolled latest first.
    CreatedDesc,
}

impl Sort {
    /// Every order, for the dashboard's choice.
    pub const ALL: [Sort; 8] = [
        Sort::Name,
        Sort::NameDesc,
        Sort::LastSeen,
        Sort::LastSeenDesc,
        Sort::Type,
        Sort::Status,
        Sort::Created,
        Sort::CreatedDesc,
    ];

    /// The query parameter's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::NameDesc => "-name",
            Sort::LastSeen => "last_seen",
            Sort::LastSeenDesc => "-last_seen",
            Sort::Type => "type",
            Sort::Status => "status",
            Sort::Created => "created",
            Sort::CreatedDesc => "-created",
        }
    }

    /// How an operator reads it.
    pub fn label(self) -> &'static str {
        match self {
            Sort::Name => "Name, A to Z",
            Sort::NameDesc => "Name, Z to A",
            Sort::LastSeen => "Last seen, longest ago first",
            Sort::LastSeenDesc => "Last seen, most recent first",
            Sort::Type => "Type",
            Sort::Status => "Status",
            Sort::Created => "Enrolled, oldest first",
            Sort::CreatedDesc => "Enrolled, newest first",
        }
    }

    /// Parses the query parameter, naming `field` when wrong.
    pub fn parse(field: &str, s: &str) -> Result<Sort> {
        Sort::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    field,
                    format!(
                        "{s:?} is not an order; use name, -name, last_seen, -last_seen, type, status, created or -created"
                    ),
                )
            })
    }

    /// The ORDER BY, which the index of [`Sort::index_hint`] serves as it stands
    /// (PostgreSQL's `devices_last_seen` is built NULLS FIRST to match).
    fn order_by(self) -> &'static str {
        match self {
            Sort::Name => "d.name, d.id",
            Sort::NameDesc => "d.name DESC, d.id DESC",
            Sort::LastSeen => "d.last_seen_at ASC NULLS FIRST, d.id",
            Sort::LastSeenDesc => "d.last_seen_at DESC NULLS LAST, d.id DESC",
            Sort::Type => "d.device_type, d.id",
            Sort::Status => "d.status, d.id",
            Sort::Created => "d.created_at, d.id",
            Sort::CreatedDesc => "d.created_at DESC, d.id DESC",
        }
    }

    /// SQLite's instruction to read the devices through the index that holds them in this order.
    fn index_hint(self) -> &'static str {
        match self {
            Sort::Name | Sort::NameDesc => "INDEXED BY devices_name",
            Sort::LastSeen | Sort::LastSeenDesc => "INDEXED BY devices_last_seen",
            Sort::Type => "INDEXED BY devices_type",
            Sort::Status => "INDEXED BY devices_status",
            Sort::Created | Sort::CreatedDesc => "INDEXED BY devices_created",
        }
    }
}

/// How a condition on another table (tags, installed versions) finds its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// `d.id IN (…)`: the other table's `(key, value, device_id)` or
    /// `(name, version, device_id)` index lists the matching devices once,
    /// for counting and for sorting the matches.
    List,
    /// `EXISTS (…)`: each device visited is looked up by its primary key,
    /// for walking a sort's index, where listing every match first would
    /// cost as much as the whole fleet for a filter most devices pass.
    Probe,
}

impl Lookup {
    /// The condition that `table` (aliased `alias`) has a row of `d` matching `matches`.
    fn condition(self, table: &str, alias: &str, matches: &str) -> String {
        match self {
            Lookup::List => {
                format!("d.id IN (SELECT {alias}.device_id FROM {table} WHERE {matches})")
            }
            Lookup::Probe => format!(
                "EXISTS (SELECT 1 FROM {table} WHERE {alias}.device_id = d.id AND {matches})"
            ),
        }
    }
}

/// A WHERE clause with `$n` placeholders and the values bound to them, in order.
#[derive(Debug, PartialEq, Eq)]
struct Where {
    sql: String,
    /// Counts the devices matching `sql`.
    count: String,
    args: Vec<String>,
}

impl Where {
    /// Only the filters given become conditions: a `($1 IS NULL OR …)` form
    /// would keep the database from using an index for any of them. Tags and
    /// versions are matched as `lookup` says.
    /// `sqlite`: SQLite's LIKE already ignores ASCII case, and LOWER() on three
    /// columns of every row triples the cost of a search.
    fn of(filter: &Filter, lookup: Lookup, sqlite: bool, trigrams: bool) -> Where {
        let mut args: Vec<String> = Vec::new();
        let mut arg = |v: &str| {
            args.push(v.to_string());
            format!("${}", args.len())
        };
        let mut conditions: Vec<String> = Vec::new();
        // (table, condition) of the tag and version filters.
        let mut lookups: Vec<(&str, String)> = Vec::new();
        if let Some(s) = filter.status {
            conditions.push(format!("d.status = {}", arg(s.as_str())));
        }
        if let Some(t) = &filter.device_type {
            conditions.push(format!("d.device_type = {}", arg(t)));
        }
        if let Some((k, v)) = &filter.tag {
            let matches = format!("t.key = {} AND t.value = {}", arg(k), arg(v));
            conditions.push(lookup.condition("device_tags t", "t", &matches));
            lookups.push(("device_tags t", matches));
        }
        if let Some(q) = filter.q.as_ref().filter(|_| sqlite && trigrams) {
            // SQLite: the trigram index (migration 0019) finds the text without reading
            // every device (`search_by_trigrams` said it is selective enough).
            let phrase = arg(&format!("\"{}\"", q.replace('"', "\"\"")));
            conditions.push(format!(
                "d.id IN (SELECT id FROM devices_search WHERE devices_search MATCH {phrase})"
            ));
        } else if let Some(q) = &filter.q {
            let p = arg(&format!("%{}%", like_escape(&q.to_lowercase())));
            let col = |c: &str| {
                if sqlite {
                    format!("d.{c}")
                } else {
                    format!("LOWER(d.{c})")
                }
            };
            conditions.push(format!(
                "({} LIKE {p} ESCAPE '\\' OR {} LIKE {p} ESCAPE '\\' OR {} LIKE {p} ESCAPE '\\')",
                col("id"),
                col("name"),
                col("hostname")
            ));
        }
        match filter.presence {
            Some(Presence::Online) => conditions.push("d.online = TRUE".into()),
            Some(Presence::Offline) => {
                conditions.push("d.online = FALSE AND d.last_seen_at IS NOT NULL".into())
            }
            Some(Presence::Never) => {
                conditions.push("d.online = FALSE AND d.last_seen_at IS NULL".into())
            }
            None => {}
        }
        if let Some(v) = &filter.version {
            let name = arg(&v.name);
            let at = match &v.version {
                Some(version) => format!(" AND v.version = {}", arg(version)),
                None => String::new(),
            };
            let matches = format!("v.name = {name}{at}");
            conditions.push(lookup.condition("device_versions v", "v", &matches));
            lookups.push(("device_versions v", matches));
        }
        let sql = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        // A tag or version alone is counted in its own table's index: one row
        // per device there (the primary key), and each row's device exists (the
        // foreign key). Joining 95,000 listed ids back to devices costs ~60 ms.
        let count = match (conditions.len(), lookups.as_slice()) {
            (1, [(table, matches)]) => format!("SELECT COUNT(*) FROM {table} WHERE {matches}"),
            _ => format!("SELECT COUNT(*) FROM devices d {sql}"),
        };
        Where { sql, count, args }
    }

    fn is_empty(&self) -> bool {
        self.sql.is_empty()
    }
}

/// Escapes LIKE's wildcards, so a search for `cam_1` finds exactly that text.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether to read a filtered page by walking the sort's index and checking
/// each device against the filters, rather than collecting every match and
/// sorting it. Walking is cheap while matches are dense enough that reaching
/// the page visits few rows; sorting is cheap while matches are few. Without
/// table statistics SQLite always guesses an indexed filter is selective and
/// sorts, which costs a sort of most of the fleet for `status=accepted`.
fn walk_sort_index(fleet: i64, matching: i64, page: Page) -> bool {
    if matching <= 0 {
        return false;
    }
    // Rows visited to reach the end of the page if matches are spread evenly,
    // against the rows a sort must take in; a sorted row costs about twice a
    // visited one (measured at 100,000 devices).
    // Matches are not spread evenly when names follow the filter (a type or a
    // site in every name), so only a filter matching most of the fleet walks.
    let visited = (page.offset() + page.limit()).saturating_mul(fleet) / matching;
    matching.saturating_mul(2) >= fleet && visited <= matching.saturating_mul(2)
}

/// Whether one index holds exactly the filter's devices in the sort's order (migration 0018:
/// a type, by name), so SQLite reads the page off it with no hint.
fn ordered_by_index(filter: &Filter, sort: Sort) -> bool {
    matches!(sort, Sort::Name | Sort::NameDesc)
        && filter.device_type.is_some()
        && filter.status.is_none()
        && filter.tag.is_none()
        && filter.q.is_none()
        && filter.presence.is_none()
        && filter.version.is_none()
}

/// Whether SQLite should find a search's text through the trigram index rather than by
/// reading every device: when the text has a trigram no device holds (nothing matches), or
/// its rarest trigram is held by at most an eighth of the fleet. Text shorter than a trigram
/// is always read for. A broad text costs the index more than a scan (at 100,000 devices,
/// "camera" in 45,000 names: 250 ms through the index, 26 ms scanning; "lisbon-500": 2 ms
/// against 26 ms).
async fn search_by_trigrams(pool: &sqlx::SqlitePool, q: &str) -> Result<bool> {
    let chars: Vec<char> = q.to_lowercase().chars().collect();
    let mut grams: Vec<String> = chars.windows(3).map(|w| w.iter().collect()).collect();
    grams.sort();
    grams.dedup();
    if grams.is_empty() {
        return Ok(false);
    }
    let marks = (1..=grams.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT doc FROM devices_search_terms WHERE term IN ({marks})");
    let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
    for g in &grams {
        query = query.bind(g);
    }
    let held = query.fetch_all(pool).await?;
    if held.len() < grams.len() {
        return Ok(true);
    }
    let fleet: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices")
        .fetch_one(pool)
        .await?;
    Ok(held
        .iter()
        .min()
        .is_some_and(|rarest| rarest.saturating_mul(8) <= fleet))
}

/// One page of devices in the chosen order, with the total matching.
pub async fn list(
    store: &Store,
    filter: &Filter,
    sort: Sort,
    page: Page,
) -> Result<(Vec<Device>, i64)> {
    let sqlite = matches!(store, Store::Sqlite(_));
    let trigrams = match (&filter.q, store) {
        (Some(q), Store::Sqlite(pool)) => search_by_trigrams(pool, q).await?,
        _ => false,
    };
    let mut filters = Where::of(filter, Lookup::List, sqlite, trigrams);
    let total: i64 = on_store!(store, pool => {
        let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(filters.count.clone()));
        for a in &filters.args {
            q = q.bind(a.as_str());
        }
        q.fetch_one(pool).await
    })?;
    if page.offset() >= total {
        return Ok((Vec::new(), total));
    }
    // PostgreSQL keeps statistics and picks between the two plans itself;
    // SQLite has none and is told. A `+` before the first ORDER BY term keeps
    // it from walking the sort's index, which for a filter no index serves
    // (`q`) walks the whole fleet to fill a last page.
    let mut hint = "";
    let mut order_by = sort.order_by().to_string();
    if matches!(store, Store::Sqlite(_)) && !filters.is_empty() && !ordered_by_index(filter, sort) {
        let fleet: i64 = on_store!(store, pool => sqlx::query_scalar("SELECT COUNT(*) FROM devices")
            .fetch_one(pool).await)?;
        if walk_sort_index(fleet, total, page) {
            hint = sort.index_hint();
            filters = Where::of(filter, Lookup::Probe, sqlite, trigrams);
        } else {
            order_by = format!("+{order_by}");
        }
    }
    let columns = DEVICE_COLUMNS
        .split(", ")
        .map(|c| format!("d.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let items_sql = if order_by.starts_with('+') {
        // Sorting every match: sort only their ids and sort keys, then read the page's
        // rows (a tag's 12,000 devices at 100,000: 38 ms sorting whole rows, under 20 ms
        // this way); by name, migration 0018's (id, name) index holds both.
        // Only ids looked up elsewhere (tags, versions, the trigram index) and a name order:
        // the (id, name) index answers without reading a row.
        let by_id_and_name = matches!(sort, Sort::Name | Sort::NameDesc)
            && filter.status.is_none()
            && filter.device_type.is_none()
            && filter.presence.is_none()
            && (filter.q.is_none() || trigrams);
        let inner_hint = if by_id_and_name {
            "INDEXED BY devices_id_name"
        } else {
            ""
        };
        format!(
            "SELECT {columns} FROM devices d WHERE d.id IN (
               SELECT d.id FROM devices d {inner_hint} {} ORDER BY {order_by} LIMIT {} OFFSET {})
             ORDER BY {}",
            filters.sql,
            page.limit(),
            page.offset(),
            sort.order_by()
        )
    } else {
        format!(
            "SELECT {columns} FROM devices d {hint} {} ORDER BY {order_by} LIMIT {} OFFSET {}",
            filters.sql,
            page.limit(),
            page.offset()
        )
    };
    let items = on_store!(store, pool => {
        let mut q = sqlx::query_as::<_, Device>(sqlx::AssertSqlSafe(items_sql));
        for a in &filters.args {
            q = q.bind(a.as_str());
        }
        q.fetch_all(pool).await
    })?;
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
        // What it runs stops counting in the fleet's versions (its last health report keeps it).
        sqlx::query("DELETE FROM device_versions WHERE device_id = $1").bind(id).execute(&mut *tx).await?;
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
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {CERT_COLUMNS} FROM device_certificates WHERE device_id IN ({}) ORDER BY not_after",
        placeholders(ids.len())
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

/// SQL conditions that device `d` is of `device_type` (when given) and carries every tag in
/// `tags`. Their values are appended to `binds` and numbered after `offset` parameters that
/// come before `binds`' first. Rollout targets and alert-rule scopes filter devices this way.
pub fn type_and_tags_conditions(
    device_type: Option<&str>,
    tags: &std::collections::BTreeMap<String, String>,
    binds: &mut Vec<String>,
    offset: usize,
) -> Vec<String> {
    let mut conditions = Vec::new();
    if let Some(t) = device_type {
        binds.push(t.to_owned());
        conditions.push(format!("d.device_type = ${}", offset + binds.len()));
    }
    for (k, v) in tags {
        binds.push(k.clone());
        binds.push(v.clone());
        conditions.push(format!(
            "EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.key = ${} AND t.value = ${})",
            offset + binds.len() - 1,
            offset + binds.len()
        ));
    }
    conditions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_and_tags_conditions_number_their_values_after_the_offset() {
        let tags: std::collections::BTreeMap<String, String> = [
            ("line".to_string(), "3".to_string()),
            ("site".to_string(), "b".to_string()),
        ]
        .into();
        let mut binds = vec!["earlier".to_string()];
        let c = type_and_tags_conditions(Some("rpi4"), &tags, &mut binds, 2);
        assert_eq!(
            c,
            [
                "d.device_type = $4",
                "EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.key = $5 AND t.value = $6)",
                "EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.key = $7 AND t.value = $8)",
            ]
        );
        assert_eq!(binds, ["earlier", "rpi4", "line", "3", "site", "b"]);
        let mut none = Vec::new();
        assert!(type_and_tags_conditions(None, &Default::default(), &mut none, 0).is_empty());
    }

    fn bundle(name: &str, kind: &str, version: &str) -> drover_proto::InstalledBundle {
        serde_json::from_value(serde_json::json!({"name": name, "kind": kind, "version": version}))
            .expect("bundle")
    }

    fn row(name: &str, kind: &str, version: &str) -> (String, String, String) {
        (name.into(), kind.into(), version.into())
    }

    #[test]
    fn version_filters_take_a_name_and_maybe_a_version() {
        let f = VersionFilter::parse("version", "detector:1.2.0").expect("valid");
        assert_eq!(
            (f.name.as_str(), f.version.as_deref()),
            ("detector", Some("1.2.0"))
        );
        for any in ["detector", "detector:"] {
            let f = VersionFilter::parse("version", any).expect("valid");
            assert_eq!((f.name.as_str(), f.version), ("detector", None), "{any}");
        }
        for bad in [":1.2.0", "detector:1.2", "detector:v1.2.0", "a/b:1.0.0"] {
            let e = VersionFilter::parse("version", bad)
                .expect_err(bad)
                .to_string();
            assert!(e.starts_with("version:"), "{bad}: {e}");
        }
    }

    #[test]
    fn sorts_round_trip_and_unknown_ones_name_the_field() {
        for s in Sort::ALL {
            assert_eq!(Sort::parse("sort", s.as_str()).expect("known"), s);
            assert!(s.order_by().ends_with("d.id") || s.order_by().ends_with("d.id DESC"));
        }
        assert_eq!(Sort::default(), Sort::Name);
        let e = Sort::parse("sort", "size")
            .expect_err("unknown")
            .to_string();
        assert!(e.starts_with("sort:") && e.contains("-last_seen"), "{e}");
    }

    #[test]
    fn an_unchanged_installed_set_writes_nothing() {
        let stored = [
            row("app", "application", "3.0.1"),
            row("detector", "model", "1.2.0"),
        ];
        let reported = [
            bundle("detector", "model", "1.2.0"),
            bundle("app", "application", "3.0.1"),
        ];
        assert_eq!(
            installed_changes(&stored, &reported),
            InstalledChanges::default()
        );
    }

    #[test]
    fn a_changed_installed_set_rewrites_only_what_differs() {
        let stored = [
            row("app", "application", "3.0.1"),
            row("detector", "model", "1.2.0"),
            row("old", "config", "1.0.0"),
        ];
        let reported = [
            bundle("detector", "model", "1.3.0"),
            bundle("app", "application", "3.0.1"),
            bundle("firmware", "firmware", "2.0.0"),
            bundle("firmware", "firmware", "9.9.9"),
        ];
        let changes = installed_changes(&stored, &reported);
        assert_eq!(changes.gone, vec!["old".to_string()]);
        assert_eq!(
            changes.upsert,
            vec![
                row("detector", "model", "1.3.0"),
                row("firmware", "firmware", "2.0.0")
            ],
            "the first entry of a name reported twice wins; app keeps its row"
        );
    }

    #[test]
    fn only_the_given_filters_become_conditions() {
        let none = Where::of(&Filter::default(), Lookup::List, false, false);
        assert!(none.is_empty() && none.args.is_empty());
        assert_eq!(none.count.trim(), "SELECT COUNT(*) FROM devices d");
        let filter = Filter {
            status: Some(Status::Accepted),
            version: Some(VersionFilter {
                name: "detector".into(),
                version: None,
            }),
            q: Some("Cam_1%".into()),
            ..Filter::default()
        };
        let w = Where::of(&filter, Lookup::List, false, false);
        assert_eq!(
            w.sql,
            "WHERE d.status = $1 AND (LOWER(d.id) LIKE $2 ESCAPE '\\' OR LOWER(d.name) LIKE $2 ESCAPE '\\' OR LOWER(d.hostname) LIKE $2 ESCAPE '\\') \
             AND d.id IN (SELECT v.device_id FROM device_versions v WHERE v.name = $3)"
        );
        assert_eq!(w.args, ["accepted", "%cam\\_1\\%%", "detector"]);
        assert_eq!(w.count, format!("SELECT COUNT(*) FROM devices d {}", w.sql));
        let probed = Where::of(&filter, Lookup::Probe, false, false);
        assert!(
            probed.sql.ends_with(
                "EXISTS (SELECT 1 FROM device_versions v WHERE v.device_id = d.id AND v.name = $3)"
            ),
            "{}",
            probed.sql
        );
        assert_eq!(probed.args, w.args, "the same values in the same order");
        let alone = Where::of(
            &Filter {
                tag: Some(("site".into(), "berlin".into())),
                ..Filter::default()
            },
            Lookup::List,
            true,
            false,
        );
        assert_eq!(
            alone.count,
            "SELECT COUNT(*) FROM device_tags t WHERE t.key = $1 AND t.value = $2"
        );
    }

    #[test]
    fn dense_matches_walk_the_index_and_sparse_ones_sort() {
        let first = Page::default();
        let deep = Page::parse(Some("1000"), None).expect("page");
        assert!(walk_sort_index(100_000, 95_000, first));
        assert!(walk_sort_index(100_000, 95_000, deep));
        // A quarter of the fleet sorts: its names may cluster (a type in every name).
        assert!(!walk_sort_index(100_000, 25_000, first));
        assert!(!walk_sort_index(100_000, 5_000, first));
        assert!(!walk_sort_index(
            100_000,
            5_000,
            Page::parse(Some("100"), None).expect("page")
        ));
        assert!(!walk_sort_index(100_000, 40, first));
        assert!(!walk_sort_index(100_000, 0, first));
    }
}
