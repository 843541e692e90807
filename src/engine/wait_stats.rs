//! The wait figures of every served event: each admit reply becomes a sample of
//! that event's estimator (`model::wait_estimate`), and every [`STATS_EVERY_MS`]
//! the figures go to `<prefix>:<event>:stats`, where the API reads
//! `wait_ms_per_position` to show a waiter `position x wait_ms_per_position`.
//!
//! The counters the figures come from are kept in the same hash by the scripts
//! (admit, reap, release), so every replica computes from the same numbers, and the
//! figures any replica writes agree. The worker writes its fields with one pipeline
//! per round of writes, in a task of its own: the pass does not wait for it.

use std::collections::HashMap;
use std::time::Duration;

use crate::model::clock;
use crate::model::keys::Keys;
use crate::model::wait_estimate::{Estimator, Figures, Sample, WINDOW_MS};
use crate::redis::scripts::admit::AdmitOutcome;

/// How often an event's figures are written (and so how stale `updated_at` gets).
pub(crate) const STATS_EVERY_MS: u64 = 2_000;

/// The stats hash outlives its last write by this much, so a retired event's figures
/// go away by themselves, while a served one's is rewritten long before.
const STATS_TTL: Duration = Duration::from_secs(24 * 3600);

/// One event's estimator and what was last read of it.
struct Tracked {
    estimator: Estimator,
    last: Sample,
    /// A sample arrived since the last write.
    fresh: bool,
    written_ms: u64,
}

/// The estimators of the events this worker admits for.
pub(crate) struct WaitStats {
    checkout_window_ms: u64,
    events: HashMap<String, Tracked>,
}

impl WaitStats {
    /// No event yet; `checkout_window` bounds the estimate until one is measured.
    pub(crate) fn new(checkout_window: Duration) -> Self {
        WaitStats {
            checkout_window_ms: u64::try_from(checkout_window.as_millis()).unwrap_or(u64::MAX),
            events: HashMap::new(),
        }
    }

    /// Take in what an admit call read of `event`.
    pub(crate) fn observe(&mut self, event: &str, o: &AdmitOutcome) {
        let t = &o.totals;
        let sample = Sample {
            at_ms: o.now_ms,
            admitted_total: t.admitted,
            left_queue_total: t.left_queue,
            skipped_total: t.skipped,
            no_show_total: t.no_show,
            expired_total: t.expired,
            completed_total: t.completed,
            checkout_ms_total: t.checkout_ms,
            in_use: o.in_use,
            capacity: o.capacity,
            queue_length: o.queue_length,
            rate_per_minute: o.rate_per_minute,
        };
        let window = self.checkout_window_ms;
        let tracked = self
            .events
            .entry(event.to_owned())
            .or_insert_with(|| Tracked {
                estimator: Estimator::new(WINDOW_MS, window),
                last: sample,
                fresh: true,
                written_ms: 0,
            });
        tracked.estimator.push(sample);
        tracked.last = sample;
        tracked.fresh = true;
    }

    /// The figures due to be written at `now_ms` (Redis's clock as seen here). An
    /// event not admitted for since its last write (nobody waiting: the pass skips
    /// the admit call) has its last reading carried forward to now, so its outflow
    /// falls as time passes without admissions instead of freezing.
    pub(crate) fn due(&mut self, now_ms: u64) -> Vec<(String, Figures)> {
        let mut out = Vec::new();
        for (event, t) in &mut self.events {
            if now_ms < t.written_ms.saturating_add(STATS_EVERY_MS) {
                continue;
            }
            if !t.fresh && now_ms > t.last.at_ms {
                t.last.at_ms = now_ms;
                t.estimator.push(t.last);
            }
            t.fresh = false;
            t.written_ms = now_ms;
            if let Some(f) = t.estimator.figures() {
                out.push((event.clone(), f));
            }
        }
        out
    }

    /// Stop tracking `event` (retired and drained).
    pub(crate) fn forget(&mut self, event: &str) {
        self.events.remove(event);
    }
}

/// The commands writing `figures` of each event into its stats hash.
pub(crate) fn pipeline(keys: &Keys, figures: &[(String, Figures)], now_ms: u64) -> redis::Pipeline {
    let mut p = redis::pipe();
    let updated_at = clock::rfc3339_millis(now_ms);
    for (event, f) in figures {
        let key = keys.stats(event);
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&key)
            .arg("admitted_per_min")
            .arg(format!("{:.1}", f.admitted_per_min))
            .arg("no_show_rate")
            .arg(format!("{:.3}", f.no_show_rate))
            .arg("left_queue_rate")
            .arg(format!("{:.3}", f.left_queue_rate))
            .arg("queue_length")
            .arg(f.queue_length)
            .arg("wait_ms_per_position")
            .arg(format!("{:.1}", f.wait_ms_per_position))
            .arg("wait_basis")
            .arg(f.basis.as_str())
            .arg("updated_at")
            .arg(&updated_at);
        if let Some(ms) = f.avg_checkout_ms {
            cmd.arg("avg_checkout_ms").arg(format!("{ms:.0}"));
        }
        p.add_command(cmd).ignore();
        p.cmd("PEXPIRE")
            .arg(&key)
            .arg(STATS_TTL.as_millis() as u64)
            .ignore();
    }
    p
}
