//! Login throttling: after repeated failures for one user name or from one
//! address, further attempts answer 429 until the window passes. In memory
//! and bounded; a restart forgets it, which only ever helps a real user.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failure limits per user name and per source address within a window.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures per user name before refusing.
    pub per_user: usize,
    /// Failures per address before refusing.
    pub per_addr: usize,
    /// How long a failure counts.
    pub window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_user: 5,
            per_addr: 20,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// Keeps recent failures; at most `MAX_KEYS` names and addresses at once.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    limits: Limits,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

const MAX_KEYS: usize = 100_000;

impl LoginThrottle {
    /// A throttle with the given limits.
    pub fn new(limits: Limits) -> Self {
        LoginThrottle {
            limits,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds to wait when either key is over its limit, or `None` to go ahead.
    pub fn check(&self, username: &str, addr: &str, now: Instant) -> Option<u64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let user = self.wait(&mut map, &user_key(username), self.limits.per_user, now);
        let addr = self.wait(&mut map, &addr_key(addr), self.limits.per_addr, now);
        user.max(addr)
    }

    /// Counts a failed attempt against both keys.
    pub fn fail(&self, username: &str, addr: &str, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS {
            let window = self.limits.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        for key in [user_key(username), addr_key(addr)] {
            let q = map.entry(key).or_default();
            q.push_back(now);
            while q.len() > self.limits.per_addr.max(self.limits.per_user) {
                q.pop_front();
            }
        }
    }

    /// Forgets a user's failures after a successful login.
    pub fn succeed(&self, username: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&user_key(username));
    }

    fn wait(
        &self,
        map: &mut HashMap<String, VecDeque<Instant>>,
        key: &str,
        limit: usize,
        now: Instant,
    ) -> Option<u64> {
        let q = map.get_mut(key)?;
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.limits.window)
        {
            q.pop_front();
        }
        if q.len() < limit {
            return None;
        }
        let oldest_counted = q[q.len() - limit];
        let left = self
            .limits
            .window
            .saturating_sub(now.duration_since(oldest_counted));
        Some(left.as_secs().max(1))
    }
}

fn user_key(username: &str) -> String {
    format!("u:{}", username.to_lowercase())
}

fn addr_key(addr: &str) -> String {
    format!("a:{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_after_the_limit_and_recovers_after_the_window() {
        let t = LoginThrottle::new(Limits {
            per_user: 3,
            per_addr: 10,
            window: Duration::from_secs(60),
        });
        let now = Instant::now();
        for _ in 0..3 {
            assert!(t.check("alice", "1.2.3.4", now).is_none());
            t.fail("alice", "1.2.3.4", now);
        }
        assert!(t.check("alice", "5.6.7.8", now).is_some());
        assert!(t.check("bob", "1.2.3.4", now).is_none());
        assert!(
            t.check("alice", "1.2.3.4", now + Duration::from_secs(61))
                .is_none()
        );
    }

    #[test]
    fn per_address_limit_spans_user_names() {
        let t = LoginThrottle::new(Limits {
            per_user: 100,
            per_addr: 4,
            window: Duration::from_secs(60),
        });
        let now = Instant::now();
        for i in 0..4 {
            t.fail(&format!("user{i}"), "9.9.9.9", now);
        }
        assert!(t.check("someone", "9.9.9.9", now).is_some());
    }

    #[test]
    fn success_clears_the_user() {
        let t = LoginThrottle::new(Limits {
            per_user: 2,
            per_addr: 10,
            window: Duration::from_secs(60),
        });
        let now = Instant::now();
        t.fail("carol", "a", now);
        t.fail("carol", "a", now);
        assert!(t.check("carol", "b", now).is_some());
        t.succeed("carol");
        assert!(t.check("carol", "b", now).is_none());
    }
}
