//! How long a waiter still waits: the wait per queue position, from the admit counters.
//!
//! The worker reads an event after each admit call (a [`Sample`]: the cumulative
//! counters Redis keeps, and the slots in use, capacity and queue length right after
//! the call), pushes it into that event's [`Estimator`], and writes the
//! [`Figures`] to the `<prefix>:<event>:stats` hash, which the API multiplies by a
//! waiter's position. Everything here is arithmetic on those readings: no I/O, no
//! clock of its own (time is the Redis clock carried by the samples).
//!
//! The model:
//!
//! - The window is the samples of the last [`WINDOW_MS`], plus the newest sample
//!   older than that as the reference point. Take the first (reference) and last
//!   sample; `dt = last.at - first.at`, and each counter's delta
//!   `d_x = last.x - first.x`.
//! - `admitted_per_min = d_admitted / dt * 60000` (0 when `dt == 0`).
//! - Positions ahead of a waiter leave the queue either admitted (they take a slot)
//!   or skipped (they left the queue, or were invalid; they take none). The skip
//!   share `s = (d_left + d_skipped) / (d_left + d_skipped + d_admitted)` (0 when
//!   nothing left the queue).
//! - Releases in the window `R = d_admitted - (last.in_use - first.in_use)`, at
//!   least 0. Admissions that only filled free slots are not throughput: this removes
//!   the initial fill at the start of a sale, and it counts every release, including
//!   those the API made without a completion message.
//! - Saturated: at least half the window's samples have `in_use >= capacity` (in use
//!   is read right after the admit call, so a capacity-bound event reads exactly
//!   full).
//! - When `dt >= 5 s` and `R > 0`, the basis is "measured":
//!   - saturated: the mean slot hold `W = mean_in_use * dt / R` (Little's law, over
//!     the window's samples), and the throughput `λ = last.capacity / W` per ms. In
//!     the steady state that is `R / dt`, and it follows a capacity change at once
//!     (λ scales with the new capacity, the hold time does not change);
//!   - not saturated: `λ = d_admitted / dt` (the event is bound by its batch or its
//!     rate: what it admits is what it can);
//!   - either way capped at `rate_per_minute / 60000` when a rate is configured.
//! - Otherwise the basis is "bound": `λ = last.capacity / checkout_window` (every
//!   slot comes back at the latest when its checkout window ends, so this is the
//!   slowest the queue can move), capped by the rate likewise; from the rate alone
//!   when capacity or checkout window is 0.
//! - `wait_ms_per_position = (1 - s) / λ`, and 0 when nothing gives a positive λ
//!   (a capacity or rate of 0: the queue does not move, there is no honest number).
//! - `avg_checkout_ms = d_checkout_ms / d_completed` (none without completions);
//!   `no_show_rate = d_no_show / (d_no_show + d_expired + d_completed)`;
//!   `left_queue_rate = d_left / (d_left + d_admitted)`; both 0 when their
//!   denominator is. `queue_length` is the last sample's.
//!
//! Every figure is finite and at least 0, whatever the readings: the hash is read by
//! another program, and a NaN or an infinity there is worse than a 0.
//!
//! Counters only go up, so one going down means Redis lost the stats key (a restart,
//! a flush): the history before it measures a different run of counters, and is
//! dropped. Memory is bounded: samples closer together than a 512th of the window are
//! merged into the newest (counters are cumulative, so nothing is lost but the
//! in-between `in_use` readings, and the samples stay evenly spread in time), and at
//! most [`MAX_SAMPLES`] are kept whatever the window.

use std::collections::VecDeque;

/// The default window over which the figures are measured: long enough to hold
/// several admit calls and releases, short enough to follow a sale as it changes.
pub(crate) const WINDOW_MS: u64 = 60_000;

/// The shortest span measured from: under it a few admissions would swing the rate,
/// so the bound is given instead.
const MIN_MEASURED_MS: u64 = 5_000;

/// At most this many samples per event, whatever the window and the call rate.
const MAX_SAMPLES: usize = 1024;

