//! Alert rules and alerts: "is anything wrong right now?" answered without a
//! person watching charts. A rule watches one metric on the devices of its
//! scope; when its condition has held for `for_seconds` an alert fires (an
//! alert row, a device event, a webhook delivery, a live note), and when the
//! condition clears it resolves. The evaluation lives in [`engine`].

pub mod engine;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::on_store;
use crate::paging::Page;
use crate::store::{Store, now_ms};

/// The pseudo-metric that is 1 while a device is offline and 0 while online.
pub const HEARTBEAT_MISSING: &str = "heartbeat_missing";

/// A rule on `drift.METRIC` watches the metric's drift score (see
/// `crate::fleet::drift`), judged once a minute rather than per reading.
pub const DRIFT_PREFIX: &str = "drift.";

/// Health report figures a rule can watch, as `health.NAME`.
pub const HEALTH_FIGURES: [&str; 6] = [
    "cpu_pct",
    "mem_pct",
    "disk_free",
    "temp_c",
    "spool_depth",
    "spool_dropped",
];

/// Longest `for_seconds`: a week.
const MAX_FOR_SECONDS: i64 = 7 * 86_400;

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Op {
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
}

impl Op {
    /// Parses `>`, `<`, `>=` or `<=`.
    pub fn parse(s: &str) -> Result<Op> {
        match s.trim() {
            ">" => Ok(Op::Gt),
            "<" => Ok(Op::Lt),
            ">=" => Ok(Op::Ge),
            "<=" => Ok(Op::Le),
            other => Err(Error::invalid(
                "condition.op",
                format!("`{other}` is not one of >, <, >=, <="),
            )),
        }
    }

    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Lt => "<",
            Op::Ge => ">=",
            Op::Le => "<=",
        }
    }

    /// Whether `value OP threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Lt => value < threshold,
            Op::Ge => value >= threshold,
            Op::Le => value <= threshold,
        }
    }
}

/// How loud an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Needs a look soon.
    Warning,
    /// Needs a look now.
    Critical,
}

impl Severity {
    /// Parses info, warning or critical.
    pub fn parse(s: &str) -> Result<Severity> {
        match s.trim() {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "critical" => Ok(Severity::Critical),
            other => Err(Error::invalid(
                "severity",
                format!("`{other}` is not one of info, warning, critical"),
            )),
        }
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Which devices a rule watches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Scope {
    /// Only devices of this type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// Only devices with all of these tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl Scope {
    /// Whether a device of `device_type` with `tags` is in scope.
    pub fn covers(&self, device_type: &str, tags: &BTreeMap<String, String>) -> bool {
        self.device_type.as_deref().is_none_or(|t| t == device_type)
            && self.tags.iter().all(|(k, v)| tags.get(k) == Some(v))
    }
}

/// A rule's condition.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Condition {
    /// The comparison.
    pub op: Op,
    /// The threshold.
    pub value: f64,
}

/// An alert rule.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Rule {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// A reading's metric, `health.NAME`, `drift.METRIC`, or `heartbeat_missing`.
    pub metric: String,
    /// Which devices.
    pub scope: Scope,
    /// When it holds.
    pub condition: Condition,
    /// How long it must hold before the alert fires.
    pub for_seconds: i64,
    /// How loud.
    pub severity: Severity,
    /// Who made it.
    pub created_by: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

impl Rule {
    /// "temp_c > 80 for 60 s".
    pub fn describe(&self) -> String {
        format!(
            "{} {} {} for {} s",
            self.metric,
            self.condition.op.as_str(),
            crate::telemetry::views::format_value(self.condition.value),
            self.for_seconds
        )
    }
}

/// A new rule or a replacement (PATCH sends only what changes).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct RuleInput {
    /// Name.
    pub name: Option<String>,
    /// Metric.
    pub metric: Option<String>,
    /// Scope.
    pub scope: Option<Scope>,
    /// Condition `{op, value}`.
    pub condition: Option<serde_json::Value>,
    /// Seconds the condition must hold.
    pub for_seconds: Option<serde_json::Value>,
    /// info, warning or critical (default warning).
    pub severity: Option<String>,
}

