//! `waitroom-worker bench`: what the worker costs, measured in one run beside what
//! users would otherwise run. See BENCHMARKS.md for the figures and the targets.
//!
//! Every section uses its own key prefix on the same Redis, so sections do not see
//! each other's events. Redis CPU is the delta of `used_cpu_user + used_cpu_sys`
//! from `INFO cpu` (commandstats would count commands called from scripts twice).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use serde::Serialize;
use thiserror::Error;

mod minimal;

pub use minimal::{AdmissionReport, render_admission_only, run_admission_only};

use crate::base::error_chain::chain;
use crate::base::shutdown;
use crate::config::{Config, ConfigBuilder};
use crate::engine::worker::Worker;
use crate::model::clock;
use crate::model::keys::{KeyLayout, Keys};
use crate::ops::stats::Stats;
use crate::redis::scripts::Scripts;
use crate::redis::scripts::admit::{self, AdmitArgs};
use crate::tools::embedded_kafka::EmbeddedKafka;
use crate::tools::enqueue;
use crate::tools::redis_server::{PrivateRedis, ServerError};

mod cluster;
pub use cluster::{
    ClusterPass, ClusterReport, render_cluster_line, render_cluster_only, run_cluster_only,
};

/// Replicas sharing the events (issue 14): `bench --sharing`.
pub mod replicas;

/// What to measure and against what. [`Default`] is the full run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Use this Redis instead of a private redis-server (its data is left alone:
    /// every key is under a `bench-*` prefix).
    pub redis_url: Option<String>,
    /// Use these Kafka brokers instead of the embedded one.
    pub kafka_brokers: Option<String>,
    /// Users per throughput run.
    pub users: usize,
    /// Queue length of the "big queue" cycle-cost run.
    pub big_queue: usize,
    /// Most events of the full-pass run (also run with 1 and 1000).
    pub events: usize,
    /// Replicas of the replica section (on the largest event count).
    pub replicas: usize,
    /// Refill latency samples.
    pub samples: usize,
    /// A tiny run (CI smoke test): few users, small queues, few samples.
    pub quick: bool,
    /// The report is printed as JSON: no progress lines on stderr.
    pub json: bool,
    /// Give the private redis-server a replica (the cost of replication itself).
    pub with_replica: bool,
    /// Run the workers with `--replica-acks N` (implies a replica; with
    /// [`BenchOptions::redis_url`] the server must have N replicas of its own).
    pub replica_acks: u64,
    /// `--only cluster`: only the full pass on one server and on the cluster
    /// ([`run_cluster_only`]).
    pub only_cluster: bool,
    /// `--only admission`: only sections 1 to 3 ([`run_admission_only`]).
    pub only_admission: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            redis_url: None,
            kafka_brokers: None,
            users: 20_000,
            big_queue: 1_000_000,
            events: 10_000,
            replicas: 8,
            samples: 200,
            quick: false,
            json: false,
            with_replica: false,
            replica_acks: 0,
            only_cluster: false,
            only_admission: false,
        }
    }
}

/// Why the bench stopped.
#[derive(Debug, Error)]
pub enum BenchError {
    /// A local server did not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A Redis command failed.
    #[error("redis")]
    Redis(#[from] redis::RedisError),
    /// A Kafka client failed.
    #[error("kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Anything else, said in words.
    #[error("{0}")]
    Other(String),
}

/// One throughput run.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Batch size.
    pub batch: u64,
    /// Users admitted.
    pub users: usize,
    /// Admissions per second.
    pub users_per_sec: f64,
    /// Redis CPU per admission, microseconds.
    pub redis_cpu_us_per_admission: f64,
}

