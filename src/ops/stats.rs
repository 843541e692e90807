//! What the worker knows about itself: counters (the seed's GetStatus figures and
//! more), per-event gauges from the last cycle, and the Prometheus registry that
//! exports them. Every module that counts holds an `Arc<Stats>`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn event_label(event: &str) -> Labels {
    vec![("event_id".to_owned(), event.to_owned())]
}

fn held_labels(event: &str, reason: &str) -> Labels {
    vec![
        ("event_id".to_owned(), event.to_owned()),
        ("reason".to_owned(), reason.to_owned()),
    ]
}

/// Figures of one event as the last pass over it saw them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct EventSnapshot {
    /// Sessions waiting (main queue and priority lane).
    pub queue_length: u64,
    /// Checkout slots taken (`SCARD processing`).
    pub slots_in_use: u64,
    /// The event's capacity (its `max_concurrent`, or the default).
    pub capacity: u64,
    /// Most sessions admitted per cycle.
    pub batch_size: u64,
    /// Whether the config hash pauses the event.
    pub paused: bool,
    /// Outbox entries: admissions whose QUEUE_READY Kafka has not acknowledged.
    pub outbox_depth: u64,
    /// Sessions this worker admitted to the event since it started.
    pub admitted_total: u64,
    /// When these figures were read (ms since the epoch).
    pub updated_ms: u64,
    /// Why admission is held, if it is: `publishing_stalled` (QUEUE_READY not
    /// acknowledged for longer than the max unpublished age), `retired` (no longer
    /// served, being drained), `paused` (the config hash says so).
    pub held: Option<&'static str>,
    /// Age of the oldest admission whose QUEUE_READY is not acknowledged yet.
    pub unpublished_age_ms: Option<u64>,
    /// Outbox entries this worker handed to Kafka and awaits the verdict on.
    pub outbox_in_flight: u64,
    /// Outbox entries that are neither just admitted nor in flight here: waiting for
    /// a retry, another replica or a claim. This, with `unpublished_age_ms`, is the
    /// "Kafka is behind" signal; `outbox_depth` also counts what is merely in flight.
    pub outbox_waiting: u64,
    /// The configured `new_users_per_minute`, if any.
    pub rate_per_minute: Option<u64>,
    /// Admissions of the last 60 s, all replicas together (from Redis).
    pub outflow_per_minute: u64,
    /// The wait figures last written to the event's stats hash (none before the
    /// first write).
    pub wait: Option<WaitFigures>,
    /// Units left (the config's `stock`), when set; 0 is sold out.
    pub stock: Option<u64>,
    /// The configured capacity (`max_concurrent`); `capacity` is the effective one
    /// (capped by the valve and the stock).
    pub max_concurrent: u64,
    /// The checkout-health valve, when on: where it stands and why.
    pub valve: Option<ValveView>,
}

/// The checkout-health valve of one event, as its last step left it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ValveView {
    /// The effective capacity the valve allows.
    pub capacity: u64,
    /// Why: start, hold, failures, slow, recovering, healthy.
    pub reason: String,
    /// The last judged step's failed share, per mille.
    pub failed_per_mille: Option<u64>,
    /// The last judged step's mean checkout time, ms.
    pub mean_checkout_ms: Option<u64>,
    /// The baseline checkout time, ms.
    pub baseline_ms: Option<u64>,
}

/// The wait figures of one event, as written to `<prefix>:<event>:stats` (see
/// `model::wait_estimate` for the model).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct WaitFigures {
    /// Admissions per minute over the last minute.
    pub admitted_per_min: f64,
    /// Mean time from admission to completion, ms (none without completions).
    pub avg_checkout_ms: Option<f64>,
    /// Share of freed slots whose admission was never claimed.
    pub no_show_rate: f64,
    /// Share of waiters reaching their turn who had left the queue.
    pub left_queue_rate: f64,
    /// How much each position ahead adds to a waiter's wait, ms.
    pub wait_ms_per_position: f64,
    /// `measured` (from the last minute) or `bound` (not enough seen yet: the
    /// slowest the queue can move).
    pub basis: &'static str,
}

