//! Deterministic sliding-window rate limiter (Qlik rate-limit tiers, fact sheet §4).
//!
//! Design choice: an exact sliding log. For every `(identity, tier)` the limiter keeps the instants
//! of the requests it *accepted* during the last [`WINDOW`]. A request is accepted when fewer than
//! `limit` accepted requests lie in `(now - WINDOW, now]`. Rejected requests are not logged, so they
//! never count toward the window. The `Retry-After` value is the whole number of seconds (rounded
//! up, at least 1) until the oldest logged request that keeps the window full leaves it.
//!
//! Qlik documents per-minute limits "evaluated over a 5-minute window to support bursts"; the
//! simulator deliberately uses the stricter 60-second sliding window so that a client which passes
//! against the simulator also stays within the real limits.
//!
//! All methods take the current [`Instant`] as an argument so tests can drive the clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Length of the sliding window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Qlik rate-limit tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Tier 1: GET requests (1000/min on a real tenant).
    Reads,
    /// Tier 2: PATCH/PUT/POST/DELETE and `POST /oauth/token` (100/min on a real tenant).
    Writes,
}

/// Per-identity, per-tier sliding-window limiter.
#[derive(Debug)]
pub struct RateLimiter {
    window: Duration,
    windows: HashMap<(String, Tier), VecDeque<Instant>>,
    /// Every accepted request, per identity and tier (for the window statistics).
    accepted: HashMap<(String, Tier), Vec<Instant>>,
    /// Requests answered 429, per tier.
    rejected: HashMap<Tier, u64>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(WINDOW)
    }
}

impl RateLimiter {
    /// A limiter whose limits apply per `window` (Qlik: one minute). A shorter window scales a
    /// per-minute budget down for fast tests: 5 per 3 s is 100 per minute.
    pub fn new(window: Duration) -> Self {
        RateLimiter {
            window,
            windows: HashMap::new(),
            accepted: HashMap::new(),
            rejected: HashMap::new(),
        }
    }

    /// Checks (and on success records) one request made at `now`.
    ///
    /// Returns `Err(retry_after_secs)` when the request must be rejected with 429.
    pub fn check(
        &mut self,
        identity: &str,
        tier: Tier,
        limit: Option<u32>,
        now: Instant,
    ) -> Result<(), u64> {
        let log = self.windows.entry((identity.to_owned(), tier)).or_default();
        while let Some(&front) = log.front() {
            if now.saturating_duration_since(front) >= self.window {
                log.pop_front();
            } else {
                break;
            }
        }
        if let Some(limit) = limit {
            let limit = limit as usize;
            if limit == 0 {
                *self.rejected.entry(tier).or_default() += 1;
                return Err(self.window.as_secs().max(1));
            }
            if log.len() >= limit {
                // After the oldest `len - limit + 1` entries expire, one slot is free.
                let pivot = log[log.len() - limit];
                let wait = (pivot + self.window).saturating_duration_since(now);
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                *self.rejected.entry(tier).or_default() += 1;
                return Err(secs.max(1));
            }
        }
        log.push_back(now);
        self.accepted
            .entry((identity.to_owned(), tier))
            .or_default()
            .push(now);
        Ok(())
    }

    /// The largest number of accepted Tier-2 requests of one identity inside any window
    /// `[t, t + WINDOW)`, over all identities and the whole lifetime of the limiter.
    pub fn writes_in_window_max(&self) -> u32 {
        self.accepted_in_window_max(Tier::Writes)
    }

    /// The largest number of accepted requests of `tier` of one identity inside any window
    /// `[t, t + WINDOW)`, over all identities and the whole lifetime of the limiter.
    pub fn accepted_in_window_max(&self, tier: Tier) -> u32 {
        let mut best = 0usize;
        let logs = (self.accepted.iter()).filter_map(|((_, t), log)| (*t == tier).then_some(log));
        for log in logs {
            let mut start = 0usize;
            for end in 0..log.len() {
                while log[end].saturating_duration_since(log[start]) >= self.window {
                    start += 1;
                }
                best = best.max(end - start + 1);
            }
        }
        best as u32
    }

    /// Total number of accepted Tier-2 requests over all identities.
    pub fn writes_total(&self) -> usize {
        self.accepted_total(Tier::Writes)
    }

    /// Total number of accepted requests of `tier` over all identities.
    pub fn accepted_total(&self, tier: Tier) -> usize {
        (self.accepted.iter())
            .filter(|((_, t), _)| *t == tier)
            .map(|(_, log)| log.len())
            .sum()
    }

    /// Requests of `tier` answered 429 so far.
    pub fn rejected(&self, tier: Tier) -> u64 {
        self.rejected.get(&tier).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn limits_within_window_and_frees_slots_as_they_expire() {
        let base = Instant::now();
        let mut l = RateLimiter::default();
        for i in 0..3 {
            assert!(
                l.check("a", Tier::Writes, Some(3), at(base, i * 10_000))
                    .is_ok()
            );
        }
        // 4th at t=30s: oldest (t=0) frees at t=60s -> 30 s.
        assert_eq!(
            l.check("a", Tier::Writes, Some(3), at(base, 30_000)),
            Err(30)
        );
        // Rounded up: at t=59.5s the slot frees in 0.5 s -> 1.
        assert_eq!(
            l.check("a", Tier::Writes, Some(3), at(base, 59_500)),
            Err(1)
        );
        // Rejections are not counted: at t=60s exactly one slot is free again.
        assert!(
            l.check("a", Tier::Writes, Some(3), at(base, 60_000))
                .is_ok()
        );
        assert_eq!(
            l.check("a", Tier::Writes, Some(3), at(base, 60_001)),
            Err(10)
        );
        // Other identities and other tiers are independent.
        assert!(
            l.check("b", Tier::Writes, Some(3), at(base, 60_001))
                .is_ok()
        );
        assert!(l.check("a", Tier::Reads, Some(3), at(base, 60_001)).is_ok());
        assert_eq!(l.writes_in_window_max(), 3);
        assert_eq!(l.writes_total(), 5);
        assert_eq!(l.accepted_total(Tier::Reads), 1);
        assert_eq!(l.accepted_in_window_max(Tier::Reads), 1);
        assert_eq!((l.rejected(Tier::Writes), l.rejected(Tier::Reads)), (3, 0));
    }

    #[test]
    fn unlimited_and_zero_limits() {
        let base = Instant::now();
        let mut l = RateLimiter::default();
        for i in 0..500 {
            assert!(l.check("a", Tier::Writes, None, at(base, i)).is_ok());
        }
        assert_eq!(l.writes_in_window_max(), 500);
        // Lowering the limit later takes the recent history into account.
        assert!(
            l.check("a", Tier::Writes, Some(10), at(base, 1000))
                .is_err()
        );
        assert_eq!(l.check("a", Tier::Writes, Some(0), at(base, 1000)), Err(60));
    }

    #[test]
    fn window_max_uses_sliding_windows() {
        let base = Instant::now();
        let mut l = RateLimiter::default();
        // 2 at t=0..1s, 2 at t=59s, 2 at t=61s: any 60 s window holds at most 4.
        for ms in [0, 1000, 59_000, 59_500, 61_000, 61_500] {
            l.check("a", Tier::Writes, None, at(base, ms)).unwrap();
        }
        assert_eq!(l.writes_in_window_max(), 4);
    }
}
