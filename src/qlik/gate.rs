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
//! slot first. Slots are spaced evenly (virtual scheduling, the GCRA without burst) so that a
//! sliding one-minute window never sees more than the budget (a 2% margin for clock skew and
//! network jitter); even spacing also keeps a simulator with a scaled-down window (5 per
//! 500 ms for 600 per minute) within its limit, as long as the jitter between a slot and the
//! server's clock stays under 2% of *that* window. Each caller reserves the next slot when it
//! asks, so callers are served in order and a timer firing a millisecond late does not push
//! the later slots back. (`governor`'s GCRA was tried: without a burst it restarts from the
//! late wake-up, and tokio's millisecond timer turned 1,000/min into 968 in a minute.)
//!
//! **A stall is not made up for.** A caller released more than a tolerance `τ` after its
//! slot (its timer fired late: a runtime or host stall, not the ordinary millisecond of
//! timer lateness) moves every later slot back by the excess, the slots already handed out
//! included, so that a stall's backlog is not sent in a burst followed, one window later, by
//! requests on time: a sliding window at the server would then see more than the budget. With
//! `τ = min(interval / 2, 0.6 s)`, any `budget + 1` consecutive releases span at least
//! `61.2 s − τ ≥ 60.6 s`, late wake-ups or not; what stays for the way from the release to the
//! server's clock is `1.2 s − τ` (Tier 1 at 1,000/min: τ = 30.6 ms). A stall costs its own
//! length (minus τ) of sending time, never a 429. The margin stays a fraction of the minute:
//! the gate knows a budget per minute, not the server's window, and Qlik's window is a minute.
//! A simulator window scaled down to 10 s leaves 200 ms (bench section `reads`).
//! A 429 pauses *every* caller of that gate until the server's deadline, not only the one
//! that got it. A second identity (another tenant) is a second [`Gates`].

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
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

/// The most a wake-up may be late without moving the later slots back: half the 2% margin
/// (1.2 s) of a minute, so that `budget + 1` releases always span more than a minute.
const MAX_TOLERANCE: Duration = Duration::from_millis(600);

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

/// Paces one tier's requests for one Qlik identity.
#[derive(Debug)]
pub struct Gate {
    tier: Tier,
    per_minute: u32,
    interval: Duration,
    /// How late a wake-up may be before it moves the later slots back (see the module doc).
    tolerance: Duration,
    state: Mutex<GateState>,
    pauses: AtomicU64,
}

#[derive(Debug)]
struct GateState {
    /// The next free slot (virtual scheduling: each caller reserves the slot after the last
    /// reserved one, so waking a little late never pushes later slots back).
    next_slot: Instant,
    paused_until: Instant,
    /// How far late wake-ups have moved the schedule back, in total. A caller whose slot was
    /// handed out before a move waits for the difference too.
    shifted: Duration,
}

/// What a caller whose timer fired does next ([`Gate::release`]).
enum Release {
    Now,
    Paused,
    At(Instant),
}

/// The write gate (the name it had before reads were gated too).
pub type WriteGate = Gate;

impl Gate {
    /// A Tier 2 gate allowing `per_minute` writes per minute; `0` means unlimited.
    pub fn new(per_minute: u32) -> Self {
        Self::writes(per_minute)
    }

    /// A Tier 2 gate (writes): `per_minute`; `0` = unlimited.
    pub fn writes(per_minute: u32) -> Self {
        Self::paced(Tier::Write, per_minute)
    }

    /// A Tier 1 gate (reads): `per_minute`; `0` = unlimited.
    pub fn reads(per_minute: u32) -> Self {
        Self::paced(Tier::Read, per_minute)
    }

    /// A gate of `tier` allowing `per_minute` per minute. Slots are `60 s × 1.02 / per_minute`
    /// apart (the 2% absorbs clock skew and network jitter), so any 60-second window holds at
    /// most `⌊per_minute / 1.02⌋ + 1` of them, never more than the budget.
    fn paced(tier: Tier, per_minute: u32) -> Self {
        let interval = if per_minute == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(60.0 * 1.02 / f64::from(per_minute))
        };
        let now = Instant::now();
        Gate {
            tier,
            per_minute,
            interval,
            tolerance: (interval / 2).min(MAX_TOLERANCE),
            state: Mutex::new(GateState {
                next_slot: now,
                paused_until: now,
                shifted: Duration::ZERO,
            }),
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

    /// Waits until this caller may send one request of the tier. Callers get slots in the
    /// order they ask; each waits on its own timer until its slot.
    pub async fn acquire(&self) {
        'reserve: loop {
            let (mut slot, mut seen, now) = {
                let mut st = self.state.lock().expect("gate lock");
                let now = Instant::now();
                let slot = st.next_slot.max(st.paused_until).max(now);
                st.next_slot = slot + self.interval;
                (slot, st.shifted, now)
            };
            if slot > now {
                tokio::time::sleep_until(slot).await;
            }
            loop {
                match self.release(&mut slot, &mut seen) {
                    Release::Now => return,
                    Release::Paused => continue 'reserve,
                    Release::At(later) => tokio::time::sleep_until(later).await,
                }
            }
        }
    }

