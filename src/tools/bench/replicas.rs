//! `waitroom-worker bench --sharing`: what replicas sharing the events cost (issue 14,
//! part 1). For each event count and each number of replicas, the replicas run their
//! real loops (1 s interval by default) over idle events (in `active_events`, nobody
//! waiting), and the section measures:
//!
//! - Redis CPU per second of serving: the `INFO cpu` delta over a window of running
//!   loops, divided by the window;
//! - the steady round: the slowest replica's mean pass over the window (its
//!   `cycle_duration` histogram), the wall time in which every event is passed once;
//! - takeover: one replica's loop is killed (aborted, no goodbye); one user is then
//!   queued in each of (a sample of) the events it owned, and the time from its last
//!   beat (when its loop last went round, which is right after its beat) to the
//!   moment all of them are admitted is the takeover. The killed replica's last pass over those
//!   events ended before that beat, so the longest any event went unpassed is the
//!   takeover plus at most one pass.
//!
//! Each replica runs on a thread and a single-threaded runtime of its own, as in a
//! process of its own: the completion consumer's rebalance callback blocks the
//! thread it runs on (librdkafka's assign), and sixteen of them on the two threads
//! of one shared runtime stopped every loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde::Serialize;

use super::{BenchError, Env, clear, redis_cpu, settings, start_worker};
use crate::base::shutdown::{self, ShutdownTrigger};
use crate::config::ConfigBuilder;
use crate::model::clock;
use crate::model::keys::{KeyLayout, Keys};
use crate::model::ownership::owner;
use crate::ops::stats::Stats;

/// What the section measures.
#[derive(Debug, Clone)]
pub struct SharingOptions {
    /// Use this Redis instead of a private redis-server.
    pub redis_url: Option<String>,
    /// Use these Kafka brokers instead of the embedded one.
    pub kafka_brokers: Option<String>,
    /// Idle event counts, each run with every number of `replicas`.
    pub events: Vec<usize>,
    /// Numbers of replicas.
    pub replicas: Vec<usize>,
    /// One more run: this many events (served, idle) with `big_replicas`.
    pub big_events: usize,
    /// Replicas of that run.
    pub big_replicas: usize,
    /// The replicas' interval.
    pub interval: Duration,
    /// How long the CPU is measured.
    pub window: Duration,
    /// Share the events (false: every replica passes every event, as before).
    pub ownership: bool,
    /// Most events whose takeover is timed.
    pub takeover_sample: usize,
    /// No progress lines on stderr.
    pub json: bool,
}

impl Default for SharingOptions {
    fn default() -> Self {
        SharingOptions {
            redis_url: None,
            kafka_brokers: None,
            events: vec![10_000, 50_000],
            replicas: vec![1, 2, 4, 8, 16],
            big_events: 100_000,
            big_replicas: 4,
            interval: Duration::from_secs(1),
            // A complete pass (every 30th) of each replica, once.
            window: Duration::from_secs(30),
            ownership: true,
            takeover_sample: 200,
            json: false,
        }
    }
}

/// One run: `replicas` replicas over `events` events.
#[derive(Debug, Clone, Serialize)]
pub struct SharingRun {
    /// Events served.
    pub events: usize,
    /// Replicas.
    pub replicas: usize,
    /// Redis CPU per second of serving, ms.
    pub redis_cpu_ms_per_s: f64,
    /// The slowest replica's mean pass over the window, ms.
    pub round_ms: f64,
    /// Fewest and most events one replica owned.
    pub owned_min: u64,
    /// Most events one replica owned.
    pub owned_max: u64,
    /// Last beat of the killed replica to all its sampled events admitted, ms.
    pub takeover_ms: Option<f64>,
    /// Events whose takeover was timed.
    pub takeover_events: usize,
    /// Changes of the replicas' views of who shares the events during the window,
    /// all replicas together (0: no flapping).
    pub view_changes: u64,
    /// Why the run did not finish (the figures are then 0); the section goes on
    /// with the next run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SharingRun {
    /// A run that could not finish: a machine overloaded by many replicas over many
    /// events may time out a Redis call; the runs before and after still count.
    fn failed(events: usize, replicas: usize, error: &BenchError) -> Self {
        SharingRun {
            events,
            replicas,
            redis_cpu_ms_per_s: 0.0,
            round_ms: 0.0,
            owned_min: 0,
            owned_max: 0,
            takeover_ms: None,
            takeover_events: 0,
            view_changes: 0,
            error: Some(error.to_string()),
        }
    }
}

