//! The rollout decisions as pure functions over plain data: which phase each device of the
//! snapshot belongs to, whether a phase crossed its failure threshold, which devices to offer
//! next, and whether a phase may advance. The engine reads the store into these types, asks,
//! and writes the answer; everything here is tested without I/O.

use serde::{Deserialize, Serialize};

/// One phase as the operator gave it: a cumulative share of the target and a soak time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhaseSpec {
    /// Cumulative percent of the target (1 to 100) that has the update by the phase's end.
    pub percent: f64,
    /// Seconds to wait after the phase's last device finished before the next phase starts.
    #[serde(default)]
    pub soak_seconds: u64,
}

/// Where each phase ends in the snapshot (exclusive, cumulative): the percentages are of the
/// whole target, rounded up, and every phase gets at least one device while any are left.
/// The last phase always ends at `total`.
pub fn phase_ends(total: usize, phases: &[PhaseSpec]) -> Vec<usize> {
    let mut ends = Vec::with_capacity(phases.len());
    let mut last = 0usize;
    for (i, phase) in phases.iter().enumerate() {
        let share = (phase.percent.clamp(0.0, 100.0) / 100.0 * total as f64).ceil() as usize;
        let mut end = share.max(last + 1).min(total);
        if i + 1 == phases.len() {
            end = total;
        }
        ends.push(end);
        last = end;
    }
    ends
}

/// The phase of the device at `position` in the snapshot.
pub fn phase_of(position: usize, ends: &[usize]) -> usize {
    ends.iter()
        .position(|end| position < *end)
        .unwrap_or(ends.len().saturating_sub(1))
}

/// A device's place in a rollout, as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Not offered yet.
    Pending,
    /// Offered; no report yet.
    Offered,
    /// Left out (already on the version, in another rollout, or offline too long).
    Skipped,
    /// Reported and working on it (downloading … committing, deferred).
    Working,
    /// Succeeded.
    Succeeded,
    /// Failed (nothing changed).
    Failed,
    /// Reverted by the device.
    Reverted,
    /// Rolled back on the server's order.
    RolledBack,
}

impl DeviceState {
    /// The state for a stored rollout-device state and the device's last report (if any).
    pub fn from_stored(stored: &str, reported: Option<&str>) -> DeviceState {
        match reported {
            Some("succeeded") => DeviceState::Succeeded,
            Some("failed") => DeviceState::Failed,
            Some("reverted") => DeviceState::Reverted,
            Some("rolled_back") => DeviceState::RolledBack,
            Some(_) => DeviceState::Working,
            None => match stored {
                "offered" => DeviceState::Offered,
                "skipped" => DeviceState::Skipped,
                _ => DeviceState::Pending,
            },
        }
    }

    /// Whether the device is done with this rollout.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeviceState::Skipped
                | DeviceState::Succeeded
                | DeviceState::Failed
                | DeviceState::Reverted
                | DeviceState::RolledBack
        )
    }

    /// Whether the device counts against the failure threshold.
    pub fn is_failure(self) -> bool {
        matches!(self, DeviceState::Failed | DeviceState::Reverted)
    }

    /// Whether an offer is out and not answered with a final state.
    pub fn in_flight(self) -> bool {
        matches!(self, DeviceState::Offered | DeviceState::Working)
    }
}

/// One device of the snapshot, with what the engine needs to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The device.
    pub device_id: String,
    /// Its place in the snapshot.
    pub position: usize,
    /// Its phase.
    pub phase: usize,
    /// Where it stands.
    pub state: DeviceState,
    /// Whether it is online now.
    pub online: bool,
}

/// Whether `failures` among `attempted` devices exceed `threshold_pct` percent of them.
pub fn threshold_crossed(failures: usize, attempted: usize, threshold_pct: f64) -> bool {
    failures > 0 && failures as f64 > threshold_pct / 100.0 * attempted as f64
}

