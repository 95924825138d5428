//! Staged rollouts: a bundle offered to a target of devices in phases, halted when a phase's
//! failures pass the threshold, rolled back on order or automatically. This module holds the
//! stored shape, creation (validation, preview, conflicts, the target snapshot), the views and
//! the operator's controls; [`plan`] decides, [`engine`] drives.

pub mod engine;
pub mod gates;
pub mod plan;
pub mod window;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::bundles::{self, Bundle};
use crate::error::{Error, Result};
use crate::on_store;
use crate::paging::Page;
use crate::store::{Store, now_ms};
use crate::timefmt::rfc3339;
pub use plan::PhaseSpec;
pub use window::MaintenanceWindow;

/// Rollout states that still act on devices (and hold them: one active rollout per device).
pub const ACTIVE_STATES: &str = "('scheduled','running','paused','halted','rolling_back')";
/// Most phases a rollout may have.
const MAX_PHASES: usize = 20;
/// Most explicit device ids in a target.
const MAX_DEVICE_IDS: usize = 10_000;
/// Pending devices offline this long after their phase started are skipped, unless the
/// rollout says otherwise.
pub const DEFAULT_OFFLINE_TIMEOUT_S: u64 = 24 * 3600;
/// Offers out at once, unless the rollout says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 100;
/// Rows per multi-row INSERT when the snapshot is written.
const INSERT_CHUNK: usize = 400;

/// Which devices a rollout is for: all of the given conditions hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Target {
    /// Only devices of this type.
    #[serde(default)]
    pub device_type: Option<String>,
    /// Only devices carrying every one of these tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Only these devices.
    #[serde(default)]
    pub device_ids: Vec<String>,
}

/// `POST /rollouts`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRollout {
    /// A name for people (1 to 128 characters).
    pub name: String,
    /// The bundle to install.
    pub bundle_id: String,
    /// Which devices.
    pub target: Target,
    /// Cumulative phases, e.g. `[{percent:10,soak_seconds:600},{percent:100}]`.
    pub phases: Vec<PhaseSpec>,
    /// A phase halts when failed + reverted exceed this percent of its attempted devices
    /// (default 0: any failure halts).
    #[serde(default)]
    pub failure_threshold_pct: f64,
    /// Most offers out at once (default 100).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Order a rollback on every device that succeeded when the rollout halts.
    #[serde(default)]
    pub auto_rollback: bool,
    /// When offers may go out.
    #[serde(default)]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// Seconds a device may stay offline in its phase before it is skipped (default a day).
    #[serde(default)]
    pub offline_timeout_seconds: Option<u64>,
    /// When to start (RFC 3339); now when absent.
    #[serde(default)]
    pub start_at: Option<String>,
    /// Metric gates judged at the end of each phase's soak (see `gates`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<gates::Gate>>)]
    pub gates: Option<serde_json::Value>,
}

/// A rollout's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for its start time.
    Scheduled,
    /// Offering.
    Running,
    /// Stopped by an operator; resumable.
    Paused,
    /// Stopped by its failure threshold.
    Halted,
    /// Ordering and tracking rollbacks.
    RollingBack,
    /// Every device it updated was rolled back.
    RolledBack,
    /// Every phase finished.
    Completed,
    /// Stopped for good by an operator.
    Aborted,
}

impl State {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Running => "running",
            State::Paused => "paused",
            State::Halted => "halted",
            State::RollingBack => "rolling_back",
            State::RolledBack => "rolled_back",
            State::Completed => "completed",
            State::Aborted => "aborted",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "scheduled" => State::Scheduled,
            "running" => State::Running,
            "paused" => State::Paused,
            "halted" => State::Halted,
            "rolling_back" => State::RollingBack,
            "rolled_back" => State::RolledBack,
            "completed" => State::Completed,
            "aborted" => State::Aborted,
            _ => return None,
        })
    }

    /// Whether the rollout is over.
    pub fn is_finished(self) -> bool {
        matches!(self, State::RolledBack | State::Completed | State::Aborted)
    }
}

