//! `waitroom-worker demo`: a flash sale on this machine, with nothing installed but
//! redis-server. It starts a private redis-server and an embedded Kafka, queues
//! users as the API would, runs the worker, and plays the checkout service: it
//! reads QUEUE_READY, verifies each token, waits a random checkout time and
//! publishes a completion, except for a share of users who walk away (their slots
//! come back by expiry). Progress is printed live; a summary closes the run.
//!
//! Users who are not there can be played too (issue 12): no-shows (admitted, never
//! open checkout: with a claim window their slot comes back when it ends) and
//! leavers (close the waiting page at a random point of the first half of their way
//! through the queue: the simulated API stops writing their `last_seen`, and with a
//! waiter idle timeout the worker skips them at their turn). Present users claim
//! their slot (`lua/claim.lua`) before checking out when a claim window is set. The
//! summary then tells how much of the slot time went to users who were there, and
//! when everyone who stayed was served.
//!
//! `--wait-probe` measures the wait estimate: once the sale is steady it picks, now
//! and then, the waiters at a few queue positions, reads `wait_ms_per_position`
//! from the event's stats hash as the API would, and compares `position x
//! wait_ms_per_position` with when each of them is actually admitted.
//!
//! Inventory and checkout health (issue 13) can be watched too. `--stock N` puts N
//! tickets on sale (the event's `stock`); each completed checkout buys one
//! (`quantity` 1). When they are gone the worker admits nobody more and announces
//! the sell-out on EVENT_SOLD_OUT; the demo reads that message from the embedded
//! Kafka, shows it, and ends there: whoever still waits is sold out before their
//! turn. `--fail-rate P` turns the checkout-health valve on (a step every second)
//! and makes a share P of the completions fail during `--fail-phase`; the progress
//! lines show the effective capacity and the valve's reason, so the valve is seen
//! closing while checkout fails and reopening after.
//!
//! [`run_until`] stops early when asked (the command line: on SIGINT or SIGTERM),
//! prints the summary so far, and returns, so the private servers are stopped.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use redis::aio::MultiplexedConnection;
use thiserror::Error;

use crate::base::error_chain::chain;
use crate::base::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::config::Config;
use crate::engine::worker::Worker;
use crate::kafka::publisher::ReadyMessage;
use crate::model::clock;
use crate::model::keys::{KeyLayout, Keys};
use crate::model::token::Verifier;
use crate::ops::stats::Stats;
use crate::redis::scripts::Scripts;
use crate::redis::scripts::claim;
use crate::tools::embedded_kafka::EmbeddedKafka;
use crate::tools::enqueue;
use crate::tools::redis_server::{PrivateRedis, ServerError};

const EVENT: &str = "demo-sale";

/// How often the simulated API writes `last_seen` for the waiters whose page is open.
const SEEN_EVERY: Duration = Duration::from_millis(250);

/// Sessions written per `last_seen` pipeline.
const SEEN_CHUNK: usize = 2000;

/// How each simulated checkout time is drawn from `--checkout-time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckoutDistribution {
    /// Uniform in [0, checkout time]: the checkout time is the longest.
    #[default]
    UpTo,
    /// Uniform in [0.5, 1.5] x checkout time: the checkout time is the mean.
    Around,
}

impl CheckoutDistribution {
    /// A checkout time in ms from `time_ms` and a uniform draw `u` in [0, 1).
    fn draw(self, time_ms: f64, u: f64) -> f64 {
        match self {
            CheckoutDistribution::UpTo => u * time_ms,
            CheckoutDistribution::Around => (0.5 + u) * time_ms,
        }
    }
}

impl FromStr for CheckoutDistribution {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "up-to" => Ok(CheckoutDistribution::UpTo),
            "around" => Ok(CheckoutDistribution::Around),
            other => Err(format!("{other:?}: want up-to or around")),
        }
    }
}

/// When and where `--wait-probe` looks at the wait estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitProbe {
    /// Queue positions (1-based ranks) probed each time.
    pub positions: Vec<u64>,
    /// The first probe, after the sale started (let the estimate settle).
    pub after: Duration,
    /// Time between probes.
    pub every: Duration,
}

impl Default for WaitProbe {
    fn default() -> Self {
        WaitProbe {
            positions: vec![250, 500, 1000],
            after: Duration::from_secs(30),
            every: Duration::from_secs(10),
        }
    }
}

/// When the simulated checkout fails (`--fail-phase FROM..TO`): from `from` to `to`
/// after the sale opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailPhase {
    /// The first failures.
    pub from: Duration,
    /// Healthy again from here.
    pub to: Duration,
}

impl Default for FailPhase {
    fn default() -> Self {
        FailPhase {
            from: Duration::from_secs(5),
            to: Duration::from_secs(15),
        }
    }
}

impl FailPhase {
    /// Whether `t` after the sale opened is within the phase.
    pub fn contains(&self, t: Duration) -> bool {
        self.from <= t && t < self.to
    }
}

impl FromStr for FailPhase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (from, to) = s
            .split_once("..")
            .ok_or_else(|| format!("{s:?}: want FROM..TO, e.g. 5s..15s"))?;
        let parse = |t: &str| {
            humantime::parse_duration(t.trim())
                .map_err(|e| format!("{t:?}: {e} (use e.g. 5s..15s)"))
        };
        let phase = FailPhase {
            from: parse(from)?,
            to: parse(to)?,
        };
        if phase.to <= phase.from {
            return Err(format!("{s:?}: the phase must end after it starts"));
        }
        Ok(phase)
    }
}

/// The sale to simulate. [`Default`] is `waitroom-worker demo` without flags.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Users joining the queue.
    pub users: usize,
    /// Checkout slots.
    pub capacity: u64,
    /// Users admitted per cycle.
    pub batch: u64,
    /// Simulated checkout time (see `checkout_distribution`).
    pub checkout_time: Duration,
    /// How each user's checkout time is drawn from `checkout_time`.
    pub checkout_distribution: CheckoutDistribution,
    /// Share of admitted users who walk away without completing (0..1).
    pub abandon_rate: f64,
    /// Share of admitted users (leavers aside) who never open checkout (0..1).
    pub no_show_rate: f64,
    /// Share of waiters who close the waiting page before their turn (0..1).
    pub leave_rate: f64,
    /// Checkout window: how long an abandoned slot stays taken.
    pub checkout_window: Duration,
    /// The worker's claim window (zero: off).
    pub claim_window: Duration,
    /// The worker's waiter idle timeout (zero: off).
    pub waiter_idle_timeout: Duration,
    /// Admission interval.
    pub interval: Duration,
    /// Cap admissions at N a minute (the event's `new_users_per_minute`).
    pub rate: Option<u64>,
    /// Measure the wait estimate (none: no probes).
    pub wait_probe: Option<WaitProbe>,
    /// Tickets for sale: the event's `stock` (none: no inventory).
    pub stock: Option<u64>,
    /// Share of completions that fail during `fail_phase` (0..=1; 0: none, and the
    /// valve stays off; above 0 turns it on).
    pub fail_rate: f64,
    /// When completions fail, after the sale opened.
    pub fail_phase: FailPhase,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            users: 3000,
            capacity: 100,
            batch: 50,
            checkout_time: Duration::from_millis(400),
            checkout_distribution: CheckoutDistribution::UpTo,
            abandon_rate: 0.05,
            no_show_rate: 0.0,
            leave_rate: 0.0,
            checkout_window: Duration::from_secs(5),
            claim_window: Duration::ZERO,
            waiter_idle_timeout: Duration::ZERO,
            interval: Duration::from_millis(100),
            rate: None,
            wait_probe: None,
            stock: None,
            fail_rate: 0.0,
            fail_phase: FailPhase::default(),
        }
    }
}

