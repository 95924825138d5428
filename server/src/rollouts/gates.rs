//! Metric gates: a phase whose updated devices perform worse than the rest
//! of the target halts the rollout, exactly like failed installs.
//!
//! At the end of a phase's soak each gate compares the per-device means of
//! its metric over the soak: the phase's devices that updated, against the
//! target's devices not yet offered (the control group), sampled in
//! snapshot order. Where no control group is left (the last phase), the same
//! devices are compared with their own window of the soak's length before
//! the phase began. A group's value is the mean, or the 95th percentile by
//! nearest rank, of its devices' means (read from the raw readings for
//! windows under ten minutes, else from the per-minute rollups). Too few
//! readings in either group holds the phase for another soak, and after
//! three such holds halts it.

use serde::{Deserialize, Serialize};

use super::Rollout;
use crate::error::{Error, Result};
use crate::on_store;
use crate::store::Store;
use crate::telemetry::ingest::BUCKET_MS;

/// Holds a phase may take for too few samples before it halts.
pub const MAX_HOLDS: i64 = 3;

/// Devices sampled from each group, in snapshot order (enough for a stable mean).
const SAMPLE_DEVICES: i64 = 1000;

/// One gate, as `POST /rollouts` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// The metric (a reading's metric name).
    pub metric: String,
    /// `mean` or `p95` of the per-device means.
    pub stat: Stat,
    /// Fails when the updated devices' value is more than this percent above the control's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_increase_pct: Option<f64>,
    /// Fails when it is more than this percent below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_decrease_pct: Option<f64>,
    /// Readings each group needs before the gate judges.
    pub min_samples: i64,
}

/// Which statistic of the per-device means a gate compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stat {
    /// The mean.
    Mean,
    /// The 95th percentile (nearest rank).
    P95,
}

impl Stat {
    fn of(self, values: &[f64]) -> Option<f64> {
        if values.is_empty() {
            return None;
        }
        match self {
            Stat::Mean => Some(values.iter().sum::<f64>() / values.len() as f64),
            Stat::P95 => {
                let mut v = values.to_vec();
                v.sort_by(f64::total_cmp);
                let rank = ((0.95 * v.len() as f64).ceil() as usize).clamp(1, v.len());
                v.get(rank - 1).copied()
            }
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Stat::Mean => "mean",
            Stat::P95 => "p95",
        }
    }
}

/// Checks the gates of a new rollout; every phase must soak, since a gate judges the soak.
pub fn parse(value: Option<&serde_json::Value>, phases: &[super::PhaseSpec]) -> Result<Vec<Gate>> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = value.as_array().ok_or_else(|| {
        Error::invalid(
            "gates",
            "give a list of {metric, stat, max_increase_pct|max_decrease_pct, min_samples}",
        )
    })?;
    if list.len() > 8 {
        return Err(Error::invalid("gates", "give at most 8 gates"));
    }
    let mut gates = Vec::with_capacity(list.len());
    for (i, g) in list.iter().enumerate() {
        let gate: Gate = serde_json::from_value(g.clone())
            .map_err(|e| Error::invalid(format!("gates[{i}]"), e.to_string()))?;
        let name_ok = !gate.metric.is_empty()
            && gate.metric.len() <= 64
            && gate
                .metric
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return Err(Error::invalid(
                format!("gates[{i}].metric"),
                "use a metric name: 1 to 64 letters, digits, '_', '.' or '-'",
            ));
        }
        let limit_ok = |l: Option<f64>| l.is_none_or(|x| x.is_finite() && x >= 0.0);
        if gate.max_increase_pct.is_none() && gate.max_decrease_pct.is_none() {
            return Err(Error::invalid(
                format!("gates[{i}]"),
                "give max_increase_pct or max_decrease_pct",
            ));
        }
        if !limit_ok(gate.max_increase_pct) || !limit_ok(gate.max_decrease_pct) {
            return Err(Error::invalid(
                format!("gates[{i}]"),
                "limits are percentages of 0 or more",
            ));
        }
        if !(1..=10_000_000).contains(&gate.min_samples) {
            return Err(Error::invalid(
                format!("gates[{i}].min_samples"),
                "must be from 1 to 10000000",
            ));
        }
        gates.push(gate);
    }
    if !gates.is_empty()
        && let Some(i) = phases.iter().position(|p| p.soak_seconds == 0)
    {
        return Err(Error::invalid(
            format!("phases[{i}].soak_seconds"),
            "a rollout with gates needs a soak on every phase: gates judge the soak",
        ));
    }
    Ok(gates)
}