impl From<&crate::model::wait_estimate::Figures> for WaitFigures {
    fn from(f: &crate::model::wait_estimate::Figures) -> Self {
        WaitFigures {
            admitted_per_min: f.admitted_per_min,
            avg_checkout_ms: f.avg_checkout_ms,
            no_show_rate: f.no_show_rate,
            left_queue_rate: f.left_queue_rate,
            wait_ms_per_position: f.wait_ms_per_position,
            basis: f.basis.as_str(),
        }
    }
}

/// Reasons an event's admission can be held (the `reason` label of
/// `waitroom_admission_held`).
pub(crate) const HOLD_REASONS: [&str; 4] = ["publishing_stalled", "retired", "paused", "sold_out"];

/// What an error was, for `waitroom_errors_total{kind}`: a closed set, so every
/// label value is written in one place (operators alert on them, README lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Redis unreachable, slow, or replying with an error.
    Redis,
    /// Kafka refused or dropped a message.
    Kafka,
    /// One event's pass failed (its calls); the other events went on.
    Event,
    /// Building or handing over an event's messages failed.
    Delivery,
    /// A completion could not be applied.
    Release,
    /// A checkout token could not be signed.
    Sign,
    /// A cycle hit --max-processing-time.
    Timeout,
}

impl ErrorKind {
    /// The `kind` label's value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Redis => "redis",
            ErrorKind::Kafka => "kafka",
            ErrorKind::Event => "event",
            ErrorKind::Delivery => "delivery",
            ErrorKind::Release => "release",
            ErrorKind::Sign => "sign",
            ErrorKind::Timeout => "timeout",
        }
    }
}

