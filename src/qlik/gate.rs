//! The rate gates: one Qlik budget per tier and identity, shared by every job.
//!
//! Qlik limits requests per tier, per user and tenant (qlik.dev, "Rate limiting",
//! <https://qlik.dev/apis/rest/rate-limiting/>; qlik-api-facts.md §4): **Tier 1**, 1,000 per
//! minute, covers the GETs (connections, name lookups, api-specs, credentials); **Tier 2**,
//! 100 per minute, covers PATCH, PUT, POST, DELETE and `/oauth/token`. A 429 carries
//! `Retry-After` in seconds, and "while waiting, every endpoint in the same tier is blocked",
//! the other tier is not.
//!
//! So one identity has two [`Gate`]s ([`Gates`]): every request asks its tier's gate for a
//! slot first. Slots come from a `governor` GCRA limiter spaced so that a sliding one-minute
//! window never sees more than the budget (a 2% margin for clock skew and network jitter),
//! with a small burst for reads. Waiters queue in FIFO order (one at a time asks the limiter,
//! so 10,000 waiting reads cost one timer, not 10,000 wake-ups per slot). A 429 pauses *every*
//! caller of that gate until the server's deadline, not only the one that got it. A second
//! identity (another tenant) is a second [`Gates`].

use std::{
    ops::Add,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, Reference},
    middleware::NoOpMiddleware,
    nanos::Nanos,
    state::{InMemoryState, NotKeyed},
};
use tokio::time::Instant;

/// Qlik's Tier 1 (reads) per identity: 1,000 per minute (qlik.dev rate-limiting page, S19).
pub const TIER1_PER_MIN: u32 = 1_000;
/// Qlik's Tier 2 (writes and `/oauth/token`) per identity: 100 per minute (S19).
pub const TIER2_PER_MIN: u32 = 100;

/// The longest pause one 429 can impose. The retry policy already refuses to wait for a
/// `Retry-After` above `max_retry_after`; this keeps [`Gate::pause`] safe on its own (a huge
/// duration would overflow the deadline).
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// Which Qlik rate tier a gate paces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Tier 1: GETs.
    Read,
    /// Tier 2: PATCH, PUT, POST, DELETE, `/oauth/token`.
    Write,
}

impl Tier {
    /// A stable label (`read` / `write`) for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Read => "read",
            Tier::Write => "write",
        }
    }
}

/// `tokio::time::Instant` as a `governor` clock reading, so the gate follows tokio's clock
/// (paused time in tests moves it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TokioInstant(Instant);

impl Add<Nanos> for TokioInstant {
    type Output = Self;

    fn add(self, other: Nanos) -> Self {
        TokioInstant(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        self.0
            .checked_sub(duration.into())
            .map_or(*self, TokioInstant)
    }
}

/// tokio's clock for `governor`.
#[derive(Debug, Clone, Copy, Default)]
struct TokioClock;

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// Paces one tier's requests for one Qlik identity.
pub struct Gate {
    tier: Tier,
    per_minute: u32,
    /// `None`: unlimited.
    limiter: Option<Limiter>,
    /// FIFO queue of waiters: only its holder asks the limiter.
    turn: tokio::sync::Mutex<()>,
    paused_until: Mutex<Instant>,
    pauses: AtomicU64,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("tier", &self.tier)
            .field("per_minute", &self.per_minute)
            .finish_non_exhaustive()
    }
}

/// The write gate (the name it had before reads were gated too).
pub type WriteGate = Gate;

impl Gate {
    /// A Tier 2 gate allowing `per_minute` writes per minute; `0` means unlimited. Writes are
    /// spaced evenly (no burst).
    pub fn new(per_minute: u32) -> Self {
        Self::writes(per_minute)
    }

    /// A Tier 2 gate (writes): `per_minute`, evenly spaced; `0` = unlimited.
    pub fn writes(per_minute: u32) -> Self {
        Self::with_burst(Tier::Write, per_minute, 1)
    }

    /// A Tier 1 gate (reads): `per_minute`, with a burst of 1% of the budget (10 of 1,000) so a
    /// handful of GETs never waits; `0` = unlimited.
    pub fn reads(per_minute: u32) -> Self {
        Self::with_burst(Tier::Read, per_minute, (per_minute / 100).max(1))
    }

    /// A gate of `tier` allowing `per_minute` per minute with bursts of up to `burst`.
    ///
    /// Slots are `60 s × 1.02 / per_minute` apart, so any 60-second window holds at most
    /// `burst − 1 + per_minute / 1.02` of them: the budget, as long as `burst` is at most 1%
    /// of it (the other 1% absorbs clock skew and network jitter).
    pub fn with_burst(tier: Tier, per_minute: u32, burst: u32) -> Self {
        let limiter = std::num::NonZeroU32::new(per_minute).and_then(|_| {
            let period = Duration::from_secs_f64(60.0 * 1.02 / f64::from(per_minute));
            let burst = std::num::NonZeroU32::new(burst.max(1))?;
            Some(RateLimiter::direct_with_clock(
                Quota::with_period(period)?.allow_burst(burst),
                TokioClock,
            ))
        });
        Gate {
            tier,
            per_minute,
            limiter,
            turn: tokio::sync::Mutex::new(()),
            paused_until: Mutex::new(Instant::now()),
            pauses: AtomicU64::new(0),
        }
    }