/// A stored rollout.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Rollout {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Bundle.
    pub bundle_id: String,
    /// The bundle's name.
    pub bundle_name: String,
    /// The bundle's version.
    pub bundle_version: String,
    /// Target, JSON.
    pub target: String,
    /// Phases, JSON.
    pub phases: String,
    /// Threshold, percent.
    pub failure_threshold_pct: f64,
    /// Offers out at once.
    pub max_in_flight: i64,
    /// Roll back on halt.
    pub auto_rollback: bool,
    /// Window, JSON.
    pub maintenance_window: Option<String>,
    /// Offline timeout, seconds.
    pub offline_timeout_s: i64,
    /// Scheduled start (ms).
    pub start_at: Option<i64>,
    /// State name.
    pub state: String,
    /// Current phase (0-based).
    pub phase: i64,
    /// When the current phase started (ms).
    pub phase_started_at: Option<i64>,
    /// When the current phase's soak ends (ms).
    pub soak_until: Option<i64>,
    /// Why it halted, paused, or ended as it did.
    pub reason: String,
    /// Who created it.
    pub created_by: String,
    /// When (ms).
    pub created_at: i64,
    /// Last change (ms).
    pub updated_at: i64,
    /// When it finished (ms).
    pub finished_at: Option<i64>,
    /// Metric gates, JSON (absent: none).
    pub gates: Option<String>,
    /// Times the current phase was held for too few samples.
    pub gate_holds: i64,
}

const COLUMNS: &str = "id, name, bundle_id, bundle_name, bundle_version, target, phases, failure_threshold_pct, max_in_flight, auto_rollback, maintenance_window, offline_timeout_s, start_at, state, phase, phase_started_at, soak_until, reason, created_by, created_at, updated_at, finished_at, gates, gate_holds";

impl Rollout {
    /// The parsed gates (none when absent).
    pub fn gate_list(&self) -> Result<Vec<gates::Gate>> {
        self.gates.as_deref().map_or(Ok(Vec::new()), |g| {
            serde_json::from_str(g)
                .map_err(|e| Error::Internal(format!("rollout {}: stored gates: {e}", self.id)))
        })
    }

    /// The parsed state.
    pub fn state(&self) -> Result<State> {
        State::parse(&self.state).ok_or_else(|| {
            Error::Internal(format!("rollout {}: stored state {}", self.id, self.state))
        })
    }

    /// The parsed phases.
    pub fn phase_specs(&self) -> Result<Vec<PhaseSpec>> {
        serde_json::from_str(&self.phases)
            .map_err(|e| Error::Internal(format!("rollout {}: stored phases: {e}", self.id)))
    }

    /// The parsed target.
    pub fn target(&self) -> Result<Target> {
        serde_json::from_str(&self.target)
            .map_err(|e| Error::Internal(format!("rollout {}: stored target: {e}", self.id)))
    }

    /// The parsed maintenance window.
    pub fn window(&self) -> Result<Option<MaintenanceWindow>> {
        self.maintenance_window
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| Error::Internal(format!("rollout {}: stored window: {e}", self.id)))
    }
}

/// Checks a new rollout; every message names its field.
fn validate(new: &NewRollout) -> Result<()> {
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(Error::invalid("name", "use 1 to 128 printable characters"));
    }
    if new.phases.is_empty() || new.phases.len() > MAX_PHASES {
        return Err(Error::invalid(
            "phases",
            format!("give 1 to {MAX_PHASES} phases, e.g. [{{\"percent\":10}},{{\"percent\":100}}]"),
        ));
    }
    let mut before = 0.0;
    for (i, p) in new.phases.iter().enumerate() {
        if !p.percent.is_finite() || p.percent <= before || p.percent > 100.0 {
            return Err(Error::invalid(
                format!("phases[{i}].percent"),
                format!(
                    "must be more than the phase before ({before}) and at most 100: phases are cumulative"
                ),
            ));
        }
        if p.soak_seconds > 30 * 86_400 {
            return Err(Error::invalid(
                format!("phases[{i}].soak_seconds"),
                "must be at most 2592000 (30 days)",
            ));
        }
        before = p.percent;
    }
    if before != 100.0 {
        return Err(Error::invalid(
            format!("phases[{}].percent", new.phases.len() - 1),
            "the last phase must reach 100 (percent of the target)",
        ));
    }
    if !new.failure_threshold_pct.is_finite() || !(0.0..=100.0).contains(&new.failure_threshold_pct)
    {
        return Err(Error::invalid(
            "failure_threshold_pct",
            "must be from 0 to 100",
        ));
    }
    if let Some(n) = new.max_in_flight
        && !(1..=1_000_000).contains(&n)
    {
        return Err(Error::invalid("max_in_flight", "must be from 1 to 1000000"));
    }
    if let Some(s) = new.offline_timeout_seconds
        && !(60..=30 * 86_400).contains(&s)
    {
        return Err(Error::invalid(
            "offline_timeout_seconds",
            "must be from 60 to 2592000 (30 days)",
        ));
    }
    let t = &new.target;
    if t.device_type.as_deref().is_none_or(|d| d.trim().is_empty())
        && t.tags.is_empty()
        && t.device_ids.is_empty()
    {
        return Err(Error::invalid(
            "target",
            "give a device_type, tags or device_ids (an empty target would be the whole fleet)",
        ));
    }
    if t.device_ids.len() > MAX_DEVICE_IDS {
        return Err(Error::invalid(
            "target.device_ids",
            format!("at most {MAX_DEVICE_IDS} ids; target larger groups by type or tags"),
        ));
    }
    if let Some(w) = &new.maintenance_window {
        w.validate()?;
    }
    Ok(())
}