/// The worker's counters and gauges: read by `/status` and the tests, exposed in
/// Prometheus text by `/metrics`.
pub struct Stats {
    /// When the worker started (ms since the epoch).
    pub started_at_ms: AtomicU64,
    /// When the last cycle finished (ms since the epoch).
    pub last_processed_ms: AtomicU64,
    /// When the loop last went round (even a failed cycle).
    pub last_loop_ms: AtomicU64,
    /// When this replica's last heartbeat went out (ms since the epoch, this
    /// machine's clock; 0: none yet). The bench times a takeover from it.
    pub last_beat_ms: AtomicU64,
    /// By when the loop is expected to go round again: set before every wait (a
    /// tick, a pass bounded by the max processing time, a deliberate backoff), so
    /// liveness follows the settings instead of a fixed cut-off.
    pub loop_due_ms: AtomicU64,
    /// Whether the loop is backing off on purpose (Redis unreachable).
    pub backing_off: AtomicBool,
    /// When the last full cycle succeeded, and when the last one failed: ready only
    /// while the latest cycle succeeded.
    pub last_cycle_ok_ms: AtomicU64,
    /// When the last cycle failed (ms since the epoch).
    pub last_cycle_failed_ms: AtomicU64,
    /// Served events whose keys are found only in the other key layout (a
    /// `--key-layout` mismatch): the worker would admit nobody there.
    layout_mismatch: RwLock<Vec<String>>,
    /// Outbox entries handed to delivery and not yet settled, per event.
    in_flight: std::sync::Mutex<BTreeMap<String, u64>>,
    /// Cycles run.
    pub cycles: Counter,
    /// Sessions admitted.
    pub admitted: Counter,
    /// Queue members dropped instead of admitted (no hash, not `queued`, ...).
    pub skipped: Counter,
    /// QUEUE_READY messages Kafka acknowledged.
    pub published: Counter,
    /// QUEUE_READY messages not acknowledged (retried later).
    pub publish_failures: Counter,
    /// Checkout tokens written into session hashes.
    pub tokens_written: Counter,
    /// Outbox entries claimed back (after a failed publish or a dead worker).
    pub outbox_claimed: Counter,
    /// Unreadable outbox entries moved aside.
    pub outbox_invalid: Counter,
    /// Slots freed by completions.
    pub released: Counter,
    /// Completions that freed nothing (duplicates, already expired).
    pub release_noop: Counter,
    /// Completion messages that could not be used.
    pub completions_rejected: Counter,
    /// Slots taken back when their checkout window passed.
    pub expired: Counter,
    /// Slots taken back because the admission was never claimed in its claim window.
    pub no_shows: Counter,
    /// Waiters skipped at their turn because they had left the queue.
    pub left_queue: Counter,
    /// Sell-outs announced on the sell-out topic (acknowledged by Kafka).
    pub sold_out_announced: Counter,
    /// New Redis masters seen (run id changed: a failover or a restart).
    pub masters_seen: Counter,
    /// Rounds not published yet because fewer replicas than `--replica-acks` held
    /// them in time.
    pub replica_waits_short: Counter,
    /// Until when (ms since the epoch) admission is held after a new master was seen.
    pub failover_hold_until_ms: AtomicU64,
    failover_hold: Gauge,
    /// Slots without a deadline given one.
    pub adopted: Counter,
    /// Admissions renewed before QUEUE_READY left (their window was running out).
    pub renewed: Counter,
    /// Outbox entries dropped (their session no longer holds the slot).
    pub outbox_dropped: Counter,
    /// Worker-owned keys of the wrong type moved aside or reset.
    pub repaired: Counter,
    /// Admissions woken by a freed slot.
    pub refills: Counter,
    /// Admit calls that stopped at a waiter without a token while slots were
    /// free, so a second call followed at once (an event's line changed since
    /// the tokens were signed; a first call reads the head of the line first).
    pub admit_second_calls: Counter,
    /// Events passed by this replica's cycles (one per event per pass): with the
    /// events shared among replicas, about (events / replicas) per pass.
    pub event_passes: Counter,
    /// Times this replica's view of the replicas sharing the events changed (a
    /// replica joined, left, or its entry ran out before its next beat: flapping
    /// shows here, and costs double work while it lasts).
    pub owner_changes: Counter,
    /// Events this replica owns (passes), served and retired, as of its last pass.
    pub owned_events: AtomicU64,
    /// Replicas sharing the events as this one sees them (itself included; 1 when
    /// it passes every event).
    pub owner_replicas: AtomicU64,
    /// Whether this replica shares the events (false: ownership off, or the list
    /// of owners could not be read, so it passes every event).
    pub ownership_shared: AtomicBool,
    owned_events_gauge: Gauge,
    owner_replicas_gauge: Gauge,
    /// Errors of every kind (by kind in `/metrics`).
    pub errors: Counter,
    errors_by_kind: Family<Labels, Counter>,
    event_admitted: Family<Labels, Counter>,
    event_skipped: Family<Labels, Counter>,
    event_released: Family<Labels, Counter>,
    event_expired: Family<Labels, Counter>,
    event_no_show: Family<Labels, Counter>,
    event_left_queue: Family<Labels, Counter>,
    wait_ms_per_position: Family<Labels, FloatGauge>,
    admitted_per_min: Family<Labels, FloatGauge>,
    avg_checkout_ms: Family<Labels, FloatGauge>,
    no_show_rate: Family<Labels, FloatGauge>,
    left_queue_rate: Family<Labels, FloatGauge>,
    stock: Family<Labels, Gauge>,
    max_concurrent: Family<Labels, Gauge>,
    valve_capacity: Family<Labels, Gauge>,
    queue_length: Family<Labels, Gauge>,
    slots_in_use: Family<Labels, Gauge>,
    capacity: Family<Labels, Gauge>,
    outbox_depth: Family<Labels, Gauge>,
    outbox_waiting: Family<Labels, Gauge>,
    outbox_in_flight: Family<Labels, Gauge>,
    admission_held: Family<Labels, Gauge>,
    unpublished_age: Family<Labels, Gauge>,
    rate_per_minute: Family<Labels, Gauge>,
    outflow_per_minute: Family<Labels, Gauge>,
    /// Events whose per-event series exist: the served and the draining ones.
    tracked: RwLock<BTreeSet<String>>,
    /// How long cycles take, seconds.
    pub cycle_duration: Histogram,
    /// Slot freed by a completion to the admission that refilled it, seconds.
    pub refill_latency: Histogram,
    events: RwLock<BTreeMap<String, EventSnapshot>>,
    refill_samples: RwLock<Vec<f64>>,
    registry: Registry,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("admitted", &self.admitted.get())
            .field("errors", &self.errors.get())
            .finish_non_exhaustive()
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// Most refill latency samples kept for summaries (the histogram has them all).
const MAX_SAMPLES: usize = 100_000;

impl Stats {
    /// Every figure at zero, registered for `/metrics`.
    pub fn new() -> Self {
        let s = Stats {
            started_at_ms: AtomicU64::new(0),
            last_processed_ms: AtomicU64::new(0),
            last_loop_ms: AtomicU64::new(0),
            last_beat_ms: AtomicU64::new(0),
            loop_due_ms: AtomicU64::new(0),
            backing_off: AtomicBool::new(false),
            last_cycle_ok_ms: AtomicU64::new(0),
            last_cycle_failed_ms: AtomicU64::new(0),
            layout_mismatch: RwLock::new(Vec::new()),
            in_flight: std::sync::Mutex::new(BTreeMap::new()),
            cycles: Counter::default(),
            admitted: Counter::default(),
            skipped: Counter::default(),
            published: Counter::default(),
            publish_failures: Counter::default(),
            tokens_written: Counter::default(),
            outbox_claimed: Counter::default(),
            outbox_invalid: Counter::default(),
            released: Counter::default(),
            release_noop: Counter::default(),
            completions_rejected: Counter::default(),
            expired: Counter::default(),
            no_shows: Counter::default(),
            left_queue: Counter::default(),
            sold_out_announced: Counter::default(),
            masters_seen: Counter::default(),
            replica_waits_short: Counter::default(),
            failover_hold_until_ms: AtomicU64::new(0),
            failover_hold: Gauge::default(),
            adopted: Counter::default(),
            renewed: Counter::default(),
            outbox_dropped: Counter::default(),
            repaired: Counter::default(),
            refills: Counter::default(),
            event_passes: Counter::default(),
            owner_changes: Counter::default(),
            admit_second_calls: Counter::default(),
            owned_events: AtomicU64::new(0),
            owner_replicas: AtomicU64::new(1),
            ownership_shared: AtomicBool::new(false),
            owned_events_gauge: Gauge::default(),
            owner_replicas_gauge: Gauge::default(),
            errors: Counter::default(),
            errors_by_kind: Family::default(),
            event_admitted: Family::default(),
            event_skipped: Family::default(),
            event_released: Family::default(),
            event_expired: Family::default(),
            event_no_show: Family::default(),
            event_left_queue: Family::default(),
            wait_ms_per_position: Family::default(),
            admitted_per_min: Family::default(),
            avg_checkout_ms: Family::default(),
            no_show_rate: Family::default(),
            left_queue_rate: Family::default(),
            stock: Family::default(),
            max_concurrent: Family::default(),
            valve_capacity: Family::default(),
            queue_length: Family::default(),
            slots_in_use: Family::default(),
            capacity: Family::default(),
            outbox_depth: Family::default(),
            outbox_waiting: Family::default(),
            outbox_in_flight: Family::default(),
            admission_held: Family::default(),
            unpublished_age: Family::default(),
            rate_per_minute: Family::default(),
            outflow_per_minute: Family::default(),
            tracked: RwLock::new(BTreeSet::new()),
            cycle_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            refill_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            events: RwLock::new(BTreeMap::new()),
            refill_samples: RwLock::new(Vec::new()),
            registry: Registry::default(),
        };
        let mut r = Registry::with_prefix("waitroom");
        r.register("cycles", "Full admission cycles run", s.cycles.clone());
        r.register(
            "admitted",
            "Sessions admitted into checkout",
            s.event_admitted.clone(),
        );
        r.register(
            "skipped",
            "Queue members dropped as not admissible",
            s.event_skipped.clone(),
        );
        r.register(
            "released",
            "Checkout slots freed by completions",
            s.event_released.clone(),
        );
        r.register(
            "expired",
            "Checkout slots taken back after the window",
            s.event_expired.clone(),
        );
        r.register(
            "no_shows",
            "Checkout slots taken back because the admission was never claimed in its claim window",
            s.event_no_show.clone(),
        );
        r.register(
            "left_queue",
            "Waiters skipped at their turn because they had left the queue (idle past the timeout)",
            s.event_left_queue.clone(),
        );
        r.register(
            "wait_ms_per_position",
            "Estimated wait each queue position ahead adds, ms (the stats hash's wait_ms_per_position)",
            s.wait_ms_per_position.clone(),
        );
        r.register(
            "admitted_per_minute",
            "Admissions per minute over the last minute, all replicas (the stats hash's admitted_per_min)",
            s.admitted_per_min.clone(),
        );
        r.register(
            "avg_checkout_ms",
            "Mean time from admission to completion over the last minute, ms (absent without completions)",
            s.avg_checkout_ms.clone(),
        );
        r.register(
            "no_show_rate",
            "Share of freed slots over the last minute whose admission was never claimed",
            s.no_show_rate.clone(),
        );
        r.register(
            "left_queue_rate",
            "Share of waiters reaching their turn over the last minute who had left the queue",
            s.left_queue_rate.clone(),
        );
        r.register(
            "masters_seen",
            "New Redis masters seen (run id changed: a failover or a restart)",
            s.masters_seen.clone(),
        );
        r.register(
            "replica_waits_short",
            "Admission rounds or releases held back because fewer replicas than --replica-acks held them in time",
            s.replica_waits_short.clone(),
        );
        r.register(
            "failover_hold",
            "1 while admission is held after a new Redis master was seen (--failover-hold)",
            s.failover_hold.clone(),
        );
        r.register(
            "sold_out_announced",
            "Sell-outs announced on the sell-out topic and acknowledged by Kafka",
            s.sold_out_announced.clone(),
        );
        r.register(
            "stock",
            "Units left (the config hash's stock; absent when not set, 0 = sold out)",
            s.stock.clone(),
        );
        r.register(
            "max_concurrent",
            "The event's configured capacity (capacity is the effective one, capped by the valve and the stock)",
            s.max_concurrent.clone(),
        );
        r.register(
            "valve_capacity",
            "The checkout-health valve's effective capacity (adaptive events only)",
            s.valve_capacity.clone(),
        );
        r.register(
            "adopted",
            "Processing members without a deadline given one",
            s.adopted.clone(),
        );
        r.register(
            "release_noop",
            "Completions for sessions holding no slot",
            s.release_noop.clone(),
        );
        r.register(
            "completions_rejected",
            "Completion messages skipped as unusable",
            s.completions_rejected.clone(),
        );
        r.register(
            "published",
            "QUEUE_READY messages acknowledged by Kafka",
            s.published.clone(),
        );
        r.register(
            "publish_failures",
            "QUEUE_READY messages not acknowledged (retried)",
            s.publish_failures.clone(),
        );
        r.register(
            "outbox_claimed",
            "Outbox entries claimed for re-publishing",
            s.outbox_claimed.clone(),
        );
        r.register(
            "outbox_invalid",
            "Unreadable outbox entries moved aside",
            s.outbox_invalid.clone(),
        );
        r.register(
            "tokens_written",
            "Checkout tokens written into session hashes",
            s.tokens_written.clone(),
        );
        r.register(
            "refills",
            "Refill passes woken by completions",
            s.refills.clone(),
        );
        r.register(
            "event_passes",
            "Events passed by this replica's cycles (each event once per pass it owns)",
            s.event_passes.clone(),
        );
        r.register(
            "admit_second_calls",
            "Admit calls that stopped at a waiter without a token while slots were free, so a second call followed",
            s.admit_second_calls.clone(),
        );
        r.register(
            "owner_changes",
            "Times this replica's view of the replicas sharing the events changed",
            s.owner_changes.clone(),
        );
        r.register(
            "owned_events",
            "Events this replica owns and passes (served and retired)",
            s.owned_events_gauge.clone(),
        );
        r.register(
            "owner_replicas",
            "Replicas sharing the events as this one sees them (itself included; 1 when it passes every event)",
            s.owner_replicas_gauge.clone(),
        );
        r.register("errors", "Errors by kind", s.errors_by_kind.clone());
        r.register(
            "queue_length",
            "Waiting sessions (queue and priority lane)",
            s.queue_length.clone(),
        );
        r.register(
            "slots_in_use",
            "Sessions holding a checkout slot",
            s.slots_in_use.clone(),
        );
        r.register(
            "capacity",
            "Checkout slots of the event",
            s.capacity.clone(),
        );
        r.register(
            "outbox_depth",
            "Admissions not yet acknowledged by Kafka",
            s.outbox_depth.clone(),
        );
        r.register(
            "outbox_waiting",
            "Unacknowledged admissions neither just admitted nor in flight here (retrying, or left by another replica): Kafka is behind",
            s.outbox_waiting.clone(),
        );
        r.register(
            "outbox_in_flight",
            "Admissions handed to Kafka by this worker, awaiting acknowledgement",
            s.outbox_in_flight.clone(),
        );
        r.register(
            "admission_held",
            "1 while the event admits nobody for the labelled reason (publishing_stalled, retired, paused)",
            s.admission_held.clone(),
        );
        r.register(
            "unpublished_age_seconds",
            "Age of the event's oldest admission whose QUEUE_READY Kafka has not acknowledged",
            s.unpublished_age.clone(),
        );
        r.register(
            "rate_per_minute",
            "The event's configured new_users_per_minute (absent when none)",
            s.rate_per_minute.clone(),
        );
        r.register(
            "outflow_per_minute",
            "Admissions of the event in the last 60 s, all replicas together",
            s.outflow_per_minute.clone(),
        );
        r.register(
            "renewed",
            "Admissions renewed because their window ran out before Kafka acknowledged them",
            s.renewed.clone(),
        );
        r.register(
            "outbox_dropped",
            "Outbox entries dropped because their session no longer held the slot",
            s.outbox_dropped.clone(),
        );
        r.register(
            "repaired",
            "Worker-owned keys that held garbage and were moved aside or reset",
            s.repaired.clone(),
        );
        r.register(
            "cycle_duration_seconds",
            "Duration of a full admission cycle",
            s.cycle_duration.clone(),
        );
        r.register(
            "refill_latency_seconds",
            "From a slot freed by a completion to the admission that refilled it",
            s.refill_latency.clone(),
        );
        Stats { registry: r, ..s }
    }