/// Why the demo stopped.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The private redis-server did not start.
    #[error(transparent)]
    Redis(#[from] ServerError),
    /// A Redis command failed.
    #[error("redis")]
    RedisCmd(#[from] redis::RedisError),
    /// A Kafka client failed.
    #[error("kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// An option out of range.
    #[error("bad demo setting: {0}")]
    Setting(String),
    /// The worker did not start.
    #[error("worker: {0}")]
    Worker(String),
    /// Stopped (SIGINT, SIGTERM) before the sale opened: nothing to summarise.
    #[error("stopped by {0} before the sale opened")]
    Interrupted(String),
    /// More users in checkout than slots: the invariant broke.
    #[error("capacity exceeded: {peak} in checkout with {capacity} slots")]
    CapacityExceeded {
        /// Most sessions in checkout at once.
        peak: u64,
        /// The slots.
        capacity: u64,
    },
}

/// One look at the wait estimate (`--wait-probe`): the waiter at `position`, what
/// the API would have told it, and when it was admitted.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    /// When probed, seconds after the sale started.
    pub at_seconds: f64,
    /// The waiter's queue position then (1-based rank).
    pub position: u64,
    /// `wait_ms_per_position` in the stats hash then.
    pub wait_ms_per_position: f64,
    /// `wait_basis` in the stats hash then (`measured` or `bound`).
    pub basis: String,
    /// `position x wait_ms_per_position`, seconds.
    pub predicted_seconds: f64,
    /// From the probe to its admission (the QUEUE_READY's timestamp), seconds; none
    /// if it was never admitted.
    pub actual_seconds: Option<f64>,
}

impl ProbeResult {
    /// `(predicted - actual) / actual`, in percent.
    pub fn error_percent(&self) -> Option<f64> {
        self.actual_seconds
            .filter(|a| *a > 0.0)
            .map(|a| (self.predicted_seconds - a) / a * 100.0)
    }
}

/// What the run ended with.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Users queued.
    pub users: usize,
    /// Wall time of the run.
    pub seconds: f64,
    /// Users admitted.
    pub admitted: u64,
    /// Checkouts completed.
    pub completed: u64,
    /// Slots taken back by expiry (abandoned checkouts).
    pub expired: u64,
    /// Most users in checkout at once.
    pub peak: u64,
    /// Tokens the simulated checkout refused.
    pub bad_tokens: u64,
    /// Slot freed by a completion -> next admission, seconds (p50, p99).
    pub refill_p50: Option<f64>,
    /// The same, 99th percentile.
    pub refill_p99: Option<f64>,
    /// Slots taken back because their admission was never claimed (the worker's count).
    pub no_shows: u64,
    /// Waiters the worker skipped at their turn because they had left.
    pub left_queue: u64,
    /// Leavers admitted all the same (their page closed, the slot held for nothing).
    pub leavers_admitted: u64,
    /// Waiters whose page stayed open but who were never admitted (dropped).
    pub stayers_dropped: u64,
    /// Present users whose claim was refused (too late, not admitted, or failed).
    pub claims_refused: u64,
    /// Slot-seconds held by users who completed (admission to completion) over the
    /// slot-seconds available (capacity x from the first admission to the last
    /// completion); none without completions.
    pub slot_utilisation: Option<f64>,
    /// From the start of the sale to the last completion, seconds: when everyone who
    /// stayed was served; none without completions.
    pub stayers_served_seconds: Option<f64>,
    /// The wait estimate probes (`--wait-probe`), leavers' own left out.
    pub probes: Vec<ProbeResult>,
    /// Probes that fell on a leaver (left out of `probes`).
    pub probes_on_leavers: u64,
    /// Checkouts that failed: completions with outcome `failed` the worker took in
    /// (the event's `failed_total`); not counted in `completed`.
    pub failed: u64,
    /// The lowest effective capacity the valve set (none: valve off).
    pub valve_low: Option<u64>,
    /// Tickets left at the end (none: no stock set).
    pub stock_left: Option<u64>,
    /// From the sale's opening to the sell-out, seconds (none: not sold out).
    pub sold_out_seconds: Option<f64>,
    /// Waiters still queued at the end: sold out before their turn after a
    /// sell-out, still waiting after an interruption.
    pub still_queued: u64,
    /// The EVENT_SOLD_OUT messages read from Kafka: key and value.
    pub sold_out_messages: Vec<(String, String)>,
    /// What stopped the run early (e.g. `SIGTERM`), if something did: the figures are
    /// then the run's so far.
    pub interrupted: Option<String>,
}

/// A tiny xorshift: the demo needs variety, not cryptography.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a queued user does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Waits, opens checkout when admitted (and maybe abandons it there).
    Present,
    /// Waits, but never opens checkout.
    NoShow,
    /// Closes the waiting page once the queue head has gone past `leave_at` (an
    /// index below its own).
    Leaver { leave_at: usize },
}

/// The queued users, in queue order, and what happened to them.
struct Users {
    ids: Vec<String>,
    index: HashMap<String, usize>,
    fate: Vec<Fate>,
    /// Admission (the QUEUE_READY's timestamp), ms since the epoch; 0: not admitted.
    admitted_ms: Vec<AtomicU64>,
    /// Completion published, ms since the epoch; 0: none.
    completed_ms: Vec<AtomicU64>,
}

