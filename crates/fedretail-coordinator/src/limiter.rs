//! Failed registrations per peer address. Past a budget within a minute, the address's
//! registrations are refused until that minute is over, so guessing tokens is slow and
//! a flood of bad registrations costs the coordinator little. Stores behind one address
//! share its budget; a store that is refused backs off and retries (the refusal says
//! "unavailable"), so an honest store loses time, never its place.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; past this the expired ones are forgotten first, then all
/// (failing open rather than growing without bound).
const MAX_PEERS: usize = 65_536;

#[derive(Debug)]
pub(crate) struct FailureLimiter {
    /// Failures allowed per address per window; 0 turns the limiter off.
    per_window: u32,
    peers: HashMap<IpAddr, (Instant, u32)>,
}

impl FailureLimiter {
    pub fn new(per_window: u32) -> Self {
        FailureLimiter {
            per_window,
            peers: HashMap::new(),
        }
    }

    /// Whether `peer` may try to register at `now`.
    pub fn allows(&self, peer: IpAddr, now: Instant) -> bool {
        match self.peers.get(&peer) {
            Some(&(start, failures)) if self.per_window > 0 => {
                now.duration_since(start) >= WINDOW || failures < self.per_window
            }
            _ => true,
        }
    }

    /// Counts a failed registration from `peer` at `now`.
    pub fn failed(&mut self, peer: IpAddr, now: Instant) {
        if self.per_window == 0 {
            return;
        }
        if self.peers.len() >= MAX_PEERS {
            self.peers
                .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if self.peers.len() >= MAX_PEERS {
                self.peers.clear();
            }
        }
        let entry = self.peers.entry(peer).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_held_back_after_its_budget_until_the_minute_is_over() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(3);
        for _ in 0..3 {
            assert!(l.allows(a, t0));
            l.failed(a, t0);
        }
        assert!(!l.allows(a, t0 + Duration::from_secs(59)));
        assert!(l.allows(b, t0), "other addresses keep their budget");
        let later = t0 + WINDOW;
        assert!(l.allows(a, later));
        l.failed(a, later);
        assert!(l.allows(a, later), "a new minute, a new budget");
    }

    #[test]
    fn zero_turns_it_off() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(0);
        for _ in 0..100 {
            l.failed(a, t0);
        }
        assert!(l.allows(a, t0));
    }
}
