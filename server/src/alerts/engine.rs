//! Evaluates alert rules as changes are stored. The engine listens to the
//! live hub (readings with their values, health figures, presence) rather
//! than sitting in ingest's path, so a slow evaluation never holds up
//! storing readings. A reading costs a hash lookup when no rule watches its
//! metric, and touches the store only when a condition starts or stops
//! holding or an alert fires or resolves.
//!
//! With several replicas on PostgreSQL every replica sees every change (the
//! live relay), and one of them, the holder of an advisory lock, judges them;
//! the others only keep their count of firing alerts current.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::sync::broadcast::error::RecvError;

use super::{DRIFT_PREFIX, HEARTBEAT_MISSING, Rule, Scope};
use crate::error::Result;
use crate::leader::Hold;
use crate::live::{Change, Live};
use crate::on_store;
use crate::store::{Store, now_ms};

/// How often conditions that have held long enough fire without a new reading.
const SWEEP: Duration = Duration::from_secs(2);

/// How long a device's type, status and tags are trusted without a change note.
const META_TTL_MS: i64 = 60_000;

/// How often rules on `drift.METRIC` are judged: a score moves slowly, and
/// computing one reads a week of minutes.
pub const DRIFT_EVERY: Duration = Duration::from_secs(60);

/// Devices scored per drift pass at most, over all drift rules. Each pass
/// goes on from where the last one stopped (by device id, wrapping around),
/// so a larger fleet is covered over several passes rather than cut off.
pub const DRIFT_DEVICES_PER_PASS: usize = 500;

/// How often drift rules are judged and how many devices a pass scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftPace {
    /// Time between passes.
    pub every: Duration,
    /// Devices scored per pass at most, over all drift rules.
    pub devices_per_pass: usize,
}

impl Default for DriftPace {
    fn default() -> Self {
        DriftPace {
            every: DRIFT_EVERY,
            devices_per_pass: DRIFT_DEVICES_PER_PASS,
        }
    }
}

/// The advisory lock the judging replica holds ("drover-a").
const ADVISORY_KEY: i64 = 0x6472_6f76_6572_2d61;

/// How often a replica that does not judge tries to, and the judge checks its lock.
const FOLLOW: Duration = Duration::from_secs(2);

/// A condition holding on one device for one rule.
#[derive(Debug, Clone)]
struct Holding {
    since: i64,
    value: f64,
    alert_id: Option<i64>,
}

#[derive(Debug, Clone)]
struct DeviceMeta {
    accepted: bool,
    device_type: String,
    tags: BTreeMap<String, String>,
    fetched_at: i64,
}

#[derive(Default)]
struct Inner {
    /// Rules by the metric they watch.
    rules: HashMap<String, Vec<Arc<Rule>>>,
    /// Rules by id.
    by_id: HashMap<String, Arc<Rule>>,
    /// (rule id, device id) → the condition holding.
    holding: HashMap<(String, String), Holding>,
    devices: HashMap<String, DeviceMeta>,
    /// `drift.METRIC` → the last device id its rotation scored ("" starts over).
    drift_cursor: HashMap<String, String>,
}

/// The alert engine of one server.
pub struct Engine {
    store: Store,
    live: Live,
    pace: DriftPace,
    inner: Mutex<Inner>,
    firing: AtomicI64,
    /// This replica judges (holds the advisory lock; always, on SQLite).
    leading: AtomicBool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("alerts::Engine").finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct HoldingRow {
    rule_id: String,
    device_id: String,
    since: i64,
    value: f64,
    alert_id: Option<i64>,
}

impl Engine {
    /// Loads rules and holding conditions and starts listening; a firing
    /// alert from before a restart stays firing and is not fired again.
    pub async fn start(
        store: Store,
        live: Live,
        pace: DriftPace,
    ) -> Result<(Arc<Engine>, Vec<tokio::task::JoinHandle<()>>)> {
        let engine = Arc::new(Engine {
            store,
            pace,
            live: live.clone(),
            inner: Mutex::new(Inner::default()),
            firing: AtomicI64::new(0),
            leading: AtomicBool::new(false),
        });
        let hold = Hold::acquire(&engine.store, ADVISORY_KEY).await?;
        engine.reload().await?;
        engine.leading.store(hold.is_some(), Ordering::SeqCst);
        let changes = live.subscribe();
        let listen = tokio::spawn(engine.clone().listen(changes));
        let sweep = tokio::spawn(engine.clone().sweep());
        let drift = tokio::spawn(engine.clone().drift());
        let lead = tokio::spawn(engine.clone().lead(hold));
        Ok((engine, vec![listen, sweep, drift, lead]))
    }