/// The accepted devices matching `target`.
pub async fn matching_devices(store: &Store, target: &Target) -> Result<Vec<String>> {
    let mut sql = String::from("SELECT d.id FROM devices d WHERE d.status = 'accepted'");
    let mut binds: Vec<String> = Vec::new();
    let device_type = target
        .device_type
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    for c in
        crate::identity::devices::type_and_tags_conditions(device_type, &target.tags, &mut binds, 0)
    {
        sql.push_str(" AND ");
        sql.push_str(&c);
    }
    if !target.device_ids.is_empty() {
        let start = binds.len();
        binds.extend(target.device_ids.iter().cloned());
        let list = (start + 1..=binds.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        sql.push_str(&format!(" AND d.id IN ({list})"));
    }
    sql.push_str(" ORDER BY d.id");
    let sql = sqlx::AssertSqlSafe(sql);
    let ids: Vec<String> = on_store!(store, pool => {
        let mut q = sqlx::query_scalar(sql);
        for b in &binds {
            q = q.bind(b);
        }
        q.fetch_all(pool).await
    })?;
    Ok(ids)
}

/// Devices of `ids` that another active rollout holds (not finished on them): id → rollout.
async fn held_elsewhere(
    store: &Store,
    ids: &HashSet<&str>,
    except: Option<&str>,
) -> Result<HashMap<String, (String, String)>> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT rd.device_id, r.id, r.name FROM rollout_devices rd
           JOIN rollouts r ON r.id = rd.rollout_id
           LEFT JOIN device_updates u ON u.device_id = rd.device_id AND u.rollout_id = rd.rollout_id
          WHERE r.state IN {ACTIVE_STATES} AND rd.state <> 'skipped'
            AND COALESCE(u.state, '') NOT IN ('succeeded','failed','reverted','rolled_back')"
    ));
    let rows: Vec<(String, String, String)> =
        on_store!(store, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
    Ok(rows
        .into_iter()
        .filter(|(d, r, _)| ids.contains(d.as_str()) && except != Some(r.as_str()))
        .map(|(d, r, n)| (d, (r, n)))
        .collect())
}

/// What each device has installed, from its newest health report: (name, version) pairs.
async fn installed_versions(store: &Store) -> Result<HashMap<String, Vec<(String, String)>>> {
    #[derive(Deserialize)]
    struct Installed {
        name: String,
        version: String,
    }
    #[derive(Deserialize)]
    struct Report {
        #[serde(default)]
        installed: Vec<Installed>,
    }
    let rows: Vec<(String, String)> = on_store!(store, pool => sqlx::query_as(
        "SELECT device_id, report FROM device_health").fetch_all(pool).await)?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, report)| {
            let r: Report = serde_json::from_str(&report).ok()?;
            Some((
                id,
                r.installed
                    .into_iter()
                    .map(|i| (i.name, i.version))
                    .collect(),
            ))
        })
        .collect())
}

/// How a target resolves now.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Preview {
    /// Accepted devices matching the target.
    pub matching: usize,
    /// Of them, already on the bundle's version (skipped).
    pub already_on_version: usize,
    /// Of them, of a device type the bundle is not for (skipped).
    pub wrong_device_type: usize,
    /// Of them, held by another active rollout (creating the rollout is refused).
    pub in_other_rollouts: usize,
    /// Devices per phase when it starts now (cumulative percentages of `matching`).
    pub phase_sizes: Vec<usize>,
}