/// Samples are merged when closer than `window / MERGE_DIVISOR`: that keeps a full
/// window at about half of [`MAX_SAMPLES`], so thinning is only a fallback.
const MERGE_DIVISOR: u64 = (MAX_SAMPLES / 2) as u64;

const MS_PER_MIN: f64 = 60_000.0;

/// One reading of an event, taken after each admit call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Sample {
    /// The Redis clock when read, ms since the epoch.
    pub(crate) at_ms: u64,
    /// Admissions so far. The counters are kept in Redis and may reset to 0 if the
    /// key was lost: a decrease restarts the history.
    pub(crate) admitted_total: u64,
    /// Waiters skipped at their turn because they had left.
    pub(crate) left_queue_total: u64,
    /// Queue members dropped as invalid (not queued, no hash...).
    pub(crate) skipped_total: u64,
    /// Admitted, never claimed: the slot was reaped at the claim window.
    pub(crate) no_show_total: u64,
    /// Slots reaped at the checkout deadline.
    pub(crate) expired_total: u64,
    /// Slots freed by a completion message.
    pub(crate) completed_total: u64,
    /// The sum over those completions of (completion - admission), ms.
    pub(crate) checkout_ms_total: u64,
    /// Slots in use right after the admit call.
    pub(crate) in_use: u64,
    /// The event's capacity (`max_concurrent`) at that call.
    pub(crate) capacity: u64,
    /// Waiters still queued after the call.
    pub(crate) queue_length: u64,
    /// The configured admission rate cap (`new_users_per_minute`), if any.
    pub(crate) rate_per_minute: Option<u64>,
}

impl Sample {
    /// The cumulative counters, to see whether any went down.
    fn counters(&self) -> [u64; 7] {
        [
            self.admitted_total,
            self.left_queue_total,
            self.skipped_total,
            self.no_show_total,
            self.expired_total,
            self.completed_total,
            self.checkout_ms_total,
        ]
    }
}

/// What the wait per position rests on, so a reader can tell a measurement from a
/// worst case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Basis {
    /// Measured from the releases and admissions of the window.
    Measured,
    /// Too little history (or no releases yet): the slowest the queue can move,
    /// from the capacity and checkout window (and the rate cap).
    Bound,
}

impl Basis {
    /// The name written to the stats hash.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Basis::Measured => "measured",
            Basis::Bound => "bound",
        }
    }
}

/// The figures of one event's window; every number is finite and at least 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Figures {
    /// Admissions a minute over the window.
    pub(crate) admitted_per_min: f64,
    /// Mean time from admission to completion, over the window's completions.
    pub(crate) avg_checkout_ms: Option<f64>,
    /// `no_shows / (no_shows + expired + completed)` in the window, 0 when none.
    pub(crate) no_show_rate: f64,
    /// `left / (left + admitted)` in the window, 0 when none.
    pub(crate) left_queue_rate: f64,
    /// Waiters queued at the last sample.
    pub(crate) queue_length: u64,
    /// The expected wait for each position ahead, ms (0 when there is no estimate).
    pub(crate) wait_ms_per_position: f64,
    /// Whether that wait was measured or is the bound.
    pub(crate) basis: Basis,
}

/// One event's recent samples, and the figures drawn from them.
#[derive(Debug, Clone)]
pub(crate) struct Estimator {
    /// Oldest first: the reference, then the window's samples, the newest last.
    samples: VecDeque<Sample>,
    window_ms: u64,
    checkout_window_ms: u64,
}

impl Estimator {
    /// An empty estimator over `window_ms` (usually [`WINDOW_MS`]), for an event whose
    /// slots are held at most `checkout_window_ms`.
    pub(crate) fn new(window_ms: u64, checkout_window_ms: u64) -> Self {
        Estimator {
            samples: VecDeque::new(),
            window_ms,
            checkout_window_ms,
        }
    }