/// Every figure of a run (BENCHMARKS.md explains them).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The full path (admit, sign, patch, publish, acknowledge), per batch size.
    pub end_to_end: Vec<Throughput>,
    /// The admit script alone (the ceiling), per batch size.
    pub admit_script_only: Vec<Throughput>,
    /// A naive per-user flow, for comparison.
    pub naive_per_user: Throughput,
    /// Issue 14's minimal reference (one script call per batch: pop, mark, list;
    /// no validation, token, outbox or Kafka), per batch size.
    pub minimal_reference: Vec<Throughput>,
    /// end-to-end / admit-only, per batch.
    pub ratio_to_ceiling: Vec<(u64, f64)>,
    /// end-to-end at batch 1000 / naive.
    pub ratio_to_naive: f64,
    /// Completion to refilling admission, median, ms.
    pub refill_p50_ms: f64,
    /// The same, 99th percentile.
    pub refill_p99_ms: f64,
    /// Queue length of the short-queue cycle run.
    pub cycle_small_queue: usize,
    /// Queue length of the long-queue cycle run.
    pub cycle_big_queue: usize,
    /// Median cycle with the short queue, ms.
    pub cycle_small_queue_ms: f64,
    /// Median cycle with the long queue, ms.
    pub cycle_big_queue_ms: f64,
    /// Long-queue cycle / short-queue cycle.
    pub cycle_cost_ratio: f64,
    /// (events, ms of the first pass (admitting), ms of a steady pass, ms of Redis
    /// CPU in the steady pass).
    pub full_pass: Vec<(usize, f64, f64, f64)>,
    /// The same passes on a private three-master Redis Cluster (cluster layout),
    /// with the pipelines of the steady pass.
    pub cluster_pass: Vec<ClusterPass>,
    /// Replicas on the largest event count: (replicas, events, wall ms of a steady
    /// round of all of them at once, Redis CPU ms of that round, Redis CPU ms of one
    /// replica's complete pass, which each replica runs every 30th pass).
    pub replicas: (usize, usize, f64, f64, f64),
    /// Peak resident memory after the single-server sections, MB.
    pub peak_rss_mb: f64,
    /// The same after the cluster section (before the replica section).
    pub peak_rss_after_cluster_mb: f64,
    /// Whether the private server had a replica.
    pub with_replica: bool,
    /// The workers' `--replica-acks`.
    pub replica_acks: u64,
}

struct Env {
    redis_url: String,
    brokers: String,
    conn: MultiplexedConnection,
    replica_acks: u64,
}

/// The servers a run starts (for what was not given): they stop when dropped.
struct Servers {
    redis: Option<PrivateRedis>,
    _kafka: Option<EmbeddedKafka>,
}

/// The topics every run's embedded Kafka has.
const TOPICS: [(&str, i32); 2] = [("QUEUE_READY", 1), ("CHECKOUT_COMPLETED", 1)];

/// Redis and Kafka for a run: those given, else a private redis-server and the
/// embedded Kafka with `topics`; no replica.
async fn bench_env(
    redis_url: Option<&str>,
    kafka_brokers: Option<&str>,
    topics: &[(&str, i32)],
) -> Result<(Env, Servers), BenchError> {
    let private_redis = match redis_url {
        Some(_) => None,
        None => Some(PrivateRedis::start()?),
    };
    let embedded = match kafka_brokers {
        Some(_) => None,
        None => Some(EmbeddedKafka::start(topics)?),
    };
    let redis_url = redis_url
        .map(str::to_owned)
        .or_else(|| private_redis.as_ref().map(PrivateRedis::url))
        .unwrap_or_default();
    let brokers = kafka_brokers
        .map(str::to_owned)
        .or_else(|| embedded.as_ref().map(|k| k.bootstrap.clone()))
        .unwrap_or_default();
    let conn = redis::Client::open(redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    Ok((
        Env {
            redis_url,
            brokers,
            conn,
            replica_acks: 0,
        },
        Servers {
            redis: private_redis,
            _kafka: embedded,
        },
    ))
}

/// The settings every section starts from: this run's Redis and Kafka, its own
/// key prefix and consumer group, no HTTP endpoint.
fn settings(env: &Env, prefix: &str) -> ConfigBuilder {
    Config::builder()
        .redis_url(&env.redis_url)
        .kafka_brokers(&env.brokers)
        .key_prefix(prefix)
        .jwt_secret("bench-secret-0123456789abcdef0123456789abcdef")
        .http_addr(None)
        .consumer_group(prefix)
        .publish_timeout(Duration::from_secs(5))
        .outbox_lease(Duration::from_secs(30))
        .replica_acks(env.replica_acks)
}

async fn redis_cpu(conn: &mut MultiplexedConnection) -> Result<f64, BenchError> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(field("used_cpu_user:") + field("used_cpu_sys:"))
}

async fn zcard(conn: &mut MultiplexedConnection, key: &str) -> Result<u64, BenchError> {
    Ok(redis::cmd("ZCARD").arg(key).query_async(conn).await?)
}