impl Users {
    fn new(ids: Vec<String>, leave_rate: f64, no_show_rate: f64, rng: &mut Rng) -> Self {
        let fate = (0..ids.len())
            .map(|i| {
                if leave_rate > 0.0 && rng.next_f64() < leave_rate {
                    // A uniform point of the first half of its way through the queue.
                    let leave_at = (rng.next_f64() * 0.5 * i as f64) as usize;
                    Fate::Leaver { leave_at }
                } else if no_show_rate > 0.0 && rng.next_f64() < no_show_rate {
                    Fate::NoShow
                } else {
                    Fate::Present
                }
            })
            .collect();
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect();
        let n = ids.len();
        Users {
            ids,
            index,
            fate,
            admitted_ms: (0..n).map(|_| AtomicU64::new(0)).collect(),
            completed_ms: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Whether user `i` has closed its page once the queue head is at `head`.
    fn has_left(&self, i: usize, head: usize) -> bool {
        matches!(self.fate.get(i), Some(Fate::Leaver { leave_at }) if head > *leave_at)
    }

    fn is_leaver(&self, i: usize) -> bool {
        matches!(self.fate.get(i), Some(Fate::Leaver { .. }))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The simulated API's polling: `last_seen` = now for every user from `head` on
/// whose page is still open, pipelined.
async fn write_seen(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    users: &Users,
    head: usize,
) -> Result<(), redis::RedisError> {
    let now = clock::now_ms();
    let open: Vec<usize> = (head..users.ids.len())
        .filter(|&i| !users.has_left(i, head))
        .collect();
    for chunk in open.chunks(SEEN_CHUNK) {
        let mut p = redis::pipe();
        for &i in chunk {
            p.cmd("HSET")
                .arg(keys.session(EVENT, &users.ids[i]))
                .arg("last_seen")
                .arg(now)
                .ignore();
        }
        p.query_async::<()>(conn).await?;
    }
    Ok(())
}

/// Keeps writing `last_seen` every [`SEEN_EVERY`] for the users still queued (from
/// the queue's head on), leavers who have left aside, until the queue is empty.
async fn keep_seen(
    mut conn: MultiplexedConnection,
    keys: Keys,
    users: Arc<Users>,
    mut stop: Shutdown,
) {
    let mut ticker = tokio::time::interval(SEEN_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut head = 0usize;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.recv() => return,
        }
        let first: Result<Vec<String>, _> = redis::cmd("ZRANGE")
            .arg(keys.queue(EVENT))
            .arg(0)
            .arg(0)
            .query_async(&mut conn)
            .await;
        match first {
            Ok(first) => match first.first() {
                None => return,
                Some(sid) => {
                    if let Some(&i) = users.index.get(sid) {
                        head = head.max(i);
                    }
                }
            },
            Err(_) => continue,
        }
        // A failed round is simply the next one's to do.
        let _ = write_seen(&mut conn, &keys, &users, head).await;
    }
}

/// A probe as taken, before its waiter's admission is known.
struct Probe {
    at_ms: u64,
    position: u64,
    user: usize,
    wait_ms_per_position: f64,
    basis: String,
}

/// Takes the probes of `plan` until the queue is shorter than every probed position.
async fn probe_waits(
    mut conn: MultiplexedConnection,
    keys: Keys,
    users: Arc<Users>,
    plan: WaitProbe,
    probes: Arc<Mutex<Vec<Probe>>>,
    mut stop: Shutdown,
) {
    let start = tokio::time::Instant::now() + plan.after;
    let mut ticker = tokio::time::interval_at(start, plan.every.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.recv() => return,
        }
        // One snapshot: the waiters at the positions and the figures the API reads.
        let mut p = redis::pipe();
        p.atomic();
        for &pos in &plan.positions {
            p.cmd("ZRANGE")
                .arg(keys.queue(EVENT))
                .arg(pos.saturating_sub(1))
                .arg(pos.saturating_sub(1));
        }
        p.cmd("HMGET")
            .arg(keys.stats(EVENT))
            .arg("wait_ms_per_position")
            .arg("wait_basis");
        let reply: Result<Vec<redis::Value>, _> = p.query_async(&mut conn).await;
        let at_ms = clock::now_ms();
        let Ok(mut reply) = reply else { continue };
        let Some(figures) = reply.pop() else { continue };
        let Ok((w, basis)) = redis::from_redis_value::<(Option<String>, Option<String>)>(figures)
        else {
            continue;
        };
        let Some(w) = w.and_then(|w| w.parse::<f64>().ok()) else {
            continue;
        };
        let mut any = false;
        let mut taken = lock(&probes);
        for (&position, v) in plan.positions.iter().zip(reply) {
            let Ok(ids) = redis::from_redis_value::<Vec<String>>(v) else {
                continue;
            };
            let Some(user) = ids.first().and_then(|s| users.index.get(s)) else {
                continue;
            };
            any = true;
            taken.push(Probe {
                at_ms,
                position,
                user: *user,
                wait_ms_per_position: w,
                basis: basis.clone().unwrap_or_default(),
            });
        }
        if !any {
            return; // the queue is shorter than every probed position
        }
    }
}

/// Milliseconds since the epoch of an RFC 3339 time, if it reads as one.
fn rfc3339_ms(text: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339(text).ok()?;
    u64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> Option<f64> {
    (!v.is_empty()).then(|| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1])
}

fn rate_ok(r: f64) -> bool {
    (0.0..1.0).contains(&r)
}

/// How long the demo waits after the sell-out for its EVENT_SOLD_OUT before it ends
/// without (the worker announces again when its outbox lease, 10 s here, runs out).
const SOLD_OUT_WAIT: Duration = Duration::from_secs(15);

/// The most the end of a run waits for each of its tasks (the worker, the checkout,
/// ...) once told to stop, so that an interrupted demo ends promptly.
const TASK_GRACE: Duration = Duration::from_secs(5);

/// The most one Redis reply may take while the demo sets up.
const SETUP_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The valve's step interval in the demo (the worker's default is 5 s): short, so
/// that a person watching sees it close and reopen within a short run.
pub const VALVE_INTERVAL: Duration = Duration::from_secs(1);

fn check(a: &DemoOptions) -> Result<(), DemoError> {
    if a.users == 0
        || a.capacity == 0
        || a.batch == 0
        || !rate_ok(a.abandon_rate)
        || !rate_ok(a.no_show_rate)
        || !rate_ok(a.leave_rate)
    {
        return Err(DemoError::Setting(
            "users, capacity and batch must be above 0, abandon_rate, no_show_rate and \
             leave_rate in [0, 1)"
                .into(),
        ));
    }
    if let Some(p) = &a.wait_probe
        && (p.positions.is_empty() || p.positions.contains(&0))
    {
        return Err(DemoError::Setting(
            "wait probe positions must be given and above 0".into(),
        ));
    }
    if !(0.0..=1.0).contains(&a.fail_rate) || a.fail_phase.to <= a.fail_phase.from {
        return Err(DemoError::Setting(
            "fail_rate must be in [0, 1] and the fail phase end after it starts".into(),
        ));
    }
    if a.stock == Some(0) {
        return Err(DemoError::Setting("stock must be above 0".into()));
    }
    Ok(())
}

/// What the sale runs on, set up before it opens.
struct Prepared {
    redis: PrivateRedis,
    kafka: EmbeddedKafka,
    secret: String,
    keys: Keys,
    conn: MultiplexedConnection,
    users: Arc<Users>,
    worker: Worker,
    trigger: ShutdownTrigger,
    listener: Shutdown,
}

/// Run the sale to its end: every user admitted and done (completed or expired), or
/// skipped as gone; or, with a stock, sold out.
pub async fn run(a: DemoOptions) -> Result<Summary, DemoError> {
    run_until(a, std::future::pending()).await
}

/// [`run`], stopped early when `interrupt` resolves (to what stopped it, e.g.
/// `SIGTERM`): before the sale opened, with [`DemoError::Interrupted`]; once it is
/// open, by ending it there, as if everyone were through: the summary so far is
/// printed and returned, with [`Summary::interrupted`] set. Either way it returns, so
/// the private redis-server and the embedded Kafka are stopped by their `Drop`.
pub async fn run_until(
    a: DemoOptions,
    interrupt: impl Future<Output = String>,
) -> Result<Summary, DemoError> {
    check(&a)?;
    let mut interrupt = std::pin::pin!(interrupt);
    let prepared = tokio::select! {
        biased;
        sig = &mut interrupt => {
            eprintln!("demo: {sig} before the sale opened: stopped, nothing to summarise");
            return Err(DemoError::Interrupted(sig));
        }
        p = prepare(&a) => p?,
    };
    sale(&a, prepared, interrupt).await
}

/// Start the servers and the worker, queue the users, write the event's config.
async fn prepare(a: &DemoOptions) -> Result<Prepared, DemoError> {
    let redis = PrivateRedis::start()?;
    let mut topics = vec![("QUEUE_READY", 1), ("CHECKOUT_COMPLETED", 1)];
    if a.stock.is_some() {
        topics.push(("EVENT_SOLD_OUT", 1));
    }
    let kafka = EmbeddedKafka::start(&topics)?;
    eprintln!(
        "demo: redis-server on {} and an embedded Kafka on {}",
        redis.url(),
        kafka.bootstrap
    );

    let secret = {
        let seed = format!("{}-{}", clock::now_ms(), std::process::id());
        let a = sha1_smol::Sha1::from(&seed).digest().to_string();
        let b = sha1_smol::Sha1::from(&a).digest().to_string();
        format!("{a}{b}")
    };
    let adaptive = a.fail_rate > 0.0;
    let mut builder = Config::builder()
        .redis_url(redis.url())
        .kafka_brokers(&kafka.bootstrap)
        .jwt_secret(&secret)
        .event(EVENT)
        .process_interval(a.interval)
        .max_concurrent(a.capacity)
        .batch_size(a.batch.min(1000))
        .checkout_window(a.checkout_window)
        .claim_window(a.claim_window)
        .waiter_idle_timeout(a.waiter_idle_timeout)
        .session_ttl(Duration::from_secs(3600))
        // At most half the checkout window (a told user's token must outlive it).
        .publish_timeout(
            (a.checkout_window / 2)
                .min(Duration::from_secs(5))
                .max(Duration::from_millis(100)),
        )
        .outbox_lease(Duration::from_secs(10))
        .consumer_session_timeout(Duration::from_secs(3))
        .retry_delay(Duration::from_millis(100))
        .retry_max_delay(Duration::from_secs(1))
        .http_addr(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))));
    if a.stock.is_some() {
        builder = builder.sold_out_topic("EVENT_SOLD_OUT");
    }
    if adaptive {
        builder = builder.adaptive(true).valve_interval(VALVE_INTERVAL);
    }
    let settings = builder
        .build()
        .map_err(|e| DemoError::Setting(chain(&e).to_string()))?;

    let keys = Keys::new("waitroom", KeyLayout::Default);
    let client = redis::Client::open(redis.url())?;
    // Setting up moves the whole queue at once (a ZRANGE of every user, pipelines of
    // thousands): more time than the client's default 500 ms per reply on a busy
    // machine. The sale's own calls are small, and keep the default.
    let setup = redis::AsyncConnectionConfig::new().set_response_timeout(Some(SETUP_REPLY_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&setup)
        .await?;
    enqueue::enqueue(&mut conn, &keys, EVENT, a.users, Duration::from_secs(3600)).await?;
    if let Some(rate) = a.rate {
        let _: () = redis::cmd("HSET")
            .arg(keys.config(EVENT))
            .arg("new_users_per_minute")
            .arg(rate)
            .query_async(&mut conn)
            .await?;
        eprintln!("demo: admissions capped at {rate} a minute (new_users_per_minute)");
    }
    if let Some(stock) = a.stock {
        let _: () = redis::cmd("HSET")
            .arg(keys.config(EVENT))
            .arg("stock")
            .arg(stock)
            .query_async(&mut conn)
            .await?;
        eprintln!(
            "demo: {stock} tickets for sale (the event's stock); each completed checkout buys one"
        );
    }
    eprintln!(
        "demo: {} users queued for {EVENT}; capacity {}, batch {}",
        a.users, a.capacity, a.batch
    );
    if adaptive {
        eprintln!(
            "demo: checkout fails for {:.0}% of completions from {} to {} after the sale \
             opens; the checkout-health valve is on (a step every {})",
            a.fail_rate * 100.0,
            humantime::format_duration(a.fail_phase.from),
            humantime::format_duration(a.fail_phase.to),
            humantime::format_duration(VALVE_INTERVAL),
        );
    }

    // Who does what. The queue was empty (a private server): its order is theirs.
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.queue(EVENT))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    let mut rng = Rng(clock::now_ms() | 1);
    let users = Arc::new(Users::new(ids, a.leave_rate, a.no_show_rate, &mut rng));
    let gone = a.no_show_rate > 0.0 || a.leave_rate > 0.0;
    let claiming = !a.claim_window.is_zero();
    let polling = a.leave_rate > 0.0 || !a.waiter_idle_timeout.is_zero();
    if gone || claiming || polling {
        let count = |f: fn(&Fate) -> bool| users.fate.iter().filter(|x| f(x)).count();
        eprintln!(
            "demo: {} leavers (close the page while waiting), {} no-shows (never open \
             checkout); claim window {}, waiter idle timeout {}",
            count(|f| matches!(f, Fate::Leaver { .. })),
            count(|f| matches!(f, Fate::NoShow)),
            humantime::format_duration(a.claim_window),
            humantime::format_duration(a.waiter_idle_timeout),
        );
    }
    if polling {
        // Every waiting page has polled once before the sale opens.
        write_seen(&mut conn, &keys, &users, 0).await?;
    }

    let conn = client.get_multiplexed_async_connection().await?;
    let (trigger, mut listener) = shutdown::channel();
    let worker = Worker::start(settings, &mut listener)
        .await
        .map_err(|e| DemoError::Worker(chain(&e).to_string()))?
        .ok_or_else(|| DemoError::Worker("stopped before it started".into()))?;
    Ok(Prepared {
        redis,
        kafka,
        secret,
        keys,
        conn,
        users,
        worker,
        trigger,
        listener,
    })
}