/// The snapshot rows of a target: (device id, phase, state, detail) in snapshot order.
struct Snapshot {
    rows: Vec<(String, usize, &'static str, String)>,
    preview: Preview,
    conflicts: Vec<(String, (String, String))>,
}

async fn resolve(
    store: &Store,
    rollout_id: &str,
    bundle: &Bundle,
    target: &Target,
    phases: &[PhaseSpec],
) -> Result<Snapshot> {
    let ids = matching_devices(store, target).await?;
    let set: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let held = held_elsewhere(store, &set, Some(rollout_id)).await?;
    let installed = installed_versions(store).await?;
    let types: HashMap<String, String> = {
        let rows: Vec<(String, String)> = on_store!(store, pool => sqlx::query_as(
            "SELECT id, device_type FROM devices WHERE status = 'accepted'").fetch_all(pool).await)?;
        rows.into_iter()
            .filter(|(id, _)| set.contains(id.as_str()))
            .collect()
    };
    let bundle_types = bundle.device_types();
    let ordered = plan::snapshot_order(rollout_id, ids);
    let ends = plan::phase_ends(ordered.len(), phases);
    let mut preview = Preview {
        matching: ordered.len(),
        phase_sizes: ends
            .iter()
            .scan(0, |prev, end| {
                let size = end - *prev;
                *prev = *end;
                Some(size)
            })
            .collect(),
        ..Preview::default()
    };
    let mut conflicts = Vec::new();
    let mut rows = Vec::with_capacity(ordered.len());
    for (position, id) in ordered.into_iter().enumerate() {
        let phase = plan::phase_of(position, &ends);
        let on_version = installed.get(&id).is_some_and(|list| {
            list.iter()
                .any(|(n, v)| *n == bundle.name && *v == bundle.version)
        });
        let device_type = types.get(&id).cloned().unwrap_or_default();
        let (state, detail) = if let Some((rid, rname)) = held.get(&id) {
            preview.in_other_rollouts += 1;
            conflicts.push((id.clone(), (rid.clone(), rname.clone())));
            ("skipped", format!("held by rollout {rid} ({rname})"))
        } else if on_version {
            preview.already_on_version += 1;
            (
                "skipped",
                format!("already runs {} {}", bundle.name, bundle.version),
            )
        } else if !bundle_types.contains(&device_type) {
            preview.wrong_device_type += 1;
            (
                "skipped",
                format!(
                    "device type {device_type} is not one the bundle is for ({})",
                    bundle_types.join(", ")
                ),
            )
        } else {
            ("pending", String::new())
        };
        rows.push((id, phase, state, detail));
    }
    Ok(Snapshot {
        rows,
        preview,
        conflicts,
    })
}

/// `POST /rollouts/preview`: how a target resolves for a bundle now.
pub async fn preview(
    store: &Store,
    bundle_id: &str,
    target: &Target,
    phases: &[PhaseSpec],
) -> Result<Preview> {
    let bundle = known_bundle(store, bundle_id).await?;
    let phases = if phases.is_empty() {
        vec![PhaseSpec {
            percent: 100.0,
            soak_seconds: 0,
        }]
    } else {
        phases.to_vec()
    };
    Ok(resolve(store, "preview", &bundle, target, &phases)
        .await?
        .preview)
}

async fn known_bundle(store: &Store, bundle_id: &str) -> Result<Bundle> {
    match bundles::get(store, bundle_id).await {
        Ok(b) => Ok(b),
        Err(Error::NotFound(_)) => Err(Error::invalid(
            "bundle_id",
            format!("no bundle {bundle_id}"),
        )),
        Err(e) => Err(e),
    }
}

/// Creates a rollout: validated, its target resolved; refused (409) when a matching device is
/// held by another active rollout. It starts at once (snapshot taken) unless `start_at` is
/// later, when the engine takes the snapshot at that time.
pub async fn create(store: &Store, new: &NewRollout, created_by: &str) -> Result<Rollout> {
    validate(new)?;
    let gates = gates::parse(new.gates.as_ref(), &new.phases)?;
    let bundle = known_bundle(store, &new.bundle_id).await?;
    let now = now_ms();
    if bundle.expires_at <= now {
        return Err(Error::Unprocessable(format!(
            "bundle {} expired at {}; create a new one",
            bundle.id,
            rfc3339(bundle.expires_at)
        )));
    }
    if !new.target.device_ids.is_empty() {
        let found = matching_devices(
            store,
            &Target {
                device_ids: new.target.device_ids.clone(),
                ..Target::default()
            },
        )
        .await?;
        if let Some(missing) = new.target.device_ids.iter().find(|id| !found.contains(id)) {
            return Err(Error::invalid(
                "target.device_ids",
                format!("{missing} is not an accepted device"),
            ));
        }
    }
    let start_at = match new.start_at.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) => Some(crate::timefmt::parse_rfc3339("start_at", t)?),
    };
    let id = uuid::Uuid::now_v7().simple().to_string();
    let snapshot = resolve(store, &id, &bundle, &new.target, &new.phases).await?;
    if snapshot.preview.matching == 0 {
        return Err(Error::Unprocessable(
            "the target matches no accepted device".into(),
        ));
    }
    if let Some((device, (rid, rname))) = snapshot.conflicts.first() {
        return Err(Error::Conflict(format!(
            "device {device} is in rollout {rid} ({rname}), which is still active; wait for it to finish or abort it ({} matching devices are held by other rollouts)",
            snapshot.conflicts.len()
        )));
    }
    // A rollout that has not started holds no snapshot yet: its target, resolved now, does.
    let ours: HashSet<&str> = snapshot
        .rows
        .iter()
        .filter(|r| r.2 == "pending")
        .map(|r| r.0.as_str())
        .collect();
    for waiting in in_states(store, "('scheduled','paused')").await? {
        if waiting.phase_started_at.is_some() {
            continue;
        }
        let theirs = matching_devices(store, &waiting.target()?).await?;
        if let Some(device) = theirs.iter().find(|d| ours.contains(d.as_str())) {
            return Err(Error::Conflict(format!(
                "device {device} is in rollout {} ({}), which is scheduled; abort it or target other devices",
                waiting.id, waiting.name
            )));
        }
    }
    let start_now = start_at.is_none_or(|t| t <= now);
    let row = Rollout {
        id: id.clone(),
        name: new.name.trim().to_owned(),
        bundle_id: bundle.id.clone(),
        bundle_name: bundle.name.clone(),
        bundle_version: bundle.version.clone(),
        target: json(&new.target),
        phases: json(&new.phases),
        failure_threshold_pct: new.failure_threshold_pct,
        max_in_flight: i64::from(new.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT)),
        auto_rollback: new.auto_rollback,
        maintenance_window: new.maintenance_window.as_ref().map(json),
        offline_timeout_s: i64::try_from(
            new.offline_timeout_seconds
                .unwrap_or(DEFAULT_OFFLINE_TIMEOUT_S),
        )
        .unwrap_or(i64::MAX),
        start_at,
        state: if start_now { "running" } else { "scheduled" }.into(),
        phase: 0,
        phase_started_at: start_now.then_some(now),
        soak_until: None,
        reason: String::new(),
        created_by: created_by.to_owned(),
        created_at: now,
        updated_at: now,
        finished_at: None,
        gates: (!gates.is_empty()).then(|| json(&gates)),
        gate_holds: 0,
    };
    insert(store, &row, start_now.then_some(&snapshot.rows)).await?;
    let detail = if start_now {
        format!(
            "created and started: {} devices ({} skipped), phases of {:?}",
            snapshot.preview.matching,
            snapshot.rows.iter().filter(|r| r.2 == "skipped").count(),
            snapshot.preview.phase_sizes
        )
    } else {
        format!("created; starts at {}", rfc3339(start_at.unwrap_or(now)))
    };
    record_event(store, &id, "created", &detail).await?;
    get(store, &id).await
}