/// Counts of one phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseCount {
    /// Devices in the phase.
    pub devices: usize,
    /// Offered at least once (not pending, not skipped).
    pub attempted: usize,
    /// Failed or reverted.
    pub failures: usize,
    /// Done with the rollout (final or skipped).
    pub finished: usize,
}

/// The counts of `phase`.
pub fn count_phase(members: &[Member], phase: usize) -> PhaseCount {
    let mut c = PhaseCount::default();
    for m in members.iter().filter(|m| m.phase == phase) {
        c.devices += 1;
        if !matches!(m.state, DeviceState::Pending | DeviceState::Skipped) {
            c.attempted += 1;
        }
        if m.state.is_failure() {
            c.failures += 1;
        }
        if m.state.is_final() {
            c.finished += 1;
        }
    }
    c
}

/// What a running rollout should do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Stop offering: the phase crossed its failure threshold.
    Halt {
        /// Why, for the operator.
        reason: String,
    },
    /// Offer these devices (ids, in snapshot order).
    Offer(Vec<String>),
    /// Skip these pending devices: offline past the rollout's offline timeout.
    SkipOffline(Vec<String>),
    /// Every device of the phase finished: start its soak (if not started) or wait for it.
    Soak {
        /// When the soak ends (ms).
        until: i64,
    },
    /// The soak is over: move to the next phase.
    Advance,
    /// The last phase finished and soaked: the rollout is complete.
    Complete,
    /// Nothing to do until a report, a device coming online, or the next tick.
    Wait,
}

/// A running rollout's settings and progress, as the decision needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress<'a> {
    /// The phases.
    pub phases: &'a [PhaseSpec],
    /// The current phase.
    pub phase: usize,
    /// Failure threshold, percent.
    pub threshold_pct: f64,
    /// Most offers out at once.
    pub max_in_flight: usize,
    /// Offers out now, over every phase.
    pub in_flight: usize,
    /// When the current phase started (ms).
    pub phase_started_at: i64,
    /// When the current phase's soak ends, once every device of it finished.
    pub soak_until: Option<i64>,
    /// Pending devices offline this long after the phase started are skipped (ms).
    pub offline_timeout_ms: i64,
    /// Whether offers may go out now (maintenance window).
    pub window_open: bool,
}

/// The next step of a running rollout at `now` (ms); `members` are the current phase's.
pub fn next_step(p: &Progress<'_>, members: &[Member], now: i64) -> Step {
    let count = count_phase(members, p.phase);
    if threshold_crossed(count.failures, count.attempted, p.threshold_pct) {
        return Step::Halt {
            reason: format!(
                "phase {} crossed its failure threshold: {} of {} attempted devices failed or reverted (threshold {}%)",
                p.phase + 1,
                count.failures,
                count.attempted,
                p.threshold_pct
            ),
        };
    }
    if count.finished == count.devices {
        let soak = p
            .phases
            .get(p.phase)
            .map_or(0, |s| i64::try_from(s.soak_seconds).unwrap_or(i64::MAX / 2))
            .saturating_mul(1000);
        return match p.soak_until {
            None if soak > 0 => Step::Soak {
                until: now.saturating_add(soak),
            },
            Some(until) if now < until => Step::Wait,
            _ if p.phase + 1 >= p.phases.len() => Step::Complete,
            _ => Step::Advance,
        };
    }
    let pending_offline: Vec<String> = members
        .iter()
        .filter(|m| m.phase == p.phase && m.state == DeviceState::Pending && !m.online)
        .map(|m| m.device_id.clone())
        .collect();
    if !pending_offline.is_empty() && now - p.phase_started_at >= p.offline_timeout_ms {
        return Step::SkipOffline(pending_offline);
    }
    if !p.window_open {
        return Step::Wait;
    }
    let room = p.max_in_flight.saturating_sub(p.in_flight);
    if room == 0 {
        return Step::Wait;
    }
    let mut next: Vec<&Member> = members
        .iter()
        .filter(|m| m.phase == p.phase && m.state == DeviceState::Pending && m.online)
        .collect();
    next.sort_by_key(|m| m.position);
    let offer: Vec<String> = next
        .into_iter()
        .take(room)
        .map(|m| m.device_id.clone())
        .collect();
    if offer.is_empty() {
        Step::Wait
    } else {
        Step::Offer(offer)
    }
}