    /// Add `n` to a counter.
    pub(crate) fn add(counter: &Counter, n: u64) {
        counter.inc_by(n);
    }

    /// A counter's value.
    pub fn get(counter: &Counter) -> u64 {
        counter.get()
    }

    /// Count an error of `kind`.
    pub(crate) fn error(&self, kind: ErrorKind) {
        self.errors.inc();
        self.errors_by_kind
            .get_or_create(&vec![("kind".to_owned(), kind.as_str().to_owned())])
            .inc();
    }

    pub(crate) fn event_admitted(&self, event: &str, admitted: u64, skipped: u64) {
        Stats::add(&self.admitted, admitted);
        Stats::add(&self.skipped, skipped);
        self.event_admitted
            .get_or_create(&event_label(event))
            .inc_by(admitted);
        self.event_skipped
            .get_or_create(&event_label(event))
            .inc_by(skipped);
    }

    /// Count a release; the per-event series only for a tracked event, so random
    /// event ids in completions cannot grow the label sets without bound.
    pub(crate) fn event_released(&self, event: &str) {
        self.released.inc();
        if self.is_tracked(event) {
            self.event_released.get_or_create(&event_label(event)).inc();
        }
    }

    fn is_tracked(&self, event: &str) -> bool {
        self.tracked
            .read()
            .map(|t| t.contains(event))
            .unwrap_or(false)
    }

