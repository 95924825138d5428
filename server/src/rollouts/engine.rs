//! The rollout engine: one leader at a time drives every rollout from the store, on a timer and
//! whenever a device reports. Leadership is an epoch in `engine_leases`, raised by each new
//! leader and checked inside every transition's transaction, so a stale leader's transition
//! changes nothing. On PostgreSQL the leader also holds an advisory lock on a dedicated
//! connection and stops leading the moment that connection fails; on SQLite the one server
//! process is the leader.

use std::sync::Arc;
use std::time::Duration;

use drover_proto::Command;
use tokio::sync::Notify;

use super::plan::{self, DeviceState, Member, Progress, Step};
use super::{Rollout, State, finish, record_event, start_scheduled};
use crate::error::Result;
use crate::leader::Hold;
use crate::mqtt::client::MqttLink;
use crate::on_store;
use crate::store::{Store, now_ms};

/// The lease row's name.
const LEASE: &str = "rollouts";
/// The PostgreSQL advisory lock key of the rollout engine ("drover-r" as bytes).
const ADVISORY_KEY: i64 = 0x6472_6f76_6572_2d72;
/// How often the engine looks at every rollout without being woken.
const TICK: Duration = Duration::from_secs(2);
/// How long a follower waits before trying to lead again.
const FOLLOW: Duration = Duration::from_secs(5);
/// How often a rollback order is repeated to a device that has not confirmed it (ms).
const ROLLBACK_RESEND_MS: i64 = 30_000;
/// How long an offer may go unanswered before `update_available` is sent again (ms): the
/// message can be lost with a broker restart, and devices poll only hourly on their own.
const OFFER_RESEND_MS: i64 = 30_000;
/// Steps one rollout may take in one pass (advance, soak, skip … then offers).
const STEPS_PER_PASS: usize = 8;

/// Checks inside a transaction that `$epoch` is still the leader's; false means another leader
/// took over and the transaction must change nothing.
macro_rules! fenced {
    ($tx:ident, $epoch:expr) => {
        sqlx::query("UPDATE engine_leases SET epoch = epoch WHERE name = 'rollouts' AND epoch = $1")
            .bind($epoch)
            .execute(&mut *$tx)
            .await
            .map(|r| r.rows_affected() == 1)
    };
}
pub(crate) use fenced;

/// Raises the lease epoch; answers the new one.
async fn take_lease(store: &Store, holder: &str) -> Result<i64> {
    let now = now_ms();
    let epoch: i64 = on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO engine_leases (name, epoch, holder, acquired_at) VALUES ($1, 0, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(LEASE).bind(holder).bind(now).execute(&mut *tx).await?;
        let epoch: i64 = sqlx::query_scalar("UPDATE engine_leases SET epoch = epoch + 1, holder = $1, acquired_at = $2 WHERE name = $3 RETURNING epoch")
            .bind(holder).bind(now).bind(LEASE).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(epoch)
    })?;
    Ok(epoch)
}

/// Runs forever: follows until it can lead, then leads until it loses the hold.
/// `instance` names this server process among the replicas (shown as the lease's holder).
pub async fn run(
    store: Store,
    mqtt: MqttLink,
    wake: Arc<Notify>,
    live: crate::live::Live,
    instance: String,
) {
    let holder = format!("pid {} ({instance})", std::process::id());
    loop {
        let hold = match Hold::acquire(&store, ADVISORY_KEY).await {
            Ok(Some(h)) => h,
            Ok(None) => {
                tokio::time::sleep(FOLLOW).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the rollout engine cannot reach the store");
                tokio::time::sleep(FOLLOW).await;
                continue;
            }
        };
        let epoch = match take_lease(&store, &holder).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "the rollout engine cannot take its lease");
                hold.release().await;
                tokio::time::sleep(FOLLOW).await;
                continue;
            }
        };
        tracing::info!(epoch, "leading the rollout engine");
        lead(&store, &mqtt, &wake, &live, hold, epoch).await;
        tracing::warn!(epoch, "no longer leading the rollout engine");
    }
}