/// The snapshot order of the target: a stable shuffle keyed by the rollout, so the canaries are
/// spread over the fleet rather than always its oldest devices, and the same after a restart.
pub fn snapshot_order(rollout_id: &str, mut device_ids: Vec<String>) -> Vec<String> {
    use sha2::{Digest as _, Sha256};
    let key = |id: &str| {
        let mut h = Sha256::new();
        h.update(rollout_id.as_bytes());
        h.update([0]);
        h.update(id.as_bytes());
        h.finalize()
    };
    device_ids.sort_by_cached_key(|id| key(id));
    device_ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phases(spec: &[(f64, u64)]) -> Vec<PhaseSpec> {
        spec.iter()
            .map(|&(percent, soak_seconds)| PhaseSpec {
                percent,
                soak_seconds,
            })
            .collect()
    }

    #[test]
    fn phases_are_cumulative_rounded_up_and_never_empty() {
        let p = phases(&[(10.0, 0), (50.0, 0), (100.0, 0)]);
        assert_eq!(phase_ends(20, &p), vec![2, 10, 20]);
        assert_eq!(phase_ends(21, &p), vec![3, 11, 21]);
        assert_eq!(phase_ends(1, &p), vec![1, 1, 1]);
        assert_eq!(phase_ends(3, &p), vec![1, 2, 3]);
        assert_eq!(phase_ends(0, &p), vec![0, 0, 0]);
        // A 1% canary of a small fleet is still one device.
        assert_eq!(
            phase_ends(50, &phases(&[(1.0, 0), (100.0, 0)])),
            vec![1, 50]
        );
        // A last phase below 100% still takes everyone.
        assert_eq!(
            phase_ends(10, &phases(&[(20.0, 0), (60.0, 0)])),
            vec![2, 10]
        );
        let ends = phase_ends(20, &p);
        let of: Vec<usize> = (0..20).map(|i| phase_of(i, &ends)).collect();
        assert_eq!(&of[..3], &[0, 0, 1]);
        assert_eq!(of.iter().filter(|p| **p == 2).count(), 10);
    }

    #[test]
    fn the_threshold_is_exceeded_not_reached() {
        assert!(!threshold_crossed(0, 10, 0.0));
        assert!(threshold_crossed(1, 10, 0.0));
        assert!(!threshold_crossed(1, 10, 10.0));
        assert!(threshold_crossed(2, 10, 10.0));
        assert!(threshold_crossed(1, 2, 20.0));
    }

    fn members(states: &[(usize, DeviceState, bool)]) -> Vec<Member> {
        states
            .iter()
            .enumerate()
            .map(|(i, &(phase, state, online))| Member {
                device_id: format!("d{i}"),
                position: i,
                phase,
                state,
                online,
            })
            .collect()
    }

    fn progress(p: &[PhaseSpec]) -> Progress<'_> {
        Progress {
            phases: p,
            phase: 0,
            threshold_pct: 10.0,
            max_in_flight: 2,
            in_flight: 0,
            phase_started_at: 0,
            soak_until: None,
            offline_timeout_ms: 60_000,
            window_open: true,
        }
    }

    #[test]
    fn offers_follow_snapshot_order_within_the_phase_and_max_in_flight() {
        use DeviceState::*;
        let spec = phases(&[(50.0, 0), (100.0, 0)]);
        let m = members(&[
            (0, Pending, true),
            (0, Pending, false),
            (0, Pending, true),
            (0, Pending, true),
            (1, Pending, true),
        ]);
        let p = progress(&spec);
        assert_eq!(
            next_step(&p, &m, 1000),
            Step::Offer(vec!["d0".into(), "d2".into()])
        );
        let mut m2 = m.clone();
        m2[0].state = Offered;
        m2[2].state = Working;
        let busy = Progress {
            in_flight: 2,
            ..p.clone()
        };
        assert_eq!(next_step(&busy, &m2, 1000), Step::Wait, "two in flight");
        m2[0].state = Succeeded;
        let p = Progress {
            in_flight: 1,
            ..p.clone()
        };
        assert_eq!(next_step(&p, &m2, 1000), Step::Offer(vec!["d3".into()]));
        // The window closed: nothing goes out.
        let closed = Progress {
            window_open: false,
            ..p.clone()
        };
        assert_eq!(next_step(&closed, &m2, 1000), Step::Wait);
        // The offline device waits until the timeout, then is skipped.
        assert_eq!(
            next_step(&p, &m2, 60_000),
            Step::SkipOffline(vec!["d1".into()])
        );
    }

    #[test]
    fn a_finished_phase_soaks_then_advances_and_the_last_completes() {
        use DeviceState::*;
        let spec = phases(&[(50.0, 30), (100.0, 0)]);
        let m = members(&[
            (0, Succeeded, true),
            (0, Skipped, false),
            (1, Pending, true),
        ]);
        let p = progress(&spec);
        assert_eq!(next_step(&p, &m, 1000), Step::Soak { until: 31_000 });
        let soaking = Progress {
            soak_until: Some(31_000),
            ..p.clone()
        };
        assert_eq!(next_step(&soaking, &m, 30_999), Step::Wait);
        assert_eq!(next_step(&soaking, &m, 31_000), Step::Advance);
        let last = Progress {
            phase: 1,
            soak_until: None,
            ..p.clone()
        };
        let done = members(&[
            (0, Succeeded, true),
            (0, Skipped, false),
            (1, Succeeded, true),
        ]);
        assert_eq!(next_step(&last, &done, 40_000), Step::Complete);
    }

    #[test]
    fn failures_past_the_threshold_halt_the_phase() {
        use DeviceState::*;
        let spec = phases(&[(10.0, 0), (100.0, 0)]);
        let m = members(&[
            (0, Reverted, true),
            (0, Succeeded, true),
            (1, Pending, true),
        ]);
        match next_step(&progress(&spec), &m, 0) {
            Step::Halt { reason } => assert!(reason.contains("1 of 2"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Rolled back does not count.
        let m = members(&[
            (0, RolledBack, true),
            (0, Succeeded, true),
            (1, Pending, true),
        ]);
        assert_eq!(next_step(&progress(&spec), &m, 0), Step::Advance);
    }

    #[test]
    fn the_snapshot_order_is_stable_and_keyed_by_the_rollout() {
        let ids: Vec<String> = (0..50).map(|i| format!("dev{i:02}")).collect();
        let a = snapshot_order("r1", ids.clone());
        let mut reversed = ids.clone();
        reversed.reverse();
        assert_eq!(
            a,
            snapshot_order("r1", reversed),
            "input order does not matter"
        );
        assert_ne!(
            a,
            snapshot_order("r2", ids.clone()),
            "another rollout, other canaries"
        );
        assert_ne!(a, ids, "not the enrollment order");
    }

    #[test]
    fn states_come_from_the_report_first() {
        assert_eq!(
            DeviceState::from_stored("offered", None),
            DeviceState::Offered
        );
        assert_eq!(
            DeviceState::from_stored("offered", Some("committing")),
            DeviceState::Working
        );
        assert_eq!(
            DeviceState::from_stored("offered", Some("reverted")),
            DeviceState::Reverted
        );
        assert_eq!(
            DeviceState::from_stored("pending", None),
            DeviceState::Pending
        );
        assert!(DeviceState::Skipped.is_final() && !DeviceState::Skipped.is_failure());
    }
}