/// What one gate found.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    /// The phase judged (from 1).
    pub phase: i64,
    /// The metric.
    pub metric: String,
    /// `mean` or `p95`.
    pub stat: String,
    /// The updated devices' value.
    pub updated: Option<f64>,
    /// Readings behind it.
    pub updated_samples: i64,
    /// Devices behind it.
    pub updated_devices: i64,
    /// The comparison's value (control group or the same devices before).
    pub baseline: Option<f64>,
    /// Readings behind it.
    pub baseline_samples: i64,
    /// Devices behind it.
    pub baseline_devices: i64,
    /// `control` (devices not yet updated) or `before` (the same devices before the phase).
    pub baseline_kind: String,
    /// Change of the updated value against the baseline, percent.
    pub change_pct: Option<f64>,
    /// The limit, as written ("+20%", "-10%").
    pub limit: String,
    /// `pass`, `fail` or `too_few_samples`.
    pub outcome: String,
}

impl Verdict {
    /// One line for events and halt reasons.
    pub fn describe(&self) -> String {
        let num = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.4}"));
        format!(
            "gate {} {}: updated {} ({} readings, {} devices) vs {} {} ({} readings, {} devices), change {}, limit {}",
            self.metric,
            self.stat,
            num(self.updated),
            self.updated_samples,
            self.updated_devices,
            self.baseline_kind,
            num(self.baseline),
            self.baseline_samples,
            self.baseline_devices,
            self.change_pct
                .map_or("n/a".to_string(), |c| format!("{c:+.1}%")),
            self.limit,
        )
    }
}

/// Per-device means of one group and the readings behind them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Group {
    /// Each device's mean.
    pub means: Vec<f64>,
    /// Readings in all.
    pub samples: i64,
}

/// Judges one gate on two groups (pure: the unit tests drive it).
pub fn judge(gate: &Gate, phase: i64, updated: &Group, baseline: &Group, kind: &str) -> Verdict {
    let u = gate.stat.of(&updated.means);
    let b = gate.stat.of(&baseline.means);
    let change_pct = match (u, b) {
        (Some(u), Some(b)) if b != 0.0 => Some((u - b) / b.abs() * 100.0),
        (Some(0.0), Some(_)) => Some(0.0),
        _ => None,
    };
    let enough = updated.samples >= gate.min_samples && baseline.samples >= gate.min_samples;
    let failed = change_pct.is_some_and(|c| {
        gate.max_increase_pct.is_some_and(|m| c > m)
            || gate.max_decrease_pct.is_some_and(|m| -c > m)
    }) || (enough && change_pct.is_none() && u != b);
    let mut limits = Vec::new();
    if let Some(m) = gate.max_increase_pct {
        limits.push(format!("+{m}%"));
    }
    if let Some(m) = gate.max_decrease_pct {
        limits.push(format!("-{m}%"));
    }
    Verdict {
        phase,
        metric: gate.metric.clone(),
        stat: gate.stat.as_str().into(),
        updated: u,
        updated_samples: updated.samples,
        updated_devices: updated.means.len() as i64,
        baseline: b,
        baseline_samples: baseline.samples,
        baseline_devices: baseline.means.len() as i64,
        baseline_kind: kind.into(),
        change_pct,
        limit: limits.join(" / "),
        outcome: if !enough {
            "too_few_samples"
        } else if failed {
            "fail"
        } else {
            "pass"
        }
        .into(),
    }
}