async fn lead(
    store: &Store,
    mqtt: &MqttLink,
    wake: &Notify,
    live: &crate::live::Live,
    mut hold: Hold,
    epoch: i64,
) {
    let mut seen = last_event_id(store).await.unwrap_or(0);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = wake.notified() => {}
        }
        if !hold.alive().await {
            return;
        }
        let led = pass(store, mqtt, epoch).await;
        // Every change the engine or an operator makes leaves an event: the pages that show
        // those rollouts are told.
        match events_since(store, seen).await {
            Ok((last, ids)) => {
                seen = last;
                ids.iter().for_each(|id| live.rollout(id));
            }
            Err(e) => tracing::debug!(error = %e, "cannot read new rollout events"),
        }
        match led {
            Ok(true) => {}
            Ok(false) => {
                hold.release().await;
                return;
            }
            Err(e) => tracing::warn!(error = %e, "rollout engine pass failed; retrying"),
        }
    }
}

/// One look at every rollout that needs the engine; false when leadership was lost.
pub async fn pass(store: &Store, mqtt: &MqttLink, epoch: i64) -> Result<bool> {
    let now = now_ms();
    for r in super::in_states(store, "('scheduled','running','rolling_back')").await? {
        let led = match r.state()? {
            State::Scheduled if r.start_at.is_none_or(|t| t <= now) => {
                start_scheduled(store, &r, epoch).await.map(|_| true)
            }
            State::Running => drive(store, mqtt, r, epoch).await,
            State::RollingBack => roll_back(store, mqtt, &r, epoch).await,
            _ => Ok(true),
        };
        match led {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => tracing::warn!(error = %e, "rollout engine step failed"),
        }
    }
    still_leader(store, epoch).await
}

async fn last_event_id(store: &Store) -> Result<i64> {
    let id: Option<i64> = on_store!(store, pool => sqlx::query_scalar(
        "SELECT MAX(id) FROM rollout_events").fetch_one(pool).await)?;
    Ok(id.unwrap_or(0))
}

/// The newest event id and the rollouts with events after `after`.
async fn events_since(store: &Store, after: i64) -> Result<(i64, Vec<String>)> {
    let rows: Vec<(i64, String)> = on_store!(store, pool => sqlx::query_as(
        "SELECT id, rollout_id FROM rollout_events WHERE id > $1 ORDER BY id").bind(after).fetch_all(pool).await)?;
    let last = rows.last().map_or(after, |r| r.0);
    let mut ids: Vec<String> = rows.into_iter().map(|r| r.1).collect();
    ids.sort();
    ids.dedup();
    Ok((last, ids))
}

async fn still_leader(store: &Store, epoch: i64) -> Result<bool> {
    let now: Option<i64> = on_store!(store, pool => sqlx::query_scalar(
        "SELECT epoch FROM engine_leases WHERE name = $1").bind(LEASE).fetch_optional(pool).await)?;
    Ok(now == Some(epoch))
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    device_id: String,
    position: i64,
    state: String,
    reported: Option<String>,
    online: bool,
}

const FINAL_REPORTS: &str = "('succeeded','failed','reverted','rolled_back')";

async fn members(store: &Store, r: &Rollout) -> Result<Vec<Member>> {
    let rows: Vec<MemberRow> = on_store!(store, pool => sqlx::query_as(
        "SELECT rd.device_id, rd.position, rd.state, u.state AS reported, d.online
           FROM rollout_devices rd
           JOIN devices d ON d.id = rd.device_id
           LEFT JOIN device_updates u ON u.device_id = rd.device_id AND u.rollout_id = rd.rollout_id
          WHERE rd.rollout_id = $1 AND rd.phase = $2")
        .bind(&r.id).bind(r.phase).fetch_all(pool).await)?;
    Ok(rows
        .into_iter()
        .map(|m| Member {
            state: DeviceState::from_stored(&m.state, m.reported.as_deref()),
            device_id: m.device_id,
            position: usize::try_from(m.position).unwrap_or(usize::MAX),
            phase: usize::try_from(r.phase).unwrap_or(0),
            online: m.online,
        })
        .collect())
}

async fn in_flight(store: &Store, rollout_id: &str) -> Result<usize> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM rollout_devices rd
           LEFT JOIN device_updates u ON u.device_id = rd.device_id AND u.rollout_id = rd.rollout_id
          WHERE rd.rollout_id = $1 AND rd.state = 'offered'
            AND (u.state IS NULL OR u.state NOT IN {FINAL_REPORTS})"
    ));
    let n: i64 =
        on_store!(store, pool => sqlx::query_scalar(sql).bind(rollout_id).fetch_one(pool).await)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Devices that reported a state short of final: they are installing now.