    /// The tier this gate paces.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The budget per minute (0 = unlimited).
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    fn paused_until(&self) -> Instant {
        *self.paused_until.lock().expect("gate pause lock")
    }

    /// Waits until this caller may send one request of the tier.
    pub async fn acquire(&self) {
        // Fast path: unlimited and not paused.
        if self.limiter.is_none() && self.paused_until() <= Instant::now() {
            return;
        }
        // Waiters take turns (tokio's mutex is fair): one timer at a time, in arrival order.
        let _turn = self.turn.lock().await;
        loop {
            // A 429 seen by anyone while we waited moves everyone back.
            let paused_until = self.paused_until();
            if paused_until > Instant::now() {
                tokio::time::sleep_until(paused_until).await;
                continue;
            }
            let Some(limiter) = &self.limiter else { return };
            match limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    tokio::time::sleep(not_until.wait_time_from(TokioClock.now())).await;
                }
            }
        }
    }

    /// Pauses every caller for `retry_after` (a 429 answer), at most [`MAX_PAUSE`].
    pub fn pause(&self, retry_after: Duration) {
        let until = Instant::now() + retry_after.min(MAX_PAUSE);
        let mut paused = self.paused_until.lock().expect("gate pause lock");
        if until > *paused {
            *paused = until;
        }
        self.pauses.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the gate was paused by a 429.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }
}

/// The two gates of one Qlik identity: Tier 1 (reads) and Tier 2 (writes). Clients of the
/// same identity share one `Gates`; another identity (tenant) gets its own.
#[derive(Debug, Clone)]
pub struct Gates {
    /// Tier 1: GETs.
    pub read: std::sync::Arc<Gate>,
    /// Tier 2: writes and `/oauth/token`.
    pub write: std::sync::Arc<Gate>,
}

impl Gates {
    /// Gates for one identity with these budgets per minute (0 = unlimited).
    pub fn new(read_per_minute: u32, write_per_minute: u32) -> Self {
        Gates {
            read: std::sync::Arc::new(Gate::reads(read_per_minute)),
            write: std::sync::Arc::new(Gate::writes(write_per_minute)),
        }
    }

    /// The gate of `tier`.
    pub fn of(&self, tier: Tier) -> &Gate {
        match tier {
            Tier::Read => &self.read,
            Tier::Write => &self.write,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_writes_to_the_budget() {
        let gate = WriteGate::new(60);
        let start = Instant::now();
        for _ in 0..61 {
            gate.acquire().await;
        }
        // 61 writes at 60/min (+2% margin) need just over a minute.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(60), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(62), "{elapsed:?}");
    }

    /// Reads at 1,000/min: the first 10 (the burst) go at once, then one every 61.2 ms; no
    /// 60-second window ever holds more than 1,000, the budget.
    #[tokio::test(start_paused = true)]
    async fn reads_burst_a_little_then_keep_to_the_budget() {
        let gate = Arc::new(Gate::reads(TIER1_PER_MIN));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..2_500 {
            let g = gate.clone();
            tasks.push(tokio::spawn(async move {
                g.acquire().await;
                Instant::now()
            }));
        }
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap() - start);
        }
        at.sort();
        assert_eq!(at.iter().filter(|d| d.is_zero()).count(), 10, "the burst");
        let mut most = 0;
        let mut lo = 0;
        for hi in 0..at.len() {
            while at[hi] - at[lo] >= Duration::from_secs(60) {
                lo += 1;
            }
            most = most.max(hi - lo + 1);
        }
        assert!(most <= 1_000, "{most} reads in one 60 s window");
        assert!(most >= 980, "the budget is used: {most}");
        // 2,500 reads need about 2.5 minutes, not more.
        let last = *at.last().unwrap();
        assert!(last < Duration::from_secs(155), "{last:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_back_every_caller() {
        let gate = Arc::new(WriteGate::new(0));
        gate.acquire().await;
        let start = Instant::now();
        gate.pause(Duration::from_secs(13));
        let g2 = gate.clone();
        let other = tokio::spawn(async move {
            g2.acquire().await;
            Instant::now()
        });
        gate.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(13));
        assert!(other.await.unwrap() - start >= Duration::from_secs(13));
        assert_eq!(gate.pauses(), 1);
    }

    /// A pause arriving while callers already wait for a slot holds them back too; the other
    /// tier's gate is not paused (Qlik blocks only the tier that answered 429).
    #[tokio::test(start_paused = true)]
    async fn a_pause_reaches_waiting_callers_and_only_its_tier() {
        let gates = Gates::new(60, 60);
        gates.read.acquire().await;
        let start = Instant::now();
        let r = gates.read.clone();
        let waiting = tokio::spawn(async move {
            r.acquire().await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        gates.read.pause(Duration::from_secs(30));
        gates.write.acquire().await;
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "writes not paused"
        );
        let got = waiting.await.unwrap() - start;
        assert!(got >= Duration::from_secs(30), "{got:?}");
        assert_eq!((gates.read.pauses(), gates.write.pauses()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_pause_is_capped() {
        let gate = Gate::reads(0);
        let start = Instant::now();
        gate.pause(Duration::from_secs(u64::MAX));
        gate.acquire().await;
        assert_eq!(start.elapsed(), MAX_PAUSE);
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_gate_does_not_wait() {
        let gate = WriteGate::new(0);
        let start = Instant::now();
        for _ in 0..1000 {
            gate.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