#[derive(sqlx::FromRow)]
struct RuleRow {
    id: String,
    name: String,
    metric: String,
    device_type: Option<String>,
    tags: String,
    op: String,
    value: f64,
    for_seconds: i64,
    severity: String,
    created_by: String,
    created_at: i64,
    updated_at: i64,
}

impl RuleRow {
    fn into_rule(self) -> Result<Rule> {
        Ok(Rule {
            scope: Scope {
                device_type: self.device_type,
                tags: serde_json::from_str(&self.tags)
                    .map_err(|e| Error::Internal(format!("stored rule tags: {e}")))?,
            },
            condition: Condition {
                op: Op::parse(&self.op)?,
                value: self.value,
            },
            severity: Severity::parse(&self.severity)?,
            id: self.id,
            name: self.name,
            metric: self.metric,
            for_seconds: self.for_seconds,
            created_by: self.created_by,
            created_at: crate::timefmt::rfc3339(self.created_at),
            updated_at: crate::timefmt::rfc3339(self.updated_at),
        })
    }
}

const RULE_COLUMNS: &str = "id, name, metric, device_type, tags, op, value, for_seconds, severity, created_by, created_at, updated_at";

/// Checks a metric a rule may watch.
fn metric(s: &str) -> Result<String> {
    let s = s.trim();
    let ok_name = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    if let Some(figure) = s.strip_prefix("health.") {
        if HEALTH_FIGURES.contains(&figure) {
            return Ok(s.to_string());
        }
        return Err(Error::invalid(
            "metric",
            format!(
                "`{s}` is not a health figure; use health.{}",
                HEALTH_FIGURES.join(", health.")
            ),
        ));
    }
    if let Some(watched) = s.strip_prefix(DRIFT_PREFIX) {
        if ok_name(watched) {
            return Ok(s.to_string());
        }
        return Err(Error::invalid(
            "metric",
            format!("`{s}` does not name a metric; use drift.METRIC, e.g. drift.temp_c"),
        ));
    }
    if s == HEARTBEAT_MISSING || ok_name(s) {
        return Ok(s.to_string());
    }
    Err(Error::invalid(
        "metric",
        "use a metric name (1 to 64 letters, digits, '_', '.' or '-'), health.FIGURE, drift.METRIC or heartbeat_missing",
    ))
}

fn condition(v: &serde_json::Value) -> Result<Condition> {
    let op = v
        .get("op")
        .and_then(|o| o.as_str())
        .ok_or_else(|| Error::invalid("condition.op", "give one of >, <, >=, <="))?;
    let value = v
        .get("value")
        .and_then(serde_json::Value::as_f64)
        .filter(|x| x.is_finite())
        .ok_or_else(|| Error::invalid("condition.value", "give a finite number"))?;
    Ok(Condition {
        op: Op::parse(op)?,
        value,
    })
}

fn for_seconds(v: &serde_json::Value) -> Result<i64> {
    v.as_i64()
        .filter(|s| (0..=MAX_FOR_SECONDS).contains(s))
        .ok_or_else(|| {
            Error::invalid(
                "for_seconds",
                format!("give whole seconds from 0 to {MAX_FOR_SECONDS}"),
            )
        })
}

fn name(s: &str) -> Result<String> {
    let s = s.trim();
    if s.is_empty() || s.chars().count() > 128 || s.chars().any(char::is_control) {
        return Err(Error::invalid("name", "use 1 to 128 printable characters"));
    }
    Ok(s.to_string())
}

fn scope(s: &Scope) -> Result<Scope> {
    let device_type = s
        .device_type
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| crate::identity::device_type("scope.device_type", t))
        .transpose()?;
    let tags = crate::identity::Tags::parse("scope.tags", s.tags.clone())?;
    Ok(Scope {
        device_type,
        tags: tags.0,
    })
}