/// A stored setting as JSON (serde_json cannot fail on these plain types).
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

async fn insert(
    store: &Store,
    r: &Rollout,
    snapshot: Option<&Vec<(String, usize, &'static str, String)>>,
) -> Result<()> {
    let sql = format!(
        "INSERT INTO rollouts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
    );
    let sql = sqlx::AssertSqlSafe(sql);
    on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query(sql)
            .bind(&r.id).bind(&r.name).bind(&r.bundle_id).bind(&r.bundle_name).bind(&r.bundle_version)
            .bind(&r.target).bind(&r.phases).bind(r.failure_threshold_pct).bind(r.max_in_flight)
            .bind(r.auto_rollback).bind(&r.maintenance_window).bind(r.offline_timeout_s).bind(r.start_at)
            .bind(&r.state).bind(r.phase).bind(r.phase_started_at).bind(r.soak_until).bind(&r.reason)
            .bind(&r.created_by).bind(r.created_at).bind(r.updated_at).bind(r.finished_at)
            .bind(&r.gates).bind(r.gate_holds)
            .execute(&mut *tx).await?;
        if let Some(rows) = snapshot {
            insert_snapshot!(tx, &r.id, rows);
        }
        tx.commit().await
    })?;
    Ok(())
}

/// Writes snapshot rows in chunks inside the transaction `$tx`.
macro_rules! insert_snapshot {
    ($tx:ident, $rollout:expr, $rows:expr) => {{
        let now = $crate::store::now_ms();
        for (chunk_no, chunk) in $rows.chunks(INSERT_CHUNK).enumerate() {
            let values = (0..chunk.len())
                .map(|i| {
                    let b = i * 5;
                    format!("($1, ${}, ${}, ${}, ${}, ${}, $2)", b + 3, b + 4, b + 5, b + 6, b + 7)
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = sqlx::AssertSqlSafe(format!(
                "INSERT INTO rollout_devices (rollout_id, device_id, position, phase, state, detail, updated_at) VALUES {values}"
            ));
            let mut q = sqlx::query(sql).bind($rollout).bind(now);
            for (i, (device, phase, state, detail)) in chunk.iter().enumerate() {
                let position = i64::try_from(chunk_no * INSERT_CHUNK + i).unwrap_or(i64::MAX);
                q = q
                    .bind(device)
                    .bind(position)
                    .bind(i64::try_from(*phase).unwrap_or(0))
                    .bind(*state)
                    .bind(detail);
            }
            q.execute(&mut *$tx).await?;
        }
    }};
}
use insert_snapshot;

/// Takes the snapshot of a scheduled rollout whose time came (the engine calls this, fenced).
pub(crate) async fn start_scheduled(store: &Store, r: &Rollout, epoch: i64) -> Result<bool> {
    let bundle = match bundles::get(store, &r.bundle_id).await {
        Ok(b) => b,
        Err(Error::NotFound(_)) => {
            finish(
                store,
                r,
                State::Aborted,
                "its bundle was deleted before it started",
                epoch,
            )
            .await?;
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    let snapshot = resolve(store, &r.id, &bundle, &r.target()?, &r.phase_specs()?).await?;
    let now = now_ms();
    let started = on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        if !engine::fenced!(tx, epoch)? {
            return Ok(false);
        }
        let n = sqlx::query("UPDATE rollouts SET state = 'running', phase = 0, phase_started_at = $1, updated_at = $1 WHERE id = $2 AND state = 'scheduled'")
            .bind(now).bind(&r.id).execute(&mut *tx).await?.rows_affected();
        if n == 1 {
            let rows = &snapshot.rows;
            insert_snapshot!(tx, &r.id, rows);
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(n == 1)
    })?;
    if started {
        record_event(
            store,
            &r.id,
            "started",
            &format!(
                "{} devices ({} skipped), phases of {:?}",
                snapshot.preview.matching,
                snapshot.rows.iter().filter(|r| r.2 == "skipped").count(),
                snapshot.preview.phase_sizes
            ),
        )
        .await?;
    }
    Ok(started)
}

/// Ends a rollout in `state` (fenced when `epoch` is not 0).
pub(crate) async fn finish(
    store: &Store,
    r: &Rollout,
    state: State,
    reason: &str,
    epoch: i64,
) -> Result<bool> {
    let now = now_ms();
    let done = on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        if epoch != 0 && !engine::fenced!(tx, epoch)? {
            return Ok(false);
        }
        let n = sqlx::query("UPDATE rollouts SET state = $1, reason = $2, finished_at = $3, updated_at = $3 WHERE id = $4 AND state = $5")
            .bind(state.as_str()).bind(reason).bind(now).bind(&r.id).bind(&r.state)
            .execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok::<_, sqlx::Error>(n == 1)
    })?;
    if done {
        record_event(store, &r.id, state.as_str(), reason).await?;
    }
    Ok(done)
}

/// Appends a rollout event.
pub async fn record_event(store: &Store, rollout_id: &str, kind: &str, detail: &str) -> Result<()> {
    tracing::info!(rollout_id, kind, detail, "rollout");
    let at = now_ms();
    on_store!(store, pool => sqlx::query(
        "INSERT INTO rollout_events (rollout_id, at, kind, detail) VALUES ($1, $2, $3, $4)")
        .bind(rollout_id).bind(at).bind(kind).bind(detail)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    crate::webhooks::rollout_event(store, rollout_id, kind, detail, at).await;
    Ok(())
}

/// A rollout by id.
pub async fn get(store: &Store, id: &str) -> Result<Rollout> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM rollouts WHERE id = $1"));
    let row: Option<Rollout> =
        on_store!(store, pool => sqlx::query_as(sql).bind(id).fetch_optional(pool).await)?;
    row.ok_or_else(|| Error::NotFound(format!("no rollout {id}")))
}

/// Rollouts in `states` (the engine's work list).
pub(crate) async fn in_states(store: &Store, states: &str) -> Result<Vec<Rollout>> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM rollouts WHERE state IN {states} ORDER BY created_at"
    ));
    Ok(on_store!(store, pool => sqlx::query_as(sql).fetch_all(pool).await)?)
}