    /// The events that have per-event series from now on (served or draining);
    /// the series and figures of every other event are removed.
    pub(crate) fn track(&self, events: BTreeSet<String>) {
        let gone: Vec<String> = match self.tracked.write() {
            Ok(mut t) => {
                let gone = t.difference(&events).cloned().collect();
                *t = events;
                gone
            }
            Err(_) => return,
        };
        for e in &gone {
            let l = event_label(e);
            for f in [
                &self.event_admitted,
                &self.event_skipped,
                &self.event_released,
                &self.event_expired,
                &self.event_no_show,
                &self.event_left_queue,
            ] {
                f.remove(&l);
            }
            for f in [
                &self.wait_ms_per_position,
                &self.admitted_per_min,
                &self.avg_checkout_ms,
                &self.no_show_rate,
                &self.left_queue_rate,
            ] {
                f.remove(&l);
            }
            for f in [
                &self.stock,
                &self.max_concurrent,
                &self.valve_capacity,
                &self.queue_length,
                &self.slots_in_use,
                &self.capacity,
                &self.outbox_depth,
                &self.outbox_waiting,
                &self.outbox_in_flight,
                &self.unpublished_age,
                &self.rate_per_minute,
                &self.outflow_per_minute,
            ] {
                f.remove(&l);
            }
            for reason in HOLD_REASONS {
                self.admission_held.remove(&held_labels(e, reason));
            }
        }
        if let Ok(mut m) = self.events.write() {
            for e in &gone {
                m.remove(e);
            }
        }
    }