/// Every run of the section.
#[derive(Debug, Clone, Serialize)]
pub struct SharingReport {
    /// The replicas' interval, ms.
    pub interval_ms: u64,
    /// The CPU window, s.
    pub window_s: f64,
    /// Whether the replicas shared the events.
    pub ownership: bool,
    /// The runs.
    pub runs: Vec<SharingRun>,
}

/// A replica running its loop on a thread of its own.
struct Replica {
    id: String,
    stats: Arc<Stats>,
    trigger: ShutdownTrigger,
    /// Kills the loop where it is (no goodbye).
    abort: tokio::task::AbortHandle,
    thread: std::thread::JoinHandle<()>,
}

impl Replica {
    /// Start a worker from `b` on a new thread with a runtime of its own, and run
    /// its loop there until shutdown or abort.
    async fn start(id: String, b: ConfigBuilder) -> Result<Replica, BenchError> {
        type Started = Result<(Arc<Stats>, ShutdownTrigger, tokio::task::AbortHandle), BenchError>;
        let (tx, rx) = tokio::sync::oneshot::channel::<Started>();
        let thread = std::thread::Builder::new()
            .name(format!("replica-{id}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(BenchError::Other(e.to_string())));
                        return;
                    }
                };
                rt.block_on(async move {
                    let w = match start_worker(b).await {
                        Ok(w) => w,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let stats = w.stats();
                    let (trigger, listener) = shutdown::channel();
                    let handle = tokio::spawn(w.run(listener));
                    if tx
                        .send(Ok((stats, trigger, handle.abort_handle())))
                        .is_err()
                    {
                        handle.abort();
                    }
                    let _ = handle.await;
                });
            })
            .map_err(|e| BenchError::Other(e.to_string()))?;
        let (stats, trigger, abort) = rx.await.map_err(|_| {
            BenchError::Other("a replica's thread ended before it started".into())
        })??;
        Ok(Replica {
            id,
            stats,
            trigger,
            abort,
            thread,
        })
    }

    /// Wait (off the async threads) until its thread is done.
    async fn join(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(15),
            tokio::task::spawn_blocking(move || {
                let _ = self.thread.join();
            }),
        )
        .await;
    }
}

/// (sum, count) of a replica's `cycle_duration` histogram.
fn cycle_totals(stats: &Stats) -> (f64, f64) {
    let text = stats.encode_prometheus();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        field("waitroom_cycle_duration_seconds_sum "),
        field("waitroom_cycle_duration_seconds_count "),
    )
}

/// Queue one user in each of `events` (as the API would).
async fn queue_one(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    events: &[String],
    tag: &str,
) -> Result<(), BenchError> {
    let now = clock::now_ms();
    for chunk in events.chunks(2000) {
        let mut p = redis::pipe();
        for e in chunk {
            let sid = format!("{e}-{tag}");
            p.cmd("HSET")
                .arg(keys.session(e, &sid))
                .arg("status")
                .arg("queued")
                .arg("user_id")
                .arg(&sid)
                .arg("event_id")
                .arg(e)
                .ignore();
            p.cmd("EXPIRE")
                .arg(keys.session(e, &sid))
                .arg(3600)
                .ignore();
            p.cmd("ZADD").arg(keys.queue(e)).arg(now).arg(&sid).ignore();
        }
        p.query_async::<()>(conn).await?;
    }
    Ok(())
}

/// How many of `events` still have someone waiting.
async fn waiting(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    events: &[String],
) -> Result<usize, BenchError> {
    let mut left = 0;
    for chunk in events.chunks(5000) {
        let mut p = redis::pipe();
        for e in chunk {
            p.cmd("ZCARD").arg(keys.queue(e));
        }
        let lens: Vec<u64> = p.query_async(conn).await?;
        left += lens.iter().filter(|n| **n > 0).count();
    }
    Ok(left)
}