/// Creates a rule.
pub async fn create(store: &Store, input: &RuleInput, created_by: &str) -> Result<Rule> {
    let name = name(
        input
            .name
            .as_deref()
            .ok_or_else(|| Error::invalid("name", "give the rule a name"))?,
    )?;
    let metric = metric(
        input
            .metric
            .as_deref()
            .ok_or_else(|| Error::invalid("metric", "give the metric to watch"))?,
    )?;
    let condition = condition(
        input
            .condition
            .as_ref()
            .ok_or_else(|| Error::invalid("condition", "give {op, value}"))?,
    )?;
    let for_s = input
        .for_seconds
        .as_ref()
        .map(for_seconds)
        .transpose()?
        .unwrap_or(0);
    let severity = input
        .severity
        .as_deref()
        .map(Severity::parse)
        .transpose()?
        .unwrap_or(Severity::Warning);
    let scope = scope(&input.scope.clone().unwrap_or_default())?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let now = now_ms();
    let tags = serde_json::to_string(&scope.tags)
        .map_err(|e| Error::Internal(format!("rule tags: {e}")))?;
    on_store!(store, pool => sqlx::query(
        "INSERT INTO alert_rules (id, name, metric, device_type, tags, op, value, for_seconds, severity, created_by, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)")
        .bind(&id).bind(&name).bind(&metric).bind(&scope.device_type).bind(&tags)
        .bind(condition.op.as_str()).bind(condition.value).bind(for_s).bind(severity.as_str())
        .bind(created_by).bind(now).execute(pool).await.map(|_| ()))?;
    get(store, &id).await
}

/// Changes a rule; the pending conditions and firing alerts of a changed rule
/// start over (they were judged by the old condition), firing ones resolved.
pub async fn update(store: &Store, id: &str, input: &RuleInput) -> Result<Rule> {
    let old = get(store, id).await?;
    let name = input
        .name
        .as_deref()
        .map(name)
        .transpose()?
        .unwrap_or(old.name);
    let metric = input
        .metric
        .as_deref()
        .map(metric)
        .transpose()?
        .unwrap_or(old.metric);
    let condition = input
        .condition
        .as_ref()
        .map(condition)
        .transpose()?
        .unwrap_or(old.condition);
    let for_s = input
        .for_seconds
        .as_ref()
        .map(for_seconds)
        .transpose()?
        .unwrap_or(old.for_seconds);
    let severity = input
        .severity
        .as_deref()
        .map(Severity::parse)
        .transpose()?
        .unwrap_or(old.severity);
    let scope = input
        .scope
        .as_ref()
        .map(scope)
        .transpose()?
        .unwrap_or(old.scope);
    let tags = serde_json::to_string(&scope.tags)
        .map_err(|e| Error::Internal(format!("rule tags: {e}")))?;
    let now = now_ms();
    on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "UPDATE alert_rules SET name = $1, metric = $2, device_type = $3, tags = $4, op = $5, value = $6,
                    for_seconds = $7, severity = $8, updated_at = $9 WHERE id = $10")
            .bind(&name).bind(&metric).bind(&scope.device_type).bind(&tags).bind(condition.op.as_str())
            .bind(condition.value).bind(for_s).bind(severity.as_str()).bind(now).bind(id)
            .execute(&mut *tx).await?;
        sqlx::query("UPDATE alerts SET state = 'resolved', resolved_at = $1 WHERE rule_id = $2 AND state = 'firing'")
            .bind(now).bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM alert_states WHERE rule_id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await
    })?;
    get(store, id).await
}

/// Deletes a rule; its firing alerts resolve.
pub async fn delete(store: &Store, id: &str) -> Result<()> {
    get(store, id).await?;
    let now = now_ms();
    on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query("UPDATE alerts SET state = 'resolved', resolved_at = $1 WHERE rule_id = $2 AND state = 'firing'")
            .bind(now).bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM alert_rules WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await
    })?;
    Ok(())
}

/// One rule.
pub async fn get(store: &Store, id: &str) -> Result<Rule> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {RULE_COLUMNS} FROM alert_rules WHERE id = $1"
    ));
    let row: Option<RuleRow> =
        on_store!(store, pool => sqlx::query_as(sql).bind(id).fetch_optional(pool).await)?;
    row.ok_or_else(|| Error::NotFound(format!("no alert rule {id}")))?
        .into_rule()
}

