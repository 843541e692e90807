//! Redis's clock as this process sees it.
//!
//! Every time comparison that decides a slot or an admission (deadlines, leases,
//! backpressure) happens inside the scripts, on Redis's own `TIME`: one clock for
//! every replica, whatever their own clocks say. The worker still needs "now" for
//! cheap decisions of its own (whether an idle event's deadline is due, when a failed
//! publish is due again); it uses its local clock corrected by the offset to Redis's
//! clock measured from the last admit reply, so a replica whose clock is off by
//! seconds still decides as the others do.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::model::clock;

/// The local clock plus the last measured offset to Redis's.
#[derive(Debug, Default)]
pub(crate) struct RedisTime {
    offset_ms: AtomicI64,
}

impl RedisTime {
    /// Record that Redis said `redis_now_ms` just now.
    pub(crate) fn observe(&self, redis_now_ms: u64) {
        if redis_now_ms == 0 {
            return;
        }
        let local = clock::now_ms() as i64;
        self.offset_ms.store(
            (redis_now_ms as i64).saturating_sub(local),
            Ordering::Relaxed,
        );
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
        t.observe(local - 5_000);
        assert!(t.offset_ms() < -4_000);
    }
}