async fn working(store: &Store, rollout_id: &str) -> Result<usize> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM device_updates WHERE rollout_id = $1 AND state NOT IN {FINAL_REPORTS}"
    ));
    let n: i64 =
        on_store!(store, pool => sqlx::query_scalar(sql).bind(rollout_id).fetch_one(pool).await)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Announces again the offers that online devices left unanswered.
async fn announce_again(store: &Store, mqtt: &MqttLink, r: &Rollout, epoch: i64) -> Result<bool> {
    let now = now_ms();
    let due: Vec<String> = on_store!(store, pool => sqlx::query_scalar(
        "SELECT rd.device_id FROM rollout_devices rd
           JOIN devices d ON d.id = rd.device_id
           LEFT JOIN device_updates u ON u.device_id = rd.device_id AND u.rollout_id = rd.rollout_id
          WHERE rd.rollout_id = $1 AND rd.state = 'offered' AND u.state IS NULL AND d.online
            AND COALESCE(rd.announced_at, 0) <= $2")
        .bind(&r.id).bind(now - OFFER_RESEND_MS).fetch_all(pool).await)?;
    if due.is_empty() {
        return Ok(true);
    }
    let marked = on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        if !fenced!(tx, epoch)? {
            return Ok(false);
        }
        for id in &due {
            sqlx::query("UPDATE rollout_devices SET announced_at = $1 WHERE rollout_id = $2 AND device_id = $3")
                .bind(now).bind(&r.id).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(true)
    })?;
    if marked {
        for id in &due {
            let command = Command::UpdateAvailable {
                rollout_id: r.id.clone(),
            };
            if let Err(e) = mqtt.send_command(id, &command).await {
                tracing::warn!(device_id = %id, error = %e, "cannot announce an offer again");
            }
        }
        tracing::info!(rollout_id = %r.id, devices = due.len(), "announced unanswered offers again");
    }
    Ok(marked)
}

/// Steps a running rollout until it must wait.
async fn drive(store: &Store, mqtt: &MqttLink, mut r: Rollout, epoch: i64) -> Result<bool> {
    if !announce_again(store, mqtt, &r, epoch).await? {
        return Ok(false);
    }
    let phases = r.phase_specs()?;
    let window = r.window()?;
    for _ in 0..STEPS_PER_PASS {
        let now = now_ms();
        let members = members(store, &r).await?;
        let progress = Progress {
            phases: &phases,
            phase: usize::try_from(r.phase).unwrap_or(0),
            threshold_pct: r.failure_threshold_pct,
            max_in_flight: usize::try_from(r.max_in_flight).unwrap_or(1),
            in_flight: in_flight(store, &r.id).await?,
            phase_started_at: r.phase_started_at.unwrap_or(now),
            soak_until: r.soak_until,
            offline_timeout_ms: r.offline_timeout_s.saturating_mul(1000),
            window_open: window.as_ref().is_none_or(|w| w.is_open(now)),
        };
        let step = match plan::next_step(&progress, &members, now) {
            // A soak that ended is judged by the rollout's gates before the phase may end.
            step @ (Step::Advance | Step::Complete) => {
                match judge_gates(store, &r, epoch, now).await? {
                    Gates::Proceed => step,
                    Gates::Halt(reason) => Step::Halt { reason },
                    Gates::Held => return Ok(true),
                    Gates::Lost => return Ok(false),
                }
            }
            step => step,
        };
        let applied = apply(store, mqtt, &r, epoch, &step, now).await?;
        if !applied {
            return Ok(false);
        }
        match step {
            Step::Wait | Step::Offer(_) | Step::Halt { .. } | Step::Complete => return Ok(true),
            Step::Soak { .. } | Step::Advance | Step::SkipOffline(_) => {
                r = super::get(store, &r.id).await?;
                if r.state()? != State::Running {
                    return Ok(true);
                }
            }
        }
    }
    Ok(true)
}