/// One page of rollouts, newest first.
pub async fn list(store: &Store, page: Page) -> Result<(Vec<Rollout>, i64)> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM rollouts ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
    ));
    let rows: Vec<Rollout> = on_store!(store, pool => sqlx::query_as(sql)
        .bind(page.limit()).bind(page.offset()).fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar("SELECT COUNT(*) FROM rollouts")
        .fetch_one(pool).await)?;
    Ok((rows, total))
}

/// A device's effective state in each rollout row: its last report, else the row's own.
const EFFECTIVE: &str = "COALESCE(u.state, rd.state)";

/// Devices per effective state.
pub async fn counts(store: &Store, id: &str) -> Result<BTreeMap<String, i64>> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {EFFECTIVE} AS s, COUNT(*) FROM rollout_devices rd
           LEFT JOIN device_updates u ON u.device_id = rd.device_id AND u.rollout_id = rd.rollout_id
          WHERE rd.rollout_id = $1 GROUP BY {EFFECTIVE}"
    ));
    let rows: Vec<(String, i64)> =
        on_store!(store, pool => sqlx::query_as(sql).bind(id).fetch_all(pool).await)?;
    Ok(rows.into_iter().collect())
}

/// Devices of a rollout that are done with it (whatever the outcome), from its per-state counts.
pub fn finished_count(counts: &BTreeMap<String, i64>) -> i64 {
    ["succeeded", "failed", "reverted", "skipped", "rolled_back"]
        .iter()
        .filter_map(|s| counts.get(*s))
        .sum()
}

