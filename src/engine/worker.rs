//! The admission loop: every interval, for every active event, publish what the
//! outbox still holds, then admit the next batch.
//!
//! Errors are isolated the way the seed asks: a bad session costs itself (the admit
//! script drops it), a failing event is logged and skipped, and a Redis or Kafka
//! failure is logged, counted and retried on the next cycle; nothing ends the loop
//! but the shutdown signal.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use thiserror::Error;
use tokio::time::{Instant, MissedTickBehavior};

use crate::base::shutdown::Shutdown;
use crate::config::Config;
use crate::engine::announce::Announcer;
use crate::engine::completions::{Completions, ConsumerSettings};
use crate::engine::delivery::{Delivery, DeliveryError, DeliveryPolicy, Outgoing};
use crate::engine::refill::Refill;
use crate::engine::wait_stats::{self, WaitStats};
use crate::kafka::publisher::Publisher;
use crate::model::clock;
use crate::model::event::EventId;
use crate::model::keys::{KeyLayout, Keys};
use crate::model::outbox;
use crate::model::outbox::OutboxEntry;
use crate::model::ownership::{self, Owners};
use crate::model::token;
use crate::ops::http::{self, HttpState};
use crate::ops::stats::{ErrorKind, EventSnapshot, Stats};
use crate::redis::heartbeat::{self, Identity, OwnerBeat};
use crate::redis::redis_time::RedisTime;
use crate::redis::retry::{self, Backoff};
use crate::redis::scripts::admit::{self, AdmitOutcome, Hold};
use crate::redis::scripts::claim_outbox;
use crate::redis::scripts::peek;
use crate::redis::scripts::quarantine;
use crate::redis::scripts::reap::{self, Reaped};
use crate::redis::scripts::valve::{self, ValveStep};
use crate::redis::scripts::{self, Call, ScriptError, Scripts};
use crate::redis::store::{self, RedisConn};

/// Every this many passes the reaper and the claim run for every event that holds
/// anything (slots, deadlines, an outbox), whatever the last admit reply said.
pub(crate) const FULL_PASS_EVERY: u64 = 30;

/// What kind of pass this is, decided once per pass (every chunk of events of the
/// pass gets the same).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PassKind {
    /// Reaper and claim run for every event with anything in it (every
    /// FULL_PASS_EVERY-th).
    pub(crate) full: bool,
    /// Idle events' figures are read afresh (every REFRESH_EVERY-th).
    pub(crate) refresh: bool,
}

/// What one event needs in this pass.
#[derive(Debug, Clone, Copy)]
struct Plan {
    reap: bool,
    claim: bool,
    admit: bool,
    /// A step of the checkout-health valve (events whose last admit reply said
    /// `adaptive`; the script itself steps at most once per valve interval).
    valve: bool,
    /// Someone may be waiting (nothing known yet, the last reply said so, or the
    /// idle check found someone): read the head of the line first if this worker
    /// knows none of the waiters ([`Worker::peek_heads`]).
    peek: bool,
}

/// What a call of the pass's pipeline is, so its reply goes where it belongs.
#[derive(Debug, Clone, Copy)]
enum Step {
    Reap,
    Claim,
    Admit,
    Valve,
}

/// One event's replies in a pass (None: that call was not made).
#[derive(Debug, Default)]
struct Replies {
    /// The tokens the admit call carried.
    signed: Option<SignedSet>,
    reap: Option<redis::RedisResult<redis::Value>>,
    claim: Option<redis::RedisResult<redis::Value>>,
    admit: Option<redis::RedisResult<redis::Value>>,
    valve: Option<redis::RedisResult<redis::Value>>,
}

/// What applying an event's replies gave: entries to deliver, and whether a retired
/// event has nothing left.
#[derive(Debug, Default)]
struct Applied {
    entries: Vec<Outgoing>,
    drained: bool,
    /// The admit call stopped at a waiter it had no token for while slots were
    /// free: worth a second call at once, with tokens for the waiters it named.
    again: bool,
}

/// What this worker holds to sign an event's admissions ahead: the admit call
/// writes each token in the same atomic step as `status=admitted`, so the tokens
/// are signed before it, for the waiters the last reply named.
#[derive(Debug, Default)]
struct Ahead {
    /// The waiters the last reply named, in lane order (session id, user id).
    prospects: VecDeque<(String, String)>,
    /// The event's claim window as the last reply said (ms).
    claim_window_ms: Option<u64>,
}

/// The tokens one admit call carried, to hand each admitted entry its token.
#[derive(Debug)]
struct SignedSet {
    admitted_ms: u64,
    deadline_ms: u64,
    claim_by_ms: Option<u64>,
    signed: admit::Signed,
}

impl SignedSet {
    /// The entries, each with its token where the call wrote one: the entry must
    /// carry exactly what the token was signed for.
    fn pair(self, entries: Vec<OutboxEntry>) -> Vec<Outgoing> {
        let mut by_session: HashMap<String, (String, String)> = self
            .signed
            .tokens
            .into_iter()
            .map(|(sid, user, tok)| (sid, (user, tok)))
            .collect();
        entries
            .into_iter()
            .map(|e| {
                let same = e.admitted_ms == self.admitted_ms
                    && e.deadline_ms == self.deadline_ms
                    && e.claim_by_ms == self.claim_by_ms;
                let token = match by_session.remove(&e.session_id) {
                    Some((user, tok)) if same && user == e.user_id => Some(tok),
                    _ => None,
                };
                (e, token)
            })
            .collect()
    }
}

/// What the last admit reply said of an event: enough to know whether the reaper
/// or the outbox claim has anything to do there.
#[derive(Debug, Clone, Copy)]
struct Hint {
    in_use: u64,
    deadlines: u64,
    next_deadline_ms: Option<u64>,
    outbox_depth: u64,
    /// Both lanes' length after the call: someone was still waiting.
    waiting: u64,
    /// The event's effective capacity and batch size.
    capacity: u64,
    batch: u64,
    /// Its rate cap (per minute) and the admissions it still allowed, if capped.
    rate: Option<(u64, u64)>,
    /// The checkout-health valve is on for the event.
    adaptive: bool,
}

/// The longest one round of admit calls may spend signing tokens ahead: the instant
/// they are signed for must be within 2 s of Redis's clock when the calls run.
const SIGNING_PER_ROUND: Duration = Duration::from_millis(500);

/// Waiters read ahead for an event whose slots are all taken (see
/// `Worker::sign_ahead`): enough for what completions usually free between passes.
const AHEAD_WHEN_FULL: u64 = 32;

/// Every this many passes an idle event's figures (slots, outbox) are read afresh.
pub(crate) const REFRESH_EVERY: u64 = 10;

/// Idle events asked together in one `EXISTS` of all their keys (default key
/// layout; see `Worker::check_idle`).
const PROBE_GROUP: usize = 16;

/// Most events asked ahead in the round trip that opens a pass (see
/// `Worker::ask_ahead`): beyond it the pass's chunks ask the rest, as without.
/// 32,768 events are 2,048 `EXISTS` of a few MB in all.
const ASK_AHEAD_MAX: usize = 32_768;

/// What the round trip that opened the pass learnt of an event of the last
/// pass's list, asked in a group of PROBE_GROUP (see `Worker::ask_ahead`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// Not asked (or the read failed): the pass's chunk asks as usual.
    Not,
    /// Nothing in any of its group's keys: nobody waits (on a refresh pass, no
    /// slot and no outbox either).
    Empty,
    /// Its group counted something: read it on its own.
    Someone,
}

/// Add to `c` the keys one idle event is asked for: both lanes, and on a refresh
/// pass its slots and outbox too.
fn idle_keys(c: &mut redis::Cmd, keys: &Keys, event: &str, refresh: bool) {
    c.arg(keys.queue(event)).arg(keys.priority(event));
    if refresh {
        c.arg(keys.processing(event)).arg(keys.outbox(event));
    }
}

/// Add to `c` every key of an event that holds work for a pass: someone
/// waiting, a slot, an outbox entry, a deadline, a sell-out to announce.
fn work_keys(c: &mut redis::Cmd, keys: &Keys, event: &str) {
    c.arg(keys.queue(event))
        .arg(keys.priority(event))
        .arg(keys.processing(event))
        .arg(keys.outbox(event))
        .arg(keys.deadlines(event))
        .arg(keys.sold_out(event));
}

/// One idle event's own reads: both lanes' existence, or on a refresh pass the
/// lanes', slots' and outbox's lengths (in that order).
fn read_idle(p: &mut redis::Pipeline, keys: &Keys, event: &str, refresh: bool) {
    if refresh {
        p.cmd("ZCARD").arg(keys.queue(event));
        p.cmd("ZCARD").arg(keys.priority(event));
        p.cmd("SCARD").arg(keys.processing(event));
        p.cmd("ZCARD").arg(keys.outbox(event));
    } else {
        let mut c = redis::cmd("EXISTS");
        idle_keys(&mut c, keys, event, false);
        p.add_command(c);
    }
}

/// Events whose reap, claim and admit calls share one pipeline.
pub(crate) const EVENTS_PER_PIPELINE: usize = 500;