/// What the gates let a phase whose soak ended do.
enum Gates {
    /// End the phase (no gates, or every gate passed).
    Proceed,
    /// A gate failed, or too few samples for too long.
    Halt(String),
    /// Too few samples: the soak was extended.
    Held,
    /// Another leader took over.
    Lost,
}

/// Judges the gates of `r` at the end of its current phase's soak, recording the verdicts.
async fn judge_gates(store: &Store, r: &Rollout, epoch: i64, now: i64) -> Result<Gates> {
    let gates = r.gate_list()?;
    if gates.is_empty() {
        return Ok(Gates::Proceed);
    }
    let phase_no = r.phase + 1;
    let lines = |v: &[super::gates::Verdict]| {
        v.iter()
            .map(super::gates::Verdict::describe)
            .collect::<Vec<_>>()
            .join("; ")
    };
    match super::gates::evaluate(store, r, &gates, now).await? {
        super::gates::Outcome::Pass(v) => {
            super::gates::record(store, &r.id, &v, now).await?;
            record_event(
                store,
                &r.id,
                "gates_passed",
                &format!("phase {phase_no}: {}", lines(&v)),
            )
            .await?;
            Ok(Gates::Proceed)
        }
        super::gates::Outcome::Fail(reason, v) => {
            super::gates::record(store, &r.id, &v, now).await?;
            Ok(Gates::Halt(format!("phase {phase_no} failed its {reason}")))
        }
        super::gates::Outcome::Hold(v) => {
            super::gates::record(store, &r.id, &v, now).await?;
            if r.gate_holds >= super::gates::MAX_HOLDS {
                return Ok(Gates::Halt(format!(
                    "phase {phase_no}: too few samples for its gates after {} more soaks: {}",
                    r.gate_holds,
                    lines(&v)
                )));
            }
            let soak_ms = r
                .phase_specs()?
                .get(usize::try_from(r.phase).unwrap_or(0))
                .map_or(0, |p| i64::try_from(p.soak_seconds).unwrap_or(0))
                .saturating_mul(1000);
            let until = now.saturating_add(soak_ms);
            on_store!(store, pool => {
                let mut tx = pool.begin().await?;
                if !fenced!(tx, epoch)? {
                    return Ok(Gates::Lost);
                }
                sqlx::query("UPDATE rollouts SET soak_until = $1, gate_holds = gate_holds + 1, updated_at = $2 WHERE id = $3 AND state = 'running' AND phase = $4")
                    .bind(until).bind(now).bind(&r.id).bind(r.phase).execute(&mut *tx).await?;
                tx.commit().await
            })?;
            record_event(
                store,
                &r.id,
                "gate_held",
                &format!(
                    "phase {phase_no}: too few samples, soaking again until {} (hold {} of {}): {}",
                    crate::timefmt::rfc3339(until),
                    r.gate_holds + 1,
                    super::gates::MAX_HOLDS,
                    lines(&v)
                ),
            )
            .await?;
            Ok(Gates::Held)
        }
    }
}