/// A device of a rollout, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    /// The device.
    pub device_id: String,
    /// Its phase (from 1).
    pub phase: i64,
    /// Its state: `pending`, `offered`, `skipped` or an update state.
    pub state: String,
    /// What happened.
    pub detail: String,
    /// The version it reported.
    pub version: Option<String>,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    device_id: String,
    phase: i64,
    state: String,
    detail: String,
    version: Option<String>,
    updated_at: i64,
}

/// One page of a rollout's devices in snapshot order; `state` filters by effective state.
pub async fn devices(
    store: &Store,
    id: &str,
    state: Option<&str>,
    page: Page,
) -> Result<(Vec<DeviceView>, i64)> {
    get(store, id).await?;
    let filter = if state.is_some() {
        format!(" AND {EFFECTIVE} = $4")
    } else {
        String::new()
    };
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT rd.device_id, rd.phase, {EFFECTIVE} AS state,
                CASE WHEN u.state IS NULL OR (u.state = 'succeeded' AND rd.first_install AND rd.rollback_at IS NOT NULL)
                     THEN rd.detail ELSE u.detail END AS detail,
                u.version, COALESCE(u.updated_at, rd.updated_at) AS updated_at
           FROM rollout_devices rd
           LEFT JOIN device_updates u ON u.device_id = rd.device_id AND u.rollout_id = rd.rollout_id
          WHERE rd.rollout_id = $1{filter} ORDER BY rd.position LIMIT $2 OFFSET $3"
    ));
    let count_sql = sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM rollout_devices rd
           LEFT JOIN device_updates u ON u.device_id = rd.device_id AND u.rollout_id = rd.rollout_id
          WHERE rd.rollout_id = $1{}",
        filter.replace("$4", "$2")
    ));
    let rows: Vec<DeviceRow> = on_store!(store, pool => {
        let mut q = sqlx::query_as(sql).bind(id).bind(page.limit()).bind(page.offset());
        if let Some(s) = state {
            q = q.bind(s);
        }
        q.fetch_all(pool).await
    })?;
    let total: i64 = on_store!(store, pool => {
        let mut q = sqlx::query_scalar(count_sql).bind(id);
        if let Some(s) = state {
            q = q.bind(s);
        }
        q.fetch_one(pool).await
    })?;
    Ok((
        rows.into_iter()
            .map(|r| DeviceView {
                device_id: r.device_id,
                phase: r.phase + 1,
                state: r.state,
                detail: r.detail,
                version: r.version,
                updated_at: rfc3339(r.updated_at),
            })
            .collect(),
        total,
    ))
}

/// A rollout event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// Increasing id.
    pub id: i64,
    /// When (RFC 3339).
    pub at: String,
    /// `created`, `started`, `phase_advanced`, `halted`, `paused`, …
    pub kind: String,
    /// What happened.
    pub detail: String,
}

/// A rollout's events, oldest first.
pub async fn events(store: &Store, id: &str) -> Result<Vec<EventView>> {
    let rows: Vec<(i64, i64, String, String)> = on_store!(store, pool => sqlx::query_as(
        "SELECT id, at, kind, detail FROM rollout_events WHERE rollout_id = $1 ORDER BY id")
        .bind(id).fetch_all(pool).await)?;
    Ok(rows
        .into_iter()
        .map(|(id, at, kind, detail)| EventView {
            id,
            at: rfc3339(at),
            kind,
            detail,
        })
        .collect())
}

/// An operator's control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop new offers.
    Pause,
    /// Offer again.
    Resume,
    /// Stop for good; updated devices stay as they are.
    Abort,
    /// Order a rollback on every device the rollout updated.
    Rollback,
}

impl Control {
    /// The API verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Abort => "abort",
            Control::Rollback => "rollback",
        }
    }
}