async fn start_worker(b: ConfigBuilder) -> Result<Worker, BenchError> {
    let s = b
        .build()
        .map_err(|e| BenchError::Other(chain(&e).to_string()))?;
    let (_t, mut l) = shutdown::channel();
    Worker::start(s, &mut l)
        .await
        .map_err(|e| BenchError::Other(chain(&e).to_string()))?
        .ok_or_else(|| BenchError::Other("worker stopped".into()))
}

/// The event every single-event section uses (each under its own prefix).
const EVENT: &str = "sale";

/// A fresh event under `prefix` with `users` queued as the API would.
async fn seed(env: &mut Env, prefix: &str, users: usize) -> Result<Keys, BenchError> {
    let keys = Keys::new(prefix, KeyLayout::Default);
    enqueue::enqueue(
        &mut env.conn,
        &keys,
        EVENT,
        users,
        Duration::from_secs(3600),
    )
    .await?;
    Ok(keys)
}

/// Delete every key under `prefix` (the keys a section made), so each section
/// starts on the same keyspace: a section left behind grows the main dictionary,
/// and a later section that crosses a power of two pays for its rehash.
async fn clear(env: &mut Env, prefix: &str) -> Result<(), BenchError> {
    let pattern = format!("{prefix}:*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut env.conn)
            .await?;
        if !keys.is_empty() {
            let _: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut env.conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Users per second and Redis CPU per admission of a run.
fn throughput(batch: u64, users: usize, admitted: u64, secs: f64, cpu_secs: f64) -> Throughput {
    Throughput {
        batch,
        users,
        users_per_sec: admitted as f64 / secs,
        redis_cpu_us_per_admission: cpu_secs * 1e6 / admitted.max(1) as f64,
    }
}

/// 1. The full path on one event: cycles back to back until every user is admitted
///    and Kafka acknowledged every message (outbox empty).
async fn end_to_end(env: &mut Env, batch: u64, users: usize) -> Result<Throughput, BenchError> {
    let prefix = format!("bench-e2e-{batch}");
    let keys = seed(env, &prefix, users).await?;
    let event = EVENT;
    let mut w = start_worker(
        settings(env, &prefix)
            .event(event)
            .max_concurrent(1_000_000_000)
            .batch_size(batch),
    )
    .await?;
    let cpu0 = redis_cpu(&mut env.conn).await?;
    let t0 = Instant::now();
    while zcard(&mut env.conn, &keys.queue(event)).await? > 0 {
        if !w.cycle().await {
            return Err(BenchError::Other("a cycle failed".into()));
        }
    }
    while zcard(&mut env.conn, &keys.outbox(event)).await? > 0 {
        if t0.elapsed() > Duration::from_secs(600) {
            return Err(BenchError::Other("outbox never drained".into()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = redis_cpu(&mut env.conn).await? - cpu0;
    drop(w);
    clear(env, &prefix).await?;
    Ok(throughput(batch, users, users as u64, secs, cpu))
}

/// 2a. The admit script alone (the ceiling): no tokens, no Kafka.
async fn admit_only(env: &mut Env, batch: u64, users: usize) -> Result<Throughput, BenchError> {
    let prefix = format!("bench-ceiling-{batch}");
    let keys = seed(env, &prefix, users).await?;
    let event = EVENT;
    let scripts = Scripts::new();
    scripts
        .load_all(&mut env.conn)
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let cpu0 = redis_cpu(&mut env.conn).await?;
    let t0 = Instant::now();
    let mut admitted = 0u64;
    while (admitted as usize) < users {
        let a = admit_args(batch);
        let o = admit::admit(&scripts.admit, &mut env.conn, &keys, event, &a)
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
        if o.admitted == 0 {
            break;
        }
        admitted += o.admitted;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = redis_cpu(&mut env.conn).await? - cpu0;
    clear(env, &prefix).await?;
    Ok(throughput(batch, users, admitted, secs, cpu))
}

/// What the admit-only sections call the script with: capacity out of the way.
fn admit_args(batch: u64) -> AdmitArgs {
    AdmitArgs {
        default_max_concurrent: 1_000_000_000,
        default_batch_size: batch,
        checkout_window: Duration::from_secs(900),
        session_ttl: Duration::from_secs(7200),
        outbox_lease: Duration::from_secs(30),
        max_unpublished_age: Duration::from_secs(600),
        process_interval: Duration::from_secs(1),
        claim_window: Duration::ZERO,
        waiter_idle_timeout: Duration::ZERO,
        adaptive: false,
        min_concurrent_percent: 10,
    }
}

/// 2b. The seed's flow written without Lua: SCARD, ZPOPMIN, then per user HSET and
///     SADD as separate round trips.
async fn naive(env: &mut Env, batch: u64, users: usize) -> Result<Throughput, BenchError> {
    let prefix = "bench-naive";
    let keys = seed(env, prefix, users).await?;
    let event = EVENT;
    let cpu0 = redis_cpu(&mut env.conn).await?;
    let t0 = Instant::now();
    let mut admitted = 0usize;
    loop {
        let _in_use: u64 = redis::cmd("SCARD")
            .arg(keys.processing(event))
            .query_async(&mut env.conn)
            .await?;
        let popped: Vec<(String, f64)> = redis::cmd("ZPOPMIN")
            .arg(keys.queue(event))
            .arg(batch)
            .query_async(&mut env.conn)
            .await?;
        if popped.is_empty() {
            break;
        }
        let now = clock::now_ms();
        for (sid, _) in popped {
            let _: () = redis::cmd("HSET")
                .arg(keys.session(event, &sid))
                .arg("status")
                .arg("admitted")
                .arg("admitted_at")
                .arg(clock::rfc3339_seconds(now))
                .arg("checkout_expires_at")
                .arg(clock::rfc3339_seconds(now + 900_000))
                .query_async(&mut env.conn)
                .await?;
            let _: () = redis::cmd("SADD")
                .arg(keys.processing(event))
                .arg(&sid)
                .query_async(&mut env.conn)
                .await?;
            admitted += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = redis_cpu(&mut env.conn).await? - cpu0;
    clear(env, prefix).await?;
    Ok(throughput(batch, admitted, admitted as u64, secs, cpu))
}

/// 4. Completion produced -> next admission visible in Redis, at a 1s interval.
async fn refill(env: &mut Env, samples: usize) -> Result<(f64, f64), BenchError> {
    let prefix = "bench-refill";
    let keys = seed(env, prefix, samples + 20).await?;
    let event = EVENT;
    let w = start_worker(
        settings(env, prefix)
            .event(event)
            .process_interval(Duration::from_secs(1))
            .max_concurrent(10)
            .batch_size(10)
            .completed_topic("BENCH_COMPLETED"),
    )
    .await?;
    let stats = w.stats();
    let (trigger, listener) = shutdown::channel();
    let task = tokio::spawn(w.run(listener));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("linger.ms", "0")
        .create()?;
    let send = |payload: String| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::to("BENCH_COMPLETED")
                        .key("k")
                        .payload(&payload),
                    Duration::from_secs(5),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| BenchError::Kafka(e))
        }
    };
    // The consumer's first assignment takes seconds on the mock: wait for it.
    let t0 = Instant::now();
    while Stats::get(&stats.completions_rejected) == 0 {
        send("warm-up".into()).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(BenchError::Other(
                "completion consumer never got its partitions".into(),
            ));
        }
    }
    let key = keys.processing(event);
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let before: HashSet<String> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut env.conn)
            .await?;
        let Some(victim) = before.iter().min().cloned() else {
            break;
        };
        let t = Instant::now();
        send(serde_json::json!({"session_id": victim, "event_id": event}).to_string()).await?;
        loop {
            let now: HashSet<String> = redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut env.conn)
                .await?;
            if !now.contains(&victim) && now.len() == before.len() {
                break;
            }
            if t.elapsed() > Duration::from_secs(5) {
                return Err(BenchError::Other("no refill within 5s".into()));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    trigger.trigger();
    let _ = task.await;
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len().max(1)) - 1)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok((pct(0.5), pct(0.99)))
}

/// 5a. One admit cycle (batch 100) with a short and with a long queue: median ms.
async fn cycle_cost(env: &mut Env, queued: usize) -> Result<f64, BenchError> {
    let prefix = format!("bench-queue-{queued}");
    seed(env, &prefix, queued).await?;
    let event = EVENT;
    let mut w = start_worker(
        settings(env, &prefix)
            .event(event)
            .max_concurrent(1_000_000_000)
            .batch_size(100),
    )
    .await?;
    let mut times = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        if !w.cycle().await {
            return Err(BenchError::Other("a cycle failed".into()));
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    drop(w);
    clear(env, &prefix).await?;
    Ok(times[times.len() / 2])
}

/// 5b. A full pass over `n` events with 3 queued users each: (first pass, steady pass) ms.
async fn full_pass(env: &mut Env, n: usize) -> Result<(f64, f64, f64), BenchError> {
    let prefix = format!("bench-events-{n}");
    let keys = Keys::new(&prefix, KeyLayout::Default);
    seed_events(&mut env.conn, &keys, n).await?;
    let w = start_worker(settings(env, &prefix).batch_size(10)).await?;
    let conn = env.conn.clone();
    time_passes(w, || {
        let mut c = conn.clone();
        async move { redis_cpu(&mut c).await }
    })
    .await
}

/// `n` events of 3 queued users each, all in `active_events`.
async fn seed_events<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    n: usize,
) -> Result<(), BenchError> {
    let mut p = redis::pipe();
    let now = clock::now_ms();
    for e in 0..n {
        let event = format!("e{e}");
        for u in 0..3 {
            let sid = format!("{event}-s{u}");
            p.cmd("HSET")
                .arg(keys.session(&event, &sid))
                .arg("status")
                .arg("queued")
                .arg("user_id")
                .arg(format!("u{u}"))
                .ignore();
            p.cmd("ZADD")
                .arg(keys.queue(&event))
                .arg(now + u)
                .arg(&sid)
                .ignore();
        }
        p.cmd("SADD").arg(keys.active_events()).arg(&event).ignore();
        if e % 1000 == 999 {
            p.query_async::<()>(conn).await?;
            p = redis::pipe();
        }
    }
    if !n.is_multiple_of(1000) {
        p.query_async::<()>(conn).await?;
    }
    Ok(())
}

/// Time a worker's first pass (admitting everyone), then a steady pass (nothing to
/// admit, reap or publish) and the Redis CPU it cost, as `cpu` reads it.
async fn time_passes<F, Fut>(mut w: Worker, cpu: F) -> Result<(f64, f64, f64), BenchError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<f64, BenchError>>,
{
    let t = Instant::now();
    if !w.cycle().await {
        return Err(BenchError::Other("a cycle failed".into()));
    }
    let first = t.elapsed().as_secs_f64() * 1e3;
    // Let the acknowledgements land and one more pass see the emptied outboxes,
    // then time a pass with nothing to admit, reap or publish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if !w.cycle().await {
        return Err(BenchError::Other("a cycle failed".into()));
    }
    let cpu0 = cpu().await?;
    let t = Instant::now();
    if !w.cycle().await {
        return Err(BenchError::Other("a cycle failed".into()));
    }
    let steady = t.elapsed().as_secs_f64() * 1e3;
    let cpu = (cpu().await? - cpu0) * 1e3;
    Ok((first, steady, cpu))
}

/// 7. Replicas: `replicas` workers on the `n`-event layout of [`full_pass`], all
///    doing a steady pass at once. Returns (wall ms of the round, Redis CPU ms of the
///    round, Redis CPU ms of one full pass, the kind every 30th pass is).
async fn replicas_pass(
    env: &mut Env,
    n: usize,
    replicas: usize,
) -> Result<(f64, f64, f64), BenchError> {
    let prefix = format!("bench-events-{n}");
    let mut workers = Vec::with_capacity(replicas);
    let mut full_cpu = 0.0;
    for i in 0..replicas {
        let mut w = start_worker(settings(env, &prefix).batch_size(10)).await?;
        // The first pass of a new replica runs everything everywhere: time its Redis CPU once.
        let cpu0 = redis_cpu(&mut env.conn).await?;
        if !w.cycle().await {
            return Err(BenchError::Other("a cycle failed".into()));
        }
        if i == 0 {
            full_cpu = (redis_cpu(&mut env.conn).await? - cpu0) * 1e3;
        }
        if !w.cycle().await {
            return Err(BenchError::Other("a cycle failed".into()));
        }
        workers.push(w);
    }
    let cpu0 = redis_cpu(&mut env.conn).await?;
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(replicas);
    for mut w in workers {
        tasks.push(tokio::spawn(async move {
            let ok = w.cycle().await;
            (w, ok)
        }));
    }
    let mut done = Vec::with_capacity(replicas);
    for task in tasks {
        let (w, ok) = task.await.map_err(|e| BenchError::Other(e.to_string()))?;
        if !ok {
            return Err(BenchError::Other("a cycle failed".into()));
        }
        done.push(w);
    }
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let cpu = (redis_cpu(&mut env.conn).await? - cpu0) * 1e3;
    // Dropping a worker closes its Kafka consumer, which blocks: not on the clock,
    // and not on an async thread.
    let _ = tokio::task::spawn_blocking(move || drop(done)).await;
    Ok((wall, cpu, full_cpu))
}

/// 6. Peak resident set of this process (worker, bench driver and embedded Kafka).
fn read_peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Redis and Kafka for a one-section run (`--only`).
async fn plain_env(a: &BenchOptions) -> Result<(Env, Servers), BenchError> {
    bench_env(a.redis_url.as_deref(), a.kafka_brokers.as_deref(), &TOPICS).await
}

/// Run every section; the figures.
pub async fn run(mut a: BenchOptions) -> Result<Report, BenchError> {
    if a.quick {
        a.users = a.users.min(2_000);
        a.big_queue = a.big_queue.min(20_000);
        a.events = a.events.min(200);
        a.samples = a.samples.min(10);
        a.replicas = a.replicas.min(2);
    }
    let (mut env, servers) = bench_env(
        a.redis_url.as_deref(),
        a.kafka_brokers.as_deref(),
        &[TOPICS[0], TOPICS[1], ("BENCH_COMPLETED", 1)],
    )
    .await?;
    env.replica_acks = a.replica_acks;
    // A replica of the private server, in sync before anything is measured.
    let replica = match (&servers.redis, a.with_replica || a.replica_acks > 0) {
        (Some(master), true) => {
            let r = PrivateRedis::start_with(crate::tools::redis_server::RedisOptions {
                replica_of: Some(master.port),
                ..Default::default()
            })?;
            let mut c = redis::Client::open(r.url().as_str())?
                .get_multiplexed_async_connection()
                .await?;
            let t0 = Instant::now();
            loop {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await?;
                if info.contains("master_link_status:up") {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(20) {
                    return Err(BenchError::Other("the replica never synced".into()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(r)
        }
        _ => None,
    };
    let say = |s: &str| {
        if !a.json {
            eprintln!("bench: {s}");
        }
    };

    let mut e2e = Vec::new();
    let mut ceiling = Vec::new();
    let mut reference = Vec::new();
    for batch in [10u64, 100, 1000] {
        say(&format!("end to end, batch {batch}, {} users", a.users));
        e2e.push(end_to_end(&mut env, batch, a.users).await?);
        say(&format!("admit script only, batch {batch}"));
        ceiling.push(admit_only(&mut env, batch, a.users).await?);
        say(&format!("minimal reference, batch {batch}"));
        reference.push(minimal::minimal(&mut env, batch, a.users, false).await?);
    }
    say("naive per-user implementation, batch 100");
    let naive = naive(&mut env, 100, (a.users / 2).max(1)).await?;
    say(&format!("refill latency, {} samples", a.samples));
    let (p50, p99) = refill(&mut env, a.samples).await?;
    say(&format!("one cycle with 1000 vs {} queued", a.big_queue));
    let small = cycle_cost(&mut env, 1000).await?;
    let big = cycle_cost(&mut env, a.big_queue).await?;
    let mut passes = Vec::new();
    let mut sizes = vec![1usize, 1000.min(a.events), a.events];
    sizes.dedup();
    for &n in &sizes {
        say(&format!("full pass over {n} events"));
        let (first, steady, cpu) = full_pass(&mut env, n).await?;
        passes.push((n, first, steady, cpu));
    }
    // Before the cluster and replica sections: one worker at a time on one server.
    let peak_rss_mb = read_peak_rss_mb();
    let mut cluster_passes = Vec::new();
    for &n in &sizes[1..] {
        say(&format!(
            "full pass over {n} events on a three-master cluster"
        ));
        cluster_passes.push(cluster::cluster_pass(&env, n).await?);
    }
    // The cluster section's worker and driver hold a pipeline part per event.
    let peak_rss_after_cluster_mb = read_peak_rss_mb();
    say(&format!("{} replicas over {} events", a.replicas, a.events));
    let (rw, rc, rf) = replicas_pass(&mut env, a.events, a.replicas).await?;
    let ratio_to_ceiling = e2e
        .iter()
        .zip(&ceiling)
        .map(|(e, c)| (e.batch, e.users_per_sec / c.users_per_sec))
        .collect();
    let ratio_to_naive = e2e
        .last()
        .map(|e| e.users_per_sec / naive.users_per_sec)
        .unwrap_or(0.0);
    Ok(Report {
        end_to_end: e2e,
        admit_script_only: ceiling,
        naive_per_user: naive,
        minimal_reference: reference,
        ratio_to_ceiling,
        ratio_to_naive,
        refill_p50_ms: p50,
        refill_p99_ms: p99,
        cycle_small_queue: 1000,
        cycle_big_queue: a.big_queue,
        cycle_small_queue_ms: small,
        cycle_big_queue_ms: big,
        cycle_cost_ratio: big / small,
        full_pass: passes,
        cluster_pass: cluster_passes,
        replicas: (a.replicas, a.events, rw, rc, rf),
        peak_rss_mb,
        peak_rss_after_cluster_mb,
        with_replica: replica.is_some(),
        replica_acks: a.replica_acks,
    })
}

/// The report as a table.
pub fn render(r: &Report) -> String {
    let mut t = String::new();
    if r.with_replica || r.replica_acks > 0 {
        t.push_str(&format!(
            "replication: {}, --replica-acks {}\n",
            if r.with_replica {
                "a replica of the private server"
            } else {
                "the server's own replicas"
            },
            r.replica_acks
        ));
    }
    t.push_str("throughput (users/s; Redis CPU per admission)\n");
    t.push_str(&format!(
        "{:>6} {:>14} {:>10} {:>14} {:>10} {:>9}\n",
        "batch", "end to end", "cpu µs", "admit only", "cpu µs", "e2e/ceil"
    ));
    for ((e, c), (_, ratio)) in r
        .end_to_end
        .iter()
        .zip(&r.admit_script_only)
        .zip(&r.ratio_to_ceiling)
    {
        t.push_str(&format!(
            "{:>6} {:>14.0} {:>10.1} {:>14.0} {:>10.1} {:>8.0}%\n",
            e.batch,
            e.users_per_sec,
            e.redis_cpu_us_per_admission,
            c.users_per_sec,
            c.redis_cpu_us_per_admission,
            ratio * 100.0
        ));
    }
    t.push_str("against the minimal reference (users/s; Redis CPU per admission)\n");
    for (e, m) in r.end_to_end.iter().zip(&r.minimal_reference) {
        t.push_str(&format!(
            "{:>6} {:>14.0} {:>10.1}   end to end {:.2}x its throughput, {:.2}x its Redis CPU\n",
            m.batch,
            m.users_per_sec,
            m.redis_cpu_us_per_admission,
            e.users_per_sec / m.users_per_sec,
            e.redis_cpu_us_per_admission / m.redis_cpu_us_per_admission.max(f64::MIN_POSITIVE)
        ));
    }
    t.push_str(&format!(
        "naive per-user (batch {}): {:.0} users/s, {:.1} µs Redis CPU per admission; end to end at batch 1000 is {:.1}x naive\n",
        r.naive_per_user.batch, r.naive_per_user.users_per_sec, r.naive_per_user.redis_cpu_us_per_admission, r.ratio_to_naive
    ));
    t.push_str(&format!(
        "refill latency at a 1s interval: p50 {:.2} ms, p99 {:.2} ms\n",
        r.refill_p50_ms, r.refill_p99_ms
    ));
    t.push_str(&format!(
        "one admit cycle (batch 100): {:.2} ms with {} queued, {:.2} ms with {} queued ({:.2}x)\n",
        r.cycle_small_queue_ms,
        r.cycle_small_queue,
        r.cycle_big_queue_ms,
        r.cycle_big_queue,
        r.cycle_cost_ratio
    ));
    for (n, first, steady, cpu) in &r.full_pass {
        t.push_str(&format!(
            "full pass over {n:>6} events: {first:>8.1} ms admitting, {steady:>8.1} ms steady ({cpu:.1} ms Redis CPU)\n"
        ));
    }
    for p in &r.cluster_pass {
        t.push_str(&render_cluster_line(p, &r.full_pass));
    }
    let (n, e, wall, cpu, full) = r.replicas;
    t.push_str(&format!(
        "{n} replicas over {e} events, steady round at once: {wall:.1} ms, {cpu:.1} ms Redis CPU; a complete pass (every 30th) {full:.1} ms Redis CPU\n"
    ));
    t.push_str(&format!(
        "peak RSS of the bench process before the cluster and replica sections (one worker at a time, driver, embedded Kafka): {:.1} MB; after the cluster section {:.1} MB\n",
        r.peak_rss_mb, r.peak_rss_after_cluster_mb
    ));
    t
}