/// Writes one step; false when the fence says another leader took over.
async fn apply(
    store: &Store,
    mqtt: &MqttLink,
    r: &Rollout,
    epoch: i64,
    step: &Step,
    now: i64,
) -> Result<bool> {
    let phase_no = r.phase + 1;
    match step {
        Step::Wait => Ok(true),
        Step::Halt { reason } => {
            let to = if r.auto_rollback {
                State::RollingBack
            } else {
                State::Halted
            };
            let changed = transition(
                store,
                epoch,
                "UPDATE rollouts SET state = $1, reason = $2, updated_at = $3 WHERE id = $4 AND state = 'running'",
                to.as_str(),
                reason,
                now,
                &r.id,
            )
            .await?;
            match changed {
                None => return Ok(false),
                Some(0) => {}
                Some(_) => {
                    record_event(store, &r.id, "halted", reason).await?;
                    if r.auto_rollback {
                        record_event(
                            store,
                            &r.id,
                            "rollback_ordered",
                            "automatic: the rollout halted",
                        )
                        .await?;
                    }
                }
            }
            Ok(true)
        }
        Step::Offer(ids) => {
            let offered = offer(store, r, epoch, ids, now).await?;
            let Some(offered) = offered else {
                return Ok(false);
            };
            if !offered.is_empty() {
                record_event(
                    store,
                    &r.id,
                    "offered",
                    &format!(
                        "phase {phase_no}: offered to {} device{}",
                        offered.len(),
                        if offered.len() == 1 { "" } else { "s" }
                    ),
                )
                .await?;
            }
            for id in &offered {
                let command = Command::UpdateAvailable {
                    rollout_id: r.id.clone(),
                };
                // Devices also poll for offers; a lost message only delays this one.
                if let Err(e) = mqtt.send_command(id, &command).await {
                    tracing::warn!(device_id = %id, error = %e, "cannot announce an offer");
                }
            }
            Ok(true)
        }
        Step::SkipOffline(ids) => {
            let detail = format!(
                "offline for more than {} s while its phase ran",
                r.offline_timeout_s
            );
            let done = on_store!(store, pool => {
                let mut tx = pool.begin().await?;
                if !fenced!(tx, epoch)? {
                    return Ok(false);
                }
                for id in ids {
                    sqlx::query("UPDATE rollout_devices SET state = 'skipped', detail = $1, updated_at = $2 WHERE rollout_id = $3 AND device_id = $4 AND state = 'pending'")
                        .bind(&detail).bind(now).bind(&r.id).bind(id).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok::<_, sqlx::Error>(true)
            })?;
            if done {
                record_event(
                    store,
                    &r.id,
                    "skipped",
                    &format!(
                        "phase {phase_no}: {} offline devices skipped ({detail})",
                        ids.len()
                    ),
                )
                .await?;
            }
            Ok(done)
        }
        Step::Soak { until } => {
            let changed = on_store!(store, pool => {
                let mut tx = pool.begin().await?;
                if !fenced!(tx, epoch)? {
                    return Ok(false);
                }
                let n = sqlx::query("UPDATE rollouts SET soak_until = $1, updated_at = $2 WHERE id = $3 AND state = 'running' AND soak_until IS NULL")
                    .bind(*until).bind(now).bind(&r.id).execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                Ok::<_, sqlx::Error>(Some(n))
            })?;
            if changed == Some(1) {
                record_event(
                    store,
                    &r.id,
                    "soaking",
                    &format!(
                        "phase {phase_no} finished; soaking until {}",
                        crate::timefmt::rfc3339(*until)
                    ),
                )
                .await?;
            }
            Ok(changed.is_some())
        }
        Step::Advance => {
            let done = on_store!(store, pool => {
                let mut tx = pool.begin().await?;
                if !fenced!(tx, epoch)? {
                    return Ok(false);
                }
                let n = sqlx::query("UPDATE rollouts SET phase = phase + 1, phase_started_at = $1, soak_until = NULL, gate_holds = 0, updated_at = $1 WHERE id = $2 AND state = 'running' AND phase = $3")
                    .bind(now).bind(&r.id).bind(r.phase).execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                Ok::<_, sqlx::Error>(n == 1)
            })?;
            if done {
                record_event(
                    store,
                    &r.id,
                    "phase_started",
                    &format!("phase {} of {}", phase_no + 1, r.phase_specs()?.len()),
                )
                .await?;
            }
            Ok(true)
        }
        Step::Complete => {
            finish(store, r, State::Completed, "every phase finished", epoch).await?;
            still_leader(store, epoch).await
        }
    }
}

/// A fenced single-statement transition with binds `$1`…`$4`: answers the rows changed, or
/// `None` when another leader holds the lease.
async fn transition(
    store: &Store,
    epoch: i64,
    sql: &'static str,
    a: &str,
    b: &str,
    c: i64,
    id: &str,
) -> Result<Option<u64>> {
    Ok(on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        if !fenced!(tx, epoch)? {
            return Ok(None);
        }
        let n = sqlx::query(sql).bind(a).bind(b).bind(c).bind(id).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok::<_, sqlx::Error>(Some(n))
    })?)
}

