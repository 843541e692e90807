//! Repeated warnings: written once, then counted.
//!
//! An outage makes the same warning fire on every retry, every cycle and for every
//! outbox entry; a log written at that rate buries what matters and costs a log
//! pipeline more than the outage itself. Each such line has a kind (its message, a
//! `&'static str`). The first occurrence of a kind is written at once, in full;
//! later ones within [`WINDOW`] are only counted, and when the window ends one
//! summary line of the same level says how many there were:
//!
//! ```text
//! WARN waitroom_worker::log_limit: 57 more like this in the last 10s kind="QUEUE_READY not acknowledged, will retry" repeated=57
//! ```
//!
//! So a kind writes at most one line per window however often it fires, and the
//! count loses nothing. A kind that stays quiet for a whole window is written in
//! full again the next time it fires.
//!
//! [`LogLimiter`] is the bookkeeping alone, driven by the caller's clock (unit
//! tested); [`log_limited!`](crate::log_limited) and [`allow`] use one limiter for
//! the process, and a thread of its own writes the summaries of windows that ended
//! (librdkafka reports errors on its own threads, outside any async runtime).

use std::collections::HashMap;
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::Level;

/// How long repeats of a kind are counted before their summary is written.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// Repeats of one kind that were not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub kind: &'static str,
    pub level: Level,
    /// How many occurrences were counted and not written.
    pub repeated: u64,
    /// Since when: from the start of the window to its summary.
    pub over: Duration,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    level: Level,
    repeated: u64,
}

/// Per kind: when its window started and how many repeats it counted.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    window: Duration,
    kinds: HashMap<&'static str, Window>,
}

impl LogLimiter {
    pub(crate) fn new(window: Duration) -> Self {
        LogLimiter {
            window,
            kinds: HashMap::new(),
        }
    }

    /// One occurrence of `kind` at `now`: whether to write it, and a summary to
    /// write first if this occurrence ended a window whose summary is still due
    /// (then this one is counted in it rather than written).
    pub(crate) fn hit(
        &mut self,
        kind: &'static str,
        level: Level,
        now: Instant,
    ) -> (bool, Option<Summary>) {
        let window = self.window;
        let Some(w) = self.kinds.get_mut(kind) else {
            self.kinds.insert(
                kind,
                Window {
                    started: now,
                    level,
                    repeated: 0,
                },
            );
            return (true, None);
        };
        let elapsed = now.saturating_duration_since(w.started);
        if elapsed < window {
            w.repeated += 1;
            w.level = level;
            return (false, None);
        }
        let summary = (w.repeated > 0).then(|| Summary {
            kind,
            level,
            repeated: w.repeated + 1,
            over: elapsed,
        });
        *w = Window {
            started: now,
            level,
            repeated: 0,
        };
        (summary.is_none(), summary)
    }

    /// The summaries of windows that ended by `now` with repeats counted; each such
    /// kind starts a new window at `now` (so its next summary is a window away).
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Summary> {
        let window = self.window;
        let mut out = Vec::new();
        for (kind, w) in &mut self.kinds {
            let elapsed = now.saturating_duration_since(w.started);
            if w.repeated > 0 && elapsed >= window {
                out.push(Summary {
                    kind,
                    level: w.level,
                    repeated: w.repeated,
                    over: elapsed,
                });
                w.started = now;
                w.repeated = 0;
            }
        }
        out.sort_by_key(|s| s.kind);
        out
    }

    /// Every summary still owed, window ended or not (at exit).
    pub(crate) fn drain(&mut self, now: Instant) -> Vec<Summary> {
        let mut out: Vec<Summary> = self
            .kinds
            .iter_mut()
            .filter(|(_, w)| w.repeated > 0)
            .map(|(kind, w)| {
                let s = Summary {
                    kind,
                    level: w.level,
                    repeated: w.repeated,
                    over: now.saturating_duration_since(w.started),
                };
                w.repeated = 0;
                s
            })
            .collect();
        out.sort_by_key(|s| s.kind);
        out
    }

    /// When the earliest window with repeats ends, if any has repeats.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.kinds
            .values()
            .filter(|w| w.repeated > 0)
            .map(|w| w.started + self.window)
            .min()
    }
}

/// The process's limiter and the flusher thread's wake-up.
struct Global {
    limiter: Mutex<LogLimiter>,
    wake: Condvar,
    flusher: std::sync::Once,
}