    pub(crate) fn event_no_show(&self, event: &str, n: u64) {
        Stats::add(&self.no_shows, n);
        self.event_no_show
            .get_or_create(&event_label(event))
            .inc_by(n);
    }

    pub(crate) fn event_left_queue(&self, event: &str, n: u64) {
        Stats::add(&self.left_queue, n);
        self.event_left_queue
            .get_or_create(&event_label(event))
            .inc_by(n);
    }

    /// Record the wait figures just written for `event`.
    pub(crate) fn observe_wait(&self, event: &str, f: &crate::model::wait_estimate::Figures) {
        let l = event_label(event);
        let w = WaitFigures::from(f);
        self.wait_ms_per_position
            .get_or_create(&l)
            .set(w.wait_ms_per_position);
        self.admitted_per_min
            .get_or_create(&l)
            .set(w.admitted_per_min);
        match w.avg_checkout_ms {
            Some(ms) => {
                self.avg_checkout_ms.get_or_create(&l).set(ms);
            }
            None => {
                self.avg_checkout_ms.remove(&l);
            }
        }
        self.no_show_rate.get_or_create(&l).set(w.no_show_rate);
        self.left_queue_rate
            .get_or_create(&l)
            .set(w.left_queue_rate);
        if let Ok(mut m) = self.events.write()
            && let Some(snap) = m.get_mut(event)
        {
            snap.wait = Some(w);
        }
    }