/// What the gates say at the end of a phase's soak.
#[derive(Debug)]
pub enum Outcome {
    /// Every gate passed (or there are none).
    Pass(Vec<Verdict>),
    /// A gate failed: halt with this reason.
    Fail(String, Vec<Verdict>),
    /// Too few samples: soak again.
    Hold(Vec<Verdict>),
}

/// Windows at least this long are read from the per-minute rollups (a partial
/// minute at the start is left out); shorter ones from the raw readings.
const ROLLUPS_FROM_MS: i64 = 10 * 60_000;

/// The per-device means of `metric` over [from, to) for the devices `members` selects.
async fn group(
    store: &Store,
    metric: &str,
    members: &str,
    binds: (&str, i64),
    from: i64,
    to: i64,
) -> Result<Group> {
    let metric_id: Option<i64> = on_store!(store, pool => sqlx::query_scalar(
        "SELECT id FROM metric_names WHERE name = $1").bind(metric).fetch_optional(pool).await)?;
    let Some(metric_id) = metric_id else {
        return Ok(Group::default());
    };
    let (sql, start) = if to - from >= ROLLUPS_FROM_MS {
        // Whole buckets only: a bucket straddling the start may hold readings from before.
        let start = from + (BUCKET_MS - from.rem_euclid(BUCKET_MS)) % BUCKET_MS;
        (
            format!(
                "SELECT t.device_id, SUM(t.sum), SUM(t.count) FROM telemetry_rollups t
                  WHERE t.metric_id = $3 AND t.bucket >= $4 AND t.bucket < $5
                    AND t.device_id IN ({members})
                  GROUP BY t.device_id"
            ),
            start,
        )
    } else {
        let value = crate::telemetry::metric_value(store, "r", "$3");
        (
            format!(
                "SELECT r.device_id, SUM({value}), COUNT({value}) FROM telemetry_readings r
                  WHERE r.ts >= $4 AND r.ts < $5 AND {value} IS NOT NULL
                    AND r.device_id IN ({members})
                  GROUP BY r.device_id"
            ),
            from,
        )
    };
    let rows: Vec<(String, f64, i64)> = on_store!(store, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(binds.0).bind(binds.1).bind(metric_id).bind(start).bind(to).bind(SAMPLE_DEVICES)
        .fetch_all(pool).await)?;
    Ok(Group {
        means: rows
            .iter()
            .filter(|r| r.2 > 0)
            .map(|r| r.1 / r.2 as f64)
            .collect(),
        samples: rows.iter().map(|r| r.2).sum(),
    })
}

/// The phase's devices that updated (succeeded), first in snapshot order.
const UPDATED: &str = "SELECT rd.device_id FROM rollout_devices rd
    JOIN device_updates u ON u.device_id = rd.device_id AND u.rollout_id = rd.rollout_id
    WHERE rd.rollout_id = $1 AND rd.phase = $2 AND u.state = 'succeeded'
    ORDER BY rd.position LIMIT $6";

/// Target devices of later phases not offered yet, first in snapshot order.
const CONTROL: &str = "SELECT rd.device_id FROM rollout_devices rd
    WHERE rd.rollout_id = $1 AND rd.phase > $2 AND rd.state = 'pending'
    ORDER BY rd.position LIMIT $6";

