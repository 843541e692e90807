//! Instant refill: a freed slot wakes the admission of its event at once instead of
//! waiting for the next tick. Wakes are coalesced: a burst of releases marks the
//! event once, and one admit call refills every slot freed meanwhile.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::Notify;

/// Events with freed slots, and a bell for the admission loop.
#[derive(Debug, Default)]
pub struct Refill {
    dirty: Mutex<BTreeSet<String>>,
    bell: Notify,
}

impl Refill {
    /// Mark `event` as having free slots and wake the loop.
    pub fn wake(&self, event: &str) {
        let mut d = match self.dirty.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if d.insert(event.to_owned()) {
            self.bell.notify_one();
        }
    }

    /// Wait until some event was woken.
    pub async fn rung(&self) {
        self.bell.notified().await;
    }

    /// Take the woken events (each once, however many releases it had).
    pub fn take(&self) -> Vec<String> {
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
        assert_eq!(r.take(), vec!["a".to_owned(), "b".to_owned()]);
        assert!(r.take().is_empty());
    }
}