/// Completions with outcome `failed` the worker took in (the event's stats hash);
/// 0 when it cannot be read (the progress lines go on without).
async fn failed_total(conn: &mut MultiplexedConnection, keys: &Keys) -> u64 {
    let n: Result<Option<u64>, _> = redis::cmd("HGET")
        .arg(keys.stats(EVENT))
        .arg("failed_total")
        .query_async(conn)
        .await;
    n.ok().flatten().unwrap_or(0)
}

/// The messages read from EVENT_SOLD_OUT: key and value, as text.
type SoldOutSeen = Arc<Mutex<Vec<(String, String)>>>;

/// Reads EVENT_SOLD_OUT from the beginning into `seen`, in a task, until told to stop.
fn read_sold_out(
    bootstrap: &str,
    seen: SoldOutSeen,
    mut stop: Shutdown,
) -> Result<tokio::task::JoinHandle<()>, DemoError> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "demo-sold-out")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("EVENT_SOLD_OUT", 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    Ok(tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = stop.recv() => break,
                m = consumer.recv() => m,
            };
            let Ok(msg) = msg else { continue };
            let text =
                |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
            lock(&seen).push((text(msg.key()), text(msg.payload())));
        }
    }))
}

/// Open the sale and run it to its end (or to `interrupt`); the summary.
async fn sale(
    a: &DemoOptions,
    p: Prepared,
    mut interrupt: std::pin::Pin<&mut impl Future<Output = String>>,
) -> Result<Summary, DemoError> {
    let Prepared {
        redis: _redis,
        kafka,
        secret,
        keys,
        mut conn,
        users,
        worker,
        trigger,
        mut listener,
    } = p;
    let gone = a.no_show_rate > 0.0 || a.leave_rate > 0.0;
    let claiming = !a.claim_window.is_zero();
    let polling = a.leave_rate > 0.0 || !a.waiter_idle_timeout.is_zero();
    let adaptive = a.fail_rate > 0.0;
    let stats = worker.stats();
    if let Some(addr) = worker.http_addr() {
        eprintln!("demo: worker endpoint http://{addr}/status (also /metrics, /healthz, /readyz)");
    }
    let sale_start_ms = clock::now_ms();
    let opened = Instant::now();
    let worker_task = tokio::spawn(worker.run(listener.clone()));
    let seen_task = polling.then(|| {
        tokio::spawn(keep_seen(
            conn.clone(),
            keys.clone(),
            users.clone(),
            listener.clone(),
        ))
    });
    let probes = Arc::new(Mutex::new(Vec::new()));
    let probe_task = a.wait_probe.clone().map(|plan| {
        eprintln!(
            "demo: wait probes at positions {:?} every {} from {} on",
            plan.positions,
            humantime::format_duration(plan.every),
            humantime::format_duration(plan.after),
        );
        tokio::spawn(probe_waits(
            conn.clone(),
            keys.clone(),
            users.clone(),
            plan,
            probes.clone(),
            listener.clone(),
        ))
    });
    let sold_out_seen: SoldOutSeen = Arc::new(Mutex::new(Vec::new()));
    let sold_out_task = match a.stock {
        Some(_) => Some(read_sold_out(
            &kafka.bootstrap,
            sold_out_seen.clone(),
            listener.clone(),
        )?),
        None => None,
    };

    // The checkout service.
    let completed = Arc::new(AtomicU64::new(0));
    let bad_tokens = Arc::new(AtomicU64::new(0));
    let leavers_admitted = Arc::new(AtomicU64::new(0));
    let claims_refused = Arc::new(AtomicU64::new(0));
    let checkout = {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.bootstrap)
            .set("group.id", "demo-checkout")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("QUEUE_READY", 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.bootstrap)
            .set("linger.ms", "1")
            .create()?;
        let verifier = Verifier::hs256(secret.as_bytes(), "waitroom", "checkout")
            .map_err(|e| DemoError::Worker(e.to_string()))?;
        let (completed, bad_tokens) = (completed.clone(), bad_tokens.clone());
        let (leavers_admitted, claims_refused) = (leavers_admitted.clone(), claims_refused.clone());
        let (time_ms, spread, abandon) = (
            a.checkout_time.as_millis().max(1) as f64,
            a.checkout_distribution,
            a.abandon_rate,
        );
        // The failures to play: the phase (from the sale's opening) and the share.
        let failing = adaptive.then_some((a.fail_phase, a.fail_rate));
        let buying = a.stock.is_some();
        let (users, keys, conn) = (users.clone(), keys.clone(), conn.clone());
        let claim_script = Arc::new(Scripts::new().claim);
        let mut stop = listener.clone();
        tokio::spawn(async move {
            let mut rng = Rng(clock::now_ms().rotate_left(17) | 1);
            // The checkouts in progress: stopped with the sale, so that none of them
            // still holds a Kafka producer when the embedded Kafka goes.
            let mut running = tokio::task::JoinSet::new();
            loop {
                let msg = tokio::select! {
                    _ = stop.recv() => break,
                    m = consumer.recv() => m,
                };
                while running.try_join_next().is_some() {}
                let Ok(msg) = msg else { continue };
                let Some(Ok(ready)) = msg.payload().map(serde_json::from_slice::<ReadyMessage>)
                else {
                    continue;
                };
                if verifier.verify(&ready.checkout_token).is_err() {
                    bad_tokens.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let user = users.index.get(&ready.session_id).copied();
                if let Some(i) = user {
                    let at = rfc3339_ms(&ready.timestamp)
                        .unwrap_or_else(clock::now_ms)
                        .max(1);
                    if users.admitted_ms[i]
                        .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed)
                        .is_err()
                    {
                        continue; // a duplicate (at-least-once delivery)
                    }
                    match users.fate[i] {
                        Fate::Present => {}
                        Fate::NoShow => continue, // never opens checkout
                        Fate::Leaver { .. } => {
                            leavers_admitted.fetch_add(1, Ordering::Relaxed);
                            continue; // the page is closed: nobody takes the slot
                        }
                    }
                }
                if rng.next_f64() < abandon {
                    // Walks away in checkout (after claiming, when claims are on):
                    // the slot comes back by expiry.
                    if claiming {
                        let (script, mut conn, keys) =
                            (claim_script.clone(), conn.clone(), keys.clone());
                        running.spawn(async move {
                            let _ =
                                claim::claim(&script, &mut conn, &keys, EVENT, &ready.session_id)
                                    .await;
                        });
                    }
                    continue;
                }
                let wait = Duration::from_millis(spread.draw(time_ms, rng.next_f64()) as u64);
                // Drawn only when failures are played, so that a run without them
                // draws as it always did.
                let fail_roll = if failing.is_some() {
                    rng.next_f64()
                } else {
                    1.0
                };
                let (producer, completed, users) =
                    (producer.clone(), completed.clone(), users.clone());
                let (script, mut conn, keys, refused) = (
                    claim_script.clone(),
                    conn.clone(),
                    keys.clone(),
                    claims_refused.clone(),
                );
                running.spawn(async move {
                    if claiming {
                        let answer =
                            claim::claim(&script, &mut conn, &keys, EVENT, &ready.session_id).await;
                        if !matches!(answer, Ok(c) if c.holds()) {
                            refused.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                    tokio::time::sleep(wait).await;
                    let done_ms = clock::now_ms();
                    // Fails when it ends within the phase, for a share of the users.
                    let fails = failing.is_some_and(|(phase, share)| {
                        fail_roll < share && phase.contains(opened.elapsed())
                    });
                    let mut body = serde_json::json!({
                        "session_id": ready.session_id, "event_id": ready.event_id,
                        "outcome": if fails { "failed" } else { "completed" }
                    });
                    if buying && !fails {
                        body["quantity"] = serde_json::json!(1);
                    }
                    let body = body.to_string();
                    let rec = FutureRecord::to("CHECKOUT_COMPLETED")
                        .key(&ready.session_id)
                        .payload(&body);
                    if producer.send(rec, Duration::from_secs(5)).await.is_ok() {
                        if fails {
                            return; // the worker counts it (failed_total)
                        }
                        completed.fetch_add(1, Ordering::Relaxed);
                        if let Some(i) = user {
                            users.completed_ms[i].store(done_ms, Ordering::Relaxed);
                        }
                    }
                });
            }
            running.shutdown().await;
        })
    };

    // Progress until everyone is through: a bar on a terminal (indicatif), plain
    // lines twice a second otherwise (logs, CI).
    let started = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if tty {
        let style = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} admitted ({per_sec}) {msg}",
        )
        .map(|s| s.progress_chars("#>-"))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        ProgressBar::new(a.users as u64).with_style(style)
    } else {
        ProgressBar::hidden()
    };
    // A line of its own for what happens (the phase, the valve, the sell-out):
    // above the bar on a terminal, between the progress lines otherwise.
    let say = |line: String| {
        if tty {
            bar.println(line);
        } else {
            eprintln!("{line}");
        }
    };
    let at = || format!("{:>5.1}s", started.elapsed().as_secs_f64());
    let mut peak = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let mut printed = Instant::now();
    let mut last_second = (Instant::now(), 0u64);
    let mut per_second = 0u64;
    let mut queued_left = 0u64;
    let mut interrupted = None;
    let mut in_phase = false;
    let mut valve_reason: Option<String> = None;
    let mut valve_low: Option<u64> = None;
    let mut stock_left: Option<u64> = None;
    let mut sold_out_at: Option<(Instant, f64)> = None;
    let mut sold_out_shown = 0usize;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = listener.recv() => break,
            sig = &mut interrupt => {
                interrupted = Some(sig);
                break;
            }
        }
        let (queued, in_checkout): (u64, u64) = redis::pipe()
            .cmd("ZCARD")
            .arg(keys.queue(EVENT))
            .cmd("SCARD")
            .arg(keys.processing(EVENT))
            .query_async(&mut conn)
            .await?;
        queued_left = queued;
        peak = peak.max(in_checkout);
        let admitted = Stats::get(&stats.admitted);
        if last_second.0.elapsed() >= Duration::from_secs(1) {
            per_second = admitted.saturating_sub(last_second.1);
            last_second = (Instant::now(), admitted);
        }
        let failed = if adaptive {
            failed_total(&mut conn, &keys).await
        } else {
            0
        };
        if a.stock.is_some() {
            stock_left = redis::cmd("HGET")
                .arg(keys.config(EVENT))
                .arg("stock")
                .query_async(&mut conn)
                .await?;
        }
        // What the worker's last pass saw: the effective capacity and the valve.
        let snap = (adaptive || a.stock.is_some())
            .then(|| stats.events().remove(EVENT))
            .flatten();
        if adaptive {
            let now_in = a.fail_phase.contains(opened.elapsed());
            if now_in != in_phase {
                in_phase = now_in;
                say(if now_in {
                    format!(
                        "demo: {} checkout starts failing: {:.0}% of completions fail until {}",
                        at(),
                        a.fail_rate * 100.0,
                        humantime::format_duration(a.fail_phase.to)
                    )
                } else {
                    format!("demo: {} checkout healthy again", at())
                });
            }
            // Each move is also a line of the worker's own ("checkout valve moved",
            // at WARN, which the demo shows).
            if let Some(v) = snap.as_ref().and_then(|s| s.valve.as_ref()) {
                valve_low = Some(valve_low.map_or(v.capacity, |l| l.min(v.capacity)));
                valve_reason = Some(v.reason.clone());
            }
        }
        if stock_left == Some(0) && sold_out_at.is_none() {
            sold_out_at = Some((Instant::now(), opened.elapsed().as_secs_f64()));
            say(format!(
                "demo: {} SOLD OUT: stock 0; the {queued} still waiting are sold out before \
                 their turn; the worker admits nobody more and announces EVENT_SOLD_OUT",
                at()
            ));
        }
        let announced = {
            let seen = lock(&sold_out_seen);
            for (key, value) in seen.iter().skip(sold_out_shown) {
                say(format!(
                    "demo: {} EVENT_SOLD_OUT read from Kafka: key {key}, value {value}",
                    at()
                ));
            }
            sold_out_shown = seen.len();
            seen.len()
        };
        // Everyone left the queue (admitted, or skipped as gone or invalid) and
        // every slot came back; or sold out, announced, and checkout empty.
        let through = admitted + Stats::get(&stats.left_queue) + Stats::get(&stats.skipped);
        let sold_out_end = sold_out_at.is_some_and(|(t, _)| {
            in_checkout == 0 && (announced > 0 || t.elapsed() >= SOLD_OUT_WAIT)
        });
        let done = (queued == 0 && in_checkout == 0 && through as usize >= a.users) || sold_out_end;
        let shown_capacity = match &snap {
            Some(s) => s.capacity,
            None => a.capacity,
        };
        let mut msg = format!(
            "| last second {per_second} admitted | queued {queued} | in checkout {in_checkout}/{}",
            shown_capacity
        );
        if let Some(reason) = &valve_reason {
            msg.push_str(&format!(" (valve: {reason}, max {})", a.capacity));
        }
        msg.push_str(&format!(
            " | completed {} | expired {}",
            Stats::get(&stats.released).saturating_sub(failed),
            Stats::get(&stats.expired),
        ));
        if gone || claiming || polling {
            msg.push_str(&format!(
                " | no-shows {} | left queue {}",
                Stats::get(&stats.no_shows),
                Stats::get(&stats.left_queue)
            ));
        }
        if adaptive {
            msg.push_str(&format!(" | failed {failed}"));
            if in_phase {
                msg.push_str(&format!(" (failing {:.0}%)", a.fail_rate * 100.0));
            }
        }
        match stock_left {
            Some(0) => msg.push_str(" | stock 0 SOLD OUT"),
            Some(n) => msg.push_str(&format!(" | stock {n}")),
            None => {}
        }
        bar.set_position(admitted);
        bar.set_message(msg.clone());
        if !tty && (printed.elapsed() >= Duration::from_millis(500) || done) {
            printed = Instant::now();
            eprintln!(
                "{:>5.1}s admitted {admitted}/{} {msg}",
                started.elapsed().as_secs_f64(),
                a.users
            );
        }
        if done {
            break;
        }
    }
    if interrupted.is_some() || sold_out_at.is_some() {
        bar.abandon(); // as far as it got, not full
    } else {
        bar.finish();
    }
    let seconds = started.elapsed().as_secs_f64();
    trigger.trigger();
    let _ = tokio::time::timeout(TASK_GRACE, worker_task).await;
    let _ = tokio::time::timeout(TASK_GRACE, checkout).await;
    if let Some(t) = seen_task {
        let _ = tokio::time::timeout(TASK_GRACE, t).await;
    }
    if let Some(t) = probe_task {
        let _ = tokio::time::timeout(TASK_GRACE, t).await;
    }
    if let Some(t) = sold_out_task {
        let _ = tokio::time::timeout(TASK_GRACE, t).await;
    }
    let mut samples = stats.refill_samples();
    samples.sort_by(f64::total_cmp);

    // Slot time of the users who were there: admission to completion.
    let (mut used_ms, mut first_admitted, mut last_completed) = (0u64, u64::MAX, 0u64);
    let mut stayers_dropped = 0u64;
    for i in 0..users.ids.len() {
        let adm = users.admitted_ms[i].load(Ordering::Relaxed);
        let done = users.completed_ms[i].load(Ordering::Relaxed);
        if adm > 0 {
            first_admitted = first_admitted.min(adm);
        } else if !users.is_leaver(i) {
            stayers_dropped += 1;
        }
        if adm > 0 && done > 0 {
            used_ms += done.saturating_sub(adm);
            last_completed = last_completed.max(done);
        }
    }
    let (slot_utilisation, stayers_served_seconds) = if last_completed > 0 {
        let span = last_completed.saturating_sub(first_admitted).max(1) as f64;
        (
            Some(used_ms as f64 / (a.capacity as f64 * span)),
            Some(last_completed.saturating_sub(sale_start_ms) as f64 / 1e3),
        )
    } else {
        (None, None)
    };

    let mut probes_on_leavers = 0u64;
    let probes: Vec<ProbeResult> = lock(&probes)
        .iter()
        .filter(|p| {
            let leaver = users.is_leaver(p.user);
            probes_on_leavers += u64::from(leaver);
            !leaver
        })
        .map(|p| {
            let adm = users.admitted_ms[p.user].load(Ordering::Relaxed);
            ProbeResult {
                at_seconds: p.at_ms.saturating_sub(sale_start_ms) as f64 / 1e3,
                position: p.position,
                wait_ms_per_position: p.wait_ms_per_position,
                basis: p.basis.clone(),
                predicted_seconds: p.position as f64 * p.wait_ms_per_position / 1e3,
                actual_seconds: (adm > 0).then(|| (adm as f64 - p.at_ms as f64) / 1e3),
            }
        })
        .collect();

    let final_valve = stats.events().remove(EVENT).and_then(|s| s.valve);
    let failed = if adaptive {
        failed_total(&mut conn, &keys).await
    } else {
        0
    };
    let summary = Summary {
        refill_p50: quantile(&samples, 0.5),
        refill_p99: quantile(&samples, 0.99),
        users: a.users,
        seconds,
        admitted: Stats::get(&stats.admitted),
        completed: Stats::get(&stats.released).saturating_sub(failed),
        expired: Stats::get(&stats.expired),
        peak,
        bad_tokens: bad_tokens.load(Ordering::Relaxed),
        no_shows: Stats::get(&stats.no_shows),
        left_queue: Stats::get(&stats.left_queue),
        leavers_admitted: leavers_admitted.load(Ordering::Relaxed),
        stayers_dropped,
        claims_refused: claims_refused.load(Ordering::Relaxed),
        slot_utilisation,
        stayers_served_seconds,
        probes,
        probes_on_leavers,
        failed,
        valve_low,
        stock_left,
        sold_out_seconds: sold_out_at.map(|(_, s)| s),
        still_queued: queued_left,
        sold_out_messages: lock(&sold_out_seen).clone(),
        interrupted,
    };
    if let Some(sig) = &summary.interrupted {
        eprintln!(
            "demo: {sig}: stopped {:.1}s after the sale opened; the summary so far",
            summary.seconds
        );
    }
    if summary.interrupted.is_some() || summary.sold_out_seconds.is_some() {
        eprintln!(
            "demo: {} of {} users admitted in {:.1}s ({:.0} admissions/s); {} completed, {} expired; \
             peak {} in checkout with {} slots (capacity never exceeded: {}); {} tokens failed verification",
            summary.admitted,
            summary.users,
            summary.seconds,
            summary.admitted as f64 / summary.seconds.max(1e-3),
            summary.completed,
            summary.expired,
            summary.peak,
            a.capacity,
            summary.peak <= a.capacity,
            summary.bad_tokens,
        );
    } else {
        eprintln!(
            "demo: {} users through checkout in {:.1}s ({:.0} admissions/s); {} completed, {} expired; \
             peak {} in checkout with {} slots (capacity never exceeded: {}); {} tokens failed verification",
            summary.users,
            summary.seconds,
            summary.admitted as f64 / summary.seconds.max(1e-3),
            summary.completed,
            summary.expired,
            summary.peak,
            a.capacity,
            summary.peak <= a.capacity,
            summary.bad_tokens,
        );
    }
    match (summary.refill_p50, summary.refill_p99) {
        (Some(p50), Some(p99)) => eprintln!(
            "demo: refill latency (slot freed by a completion -> next admission): p50 {:.2} ms, p99 {:.2} ms over {} refills",
            p50 * 1e3,
            p99 * 1e3,
            samples.len()
        ),
        _ => eprintln!("demo: no refill measured (no completion freed a slot while users waited)"),
    }
    match (summary.slot_utilisation, summary.stayers_served_seconds) {
        (Some(u), Some(s)) => eprintln!(
            "demo: slot utilisation {:.1}% (slot time from admission to completion of the users \
             who completed / {} slots x {:.1}s from the first admission to the last completion); \
             everyone who stayed served {:.1}s after the sale opened",
            u * 100.0,
            a.capacity,
            last_completed.saturating_sub(first_admitted) as f64 / 1e3,
            s
        ),
        _ => eprintln!("demo: no checkout completed: no slot utilisation to show"),
    }
    eprintln!(
        "demo: {} no-shows reaped at their claim window, {} leavers skipped at their turn, \
         {} leavers admitted anyway, {} waiters who stayed never admitted, {} claims refused",
        summary.no_shows,
        summary.left_queue,
        summary.leavers_admitted,
        summary.stayers_dropped,
        summary.claims_refused,
    );
    if adaptive {
        eprintln!(
            "demo: checkout failed {} times ({:.0}% of completions from {} to {}); the valve \
             took the effective capacity from {} down to {} and it ended at {}",
            summary.failed,
            a.fail_rate * 100.0,
            humantime::format_duration(a.fail_phase.from),
            humantime::format_duration(a.fail_phase.to),
            a.capacity,
            summary
                .valve_low
                .map_or_else(|| "-".to_owned(), |l| l.to_string()),
            final_valve.map_or_else(
                || "-".to_owned(),
                |v| format!("{} ({})", v.capacity, v.reason)
            ),
        );
    }
    if let Some(stock) = a.stock {
        print_stock(&summary, stock, Stats::get(&stats.sold_out_announced));
    }
    if let Some(plan) = &a.wait_probe {
        print_probes(&summary, plan);
    }
    if summary.peak > a.capacity {
        return Err(DemoError::CapacityExceeded {
            peak: summary.peak,
            capacity: a.capacity,
        });
    }
    Ok(summary)
}

