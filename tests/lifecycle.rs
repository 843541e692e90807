//! Slot lifecycle: completions, instant refill, expiry, per-event control, the
//! priority lane, and two replicas releasing and reaping at once.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::*;
use waitroom_worker::Stats;
use waitroom_worker::clock;

const EVENT: &str = "gig";

/// Send garbage until the consumer has clearly read some: it has its partitions.
async fn warm_up(checkout: &CheckoutService, stats: &[Arc<Stats>]) -> u64 {
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        for p in 0..4 {
            checkout
                .send_raw(&format!("warm-{sent}-{p}"), b"warm-up")
                .await;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let seen: u64 = stats
            .iter()
            .map(|s| Stats::get(&s.completions_rejected))
            .sum();
        if seen > 0
            && stats
                .iter()
                .all(|s| Stats::get(&s.completions_rejected) > 0)
        {
            // Let every warm-up message land before the test starts counting.
            let all = eventually(Duration::from_secs(30), "warm-up messages consumed", || {
                let n: u64 = stats
                    .iter()
                    .map(|s| Stats::get(&s.completions_rejected))
                    .sum();
                async move { (n >= sent).then_some(n) }
            })
            .await;
            return all;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "completion consumer never got its partitions"
        );
    }
}

async fn wait_scard(conn: &redis::aio::MultiplexedConnection, key: &str, n: u64, what: &str) {
    eventually(Duration::from_secs(20), what, || {
        let mut c = conn.clone();
        let key = key.to_owned();
        async move { (scard(&mut c, &key).await == n).then_some(()) }
    })
    .await;
}

/// Completions for 10 admitted sessions free 10 slots and 10 new sessions are
/// admitted at once, with a 5s interval, long before the next tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_free_slots_and_refill_before_the_next_tick() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "s", 20, clock::now_ms()).await;
    let w = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .process_interval(Duration::from_secs(5))
            .max_concurrent(10)
            .batch_size(10),
    )
    .await;
    wait_scard(&conn, &k.processing(EVENT), 10, "the first 10 admitted").await;
    let checkout = CheckoutService::new(&kafka.bootstrap);
    warm_up(&checkout, std::slice::from_ref(&w.stats)).await;

    // Right after a tick, so the next one is ~5s away.
    let c0 = Stats::get(&w.stats.cycles);
    eventually(Duration::from_secs(10), "a tick", || {
        let s = w.stats.clone();
        async move { (Stats::get(&s.cycles) > c0).then_some(()) }
    })
    .await;
    let ticks = Stats::get(&w.stats.cycles);
    let sent = Instant::now();
    for (i, sid) in ids[..10].iter().enumerate() {
        let event = (i % 2 == 0).then_some(EVENT);
        checkout.complete(sid, event, "completed").await;
    }
    eventually(
        Duration::from_secs(4),
        "10 released and 10 refilled",
        || {
            let (mut c, key, s) = (conn.clone(), k.processing(EVENT), w.stats.clone());
            let want: HashSet<String> = ids[10..].iter().cloned().collect();
            async move {
                let m: HashSet<String> = smembers(&mut c, &key).await.into_iter().collect();
                (Stats::get(&s.released) == 10 && m == want).then_some(())
            }
        },
    )
    .await;
    let took = sent.elapsed();
    assert_eq!(
        Stats::get(&w.stats.cycles),
        ticks,
        "refilled without waiting for a tick (took {took:?})"
    );
    for sid in &ids[..10] {
        let h = hgetall(&mut conn, &k.session(EVENT, sid)).await;
        assert_eq!(h["status"], "completed");
        assert!(h.contains_key("ended_at"));
    }
    w.stop().await;
}

