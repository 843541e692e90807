//! `waitroom-worker demo`: a flash sale on this machine, with nothing installed but
//! redis-server. It starts a private redis-server and an embedded Kafka, queues
//! users as the API would, runs the worker, and plays the checkout service: it
//! reads QUEUE_READY, verifies each token, waits a random checkout time and
//! publishes a completion, except for a share of users who walk away (their slots
//! come back by expiry). Progress is printed live; a summary closes the run.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use thiserror::Error;

use crate::base::error_chain::chain;
use crate::base::shutdown;
use crate::config::Config;
use crate::engine::worker::Worker;
use crate::kafka::publisher::ReadyMessage;
use crate::model::keys::{KeyLayout, Keys};
use crate::model::token::Verifier;
use crate::ops::stats::Stats;
use crate::tools::embedded_kafka::EmbeddedKafka;
use crate::tools::enqueue;
use crate::tools::redis_server::{PrivateRedis, ServerError};

const EVENT: &str = "demo-sale";

/// The sale to simulate. [`Default`] is `waitroom-worker demo` without flags.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Users joining the queue.
    pub users: usize,
    /// Checkout slots.
    pub capacity: u64,
    /// Users admitted per cycle.
    pub batch: u64,
    /// Longest simulated checkout (each user takes a random time up to this).
    pub checkout_time: Duration,
    /// Share of admitted users who walk away without completing (0..1).
    pub abandon_rate: f64,
    /// Checkout window: how long an abandoned slot stays taken.
    pub checkout_window: Duration,
    /// Admission interval.
    pub interval: Duration,
    /// Cap admissions at N a minute (the event's `new_users_per_minute`).
    pub rate: Option<u64>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            users: 3000,
            capacity: 100,
            batch: 50,
            checkout_time: Duration::from_millis(400),
            abandon_rate: 0.05,
            checkout_window: Duration::from_secs(5),
            interval: Duration::from_millis(100),
            rate: None,
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
    /// More users in checkout than slots: the invariant broke.
    #[error("capacity exceeded: {peak} in checkout with {capacity} slots")]
    CapacityExceeded {
        /// Most sessions in checkout at once.
        peak: u64,
        /// The slots.
        capacity: u64,
    },
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