/// Every rule, by name.
pub async fn rules(store: &Store) -> Result<Vec<Rule>> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {RULE_COLUMNS} FROM alert_rules ORDER BY name, id"
    ));
    let rows: Vec<RuleRow> = on_store!(store, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
    rows.into_iter().map(RuleRow::into_rule).collect()
}

/// An alert, as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Alert {
    /// Id.
    pub id: i64,
    /// The rule (it may be deleted since).
    pub rule_id: String,
    /// The rule's name when it fired.
    pub rule_name: String,
    /// The device.
    pub device_id: String,
    /// Its name now.
    pub device_name: Option<String>,
    /// The metric.
    pub metric: String,
    /// info, warning or critical.
    pub severity: String,
    /// The condition as written ("temp_c > 80 for 60 s").
    pub condition: String,
    /// The value that made it fire.
    pub value: f64,
    /// firing or resolved.
    pub state: String,
    /// When the condition began to hold (ms).
    pub started_at: i64,
    /// When it fired (ms).
    pub fired_at: i64,
    /// When it resolved (ms).
    pub resolved_at: Option<i64>,
}

const ALERT_COLUMNS: &str =
    "a.id, a.rule_id, a.rule_name, a.device_id, d.name AS device_name, a.metric, a.severity,
    a.condition, a.value, a.state, a.started_at, a.fired_at, a.resolved_at";

impl Alert {
    /// When it fired, RFC 3339.
    pub fn fired(&self) -> String {
        crate::timefmt::rfc3339(self.fired_at)
    }

    /// When it resolved, RFC 3339, or empty.
    pub fn resolved(&self) -> String {
        self.resolved_at
            .map(crate::timefmt::rfc3339)
            .unwrap_or_default()
    }

    /// The value as the page shows it.
    pub fn value_text(&self) -> String {
        crate::telemetry::views::format_value(self.value)
    }
}

/// Which alerts to list.
#[derive(Debug, Default, Clone)]
pub struct AlertFilter {
    /// firing or resolved.
    pub state: Option<String>,
    /// One device's.
    pub device_id: Option<String>,
}

/// One page of alerts, newest first, with the total.
pub async fn alerts(store: &Store, filter: &AlertFilter, page: Page) -> Result<(Vec<Alert>, i64)> {
    if let Some(s) = filter.state.as_deref()
        && !matches!(s, "firing" | "resolved")
    {
        return Err(Error::invalid(
            "state",
            format!("`{s}` is not firing or resolved"),
        ));
    }
    const WHERE: &str = "WHERE ($1 IS NULL OR a.state = $1) AND ($2 IS NULL OR a.device_id = $2)";
    let items_sql = sqlx::AssertSqlSafe(format!(
        "SELECT {ALERT_COLUMNS} FROM alerts a LEFT JOIN devices d ON d.id = a.device_id
           {WHERE} ORDER BY a.id DESC LIMIT $3 OFFSET $4"
    ));
    let count_sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM alerts a {WHERE}"));
    let items: Vec<Alert> = on_store!(store, pool => sqlx::query_as(items_sql)
        .bind(filter.state.as_deref()).bind(filter.device_id.as_deref())
        .bind(page.limit()).bind(page.offset()).fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar(count_sql)
        .bind(filter.state.as_deref()).bind(filter.device_id.as_deref()).fetch_one(pool).await)?;
    Ok((items, total))
}

/// Most alerts [`overlapping`] answers: more than a chart can show apart.
pub const OVERLAPPING_LIMIT: i64 = 200;

/// A device's alerts, newest first, that were holding at some time in
/// `[from, to)`: begun before `to` and still firing or resolved at or after
/// `from`. At most [`OVERLAPPING_LIMIT`], the newest.
pub async fn overlapping(store: &Store, device_id: &str, from: i64, to: i64) -> Result<Vec<Alert>> {
    // Through `alerts_device (device_id, id)` the scan reads only this
    // device's alerts, newest first, and stops once the limit is met.
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {ALERT_COLUMNS} FROM alerts a LEFT JOIN devices d ON d.id = a.device_id
          WHERE a.device_id = $1 AND a.started_at < $2 AND (a.resolved_at IS NULL OR a.resolved_at >= $3)
          ORDER BY a.id DESC LIMIT $4"
    ));
    Ok(on_store!(store, pool => sqlx::query_as(sql)
        .bind(device_id).bind(to).bind(from).bind(OVERLAPPING_LIMIT).fetch_all(pool).await)?)
}