    /// After a caller's timer fired for `slot`: release it, send it back to the queue (a
    /// pause began), or have it wait longer (late wake-ups moved the schedule since `seen`).
    /// A release later than the tolerance moves every later slot back by the excess.
    fn release(&self, slot: &mut Instant, seen: &mut Duration) -> Release {
        let mut st = self.state.lock().expect("gate lock");
        let now = Instant::now();
        // A 429 seen by another caller while we slept moves everyone back.
        if st.paused_until > now {
            return Release::Paused;
        }
        // So does a stall another caller woke up late from.
        if st.shifted > *seen {
            *slot += st.shifted - *seen;
            *seen = st.shifted;
            if *slot > now {
                return Release::At(*slot);
            }
        }
        let late = now.saturating_duration_since(*slot);
        if late > self.tolerance && !self.interval.is_zero() {
            let excess = late - self.tolerance;
            st.shifted += excess;
            st.next_slot += excess;
        }
        Release::Now
    }

    /// Pauses every caller for `retry_after` (a 429 answer), at most [`MAX_PAUSE`].
    pub fn pause(&self, retry_after: Duration) {
        let until = Instant::now() + retry_after.min(MAX_PAUSE);
        let mut st = self.state.lock().expect("gate lock");
        if until > st.paused_until {
            st.paused_until = until;
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

    /// 2,500 reads queued at once at 1,000/min: one every 61.2 ms, in arrival order; no
    /// 60-second window ever holds more than 1,000, the budget.
    #[tokio::test(start_paused = true)]
    async fn queued_reads_keep_to_the_budget() {
        let gate = Arc::new(Gate::reads(TIER1_PER_MIN));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..2_500 {
            let g = gate.clone();
            tasks.push(tokio::spawn(async move {
                g.acquire().await;
                Instant::now()
            }));
            // Spawned in order, so they queue in order.
            tokio::task::yield_now().await;
        }
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap() - start);
        }
        assert!(at.is_sorted(), "served in arrival order");
        assert_eq!(at.iter().filter(|d| d.is_zero()).count(), 1, "no burst");
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

    /// `n` callers queued in order at `per_minute`; after `before`, the clock jumps by `stall`
    /// (a host or runtime stall: the timers of the slots inside it fire late). Returns each
    /// caller's release time from the start.
    async fn releases_around_a_stall(
        per_minute: u32,
        n: usize,
        before: Duration,
        stall: Duration,
    ) -> Vec<Duration> {
        let gate = Arc::new(Gate::reads(per_minute));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let g = gate.clone();
            tasks.push(tokio::spawn(async move {
                g.acquire().await;
                Instant::now()
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(before).await;
        tokio::time::advance(stall).await;
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap() - start);
        }
        at
    }

    /// The most releases in any window of `window` (a sliding window, as Qlik's).
    fn busiest(at: &[Duration], window: Duration) -> usize {
        let (mut most, mut lo) = (0, 0);
        for hi in 0..at.len() {
            while at[hi] - at[lo] >= window {
                lo += 1;
            }
            most = most.max(hi - lo + 1);
        }
        most
    }

    /// A 2 s stall (longer than the 1.2 s margin) releases its backlog at once; the later
    /// slots move back with it, so no 60 s window holds more than the budget (with the slots
    /// kept, the backlog and the callers on time 60 s later made 601), and the order holds.
    #[tokio::test(start_paused = true)]
    async fn a_stall_is_not_made_up_for() {
        let stall = Duration::from_secs(2);
        let at = releases_around_a_stall(600, 1_300, Duration::from_secs(5), stall).await;
        assert!(at.is_sorted(), "served in arrival order");
        let most = busiest(&at, Duration::from_secs(60));
        assert!(most <= 600, "{most} in one 60 s window");
        assert!(most >= 585, "the budget is used: {most}");
        // The stall costs at most its length: the lateness of the first slot inside it (it
        // began 100 ms before that slot) less the tolerance (51 ms).
        let last = *at.last().unwrap();
        let unstalled = Duration::from_millis(102) * 1_299;
        let lost = (last - unstalled).as_secs_f64();
        assert!((lost - (2.0 - 0.100 - 0.051)).abs() < 0.001, "{lost}");
    }

    /// A wake-up late by less than the tolerance (half an interval) moves nothing: ordinary
    /// timer lateness costs no throughput.
    #[tokio::test(start_paused = true)]
    async fn small_lateness_costs_nothing() {
        let late = Duration::from_millis(40);
        let at = releases_around_a_stall(600, 100, Duration::from_millis(1_020), late).await;
        assert!(at.is_sorted());
        assert_eq!(*at.last().unwrap(), Duration::from_millis(102) * 99);
        assert!(
            at.iter().any(|d| *d == Duration::from_millis(1_060)),
            "one was late"
        );
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
