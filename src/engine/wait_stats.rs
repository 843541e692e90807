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

/// How often an event's figures are written while anyone waits or holds a slot
/// (and so how stale `updated_at` gets).
pub(crate) const STATS_EVERY_MS: u64 = 2_000;

/// How often an idle event's (nobody waiting, no slot in use) figures are written:
/// their numbers hardly move, and with thousands of idle events a write every 2 s
/// would cost Redis work on every pass for nothing.
pub(crate) const IDLE_STATS_EVERY_MS: u64 = 30_000;

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
            let idle = t.last.queue_length == 0 && t.last.in_use == 0;
            let every = if idle {
                IDLE_STATS_EVERY_MS
            } else {
                STATS_EVERY_MS
            };
            if now_ms < t.written_ms.saturating_add(every) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(now_ms: u64, queue_length: u64, in_use: u64) -> AdmitOutcome {
        AdmitOutcome {
            now_ms,
            queue_length,
            in_use,
            capacity: 10,
            ..AdmitOutcome::default()
        }
    }

    fn due_events(w: &mut WaitStats, now_ms: u64) -> Vec<String> {
        let mut v: Vec<String> = w.due(now_ms).into_iter().map(|(e, _)| e).collect();
        v.sort();
        v
    }

    #[test]
    fn busy_events_are_written_every_2s_and_idle_ones_every_30s() {
        let mut w = WaitStats::new(Duration::from_secs(900));
        let t0 = 1_700_000_000_000;
        w.observe("busy", &outcome(t0, 50, 10));
        w.observe("idle", &outcome(t0, 0, 0));
        assert_eq!(due_events(&mut w, t0), vec!["busy", "idle"]);
        w.observe("busy", &outcome(t0 + 1_000, 49, 10));
        assert!(due_events(&mut w, t0 + 1_500).is_empty());
        assert_eq!(due_events(&mut w, t0 + 2_000), vec!["busy"]);
        assert_eq!(due_events(&mut w, t0 + 4_000), vec!["busy"]);
        assert_eq!(due_events(&mut w, t0 + 30_000), vec!["busy", "idle"]);
        // Someone joins the idle event: every 2 s again.
        w.observe("idle", &outcome(t0 + 31_000, 3, 0));
        assert_eq!(due_events(&mut w, t0 + 32_000), vec!["busy", "idle"]);
        w.forget("busy");
        assert_eq!(due_events(&mut w, t0 + 34_000), vec!["idle"]);
    }
}
