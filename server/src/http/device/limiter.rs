//! A fixed-window limit on enrollment attempts per source address, so a
//! token cannot be brute-forced and a misbehaving fleet cannot flood the CA.
//! In memory and bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
const MAX_ADDRESSES: usize = 100_000;

/// Attempts per address per minute.
#[derive(Debug)]
pub struct EnrollLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl EnrollLimiter {
    /// A limiter allowing `per_minute` attempts per address.
    pub fn new(per_minute: u32) -> Self {
        EnrollLimiter {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt; answers the seconds to wait when over the limit.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ADDRESSES {
            map.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_minute {
            let left = WINDOW.saturating_sub(now.duration_since(entry.0));
            return Some(left.as_secs().max(1));
        }
        entry.1 += 1;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_window() {
        let l = EnrollLimiter::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let now = Instant::now();
        assert!(l.check(a, now).is_none());
        assert!(l.check(a, now).is_none());
        assert!(l.check(a, now).is_some());
        assert!(l.check(b, now).is_none());
        assert!(l.check(a, now + WINDOW).is_none());
    }
}
