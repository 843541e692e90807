//! Instant refill: a freed slot wakes the admission of its event at once instead of
//! waiting for the next tick. Wakes are coalesced: a burst of releases marks the
//! event once, and one admit call refills every slot freed meanwhile.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Events with freed slots, and a bell for the admission loop.
#[derive(Debug, Default)]
pub(crate) struct Refill {
    /// Event -> when it was first woken since the last pass (for the latency).
    dirty: Mutex<BTreeMap<String, Instant>>,
    bell: Notify,
}

impl Refill {
    /// Mark `event` as having free slots and wake the loop.
    pub(crate) fn wake(&self, event: &str) {
        let mut d = match self.dirty.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if !d.contains_key(event) {
            d.insert(event.to_owned(), Instant::now());
            self.bell.notify_one();
        }
    }

    /// Wait until some event was woken.
    pub(crate) async fn rung(&self) {
        self.bell.notified().await;
    }

    /// Take the woken events (each once, however many releases it had), with when
    /// each was first woken.
    pub(crate) fn take(&self) -> Vec<(String, Instant)> {
        let mut d = match self.dirty.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::mem::take(&mut *d).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_coalesce_per_event() {
        let r = Refill::default();
        for _ in 0..1000 {
            r.wake("a");
        }
        r.wake("b");
        r.rung().await;
        let events: Vec<String> = r.take().into_iter().map(|(e, _)| e).collect();
        assert_eq!(events, vec!["a".to_owned(), "b".to_owned()]);
        assert!(r.take().is_empty());
    }
}