/// Poll `check` every 10 ms until it is true or `limit` passes.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<(), BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, BenchError>>,
{
    let t = Instant::now();
    while !check().await? {
        if t.elapsed() > limit {
            return Err(BenchError::Other(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// One run: seed, start, settle, measure, kill one, time the takeover, stop.
async fn one_run(
    env: &mut Env,
    o: &SharingOptions,
    n: usize,
    r: usize,
) -> Result<SharingRun, BenchError> {
    let prefix = format!("bench-share-{n}-{r}-{}", clock::now_ms());
    let keys = Keys::new(&prefix, KeyLayout::Default);
    let events: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
    for chunk in events.chunks(5000) {
        let _: () = redis::cmd("SADD")
            .arg(keys.active_events())
            .arg(chunk)
            .query_async(&mut env.conn)
            .await?;
    }
    let mut replicas = Vec::with_capacity(r);
    let mut started = Ok(());
    for i in 0..r {
        let id = format!("w{i}");
        let b = settings(env, &prefix)
            .worker_id(&id)
            .process_interval(o.interval)
            .event_ownership(o.ownership)
            .shutdown_timeout(Duration::from_secs(3))
            .batch_size(10)
            .max_concurrent(1_000_000_000);
        match Replica::start(id, b).await {
            Ok(x) => replicas.push(x),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let result = match started {
        Ok(()) => measure(env, o, &keys, &events, &mut replicas).await,
        Err(e) => Err(e),
    };
    // Whatever happened, no replica is left running into the next run.
    for x in &replicas {
        x.trigger.trigger();
    }
    for x in replicas {
        x.join().await;
    }
    // Each run starts on the same keyspace: runs one after the other in one
    // process measured more and more for the same work (three R = 16 runs over
    // 10,000 events: 11.4, 14.3, 15.7 ms/s) while each left its keys behind.
    let cleared = clear(env, &prefix).await;
    let result = result?;
    cleared?;
    Ok(result)
}

/// Settle, measure, kill one replica (removed from `replicas`) and time the
/// takeover.
async fn measure(
    env: &mut Env,
    o: &SharingOptions,
    keys: &Keys,
    events: &[String],
    replicas: &mut Vec<Replica>,
) -> Result<SharingRun, BenchError> {
    let (n, r) = (events.len(), replicas.len());
    let ids: Vec<String> = replicas.iter().map(|x| x.id.clone()).collect();
    // Settled: every replica sees them all, together they own each event once,
    // and each has run a few passes (its first one runs everything).
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let want_owned = if o.ownership { n } else { n * r } as u64;
    let settling = Instant::now();
    let mut said = 0;
    wait_until(Duration::from_secs(300), "the replicas to settle", || {
        let ok = replicas.iter().all(|x| {
            Stats::get(&x.stats.cycles) >= 3
                && x.stats.owner_replicas.load(relaxed) == if o.ownership { r } else { 1 } as u64
        }) && replicas
            .iter()
            .map(|x| x.stats.owned_events.load(relaxed))
            .sum::<u64>()
            == want_owned;
        if !ok && !o.json && settling.elapsed().as_secs() >= 30 * (said + 1) {
            said += 1;
            let view: Vec<String> = replicas
                .iter()
                .map(|x| {
                    format!(
                        "{}: {} passes, sees {}, owns {}",
                        x.id,
                        Stats::get(&x.stats.cycles),
                        x.stats.owner_replicas.load(relaxed),
                        x.stats.owned_events.load(relaxed)
                    )
                })
                .collect();
            eprintln!("bench: still settling: {}", view.join("; "));
        }
        async move { Ok(ok) }
    })
    .await?;
    let before: Vec<(f64, f64)> = replicas.iter().map(|x| cycle_totals(&x.stats)).collect();
    let changes =
        |rs: &[Replica]| -> u64 { rs.iter().map(|x| Stats::get(&x.stats.owner_changes)).sum() };
    let changes0 = changes(replicas);
    let cpu0 = redis_cpu(&mut env.conn).await?;
    let t = Instant::now();
    tokio::time::sleep(o.window).await;
    let secs = t.elapsed().as_secs_f64();
    let cpu = (redis_cpu(&mut env.conn).await? - cpu0) * 1e3 / secs;
    let view_changes = changes(replicas) - changes0;
    let round_ms = replicas
        .iter()
        .zip(&before)
        .map(|(x, (s0, c0))| {
            let (s1, c1) = cycle_totals(&x.stats);
            if c1 > *c0 {
                (s1 - s0) / (c1 - c0) * 1e3
            } else {
                0.0
            }
        })
        .fold(0.0, f64::max);
    let owned: Vec<u64> = replicas
        .iter()
        .map(|x| x.stats.owned_events.load(relaxed))
        .collect();
    let (owned_min, owned_max) = (
        owned.iter().copied().min().unwrap_or(0),
        owned.iter().copied().max().unwrap_or(0),
    );

    let mut takeover_ms = None;
    let mut takeover_events = 0;
    if r >= 2 && o.ownership {
        // Nobody waiting anywhere first, so only the takeover admits the sample.
        wait_until(Duration::from_secs(120), "the queues to empty", || {
            let (mut c, k, e) = (env.conn.clone(), keys.clone(), events);
            async move { Ok(waiting(&mut c, &k, e).await? == 0) }
        })
        .await?;
        // A replica the others count as an owner right now (one whose entry had run
        // out would have handed its events over already).
        let now = crate::redis::heartbeat::redis_now_ms(&mut env.conn).await?;
        let listed: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(keys.owners())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut env.conn)
            .await?;
        let at = replicas
            .iter()
            .position(|x| {
                listed
                    .iter()
                    .any(|(id, until)| *id == x.id && *until > now as f64)
            })
            .ok_or_else(|| BenchError::Other("no replica listed as an owner".into()))?;
        let victim = replicas.remove(at);
        victim.abort.abort();
        // Stamped when each beat is answered (same machine as Redis, so the same
        // clock); a beat goes out with the reads that open a pass.
        let last_beat = victim.stats.last_beat_ms.load(relaxed);
        let sample: Vec<String> = events
            .iter()
            .filter(|e| owner(e, &ids) == Some(victim.id.as_str()))
            .take(o.takeover_sample)
            .cloned()
            .collect();
        queue_one(&mut env.conn, keys, &sample, "orphan").await?;
        wait_until(Duration::from_secs(60), "the takeover", || {
            let (mut c, k, s) = (env.conn.clone(), keys.clone(), sample.clone());
            async move { Ok(waiting(&mut c, &k, &s).await? == 0) }
        })
        .await?;
        let done = clock::now_ms();
        takeover_ms = Some(done.saturating_sub(last_beat) as f64);
        takeover_events = sample.len();
        victim.join().await;
    }
    Ok(SharingRun {
        events: n,
        replicas: r,
        redis_cpu_ms_per_s: cpu,
        round_ms,
        owned_min,
        owned_max,
        takeover_ms,
        takeover_events,
        view_changes,
        error: None,
    })
}

/// Run the section on its own servers (or the given ones).
pub async fn run(o: SharingOptions) -> Result<SharingReport, BenchError> {
    let (mut env, _servers) = super::bench_env(
        o.redis_url.as_deref(),
        o.kafka_brokers.as_deref(),
        &super::TOPICS,
    )
    .await?;
    let say = |s: &str| {
        if !o.json {
            eprintln!("bench: {s}");
        }
    };
    let mut runs = Vec::new();
    for &n in &o.events {
        for &r in &o.replicas {
            say(&format!("{r} replicas over {n} idle events"));
            let run = one_run(&mut env, &o, n, r)
                .await
                .unwrap_or_else(|e| SharingRun::failed(n, r, &e));
            say(&format!("{run:?}"));
            runs.push(run);
        }
    }
    if o.big_events > 0 && o.big_replicas > 0 {
        say(&format!(
            "{} replicas over {} idle events",
            o.big_replicas, o.big_events
        ));
        let run = one_run(&mut env, &o, o.big_events, o.big_replicas)
            .await
            .unwrap_or_else(|e| SharingRun::failed(o.big_events, o.big_replicas, &e));
        say(&format!("{run:?}"));
        runs.push(run);
    }
    Ok(SharingReport {
        interval_ms: u64::try_from(o.interval.as_millis()).unwrap_or(u64::MAX),
        window_s: o.window.as_secs_f64(),
        ownership: o.ownership,
        runs,
    })
}

/// The report as a table, with each run's CPU against one replica's on as many events.
pub fn render(r: &SharingReport) -> String {
    let mut t = format!(
        "replicas sharing the events (ownership {}), interval {} ms, CPU window {:.0} s\n",
        if r.ownership { "on" } else { "off" },
        r.interval_ms,
        r.window_s
    );
    t.push_str(&format!(
        "{:>7} {:>8} {:>12} {:>8} {:>10} {:>13} {:>12} {:>7}\n",
        "events",
        "replicas",
        "cpu ms/s",
        "vs R=1",
        "round ms",
        "owned min-max",
        "takeover ms",
        "flaps"
    ));
    for run in &r.runs {
        if let Some(e) = &run.error {
            t.push_str(&format!(
                "{:>7} {:>8} failed: {e}\n",
                run.events, run.replicas
            ));
            continue;
        }
        let one = r
            .runs
            .iter()
            .find(|x| x.events == run.events && x.replicas == 1 && x.error.is_none())
            .map(|x| run.redis_cpu_ms_per_s / x.redis_cpu_ms_per_s);
        t.push_str(&format!(
            "{:>7} {:>8} {:>12.1} {:>8} {:>10.1} {:>13} {:>12} {:>7}\n",
            run.events,
            run.replicas,
            run.redis_cpu_ms_per_s,
            one.map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
            run.round_ms,
            format!("{}-{}", run.owned_min, run.owned_max),
            run.takeover_ms
                .map(|x| format!("{x:.0} ({})", run.takeover_events))
                .unwrap_or_else(|| "-".into()),
            run.view_changes,
        ));
    }
    t
}