/// The sell-out (or the stock left) and the EVENT_SOLD_OUT messages read.
fn print_stock(s: &Summary, stock: u64, announced: u64) {
    let left = s.stock_left.unwrap_or(stock);
    match s.sold_out_seconds {
        Some(t) => eprintln!(
            "demo: sold out {t:.1}s after the sale opened: {} tickets sold; {} waiters sold out \
             before their turn",
            stock.saturating_sub(left),
            s.still_queued
        ),
        None => eprintln!(
            "demo: {} of {stock} tickets sold, {left} left: not sold out",
            stock.saturating_sub(left)
        ),
    }
    if s.sold_out_seconds.is_some() || !s.sold_out_messages.is_empty() {
        eprintln!(
            "demo: EVENT_SOLD_OUT: the worker announced {announced}, the demo read {} from Kafka{}",
            s.sold_out_messages.len(),
            if s.sold_out_messages.is_empty() {
                format!(
                    " (none within {}s of the sell-out)",
                    SOLD_OUT_WAIT.as_secs()
                )
            } else {
                String::new()
            }
        );
        for (key, value) in &s.sold_out_messages {
            eprintln!("demo:   key {key}, value {value}");
        }
    }
}

/// The probes' table and, per position, the median, p90 and max of |error|.
fn print_probes(s: &Summary, plan: &WaitProbe) {
    eprintln!(
        "demo: wait probes (predicted = position x wait_ms_per_position as the API shows it; \
         actual = until the QUEUE_READY's admission time); {} fell on leavers and are left out",
        s.probes_on_leavers
    );
    eprintln!(
        "  {:>7} {:>8} {:>9} {:>10} {:>9} {:>9} {:>8}",
        "at", "position", "basis", "ms/pos", "predicted", "actual", "error"
    );
    for p in &s.probes {
        eprintln!(
            "  {:>6.1}s {:>8} {:>9} {:>10.1} {:>8.1}s {:>9} {:>8}",
            p.at_seconds,
            p.position,
            p.basis,
            p.wait_ms_per_position,
            p.predicted_seconds,
            p.actual_seconds
                .map_or_else(|| "never".to_owned(), |a| format!("{a:.1}s")),
            p.error_percent()
                .map_or_else(|| "-".to_owned(), |e| format!("{e:+.1}%")),
        );
    }
    for &position in &plan.positions {
        let mut errors: Vec<f64> = s
            .probes
            .iter()
            .filter(|p| p.position == position)
            .filter_map(ProbeResult::error_percent)
            .map(f64::abs)
            .collect();
        errors.sort_by(f64::total_cmp);
        match (
            quantile(&errors, 0.5),
            quantile(&errors, 0.9),
            errors.last(),
        ) {
            (Some(m), Some(p90), Some(max)) => eprintln!(
                "demo: position {position}: |error| median {m:.1}%, p90 {p90:.1}%, max {max:.1}% over {} probes",
                errors.len()
            ),
            _ => eprintln!("demo: position {position}: no probe"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fail_phase_reads_from_to_and_holds_from_its_start_to_before_its_end() {
        let p: FailPhase = "20s..40s".parse().expect("parses");
        assert_eq!(
            p,
            FailPhase {
                from: Duration::from_secs(20),
                to: Duration::from_secs(40)
            }
        );
        assert!(!p.contains(Duration::from_millis(19_999)));
        assert!(p.contains(Duration::from_secs(20)));
        assert!(p.contains(Duration::from_millis(39_999)));
        assert!(!p.contains(Duration::from_secs(40)));
        let ms: FailPhase = "500ms .. 1m".parse().expect("spaces and units");
        assert_eq!(ms.to, Duration::from_secs(60));
        for bad in ["20s", "40s..20s", "5s..5s", "x..10s", "5s..", ""] {
            assert!(bad.parse::<FailPhase>().is_err(), "{bad:?} refused");
        }
    }

    #[test]
    fn settings_out_of_range_are_refused_before_anything_starts() {
        let ok = DemoOptions {
            stock: Some(10),
            fail_rate: 1.0,
            ..DemoOptions::default()
        };
        assert!(check(&ok).is_ok());
        for bad in [
            DemoOptions {
                stock: Some(0),
                ..DemoOptions::default()
            },
            DemoOptions {
                fail_rate: 1.5,
                ..DemoOptions::default()
            },
            DemoOptions {
                fail_rate: -0.1,
                ..DemoOptions::default()
            },
            DemoOptions {
                fail_rate: 0.5,
                fail_phase: FailPhase {
                    from: Duration::from_secs(9),
                    to: Duration::from_secs(3),
                },
                ..DemoOptions::default()
            },
        ] {
            assert!(matches!(check(&bad), Err(DemoError::Setting(_))), "{bad:?}");
        }
    }
}