/// Judges every gate of `r` at the end of its current phase's soak.
pub async fn evaluate(store: &Store, r: &Rollout, gates: &[Gate], now: i64) -> Result<Outcome> {
    let soak_ms = r
        .phase_specs()?
        .get(usize::try_from(r.phase).unwrap_or(0))
        .map_or(0, |p| i64::try_from(p.soak_seconds).unwrap_or(0))
        .saturating_mul(1000);
    // The soak, stretched by each hold.
    let from = now - soak_ms.saturating_mul(r.gate_holds + 1);
    let phase_started = r.phase_started_at.unwrap_or(from);
    let mut verdicts = Vec::new();
    for gate in gates {
        let updated = group(store, &gate.metric, UPDATED, (&r.id, r.phase), from, now).await?;
        let control = group(store, &gate.metric, CONTROL, (&r.id, r.phase), from, now).await?;
        let has_control: bool = on_store!(store, pool => sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM rollout_devices WHERE rollout_id = $1 AND phase > $2 AND state = 'pending')")
            .bind(&r.id).bind(r.phase).fetch_one(pool).await)?;
        let (baseline, kind) = if has_control {
            (control, "control")
        } else {
            let before = group(
                store,
                &gate.metric,
                UPDATED,
                (&r.id, r.phase),
                phase_started - soak_ms,
                phase_started,
            )
            .await?;
            (before, "before")
        };
        verdicts.push(judge(gate, r.phase + 1, &updated, &baseline, kind));
    }
    if let Some(v) = verdicts.iter().find(|v| v.outcome == "fail") {
        return Ok(Outcome::Fail(v.describe(), verdicts));
    }
    if verdicts.iter().any(|v| v.outcome == "too_few_samples") {
        return Ok(Outcome::Hold(verdicts));
    }
    Ok(Outcome::Pass(verdicts))
}