    /// Adds a reading. One older than the newest is ignored (a late reading says
    /// nothing new), unless it is older by more than the window: then the clock went
    /// back (a failover to another server), and keeping the history would freeze the
    /// figures for as long, so it restarts instead. A counter that went down also
    /// restarts the history (Redis lost the key).
    pub(crate) fn push(&mut self, s: Sample) {
        if let Some(last) = self.samples.back() {
            if s.at_ms < last.at_ms {
                if last.at_ms - s.at_ms <= self.window_ms {
                    return;
                }
                self.samples.clear();
            } else if s
                .counters()
                .iter()
                .zip(last.counters().iter())
                .any(|(new, old)| new < old)
            {
                self.samples.clear();
            }
        }
        self.insert(s);
        self.trim(s.at_ms);
    }

    /// Appends `s`, or replaces the newest with it when the newest is too close to
    /// the one before (the reference is never replaced).
    fn insert(&mut self, s: Sample) {
        let gap = self.window_ms / MERGE_DIVISOR;
        let n = self.samples.len();
        if let Some(before) = n.checked_sub(2).and_then(|i| self.samples.get(i))
            && s.at_ms.saturating_sub(before.at_ms) < gap
        {
            self.samples.pop_back();
        }
        self.samples.push_back(s);
    }

    /// Drops what is older than the window but the newest such sample (the
    /// reference), then thins out if still over [`MAX_SAMPLES`].
    fn trim(&mut self, now_ms: u64) {
        if let Some(cutoff) = now_ms.checked_sub(self.window_ms) {
            while self.samples.get(1).is_some_and(|next| next.at_ms <= cutoff) {
                self.samples.pop_front();
            }
        }
        if self.samples.len() > MAX_SAMPLES {
            // Every other sample between the reference and the newest: the span and
            // the deltas stay exact, the in-use readings stay spread over the window.
            let last = self.samples.len() - 1;
            let mut i = 0;
            self.samples.retain(|_| {
                let keep = i == 0 || i == last || i % 2 == 0;
                i += 1;
                keep
            });
        }
    }

    /// The figures of the window; none before any sample.
    pub(crate) fn figures(&self) -> Option<Figures> {
        let first = self.samples.front()?;
        let last = self.samples.back()?;
        let dt_ms = last.at_ms.saturating_sub(first.at_ms);
        let dt = dt_ms as f64;
        let d = |f: fn(&Sample) -> u64| f(last).saturating_sub(f(first)) as f64;
        let d_admitted = d(|s| s.admitted_total);
        let d_left = d(|s| s.left_queue_total);
        let d_skipped = d(|s| s.skipped_total);
        let d_no_show = d(|s| s.no_show_total);
        let d_expired = d(|s| s.expired_total);
        let d_completed = d(|s| s.completed_total);
        let d_checkout_ms = d(|s| s.checkout_ms_total);

        let skip_share = ratio(d_left + d_skipped, d_left + d_skipped + d_admitted);
        // Admissions less the slots they newly filled: what came back and was reused.
        let releases = d_admitted - (last.in_use as f64 - first.in_use as f64);

        let measured = if dt_ms >= MIN_MEASURED_MS && releases > 0.0 {
            self.measured_rate(last, dt, d_admitted, releases)
        } else {
            None
        };
        let (basis, per_ms) = match measured {
            Some(rate) => (Basis::Measured, rate),
            None => (Basis::Bound, self.bound_rate(last)),
        };
        let wait_ms_per_position = if per_ms > 0.0 {
            finite((1.0 - skip_share) / per_ms)
        } else {
            0.0
        };

        Some(Figures {
            admitted_per_min: ratio(d_admitted * MS_PER_MIN, dt),
            avg_checkout_ms: (d_completed > 0.0).then(|| ratio(d_checkout_ms, d_completed)),
            no_show_rate: ratio(d_no_show, d_no_show + d_expired + d_completed),
            left_queue_rate: ratio(d_left, d_left + d_admitted),
            queue_length: last.queue_length,
            wait_ms_per_position,
            basis,
        })
    }