/// A device's alerts as its page lists them, each list newest first: every
/// one firing (at most one per rule, as the engine keeps one condition per
/// rule and device) and the `resolved` newest resolved ones.
pub async fn on_device(
    store: &Store,
    device_id: &str,
    resolved: i64,
) -> Result<(Vec<Alert>, Vec<Alert>)> {
    // Not `alerts()`: its optional filters keep the planner off
    // `alerts_device`, and the page asks again on every live refresh.
    let sql = format!(
        "SELECT {ALERT_COLUMNS} FROM alerts a LEFT JOIN devices d ON d.id = a.device_id
          WHERE a.device_id = $1 AND a.state = $2 ORDER BY a.id DESC LIMIT $3"
    );
    let firing: Vec<Alert> = on_store!(store, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(device_id).bind("firing").bind(i64::MAX).fetch_all(pool).await)?;
    let resolved: Vec<Alert> = on_store!(store, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(device_id).bind("resolved").bind(resolved).fetch_all(pool).await)?;
    Ok((firing, resolved))
}

/// Alerts firing now.
pub async fn firing_count(store: &Store) -> Result<i64> {
    Ok(on_store!(store, pool => sqlx::query_scalar(
        "SELECT COUNT(*) FROM alerts WHERE state = 'firing'").fetch_one(pool).await)?)
}

/// The SQL condition that a device `d` lies in one of `scopes`, its
/// parameters numbered from `$first` (pure). `None` when a scope covers every
/// device, so the query needs no condition.
fn scopes_sql(scopes: &[Scope], first: usize) -> Option<(String, Vec<String>)> {
    if scopes
        .iter()
        .any(|s| s.device_type.is_none() && s.tags.is_empty())
    {
        return None;
    }
    let mut args = Vec::new();
    let mut clauses = Vec::new();
    for s in scopes {
        let parts = crate::identity::devices::type_and_tags_conditions(
            s.device_type.as_deref(),
            &s.tags,
            &mut args,
            first - 1,
        );
        clauses.push(format!("({})", parts.join(" AND ")));
    }
    Some((format!("({})", clauses.join(" OR ")), args))
}

/// Accepted devices in one of `scopes` that sent `metric` since `since`, with
/// ids after `after` and up to `upto` (inclusive, when given), first by id, at
/// most `limit`: one step of the drift pass's rotation over a rule's devices.
/// The scope is applied here, before the limit, so devices out of scope never
/// take the place of those in it.
pub async fn drift_candidates(
    store: &Store,
    metric: &str,
    since: i64,
    scopes: &[Scope],
    (after, upto): (&str, Option<&str>),
    limit: usize,
) -> Result<Vec<String>> {
    if scopes.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    // $1 metric, $2 since, $3 after; then `upto` and the scopes' values; the limit last.
    let mut sql = String::from(
        "SELECT l.device_id FROM telemetry_latest l
           JOIN metric_names m ON m.id = l.metric_id
           JOIN devices d ON d.id = l.device_id
          WHERE m.name = $1 AND l.ts >= $2 AND l.device_id > $3 AND d.status = 'accepted'",
    );
    let mut args: Vec<String> = Vec::new();
    if let Some(u) = upto {
        args.push(u.to_string());
        sql.push_str(" AND l.device_id <= $4");
    }
    if let Some((condition, values)) = scopes_sql(scopes, 4 + args.len()) {
        sql.push_str(" AND ");
        sql.push_str(&condition);
        args.extend(values);
    }
    sql.push_str(&format!(" ORDER BY l.device_id LIMIT ${}", 4 + args.len()));
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    Ok(on_store!(store, pool => {
        let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(metric)
            .bind(since)
            .bind(after);
        for a in &args {
            q = q.bind(a.as_str());
        }
        q.bind(limit).fetch_all(pool).await
    })?)
}