/// Keeps the verdicts of a judgement (the rollout's page and API show the latest per gate).
pub async fn record(store: &Store, rollout_id: &str, verdicts: &[Verdict], now: i64) -> Result<()> {
    for v in verdicts {
        let json =
            serde_json::to_string(v).map_err(|e| Error::Internal(format!("verdict: {e}")))?;
        on_store!(store, pool => sqlx::query(
            "INSERT INTO rollout_gate_verdicts (rollout_id, phase, metric, outcome, verdict, decided_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(rollout_id).bind(v.phase).bind(&v.metric).bind(&v.outcome).bind(&json).bind(now)
            .execute(pool).await.map(|_| ()))?;
    }
    Ok(())
}

/// The latest verdict of each (phase, gate), phase order.
pub async fn verdicts(store: &Store, rollout_id: &str) -> Result<Vec<Verdict>> {
    let rows: Vec<String> = on_store!(store, pool => sqlx::query_scalar(
        "SELECT v.verdict FROM rollout_gate_verdicts v
          WHERE v.rollout_id = $1 AND v.id = (SELECT MAX(w.id) FROM rollout_gate_verdicts w
                                               WHERE w.rollout_id = v.rollout_id AND w.phase = v.phase AND w.metric = v.metric)
          ORDER BY v.phase, v.id").bind(rollout_id).fetch_all(pool).await)?;
    Ok(rows
        .iter()
        .filter_map(|s| serde_json::from_str::<StoredVerdict>(s).ok())
        .map(Verdict::from)
        .collect())
}

/// A verdict as stored (the same fields; `Verdict` only serializes).
#[derive(Deserialize)]
struct StoredVerdict {
    phase: i64,
    metric: String,
    stat: String,
    updated: Option<f64>,
    updated_samples: i64,
    updated_devices: i64,
    baseline: Option<f64>,
    baseline_samples: i64,
    baseline_devices: i64,
    baseline_kind: String,
    change_pct: Option<f64>,
    limit: String,
    outcome: String,
}

impl From<StoredVerdict> for Verdict {
    fn from(s: StoredVerdict) -> Verdict {
        Verdict {
            phase: s.phase,
            metric: s.metric,
            stat: s.stat,
            updated: s.updated,
            updated_samples: s.updated_samples,
            updated_devices: s.updated_devices,
            baseline: s.baseline,
            baseline_samples: s.baseline_samples,
            baseline_devices: s.baseline_devices,
            baseline_kind: s.baseline_kind,
            change_pct: s.change_pct,
            limit: s.limit,
            outcome: s.outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(inc: Option<f64>, dec: Option<f64>, min: i64, stat: Stat) -> Gate {
        Gate {
            metric: "inference_ms".into(),
            stat,
            max_increase_pct: inc,
            max_decrease_pct: dec,
            min_samples: min,
        }
    }

    fn g(means: &[f64], samples: i64) -> Group {
        Group {
            means: means.to_vec(),
            samples,
        }
    }

    #[test]
    fn a_fifty_percent_slower_model_fails_a_twenty_percent_gate() {
        let v = judge(
            &gate(Some(20.0), None, 10, Stat::Mean),
            1,
            &g(&[150.0], 30),
            &g(&[100.0, 98.0, 102.0], 90),
            "control",
        );
        assert_eq!(v.outcome, "fail");
        assert!((v.change_pct.unwrap() - 50.0).abs() < 1e-9);
        assert!(v.describe().contains("+50.0%"), "{}", v.describe());
        let ok = judge(
            &gate(Some(20.0), None, 10, Stat::Mean),
            1,
            &g(&[103.0], 30),
            &g(&[100.0], 30),
            "control",
        );
        assert_eq!(ok.outcome, "pass");
    }

    #[test]
    fn decreases_are_judged_by_their_own_limit() {
        let v = judge(
            &gate(None, Some(5.0), 1, Stat::Mean),
            2,
            &g(&[0.80], 10),
            &g(&[0.90], 10),
            "before",
        );
        assert_eq!(v.outcome, "fail", "confidence fell 11 %");
        let v = judge(
            &gate(None, Some(5.0), 1, Stat::Mean),
            2,
            &g(&[0.95], 10),
            &g(&[0.90], 10),
            "before",
        );
        assert_eq!(v.outcome, "pass", "a rise never fails a decrease limit");
    }

    #[test]
    fn too_few_samples_hold_rather_than_judge() {
        let v = judge(
            &gate(Some(20.0), None, 100, Stat::Mean),
            1,
            &g(&[500.0], 5),
            &g(&[100.0], 500),
            "control",
        );
        assert_eq!(v.outcome, "too_few_samples");
        let v = judge(
            &gate(Some(20.0), None, 1, Stat::Mean),
            1,
            &g(&[], 0),
            &g(&[100.0], 5),
            "control",
        );
        assert_eq!(v.outcome, "too_few_samples");
    }

    #[test]
    fn p95_is_the_nearest_rank_of_the_device_means() {
        let means: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(Stat::P95.of(&means), Some(19.0));
        assert_eq!(Stat::P95.of(&[7.0]), Some(7.0));
        assert_eq!(Stat::Mean.of(&[1.0, 2.0, 3.0]), Some(2.0));
        assert_eq!(Stat::Mean.of(&[]), None);
    }

    #[test]
    fn bad_gates_name_their_field() {
        let phases = [super::super::PhaseSpec {
            percent: 100.0,
            soak_seconds: 60,
        }];
        let bad = |v: serde_json::Value| parse(Some(&v), &phases).unwrap_err().to_string();
        assert!(bad(serde_json::json!({"metric": "x"})).contains("gates"));
        assert!(
            bad(serde_json::json!([{"metric": "<b>", "stat": "mean", "max_increase_pct": 1, "min_samples": 1}]))
                .contains("gates[0].metric")
        );
        assert!(
            bad(serde_json::json!([{"metric": "m", "stat": "median", "max_increase_pct": 1, "min_samples": 1}]))
                .contains("gates[0]")
        );
        assert!(
            bad(serde_json::json!([{"metric": "m", "stat": "mean", "min_samples": 1}]))
                .contains("max_increase_pct or max_decrease_pct")
        );
        assert!(
            bad(serde_json::json!([{"metric": "m", "stat": "mean", "max_increase_pct": 1, "min_samples": 0}]))
                .contains("gates[0].min_samples")
        );
        let no_soak = [super::super::PhaseSpec {
            percent: 100.0,
            soak_seconds: 0,
        }];
        let e = parse(
            Some(&serde_json::json!([{"metric": "m", "stat": "mean", "max_increase_pct": 1, "min_samples": 1}])),
            &no_soak,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("phases[0].soak_seconds"), "{e}");
        assert!(parse(None, &no_soak).unwrap().is_empty());
    }
}
