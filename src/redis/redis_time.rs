//! Redis's clock as this process sees it.
//!
//! Every time comparison that decides a slot or an admission (deadlines, leases,
//! backpressure) happens inside the scripts, on Redis's own `TIME`: one clock for
//! every replica, whatever their own clocks say. The worker still needs "now" for
//! cheap decisions of its own (whether an idle event's deadline is due, when a failed
//! publish is due again); it uses its local clock corrected by the offset to Redis's
//! clock measured from the last admit reply, so a replica whose clock is off by
//! seconds still decides as the others do.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::model::clock;

/// How long the largest offset seen stands before a smaller one replaces it.
const KEEP_MAX_MS: u64 = 10_000;

/// The local clock plus the offset to Redis's, measured from replies.
///
/// A reply's clock reading is always a little old when it is read here (the round
/// trip, and a pipeline's other parts: against a cluster with a master down, a
/// second or more), so every measured offset is at most the true one. The largest
/// offset of the last [`KEEP_MAX_MS`] is kept: the estimate lags Redis's clock by
/// the fastest recent reply, not the slowest. (The worker signs tokens for an
/// admission instant from it, which the admit script accepts only within 2 s before
/// its own clock.) A clock that really went back (a failover to a master whose
/// clock is behind) is followed once the old maximum is that old.
#[derive(Debug, Default)]
pub(crate) struct RedisTime {
    offset_ms: AtomicI64,
    /// When (local ms) the kept offset was measured; 0: never.
    measured_at_ms: AtomicU64,
}

impl RedisTime {
    /// Record that Redis said `redis_now_ms` just now.
    pub(crate) fn observe(&self, redis_now_ms: u64) {
        self.observe_at(redis_now_ms, clock::now_ms());
    }

    /// Take `redis_now_ms` as Redis's clock now, whatever was kept: the admit
    /// script said the instant signed from the estimate was too far from its clock
    /// (a failover to a master whose clock is behind, a local clock that stepped).
    pub(crate) fn reset(&self, redis_now_ms: u64) {
        if redis_now_ms == 0 {
            return;
        }
        let local = clock::now_ms();
        self.offset_ms.store(
            (redis_now_ms as i64).saturating_sub(local as i64),
            Ordering::Relaxed,
        );
        self.measured_at_ms.store(local.max(1), Ordering::Relaxed);
    }

    fn observe_at(&self, redis_now_ms: u64, local_ms: u64) {
        if redis_now_ms == 0 {
            return;
        }
        let offset = (redis_now_ms as i64).saturating_sub(local_ms as i64);
        let at = self.measured_at_ms.load(Ordering::Relaxed);
        if at == 0
            || offset >= self.offset_ms.load(Ordering::Relaxed)
            || local_ms.saturating_sub(at) > KEEP_MAX_MS
        {
            self.offset_ms.store(offset, Ordering::Relaxed);
            self.measured_at_ms
                .store(local_ms.max(1), Ordering::Relaxed);
        }
    }

    /// Redis's clock now, as far as this process knows (ms since the epoch).
    pub(crate) fn now_ms(&self) -> u64 {
        let local = clock::now_ms() as i64;
        local
            .saturating_add(self.offset_ms.load(Ordering::Relaxed))
            .max(0) as u64
    }

    /// How far the local clock is behind Redis's (negative: ahead), ms.
    #[cfg(test)]
    fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_redis_clock() {
        let t = RedisTime::default();
        let local = clock::now_ms();
        t.observe(local + 10_000);
        let now = t.now_ms();
        assert!(
            now >= local + 9_000 && now <= local + 11_000,
            "{now} vs {local}"
        );
        // A clock that went back is followed once the larger offset is old enough.
        t.observe_at(local - 5_000, local + KEEP_MAX_MS + 1);
        assert!(t.offset_ms() < -4_000);
    }

    #[test]
    fn a_late_reading_does_not_pull_the_estimate_back() {
        let t = RedisTime::default();
        t.observe_at(1_000_000, 1_000_000);
        // A reply read 1.5 s after Redis stamped it.
        t.observe_at(1_002_000, 1_003_500);
        assert_eq!(t.offset_ms(), 0);
        // A faster one that shows Redis ahead is taken at once.
        t.observe_at(1_004_200, 1_004_000);
        assert_eq!(t.offset_ms(), 200);
    }
}