/// Marks `ids` offered (only those still pending) and records their offers, fenced; answers the
/// devices offered now, or `None` when another leader holds the lease.
async fn offer(
    store: &Store,
    r: &Rollout,
    epoch: i64,
    ids: &[String],
    now: i64,
) -> Result<Option<Vec<String>>> {
    Ok(on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        if !fenced!(tx, epoch)? {
            return Ok(None);
        }
        // Pausing (or any control) may have landed since the engine read the rollout. This
        // no-op update checks the state and holds the row until commit, so once a pause is
        // answered no offer follows it.
        let running = sqlx::query("UPDATE rollouts SET state = state WHERE id = $1 AND state = 'running'")
            .bind(&r.id).execute(&mut *tx).await?.rows_affected() == 1;
        if !running {
            return Ok(Some(Vec::new()));
        }
        let mut offered = Vec::new();
        for id in ids {
            // A health report names what is installed; without one, a first install is unknown.
            // It may predate an install that another rollout just finished, so such a report
            // counts as well.
            let n = sqlx::query("UPDATE rollout_devices SET state = 'offered', offered_at = $1, announced_at = $1, updated_at = $1,
                       first_install = (EXISTS (SELECT 1 FROM devices d WHERE d.id = $3 AND d.health_at > 0)
                           AND NOT EXISTS (SELECT 1 FROM device_versions v WHERE v.device_id = $3 AND v.name = $4)
                           AND NOT EXISTS (SELECT 1 FROM device_updates u JOIN rollouts o ON o.id = u.rollout_id
                                            WHERE u.device_id = $3 AND o.bundle_name = $4 AND u.rollout_id <> $2
                                              AND u.state IN ('succeeded','rolled_back')))
                     WHERE rollout_id = $2 AND device_id = $3 AND state = 'pending'")
                .bind(now).bind(&r.id).bind(id).bind(&r.bundle_name).execute(&mut *tx).await?.rows_affected();
            if n == 1 {
                sqlx::query("INSERT INTO device_offers (device_id, bundle_id, rollout_id, offered_at) VALUES ($1, $2, $3, $4)")
                    .bind(id).bind(&r.bundle_id).bind(&r.id).bind(now).execute(&mut *tx).await?;
                offered.push(id.clone());
            }
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(Some(offered))
    })?)
}

/// Counts of the devices a rollback ordered back.
#[derive(Debug, Clone, Copy)]
struct RolledBack {
    /// Ordered back and waited for.
    awaited: usize,
    /// Of those, the ones that never confirmed within the offline timeout.
    unconfirmed: usize,
    /// Kept the rollout's release: nothing earlier was installed there.
    first_installs: usize,
}

/// Why a rollback of `bundle` ("NAME VERSION") ended.
fn rolled_back_reason(bundle: &str, offline_timeout_s: i64, n: RolledBack) -> String {
    let kept = format!(
        "{} devices keep {bundle}, their first install of it",
        n.first_installs
    );
    let late = format!(
        "{} devices did not confirm their rollback within {offline_timeout_s} s",
        n.unconfirmed
    );
    match (n.unconfirmed, n.first_installs) {
        (0, 0) => "every device the rollout updated was rolled back".to_owned(),
        (0, _) if n.awaited == 0 => format!("nothing to roll back: {kept}"),
        (0, _) => format!(
            "every device the rollout updated that kept an earlier release was rolled back; {kept}"
        ),
        (_, 0) => late,
        _ => format!("{late}; {kept}"),
    }
}