/// Run the sale to its end: every user admitted and done (completed or expired).
pub async fn run(a: DemoOptions) -> Result<Summary, DemoError> {
    if a.users == 0 || a.capacity == 0 || a.batch == 0 || !(0.0..1.0).contains(&a.abandon_rate) {
        return Err(DemoError::Setting(
            "users, capacity and batch must be above 0, abandon_rate in [0, 1)".into(),
        ));
    }
    let redis = PrivateRedis::start()?;
    let kafka = EmbeddedKafka::start(&[("QUEUE_READY", 1), ("CHECKOUT_COMPLETED", 1)])?;
    eprintln!(
        "demo: redis-server on {} and an embedded Kafka on {}",
        redis.url(),
        kafka.bootstrap
    );

    let secret = {
        let seed = format!("{}-{}", crate::model::clock::now_ms(), std::process::id());
        let a = sha1_smol::Sha1::from(&seed).digest().to_string();
        let b = sha1_smol::Sha1::from(&a).digest().to_string();
        format!("{a}{b}")
    };
    let settings = Config::builder()
        .redis_url(redis.url())
        .kafka_brokers(&kafka.bootstrap)
        .jwt_secret(&secret)
        .event(EVENT)
        .process_interval(a.interval)
        .max_concurrent(a.capacity)
        .batch_size(a.batch.min(1000))
        .checkout_window(a.checkout_window)
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
        .http_addr(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))))
        .build()
        .map_err(|e| DemoError::Setting(chain(&e).to_string()))?;

    let keys = Keys::new("waitroom", KeyLayout::Default);
    let client = redis::Client::open(redis.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
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
    eprintln!(
        "demo: {} users queued for {EVENT}; capacity {}, batch {}",
        a.users, a.capacity, a.batch
    );

    let (trigger, mut listener) = shutdown::channel();
    let worker = Worker::start(settings, &mut listener)
        .await
        .map_err(|e| DemoError::Worker(chain(&e).to_string()))?
        .ok_or_else(|| DemoError::Worker("stopped before it started".into()))?;
    let stats = worker.stats();
    if let Some(addr) = worker.http_addr() {
        eprintln!("demo: worker endpoint http://{addr}/status (also /metrics, /healthz, /readyz)");
    }
    let worker_task = tokio::spawn(worker.run(listener.clone()));

    // The checkout service.
    let completed = Arc::new(AtomicU64::new(0));
    let bad_tokens = Arc::new(AtomicU64::new(0));
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
        let (max_ms, abandon) = (a.checkout_time.as_millis().max(1) as f64, a.abandon_rate);
        let mut stop = listener.clone();
        tokio::spawn(async move {
            let mut rng = Rng(crate::model::clock::now_ms() | 1);
            loop {
                let msg = tokio::select! {
                    _ = stop.recv() => break,
                    m = consumer.recv() => m,
                };
                let Ok(msg) = msg else { continue };
                let Some(Ok(ready)) = msg.payload().map(serde_json::from_slice::<ReadyMessage>)
                else {
                    continue;
                };
                if verifier.verify(&ready.checkout_token).is_err() {
                    bad_tokens.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if rng.next_f64() < abandon {
                    continue; // walks away: the slot comes back by expiry
                }
                let wait = Duration::from_millis((rng.next_f64() * max_ms) as u64);
                let (producer, completed) = (producer.clone(), completed.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let body = serde_json::json!({
                        "session_id": ready.session_id, "event_id": ready.event_id, "outcome": "completed"
                    })
                    .to_string();
                    let rec = FutureRecord::to("CHECKOUT_COMPLETED")
                        .key(&ready.session_id)
                        .payload(&body);
                    if producer.send(rec, Duration::from_secs(5)).await.is_ok() {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
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
    let mut peak = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let mut printed = Instant::now();
    let mut last_second = (Instant::now(), 0u64);
    let mut per_second = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = listener.recv() => break,
        }
        let (queued, in_checkout): (u64, u64) = redis::pipe()
            .cmd("ZCARD")
            .arg(keys.queue(EVENT))
            .cmd("SCARD")
            .arg(keys.processing(EVENT))
            .query_async(&mut conn)
            .await?;
        peak = peak.max(in_checkout);
        let admitted = Stats::get(&stats.admitted);
        if last_second.0.elapsed() >= Duration::from_secs(1) {
            per_second = admitted.saturating_sub(last_second.1);
            last_second = (Instant::now(), admitted);
        }
        let done = queued == 0 && in_checkout == 0 && admitted as usize >= a.users;
        let msg = format!(
            "| last second {per_second} admitted | queued {queued} | in checkout {in_checkout}/{} | completed {} | expired {}",
            a.capacity,
            Stats::get(&stats.released),
            Stats::get(&stats.expired),
        );
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
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    trigger.trigger();
    let _ = worker_task.await;
    let _ = checkout.await;
    let mut samples = stats.refill_samples();
    samples.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        (!samples.is_empty()).then(|| {
            samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
        })
    };
    let summary = Summary {
        refill_p50: pct(0.5),
        refill_p99: pct(0.99),
        users: a.users,
        seconds,
        admitted: Stats::get(&stats.admitted),
        completed: Stats::get(&stats.released),
        expired: Stats::get(&stats.expired),
        peak,
        bad_tokens: bad_tokens.load(Ordering::Relaxed),
    };
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
    match (summary.refill_p50, summary.refill_p99) {
        (Some(p50), Some(p99)) => eprintln!(
            "demo: refill latency (slot freed by a completion -> next admission): p50 {:.2} ms, p99 {:.2} ms over {} refills",
            p50 * 1e3,
            p99 * 1e3,
            samples.len()
        ),
        _ => eprintln!("demo: no refill measured (no completion freed a slot while users waited)"),
    }
    if summary.peak > a.capacity {
        return Err(DemoError::CapacityExceeded {
            peak: summary.peak,
            capacity: a.capacity,
        });
    }
    Ok(summary)
}