static GLOBAL: LazyLock<Global> = LazyLock::new(|| Global {
    limiter: Mutex::new(LogLimiter::new(WINDOW)),
    wake: Condvar::new(),
    flusher: std::sync::Once::new(),
});

fn lock() -> MutexGuard<'static, LogLimiter> {
    match GLOBAL.limiter.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Whether this occurrence of `kind` is to be written now (see the module doc).
/// Used through [`log_limited!`](crate::log_limited).
pub(crate) fn allow(kind: &'static str, level: Level) -> bool {
    let (write, summary) = lock().hit(kind, level, Instant::now());
    if let Some(s) = summary {
        emit(&s);
    }
    if !write {
        start_flusher();
        GLOBAL.wake.notify_one();
    }
    write
}

/// Write every summary still owed (the process is about to exit).
pub fn flush() {
    let owed = lock().drain(Instant::now());
    for s in &owed {
        emit(s);
    }
}

/// One thread for the process writes the summaries as their windows end. It sleeps
/// until the earliest one is due, or until a repeat is counted.
fn start_flusher() {
    GLOBAL.flusher.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("log-limit".into())
            .spawn(|| {
                let mut g = lock();
                loop {
                    let now = Instant::now();
                    let owed = g.due(now);
                    if !owed.is_empty() {
                        drop(g);
                        for s in &owed {
                            emit(s);
                        }
                        g = lock();
                        continue;
                    }
                    g = match g.next_due() {
                        None => GLOBAL
                            .wake
                            .wait(g)
                            .unwrap_or_else(|poisoned| poisoned.into_inner()),
                        Some(at) => match GLOBAL
                            .wake
                            .wait_timeout(g, at.saturating_duration_since(now))
                        {
                            Ok((g, _)) => g,
                            Err(poisoned) => poisoned.into_inner().0,
                        },
                    };
                }
            });
        if let Err(e) = spawned {
            // Without it, summaries go out with the next occurrence or at exit.
            tracing::debug!(error = %e, "could not start the log summary thread");
        }
    });
}

fn emit(s: &Summary) {
    let secs = s.over.as_secs().max(1);
    let (kind, repeated) = (s.kind, s.repeated);
    match s.level {
        Level::ERROR => {
            tracing::error!(
                kind,
                repeated,
                "{repeated} more like this in the last {secs}s"
            )
        }
        Level::WARN => {
            tracing::warn!(
                kind,
                repeated,
                "{repeated} more like this in the last {secs}s"
            )
        }
        Level::INFO => {
            tracing::info!(
                kind,
                repeated,
                "{repeated} more like this in the last {secs}s"
            )
        }
        _ => tracing::debug!(
            kind,
            repeated,
            "{repeated} more like this in the last {secs}s"
        ),
    }
}