    /// Where ownership stands after a pass's read of the list of owners.
    pub(crate) fn set_ownership(&self, owned: u64, replicas: u64, shared: bool) {
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.owned_events.store(owned, relaxed);
        self.owner_replicas.store(replicas, relaxed);
        self.ownership_shared.store(shared, relaxed);
        self.owned_events_gauge
            .set(i64::try_from(owned).unwrap_or(i64::MAX));
        self.owner_replicas_gauge
            .set(i64::try_from(replicas).unwrap_or(i64::MAX));
    }

    /// Admission held after a new master until `until_ms` (0: not held).
    pub(crate) fn set_failover_hold(&self, until_ms: u64) {
        self.failover_hold_until_ms
            .store(until_ms, std::sync::atomic::Ordering::Relaxed);
        self.failover_hold.set(i64::from(until_ms != 0));
    }

    /// Record where the valve of `event` stands after a step.
    pub(crate) fn observe_valve(
        &self,
        event: &str,
        step: &crate::redis::scripts::valve::ValveStep,
    ) {
        self.valve_capacity
            .get_or_create(&event_label(event))
            .set(step.cap as i64);
        if let Ok(mut m) = self.events.write()
            && let Some(snap) = m.get_mut(event)
        {
            snap.valve = Some(ValveView {
                capacity: step.cap,
                reason: step.reason.clone(),
                failed_per_mille: step.failed_per_mille,
                mean_checkout_ms: step.mean_checkout_ms,
                baseline_ms: step.baseline_ms,
            });
        }
    }

    pub(crate) fn event_expired(&self, event: &str, n: u64) {
        Stats::add(&self.expired, n);
        self.event_expired
            .get_or_create(&event_label(event))
            .inc_by(n);
    }

    /// Record what the last pass saw of `event`.
    pub(crate) fn observe_event(&self, event: &str, mut snap: EventSnapshot) {
        let l = event_label(event);
        self.queue_length
            .get_or_create(&l)
            .set(snap.queue_length as i64);
        self.slots_in_use
            .get_or_create(&l)
            .set(snap.slots_in_use as i64);
        self.capacity.get_or_create(&l).set(snap.capacity as i64);
        self.outbox_depth
            .get_or_create(&l)
            .set(snap.outbox_depth as i64);
        self.outbox_waiting
            .get_or_create(&l)
            .set(snap.outbox_waiting as i64);
        self.outbox_in_flight
            .get_or_create(&l)
            .set(snap.outbox_in_flight as i64);
        snap.admitted_total = self.event_admitted.get_or_create(&l).get();
        for reason in HOLD_REASONS {
            let labels = held_labels(event, reason);
            if snap.held == Some(reason) {
                self.admission_held.get_or_create(&labels).set(1);
            } else {
                self.admission_held.remove(&labels);
            }
        }
        self.unpublished_age
            .get_or_create(&l)
            .set((snap.unpublished_age_ms.unwrap_or(0) / 1000) as i64);
        match snap.rate_per_minute {
            Some(r) => {
                self.rate_per_minute.get_or_create(&l).set(r as i64);
            }
            None => {
                self.rate_per_minute.remove(&l);
            }
        }
        self.outflow_per_minute
            .get_or_create(&l)
            .set(snap.outflow_per_minute as i64);
        match snap.stock {
            Some(n) => {
                self.stock.get_or_create(&l).set(n as i64);
            }
            None => {
                self.stock.remove(&l);
            }
        }
        self.max_concurrent
            .get_or_create(&l)
            .set(snap.max_concurrent as i64);
        if let Ok(mut m) = self.events.write() {
            // The wait figures and the valve have their own cadence: kept until the next.
            if snap.wait.is_none() {
                snap.wait = m.get(event).and_then(|s| s.wait.clone());
            }
            if snap.valve.is_none() {
                snap.valve = m.get(event).and_then(|s| s.valve.clone());
            }
            m.insert(event.to_owned(), snap);
        }
    }