/// Why one event's step failed.
#[derive(Debug, Error)]
pub enum EventError {
    /// The outbox claim (or the pass's pipeline as a whole) failed.
    #[error("claiming outbox entries")]
    Claim(#[source] ScriptError),
    /// The admit call failed.
    #[error("admitting")]
    Admit(#[source] ScriptError),
    /// The reaper failed.
    #[error("reaping expired slots")]
    Reap(#[source] ScriptError),
    /// Writing the checkout tokens failed.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

impl EventError {
    /// Whether Redis itself seems unreachable (then the rest of the cycle is skipped).
    fn is_connection(&self) -> bool {
        match self {
            EventError::Claim(e) | EventError::Admit(e) | EventError::Reap(e) => e.is_transient(),
            EventError::Delivery(DeliveryError::Tokens(e)) => e.is_transient(),
        }
    }
}

/// The worker: its connection, scripts, producer and settings.
pub struct Worker {
    settings: Config,
    conn: RedisConn,
    scripts: Arc<Scripts>,
    delivery: Arc<Delivery>,
    /// The previous pass's delivery, still signing and writing tokens while this
    /// pass admits; awaited before the next one starts, so messages keep their order.
    pending: Option<tokio::task::JoinHandle<Result<(), DeliveryError>>>,
    stats: Arc<Stats>,
    refill: Arc<Refill>,
    completions: Option<Completions>,
    identity: Identity,
    http: Option<(tokio::net::TcpListener, Arc<HttpState>)>,
    /// What the last admit reply said of each event (to skip idle work).
    hints: HashMap<String, Hint>,
    /// Passes run, to make every FULL_PASS_EVERY-th one complete.
    passes: u64,
    /// Last invalid config fields reported per event, so each change is logged once.
    invalid_seen: HashMap<String, Vec<String>>,
    /// Last hold reported per event, so each change is logged once.
    held_seen: HashMap<String, Hold>,
    /// Redis's clock as seen from here (offset measured from admit replies).
    time: Arc<RedisTime>,
    /// The events served in the last cycle (given by `--event` or in
    /// `active_events`): only these admit, refills included.
    served: BTreeSet<String>,
    /// Events this process has put into `<prefix>:known_events`.
    registered: HashSet<String>,
    /// The size of `<prefix>:known_events` when this replica last read it whole.
    known_size: Option<u64>,
    /// Known events that are no longer served: drained until nothing is left (all
    /// of them; each pass drains the ones this replica owns).
    retired: BTreeSet<String>,
    /// Who shares the events, as read at the start of the last pass.
    owners: Owners,
    /// The listed replicas' periods (`period_ms` of their heartbeat hashes), read
    /// once per replica and again on every complete pass.
    owner_periods: HashMap<String, u64>,
    /// `active_events` as last read in full, to skip reading it again while it
    /// has not changed.
    active: Option<ActiveCache>,
    /// The members of `active_events` this pass's opening found still there
    /// (None: all, read in full or checked by this replica keeping watch).
    verified: Option<HashSet<String>>,
    /// The events (served and retired) the last pass owned.
    owned: HashSet<String>,
    /// The last pass's events, each with whether it is served: passed again
    /// while nothing they follow from changed.
    pass_events: Vec<(String, bool)>,
    /// The retired events `pass_events` were made with.
    pass_retired: BTreeSet<String>,
    /// What the opening round trip of this pass learnt of `pass_events`, index by
    /// index (empty: nothing asked ahead).
    asked: Vec<Asked>,
    /// Whether the last reading of the owners changed who shares the events.
    owners_changed: bool,
    /// The wait figures of each event, written to its stats hash.
    wait: WaitStats,
    /// Publishes sell-outs.
    announcer: Announcer,
    /// The Redis master's run id as last seen, and when it was last read.
    master: Option<(String, Instant)>,
    /// Redis's clock as read at the start of the last pass, and when: the
    /// heartbeat is stamped from it, without a round trip of its own.
    redis_clock: Option<(u64, Instant)>,
    /// The heartbeat the last complete pass left to send (its `last_cycle` and what
    /// it does to the owner entry): the next pass sends it with its opening reads.
    beat_due: Option<(u64, OwnerBeat)>,
    /// A heartbeat went out: the first one goes at once, after the first pass.
    beaten: bool,
    /// Admission is held until then (a new master was seen).
    hold_until: Option<Instant>,
    /// Per event, the waiters to sign tokens for before the next admit call.
    ahead: HashMap<String, Ahead>,
}

impl Worker {
    /// Connect to Redis (retrying until it answers or shutdown is signalled), load
    /// the scripts and create the producer.
    pub async fn start(
        settings: Config,
        shutdown: &mut Shutdown,
    ) -> Result<Option<Worker>, StartError> {
        let stats = Arc::new(Stats::default());
        stats
            .started_at_ms
            .store(clock::now_ms(), std::sync::atomic::Ordering::Relaxed);
        let scripts = Arc::new(Scripts::new());
        let backoff = settings.retry.backoff;
        let mut attempt = 0;
        let conn = loop {
            attempt += 1;
            let result = async {
                let mut conn =
                    store::connect(&settings.redis.endpoint, settings.redis.timeout).await?;
                scripts.load_all(&mut conn).await?;
                Ok::<_, ScriptError>(conn)
            }
            .await;
            match result {
                Ok(c) => break c,
                Err(ScriptError::Redis(e)) if retry::is_transient(&e) => {
                    let wait = backoff.delay(attempt);
                    crate::log_limited!(WARN, "redis not reachable at start-up", redis = %settings.redis.endpoint, error = %crate::base::error_chain::chain(&e), retry_in = ?wait);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.recv() => return Ok(None),
                    }
                }
                Err(e) => {
                    return Err(StartError::Redis(settings.redis.endpoint.to_string(), e));
                }
            }
        };
        let publisher = Arc::new(
            Publisher::new(
                &settings.kafka.brokers,
                &settings.kafka.options,
                &settings.kafka.producer.topic,
                settings.kafka.producer.publish_timeout,
            )
            .map_err(StartError::Kafka)?,
        );
        let refill = Arc::new(Refill::default());
        let time = Arc::new(RedisTime::default());
        let completions = Completions::new(
            ConsumerSettings {
                brokers: settings.kafka.brokers.clone(),
                extra: settings.kafka.options.clone(),
                topic: settings.kafka.consumer.topic.clone(),
                group: settings.kafka.consumer.group.clone(),
                fetch_wait: settings.kafka.consumer.fetch_wait,
                session_timeout: settings.kafka.consumer.session_timeout,
                dead_letter_topic: settings.kafka.consumer.dead_letter_topic.clone(),
                session_ttl: settings.admission.session_ttl,
                backoff,
                replica_acks: settings.redis.replica_acks,
                replica_ack_timeout: settings.redis.replica_ack_timeout,
                close_timeout: settings.worker.shutdown_timeout,
            },
            conn.clone(),
            scripts.clone(),
            settings.keys.clone(),
            refill.clone(),
            stats.clone(),
            publisher.clone(),
        )
        .map_err(StartError::Kafka)?;
        let identity = Identity::new(settings.worker.id.clone());
        let http = match settings.http.addr {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| StartError::Http(addr, e))?;
                let state = Arc::new(HttpState {
                    stats: stats.clone(),
                    conn: conn.clone(),
                    scripts: scripts.clone(),
                    publisher: publisher.clone(),
                    worker_id: identity.id.clone(),
                    liveness_slack: settings.worker.process_interval * 2 + Duration::from_secs(1),
                });
                Some((listener, state))
            }
            None => None,
        };
        let announcer = Announcer {
            publisher: publisher.clone(),
            conn: conn.clone(),
            scripts: scripts.clone(),
            keys: settings.keys.clone(),
            topic: settings.kafka.producer.sold_out_topic.clone(),
            stats: stats.clone(),
        };
        let delivery = Delivery::new(
            conn.clone(),
            scripts.clone(),
            settings.keys.clone(),
            settings.signer.clone(),
            publisher,
            stats.clone(),
            DeliveryPolicy {
                attempts: settings.retry.attempts,
                backoff,
                time: time.clone(),
            },
        );
        let wait = WaitStats::new(settings.admission.checkout_window);
        let owners = Owners::everything(&identity.id);
        Ok(Some(Worker {
            wait,
            announcer,
            master: None,
            redis_clock: None,
            beat_due: None,
            beaten: false,
            hold_until: None,
            settings,
            conn,
            scripts,
            delivery: Arc::new(delivery),
            pending: None,
            stats,
            refill,
            completions: Some(completions),
            identity,
            http,
            invalid_seen: HashMap::new(),
            held_seen: HashMap::new(),
            time,
            served: BTreeSet::new(),
            owners,
            owner_periods: HashMap::new(),
            active: None,
            verified: None,
            owned: HashSet::new(),
            pass_events: Vec::new(),
            asked: Vec::new(),
            pass_retired: BTreeSet::new(),
            owners_changed: true,
            registered: HashSet::new(),
            known_size: None,
            retired: BTreeSet::new(),
            hints: HashMap::new(),
            passes: 0,
            ahead: HashMap::new(),
        }))
    }

    /// Where the HTTP endpoint listens, if it is on.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The worker's figures (what `/status` and `/metrics` show).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// How its cluster connection sent pipelines so far (one per master, by slot,
    /// redirected); None for one server. For the bench and the cluster tests.
    pub fn redis_pipeline_counts(&self) -> Option<store::PipelineCounts> {
        self.conn.pipeline_counts()
    }

    /// Run cycles until `shutdown` fires; then finish the cycle in flight, flush
    /// Kafka and wait for in-flight acknowledgements (bounded by the shutdown
    /// timeout). Unacknowledged entries stay in the outbox for the next worker.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        tracing::info!(
            events = ?self.settings.admission.events,
            interval = ?self.settings.worker.process_interval,
            max_concurrent = self.settings.admission.max_concurrent,
            batch_size = self.settings.admission.batch_size,
            "Queue processor started successfully"
        );
        let consumer = self
            .completions
            .take()
            .map(|c| tokio::spawn(c.run(shutdown.clone())));
        let http = self.http.take().map(|(listener, state)| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "http endpoint listening (/healthz /readyz /status /metrics)");
            }
            tokio::spawn(http::serve(listener, state, shutdown.clone()))
        });
        let mut ticker = tokio::time::interval(self.settings.worker.process_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let refill = self.refill.clone();
        let mut failures: u32 = 0;
        // The last few full passes' durations: how far apart this replica's beats
        // really are when passes outlast the interval (see `owner_period`).
        let mut recent_passes = [Duration::ZERO; RECENT_PASSES];
        let interval = self.settings.worker.process_interval;
        // The longest one pass may hold the loop: the pass itself (cut at the max
        // processing time), then the heartbeat (two Redis calls).
        let pass_bound = self.settings.worker.max_processing_time + self.settings.redis.timeout * 2;
        loop {
            self.expect_loop_within(interval);
            let full = tokio::select! {
                biased;
                _ = shutdown.recv() => break,
                _ = ticker.tick() => true,
                _ = refill.rung() => false,
            };
            self.expect_loop_within(pass_bound);
            let deadline = self.settings.worker.max_processing_time;
            let pass_started = Instant::now();
            let pass = async {
                if full {
                    self.cycle().await
                } else {
                    self.refill_pass().await
                }
            };
            let ok = match tokio::time::timeout(deadline, pass).await {
                Ok(ok) => ok,
                Err(_) => {
                    crate::log_limited!(WARN, "cycle cut at the max processing time; the rest waits for the next cycle", max_processing_time = ?deadline);
                    self.stats.error(ErrorKind::Timeout);
                    false
                }
            };
            let now = clock::now_ms();
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            if ok && full {
                self.stats.last_cycle_ok_ms.store(now, relaxed);
            } else if !ok {
                self.stats.last_cycle_failed_ms.store(now, relaxed);
            }
            if full {
                Stats::add(&self.stats.cycles, 1);
                self.stats
                    .cycle_duration
                    .observe(pass_started.elapsed().as_secs_f64());
                recent_passes.rotate_left(1);
                recent_passes[RECENT_PASSES - 1] = pass_started.elapsed();
                let last = self.stats.last_processed_ms.load(relaxed);
                // Only a pass that went through renews this replica as an owner: one
                // whose passes fail hands its events to the others.
                let owner = if !self.settings.worker.event_ownership {
                    OwnerBeat::Withdraw
                } else if ok {
                    OwnerBeat::Renew(ownership::owner_window(owner_period(
                        interval,
                        recent_passes,
                    )))
                } else {
                    OwnerBeat::Keep
                };
                // The heartbeat goes with the reads that open the next pass, one
                // round trip fewer a pass; beats stay as far apart as the passes.
                // The first also goes at once: the others learn of this replica an
                // interval sooner.
                if !self.beaten {
                    self.beaten = self.send_beat(last, owner).await;
                }
                self.beat_due = Some((last, owner));
            }
            self.stats.last_loop_ms.store(clock::now_ms(), relaxed);
            if ok {
                failures = 0;
            } else {
                // Back off while Redis is away, but keep listening for shutdown, and
                // end the backoff as soon as Redis answers again.
                failures = failures.saturating_add(1);
                let wait = self.backoff().delay(failures).saturating_sub(interval);
                if !wait.is_zero() {
                    self.stats.backing_off.store(true, relaxed);
                    self.expect_loop_within(wait + interval);
                    let recovered = tokio::select! {
                        _ = shutdown.recv() => break,
                        r = self.wait_for_redis(wait) => r,
                    };
                    self.stats.backing_off.store(false, relaxed);
                    if recovered {
                        tracing::info!("redis answers again; backoff ended early");
                        failures = 0;
                        ticker.reset_immediately();
                    }
                }
            }
        }
        if let Some(c) = consumer {
            let _ = tokio::time::timeout(self.settings.worker.shutdown_timeout, c).await;
        }
        if let Some(h) = http {
            let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
        }
        if let Err(e) = heartbeat::leave(&mut self.conn, &self.settings.keys, &self.identity).await
        {
            tracing::debug!(error = %crate::base::error_chain::chain(&e), "could not remove the heartbeat");
        }
        tracing::info!("Queue processor stopping: flushing Kafka and settling in-flight messages");
        self.await_pending().await;
        self.delivery
            .finish(self.settings.worker.shutdown_timeout)
            .await;
        tracing::info!("Queue processor stopped");
    }

    /// Tell liveness by when the loop should go round again.
    fn expect_loop_within(&self, d: Duration) {
        let due = clock::now_ms().saturating_add(d.as_millis() as u64);
        self.stats
            .loop_due_ms
            .store(due, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sleep up to `wait`, pinging Redis every little while; returns true as soon as
    /// it answers (the backoff ends early), false when the wait ran out.
    async fn wait_for_redis(&self, wait: Duration) -> bool {
        let end = Instant::now() + wait;
        let step = self
            .settings
            .retry
            .backoff
            .first
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            tokio::time::sleep(step.min(left)).await;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut conn = self.conn.clone();
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            // Never past the announced end of the wait.
            let limit = self.settings.redis.timeout.min(left);
            if let Ok(Ok(_)) = tokio::time::timeout(limit, ping).await {
                return true;
            }
        }
    }

    /// The round trip that opens a pass, in one pipeline: the events to serve
    /// (see below), Redis's clock and the list of owners (who shares the events),
    /// and about once a second the master's run id. Each is a fixed cost of every
    /// replica's pass, idle or not; apart they were four round trips per pass, and
    /// with sixteen replicas Redis spent more answering round trips than running
    /// the commands in them. Returns the events to serve: those given on the
    /// command line and the members of `<prefix>:active_events`, sorted and
    /// without duplicates; None when they are the last pass's.
    ///
    /// `active_events` is read in full (SMEMBERS: O(events), the one cost that grew
    /// with the number of replicas once they share the events) only when it may
    /// have changed: its size differs from the last full read, the version counter
    /// moved, a checked member is gone from it, or on a complete pass of the
    /// replica that keeps watch (the others' complete passes trust the watch: it
    /// checks every member on every pass, and bumps the counter for all when one
    /// is gone; sixteen replicas each reading 10,000 members every 30 passes were
    /// a sixth of what serving that many idle events cost Redis). Otherwise
    /// the pass reads SCARD and the counter, and checks members with SMISMEMBER:
    /// one replica (the first of the owners, see [`Owners::keeps_watch`]) checks
    /// them all, the others only their own events that people are waiting in.
    /// Checking is what costs (a lookup per member, each a cache miss in Redis:
    /// sixteen replicas checking their sixteenth each cost Redis four times one
    /// check of all), and only an event with someone waiting can admit. An event
    /// swapped for another (same size) is seen by whoever checks it, who bumps the
    /// counter: every replica reads the set again within two passes.
    async fn open_pass(
        &mut self,
        kind: PassKind,
    ) -> Result<Option<Vec<String>>, redis::RedisError> {
        let full = kind.full;
        let key = self.settings.keys.active_events();
        let version_key = self.settings.keys.active_events_version();
        let sharing = self.settings.worker.event_ownership;
        let mut p = redis::pipe();
        p.ignore_errors();
        let mut beat_sent = false;
        if let Some((last, owner)) = self.beat_due.take() {
            match self.redis_now_ms() {
                // Before the owners are read: this replica's own entry is fresh.
                Some(now) => {
                    heartbeat::add_beat(
                        &mut p,
                        &self.settings.keys,
                        &self.identity,
                        last,
                        self.settings.worker.process_interval,
                        owner,
                        now,
                    );
                    beat_sent = true;
                }
                None => {
                    self.send_beat(last, owner).await;
                }
            }
        }
        if sharing {
            heartbeat::read_owners(&mut p, &self.settings.keys);
        } else {
            p.cmd("TIME");
        }
        let master = self.master_check_due();
        if master {
            p.cmd("INFO").arg("server");
        }
        let given = &self.settings.admission.events;
        let watch = self.owners.keeps_watch();
        let checked: Option<Vec<&String>> =
            self.active
                .as_ref()
                .filter(|_| !(full && watch))
                .map(|cache| {
                    if watch {
                        return cache.members.iter().collect();
                    }
                    // From the hints (the events admitted for lately), not from every
                    // member: O(busy events), not O(events), on every pass. An event given
                    // by `--event` is served whether or not it is in the set.
                    self.hints
                        .iter()
                        .filter(|(e, h)| h.waiting > 0 && !given.contains(*e))
                        .filter(|(e, _)| {
                            cache.members.binary_search(e).is_ok() && self.owners.owns(e)
                        })
                        .map(|(e, _)| e)
                        .collect()
                });
        match &checked {
            Some(members) => {
                p.cmd("SCARD").arg(&key).cmd("GET").arg(&version_key);
                if !members.is_empty() {
                    p.cmd("SMISMEMBER").arg(&key).arg(members);
                }
            }
            None => {
                p.cmd("GET").arg(&version_key).cmd("SMEMBERS").arg(&key);
            }
        }
        let checked_any = checked.as_ref().map(|m| !m.is_empty());
        let verified: Option<HashSet<String>> = checked
            .filter(|_| !watch)
            .map(|m| m.into_iter().cloned().collect());
        self.asked.clear();
        let groups = self.ask_ahead(&mut p, kind);
        let mut replies: Vec<redis::RedisResult<redis::Value>> =
            p.query_async(&mut self.conn).await?;
        // The groups' replies are the last ones.
        if let Some(at) = replies.len().checked_sub(groups.len()) {
            let counts = replies.split_off(at);
            self.asked = vec![Asked::Not; self.pass_events.len()];
            for (group, count) in groups.iter().zip(counts) {
                let asked = match count.map(redis::from_redis_value::<u64>) {
                    Ok(Ok(0)) => Asked::Empty,
                    Ok(Ok(_)) => Asked::Someone,
                    _ => Asked::Not,
                };
                for &i in group {
                    self.asked[i] = asked;
                }
            }
        }
        if beat_sent {
            self.stats
                .last_beat_ms
                .store(clock::now_ms(), std::sync::atomic::Ordering::Relaxed);
        }
        let mut replies = replies.into_iter();
        let mut next = || {
            replies.next().unwrap_or_else(|| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "a pipeline reply is missing",
                )))
            })
        };
        let time = next();
        if let Ok(v) = &time
            && let Ok((secs, micros)) = redis::from_redis_value_ref::<(u64, u64)>(v)
        {
            let now = secs.saturating_mul(1000).saturating_add(micros / 1000);
            self.redis_clock = Some((now, Instant::now()));
        }
        if sharing {
            let listed = next();
            self.refresh_owners(full, time, listed).await;
        } else {
            self.owners_changed = self.owners.is_shared();
            self.owners = Owners::everything(&self.identity.id);
        }
        if master {
            self.note_master(next().and_then(|v| Ok(redis::from_redis_value::<String>(v)?)));
        }
        let (version, members): (Option<u64>, Vec<Vec<u8>>) = match checked_any {
            Some(any) => {
                let size: u64 = redis::from_redis_value(next()?)?;
                let version: Option<u64> = redis::from_redis_value(next()?)?;
                let present: Vec<bool> = if any {
                    redis::from_redis_value(next()?)?
                } else {
                    Vec::new()
                };
                let gone = present.iter().any(|here| !here);
                let cache = self.active.as_ref();
                let same_size = cache.is_some_and(|c| c.size == size);
                if gone && same_size {
                    // Others cannot tell from the size: have them read it again too.
                    let _: u64 = redis::cmd("INCR")
                        .arg(&version_key)
                        .query_async(&mut self.conn)
                        .await?;
                }
                if cache.is_some_and(|c| !gone && same_size && version == c.version) {
                    self.verified = verified;
                    return Ok(None);
                }
                redis::pipe()
                    .cmd("GET")
                    .arg(&version_key)
                    .cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(&mut self.conn)
                    .await?
            }
            None => {
                let version = redis::from_redis_value(next()?)?;
                (version, redis::from_redis_value(next()?)?)
            }
        };
        let size = members.len() as u64;
        let mut from_redis: Vec<String> = Vec::with_capacity(members.len());
        for m in members {
            match String::from_utf8(m) {
                Ok(e) if EventId::is_valid(&e) => from_redis.push(e),
                Ok(e) => {
                    crate::log_limited!(WARN, "ignoring an invalid event id", event_id = %e, key = %key)
                }
                Err(_) => {
                    crate::log_limited!(WARN, "ignoring an event id that is not UTF-8", key = %key)
                }
            }
        }
        // Sorted, for the membership tests above.
        from_redis.sort_unstable();
        let served = self.served_with(&from_redis);
        self.verified = None;
        self.active = Some(ActiveCache {
            members: from_redis,
            size,
            version,
        });
        Ok(Some(served))
    }

    /// Ask ahead, in the round trip that opens the pass, whether anyone waits in
    /// the last pass's idle events (served, nobody waiting and nothing to publish
    /// by their last figures), PROBE_GROUP to an `EXISTS` as
    /// [`Worker::check_idle`] asks them.
    /// Passes over idle events are most of a replica's passes, and with this one
    /// needs no other round trip: without it each chunk of EVENTS_PER_PIPELINE
    /// events asked in one of its own, and a round trip (waking Redis, reading,
    /// writing the reply) costs Redis about as much as sixty `EXISTS` on the
    /// machine the bench ran on. Sixteen replicas serving the events one did
    /// made sixteen times the round trips for the same reads.
    ///
    /// The answers hold for the events of this pass when its list is the last
    /// one again (the usual case: nothing it follows from changed); otherwise
    /// `cycle` drops them and the chunks ask as without. Not on a complete pass
    /// (which asks every event for more). In the cluster key layout an `EXISTS`
    /// takes the keys of one hash slot, so each event is asked on its own: the
    /// round trips are still saved (the cluster connection sends the opening
    /// reads as one pipeline per master). Returns the groups, as indexes into
    /// `pass_events`, in the order their commands were added.
    fn ask_ahead(&self, p: &mut redis::Pipeline, kind: PassKind) -> Vec<Vec<usize>> {
        let s = &self.settings;
        if kind.full {
            return Vec::new();
        }
        let group = match s.keys.layout() {
            KeyLayout::Default => PROBE_GROUP,
            KeyLayout::Cluster => 1,
        };
        // As `plan` and `check_idle` will find them, short of the clock: nobody
        // waiting, nothing to claim or adopt (a deadline coming due makes the event
        // one to reap, and its answer goes unused); on a refresh pass no slot
        // either (those are read on their own, for their figures).
        let idle = |(e, served): &(String, bool)| {
            *served
                && self.hints.get(e).is_some_and(|h| {
                    h.waiting == 0
                        && h.outbox_depth == 0
                        && h.in_use <= h.deadlines
                        && !(kind.refresh && h.in_use > 0)
                })
        };
        let candidates: Vec<usize> = (0..self.pass_events.len())
            .filter(|&i| idle(&self.pass_events[i]))
            .take(ASK_AHEAD_MAX)
            .collect();
        let groups: Vec<Vec<usize>> = candidates.chunks(group).map(<[usize]>::to_vec).collect();
        for group in &groups {
            let mut c = redis::cmd("EXISTS");
            for &i in group {
                idle_keys(&mut c, &s.keys, &self.pass_events[i].0, kind.refresh);
            }
            p.add_command(c);
        }
        groups
    }

    /// Redis's clock now, from the reading at the start of the last pass and the
    /// time gone since (monotonic); None when that reading is missing or old.
    fn redis_now_ms(&self) -> Option<u64> {
        self.redis_clock
            .filter(|(_, at)| at.elapsed() < REDIS_CLOCK_FRESH)
            .map(|(ms, at)| ms.saturating_add(millis(at.elapsed())))
    }

    /// Send a heartbeat on its own round trip (Redis's clock read first when the
    /// last reading is old). True when it went through.
    async fn send_beat(&mut self, last: u64, owner: OwnerBeat) -> bool {
        let now = self.redis_now_ms();
        match heartbeat::beat(
            &mut self.conn,
            &self.settings.keys,
            &self.identity,
            last,
            self.settings.worker.process_interval,
            owner,
            now,
        )
        .await
        {
            Ok(()) => {
                self.stats
                    .last_beat_ms
                    .store(clock::now_ms(), std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::debug!(error = %crate::base::error_chain::chain(&e), "heartbeat failed");
                false
            }
        }
    }

    /// The events given on the command line and `members`, sorted, without duplicates.
    fn served_with(&self, members: &[String]) -> Vec<String> {
        let mut set: BTreeSet<String> = self.settings.admission.events.iter().cloned().collect();
        set.extend(members.iter().cloned());
        set.into_iter().collect()
    }

    /// One pass over every event. Returns false when Redis looked unreachable.
    ///
    /// Events go in chunks: one pipeline runs, for every event of the chunk, the
    /// reaper, the outbox claim and the admit script (3 calls per event, one round
    /// trip per chunk); so a pass over 10,000 events costs a few dozen round trips,
    /// not 50,000. The admit calls carry the tokens, signed before them; only an
    /// unsigned admission (`--replica-acks`) or a claimed entry has its token
    /// written in one more round trip, by the delivery. A pass in which nobody
    /// waits is one round trip: its idle events were asked with the reads that
    /// opened it (`Worker::ask_ahead`).
    ///
    /// Served events admit. Retired events (known, no longer served) are drained:
    /// their slots expire and their outbox publishes, nobody is admitted, and once
    /// nothing of them is left they are forgotten.
    pub async fn cycle(&mut self) -> bool {
        let started = Instant::now();
        let full = self.passes.is_multiple_of(FULL_PASS_EVERY);
        // Counted per pass, not per chunk of events: with many events a per-chunk
        // count made complete passes and refreshes many times more frequent.
        let kind = PassKind {
            full,
            refresh: (self.passes + 1).is_multiple_of(REFRESH_EVERY),
        };
        let fresh = match self.open_pass(kind).await {
            Ok(e) => e,
            Err(e) => {
                crate::log_limited!(ERROR, "reading active events failed", error = %crate::base::error_chain::chain(&e));
                self.stats.error(ErrorKind::Redis);
                if retry::is_transient(&e) {
                    return false;
                }
                // Read in full next time: this pass serves only the given events.
                self.active = None;
                self.asked.clear();
                Some(self.settings.admission.events.clone())
            }
        };
        self.passes = self.passes.wrapping_add(1);
        // What follows the list of events is O(events) for every replica on every
        // pass (sets built, ownership hashed, metrics' label sets compared): with
        // 100,000 events it outweighed the pass's Redis work. It runs only when the
        // list, the owners or the retired events changed; otherwise the last pass's
        // events are passed again.
        let changed = fresh.is_some() || self.owners_changed || full;
        let mut lost_some = false;
        if let Some(served) = fresh {
            let served_set: BTreeSet<String> = served.into_iter().collect();
            lost_some = self.served.difference(&served_set).next().is_some();
            self.served = served_set;
        }
        if full {
            let sample: Vec<String> = self.served.iter().take(100).cloned().collect();
            self.check_layout(&sample).await;
        }
        if let Err(e) = self.refresh_known(full, changed, lost_some).await {
            crate::log_limited!(WARN, "could not update the known events; retired events are drained later", error = %crate::base::error_chain::chain(&e), key = %self.settings.keys.known_events());
            self.stats.error(ErrorKind::Redis);
        }
        let events = if changed || self.retired != self.pass_retired {
            let mut tracked = self.served.clone();
            tracked.extend(self.retired.iter().cloned());
            self.stats.track(tracked);
            self.ahead.retain(|e, _| self.served.contains(e));
            self.pass_retired = self.retired.clone();
            // Asked ahead of the last pass's list: not this one's.
            self.asked.clear();
            self.owned_events()
        } else {
            self.stats.set_ownership(
                self.pass_events.len() as u64,
                self.owners.replicas() as u64,
                self.owners.is_shared(),
            );
            std::mem::take(&mut self.pass_events)
        };
        tracing::debug!(
            event_count = self.served.len(),
            retired = self.retired.len(),
            owned = events.len(),
            replicas = self.owners.replicas(),
            "Processing queues for active events"
        );
        Stats::add(&self.stats.event_passes, events.len() as u64);
        let mut ok = true;
        let asked = std::mem::take(&mut self.asked);
        for (n, chunk) in events.chunks(EVENTS_PER_PIPELINE).enumerate() {
            let from = n * EVENTS_PER_PIPELINE;
            let asked = asked.get(from..from + chunk.len()).unwrap_or_default();
            if let Err(e) = self.process_events(chunk, asked, kind).await {
                self.stats.error(ErrorKind::Redis);
                crate::log_limited!(ERROR, "processing events failed, the rest waits for the next cycle", error = %crate::base::error_chain::chain(&e));
                if e.is_connection() {
                    ok = false;
                    break;
                }
            }
        }
        self.pass_events = events;
        // Once per pass, not per chunk: each call looks at every event tracked.
        self.write_wait_figures();
        self.stats
            .last_processed_ms
            .store(clock::now_ms(), std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(elapsed = ?started.elapsed(), "cycle done");
        ok
    }

    /// Detect a `--key-layout` that does not match what the API writes: a served
    /// event whose queue exists only under the other layout's name would admit
    /// nobody, silently. Checked at start and on every full pass (at most 100
    /// events, two EXISTS each, unless none of them exists under the other
    /// names); `/readyz` and the log say so.
    async fn check_layout(&mut self, served: &[String]) {
        use crate::model::keys::{KeyLayout, Keys};
        let keys = &self.settings.keys;
        let other = Keys::new(
            keys.prefix(),
            match keys.layout() {
                KeyLayout::Default => KeyLayout::Cluster,
                KeyLayout::Cluster => KeyLayout::Default,
            },
        );
        let sample = served;
        if sample.is_empty() {
            self.stats.set_layout_mismatch(Vec::new());
            return;
        }
        // On one server, first one `EXISTS` of all the other layout's names: none
        // there (the usual answer) is no mismatch, without 200 commands. (A
        // cluster takes one slot's keys to a command.)
        if !matches!(self.conn, RedisConn::Cluster(_)) {
            let names: Vec<String> = sample.iter().map(|e| other.queue(e)).collect();
            let any: redis::RedisResult<u64> = redis::cmd("EXISTS")
                .arg(names)
                .query_async(&mut self.conn)
                .await;
            if matches!(any, Ok(0)) {
                self.stats.set_layout_mismatch(Vec::new());
                return;
            }
        }
        let mut p = redis::pipe();
        for e in sample {
            p.cmd("EXISTS").arg(keys.queue(e));
            p.cmd("EXISTS").arg(other.queue(e));
        }
        let found: Vec<u64> = match p.query_async(&mut self.conn).await {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "key layout check skipped");
                return;
            }
        };
        let mismatch: Vec<String> = sample
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                found.get(2 * i) == Some(&0) && found.get(2 * i + 1).is_some_and(|n| *n > 0)
            })
            .map(|(_, e)| (*e).clone())
            .collect();
        if !mismatch.is_empty() && mismatch != self.stats.layout_mismatch() {
            tracing::error!(events = ?mismatch, key_layout = %keys.layout(), "these events' queues exist only under the other key layout's names: this worker admits nobody there; check --key-layout (and the API's key names)");
        }
        self.stats.set_layout_mismatch(mismatch);
    }

    /// Keep `<prefix>:known_events` up to date: add the owned served events this
    /// process has not added yet (all of them on a full pass), and on a full pass or
    /// when an event stopped being served, read it back to learn the retired events
    /// (all of them: which ones this replica drains follows ownership each pass).
    async fn refresh_known(
        &mut self,
        full: bool,
        changed: bool,
        lost_some: bool,
    ) -> Result<(), redis::RedisError> {
        let key = self.settings.keys.known_events();
        // Each replica registers the events it owns: together they register all.
        // Only the served events or the owners changing makes new ones.
        let new: Vec<&String> = self
            .served
            .iter()
            .filter(|_| changed)
            .filter(|e| full || !self.registered.contains(*e))
            .filter(|e| self.owners.owns(e))
            .collect();
        if !new.is_empty() {
            let _: () = redis::cmd("SADD")
                .arg(&key)
                .arg(&new)
                .query_async(&mut self.conn)
                .await?;
            let new: Vec<String> = new.into_iter().cloned().collect();
            self.registered.extend(new);
        }
        // On a complete pass a replica that does not keep watch, has no retired
        // events and lost none first reads the set's size: unchanged since it read
        // it whole, it holds no event retired since (an event leaves the set only
        // once drained, and a retired event stays in it until then). Sixteen
        // replicas reading 10,000 members every 30 passes cost Redis more than
        // the watch and the heartbeats together.
        if full && !lost_some && self.retired.is_empty() && !self.owners.keeps_watch() {
            let size: u64 = redis::cmd("SCARD")
                .arg(&key)
                .query_async(&mut self.conn)
                .await?;
            if self.known_size == Some(size) {
                return Ok(());
            }
        }
        if full || lost_some {
            let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut self.conn)
                .await?;
            self.known_size = Some(members.len() as u64);
            self.retired = members
                .into_iter()
                .filter_map(|m| String::from_utf8(m).ok())
                .filter(|e| EventId::is_valid(e) && !self.served.contains(e))
                .collect();
        } else {
            let served = &self.served;
            self.retired.retain(|e| !served.contains(e));
        }
        Ok(())
    }

    /// Forget a retired event once nothing of it is left: no slot, no deadline, no
    /// unpublished admission.
    async fn forget(&mut self, event: &str) {
        let key = self.settings.keys.known_events();
        let result: Result<(), redis::RedisError> = redis::cmd("SREM")
            .arg(&key)
            .arg(event)
            .query_async(&mut self.conn)
            .await;
        match result {
            Ok(()) => {
                tracing::info!(event_id = %event, "retired event drained: no slot, deadline or unpublished admission left");
                self.retired.remove(event);
                self.registered.remove(event);
                self.hints.remove(event);
                self.wait.forget(event);
            }
            Err(e) => {
                crate::log_limited!(WARN, "could not forget a drained event; retrying next pass", event_id = %event, error = %crate::base::error_chain::chain(&e))
            }
        }
    }

    /// Take in who shares the events, from the replies of
    /// [`heartbeat::read_owners`] in the pass's opening round trip (the
    /// interval of a replica listed for the first time, of every listed one on a
    /// complete pass, costs one more). The list unreadable: this replica passes
    /// every event meanwhile, which is always safe (the scripts never depend on
    /// ownership).
    async fn refresh_owners(
        &mut self,
        full: bool,
        time: redis::RedisResult<redis::Value>,
        listed: redis::RedisResult<redis::Value>,
    ) {
        let me = self.identity.id.as_str();
        let owners = match heartbeat::owners_from(
            &mut self.conn,
            &self.settings.keys,
            &mut self.owner_periods,
            full,
            time,
            listed,
        )
        .await
        {
            Ok((now, entries)) => {
                let period = u64::try_from(self.settings.worker.process_interval.as_millis())
                    .unwrap_or(u64::MAX);
                Owners::among(me, ownership::candidates(&entries, now, period))
            }
            Err(e) => {
                self.stats.error(ErrorKind::Redis);
                crate::log_limited!(WARN, "could not read the replicas sharing the events; passing every event meanwhile", key = %self.settings.keys.owners(), error = %crate::base::error_chain::chain(&e));
                Owners::everything(me)
            }
        };
        self.owners_changed = owners.ids() != self.owners.ids();
        if self.owners_changed {
            Stats::add(&self.stats.owner_changes, 1);
            crate::log_limited!(
                INFO,
                "replicas sharing the events changed",
                replicas = ?owners.ids()
            );
        }
        self.owners = owners;
    }

    /// The events this pass runs: the served and the retired ones this replica
    /// owns, each with whether it is served. An event it no longer owns loses its
    /// hint and wait figures here (its new owner writes them; should it come back,
    /// its first pass runs everything, as for a new event).
    fn owned_events(&mut self) -> Vec<(String, bool)> {
        let owners = &self.owners;
        let mut events: Vec<(String, bool)> = self
            .served
            .iter()
            .filter(|e| owners.owns(e))
            .map(|e| (e.clone(), true))
            .collect();
        events.extend(
            self.retired
                .iter()
                .filter(|e| owners.owns(e))
                .map(|e| (e.clone(), false)),
        );
        let owned: HashSet<String> = events.iter().map(|(e, _)| e.clone()).collect();
        for lost in self.owned.difference(&owned) {
            self.wait.forget(lost);
        }
        self.hints.retain(|e, _| owned.contains(e));
        self.stats.set_ownership(
            events.len() as u64,
            self.owners.replicas() as u64,
            self.owners.is_shared(),
        );
        self.owned = owned;
        events
    }

    /// Reap, claim and admit for `events` (each with whether it is served) in one
    /// pipeline, then publish. One event's failure costs only that event.
    ///
    /// The steps: plan what each event needs ([`Plan`]), ask Redis whether idle
    /// events have anyone waiting, build the calls (each tagged with its event and
    /// [`Step`]), run them in one pipeline, and apply each reply to its event, in a
    /// tracing span per event.
    async fn process_events(
        &mut self,
        events: &[(String, bool)],
        asked: &[Asked],
        kind: PassKind,
    ) -> Result<(), EventError> {
        let now = self.time.now_ms();
        // What this worker has in flight, read once, before Redis counts the outboxes
        // (read after, an acknowledgement in between would show as waiting).
        let in_flight: Vec<u64> = events
            .iter()
            .map(|(e, _)| self.stats.in_flight(e))
            .collect();
        let mut plans = self.plan(events, &in_flight, kind, now);
        self.check_idle(events, asked, &mut plans, kind).await?;
        if self.admission_held() {
            for p in &mut plans {
                p.admit = false;
            }
        }
        self.verify_served(events, &mut plans).await;
        self.peek_heads(events, &plans).await;

        // Tokens first: each admit call carries the tokens of the waiters it may admit.
        let mut signed: Vec<Option<SignedSet>> = Vec::with_capacity(events.len());
        let until = Instant::now() + SIGNING_PER_ROUND;
        for ((e, served), plan) in events.iter().zip(&plans) {
            signed.push((plan.admit && *served && self.signs_ahead()).then(|| {
                let budget = self.sign_budget(e, plan.reap);
                self.sign_ahead(e, budget, until)
            }));
        }
        let s = &self.settings;
        let args = s.admit_args();
        let claim_args = s.claim_args();
        let valve_args = s.valve_args();
        let mut steps: Vec<(usize, Step)> = Vec::with_capacity(events.len() * 3);
        let mut calls: Vec<Call<'_>> = Vec::with_capacity(events.len() * 3);
        for (i, ((e, served), plan)) in events.iter().zip(&plans).enumerate() {
            if plan.reap {
                steps.push((i, Step::Reap));
                calls.push(reap::call(
                    &self.scripts.reap,
                    &s.keys,
                    e,
                    now,
                    s.admission.checkout_window,
                    s.admission.session_ttl,
                ));
            }
            if plan.claim {
                steps.push((i, Step::Claim));
                calls.push(claim_outbox::call(
                    &self.scripts.claim_outbox,
                    &s.keys,
                    e,
                    &claim_args,
                ));
            }
            if plan.valve {
                steps.push((i, Step::Valve));
                calls.push(valve::call(&self.scripts.valve, &s.keys, e, &valve_args));
            }
            if plan.admit {
                steps.push((i, Step::Admit));
                calls.push(match &signed[i] {
                    Some(set) => {
                        admit::call_signed(&self.scripts.admit, &s.keys, e, &args, &set.signed)
                    }
                    None => admit::call(&self.scripts.admit, &s.keys, e, &args, *served),
                });
            }
        }
        let results =
            scripts::run_batch_retrying(&self.conn, &calls, s.retry.attempts, self.backoff())
                .await
                .map_err(|e| EventError::Admit(ScriptError::Redis(e)))?;
        let answered = Instant::now();
        drop(calls);

        // Each reply goes to the event and step of its call.
        let mut replies: Vec<Replies> = signed
            .into_iter()
            .map(|signed| Replies {
                signed,
                ..Replies::default()
            })
            .collect();
        for ((i, step), result) in steps.into_iter().zip(results) {
            let r = &mut replies[i];
            match step {
                Step::Reap => r.reap = Some(result),
                Step::Claim => r.claim = Some(result),
                Step::Admit => r.admit = Some(result),
                Step::Valve => r.valve = Some(result),
            }
        }

        let mut to_deliver: Vec<(String, Vec<Outgoing>)> = Vec::new();
        let mut drained = Vec::new();
        let mut again = Vec::new();
        for (((event, served), r), in_flight) in events.iter().zip(replies).zip(&in_flight) {
            let span = tracing::info_span!("event", event_id = %event);
            let outcome = self
                .apply(event, *served, r, *in_flight)
                .instrument(span)
                .await;
            if outcome.drained {
                drained.push(event.clone());
            }
            if outcome.again {
                again.push((event.clone(), *in_flight));
            }
            if !outcome.entries.is_empty() {
                to_deliver.push((event.clone(), outcome.entries));
            }
        }
        if !again.is_empty() {
            Stats::add(&self.stats.admit_second_calls, again.len() as u64);
            self.admit_again(&again, &mut to_deliver).await;
        }
        for event in drained {
            self.forget(&event).await;
        }
        // Nothing leaves before enough replicas hold it (--replica-acks): short of
        // them, the entries stay in the outbox (leased) and are published later.
        if !to_deliver.is_empty() && !self.replicated().await {
            to_deliver.clear();
        }
        // Overlap: this pass's tokens and messages go out while the next pass admits.
        self.await_pending().await;
        for (event, entries) in &to_deliver {
            self.stats.in_flight_add(event, entries.len() as i64);
        }
        if !to_deliver.is_empty() {
            let delivery = self.delivery.clone();
            self.pending = Some(tokio::spawn(async move {
                delivery.dispatch_many(to_deliver, answered).await
            }));
        }
        Ok(())
    }

    /// A second admit call, at once, for the events whose call stopped at a waiter
    /// without a token while slots were free (the first call of an event, or its
    /// line changed): signed for the waiters that call named. One round trip for
    /// them all; a failure waits for the next pass.
    async fn admit_again(
        &mut self,
        events: &[(String, u64)],
        to_deliver: &mut Vec<(String, Vec<Outgoing>)>,
    ) {
        let mut sets = Vec::with_capacity(events.len());
        let until = Instant::now() + SIGNING_PER_ROUND;
        for (e, _) in events {
            let budget = self.sign_budget(e, true);
            sets.push(self.sign_ahead(e, budget, until));
        }
        let s = &self.settings;
        let args = s.admit_args();
        let calls: Vec<Call<'_>> = events
            .iter()
            .zip(&sets)
            .map(|((e, _), set)| {
                admit::call_signed(&self.scripts.admit, &s.keys, e, &args, &set.signed)
            })
            .collect();
        let results =
            match scripts::run_batch_retrying(&self.conn, &calls, s.retry.attempts, self.backoff())
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    self.event_failed(&EventError::Admit(ScriptError::Redis(e)));
                    return;
                }
            };
        drop(calls);
        for (((event, in_flight), set), result) in events.iter().zip(sets).zip(results) {
            let r = Replies {
                signed: Some(set),
                admit: Some(result),
                ..Replies::default()
            };
            let span = tracing::info_span!("event", event_id = %event);
            let outcome = self
                .apply(event, true, r, *in_flight)
                .instrument(span)
                .await;
            if outcome.entries.is_empty() {
                continue;
            }
            match to_deliver.iter_mut().find(|(e, _)| e == event) {
                Some((_, entries)) => entries.extend(outcome.entries),
                None => to_deliver.push((event.clone(), outcome.entries)),
            }
        }
    }

    /// Whether admissions carry their tokens (signed before the admit call). Not
    /// with `--replica-acks`: there no token may leave the worker (and the session
    /// hash is where the API reads it) before enough replicas hold the admission,
    /// so the admission goes first and its token is written after the WAIT.
    fn signs_ahead(&self) -> bool {
        self.settings.redis.replica_acks == 0
    }

    /// How many tokens to sign for an event's next admit call: its batch, or only
    /// the slots the last reply left free when no slot can have come back since
    /// (no reaper in this call, no completion woke it). Too few only costs a
    /// second call; too many, signing for nothing.
    /// A rate-capped event gets what its cap still allowed plus an interval's worth.
    fn sign_budget(&self, event: &str, slots_may_free: bool) -> u64 {
        let most = admit::MAX_ADMIT_PER_CALL;
        let Some(h) = self.hints.get(event) else {
            return self.settings.admission.batch_size.min(most);
        };
        let mut budget = h.batch.min(most);
        if !slots_may_free {
            budget = budget.min(h.capacity.saturating_sub(h.in_use));
        }
        if let Some((per_minute, left)) = h.rate {
            let interval = millis(self.settings.worker.process_interval);
            let more = per_minute.saturating_mul(interval).div_ceil(60_000);
            budget = budget.min(left.saturating_add(more).saturating_add(1));
        }
        budget
    }

    /// Sign tokens for the first `budget` waiters this worker knows of, for an
    /// admission now (Redis's clock as seen from here); and ask for more waiters
    /// when fewer than half of those wanted would be left: a batch while slots stay
    /// free, else [`AHEAD_WHEN_FULL`] (a full event's waiters are read ahead only a
    /// little: what a completion frees; a bigger refill costs a second call).
    ///
    /// Signing stops at `until` (the round's signing time, [`SIGNING_PER_ROUND`]):
    /// the instant signed for must still be close to Redis's clock when the call
    /// runs, however slow the key (RS256) or many the events; the waiters left
    /// unsigned wait for the second call or the next pass.
    fn sign_ahead(&mut self, event: &str, budget: u64, until: Instant) -> SignedSet {
        let window_ms = millis(self.settings.admission.checkout_window);
        let default_claim = millis(self.settings.admission.claim_window);
        let hint = self.hints.get(event);
        let batch = hint
            .map_or(self.settings.admission.batch_size, |h| h.batch)
            .clamp(1, admit::MAX_ADMIT_PER_CALL);
        let stays_free = hint.is_none_or(|h| h.capacity > h.in_use.saturating_add(budget));
        let wanted = if stays_free {
            batch
        } else {
            batch.min(AHEAD_WHEN_FULL)
        };
        let at = self.time.now_ms();
        let ahead = self.ahead.entry(event.to_owned()).or_default();
        let claim_window_ms = ahead.claim_window_ms.unwrap_or(default_claim);
        let (deadline_ms, claim_by_ms) = token::stamps(at, window_ms, claim_window_ms);
        let n = usize::try_from(budget)
            .unwrap_or(usize::MAX)
            .min(ahead.prospects.len());
        let mut tokens = Vec::with_capacity(n);
        for (sid, user) in ahead.prospects.iter().take(n) {
            if Instant::now() >= until {
                break;
            }
            match self
                .delivery
                .sign(event, sid, user, at, deadline_ms, claim_by_ms)
            {
                Ok(t) => tokens.push((sid.clone(), user.clone(), t)),
                Err(e) => {
                    // The admit call stops at this waiter; the next pass tries again.
                    self.stats.error(ErrorKind::Sign);
                    crate::log_limited!(ERROR, "signing checkout token failed", event_id = %event, error = %crate::base::error_chain::chain(&e));
                    break;
                }
            }
        }
        let left = (ahead.prospects.len() - tokens.len()) as u64;
        SignedSet {
            admitted_ms: at,
            deadline_ms,
            claim_by_ms,
            signed: admit::Signed {
                admitted_ms: at,
                claim_window_ms,
                lookahead: if left * 2 < wanted { wanted } else { 0 },
                tokens,
            },
        }
    }

    /// Follow Redis's clock from an admit reply; when the script found the signed
    /// instant too far from its clock, take its clock as it is.
    fn note_time(&self, outcome: &AdmitOutcome) {
        if outcome.stale_stamp {
            crate::log_limited!(
                WARN,
                "the admission instant signed for was too far from Redis's clock; following its clock again"
            );
            self.time.reset(outcome.now_ms);
        } else {
            self.time.observe(outcome.now_ms);
        }
    }

    /// Remember what an admit reply said of the event, to plan its next pass.
    fn note_hint(&mut self, event: &str, outcome: &AdmitOutcome) {
        self.hints.insert(
            event.to_owned(),
            Hint {
                in_use: outcome.in_use,
                deadlines: outcome.deadlines,
                next_deadline_ms: outcome.next_deadline_ms,
                outbox_depth: outcome.outbox_depth,
                waiting: outcome.queue_length,
                adaptive: outcome.adaptive,
                capacity: outcome.capacity,
                batch: outcome.batch,
                rate: outcome
                    .rate_per_minute
                    .map(|r| (r, outcome.rate_left.unwrap_or(0))),
            },
        );
    }

    /// Take in what an admit reply says of the waiters ahead: the ones it named
    /// replace those held; else the admitted ones (and any passed over before them)
    /// are no longer ahead.
    fn note_ahead(&mut self, event: &str, outcome: &AdmitOutcome, admitted: &[Outgoing]) {
        let ahead = self.ahead.entry(event.to_owned()).or_default();
        ahead.claim_window_ms = Some(outcome.claim_window_ms);
        if outcome.short || !outcome.prospects.is_empty() {
            ahead.prospects = outcome.prospects.iter().cloned().collect();
        } else if let Some((last, _)) = admitted.last()
            && let Some(pos) = ahead
                .prospects
                .iter()
                .position(|(sid, _)| *sid == last.session_id)
        {
            ahead.prospects.drain(..=pos);
        }
    }

    /// What each event needs this pass. Idle events skip the reaper and the claim:
    /// the last admit reply says whether a deadline is due, a slot lacks one, or the
    /// outbox holds more than this worker has in flight. Every FULL_PASS_EVERY-th
    /// pass, retired events and events not seen yet run everything (for a served
    /// event with nobody waiting, `check_idle` first makes sure it holds anything).
    /// A deadline D is due once D + 1s has passed (the token's last valid second).
    fn plan(
        &self,
        events: &[(String, bool)],
        in_flight: &[u64],
        kind: PassKind,
        now: u64,
    ) -> Vec<Plan> {
        events
            .iter()
            .zip(in_flight)
            .map(|((e, served), &in_flight)| match self.hints.get(e) {
                Some(h) if !kind.full && *served => Plan {
                    valve: h.adaptive,
                    reap: h
                        .next_deadline_ms
                        .is_some_and(|d| d.saturating_add(1000) <= now)
                        || h.in_use > h.deadlines,
                    // This worker's own entries in flight are not due (their lease
                    // runs while they publish): the claim runs only for more.
                    claim: h.outbox_depth > in_flight,
                    admit: true,
                    peek: h.waiting > 0,
                },
                _ => Plan {
                    reap: true,
                    claim: true,
                    admit: true,
                    valve: *served && self.hints.get(e).is_some_and(|h| h.adaptive),
                    peek: self.hints.get(e).is_none_or(|h| h.waiting > 0),
                },
            })
            .collect()
    }

    /// Read the head of the line of each event about to admit whose waiters this
    /// worker knows nothing of (its first pass, one just gained, or one whose line
    /// was empty): `lua/peek.lua`, one round trip for the chunk, so its admit call
    /// carries their tokens. Without it the call stops at its first waiter and a
    /// second full call follows, and an admit call costs several times this read.
    /// A failed read costs nothing but that second call.
    async fn peek_heads(&mut self, events: &[(String, bool)], plans: &[Plan]) {
        if !self.signs_ahead() {
            return;
        }
        let unknown: Vec<usize> = (0..events.len())
            .filter(|&i| plans[i].admit && plans[i].peek && events[i].1)
            .filter(|&i| {
                self.ahead
                    .get(&events[i].0)
                    .is_none_or(|a| a.prospects.is_empty())
            })
            .collect();
        if unknown.is_empty() {
            return;
        }
        let s = &self.settings;
        let calls: Vec<Call<'_>> = unknown
            .iter()
            .map(|&i| {
                let e = &events[i].0;
                let batch = self
                    .hints
                    .get(e)
                    .map_or(s.admission.batch_size, |h| h.batch);
                peek::call(
                    &self.scripts.peek,
                    &s.keys,
                    e,
                    batch,
                    s.admission.claim_window,
                )
            })
            .collect();
        let results = match scripts::run_batch_retrying(
            &self.conn,
            &calls,
            s.retry.attempts,
            self.backoff(),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                crate::log_limited!(WARN, "could not read the heads of the lines; the admit calls read them", error = %crate::base::error_chain::chain(&e));
                return;
            }
        };
        drop(calls);
        for (&i, result) in unknown.iter().zip(results) {
            match result.map_err(ScriptError::Redis).and_then(peek::parse) {
                Ok(head) => {
                    let ahead = self.ahead.entry(events[i].0.clone()).or_default();
                    ahead.claim_window_ms = Some(head.claim_window_ms);
                    ahead.prospects = head.prospects.into_iter().collect();
                }
                Err(e) => {
                    crate::log_limited!(WARN, "could not read the head of an event's line; its admit call reads it", event_id = %events[i].0, error = %crate::base::error_chain::chain(&e));
                }
            }
        }
    }

    /// Only a served event admits: an event about to admit that the pass's opening
    /// did not find in `active_events` (it checks only what people wait in, see
    /// [`Worker::open_pass`]) is checked now, one round trip for the chunk, and
    /// only in a pass where an event starts admitting. One gone from the set
    /// admits nobody, and every replica reads the set again (the version counter).
    /// Events given by `--event` are always served.
    async fn verify_served(&mut self, events: &[(String, bool)], plans: &mut [Plan]) {
        let Some(verified) = self.verified.as_ref() else {
            return;
        };
        let given = &self.settings.admission.events;
        let unverified: Vec<usize> = (0..events.len())
            .filter(|&i| plans[i].admit && events[i].1)
            .filter(|&i| !verified.contains(&events[i].0) && !given.contains(&events[i].0))
            .collect();
        if unverified.is_empty() {
            return;
        }
        let key = self.settings.keys.active_events();
        let names: Vec<&String> = unverified.iter().map(|&i| &events[i].0).collect();
        let present: Vec<bool> = match retry::query_retrying(
            &self.conn,
            redis::pipe().cmd("SMISMEMBER").arg(&key).arg(&names),
            self.settings.retry.attempts,
            self.backoff(),
        )
        .await
        {
            Ok((present,)) => present,
            Err(e) => {
                // Not known to be served: it admits at a later pass.
                self.stats.error(ErrorKind::Redis);
                crate::log_limited!(WARN, "could not check that events are still served; they admit at a later pass", key = %key, error = %crate::base::error_chain::chain(&e));
                vec![false; unverified.len()]
            }
        };
        let mut gone = false;
        for (&i, here) in unverified.iter().zip(present) {
            if here {
                if let Some(v) = self.verified.as_mut() {
                    v.insert(events[i].0.clone());
                }
            } else {
                plans[i].admit = false;
                gone = true;
            }
        }
        if gone && self.active.take().is_some() {
            // Read in full at the next pass, here and (the counter) everywhere.
            let version_key = self.settings.keys.active_events_version();
            let bumped: redis::RedisResult<u64> = redis::cmd("INCR")
                .arg(&version_key)
                .query_async(&mut self.conn)
                .await;
            if let Err(e) = bumped {
                crate::log_limited!(WARN, "could not bump the version of the active events", key = %version_key, error = %crate::base::error_chain::chain(&e));
            }
        }
    }

    /// An event with nothing to reap or publish is admitted only if someone waits:
    /// an `EXISTS` of both lanes (no script), 16 events to a command in the
    /// default key layout, mostly asked ahead with the pass's opening reads
    /// ([`Worker::ask_ahead`]); what that left open is asked in one round trip
    /// for the chunk (a second only for a group that counts someone). Every REFRESH_EVERY-th pass reads the slots and
    /// outbox too, keeping the event's figures following Redis between admit
    /// calls (slots and outbox the API or others changed).
    ///
    /// An event this worker has no figures of between complete passes (gained from
    /// a replica that stopped, or new) is checked in the same round trip for any
    /// key that needs work (someone waiting, a slot, an outbox entry, a deadline,
    /// a sell-out to announce): with none, nothing runs for it, where it used to
    /// run every script. A takeover hands over thousands of mostly idle events at
    /// once, and the pass that took them over was what the takeover waited for.
    /// Its config's existence is read too: without one, the defaults are its
    /// figures (`/status`, the gauges); with one, they come with its next admit call.
    ///
    /// A complete pass checks every served event nobody was waiting in the same
    /// way: with nothing in the event, no script runs; with a config, only the
    /// admit call (it reports invalid values, records a stock of 0 as sold out,
    /// and brings the capacity figures up to date). It used to run every script for
    /// every event: with 10,000 idle events about 200 ms of Redis CPU in a burst
    /// every 30 passes.
    async fn check_idle(
        &mut self,
        events: &[(String, bool)],
        asked: &[Asked],
        plans: &mut [Plan],
        kind: PassKind,
    ) -> Result<(), EventError> {
        // An event whose last admit call left people waiting is admitted without
        // asking (during a sale that is every busy event: no extra round trip),
        // except on a refresh pass, which reads every idle event's figures.
        let idle: Vec<usize> = (0..events.len())
            .filter(|&i| !kind.full && !plans[i].reap && !plans[i].claim)
            .filter(|&i| {
                kind.refresh || self.hints.get(&events[i].0).is_none_or(|h| h.waiting == 0)
            })
            .collect();
        // Between complete passes: events without figures. On a complete pass:
        // every served event nobody was waiting in.
        let fresh: Vec<usize> = (0..events.len())
            .filter(|&i| match self.hints.get(&events[i].0) {
                None => !kind.full || events[i].1,
                Some(h) => kind.full && events[i].1 && h.waiting == 0,
            })
            .collect();
        if idle.is_empty() && fresh.is_empty() {
            return Ok(());
        }
        let s = &self.settings;
        // Each read on its own: one event's error (its cluster master away) must
        // not keep the others from being admitted. A read that fails counts as
        // someone waiting, so the admit call runs and reports for itself.
        // Between refreshes only "is anyone waiting" matters: `EXISTS` of both
        // lanes (Redis deletes an empty sorted set, so a lane exists only while
        // someone waits in it; a lane of the wrong type exists too, and the admit
        // call reports it). A refresh reads the four lengths.
        //
        // In the default key layout, events expected to have nothing there (their
        // last figures say so) are asked PROBE_GROUP at a time, one `EXISTS` of all
        // their keys: a count of 0 answers for every one of them, and only a group
        // that counts something is read event by event, in a second round trip.
        // Redis spends less on one command of 32 keys than on 16 commands of two
        // (what a command costs beyond its keys: parsing, dispatch, the reply),
        // and idle events are what most of a pass is made of.
        //
        // Most of those were asked ahead, in the round trip that opened the pass
        // (`asked`, see `Worker::ask_ahead`): an event whose group counted nothing
        // is not asked again, one whose group counted something is read on its own.
        let per = if kind.refresh { 4 } else { 1 };
        let grouped = s.keys.layout() == KeyLayout::Default;
        let (mut alone, mut together, mut answered) = (Vec::new(), Vec::new(), Vec::new());
        for n in 0..idle.len() {
            match asked.get(idle[n]).copied().unwrap_or(Asked::Not) {
                Asked::Empty => answered.push(n),
                Asked::Someone => alone.push(n),
                Asked::Not => {
                    let known_busy = self.hints.get(&events[idle[n]].0).is_some_and(|h| {
                        h.waiting > 0 || (kind.refresh && (h.in_use > 0 || h.outbox_depth > 0))
                    });
                    if grouped && !known_busy {
                        together.push(n);
                    } else {
                        alone.push(n);
                    }
                }
            }
        }
        let mut p = redis::pipe();
        p.ignore_errors();
        for &n in &alone {
            read_idle(&mut p, &s.keys, &events[idle[n]].0, kind.refresh);
        }
        for group in together.chunks(PROBE_GROUP) {
            let mut c = redis::cmd("EXISTS");
            for &n in group {
                idle_keys(&mut c, &s.keys, &events[idle[n]].0, kind.refresh);
            }
            p.add_command(c);
        }
        // Events without figures, or every idle one on a complete pass: grouped
        // the same way, one `EXISTS` of every key with work in it and one of the
        // configs per group (a complete pass over 10,000 idle events made 20,000
        // commands, as many as its 29 plain passes together).
        //
        // A group with an event seen for the first time (this replica's first pass,
        // an event just gained) asks its lanes too: an event whose line is empty is
        // then not peeked at (`Worker::peek_heads`), a script call per event saved
        // where most events hold slots and nobody waits.
        let fresh_group = if grouped { PROBE_GROUP } else { 1 };
        let first_sight: Vec<bool> = fresh
            .chunks(fresh_group)
            .map(|group| {
                group
                    .iter()
                    .any(|&i| !self.hints.contains_key(&events[i].0))
            })
            .collect();
        for (group, &first) in fresh.chunks(fresh_group).zip(&first_sight) {
            let (mut work, mut config) = (redis::cmd("EXISTS"), redis::cmd("EXISTS"));
            let mut lanes = first.then(|| redis::cmd("EXISTS"));
            for &i in group {
                work_keys(&mut work, &s.keys, &events[i].0);
                config.arg(s.keys.config(&events[i].0));
                if let Some(lanes) = lanes.as_mut() {
                    idle_keys(lanes, &s.keys, &events[i].0, false);
                }
            }
            p.add_command(work);
            p.add_command(config);
            if let Some(lanes) = lanes {
                p.add_command(lanes);
            }
        }
        // Nothing left to ask (all asked ahead, nobody found): no round trip.
        let lens: Vec<redis::RedisResult<u64>> =
            if alone.is_empty() && together.is_empty() && fresh.is_empty() {
                Vec::new()
            } else {
                retry::query_retrying(&self.conn, &p, s.retry.attempts, self.backoff())
                    .await
                    .map_err(|e| EventError::Admit(ScriptError::Redis(e)))?
            };
        let ok = |j: usize| match lens.get(j) {
            Some(Ok(n)) => Some(*n),
            _ => None,
        };
        // What was read of each idle event (None: could not be read).
        let mut idle_reads: Vec<Vec<Option<u64>>> = vec![vec![None; per]; idle.len()];
        for &n in &answered {
            idle_reads[n] = vec![Some(0); per];
        }
        let mut j = 0;
        for &n in &alone {
            for read in idle_reads[n].iter_mut() {
                *read = ok(j);
                j += 1;
            }
        }
        let mut again = Vec::new();
        for group in together.chunks(PROBE_GROUP) {
            match ok(j) {
                Some(0) => group
                    .iter()
                    .for_each(|&n| idle_reads[n] = vec![Some(0); per]),
                Some(_) => again.extend_from_slice(group),
                None => {}
            }
            j += 1;
        }
        // Per fresh event: whether any key holds work, whether it has a config
        // (None: unread, which counts as work to do and as configured).
        let mut fresh_work: Vec<Option<u64>> = vec![None; fresh.len()];
        let mut fresh_config: Vec<Option<u64>> = vec![None; fresh.len()];
        let (mut work_again, mut config_again) = (Vec::new(), Vec::new());
        let mut lanes_again = Vec::new();
        let fresh_at: Vec<usize> = (0..fresh.len()).collect();
        for (group, &first) in fresh_at.chunks(fresh_group).zip(&first_sight) {
            for (read, into, more) in [
                (ok(j), &mut fresh_work, &mut work_again),
                (ok(j + 1), &mut fresh_config, &mut config_again),
            ] {
                match read {
                    // Nothing in any: the answer for each.
                    Some(0) => group.iter().for_each(|&n| into[n] = Some(0)),
                    // A group of one answers for its event.
                    Some(count) if group.len() == 1 => into[group[0]] = Some(count),
                    Some(_) => more.extend_from_slice(group),
                    None => {}
                }
            }
            j += 2;
            if first {
                // Nobody waits in any: none of them is peeked at (their admit calls
                // still run, and a waiter who joins meanwhile gets a second call).
                // Someone in a group of several: each is asked on its own.
                match ok(j) {
                    Some(0) => group.iter().for_each(|&n| plans[fresh[n]].peek = false),
                    Some(_) if group.len() > 1 => lanes_again.extend_from_slice(group),
                    _ => {}
                }
                j += 1;
            }
        }
        if !again.is_empty()
            || !work_again.is_empty()
            || !config_again.is_empty()
            || !lanes_again.is_empty()
        {
            let mut p = redis::pipe();
            p.ignore_errors();
            for &n in &again {
                read_idle(&mut p, &s.keys, &events[idle[n]].0, kind.refresh);
            }
            for &n in &work_again {
                let mut c = redis::cmd("EXISTS");
                work_keys(&mut c, &s.keys, &events[fresh[n]].0);
                p.add_command(c);
            }
            for &n in &config_again {
                p.cmd("EXISTS").arg(s.keys.config(&events[fresh[n]].0));
            }
            for &n in &lanes_again {
                let mut c = redis::cmd("EXISTS");
                idle_keys(&mut c, &s.keys, &events[fresh[n]].0, false);
                p.add_command(c);
            }
            match retry::query_retrying::<Vec<redis::RedisResult<u64>>, _>(
                &self.conn,
                &p,
                s.retry.attempts,
                self.backoff(),
            )
            .await
            {
                Ok(more) => {
                    let mut more = more.into_iter();
                    for &n in &again {
                        for read in idle_reads[n].iter_mut() {
                            *read = more.next().and_then(Result::ok);
                        }
                    }
                    for &n in &work_again {
                        fresh_work[n] = more.next().and_then(Result::ok);
                    }
                    for &n in &config_again {
                        fresh_config[n] = more.next().and_then(Result::ok);
                    }
                    for &n in &lanes_again {
                        if more.next().and_then(Result::ok) == Some(0) {
                            plans[fresh[n]].peek = false;
                        }
                    }
                }
                // Unread: these events' admit calls run and report for themselves.
                Err(e) => tracing::debug!(error = %e, "idle events' second read failed"),
            }
        }
        let (capacity, batch) = (
            self.settings.admission.max_concurrent,
            self.settings.admission.batch_size,
        );
        for (n, &i) in fresh.iter().enumerate() {
            // Unreadable counts as work to do: the scripts run and report.
            if fresh_work[n] != Some(0) {
                continue;
            }
            let event = &events[i].0;
            let known = self.hints.get(event).copied();
            let configured = fresh_config[n] != Some(0);
            plans[i] = Plan {
                reap: false,
                claim: false,
                // A complete pass still reads the config of an event that has one:
                // an invalid value is reported, a stock of 0 announced, the
                // capacity figures brought up to date, whether or not anyone waits.
                admit: kind.full && configured,
                valve: known.is_some_and(|h| h.adaptive),
                peek: false,
            };
            // Known empty now: the next passes check only its lanes, as for any
            // idle event (the first admit call brings the real figures).
            let empty = Hint {
                in_use: 0,
                deadlines: 0,
                next_deadline_ms: None,
                outbox_depth: 0,
                waiting: 0,
                capacity,
                batch,
                rate: None,
                adaptive: false,
            };
            // Without a config the defaults are its figures; with one they come
            // with its next admit call (this one on a complete pass, else the next
            // complete pass or its first waiter).
            if !configured {
                self.stats
                    .observe_empty(event, capacity, batch, clock::now_ms());
            } else if !plans[i].admit {
                self.stats.refresh_event(event, 0, 0, 0);
            }
            self.hints.insert(
                event.clone(),
                known.map_or(empty, |h| Hint {
                    capacity: h.capacity,
                    batch: h.batch,
                    rate: h.rate,
                    adaptive: h.adaptive,
                    ..empty
                }),
            );
        }
        for (n, &i) in idle.iter().enumerate() {
            let read = idle_reads.get(n).map(Vec::as_slice).unwrap_or_default();
            let at = |k: usize| read.get(k).copied().flatten();
            if !kind.refresh {
                plans[i].admit = at(0).is_none_or(|lanes| lanes > 0);
                plans[i].peek = plans[i].admit;
                continue;
            }
            // A refresh pass read four lengths per event, in this order.
            let (q, p) = (at(0), at(1));
            plans[i].admit = q.unwrap_or(1) + p.unwrap_or(1) > 0;
            plans[i].peek = plans[i].admit;
            let (in_use, outbox) = (at(2), at(3));
            if let (Some(q), Some(p), Some(in_use), Some(outbox)) = (q, p, in_use, outbox) {
                self.stats
                    .refresh_event(&events[i].0, q + p, in_use, outbox);
                if let Some(h) = self.hints.get_mut(&events[i].0) {
                    h.in_use = in_use;
                    h.outbox_depth = outbox;
                }
            }
        }
        Ok(())
    }

    /// Apply one event's replies: note what the reaper took back, read the claimed
    /// entries, take in the admit reply. Returns what goes to delivery, and whether
    /// a retired event has nothing left.
    async fn apply(&mut self, event: &str, served: bool, r: Replies, in_flight: u64) -> Applied {
        let mut applied = Applied::default();
        if let Some(step) = r.valve {
            match step.map_err(ScriptError::Redis).and_then(valve::parse) {
                Ok(step) => self.note_valve(event, &step),
                Err(e) => self.event_failed(&EventError::Admit(e)),
            }
        }
        if let Some(reaped) = r.reap {
            match reaped.map_err(ScriptError::Redis).and_then(reap::parse) {
                Ok(reaped) => self.note_reaped(event, &reaped),
                Err(e) => self.event_failed(&EventError::Reap(e)),
            }
        }
        if let Some(claimed) = r.claim {
            match claimed
                .map_err(ScriptError::Redis)
                .and_then(claim_outbox::parse)
            {
                Ok(claimed) => {
                    if claimed.renewed > 0 {
                        Stats::add(&self.stats.renewed, claimed.renewed);
                        crate::log_limited!(
                            WARN,
                            "admissions whose window ran out before Kafka acknowledged them were renewed (new deadline and token)",
                            renewed = claimed.renewed
                        );
                    }
                    if claimed.dropped > 0 {
                        Stats::add(&self.stats.outbox_dropped, claimed.dropped);
                        crate::log_limited!(
                            WARN,
                            "outbox entries dropped: their session no longer holds the slot",
                            dropped = claimed.dropped
                        );
                    }
                    let claimed = self.readable(event, claimed.entries).await;
                    if !claimed.is_empty() {
                        tracing::info!(
                            count = claimed.len(),
                            "Publishing pending admissions from the outbox"
                        );
                        Stats::add(&self.stats.outbox_claimed, claimed.len() as u64);
                    }
                    applied
                        .entries
                        .extend(claimed.into_iter().map(|e| (e, None)));
                }
                Err(e) => self.event_failed(&EventError::Claim(e)),
            }
        }
        if let Some(admitted) = r.admit {
            match admitted.map_err(ScriptError::Redis).and_then(admit::parse) {
                Ok(mut outcome) => {
                    self.note_time(&outcome);
                    self.wait.observe(event, &outcome);
                    self.note_hint(event, &outcome);
                    applied.drained = !served
                        && outcome.in_use == 0
                        && outcome.deadlines == 0
                        && outcome.outbox_depth == 0;
                    let admitted = std::mem::take(&mut outcome.entries);
                    let admitted = self
                        .note_admitted(event, &outcome, admitted, in_flight)
                        .await;
                    let admitted = match r.signed {
                        Some(set) => set.pair(admitted),
                        None => admitted.into_iter().map(|e| (e, None)).collect(),
                    };
                    applied.again = served && wants_again(&outcome);
                    self.note_ahead(event, &outcome, &admitted);
                    applied.entries.extend(admitted);
                }
                Err(e) => self.event_failed(&EventError::Admit(e)),
            }
        }
        applied
    }

    /// Wait for the previous pass's delivery; its failure leaves its entries in the
    /// outbox (due again when their lease runs out), so it is only counted here.
    async fn await_pending(&mut self) {
        if let Some(h) = self.pending.take() {
            match h.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.stats.error(ErrorKind::Redis);
                    crate::log_limited!(ERROR, "delivery failed; the entries stay in the outbox", error = %crate::base::error_chain::chain(&e));
                }
                Err(e) => {
                    self.stats.error(ErrorKind::Delivery);
                    crate::log_limited!(ERROR, "delivery task failed; the entries stay in the outbox", error = %crate::base::error_chain::chain(&e));
                }
            }
        }
    }

    fn event_failed(&self, e: &EventError) {
        self.stats.error(ErrorKind::Event);
        crate::log_limited!(ERROR, "processing event failed, skipping it this cycle", error = %crate::base::error_chain::chain(e));
    }

    /// Write the wait figures that are due (every few seconds per event) to the
    /// events' stats hashes, in a task of its own: the pass does not wait for it,
    /// and a failed write is only counted (the next one comes a few seconds later).
    fn write_wait_figures(&mut self) {
        let now = self.time.now_ms();
        let due = self.wait.due(now);
        if due.is_empty() {
            return;
        }
        for (event, figures) in &due {
            self.stats.observe_wait(event, figures);
        }
        let p = wait_stats::pipeline(&self.settings.keys, &due, now);
        let mut conn = self.conn.clone();
        let stats = self.stats.clone();
        tokio::spawn(async move {
            let r: redis::RedisResult<()> = p.query_async(&mut conn).await;
            if let Err(e) = r {
                stats.error(ErrorKind::Redis);
                crate::log_limited!(WARN, "could not write the wait figures; next try in a few seconds", error = %crate::base::error_chain::chain(&e));
            }
        });
    }

    /// Log a change of the valve's effective capacity, and show where it stands.
    fn note_valve(&self, event: &str, step: &ValveStep) {
        if step.changed {
            tracing::warn!(
                effective_capacity = step.cap,
                reason = %step.reason,
                failed_per_mille = ?step.failed_per_mille,
                mean_checkout_ms = ?step.mean_checkout_ms,
                baseline_ms = ?step.baseline_ms,
                "checkout valve moved"
            );
        }
        self.stats.observe_valve(event, step);
    }

    fn note_reaped(&self, event: &str, reaped: &Reaped) {
        if reaped.expired > 0 {
            self.stats
                .event_expired(event, reaped.expired - reaped.no_shows.min(reaped.expired));
            tracing::info!(expired = reaped.expired, "Expired checkout slots reclaimed");
        }
        if reaped.no_shows > 0 {
            self.stats.event_no_show(event, reaped.no_shows);
            tracing::info!(
                no_shows = reaped.no_shows,
                "Slots of admissions never claimed in their claim window reclaimed"
            );
        }
        if reaped.adopted > 0 {
            Stats::add(&self.stats.adopted, reaped.adopted);
            tracing::warn!(
                adopted = reaped.adopted,
                "sessions in processing without a deadline were given one"
            );
        }
        if reaped.orphans > 0 {
            tracing::warn!(
                orphans = reaped.orphans,
                "unpublished admissions without an outbox entry (the outbox was changed by hand) got a real deadline"
            );
        }
        self.note_repaired(&reaped.repaired);
    }

    fn note_repaired(&self, keys: &[String]) {
        for key in keys {
            Stats::add(&self.stats.repaired, 1);
            tracing::error!(key = %key, "worker-owned key held the wrong type or value; moved aside to <key>:corrupt or reset");
        }
    }

    /// Parse outbox entries; unreadable ones are moved aside (and counted) by
    /// `quarantine.lua`, which also gives their slots back. If that fails, they stay
    /// where they are (claimed again after their lease) and the readable ones go on:
    /// a poisoned entry costs only itself.
    async fn readable(&mut self, event: &str, raws: Vec<Vec<u8>>) -> Vec<OutboxEntry> {
        let (good, bad) = outbox::parse_all(raws);
        if bad.is_empty() {
            return good;
        }
        let keys = &self.settings.keys;
        Stats::add(&self.stats.outbox_invalid, bad.len() as u64);
        for raw in &bad {
            let why = OutboxEntry::parse(raw.clone()).err();
            tracing::error!(key = %keys.outbox_invalid(event), reason = ?why, "unreadable outbox entry moved aside; its slot comes back");
        }
        let call = quarantine::call(&self.scripts.quarantine, keys, event, &bad);
        let moved = scripts::run_batch(&mut self.conn, std::slice::from_ref(&call)).await;
        let result = match moved {
            Ok(mut r) => r
                .pop()
                .ok_or_else(|| ScriptError::Reply {
                    script: "quarantine",
                    detail: "no reply".into(),
                })
                .and_then(|r| r.map_err(ScriptError::Redis))
                .and_then(quarantine::parse),
            Err(e) => Err(ScriptError::Redis(e)),
        };
        match result {
            Ok(q) => {
                self.note_repaired(&q.repaired);
                if (q.moved as usize) < bad.len() {
                    crate::log_limited!(
                        WARN,
                        "some unreadable outbox entries could not be moved aside (gone already, or not UTF-8)",
                        moved = q.moved,
                        unreadable = bad.len()
                    );
                }
            }
            Err(e) => {
                self.stats.error(ErrorKind::Redis);
                crate::log_limited!(ERROR, "could not move unreadable outbox entries aside; they are claimed again after their lease", error = %crate::base::error_chain::chain(&e));
            }
        }
        good
    }

    /// Count, log and observe one admit outcome; returns its outbox entries.
    async fn note_admitted(
        &mut self,
        event: &str,
        outcome: &AdmitOutcome,
        entries: Vec<Vec<u8>>,
        in_flight: u64,
    ) -> Vec<OutboxEntry> {
        // A sell-out this call recorded is this worker's to announce, whichever path
        // admitted (a pass, or a refill: how stock usually reaches 0).
        if let Some((at, queue_length)) = outcome.announce {
            self.announcer.spawn(event.to_owned(), at, queue_length);
        }
        self.report_invalid_config(event, &outcome.invalid_config);
        self.report_hold(event, outcome);
        self.note_repaired(&outcome.repaired);
        tracing::debug!(
            batch_size = outcome.batch,
            in_use = outcome.in_use,
            capacity = outcome.capacity,
            "Processing queue batch"
        );
        self.stats
            .event_admitted(event, outcome.admitted, outcome.skipped);
        if outcome.left_queue > 0 {
            self.stats.event_left_queue(event, outcome.left_queue);
            tracing::info!(
                left_queue = outcome.left_queue,
                "Skipped waiters who left the queue (idle past the timeout)"
            );
        }
        if outcome.bad_last_seen > 0 {
            crate::log_limited!(
                WARN,
                "session last_seen is not plain digits (ms); read as absent and admitted",
                count = outcome.bad_last_seen
            );
        }
        let held = outcome.held.reason().or(outcome.paused.then_some("paused"));
        // What was unacknowledged before this call admitted, less what this worker
        // has in flight: what waits on Kafka or on another replica.
        let before = outcome.outbox_depth.saturating_sub(outcome.admitted);
        self.stats.observe_event(
            event,
            EventSnapshot {
                queue_length: outcome.queue_length,
                slots_in_use: outcome.in_use,
                capacity: outcome.capacity,
                batch_size: outcome.batch,
                paused: outcome.paused,
                outbox_depth: outcome.outbox_depth,
                admitted_total: 0,
                updated_ms: outcome.now_ms,
                held,
                unpublished_age_ms: outcome.unpublished_age_ms,
                rate_per_minute: outcome.rate_per_minute,
                outflow_per_minute: outcome.outflow_per_minute,
                outbox_in_flight: in_flight,
                outbox_waiting: before.saturating_sub(in_flight),
                wait: None,
                stock: outcome.stock,
                max_concurrent: outcome.max_capacity,
                valve: None,
            },
        );
        if outcome.skipped > 0 {
            crate::log_limited!(
                WARN,
                "dropped queue members that cannot be admitted (missing session, not queued, no user, other event)",
                skipped = outcome.skipped
            );
        }
        if outcome.admitted == 0 {
            return Vec::new();
        }
        tracing::info!(event_id = %event, user_count = outcome.admitted, "Admitting users to checkout");
        let entries = self.readable(event, entries).await;
        tracing::info!(
            attempted = outcome.admitted + outcome.skipped,
            admitted = outcome.admitted,
            "Batch processing completed"
        );
        entries
    }

    /// Log a change of an event's hold once (held, and lifted).
    fn report_hold(&mut self, event: &str, outcome: &AdmitOutcome) {
        let before = self.held_seen.get(event).copied().unwrap_or_default();
        if before == outcome.held {
            return;
        }
        match outcome.held {
            Hold::PublishingStalled => tracing::warn!(
                unpublished_age_ms = outcome.unpublished_age_ms.unwrap_or(0),
                max_unpublished_age = ?self.settings.admission.max_unpublished_age,
                "admission held: QUEUE_READY publishing is stalled (Kafka not acknowledging); it resumes by itself"
            ),
            Hold::Retired => {
                tracing::info!(
                    "event no longer served: admitting nobody, draining its slots and outbox"
                )
            }
            Hold::SoldOut => {
                tracing::warn!("event sold out (stock 0): admitting nobody until stock is raised")
            }
            Hold::No if before == Hold::PublishingStalled => {
                tracing::info!("admission resumed: publishing caught up")
            }
            Hold::No if before == Hold::SoldOut => {
                tracing::info!("admission resumed: stock was raised")
            }
            Hold::No => {}
        }
        self.held_seen.insert(event.to_owned(), outcome.held);
    }

    /// Admit into the slots completions just freed, for the served events they woke.
    /// A completion of an event that is not served releases its slot (the consumer
    /// did that) but admits nobody.
    pub(crate) async fn refill_pass(&mut self) -> bool {
        if self.admission_held() {
            // The wakes are dropped: the next pass after the hold admits anyway.
            drop(self.refill.take());
            return true;
        }
        for (event, woken) in self.refill.take() {
            if !self.served.contains(&event) {
                continue;
            }
            Stats::add(&self.stats.refills, 1);
            let span = tracing::info_span!("event", event_id = %event);
            match self.admit_event(&event).instrument(span).await {
                Ok(o) if o.admitted > 0 => self.stats.observe_refill(woken.elapsed().as_secs_f64()),
                Ok(_) => {}
                Err(e) => {
                    self.stats.error(ErrorKind::Event);
                    crate::log_limited!(ERROR, "refill failed; the next cycle retries", event_id = %event, error = %crate::base::error_chain::chain(&e));
                    if e.is_connection() {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn backoff(&self) -> Backoff {
        self.settings.retry.backoff
    }

    /// Whether admission is held because a new Redis master was seen.
    fn admission_held(&self) -> bool {
        self.hold_until.is_some_and(|t| Instant::now() < t)
    }

    /// Whether this pass reads the master's run id: about once a second; never on
    /// a cluster (many servers, no one run id). When it changed (another server
    /// became the master, or it restarted), admission is held for
    /// `--failover-hold` ([`Worker::note_master`]): writes the old master took but
    /// never replicated cannot be compounded by new ones while the dust settles.
    /// Ends a hold whose time is up.
    fn master_check_due(&mut self) -> bool {
        if self
            .master
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        if self.hold_until.is_some() && !self.admission_held() {
            self.hold_until = None;
            self.stats.set_failover_hold(0);
            tracing::info!("admission resumed after the failover hold");
        }
        !matches!(self.conn, RedisConn::Cluster(_))
    }

    /// Take in the reply of `INFO server` (see [`Worker::master_check_due`]).
    fn note_master(&mut self, info: redis::RedisResult<String>) {
        let id = match info.map(|i| store::run_id_of(&i)) {
            Ok(Some(id)) => id,
            Ok(None) => return,
            Err(e) => {
                crate::log_limited!(WARN, "could not read the Redis master's run id", error = %crate::base::error_chain::chain(&e));
                return;
            }
        };
        let changed = self.master.as_ref().is_some_and(|(old, _)| *old != id);
        self.master = Some((id, Instant::now()));
        if changed {
            Stats::add(&self.stats.masters_seen, 1);
            let hold = self.settings.redis.failover_hold;
            if hold.is_zero() {
                tracing::warn!("new Redis master (run id changed): a failover or a restart");
            } else {
                tracing::warn!(hold = ?hold, "new Redis master (run id changed: a failover or a restart): holding admission");
                self.hold_until = Some(Instant::now() + hold);
                let until = clock::now_ms()
                    .saturating_add(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX));
                self.stats.set_failover_hold(until);
            }
        }
    }

    /// With `--replica-acks N`, wait until N replicas hold this connection's writes
    /// (every admission and claim so far); whether they do. Short of them (or on an
    /// error) nothing of this round is published: the outbox keeps it.
    async fn replicated(&mut self) -> bool {
        let n = self.settings.redis.replica_acks;
        if n == 0 {
            return true;
        }
        let mut conn = self.conn.clone();
        match store::wait_replicas(&mut conn, n, self.settings.redis.replica_ack_timeout).await {
            Ok(got) if got >= n => true,
            Ok(got) => {
                Stats::add(&self.stats.replica_waits_short, 1);
                crate::log_limited!(
                    WARN,
                    "admissions not yet held by enough replicas: not published yet (the outbox keeps them and retries)",
                    replicas = got,
                    wanted = n
                );
                false
            }
            Err(e) => {
                Stats::add(&self.stats.replica_waits_short, 1);
                self.stats.error(ErrorKind::Redis);
                crate::log_limited!(WARN, "WAIT for replicas failed: not published yet (the outbox keeps them and retries)", error = %crate::base::error_chain::chain(&e));
                false
            }
        }
    }

    /// Admit the event's next batch and publish it: one signed admit call, and a
    /// second at once if the first stopped at a waiter it had no token for.
    pub async fn admit_event(&mut self, event: &str) -> Result<AdmitOutcome, EventError> {
        let in_flight = self.stats.in_flight(event);
        let mut entries = Vec::new();
        let mut outcome = self.admit_signed(event, in_flight, &mut entries).await?;
        let answered = Instant::now();
        if wants_again(&outcome) {
            let first = outcome;
            outcome = self.admit_signed(event, in_flight, &mut entries).await?;
            outcome.admitted += first.admitted;
            outcome.skipped += first.skipped;
            outcome.left_queue += first.left_queue;
            let mut all = first.entries;
            all.append(&mut outcome.entries);
            outcome.entries = all;
        }
        // As in a pass: handed to a task at once, so a pass cut at the max processing
        // time cannot leave entries counted in flight for ever.
        self.await_pending().await;
        if !entries.is_empty() && self.replicated().await {
            self.stats.in_flight_add(event, entries.len() as i64);
            let delivery = self.delivery.clone();
            let batch = vec![(event.to_owned(), entries)];
            self.pending = Some(tokio::spawn(async move {
                delivery.dispatch_many(batch, answered).await
            }));
        }
        Ok(outcome)
    }

    /// One signed admit call for `event` (retried while Redis fails transiently);
    /// its entries, each with its token, are added to `entries`.
    async fn admit_signed(
        &mut self,
        event: &str,
        in_flight: u64,
        entries: &mut Vec<Outgoing>,
    ) -> Result<AdmitOutcome, EventError> {
        // Each try signs afresh: a retry after a backoff must not carry an instant
        // that has grown stale meanwhile.
        let mut attempt = 0;
        let (set, reply) = loop {
            attempt += 1;
            let set = self.signs_ahead().then(|| {
                let budget = self.sign_budget(event, true);
                self.sign_ahead(event, budget, Instant::now() + SIGNING_PER_ROUND)
            });
            let s = &self.settings;
            let args = s.admit_args();
            let call = match &set {
                Some(set) => {
                    admit::call_signed(&self.scripts.admit, &s.keys, event, &args, &set.signed)
                }
                None => admit::call(&self.scripts.admit, &s.keys, event, &args, true),
            };
            let mut conn = self.conn.clone();
            let reply = scripts::run_batch(&mut conn, std::slice::from_ref(&call))
                .await
                .map_err(ScriptError::Redis)
                .and_then(|mut r| {
                    r.pop().ok_or_else(|| ScriptError::Reply {
                        script: "admit",
                        detail: "no reply".into(),
                    })
                })
                .and_then(|r| r.map_err(ScriptError::Redis));
            drop(call);
            match reply {
                Ok(reply) => break (set, reply),
                Err(e) if e.is_transient() && attempt < self.settings.retry.attempts => {
                    tokio::time::sleep(self.backoff().delay(attempt)).await;
                }
                Err(e) => return Err(EventError::Admit(e)),
            }
        };
        let outcome = admit::parse(reply).map_err(EventError::Admit)?;
        self.note_time(&outcome);
        self.note_hint(event, &outcome);
        let admitted = self
            .note_admitted(event, &outcome, outcome.entries.clone(), in_flight)
            .await;
        let admitted = match set {
            Some(set) => set.pair(admitted),
            None => admitted.into_iter().map(|e| (e, None)).collect(),
        };
        self.note_ahead(event, &outcome, &admitted);
        entries.extend(admitted);
        Ok(outcome)
    }

    fn report_invalid_config(&mut self, event: &str, invalid: &[String]) {
        let seen = self
            .invalid_seen
            .get(event)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if seen != invalid {
            if !invalid.is_empty() {
                tracing::warn!(fields = ?invalid, key = %self.settings.keys.config(event), "invalid per-event config values; using the defaults for them (an invalid paused pauses)");
            }
            self.invalid_seen.insert(event.to_owned(), invalid.to_vec());
        }
    }
}

/// Whether an admit call that stopped at a waiter without a token is worth a
/// second call at once: slots are free, nothing holds the event, and it named
/// waiters to sign for.
fn wants_again(o: &AdmitOutcome) -> bool {
    o.short
        && !o.prospects.is_empty()
        && o.held == Hold::No
        && !o.paused
        && o.in_use < o.capacity
        && o.rate_left != Some(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How long Redis's clock read at the start of a pass stamps what follows it
/// (the heartbeat after the pass) without a new reading.
const REDIS_CLOCK_FRESH: Duration = Duration::from_secs(10);

/// Full passes whose durations size the owner window (see `owner_period`).
const RECENT_PASSES: usize = 8;

/// `active_events` as last read in full.
#[derive(Debug)]
struct ActiveCache {
    /// Its valid members, sorted.
    members: Vec<String>,
    /// Its size then (invalid members included), compared with SCARD.
    size: u64,
    /// `active_events_version` then.
    version: Option<u64>,
}

/// How far apart this replica's beats are: its interval, or its recent passes when
/// they outlast it (the ticker then fires as soon as a pass ends). The owner window
/// follows it: sized on the interval alone, passes slower than 1.5 intervals (a
/// loaded Redis, a replica's first complete pass over many events) let its entry
/// run out between two of its own beats; the others would then pass its events
/// too, making every pass slower still, until every replica passed every event.
///
/// The longest of several recent passes, not the last one: on a loaded machine
/// pass times vary a lot, and an entry sized on a quick pass ran out during the
/// next slow one (bench --sharing, 16 replicas on 2 cores: a hundred view changes
/// in 10 s with the last two passes, each costing double work).
fn owner_period(interval: Duration, recent_passes: [Duration; RECENT_PASSES]) -> Duration {
    recent_passes.into_iter().fold(interval, Duration::max)
}

/// Why the worker could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// Redis could not be reached (a refused TLS certificate, a wrong password) or
    /// refused the scripts; the endpoint as shown in logs (passwords redacted).
    #[error("redis at {0}")]
    Redis(String, #[source] ScriptError),
    /// The producer or the completion consumer could not be created.
    #[error("kafka")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// The HTTP endpoint could not listen on its address.
    #[error("http endpoint on {0}")]
    Http(std::net::SocketAddr, #[source] std::io::Error),
}
