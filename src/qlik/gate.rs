//! The write gate: one Qlik write budget shared by every job.
//!
//! Qlik limits Tier 2 calls (PATCH, PUT, `/oauth/token`, …) per identity, 100 per minute by
//! default. Every writer asks the gate for a slot first; slots are spaced evenly so a sliding
//! one-minute window never sees more than the budget. A 429 with `Retry-After` pauses *every*
//! writer until the server's deadline, not only the one that got it.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

/// Paces Tier 2 requests for one Qlik identity.
#[derive(Debug)]
pub struct WriteGate {
    interval: Duration,
    state: Mutex<GateState>,
    pauses: AtomicU64,
}

#[derive(Debug)]
struct GateState {
    next_slot: Instant,
    paused_until: Instant,
}

impl WriteGate {
    /// A gate allowing `per_minute` writes per minute; `0` means unlimited. A 2% safety margin
    /// keeps clock skew and network jitter from tipping the server's window over.
    pub fn new(per_minute: u32) -> Self {
        let interval = if per_minute == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(60.0 * 1.02 / f64::from(per_minute))
        };
        let now = Instant::now();
        WriteGate {
            interval,
            state: Mutex::new(GateState {
                next_slot: now,
                paused_until: now,
            }),
            pauses: AtomicU64::new(0),
        }
    }

    /// Waits until this caller may send one write.
    pub async fn acquire(&self) {
        loop {
            let (slot, now) = {
                let mut st = self.state.lock().expect("write gate lock");
                let now = Instant::now();
                let slot = st.next_slot.max(st.paused_until).max(now);
                st.next_slot = slot + self.interval;
                (slot, now)
            };
            if slot > now {
                tokio::time::sleep_until(slot).await;
            }
            // A 429 seen by another writer while we slept moves everyone back.
            let paused_until = self.state.lock().expect("write gate lock").paused_until;
            if paused_until <= Instant::now() {
                return;
            }
        }
    }

    /// Pauses every writer for `retry_after` (a 429 answer).
    pub fn pause(&self, retry_after: Duration) {
        let until = Instant::now() + retry_after;
        let mut st = self.state.lock().expect("write gate lock");
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

#[cfg(test)]
mod tests {
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

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_back_every_writer() {
        let gate = std::sync::Arc::new(WriteGate::new(0));
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