/// `rolling_back`: orders (and repeats) a rollback on every device that succeeded, and ends the
/// rollout once none is left updated and none is still installing. A device where the rollout
/// made the first install of its bundle is ordered once and not waited for: it kept nothing
/// earlier to return to, and its agent refuses.
async fn roll_back(store: &Store, mqtt: &MqttLink, r: &Rollout, epoch: i64) -> Result<bool> {
    let now = now_ms();
    let rows: Vec<(String, Option<i64>, bool)> = on_store!(store, pool => sqlx::query_as(
        "SELECT rd.device_id, rd.rollback_at, rd.first_install FROM rollout_devices rd
           JOIN device_updates u ON u.device_id = rd.device_id AND u.rollout_id = rd.rollout_id
          WHERE rd.rollout_id = $1 AND u.state = 'succeeded'")
        .bind(&r.id).fetch_all(pool).await)?;
    let give_up = r.offline_timeout_s.saturating_mul(1000);
    let due: Vec<(&str, bool)> = rows
        .iter()
        .filter(|(_, at, first)| match at {
            None => true,
            Some(t) => !first && now - t >= ROLLBACK_RESEND_MS && now - t < give_up,
        })
        .map(|(id, _, first)| (id.as_str(), *first))
        .collect();
    if !due.is_empty() {
        let kept = format!(
            "kept {}: the rollout installed the first {} here, with nothing earlier to return to",
            r.bundle_version, r.bundle_name
        );
        let marked = on_store!(store, pool => {
            let mut tx = pool.begin().await?;
            if !fenced!(tx, epoch)? {
                return Ok(false);
            }
            for (id, first) in &due {
                sqlx::query("UPDATE rollout_devices SET rollback_at = COALESCE(rollback_at, $1), updated_at = $1,
                                    detail = CASE WHEN $4 THEN $5 ELSE detail END
                              WHERE rollout_id = $2 AND device_id = $3")
                    .bind(now).bind(&r.id).bind(*id).bind(*first).bind(&kept).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(true)
        })?;
        if !marked {
            return Ok(false);
        }
        for (id, _) in &due {
            let command = Command::Rollback {
                rollout_id: r.id.clone(),
            };
            if let Err(e) = mqtt.send_command(id, &command).await {
                tracing::warn!(device_id = %id, error = %e, "cannot order a rollback");
            }
        }
        // Resends are not events; the first order per device is counted once.
        let first = rows.iter().filter(|(_, at, _)| at.is_none()).count();
        if first > 0 {
            record_event(
                store,
                &r.id,
                "rollback_sent",
                &format!("rollback ordered on {first} devices"),
            )
            .await?;
        }
    }
    let awaited: Vec<Option<i64>> = rows
        .iter()
        .filter(|(_, _, first)| !first)
        .map(|(_, at, _)| *at)
        .collect();
    let unconfirmed = awaited
        .iter()
        .filter(|at| at.is_some_and(|t| now - t >= give_up))
        .count();
    // Offers not yet taken were withdrawn with the rollback; only devices already working on
    // the update can still finish it (and then get their rollback too).
    if awaited.len() == unconfirmed && working(store, &r.id).await? == 0 {
        let reason = rolled_back_reason(
            &format!("{} {}", r.bundle_name, r.bundle_version),
            r.offline_timeout_s,
            RolledBack {
                awaited: awaited.len(),
                unconfirmed,
                first_installs: rows.len() - awaited.len(),
            },
        );
        finish(store, r, State::RolledBack, &reason, epoch).await?;
    }
    still_leader(store, epoch).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_says_who_went_back_who_never_answered_and_who_had_nothing_to_return_to() {
        let reason = |awaited, unconfirmed, first_installs| {
            rolled_back_reason(
                "detector 1.0.0",
                3600,
                RolledBack {
                    awaited,
                    unconfirmed,
                    first_installs,
                },
            )
        };
        assert_eq!(
            reason(4, 0, 0),
            "every device the rollout updated was rolled back"
        );
        assert_eq!(
            reason(0, 0, 4),
            "nothing to roll back: 4 devices keep detector 1.0.0, their first install of it"
        );
        assert_eq!(
            reason(2, 0, 3),
            "every device the rollout updated that kept an earlier release was rolled back; \
             3 devices keep detector 1.0.0, their first install of it"
        );
        assert_eq!(
            reason(2, 1, 0),
            "1 devices did not confirm their rollback within 3600 s"
        );
        assert_eq!(
            reason(2, 2, 1),
            "2 devices did not confirm their rollback within 3600 s; \
             1 devices keep detector 1.0.0, their first install of it"
        );
    }
}