    /// The measured throughput per ms, if it is a positive number.
    fn measured_rate(&self, last: &Sample, dt: f64, d_admitted: f64, releases: f64) -> Option<f64> {
        let n = self.samples.len() as f64;
        let full = self
            .samples
            .iter()
            .filter(|s| s.in_use >= s.capacity)
            .count() as f64;
        let rate = if 2.0 * full >= n {
            let mean_in_use = self.samples.iter().map(|s| s.in_use as f64).sum::<f64>() / n;
            let hold_ms = finite(mean_in_use * dt / releases);
            if hold_ms > 0.0 {
                ratio(last.capacity as f64, hold_ms)
            } else {
                // Full at capacity 0 for most of the window: no hold time to measure,
                // what was admitted is the throughput.
                ratio(d_admitted, dt)
            }
        } else {
            ratio(d_admitted, dt)
        };
        let rate = cap_by_rate(rate, last.rate_per_minute);
        (rate > 0.0).then_some(rate)
    }

    /// The slowest throughput per ms: every slot back by the end of its checkout
    /// window, capped by the rate; from the rate alone without capacity or window.
    fn bound_rate(&self, last: &Sample) -> f64 {
        if last.capacity > 0 && self.checkout_window_ms > 0 {
            let rate = ratio(last.capacity as f64, self.checkout_window_ms as f64);
            cap_by_rate(rate, last.rate_per_minute)
        } else {
            last.rate_per_minute
                .map_or(0.0, |r| ratio(r as f64, MS_PER_MIN))
        }
    }
}

/// `rate` (per ms), at most the configured admissions a minute.
fn cap_by_rate(rate: f64, per_minute: Option<u64>) -> f64 {
    match per_minute {
        Some(r) => rate.min(ratio(r as f64, MS_PER_MIN)),
        None => rate,
    }
}

/// `n / d`, or 0 when that is not a finite positive number.
fn ratio(n: f64, d: f64) -> f64 {
    if d > 0.0 { finite(n / d) } else { 0.0 }
}

