//! When to renew or recover the device certificate, and how long to wait between failed attempts.
//! Pure functions of the certificate's validity and the clock: renew once less than a third of
//! the lifetime remains, recover once it has expired, otherwise sleep (1 s to 1 h) and look again.

use std::time::Duration;

use drover_proto::Timestamp;

/// Longest sleep between two looks at the certificate, so a changed clock or file is noticed.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Shortest sleep, so a clock at the boundary never spins.
pub const MIN_WAIT: Duration = Duration::from_secs(1);
/// First retry delay after a failed renewal or recovery.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest retry delay, whatever the lifetime.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// What the identity keeper does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do yet; look again after this long.
    Wait(Duration),
    /// Less than a third of the lifetime remains: renew over mutual TLS.
    Renew,
    /// The certificate has expired: recover without a client certificate.
    Recover,
}

/// Decides the next step for a certificate valid over `[not_before, not_after]` at `now`.
pub fn next_action(not_before: Timestamp, not_after: Timestamp, now: Timestamp) -> Action {
    if now >= not_after {
        return Action::Recover;
    }
    let lifetime = not_after.unix_millis() - not_before.unix_millis();
    // `not_after - lifetime / 3`, computed without overflow; a non-positive lifetime renews now.
    let renew_at = not_after.unix_millis() - lifetime.max(0) / 3;
    if lifetime <= 0 || now.unix_millis() >= renew_at {
        return Action::Renew;
    }
    let until = Duration::from_millis(u64::try_from(renew_at - now.unix_millis()).unwrap_or(0));
    Action::Wait(until.clamp(MIN_WAIT, MAX_WAIT))
}

/// The certificate's lifetime, `not_after - not_before` (zero when inverted).
pub fn lifetime(not_before: Timestamp, not_after: Timestamp) -> Duration {
    let millis = not_after
        .unix_millis()
        .saturating_sub(not_before.unix_millis());
    Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

/// Exponential backoff for failed attempts: 1 s, 2 s, 4 s … capped at min(5 min, lifetime / 10)
/// (never below 1 s), with "equal jitter": each delay is drawn from [d/2, d], so a fleet that
/// lost its server at once does not come back in lockstep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// Backoff for a certificate with this lifetime.
    pub fn new(lifetime: Duration) -> Backoff {
        Backoff {
            cap: (lifetime / 10).clamp(FIRST_RETRY, MAX_RETRY),
            failures: 0,
        }
    }

    /// Backoff from 1 s up to `cap` (at least 1 s), whatever a certificate's lifetime.
    pub fn with_cap(cap: Duration) -> Backoff {
        Backoff {
            cap: cap.max(FIRST_RETRY),
            failures: 0,
        }
    }

    /// The longest delay this backoff reaches.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The delay before the next attempt after one more failure; `jitter` is uniform in [0, 1).
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let exponent = self.failures.min(30);
        self.failures = self.failures.saturating_add(1);
        let full = FIRST_RETRY
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.cap)
            .min(self.cap);
        let half = full / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// Forgets past failures (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A number uniform in [0, 1) for jitter, from std's randomly keyed SipHash: good enough to
/// spread retries, and no extra crate on the device.
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    // The top 53 bits as a fraction: exactly representable in an f64.
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_seconds(seconds).unwrap()
    }

    /// A 90-day certificate starting at 0: renewal point at day 60.
    fn action_on_day(day_seconds: i64) -> Action {
        next_action(at(0), at(90 * DAY), at(day_seconds))
    }

    #[test]
    fn a_fresh_certificate_waits_at_most_an_hour() {
        assert_eq!(action_on_day(0), Action::Wait(MAX_WAIT));
        assert_eq!(action_on_day(59 * DAY), Action::Wait(MAX_WAIT));
    }

    #[test]
    fn the_wait_ends_at_the_renewal_point() {
        assert_eq!(
            action_on_day(60 * DAY - 600),
            Action::Wait(Duration::from_secs(600))
        );
    }

    #[test]
    fn the_wait_is_at_least_a_second() {
        let renew_at_millis = 60 * DAY * 1000;
        let now = Timestamp::from_unix_millis(renew_at_millis - 10).unwrap();
        assert_eq!(
            next_action(at(0), at(90 * DAY), now),
            Action::Wait(MIN_WAIT)
        );
    }

    #[test]
    fn renews_once_less_than_a_third_remains() {
        assert_eq!(action_on_day(60 * DAY), Action::Renew);
        assert_eq!(action_on_day(90 * DAY - 1), Action::Renew);
    }

    #[test]
    fn recovers_once_expired() {
        assert_eq!(action_on_day(90 * DAY), Action::Recover);
        assert_eq!(action_on_day(400 * DAY), Action::Recover);
    }

    #[test]
    fn a_clock_before_not_before_waits_for_the_renewal_point() {
        assert_eq!(action_on_day(-30 * DAY), Action::Wait(MAX_WAIT));
    }

    #[test]
    fn an_inverted_certificate_renews_or_recovers_at_once() {
        assert_eq!(next_action(at(100), at(100), at(50)), Action::Renew);
        assert_eq!(next_action(at(200), at(100), at(50)), Action::Renew);
        assert_eq!(next_action(at(200), at(100), at(150)), Action::Recover);
    }

    #[test]
    fn short_lifetimes_follow_the_same_thirds() {
        // A 30-second certificate (as tests issue): renew after 20 s.
        assert_eq!(
            next_action(at(0), at(30), at(15)),
            Action::Wait(Duration::from_secs(5))
        );
        assert_eq!(next_action(at(0), at(30), at(20)), Action::Renew);
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let mut backoff = Backoff::new(Duration::from_secs(90 * DAY as u64));
        let delays: Vec<u64> = (0..12).map(|_| backoff.next_delay(1.0).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        backoff.reset();
        assert_eq!(backoff.next_delay(1.0), Duration::from_secs(1));
    }

    #[test]
    fn backoff_cap_is_a_tenth_of_a_short_lifetime_but_at_least_a_second() {
        assert_eq!(
            Backoff::new(Duration::from_secs(60)).cap(),
            Duration::from_secs(6)
        );
        assert_eq!(Backoff::new(Duration::from_secs(5)).cap(), FIRST_RETRY);
        assert_eq!(Backoff::new(Duration::ZERO).cap(), FIRST_RETRY);
    }

    #[test]
    fn jitter_keeps_each_delay_between_half_and_all_of_it() {
        let mut backoff = Backoff::new(Duration::from_secs(90 * DAY as u64));
        for _ in 0..4 {
            backoff.next_delay(0.0);
        }
        assert_eq!(backoff.next_delay(0.0), Duration::from_secs(8));
        let mut backoff = Backoff::new(Duration::from_secs(90 * DAY as u64));
        for _ in 0..4 {
            backoff.next_delay(0.0);
        }
        assert_eq!(backoff.next_delay(0.5), Duration::from_secs(12));
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn lifetime_is_not_after_minus_not_before() {
        assert_eq!(
            lifetime(at(0), at(90 * DAY)),
            Duration::from_secs(90 * DAY as u64)
        );
        assert_eq!(lifetime(at(10), at(5)), Duration::ZERO);
    }
}