/// Applies an operator's control; 409 names the state that forbids it.
pub async fn control(store: &Store, id: &str, control: Control, who: &str) -> Result<Rollout> {
    let r = get(store, id).await?;
    let state = r.state()?;
    let now = now_ms();
    let (from, to, kind): (&[State], State, &str) = match control {
        Control::Pause => (&[State::Running, State::Scheduled], State::Paused, "paused"),
        // A halted rollout stays halted: its failures would halt it again at once. It can be
        // rolled back or aborted, and a fixed bundle goes out in a new rollout.
        Control::Resume => (&[State::Paused], State::Running, "resumed"),
        Control::Abort => (
            &[
                State::Scheduled,
                State::Running,
                State::Paused,
                State::Halted,
                State::RollingBack,
            ],
            State::Aborted,
            "aborted",
        ),
        Control::Rollback => (
            &[
                State::Running,
                State::Paused,
                State::Halted,
                State::Completed,
            ],
            State::RollingBack,
            "rollback_ordered",
        ),
    };
    if !from.contains(&state) {
        return Err(Error::Conflict(format!(
            "rollout {id} is {}; {} needs it {}",
            state.as_str(),
            control.as_str(),
            from.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    // A paused scheduled rollout that never started resumes as scheduled.
    let to = if control == Control::Resume && r.phase_started_at.is_none() {
        State::Scheduled
    } else {
        to
    };
    let finished = to.is_finished().then_some(now);
    let changed = on_store!(store, pool => sqlx::query(
        "UPDATE rollouts SET state = $1, reason = $2, updated_at = $3, finished_at = COALESCE($4, finished_at),
                phase_started_at = CASE WHEN $1 = 'running' THEN $3 ELSE phase_started_at END
          WHERE id = $5 AND state = $6")
        .bind(to.as_str()).bind(format!("{kind} by {who}")).bind(now).bind(finished)
        .bind(id).bind(&r.state).execute(pool).await.map(|r| r.rows_affected()))?;
    if changed == 0 {
        return Err(Error::Conflict(format!(
            "rollout {id} changed while this request ran; look again"
        )));
    }
    record_event(store, id, kind, &format!("by {who}")).await?;
    get(store, id).await
}

/// Whether a rollout not finished uses the bundle (a bundle in use cannot be deleted).
pub async fn bundle_in_use(store: &Store, bundle_id: &str) -> Result<Option<String>> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT id FROM rollouts WHERE bundle_id = $1 AND state IN {ACTIVE_STATES} LIMIT 1"
    ));
    Ok(
        on_store!(store, pool => sqlx::query_scalar(sql).bind(bundle_id).fetch_optional(pool).await)?,
    )
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RolloutView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Bundle.
    pub bundle_id: String,
    /// The bundle's name.
    pub bundle_name: String,
    /// The bundle's version.
    pub bundle_version: String,
    /// `scheduled`, `running`, `paused`, `halted`, `rolling_back`, `rolled_back`, `completed`,
    /// `aborted`.
    pub state: String,
    /// Why it is in this state (halt reason, who paused), empty otherwise.
    pub reason: String,
    /// The current phase (from 1).
    pub phase: i64,
    /// The phases.
    pub phases: Vec<PhaseSpec>,
    /// The target.
    pub target: Target,
    /// Threshold, percent.
    pub failure_threshold_pct: f64,
    /// Offers out at once.
    pub max_in_flight: i64,
    /// Roll back on halt.
    pub auto_rollback: bool,
    /// When offers may go out.
    pub maintenance_window: Option<MaintenanceWindow>,
    /// Seconds an offline device may wait in its phase.
    pub offline_timeout_seconds: i64,
    /// Scheduled start.
    pub start_at: Option<String>,
    /// When the current phase's soak ends.
    pub soak_until: Option<String>,
    /// Devices per state.
    pub counts: BTreeMap<String, i64>,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// When it finished.
    pub finished_at: Option<String>,
    /// Metric gates.
    pub gates: Vec<gates::Gate>,
    /// The latest verdict of each gate in each judged phase.
    pub gate_verdicts: Vec<gates::Verdict>,
}

/// The view of `r` with its counts.
pub async fn view(store: &Store, r: Rollout) -> Result<RolloutView> {
    let counts = counts(store, &r.id).await?;
    Ok(RolloutView {
        gates: r.gate_list()?,
        gate_verdicts: gates::verdicts(store, &r.id).await?,
        phases: r.phase_specs()?,
        target: r.target()?,
        maintenance_window: r.window()?,
        id: r.id,
        name: r.name,
        bundle_id: r.bundle_id,
        bundle_name: r.bundle_name,
        bundle_version: r.bundle_version,
        state: r.state,
        reason: r.reason,
        phase: r.phase + 1,
        failure_threshold_pct: r.failure_threshold_pct,
        max_in_flight: r.max_in_flight,
        auto_rollback: r.auto_rollback,
        offline_timeout_seconds: r.offline_timeout_s,
        start_at: r.start_at.map(rfc3339),
        soak_until: r.soak_until.map(rfc3339),
        counts,
        created_by: r.created_by,
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
        finished_at: r.finished_at.map(rfc3339),
    })
}