/// `x` if finite and positive, else 0.
fn finite(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKOUT_MS: u64 = 900_000;

    /// A sale that keeps its slots full: each tick, `in_use * tick / hold_ms` slots come
    /// back (a mean hold of `hold_ms`), and every free slot is admitted again from an
    /// endless queue.
    struct Sim {
        s: Sample,
        hold_ms: f64,
        carry: f64,
        left_per_tick: u64,
        skipped_per_tick: u64,
    }

    impl Sim {
        fn new(capacity: u64, hold_ms: f64) -> Sim {
            Sim {
                s: Sample {
                    capacity,
                    queue_length: 10_000,
                    ..Sample::default()
                },
                hold_ms,
                carry: 0.0,
                left_per_tick: 0,
                skipped_per_tick: 0,
            }
        }

        fn tick(&mut self, ms: u64) -> Sample {
            let s = &mut self.s;
            s.at_ms += ms;
            let back = s.in_use as f64 * ms as f64 / self.hold_ms + self.carry;
            let whole = back.floor();
            self.carry = back - whole;
            let whole = (whole as u64).min(s.in_use);
            s.in_use -= whole;
            s.completed_total += whole;
            s.checkout_ms_total += whole * self.hold_ms as u64;
            let free = s.capacity.saturating_sub(s.in_use);
            s.admitted_total += free;
            s.in_use += free;
            s.left_queue_total += self.left_per_tick;
            s.skipped_total += self.skipped_per_tick;
            *s
        }

        fn run(&mut self, e: &mut Estimator, ticks: usize) {
            for _ in 0..ticks {
                e.push(self.tick(1_000));
            }
        }
    }

    fn estimator() -> Estimator {
        Estimator::new(WINDOW_MS, CHECKOUT_MS)
    }

    fn figures(e: &Estimator) -> Figures {
        let f = e.figures();
        assert!(f.is_some(), "figures after a sample");
        let f = f.unwrap_or(Figures {
            admitted_per_min: 0.0,
            avg_checkout_ms: None,
            no_show_rate: 0.0,
            left_queue_rate: 0.0,
            queue_length: 0,
            wait_ms_per_position: 0.0,
            basis: Basis::Bound,
        });
        assert_sane(&f);
        f
    }

    fn assert_sane(f: &Figures) {
        let all = [
            f.admitted_per_min,
            f.avg_checkout_ms.unwrap_or(0.0),
            f.no_show_rate,
            f.left_queue_rate,
            f.wait_ms_per_position,
        ];
        for x in all {
            assert!(x.is_finite() && x >= 0.0, "{x} in {f:?}");
        }
        assert!(f.no_show_rate <= 1.0 && f.left_queue_rate <= 1.0, "{f:?}");
    }

    fn within(actual: f64, expected: f64, share: f64) -> bool {
        (actual - expected).abs() <= expected.abs() * share
    }

    #[test]
    fn nothing_before_any_sample() {
        assert_eq!(estimator().figures(), None);
    }

    #[test]
    fn basis_names_are_what_the_api_reads() {
        assert_eq!(Basis::Measured.as_str(), "measured");
        assert_eq!(Basis::Bound.as_str(), "bound");
    }

    #[test]
    fn steady_saturated_sale_waits_one_release_interval_per_position() {
        // 100 slots held 20 s: 5 releases a second, so one position every 200 ms.
        let mut e = estimator();
        let mut sale = Sim::new(100, 20_000.0);
        sale.run(&mut e, 120);
        let f = figures(&e);
        assert_eq!(f.basis, Basis::Measured);
        assert!(within(f.wait_ms_per_position, 200.0, 0.01), "{f:?}");
        assert!(within(f.admitted_per_min, 300.0, 0.01), "{f:?}");
        assert_eq!(f.avg_checkout_ms, Some(20_000.0));
        assert_eq!(f.queue_length, 10_000);
    }

    #[test]
    fn initial_fill_is_not_counted_as_throughput() {
        let mut e = estimator();
        let mut sale = Sim::new(100, 20_000.0);
        // Before the sale opens: a reading with nothing in use.
        e.push(sale.s);
        sale.run(&mut e, 30);
        let f = figures(&e);
        assert_eq!(f.basis, Basis::Measured);
        // Counting the 100 first admissions as throughput would give about 122 ms.
        assert!(within(f.wait_ms_per_position, 200.0, 0.05), "{f:?}");
    }

    #[test]
    fn doubling_capacity_halves_the_wait_at_once() {
        let mut e = estimator();
        let mut sale = Sim::new(100, 20_000.0);
        sale.run(&mut e, 120);
        let before = figures(&e).wait_ms_per_position;
        sale.s.capacity = 200;
        sale.run(&mut e, 1);
        let f = figures(&e);
        assert_eq!(f.basis, Basis::Measured);
        assert!(
            within(f.wait_ms_per_position, before / 2.0, 0.03),
            "{before} then {f:?}"
        );
    }

    #[test]
    fn skip_share_scales_the_wait_by_one_minus_it() {
        let mut plain = estimator();
        Sim::new(100, 20_000.0).run(&mut plain, 120);
        let mut e = estimator();
        let mut sale = Sim::new(100, 20_000.0);
        // 5 admitted, 1 left and 1 invalid a second: a skip share of 2/7.
        sale.left_per_tick = 1;
        sale.skipped_per_tick = 1;
        sale.run(&mut e, 120);
        let f = figures(&e);
        let expected = figures(&plain).wait_ms_per_position * 5.0 / 7.0;
        assert!(within(f.wait_ms_per_position, expected, 0.01), "{f:?}");
        assert!(within(f.left_queue_rate, 1.0 / 6.0, 0.01), "{f:?}");
    }

    #[test]
    fn rate_cap_binds_the_measured_throughput() {
        let mut e = estimator();
        let mut sale = Sim::new(100, 20_000.0);
        sale.s.rate_per_minute = Some(60);
        sale.run(&mut e, 120);
        let f = figures(&e);
        assert_eq!(f.basis, Basis::Measured);
        assert!(within(f.wait_ms_per_position, 1_000.0, 0.001), "{f:?}");
    }

    #[test]
    fn rate_cap_binds_the_bound() {
        let mut e = estimator();
        let capped = Sample {
            capacity: 100,
            rate_per_minute: Some(6),
            ..Sample::default()
        };
        e.push(capped);
        let f = figures(&e);
        assert_eq!(f.basis, Basis::Bound);
        // Slots give 100 / 900 s, the rate 6 a minute: the rate is slower.
        assert!(within(f.wait_ms_per_position, 10_000.0, 1e-9), "{f:?}");
        let mut e = estimator();
        e.push(Sample {
            rate_per_minute: Some(600),
            ..capped
        });
        assert!(within(figures(&e).wait_ms_per_position, 9_000.0, 1e-9));
    }

    #[test]
    fn not_saturated_uses_admissions() {
        // 10 of 100 slots in use, 2 admitted and 2 released a second: batch-bound.
        let mut e = estimator();
        for k in 0..=60 {
            e.push(Sample {
                at_ms: k * 1_000,
                admitted_total: 2 * k,
                completed_total: 2 * k,
                in_use: 10,
                capacity: 100,
                queue_length: 50,
                ..Sample::default()
            });
        }
        let f = figures(&e);
        assert_eq!(f.basis, Basis::Measured);
        assert!(within(f.wait_ms_per_position, 500.0, 1e-9), "{f:?}");
        assert!(within(f.admitted_per_min, 120.0, 1e-9), "{f:?}");
    }

    #[test]
    fn before_five_seconds_the_basis_is_the_bound() {
        let mut e = estimator();
        let mut sale = Sim::new(100, 20_000.0);
        sale.run(&mut e, 4);
        let f = figures(&e);
        assert_eq!(f.basis, Basis::Bound);
        assert!(within(f.wait_ms_per_position, 9_000.0, 1e-9), "{f:?}");
    }

    #[test]
    fn without_releases_the_basis_is_the_bound() {
        // Full, and nobody finishes: no throughput to measure.
        let mut e = estimator();
        for k in 0..=20 {
            e.push(Sample {
                at_ms: k * 1_000,
                admitted_total: 100,
                in_use: 100,
                capacity: 100,
                ..Sample::default()
            });
        }
        let f = figures(&e);
        assert_eq!(f.basis, Basis::Bound);
        assert!(within(f.wait_ms_per_position, 9_000.0, 1e-9), "{f:?}");
    }

    #[test]
    fn counter_decrease_restarts_history() {
        let mut e = estimator();
        let mut sale = Sim::new(100, 20_000.0);
        sale.run(&mut e, 120);
        let lost = Sample {
            at_ms: sale.s.at_ms + 1_000,
            admitted_total: 0,
            ..sale.s
        };
        e.push(lost);
        assert_eq!(e.samples.len(), 1);
        let f = figures(&e);
        assert_eq!(f.basis, Basis::Bound);
        assert_eq!(f.admitted_per_min, 0.0);
    }

    #[test]
    fn samples_older_than_the_window_are_dropped_except_the_reference() {
        let mut e = estimator();
        let at = |at_ms| Sample {
            at_ms,
            ..Sample::default()
        };
        for t in [0, 50_000, 100_000] {
            e.push(at(t));
        }
        // 0 is the newest sample at or before 40 000: the reference.
        let times = |e: &Estimator| e.samples.iter().map(|s| s.at_ms).collect::<Vec<_>>();
        assert_eq!(times(&e), [0, 50_000, 100_000]);
        // Now 50 000 is the newest at or before 70 000.
        e.push(at(130_000));
        assert_eq!(times(&e), [50_000, 100_000, 130_000]);
        // One sample a second for two minutes: the window and its reference.
        let mut e = estimator();
        for k in 0..=120 {
            e.push(at(k * 1_000));
        }
        assert_eq!(e.samples.len(), 61);
        assert_eq!(e.samples.front().map(|s| s.at_ms), Some(60_000));
    }

    #[test]
    fn late_sample_is_ignored() {
        let mut e = estimator();
        let s = Sample {
            at_ms: 10_000,
            admitted_total: 5,
            ..Sample::default()
        };
        e.push(s);
        e.push(Sample {
            at_ms: 9_000,
            admitted_total: 0,
            ..s
        });
        assert_eq!(e.samples.iter().copied().collect::<Vec<_>>(), [s]);
    }

    #[test]
    fn clock_back_by_more_than_the_window_restarts_history() {
        let mut e = estimator();
        e.push(Sample {
            at_ms: 1_000_000,
            ..Sample::default()
        });
        let earlier = Sample {
            at_ms: 1_000_000 - WINDOW_MS - 1,
            ..Sample::default()
        };
        e.push(earlier);
        assert_eq!(e.samples.iter().copied().collect::<Vec<_>>(), [earlier]);
    }

    #[test]
    fn memory_is_bounded() {
        // Frequent calls: merged to about one sample per 512th of the window.
        let mut e = estimator();
        for k in 0..100_000 {
            e.push(Sample {
                at_ms: k,
                admitted_total: k,
                ..Sample::default()
            });
        }
        assert!(e.samples.len() <= MAX_SAMPLES, "{}", e.samples.len());
        assert_eq!(e.samples.back().map(|s| s.at_ms), Some(99_999));
        // Nothing to merge or drop (all at one instant): thinned, ends kept.
        let mut e = Estimator::new(100, CHECKOUT_MS);
        for k in 0..5_000 {
            e.push(Sample {
                at_ms: 7,
                admitted_total: k,
                ..Sample::default()
            });
        }
        assert!(e.samples.len() <= MAX_SAMPLES, "{}", e.samples.len());
        assert_eq!(e.samples.front().map(|s| s.admitted_total), Some(0));
        assert_eq!(e.samples.back().map(|s| s.admitted_total), Some(4_999));
    }

    #[test]
    fn window_deltas_give_the_rates_and_mean_checkout() {
        let mut e = estimator();
        e.push(Sample {
            capacity: 10,
            ..Sample::default()
        });
        e.push(Sample {
            at_ms: 10_000,
            admitted_total: 8,
            left_queue_total: 2,
            no_show_total: 1,
            expired_total: 5,
            completed_total: 4,
            checkout_ms_total: 40_000,
            capacity: 10,
            queue_length: 3,
            ..Sample::default()
        });
        let f = figures(&e);
        assert!(within(f.admitted_per_min, 48.0, 1e-9), "{f:?}");
        assert_eq!(f.avg_checkout_ms, Some(10_000.0));
        assert!(within(f.no_show_rate, 0.1, 1e-9), "{f:?}");
        assert!(within(f.left_queue_rate, 0.2, 1e-9), "{f:?}");
        assert_eq!(f.queue_length, 3);
    }

    #[test]
    fn never_nan_or_infinity_with_zeros_everywhere() {
        let mut e = Estimator::new(0, 0);
        for _ in 0..3 {
            e.push(Sample::default());
            let f = figures(&e);
            assert_eq!(f.wait_ms_per_position, 0.0);
            assert_eq!(f.avg_checkout_ms, None);
        }
        // Capacity 0 while slots drain: releases, but no capacity to measure with.
        let mut e = Estimator::new(WINDOW_MS, 0);
        for (k, in_use) in [5, 0].into_iter().enumerate() {
            e.push(Sample {
                at_ms: k as u64 * 10_000,
                in_use,
                rate_per_minute: Some(0),
                ..Sample::default()
            });
        }
        assert_eq!(figures(&e).wait_ms_per_position, 0.0);
        // Extreme readings.
        let mut e = Estimator::new(u64::MAX, u64::MAX);
        e.push(Sample::default());
        e.push(Sample {
            at_ms: u64::MAX,
            admitted_total: u64::MAX,
            left_queue_total: u64::MAX,
            skipped_total: u64::MAX,
            no_show_total: u64::MAX,
            expired_total: u64::MAX,
            completed_total: u64::MAX,
            checkout_ms_total: u64::MAX,
            in_use: u64::MAX,
            capacity: u64::MAX,
            queue_length: u64::MAX,
            rate_per_minute: Some(u64::MAX),
        });
        figures(&e);
    }
}