    /// An event found to hold nothing, no config among it (so no admit call ran):
    /// seen for the first time, it shows the default figures, as an admit call's
    /// reply would have; already seen, only its lengths go to 0.
    pub(crate) fn observe_empty(&self, event: &str, capacity: u64, batch: u64, now_ms: u64) {
        let known = self.events.read().is_ok_and(|m| m.contains_key(event));
        if known {
            self.refresh_event(event, 0, 0, 0);
            return;
        }
        self.observe_event(
            event,
            EventSnapshot {
                capacity,
                batch_size: batch,
                max_concurrent: capacity,
                updated_ms: now_ms,
                ..EventSnapshot::default()
            },
        );
    }

    /// What an idle pass read of `event` (no admit call): the lengths only, so its
    /// figures follow Redis between admit calls.
    pub(crate) fn refresh_event(
        &self,
        event: &str,
        queue_length: u64,
        slots_in_use: u64,
        outbox: u64,
    ) {
        let snap = match self.events.read() {
            Ok(m) => m.get(event).cloned(),
            Err(_) => None,
        };
        if let Some(mut snap) = snap {
            snap.queue_length = queue_length;
            snap.slots_in_use = slots_in_use;
            snap.outbox_depth = outbox;
            snap.outbox_in_flight = self.in_flight(event);
            snap.outbox_waiting = outbox.saturating_sub(snap.outbox_in_flight);
            snap.updated_ms = crate::model::clock::now_ms();
            self.observe_event(event, snap);
        }
    }

    /// Entries of `event` handed to delivery (`n` more) or settled (`-n`).
    pub(crate) fn in_flight_add(&self, event: &str, n: i64) {
        let mut m = match self.in_flight.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let v = m.entry(event.to_owned()).or_insert(0);
        *v = v.saturating_add_signed(n);
        if *v == 0 {
            m.remove(event);
        }
    }

    /// Entries of `event` handed to delivery and not yet settled.
    pub(crate) fn in_flight(&self, event: &str) -> u64 {
        match self.in_flight.lock() {
            Ok(m) => m.get(event).copied().unwrap_or(0),
            Err(p) => p.into_inner().get(event).copied().unwrap_or(0),
        }
    }

    /// Record which served events look written in the other key layout.
    pub(crate) fn set_layout_mismatch(&self, events: Vec<String>) {
        if let Ok(mut m) = self.layout_mismatch.write() {
            *m = events;
        }
    }

    /// Served events whose keys are only in the other key layout.
    pub(crate) fn layout_mismatch(&self) -> Vec<String> {
        self.layout_mismatch
            .read()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The last pass's figures of every event.
    pub fn events(&self) -> BTreeMap<String, EventSnapshot> {
        self.events.read().map(|m| m.clone()).unwrap_or_default()
    }

    pub(crate) fn observe_refill(&self, seconds: f64) {
        self.refill_latency.observe(seconds);
        if let Ok(mut v) = self.refill_samples.write()
            && v.len() < MAX_SAMPLES
        {
            v.push(seconds);
        }
    }

    /// Refill latency samples (seconds), for summaries.
    pub fn refill_samples(&self) -> Vec<f64> {
        self.refill_samples
            .read()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