/// Duplicate and garbage completions: no double release, no crash, all counted,
/// and the unusable ones forwarded to the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_garbage_completions_are_counted_and_harmless() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    kafka.create_topic("DLQ", 1);
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "s", 3, clock::now_ms()).await;
    let w = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .max_concurrent(3)
            .dead_letter_topic("DLQ"),
    )
    .await;
    wait_scard(&conn, &k.processing(EVENT), 3, "3 admitted").await;
    let checkout = CheckoutService::new(&kafka.bootstrap);
    let warm = warm_up(&checkout, std::slice::from_ref(&w.stats)).await;

    checkout.complete(&ids[0], Some(EVENT), "completed").await;
    checkout.complete(&ids[0], Some(EVENT), "completed").await;
    checkout.complete(&ids[0], None, "abandoned").await;
    let garbage: [&[u8]; 6] = [
        b"not json at all",
        br#"{"session_id":5}"#,
        br#"{"session_id":"ghost"}"#,
        br#"{"session_id":"s-000001","event_id":"another-event"}"#,
        br#"{"session_id":"s-000001","outcome":"won"}"#,
        b"\xff\xfe\x00binary",
    ];
    for g in garbage {
        checkout.send_raw("g", g).await;
    }
    checkout.complete(&ids[1], Some(EVENT), "abandoned").await;
    eventually(Duration::from_secs(20), "all completions handled", || {
        let s = w.stats.clone();
        async move {
            (Stats::get(&s.released) == 2
                && Stats::get(&s.release_noop) == 2
                && Stats::get(&s.completions_rejected) == warm + 6)
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        smembers(&mut conn, &k.processing(EVENT)).await,
        vec![ids[2].clone()]
    );
    assert_eq!(
        hgetall(&mut conn, &k.session(EVENT, &ids[0])).await["status"],
        "completed"
    );
    assert_eq!(
        hgetall(&mut conn, &k.session(EVENT, &ids[1])).await["status"],
        "abandoned"
    );
    assert_eq!(
        hgetall(&mut conn, &k.session(EVENT, &ids[2])).await["status"],
        "admitted"
    );

    let mut dlq = TopicReaderRaw::new(&kafka.bootstrap, "DLQ");
    let n = dlq.count_until(warm as usize + 6, Duration::from_secs(20));
    assert_eq!(n, warm as usize + 6, "every unusable message forwarded");
    w.stop().await;
}

/// With a 2s checkout window, unconfirmed sessions expire and their slots are
/// refilled; completed ones are not expired later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_sessions_expire_and_their_slots_are_refilled() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let w = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .process_interval(Duration::from_millis(100))
            .max_concurrent(5)
            .checkout_window(Duration::from_secs(2))
            .session_ttl(Duration::from_secs(30)),
    )
    .await;
    let checkout = CheckoutService::new(&kafka.bootstrap);
    warm_up(&checkout, std::slice::from_ref(&w.stats)).await;

    let ids = enqueue(&mut conn, EVENT, "s", 10, clock::now_ms()).await;
    wait_scard(&conn, &k.processing(EVENT), 5, "first 5 admitted").await;
    checkout.complete(&ids[0], Some(EVENT), "completed").await;
    checkout.complete(&ids[1], Some(EVENT), "completed").await;

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let monitor = {
        let (mut c, key, stop, peak) = (
            conn.clone(),
            k.processing(EVENT),
            stop.clone(),
            peak.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(scard(&mut c, &key).await, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Everyone gets a turn: 2 completed, the other 8 expire, slots refilled each time.
    eventually(Duration::from_secs(30), "all slots back", || {
        let (mut c, s) = (conn.clone(), w.stats.clone());
        let (q, p) = (k.queue(EVENT), k.processing(EVENT));
        async move {
            (zcard(&mut c, &q).await == 0
                && scard(&mut c, &p).await == 0
                && Stats::get(&s.expired) == 8)
                .then_some(())
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    monitor.await.expect("monitor");
    assert!(
        peak.load(Ordering::Relaxed) <= 5,
        "capacity exceeded: {}",
        peak.load(Ordering::Relaxed)
    );
    for sid in &ids[..2] {
        assert_eq!(
            hgetall(&mut conn, &k.session(EVENT, sid)).await["status"],
            "completed"
        );
    }
    for sid in &ids[2..] {
        assert_eq!(
            hgetall(&mut conn, &k.session(EVENT, sid)).await["status"],
            "expired",
            "{sid}"
        );
    }
    assert_eq!(Stats::get(&w.stats.released), 2);
    assert_eq!(
        zcard(&mut conn, &k.deadlines(EVENT)).await,
        0,
        "no deadline left behind"
    );
    w.stop().await;
}

/// A session put in processing by something else, without a deadline, is adopted
/// (given one) and then expires like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_without_a_deadline_are_adopted_and_expire() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    redis::cmd("SADD")
        .arg(k.processing(EVENT))
        .arg("foreign")
        .query_async::<()>(&mut conn)
        .await
        .expect("SADD");
    let mut w = start_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .checkout_window(Duration::from_secs(1))
            .publish_timeout(Duration::from_millis(500))
            .session_ttl(Duration::from_secs(10)),
    )
    .await;
    assert!(w.cycle().await);
    assert_eq!(Stats::get(&w.stats().adopted), 1);
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(k.deadlines(EVENT))
        .arg("foreign")
        .query_async(&mut conn)
        .await
        .expect("ZSCORE");
    assert!(score.is_some(), "adopted with a deadline");
    let mut c2 = conn.clone();
    let key = k.processing(EVENT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while scard(&mut c2, &key).await > 0 {
        assert!(Instant::now() < deadline, "adopted slot never came back");
        assert!(w.cycle().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(Stats::get(&w.stats().expired), 1);
}

/// `paused`, `max_concurrent`, `batch_size` and `new_users_per_minute` from the
/// config hash take effect on the next cycle; bad numbers fall back to the
/// defaults, a bad `paused` keeps the event paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_overrides_take_effect_without_a_restart() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    enqueue(&mut conn, EVENT, "s", 200, clock::now_ms()).await;
    let mut w = start_worker(settings(&redis.url(), &kafka.bootstrap).event(EVENT)).await;
    let cfg_conn = conn.clone();
    let hset = |f: &'static str, v: &'static str| {
        let (mut c, key) = (cfg_conn.clone(), k.config(EVENT));
        async move {
            redis::cmd("HSET")
                .arg(key)
                .arg(f)
                .arg(v)
                .query_async::<()>(&mut c)
                .await
                .expect("HSET")
        }
    };
    let proc_key = k.processing(EVENT);

    hset("paused", "1").await;
    let o = w.admit_event(EVENT).await.expect("admit");
    assert!(o.paused);
    assert_eq!((o.admitted, scard(&mut conn, &proc_key).await), (0, 0));
    hset("paused", "0").await;
    assert_eq!(
        w.admit_event(EVENT).await.expect("admit").admitted,
        10,
        "default batch"
    );

    hset("batch_size", "3").await;
    assert_eq!(w.admit_event(EVENT).await.expect("admit").admitted, 3);

    hset("max_concurrent", "15").await;
    hset("batch_size", "100").await;
    assert_eq!(
        w.admit_event(EVENT).await.expect("admit").admitted,
        2,
        "15 - 13 in use"
    );
    assert_eq!(w.admit_event(EVENT).await.expect("admit").admitted, 0);
    assert_eq!(scard(&mut conn, &proc_key).await, 15);

    hset("max_concurrent", "1000").await;
    // The cap is a GCRA (admit v6): after an idle period a burst of `rate_burst` goes
    // at once, then one every 60000 / rate ms, shared by every call.
    redis::cmd("DEL")
        .arg(k.rate(EVENT))
        .query_async::<()>(&mut conn)
        .await
        .expect("DEL");
    hset("new_users_per_minute", "20").await;
    hset("rate_burst", "20").await;
    let first = w.admit_event(EVENT).await.expect("admit");
    let second = w.admit_event(EVENT).await.expect("admit");
    assert_eq!(first.admitted, 20, "up to the burst");
    assert_eq!(
        second.admitted, 0,
        "the cap is shared by the calls (the next cell is 3 s away)"
    );
    assert_eq!(second.rate_left, Some(0));

    for (f, v) in [
        ("max_concurrent", "lots"),
        ("batch_size", "-4"),
        ("paused", "maybe"),
        ("new_users_per_minute", "1.5"),
    ] {
        hset(f, v).await;
    }
    let before = scard(&mut conn, &proc_key).await;
    let o = w
        .admit_event(EVENT)
        .await
        .expect("bad values never stop the event");
    let mut invalid = o.invalid_config.clone();
    invalid.sort();
    assert_eq!(
        invalid,
        [
            "batch_size",
            "max_concurrent",
            "new_users_per_minute",
            "paused"
        ]
    );
    assert_eq!(
        (o.capacity, o.batch, o.paused),
        (100, 10, true),
        "defaults used; an invalid paused keeps the event paused"
    );
    assert_eq!(o.admitted, 0);
    hset("paused", "off").await;
    let o = w.admit_event(EVENT).await.expect("admit");
    assert!(!o.paused);
    assert_eq!(o.admitted, 10.min(100 - before));
}

/// The priority lane goes first; FIFO within each lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_lane_goes_first_and_each_lane_is_fifo() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let t0 = clock::now_ms();
    let regular = enqueue(&mut conn, EVENT, "q", 4, t0).await;
    // Priority users joined later, yet go first.
    let mut p = redis::pipe();
    let vip: Vec<String> = (0..3).map(|i| format!("vip-{i}")).collect();
    for (i, sid) in vip.iter().enumerate() {
        p.cmd("HSET")
            .arg(k.session(EVENT, sid))
            .arg("status")
            .arg("queued")
            .arg("user_id")
            .arg(format!("u-{sid}"))
            .ignore();
        p.cmd("ZADD")
            .arg(k.priority(EVENT))
            .arg(t0 + 1000 + i as u64)
            .arg(sid)
            .ignore();
    }
    p.query_async::<()>(&mut conn).await.expect("priority lane");
    let mut w = start_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .batch_size(2),
    )
    .await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let o = w.admit_event(EVENT).await.expect("admit");
        for raw in o.entries {
            let e = waitroom_worker::outbox::OutboxEntry::parse(raw).expect("entry");
            order.push(e.session_id);
        }
    }
    let want: Vec<String> = vip.iter().chain(regular.iter()).cloned().collect();
    assert_eq!(order, want);
}

/// Two workers consuming completions and reaping at once: no slot released twice,
/// none lost, capacity never exceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_release_and_reap_without_double_work() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let replica = || {
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .process_interval(Duration::from_millis(50))
            .max_concurrent(10)
            .checkout_window(Duration::from_secs(2))
            .session_ttl(Duration::from_secs(60))
            .consumer_session_timeout(Duration::from_secs(3))
    };
    let a = run_worker(replica()).await;
    let b = run_worker(replica()).await;
    let checkout = CheckoutService::new(&kafka.bootstrap);
    warm_up(&checkout, &[a.stats.clone(), b.stats.clone()]).await;

    let users = 80;
    let ids = enqueue(&mut conn, EVENT, "s", users, clock::now_ms()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    // The checkout: completes two of every three sessions it sees in checkout (some
    // twice), leaves the rest to expire.
    let sim = {
        let (mut c, key, stop, peak) = (
            conn.clone(),
            k.processing(EVENT),
            stop.clone(),
            peak.clone(),
        );
        let checkout = CheckoutService::new(&kafka.bootstrap);
        tokio::spawn(async move {
            let mut done = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let members = smembers(&mut c, &key).await;
                peak.fetch_max(members.len() as u64, Ordering::Relaxed);
                for sid in members {
                    let n: usize = sid.trim_start_matches("s-").parse().unwrap_or(0);
                    if n % 3 != 2 && done.insert(sid.clone()) {
                        checkout.complete(&sid, Some(EVENT), "completed").await;
                        if n.is_multiple_of(5) {
                            checkout.complete(&sid, Some(EVENT), "completed").await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            done.len()
        })
    };
    eventually(Duration::from_secs(90), "every slot back", || {
        let (mut c, q, p) = (conn.clone(), k.queue(EVENT), k.processing(EVENT));
        let (sa, sb) = (a.stats.clone(), b.stats.clone());
        async move {
            let returned = Stats::get(&sa.released)
                + Stats::get(&sb.released)
                + Stats::get(&sa.expired)
                + Stats::get(&sb.expired);
            (zcard(&mut c, &q).await == 0
                && scard(&mut c, &p).await == 0
                && returned == users as u64)
                .then_some(())
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let completed = sim.await.expect("checkout sim");
    let (sa, sb) = (a.stats.clone(), b.stats.clone());
    a.stop().await;
    b.stop().await;
    let (a, b) = (sa, sb);
    assert!(
        peak.load(Ordering::Relaxed) <= 10,
        "capacity exceeded: {}",
        peak.load(Ordering::Relaxed)
    );
    let admitted = Stats::get(&a.admitted) + Stats::get(&b.admitted);
    assert_eq!(admitted, users as u64, "each user admitted once");
    let released = Stats::get(&a.released) + Stats::get(&b.released);
    let expired = Stats::get(&a.expired) + Stats::get(&b.expired);
    assert_eq!(
        released + expired,
        users as u64,
        "each slot returned exactly once"
    );
    assert!(released as usize <= completed);
    assert!(expired > 0 && released > 0);
    let mut statuses = HashSet::new();
    for sid in &ids {
        statuses.insert(hgetall(&mut conn, &k.session(EVENT, sid)).await["status"].clone());
    }
    assert!(
        statuses.iter().all(|s| s == "completed" || s == "expired"),
        "{statuses:?}"
    );
    assert_eq!(zcard(&mut conn, &k.deadlines(EVENT)).await, 0);
}

/// How many times Redis ran the release script for `session` (from the slow log,
/// which the test set to log every command).
async fn release_runs(conn: &mut redis::aio::MultiplexedConnection, session: &str) -> usize {
    let sha = waitroom_worker::scripts::Scripts::new()
        .release
        .sha()
        .to_owned();
    script_runs(conn, &sha)
        .await
        .iter()
        .filter(|args| args.iter().any(|a| a == session))
        .count()
}

/// A completion whose release timed out while Redis hung, and was applied when it
/// woke, is counted as a release, once; a duplicate of it (replayed while Redis is
/// fine, or while it hangs again) stays a no-op. `released` ends at 5 for 5 freed
/// slots.
///
/// Before, the retry after the timeout found the slot already free and counted the
/// completion as `release_noop`: released 4 for 5 freed slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_applied_after_its_timeout_is_counted_once() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "s", 5, clock::now_ms()).await;
    let w = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .max_concurrent(5)
            .redis_timeout(Duration::from_millis(300)),
    )
    .await;
    wait_scard(&conn, &k.processing(EVENT), 5, "5 admitted").await;
    let checkout = CheckoutService::new(&kafka.bootstrap);
    warm_up(&checkout, std::slice::from_ref(&w.stats)).await;
    let counts = |s: &Arc<Stats>| (Stats::get(&s.released), Stats::get(&s.release_noop));

    for sid in &ids[..4] {
        checkout.complete(sid, Some(EVENT), "completed").await;
    }
    eventually(Duration::from_secs(20), "4 released", || {
        let s = w.stats.clone();
        async move { (counts(&s) == (4, 0)).then_some(()) }
    })
    .await;

    // Log every command, so the test can see the release run more than once.
    log_every_command(&mut conn).await;
    let hang = |conn: &redis::aio::MultiplexedConnection| {
        let mut c = conn.clone();
        async move {
            redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(1500)
                .arg("WRITE")
                .query_async::<()>(&mut c)
                .await
                .expect("CLIENT PAUSE");
        }
    };
    // Redis hangs (writes and scripts wait for 1.5 s) while the last completion is
    // applied: the worker's attempts time out after 300 ms, and all of them run
    // when Redis wakes.
    hang(&conn).await;
    checkout.complete(&ids[4], Some(EVENT), "completed").await;
    eventually(
        Duration::from_secs(20),
        "the fifth completion handled",
        || {
            let s = w.stats.clone();
            async move {
                let (released, noop) = counts(&s);
                (released + noop >= 5).then_some(())
            }
        },
    )
    .await;
    assert_eq!(scard(&mut conn, &k.processing(EVENT)).await, 0);
    assert_eq!(
        hgetall(&mut conn, &k.session(EVENT, &ids[4])).await["status"],
        "completed"
    );
    let runs = release_runs(&mut conn, &ids[4]).await;
    assert!(
        runs >= 2,
        "the release ran {runs} time(s): its first attempt did not time out while Redis hung, so this test would prove nothing"
    );
    assert_eq!(
        counts(&w.stats),
        (5, 0),
        "(released, release_noop): every freed slot counted as released, once"
    );

    // A duplicate of it, replayed while Redis is fine, then while Redis hangs: a
    // no-op both times.
    checkout.complete(&ids[4], Some(EVENT), "completed").await;
    eventually(Duration::from_secs(20), "the duplicate handled", || {
        let s = w.stats.clone();
        async move { (counts(&s).1 >= 1).then_some(()) }
    })
    .await;
    let before = release_runs(&mut conn, &ids[4]).await;
    hang(&conn).await;
    checkout.complete(&ids[4], Some(EVENT), "completed").await;
    eventually(
        Duration::from_secs(20),
        "the second duplicate handled",
        || {
            let s = w.stats.clone();
            async move {
                let (released, noop) = counts(&s);
                (released + noop >= 7).then_some(())
            }
        },
    )
    .await;
    let runs = release_runs(&mut conn, &ids[4]).await - before;
    assert!(
        runs >= 2,
        "the duplicate's release ran {runs} time(s) after the second hang: it did not time out"
    );
    assert_eq!(
        counts(&w.stats),
        (5, 2),
        "(released, release_noop): duplicates are no-ops"
    );
    w.stop().await;
}
