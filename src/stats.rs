//! Counters the worker keeps about itself (the seed's GetStatus figures and more).

use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters; cheap to bump from any task.
#[derive(Debug, Default)]
pub struct Stats {
    pub started_at_ms: AtomicU64,
    pub last_processed_ms: AtomicU64,
    pub cycles: AtomicU64,
    pub admitted: AtomicU64,
    pub skipped: AtomicU64,
    pub published: AtomicU64,
    pub publish_failures: AtomicU64,
    pub tokens_written: AtomicU64,
    pub outbox_claimed: AtomicU64,
    pub outbox_invalid: AtomicU64,
    pub released: AtomicU64,
    pub release_noop: AtomicU64,
    pub completions_rejected: AtomicU64,
    pub expired: AtomicU64,
    pub adopted: AtomicU64,
    pub refills: AtomicU64,
    pub errors: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