/// `log_limited!(WARN, "message", field = value, ...)`: a `tracing` event whose
/// repeats are counted and summarised (see [`crate::base::log_limit`]); the message is
/// the kind. Fields take `tracing`'s syntax (`%` Display, `?` Debug).
macro_rules! log_limited {
    ($level:ident, $msg:literal $(, $($field:tt)+)?) => {
        if $crate::base::log_limit::allow($msg, ::tracing::Level::$level) {
            ::tracing::event!(::tracing::Level::$level, $($($field)+ ,)? $msg);
        }
    };
}
pub(crate) use log_limited;

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_occurrence_is_written_and_repeats_are_counted() {
        let mut l = LogLimiter::new(W);
        let t = Instant::now();
        assert_eq!(l.hit("a", Level::WARN, t), (true, None));
        for i in 1..=50 {
            assert_eq!(l.hit("a", Level::WARN, t + ms(i * 100)), (false, None));
        }
        assert_eq!(l.due(t + ms(9_999)), vec![], "not before the window ends");
        assert_eq!(l.next_due(), Some(t + W));
        assert_eq!(
            l.due(t + W),
            vec![Summary {
                kind: "a",
                level: Level::WARN,
                repeated: 50,
                over: W,
            }]
        );
        assert_eq!(l.next_due(), None, "nothing owed after the summary");
    }

    #[test]
    fn kinds_are_limited_independently() {
        let mut l = LogLimiter::new(W);
        let t = Instant::now();
        assert!(l.hit("a", Level::WARN, t).0);
        assert!(l.hit("b", Level::ERROR, t + ms(1)).0);
        assert!(!l.hit("a", Level::WARN, t + ms(2)).0);
        assert!(!l.hit("b", Level::ERROR, t + ms(3)).0);
        assert!(!l.hit("b", Level::ERROR, t + ms(4)).0);
        let s = l.due(t + W + ms(1));
        assert_eq!(
            s.iter()
                .map(|s| (s.kind, s.level, s.repeated))
                .collect::<Vec<_>>(),
            [("a", Level::WARN, 1), ("b", Level::ERROR, 2)]
        );
    }

    /// A steady stream writes one line per window: the first in full, then one
    /// summary per window, never more.
    #[test]
    fn a_steady_stream_writes_at_most_one_line_per_window() {
        let mut l = LogLimiter::new(W);
        let t = Instant::now();
        let mut lines = 0;
        let mut counted = 0;
        // One occurrence every 200 ms for 60 s; the flusher runs when a window ends.
        for i in 0..300u64 {
            let now = t + ms(i * 200);
            if let Some(at) = l.next_due().filter(|at| *at <= now) {
                for s in l.due(at) {
                    lines += 1;
                    counted += s.repeated;
                }
            }
            let (write, summary) = l.hit("a", Level::WARN, now);
            lines += u64::from(write) + u64::from(summary.is_some());
            counted += u64::from(write) + summary.map_or(0, |s| s.repeated);
        }
        for s in l.drain(t + ms(60_000)) {
            lines += 1;
            counted += s.repeated;
        }
        assert_eq!(counted, 300, "every occurrence written or counted");
        assert!(lines <= 1 + 60 / 10 + 1, "{lines} lines");
    }

    #[test]
    fn a_kind_quiet_for_a_window_is_written_in_full_again() {
        let mut l = LogLimiter::new(W);
        let t = Instant::now();
        assert!(l.hit("a", Level::WARN, t).0);
        assert_eq!(l.hit("a", Level::WARN, t + W), (true, None));
        assert!(!l.hit("a", Level::WARN, t + W + ms(1)).0);
        // After a summary the next window counts again.
        assert_eq!(l.due(t + W * 2).len(), 1);
        assert!(!l.hit("a", Level::WARN, t + W * 2 + ms(1)).0);
        assert_eq!(l.due(t + W * 3).len(), 1);
        assert_eq!(l.due(t + W * 4), vec![]);
        assert!(l.hit("a", Level::WARN, t + W * 4).0, "quiet for a window");
    }

    /// If an occurrence comes after its window ended before the flusher wrote the
    /// summary, the summary goes out with it (counting it) and a new window starts.
    #[test]
    fn an_occurrence_after_the_window_carries_the_summary() {
        let mut l = LogLimiter::new(W);
        let t = Instant::now();
        l.hit("a", Level::WARN, t);
        l.hit("a", Level::WARN, t + ms(5));
        let (write, summary) = l.hit("a", Level::ERROR, t + W + ms(5));
        assert!(!write);
        assert_eq!(
            summary,
            Some(Summary {
                kind: "a",
                level: Level::ERROR,
                repeated: 2,
                over: W + ms(5),
            })
        );
        assert_eq!(l.due(t + W * 3), vec![]);
    }

    #[test]
    fn drain_gives_what_is_owed_at_exit() {
        let mut l = LogLimiter::new(W);
        let t = Instant::now();
        l.hit("a", Level::WARN, t);
        assert_eq!(l.drain(t + ms(1)), vec![], "nothing was held back");
        l.hit("a", Level::WARN, t + ms(2));
        l.hit("a", Level::WARN, t + ms(3));
        let owed = l.drain(t + ms(4));
        assert_eq!(owed.len(), 1);
        assert_eq!((owed[0].repeated, owed[0].over), (2, ms(4)));
        assert_eq!(l.drain(t + ms(5)), vec![]);
    }

    #[test]
    fn a_clock_going_backwards_counts_as_within_the_window() {
        let mut l = LogLimiter::new(W);
        let t = Instant::now() + W;
        l.hit("a", Level::WARN, t);
        assert_eq!(l.hit("a", Level::WARN, t - ms(1)), (false, None));
        assert_eq!(l.due(t - ms(1)), vec![]);
    }
}
