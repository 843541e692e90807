//! A Kafka outage of several checkout windows, end to end (private redis-server,
//! librdkafka's mock cluster, the worker's own loop): nobody expires untold,
//! admission is held while publishing is stalled and resumes by itself, the backlog
//! is published oldest admission first with renewed admissions whose tokens are
//! valid when produced, and capacity holds throughout.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::*;
use waitroom_worker::Stats;
use waitroom_worker::token;

const EVENT: &str = "outage";
/// An untold mark's offset in the deadlines set (lua/admit.lua).
const UNTOLD: f64 = waitroom_worker::scripts::admit::UNTOLD_MS as f64;

fn rfc3339_ms(s: &str) -> u64 {
    humantime::parse_rfc3339(s)
        .expect("RFC 3339")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
}

async fn status(conn: &mut redis::aio::MultiplexedConnection, sid: &str) -> String {
    hgetall(conn, &keys().session(EVENT, sid))
        .await
        .remove("status")
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_of_several_windows_wrongs_nobody() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "s", 40, waitroom_worker::clock::now_ms()).await;
    let w = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .max_concurrent(6)
            .batch_size(6)
            .checkout_window(Duration::from_secs(3))
            .session_ttl(Duration::from_secs(600))
            .max_unpublished_age(Duration::from_secs(1)),
    )
    .await;

    // Capacity is watched the whole time, from a connection of its own.
    let peak = Arc::new(AtomicU64::new(0));
    let watching = Arc::new(AtomicBool::new(true));
    let monitor = {
        let (peak, watching) = (peak.clone(), watching.clone());
        let mut c = redis.conn().await;
        let key = k.processing(EVENT);
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                let n = scard(&mut c, &key).await;
                peak.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Wave A: six admitted and told before the outage.
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    let told_before: Vec<String> = reader
        .read_until(6, Duration::from_secs(30))
        .iter()
        .map(|m| m.key.clone())
        .collect();
    assert_eq!(told_before, ids[..6].to_vec(), "wave A told in queue order");

    kafka.brokers_down();
    let down_at = Instant::now();

    // Told users still expire during the outage.
    for sid in &ids[..6] {
        let mut c = conn.clone();
        eventually(Duration::from_secs(15), "wave A to expire", || {
            let mut c = c.clone();
            let sid = sid.clone();
            async move { (status(&mut c, &sid).await == "expired").then_some(()) }
        })
        .await;
        let _ = &mut c;
    }
    // Wave B: the freed slots are admitted, but nobody can be told.
    let wave_b: Vec<String> = ids[6..12].to_vec();
    eventually(Duration::from_secs(10), "wave B admitted", || {
        let mut c = conn.clone();
        let key = k.processing(EVENT);
        let wave_b = wave_b.clone();
        async move {
            let members: HashSet<String> = smembers(&mut c, &key).await.into_iter().collect();
            wave_b.iter().all(|s| members.contains(s)).then_some(())
        }
    })
    .await;
    // Their first admission: the hash's admitted_at, and the untold mark in the
    // deadlines set (2^50 + admitted ms) that keeps the reaper away.
    let mut original: HashMap<String, (String, u64)> = HashMap::new();
    for sid in &wave_b {
        let h = hgetall(&mut conn, &k.session(EVENT, sid)).await;
        let score: f64 = redis::cmd("ZSCORE")
            .arg(k.deadlines(EVENT))
            .arg(sid)
            .query_async(&mut conn)
            .await
            .expect("untold mark");
        assert!(score >= UNTOLD, "{sid} is marked untold");
        original.insert(
            sid.clone(),
            (h["admitted_at"].clone(), (score - UNTOLD) as u64),
        );
    }
    // Publishing is stalled: after the max unpublished age, admission is held and
    // the worker says so.
    eventually(Duration::from_secs(10), "admission held", || {
        let stats = w.stats.clone();
        async move {
            (stats.events().get(EVENT).and_then(|e| e.held) == Some("publishing_stalled"))
                .then_some(())
        }
    })
    .await;
    let metrics = w.stats.encode_prometheus();
    assert!(
        metrics.contains(&format!(
            "waitroom_admission_held{{event_id=\"{EVENT}\",reason=\"publishing_stalled\"}} 1"
        )),
        "metrics say admission is held: {metrics}"
    );
    // The API takes three waiting-for-their-token users out of checkout: three slots
    // are free, yet nobody is admitted while publishing is stalled.
    let left: Vec<String> = wave_b[3..].to_vec();
    let _: () = redis::cmd("SREM")
        .arg(k.processing(EVENT))
        .arg(&left)
        .query_async(&mut conn)
        .await
        .expect("SREM");
    let queued_when_held = zcard(&mut conn, &k.queue(EVENT)).await;
    assert_eq!(queued_when_held, 28);

    // The outage lasts more than three checkout windows. Throughout: wave B is never
    // reaped (never told), and the queue does not move.
    while down_at.elapsed() < Duration::from_secs(11) {
        for sid in &wave_b[..3] {
            assert_eq!(
                status(&mut conn, sid).await,
                "admitted",
                "{sid} was taken back before it was told"
            );
        }
        assert_eq!(
            zcard(&mut conn, &k.queue(EVENT)).await,
            queued_when_held,
            "admitted while publishing was stalled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kafka.brokers_up();
    let up_at = waitroom_worker::clock::now_ms();

    // After the outage: wave B's three are told first (renewed: a new admission
    // time, deadline and message id), then admission resumes in queue order.
    let msgs = reader
        .read_until(6 + 3 + 3, Duration::from_secs(60))
        .to_vec();
    let after: Vec<&Published> = msgs[6..].iter().collect();
    let order: Vec<String> = after.iter().map(|m| m.key.clone()).collect();
    let mut expected: Vec<String> = wave_b[..3].to_vec();
    expected.extend(ids[12..15].iter().cloned());
    assert_eq!(
        order, expected,
        "backlog oldest first, then the queue in order"
    );
    for m in &after {
        let expires = rfc3339_ms(m.value["expires_at"].as_str().expect("expires_at"));
        assert!(
            m.produced_ms as u64 + 1000 <= expires,
            "{}: produced at {} with a token expiring at {expires}",
            m.key,
            m.produced_ms
        );
        assert!(expires > up_at, "{}: token expired before recovery", m.key);
    }
    for sid in &wave_b[..3] {
        let m = after.iter().find(|m| &m.key == sid).expect("told");
        let h = hgetall(&mut conn, &k.session(EVENT, sid)).await;
        let (first_at, first_ms) = &original[sid];
        assert_ne!(&h["admitted_at"], first_at, "{sid} was renewed");
        assert_eq!(
            m.value["admitted_at"].as_str(),
            Some(h["admitted_at"].as_str())
        );
        assert_eq!(
            m.value["checkout_token"].as_str(),
            Some(h["checkout_token"].as_str())
        );
        let first = *first_ms;
        assert_ne!(
            m.message_id,
            token::admission_id(EVENT, sid, first),
            "{sid}: a renewed admission has a new message id"
        );
    }
    for sid in &left {
        assert!(
            !msgs.iter().any(|m| &m.key == sid),
            "{sid} left checkout before it was told, and is not told now"
        );
    }
    eventually(Duration::from_secs(10), "hold lifted", || {
        let stats = w.stats.clone();
        async move {
            stats
                .events()
                .get(EVENT)
                .is_some_and(|e| e.held.is_none())
                .then_some(())
        }
    })
    .await;

    // Completions go on after the outage. The completion consumer has to rejoin its
    // group first: the outage outlasted its session timeout, so the group emptied,
    // and a join into an empty group waits group.initial.rebalance.delay.ms (3 s, in
    // the mock as in Kafka), a whole checkout window here: wave B's renewed windows,
    // which began when publishing came back, may rightly be over by then. A late
    // completion for a session that expired during the outage shows the consumer
    // back: it is consumed as a no-op and changes nothing.
    let checkout = CheckoutService::new(&kafka.bootstrap);
    let noops = Stats::get(&w.stats.release_noop);
    checkout.complete(&ids[0], Some(EVENT), "completed").await;
    eventually(
        Duration::from_secs(30),
        "the completion consumer back after the outage",
        || {
            let stats = w.stats.clone();
            async move { (Stats::get(&stats.release_noop) > noops).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        status(&mut conn, &ids[0]).await,
        "expired",
        "a late completion changes nothing"
    );
    // Then three told sessions in checkout, each with at least 2 s of its window left
    // (wave B's if still so), complete: their slots are freed.
    let in_checkout: Vec<String> = eventually(
        Duration::from_secs(30),
        "three told sessions in checkout with 2 s left",
        || {
            let mut c = conn.clone();
            let key = k.deadlines(EVENT);
            let wave_b = wave_b.clone();
            async move {
                let from = waitroom_worker::clock::now_ms() + 2000;
                let mut s: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(from)
                    .arg(format!("({}", UNTOLD as u64))
                    .query_async(&mut c)
                    .await
                    .expect("ZRANGEBYSCORE");
                s.sort_by_key(|sid| !wave_b.contains(sid));
                (s.len() >= 3).then(|| s[..3].to_vec())
            }
        },
    )
    .await;
    for sid in &in_checkout {
        checkout.complete(sid, Some(EVENT), "completed").await;
    }
    for sid in &in_checkout {
        let c = conn.clone();
        eventually(Duration::from_secs(30), "the completion applied", || {
            let mut c = c.clone();
            let sid = sid.clone();
            async move { (status(&mut c, &sid).await == "completed").then_some(()) }
        })
        .await;
        assert!(
            !smembers(&mut conn, &k.processing(EVENT))
                .await
                .contains(sid),
            "{sid}'s slot is freed"
        );
    }

    // Nobody expired untold: every expired session had its QUEUE_READY (read up to
    // every message the worker had published by then).
    let mut expired = Vec::new();
    for sid in &ids {
        if status(&mut conn, sid).await == "expired" {
            expired.push(sid.clone());
        }
    }
    let published = Stats::get(&w.stats.published) as usize;
    let told: HashSet<String> = reader
        .read_until(published, Duration::from_secs(60))
        .iter()
        .map(|m| m.key.clone())
        .collect();
    for sid in &expired {
        assert!(told.contains(sid), "{sid} expired without being told");
    }
    watching.store(false, Ordering::Relaxed);
    monitor.await.expect("monitor");
    assert!(
        peak.load(Ordering::Relaxed) <= 6,
        "capacity exceeded: {peak:?}"
    );
    w.stop().await;
}

/// Kafka gone for good at shutdown (its cluster torn down while the completion
/// consumer is in its group): the worker stops within its shutdown timeout and
/// leaves no runtime thread stuck in librdkafka's consumer close, so the runtime
/// itself drops at once. (Closed in place, the consumer held a runtime thread
/// about ten seconds past the stop here, and once, in a test, for good.) Run on a
/// thread of its own with its own runtime: a hang is a failure, not a test that
/// never ends.
#[test]
fn a_worker_stops_and_its_runtime_drops_when_kafka_is_gone_for_good() {
    let shutdown_timeout = Duration::from_secs(2);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (stopping, stopped_in) = rt.block_on(async {
            let redis = RedisServer::start();
            let kafka = MockKafka::start();
            let w = run_worker(
                settings(&redis.url(), &kafka.bootstrap)
                    .event(EVENT)
                    .shutdown_timeout(shutdown_timeout),
            )
            .await;
            // The consumer is in its group: it has read a message.
            let checkout = CheckoutService::new(&kafka.bootstrap);
            let mut sent = 0;
            eventually(Duration::from_secs(60), "the consumer reads", || {
                let seen = Stats::get(&w.stats.completions_rejected);
                sent += 1;
                let checkout = &checkout;
                async move {
                    if seen > 0 {
                        return Some(());
                    }
                    checkout.send_raw(&format!("warm-{sent}"), b"warm-up").await;
                    None
                }
            })
            .await;
            drop(checkout);
            drop(kafka);
            let stopping = Instant::now();
            w.stop().await;
            (stopping, stopping.elapsed())
        });
        drop(rt);
        let _ = done.send((stopped_in, stopping.elapsed()));
    });
    let (stopped_in, dropped_in) = finished
        .recv_timeout(Duration::from_secs(120))
        .expect("the worker stopped and its runtime dropped within 120 s of Kafka going away");
    // The shutdown timeout bounds the consumer's close and, apart, the flush.
    let bound = shutdown_timeout * 2 + Duration::from_secs(2);
    assert!(stopped_in < bound, "stopping took {stopped_in:?}");
    assert!(
        dropped_in < bound,
        "the runtime dropped {dropped_in:?} after the stop began (stopped in {stopped_in:?})"
    );
}