/// Queues the alert's webhook deliveries (targets subscribed to "alert").
pub async fn notify_webhooks(store: &Store, alert_id: i64) -> Result<()> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {ALERT_COLUMNS} FROM alerts a LEFT JOIN devices d ON d.id = a.device_id WHERE a.id = $1"
    ));
    let alert: Alert =
        on_store!(store, pool => sqlx::query_as(sql).bind(alert_id).fetch_one(pool).await)?;
    let data = serde_json::json!({
        "alert_id": alert.id,
        "state": alert.state,
        "rule_id": alert.rule_id,
        "rule_name": alert.rule_name,
        "device_id": alert.device_id,
        "device_name": alert.device_name,
        "metric": alert.metric,
        "severity": alert.severity,
        "condition": alert.condition,
        "value": alert.value,
        "started_at": crate::timefmt::rfc3339(alert.started_at),
        "fired_at": crate::timefmt::rfc3339(alert.fired_at),
        "resolved_at": alert.resolved_at.map(crate::timefmt::rfc3339),
    });
    crate::webhooks::enqueue(store, crate::webhooks::Event::Alert, data).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_compare_as_written() {
        assert!(Op::Gt.holds(81.0, 80.0) && !Op::Gt.holds(80.0, 80.0));
        assert!(Op::Ge.holds(80.0, 80.0) && !Op::Lt.holds(80.0, 80.0));
        assert!(Op::Le.holds(80.0, 80.0) && Op::Lt.holds(79.9, 80.0));
        assert!(Op::parse("=>").is_err());
        assert_eq!(Op::parse(" >= ").unwrap(), Op::Ge);
    }

    #[test]
    fn metrics_are_names_health_figures_or_heartbeat() {
        assert!(metric("temp_c").is_ok());
        assert!(metric("health.cpu_pct").is_ok());
        assert!(metric("heartbeat_missing").is_ok());
        assert!(metric("health.nope").is_err());
        assert!(metric("drift.temp_c").is_ok());
        assert!(metric("drift.").is_err());
        assert!(metric("<b>").is_err());
        assert!(metric("").is_err());
    }

    #[test]
    fn scopes_need_the_type_and_every_tag() {
        let s = Scope {
            device_type: Some("rpi4".into()),
            tags: [("site".to_string(), "berlin".to_string())].into(),
        };
        let tags: BTreeMap<String, String> = [
            ("site".to_string(), "berlin".to_string()),
            ("row".to_string(), "3".to_string()),
        ]
        .into();
        assert!(s.covers("rpi4", &tags));
        assert!(!s.covers("jetson", &tags));
        assert!(!s.covers("rpi4", &BTreeMap::new()));
        assert!(Scope::default().covers("anything", &BTreeMap::new()));
    }

    #[test]
    fn drift_candidates_are_filtered_by_any_rules_scope_with_numbered_values() {
        let typed = Scope {
            device_type: Some("rpi4".into()),
            tags: [("site".to_string(), "berlin".to_string())].into(),
        };
        let tagged = Scope {
            device_type: None,
            tags: [("row".to_string(), "3".to_string())].into(),
        };
        let (sql, args) = scopes_sql(&[typed.clone(), tagged], 5).expect("a condition");
        assert_eq!(
            sql,
            "((d.device_type = $5 AND EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.key = $6 AND t.value = $7)) \
             OR (EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.key = $8 AND t.value = $9)))"
        );
        assert_eq!(args, ["rpi4", "site", "berlin", "row", "3"]);
        // A rule on every device makes the others' scopes moot.
        assert_eq!(scopes_sql(&[typed, Scope::default()], 4), None);
    }

    #[test]
    fn bad_numbers_name_their_field() {
        let e = condition(&serde_json::json!({"op": ">", "value": "hot"})).unwrap_err();
        assert!(e.to_string().contains("condition.value"), "{e}");
        let e = for_seconds(&serde_json::json!(-5)).unwrap_err();
        assert!(e.to_string().contains("for_seconds"), "{e}");
        let e = condition(&serde_json::json!({"op": "~", "value": 1})).unwrap_err();
        assert!(e.to_string().contains("condition.op"), "{e}");
    }
}