    fn leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// Keeps the lock while it stands, and takes it when another replica lets it go.
    async fn lead(self: Arc<Self>, mut hold: Option<Hold>) {
        loop {
            match hold.take() {
                Some(mut h) => {
                    if h.alive().await {
                        hold = Some(h);
                    } else {
                        tracing::warn!("no longer judging alert rules");
                        self.leading.store(false, Ordering::SeqCst);
                        h.release().await;
                    }
                }
                None => match Hold::acquire(&self.store, ADVISORY_KEY).await {
                    Ok(Some(h)) => {
                        // What the last judge left holding is in the store.
                        if let Err(e) = self.reload().await {
                            tracing::warn!(error = %e, "cannot load alert state; not judging yet");
                            h.release().await;
                        } else {
                            tracing::info!("judging alert rules");
                            self.leading.store(true, Ordering::SeqCst);
                            hold = Some(h);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot try the alert lock"),
                },
            }
            tokio::time::sleep(FOLLOW).await;
        }
    }

    /// Alerts firing now (for the navigation).
    pub fn firing(&self) -> i64 {
        self.firing.load(Ordering::Relaxed)
    }

    /// Tells the judging replica, this one or another, that rules changed.
    pub fn rules_changed(&self) {
        self.live.send(Change::Rules);
    }

    /// Reads rules and holding conditions again.
    async fn reload(&self) -> Result<()> {
        let rules = super::rules(&self.store).await?;
        let rows: Vec<HoldingRow> = on_store!(&self.store, pool => sqlx::query_as(
            "SELECT rule_id, device_id, since, value, alert_id FROM alert_states").fetch_all(pool).await)?;
        let mut inner = self.inner.lock().await;
        inner.rules.clear();
        inner.by_id.clear();
        for r in rules {
            let r = Arc::new(r);
            inner
                .rules
                .entry(r.metric.clone())
                .or_default()
                .push(r.clone());
            inner.by_id.insert(r.id.clone(), r);
        }
        inner.holding = rows
            .into_iter()
            .map(|r| {
                (
                    (r.rule_id, r.device_id),
                    Holding {
                        since: r.since,
                        value: r.value,
                        alert_id: r.alert_id,
                    },
                )
            })
            .collect();
        drop(inner);
        self.recount().await;
        Ok(())
    }

    async fn recount(&self) {
        match super::firing_count(&self.store).await {
            Ok(n) => {
                self.firing.store(n, Ordering::Relaxed);
                self.live.set_firing(n);
            }
            Err(e) => tracing::warn!(error = %e, "cannot count firing alerts"),
        }
    }

    async fn listen(self: Arc<Self>, mut changes: tokio::sync::broadcast::Receiver<Change>) {
        loop {
            let change = match changes.recv().await {
                Ok(c) => c,
                Err(RecvError::Lagged(n)) => {
                    // The next reading of each metric judges again; only a short
                    // condition may be missed, and it is logged.
                    tracing::warn!(missed = n, "alert evaluation fell behind; skipped changes");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            if !self.leading() {
                // Device notes still clear the cache, so a later lead starts fresh.
                if let Change::Device(id) = &change {
                    self.inner.lock().await.devices.remove(&**id);
                }
                continue;
            }
            let now = now_ms();
            let result = match change {
                Change::Readings(r) => {
                    let mut result = Ok(());
                    // `drift.METRIC` is the drift pass's value, never a reading's.
                    for (metric, ts, value) in
                        r.points.iter().filter(|p| !p.0.starts_with(DRIFT_PREFIX))
                    {
                        result = result.and(self.observe(&r.device_id, metric, *ts, *value).await);
                    }
                    result
                }
                Change::Health(h) => {
                    let mut result = Ok(());
                    for (figure, value) in &h.figures {
                        let metric = format!("health.{figure}");
                        result = result.and(self.observe(&h.device_id, &metric, now, *value).await);
                    }
                    result
                }
                Change::Presence(id, online) => {
                    let value = if online { 0.0 } else { 1.0 };
                    self.observe(&id, HEARTBEAT_MISSING, now, value).await
                }
                Change::Device(id) => {
                    // Its type, tags or status may have changed.
                    self.inner.lock().await.devices.remove(&*id);
                    Ok(())
                }
                Change::Rules => self.reload().await,
                Change::Alert(_) | Change::Rollout(_) | Change::Resync => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "alert evaluation failed");
            }
        }
    }

    /// Fires the conditions that have held for their rule's time, readings or not.
    async fn sweep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.leading() {
                // The judge is another replica: follow its count for the navigation.
                self.recount().await;
                continue;
            }
            let now = now_ms();
            let mut inner = self.inner.lock().await;
            let due: Vec<((String, String), Holding)> = inner
                .holding
                .iter()
                .filter(|(_, h)| h.alert_id.is_none())
                .filter(|((rule, _), h)| {
                    inner
                        .by_id
                        .get(rule)
                        .is_some_and(|r| now - h.since >= r.for_seconds.saturating_mul(1000))
                })
                .map(|(k, h)| (k.clone(), h.clone()))
                .collect();
            for ((rule_id, device_id), h) in due {
                let Some(rule) = inner.by_id.get(&rule_id).cloned() else {
                    continue;
                };
                if let Err(e) = self.fire(&mut inner, &rule, &device_id, &h, now).await {
                    tracing::warn!(error = %e, "cannot fire an alert");
                }
            }
        }
    }

    /// Judges the rules on `drift.METRIC` once a minute.
    async fn drift(self: Arc<Self>) {
        let every = self.pace.every.max(Duration::from_millis(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.leading() {
                continue;
            }
            if let Err(e) = self.drift_pass(now_ms()).await {
                tracing::warn!(error = %e, "drift evaluation failed");
            }
        }
    }

    /// Scores the next devices in the scope of the drift rules that sent
    /// their metric in the last hour, over the last hour, and judges each score
    /// as the value of `drift.METRIC`. Each metric's rotation goes on from where
    /// the last pass stopped and takes its share of the per-pass limit.
    async fn drift_pass(&self, now: i64) -> Result<()> {
        use crate::fleet::drift;
        let watched: Vec<(String, Vec<Scope>)> = self
            .inner
            .lock()
            .await
            .rules
            .iter()
            .filter(|(m, _)| m.starts_with(DRIFT_PREFIX))
            .map(|(m, rules)| (m.clone(), rules.iter().map(|r| r.scope.clone()).collect()))
            .collect();
        if watched.is_empty() {
            return Ok(());
        }
        // Shares, so a metric with a large fleet never starves another's rules.
        let share = (self.pace.devices_per_pass.max(1) / watched.len()).max(1);
        let since = now - 3_600_000;
        for (key, scopes) in watched {
            let Some(metric) = key.strip_prefix(DRIFT_PREFIX) else {
                continue;
            };
            let start = self
                .inner
                .lock()
                .await
                .drift_cursor
                .get(&key)
                .cloned()
                .unwrap_or_default();
            let tail = super::drift_candidates(
                &self.store,
                metric,
                since,
                &scopes,
                (start.as_str(), None),
                share,
            )
            .await?;
            // Past the last device: wrap around to the first, up to where this round began.
            let head = if tail.len() < share && !start.is_empty() {
                super::drift_candidates(
                    &self.store,
                    metric,
                    since,
                    &scopes,
                    ("", Some(start.as_str())),
                    share - tail.len(),
                )
                .await?
            } else {
                Vec::new()
            };
            let (devices, next) = rotate(tail, head, share);
            // Moved on before scoring: a device that fails to score does not stall the rotation.
            self.inner
                .lock()
                .await
                .drift_cursor
                .insert(key.clone(), next);
            for device_id in devices {
                let d = drift::device(&self.store, &device_id, metric, drift::Window::Hour, now)
                    .await?;
                if let Some(score) = d.score {
                    self.observe(&device_id, &key, now, score).await?;
                }
            }
        }
        Ok(())
    }

    /// Judges one value of `metric` on a device against the rules watching it.
    async fn observe(&self, device_id: &str, metric: &str, ts: i64, value: f64) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let Some(rules) = inner.rules.get(metric).cloned() else {
            return Ok(());
        };
        let Some(meta) = self.meta(&mut inner, device_id).await? else {
            return Ok(());
        };
        if !meta.accepted {
            return Ok(());
        }
        for rule in rules {
            if !rule.scope.covers(&meta.device_type, &meta.tags) {
                continue;
            }
            let holds = rule.condition.op.holds(value, rule.condition.value);
            self.step(&mut inner, &rule, device_id, ts, value, holds)
                .await?;
        }
        Ok(())
    }

    async fn meta(&self, inner: &mut Inner, device_id: &str) -> Result<Option<DeviceMeta>> {
        let now = now_ms();
        if let Some(m) = inner.devices.get(device_id)
            && now - m.fetched_at < META_TTL_MS
        {
            return Ok(Some(m.clone()));
        }
        let Some(d) = crate::identity::devices::get(&self.store, device_id).await? else {
            return Ok(None);
        };
        let tags = crate::identity::devices::tags(&self.store, device_id).await?;
        let meta = DeviceMeta {
            accepted: d.status() == crate::identity::devices::Status::Accepted,
            device_type: d.device_type,
            tags: tags.0,
            fetched_at: now,
        };
        inner.devices.insert(device_id.to_string(), meta.clone());
        Ok(Some(meta))
    }

    async fn step(
        &self,
        inner: &mut Inner,
        rule: &Rule,
        device_id: &str,
        ts: i64,
        value: f64,
        holds: bool,
    ) -> Result<()> {
        let key = (rule.id.clone(), device_id.to_string());
        match (holds, inner.holding.get(&key).cloned()) {
            (true, None) => {
                let h = Holding {
                    since: ts,
                    value,
                    alert_id: None,
                };
                on_store!(&self.store, pool => sqlx::query(
                    "INSERT INTO alert_states (rule_id, device_id, since, value) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (rule_id, device_id) DO UPDATE SET since = excluded.since, value = excluded.value, alert_id = NULL")
                    .bind(&rule.id).bind(device_id).bind(ts).bind(value).execute(pool).await.map(|_| ()))?;
                inner.holding.insert(key, h.clone());
                if rule.for_seconds == 0 {
                    self.fire(inner, rule, device_id, &h, ts).await?;
                }
            }
            (true, Some(mut h)) => {
                h.value = value;
                let due = ts - h.since >= rule.for_seconds.saturating_mul(1000);
                if h.alert_id.is_none() && due {
                    self.fire(inner, rule, device_id, &h, ts).await?;
                } else {
                    inner.holding.insert(key, h);
                }
            }
            (false, Some(h)) => {
                self.clear(rule, device_id, &h, value).await?;
                inner.holding.remove(&key);
            }
            (false, None) => {}
        }
        Ok(())
    }

    /// Records the alert, its device event and its webhook deliveries.
    async fn fire(
        &self,
        inner: &mut Inner,
        rule: &Rule,
        device_id: &str,
        h: &Holding,
        now: i64,
    ) -> Result<()> {
        let condition = rule.describe();
        let detail = crate::telemetry::events::clip(&format!(
            "{} ({}): {} — value {}",
            rule.name,
            rule.severity.as_str(),
            condition,
            crate::telemetry::views::format_value(h.value)
        ));
        let alert_id: i64 = on_store!(&self.store, pool => {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO alerts (rule_id, rule_name, device_id, metric, severity, condition, value, state, started_at, fired_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'firing', $8, $9) RETURNING id")
                .bind(&rule.id).bind(&rule.name).bind(device_id).bind(&rule.metric).bind(rule.severity.as_str())
                .bind(&condition).bind(h.value).bind(h.since).bind(now)
                .fetch_one(&mut *tx).await?;
            sqlx::query("UPDATE alert_states SET alert_id = $1, value = $2 WHERE rule_id = $3 AND device_id = $4")
                .bind(id).bind(h.value).bind(&rule.id).bind(device_id).execute(&mut *tx).await?;
            sqlx::query(crate::telemetry::events::INSERT).bind(device_id).bind(now).bind("alert_firing").bind(&detail)
                .execute(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(id)
        })?;
        inner.holding.insert(
            (rule.id.clone(), device_id.to_string()),
            Holding {
                alert_id: Some(alert_id),
                ..h.clone()
            },
        );
        tracing::info!(alert_id, rule = %rule.name, device_id, "alert firing");
        self.announce(alert_id, device_id).await;
        Ok(())
    }

    /// The condition stopped holding: resolves its alert if it fired.
    async fn clear(&self, rule: &Rule, device_id: &str, h: &Holding, value: f64) -> Result<()> {
        let now = now_ms();
        let detail = crate::telemetry::events::clip(&format!(
            "{}: {} no longer holds — value {}",
            rule.name,
            rule.describe(),
            crate::telemetry::views::format_value(value)
        ));
        on_store!(&self.store, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM alert_states WHERE rule_id = $1 AND device_id = $2")
                .bind(&rule.id).bind(device_id).execute(&mut *tx).await?;
            if let Some(id) = h.alert_id {
                sqlx::query("UPDATE alerts SET state = 'resolved', resolved_at = $1 WHERE id = $2 AND state = 'firing'")
                    .bind(now).bind(id).execute(&mut *tx).await?;
                sqlx::query(crate::telemetry::events::INSERT).bind(device_id).bind(now).bind("alert_resolved").bind(&detail)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await
        })?;
        if let Some(id) = h.alert_id {
            tracing::info!(alert_id = id, rule = %rule.name, device_id, "alert resolved");
            self.announce(id, device_id).await;
        }
        Ok(())
    }

    /// Tells the dashboard and the webhook targets about a firing or resolution.
    async fn announce(&self, alert_id: i64, device_id: &str) {
        self.recount().await;
        self.live.send(Change::Alert(device_id.into()));
        if let Err(e) = super::notify_webhooks(&self.store, alert_id).await {
            tracing::warn!(alert_id, error = %e, "cannot queue the alert's webhook deliveries");
        }
    }
}

/// One step of a drift rotation (pure): `tail` holds the first ids after
/// where the rotation stood (`limit` asked for), `head` the first ids from the
/// beginning up to that point (asked only for the room `tail` left). Answers
/// the devices to score and where the next pass starts ("" for the beginning).
fn rotate(tail: Vec<String>, head: Vec<String>, limit: usize) -> (Vec<String>, String) {
    if tail.len() >= limit {
        let next = tail.last().cloned().unwrap_or_default();
        return (tail, next);
    }
    let room = limit - tail.len();
    // A short head means every device came round: the next pass starts over.
    let next = if head.len() >= room {
        head.last().cloned().unwrap_or_default()
    } else {
        String::new()
    };
    let mut devices = tail;
    devices.extend(head);
    (devices, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Runs passes of `limit` over `fleet` (sorted ids) as the engine does.
    fn passes(fleet: &[&str], limit: usize, n: usize) -> Vec<Vec<String>> {
        let mut start = String::new();
        (0..n)
            .map(|_| {
                let tail: Vec<String> = fleet
                    .iter()
                    .filter(|id| **id > start.as_str())
                    .take(limit)
                    .map(|s| s.to_string())
                    .collect();
                let head = if tail.len() < limit && !start.is_empty() {
                    fleet
                        .iter()
                        .filter(|id| **id <= start.as_str())
                        .take(limit - tail.len())
                        .map(|s| s.to_string())
                        .collect()
                } else {
                    Vec::new()
                };
                let (devices, next) = rotate(tail, head, limit);
                start = next;
                devices
            })
            .collect()
    }

    #[test]
    fn a_rotation_covers_every_device_in_turn_and_wraps_around() {
        let fleet = ["a", "b", "c", "d", "e"];
        assert_eq!(
            passes(&fleet, 2, 4),
            [
                ids(&["a", "b"]),
                ids(&["c", "d"]),
                ids(&["e", "a"]),
                ids(&["b", "c"])
            ]
        );
        // A fleet that fits scores everyone every pass, once.
        assert_eq!(passes(&fleet, 5, 2), [ids(&fleet), ids(&fleet)]);
        assert_eq!(passes(&fleet, 9, 2), [ids(&fleet), ids(&fleet)]);
        assert_eq!(passes(&[], 3, 2), [ids(&[]), ids(&[])]);
    }

    #[test]
    fn the_next_pass_goes_on_after_the_last_scored_or_starts_over_after_a_full_round() {
        let (devices, next) = rotate(ids(&["a", "c"]), Vec::new(), 2);
        assert_eq!((devices, next.as_str()), (ids(&["a", "c"]), "c"));
        let (devices, next) = rotate(ids(&["d"]), ids(&["a"]), 2);
        assert_eq!((devices, next.as_str()), (ids(&["d", "a"]), "a"));
        let (devices, next) = rotate(ids(&["d"]), Vec::new(), 2);
        assert_eq!((devices, next.as_str()), (ids(&["d"]), ""));
    }
}
