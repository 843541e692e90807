//! Surviving a Redis failover (issue 15): a master, a replica and three sentinels
//! of the test's own; mid-sale the master is killed (SIGKILL) and Sentinel promotes
//! the replica. With `--replica-acks 1` nothing published can be forgotten: capacity
//! holds on the new master, nobody is admitted twice, every QUEUE_READY names an
//! admission the new master has, and everyone is admitted and told in the end. A
//! replica that stalls delays publishing and loses nothing.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::*;
use waitroom_worker::RedisBuilder;
use waitroom_worker::clock;
use waitroom_worker::redis_server::{PrivateSentinel, SENTINEL_MASTER};

const EVENT: &str = "failover-sale";

fn sentinel_settings(bed: &PrivateSentinel, brokers: &str) -> waitroom_worker::ConfigBuilder {
    settings(&bed.master.url(), brokers).redis(
        RedisBuilder::default()
            .sentinel(bed.sentinel_urls().split(','))
            .sentinel_master(SENTINEL_MASTER)
            .timeout(Duration::from_secs(2)),
    )
}

async fn conn_to(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// The sale through a failover, with `--replica-acks 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_mid_sale_forgets_nothing_published() {
    let mut bed = PrivateSentinel::start().expect("sentinel bed");
    let kafka = MockKafka::start();
    let mut conn = conn_to(bed.master.port).await;
    let n = 300;
    let ids = enqueue(&mut conn, EVENT, "f", n, clock::now_ms() - 60_000).await;
    let capacity = 20;
    let w = run_worker(
        sentinel_settings(&bed, &kafka.bootstrap)
            .event(EVENT)
            .max_concurrent(capacity)
            .batch_size(10)
            .process_interval(Duration::from_millis(50))
            .replica_acks(1)
            .replica_ack_timeout(Duration::from_millis(500))
            .failover_hold(Duration::from_secs(1)),
    )
    .await;

    // The checkout service: each told user completes 150 ms later.
    let checkout = CheckoutLoop::start(
        &kafka.bootstrap,
        EVENT,
        Duration::from_millis(150),
        || "completed",
    );
    let stop = Arc::new(AtomicBool::new(false));
    // Capacity, watched on whichever server is the master.
    let over = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (over, stop) = (over.clone(), stop.clone());
        let ports = (bed.master.port, bed.replica.port);
        tokio::spawn(async move {
            let mut a = conn_to(ports.0).await;
            let mut b = conn_to(ports.1).await;
            while !stop.load(Ordering::Relaxed) {
                for c in [&mut a, &mut b] {
                    let in_use: redis::RedisResult<u64> = redis::cmd("SCARD")
                        .arg(keys().processing(EVENT))
                        .query_async(c)
                        .await;
                    if in_use.is_ok_and(|x| x > capacity) {
                        over.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Mid-sale: the master dies.
    eventually(Duration::from_secs(30), "a third of the sale done", || {
        let n = w.stats.published.get();
        async move { (n >= 100).then_some(()) }
    })
    .await;
    let published_before = w.stats.published.get();
    let took = bed.fail_over().expect("Sentinel promotes the replica");
    let promoted = Instant::now();
    // The new master has no replica left: with --replica-acks 1 nothing is published
    // until one holds the writes. The old master comes back (empty) and Sentinel
    // makes it the new master's replica.
    bed.master.restart().expect("the old master restarts");
    // The worker is on the new master within a few seconds of the promotion.
    eventually(
        Duration::from_secs(5),
        "the worker on the new master",
        || {
            let seen = w.stats.masters_seen.get();
            async move { (seen >= 1).then_some(()) }
        },
    )
    .await;
    let on_new_master = promoted.elapsed();
    let mut new_master = conn_to(bed.replica.port).await;
    // The worker follows: admissions go on on the new master within a few seconds.
    eventually(
        Duration::from_secs(30),
        "admissions published from the new master",
        || {
            let n = w.stats.published.get();
            async move { (n > published_before + 20).then_some(()) }
        },
    )
    .await;
    let resumed_after = promoted.elapsed();
    eventually(
        Duration::from_secs(60),
        "everyone admitted and told",
        || {
            let published = w.stats.published.get();
            async move { (published >= n as u64).then_some(()) }
        },
    )
    .await;
    eventually(Duration::from_secs(30), "everyone through checkout", || {
        let mut c = new_master.clone();
        async move {
            let q: u64 = zcard(&mut c, &keys().queue(EVENT)).await;
            let p: u64 = scard(&mut c, &keys().processing(EVENT)).await;
            (q == 0 && p == 0).then_some(())
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    watcher.await.expect("watcher");
    let messages = checkout.stop();

    assert_eq!(over.load(Ordering::Relaxed), 0, "capacity exceeded");
    // One token per user across every QUEUE_READY (duplicates carry the same one).
    let mut tokens: HashMap<String, HashSet<String>> = HashMap::new();
    for m in &messages {
        tokens
            .entry(m.key.clone())
            .or_default()
            .insert(m.value["checkout_token"].as_str().unwrap_or("").to_owned());
    }
    assert_eq!(tokens.len(), n, "everyone told");
    for (sid, t) in &tokens {
        assert_eq!(t.len(), 1, "{sid} admitted twice: {} tokens", t.len());
    }
    // Every QUEUE_READY names an admission the new master has (completed by now).
    for sid in &ids {
        let h = hgetall(&mut new_master, &keys().session(EVENT, sid)).await;
        assert_eq!(
            h.get("status").map(String::as_str),
            Some("completed"),
            "{sid}: {h:?}"
        );
        let admitted_at = h.get("admitted_at").cloned().unwrap_or_default();
        let sent = &messages.iter().find(|m| &m.key == sid).expect("told").value;
        assert_eq!(sent["admitted_at"], admitted_at.as_str(), "{sid}");
    }
    eprintln!(
        "failover took {took:?}; the worker on the new master {on_new_master:?} after the \
         promotion; publishing resumed {resumed_after:?} after it (the old master rejoined as \
         a replica)"
    );
    w.stop().await;
}

/// A replica that stalls (SIGSTOP) holds publishing back; nothing is lost, and
/// everything goes out once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replica_delays_publishing_and_loses_nothing() {
    let bed = PrivateSentinel::start().expect("sentinel bed");
    let kafka = MockKafka::start();
    let mut conn = conn_to(bed.master.port).await;
    let w = run_worker(
        sentinel_settings(&bed, &kafka.bootstrap)
            .event(EVENT)
            .max_concurrent(100)
            .batch_size(20)
            .process_interval(Duration::from_millis(50))
            .outbox_lease(Duration::from_secs(2))
            .replica_acks(1)
            .replica_ack_timeout(Duration::from_millis(200)),
    )
    .await;
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    bed.replica.pause();
    enqueue(&mut conn, EVENT, "s", 40, clock::now_ms() - 60_000).await;
    eventually(Duration::from_secs(20), "admitted on the master", || {
        let mut c = conn.clone();
        async move { (scard(&mut c, &keys().processing(EVENT)).await == 40).then_some(()) }
    })
    .await;
    // Admitted, not published: no replica holds it.
    assert_eq!(reader.read_for(Duration::from_secs(2)).len(), 0);
    assert!(w.stats.replica_waits_short.get() > 0);
    let h = hgetall(&mut conn, &keys().session(EVENT, "s-000000")).await;
    assert!(
        !h.contains_key("checkout_token"),
        "a token left before replication"
    );
    bed.replica.resume();
    let got = reader.read_until(40, Duration::from_secs(30)).len();
    assert_eq!(got, 40, "everything published once the replica is back");
    w.stop().await;
}
