//! Admission core against a real redis-server and librdkafka's mock cluster.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::*;
use waitroom_worker::Keys;
use waitroom_worker::Stats;
use waitroom_worker::clock;
use waitroom_worker::scripts::Scripts;
use waitroom_worker::scripts::admit::{self, AdmitArgs};
use waitroom_worker::shutdown;
use waitroom_worker::token::{Signer, Verifier};

const EVENT: &str = "concert-2024";

async fn outbox_empty(conn: &mut redis::aio::MultiplexedConnection, k: &Keys, event: &str) {
    let key = k.outbox(event);
    eventually(Duration::from_secs(20), "the outbox to drain", || {
        let mut c = conn.clone();
        let key = key.clone();
        async move { (zcard(&mut c, &key).await == 0).then_some(()) }
    })
    .await;
}

/// The seed's walk-through: 150 queued, 50 already in checkout, capacity 100:
/// exactly 50 admitted, in queue order, with their fields, tokens that verify and
/// one QUEUE_READY each with the seed's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_walkthrough_admits_exactly_the_free_slots_in_order() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let t0 = clock::now_ms() - 60_000;
    let queued = enqueue(&mut conn, EVENT, "session", 150, t0).await;
    let mut p = redis::pipe();
    for i in 0..50 {
        p.cmd("SADD")
            .arg(k.processing(EVENT))
            .arg(format!("busy-{i}"))
            .ignore();
    }
    p.query_async::<()>(&mut conn)
        .await
        .expect("fill processing");

    let mut w = start_worker(settings(&redis.url(), &kafka.bootstrap).event(EVENT)).await;
    // Default batch 10: five cycles fill the 50 free slots; more cycles change nothing.
    for _ in 0..8 {
        assert!(w.cycle().await);
    }
    assert_eq!(scard(&mut conn, &k.processing(EVENT)).await, 100);
    assert_eq!(zcard(&mut conn, &k.queue(EVENT)).await, 100);
    // Published; on a loaded machine a publish may time out and wait for a later
    // cycle (as the running loop would give it), so cycles go on until it drained.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while zcard(&mut conn, &k.outbox(EVENT)).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(w.cycle().await);
    }
    assert_eq!(scard(&mut conn, &k.processing(EVENT)).await, 100);

    let admitted = &queued[..50];
    let verifier = Verifier::hs256(SECRET.as_bytes(), "waitroom", "checkout").expect("verifier");
    for sid in admitted {
        let is_member: bool = redis::cmd("SISMEMBER")
            .arg(k.processing(EVENT))
            .arg(sid)
            .query_async(&mut conn)
            .await
            .expect("SISMEMBER");
        assert!(is_member, "{sid} should hold a slot");
        let h = hgetall(&mut conn, &k.session(EVENT, sid)).await;
        assert_eq!(h["status"], "admitted");
        assert!(h["admitted_at"].ends_with('Z') && h["checkout_expires_at"].ends_with('Z'));
        let claims = verifier
            .verify(&h["checkout_token"])
            .expect("token verifies");
        assert_eq!(claims.sid, *sid);
        assert_eq!(claims.eid, EVENT);
        assert_eq!(claims.sub, h["user_id"]);
        assert_eq!(
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(claims.exp)
            )
            .to_string(),
            h["checkout_expires_at"],
            "token exp must be the checkout deadline"
        );
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k.session(EVENT, sid))
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        assert!(ttl > 0, "admitted session has a TTL");
    }
    for sid in &queued[50..] {
        let h = hgetall(&mut conn, &k.session(EVENT, sid)).await;
        assert_eq!(h["status"], "queued", "{sid} must still wait");
    }

    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    let msgs = reader.read_until(50, Duration::from_secs(20)).to_vec();
    let order: Vec<String> = msgs.iter().map(|m| m.key.clone()).collect();
    assert_eq!(order, admitted.to_vec(), "published in queue order");
    for m in &msgs {
        let v = m.value.as_object().expect("object");
        let fields: Vec<&str> = v.keys().map(String::as_str).collect();
        for f in [
            "session_id",
            "user_id",
            "event_id",
            "checkout_token",
            "admitted_at",
            "expires_at",
            "timestamp",
        ] {
            assert!(fields.contains(&f), "message lacks {f}: {v:?}");
        }
        assert_eq!(v["session_id"], m.key.as_str());
        assert_eq!(v["event_id"], EVENT);
        let h = hgetall(&mut conn, &k.session(EVENT, &m.key)).await;
        assert_eq!(v["checkout_token"], h["checkout_token"].as_str());
        assert_eq!(v["admitted_at"], h["admitted_at"].as_str());
        assert_eq!(v["expires_at"], h["checkout_expires_at"].as_str());
        assert_eq!(m.message_id.len(), 40, "stable message id header");
    }
    assert_eq!(Stats::get(&w.stats().admitted), 50);
}

/// Capacity holds over many cycles with two workers at once, while slots are
/// freed under them; no session is admitted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_holds_with_two_workers_and_no_session_is_admitted_twice() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let users = 400;
    enqueue(&mut conn, EVENT, "s", users, clock::now_ms()).await;
    let (trigger, listener) = shutdown::channel();
    let mut handles = Vec::new();
    let mut stats = Vec::new();
    for _ in 0..2 {
        let w = start_worker(
            settings(&redis.url(), &kafka.bootstrap)
                .event(EVENT)
                .max_concurrent(20)
                .batch_size(7),
        )
        .await;
        stats.push(w.stats());
        handles.push(tokio::spawn(w.run(listener.clone())));
    }

    // A checkout stand-in: frees the slots of users who were told (a real deadline
    // in the deadlines set, not an untold mark), as the checkout service completes
    // only users it heard of; a monitor watches the count. (Freeing untold slots
    // made the test flaky: a publish that timed out on a loaded machine is retried
    // through the claim, which drops the entry of a slot already freed, nobody to
    // tell, and its message never comes.)
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let checkout = {
        let (mut c, stop, peak, processing, deadlines) = (
            conn.clone(),
            stop.clone(),
            peak.clone(),
            k.processing(EVENT),
            k.deadlines(EVENT),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = scard(&mut c, &processing).await;
                peak.fetch_max(n, Ordering::Relaxed);
                let told: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(&deadlines)
                    .arg("-inf")
                    .arg(format!("({}", admit::UNTOLD_MS))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(3)
                    .query_async(&mut c)
                    .await
                    .expect("ZRANGEBYSCORE");
                if !told.is_empty() {
                    let _: () = redis::pipe()
                        .atomic()
                        .cmd("SREM")
                        .arg(&processing)
                        .arg(&told)
                        .ignore()
                        .cmd("ZREM")
                        .arg(&deadlines)
                        .arg(&told)
                        .ignore()
                        .query_async(&mut c)
                        .await
                        .expect("free told slots");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let queue_key = k.queue(EVENT);
    eventually(Duration::from_secs(60), "the queue to empty", || {
        let mut c = conn.clone();
        let key = queue_key.clone();
        async move { (zcard(&mut c, &key).await == 0).then_some(()) }
    })
    .await;
    // Drained while the workers run: a publish that timed out on a loaded machine is
    // retried by them (after a stop, nobody would).
    outbox_empty(&mut conn, &k, EVENT).await;
    stop.store(true, Ordering::Relaxed);
    checkout.await.expect("checkout task");
    trigger.trigger();
    for h in handles {
        h.await.expect("worker ends");
    }
    assert!(
        peak.load(Ordering::Relaxed) <= 20,
        "processing peaked at {}",
        peak.load(Ordering::Relaxed)
    );
    let total: u64 = stats.iter().map(|s| Stats::get(&s.admitted)).sum();
    assert_eq!(
        total, users as u64,
        "every user admitted exactly once across both workers"
    );
    assert!(
        stats.iter().all(|s| Stats::get(&s.admitted) > 0),
        "both workers shared the work"
    );

    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    reader.read_until(users, Duration::from_secs(30));
    let by = reader.by_session();
    assert_eq!(by.len(), users, "one message per admitted session");
    assert!(
        by.values().all(|v| v.len() == 1),
        "no duplicate without a crash"
    );
}

/// Members whose session hash is missing, not `queued`, lacks a user or belongs to
/// another event are dropped from the queue, take no slot, and are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_sessions_are_dropped_and_take_no_slot() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let t0 = clock::now_ms();
    let good = enqueue(&mut conn, EVENT, "good", 3, t0 + 100).await;
    let bad: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("missing", vec![]),
        ("admitted", vec![("status", "admitted"), ("user_id", "u")]),
        ("completed", vec![("status", "completed"), ("user_id", "u")]),
        ("no-user", vec![("status", "queued")]),
        (
            "other-event",
            vec![
                ("status", "queued"),
                ("user_id", "u"),
                ("event_id", "another"),
            ],
        ),
    ];
    let mut p = redis::pipe();
    for (i, (sid, fields)) in bad.iter().enumerate() {
        for (f, v) in fields {
            p.cmd("HSET")
                .arg(k.session(EVENT, sid))
                .arg(*f)
                .arg(*v)
                .ignore();
        }
        p.cmd("ZADD")
            .arg(k.queue(EVENT))
            .arg(t0 + i as u64)
            .arg(*sid)
            .ignore();
    }
    // A session key of the wrong type must not break the call.
    p.cmd("SET")
        .arg(k.session(EVENT, "string-key"))
        .arg("x")
        .ignore();
    p.cmd("ZADD")
        .arg(k.queue(EVENT))
        .arg(t0 + 50)
        .arg("string-key")
        .ignore();
    p.query_async::<()>(&mut conn).await.expect("setup");

    let mut w = start_worker(settings(&redis.url(), &kafka.bootstrap).event(EVENT)).await;
    assert!(w.cycle().await);
    assert_eq!(
        zcard(&mut conn, &k.queue(EVENT)).await,
        0,
        "all dropped or admitted"
    );
    let members: HashSet<String> = redis::cmd("SMEMBERS")
        .arg(k.processing(EVENT))
        .query_async(&mut conn)
        .await
        .expect("SMEMBERS");
    assert_eq!(members, good.iter().cloned().collect::<HashSet<_>>());
    assert_eq!(Stats::get(&w.stats().skipped), 6);
    assert_eq!(Stats::get(&w.stats().admitted), 3);
    let h = hgetall(&mut conn, &k.session(EVENT, "completed")).await;
    assert_eq!(
        h["status"], "completed",
        "a skipped session's hash is left as it was"
    );
}

/// A flushed script cache (or a restarted Redis) does not stop admissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_between_cycles_does_not_stop_admissions() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    enqueue(&mut conn, EVENT, "s", 30, clock::now_ms()).await;
    let mut w = start_worker(settings(&redis.url(), &kafka.bootstrap).event(EVENT)).await;
    assert!(w.cycle().await);
    assert_eq!(scard(&mut conn, &k.processing(EVENT)).await, 10);
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .expect("SCRIPT FLUSH");
    assert!(w.cycle().await);
    assert_eq!(scard(&mut conn, &k.processing(EVENT)).await, 20);
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .expect("SCRIPT FLUSH");
    assert!(w.cycle().await);
    assert_eq!(scard(&mut conn, &k.processing(EVENT)).await, 30);
    outbox_empty(&mut conn, &k, EVENT).await;
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    assert_eq!(reader.read_until(30, Duration::from_secs(20)).len(), 30);
}

/// With Kafka down, admissions go on and the outbox grows; when Kafka returns the
/// outbox drains and every admitted session has its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_loses_nothing_and_the_outbox_drains_after() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "s", 60, clock::now_ms()).await;
    let mut w = start_worker(settings(&redis.url(), &kafka.bootstrap).event(EVENT)).await;
    assert!(w.cycle().await);
    outbox_empty(&mut conn, &k, EVENT).await;

    kafka.brokers_down();
    for _ in 0..3 {
        assert!(w.cycle().await, "a Kafka outage is not a Redis failure");
    }
    assert_eq!(
        scard(&mut conn, &k.processing(EVENT)).await,
        40,
        "admissions continued"
    );
    // Messages of the outage time out (publish timeout 1s) and stay in the outbox.
    let outbox_key = k.outbox(EVENT);
    eventually(
        Duration::from_secs(20),
        "failed publishes to be counted",
        || {
            let s = w.stats();
            async move { (Stats::get(&s.publish_failures) >= 30).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        zcard(&mut conn, &outbox_key).await,
        30,
        "the outbox holds every unpublished admission"
    );

    kafka.brokers_up();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while zcard(&mut conn, &outbox_key).await > 0 || zcard(&mut conn, &k.queue(EVENT)).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "outbox did not drain after Kafka returned"
        );
        assert!(w.cycle().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outbox_empty(&mut conn, &k, EVENT).await;
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    reader.read_until(60, Duration::from_secs(20));
    let by = reader.by_session();
    for sid in &ids {
        assert!(by.contains_key(sid), "{sid} has no QUEUE_READY");
    }
}

/// A worker that died between the admit call and the publish: the admissions sit in
/// the outbox; the next worker publishes them, with the same token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_of_a_dead_worker_are_published_by_the_next_one() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "s", 5, clock::now_ms()).await;

    // The "dead" worker: ran the admit script and nothing after it.
    let scripts = Scripts::new();
    let outcome = admit::admit(
        &scripts.admit,
        &mut conn,
        &k,
        EVENT,
        &AdmitArgs {
            default_max_concurrent: 100,
            default_batch_size: 10,
            checkout_window: Duration::from_secs(900),
            session_ttl: Duration::from_secs(7200),
            outbox_lease: Duration::from_millis(500),
            max_unpublished_age: Duration::from_secs(600),
            process_interval: Duration::from_secs(1),
            claim_window: Duration::ZERO,
            waiter_idle_timeout: Duration::ZERO,
            adaptive: false,
            min_concurrent_percent: 10,
        },
    )
    .await
    .expect("admit");
    assert_eq!(outcome.admitted, 5);
    assert_eq!(zcard(&mut conn, &k.outbox(EVENT)).await, 5);
    // The admission's instants, as the script stamped them on Redis's clock.
    let admitted: HashMap<String, waitroom_worker::outbox::OutboxEntry> = outcome
        .entries
        .iter()
        .map(|raw| {
            let e = waitroom_worker::outbox::OutboxEntry::parse(raw.clone()).expect("entry");
            (e.session_id.clone(), e)
        })
        .collect();
    for sid in &ids {
        let h = hgetall(&mut conn, &k.session(EVENT, sid)).await;
        assert!(
            !h.contains_key("checkout_token"),
            "the dead worker wrote no token"
        );
    }

    let mut w = start_worker(settings(&redis.url(), &kafka.bootstrap).event(EVENT)).await;
    let outbox_key = k.outbox(EVENT);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while zcard(&mut conn, &outbox_key).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pending admissions were not published"
        );
        assert!(w.cycle().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        Stats::get(&w.stats().admitted),
        0,
        "nothing new was admitted"
    );

    let signer = Signer::hs256(SECRET.as_bytes(), "waitroom", "checkout").expect("signer");
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    let msgs = reader.read_until(5, Duration::from_secs(20)).to_vec();
    for m in msgs {
        let h = hgetall(&mut conn, &k.session(EVENT, &m.key)).await;
        let e = &admitted[&m.key];
        let expected = signer
            .sign(&signer.claims(EVENT, &m.key, &h["user_id"], e.admitted_ms, e.deadline_ms))
            .expect("sign");
        assert_eq!(h["checkout_token"], expected, "same admission, same token");
        assert_eq!(m.value["checkout_token"], expected.as_str());
    }
}

/// A poisoned outbox entry (a time past year 9999) costs only itself: the other
/// entries of its event and every other event are published, it is moved aside (its
/// `:outbox:invalid` key, holding garbage, is moved aside first) and its slot comes
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_outbox_entry_costs_only_itself() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let (p, q) = ("poisoned", "neighbour");
    let now = clock::now_ms();
    let p_ids = enqueue(&mut conn, p, "p", 3, now).await;
    let q_ids = enqueue(&mut conn, q, "q", 3, now).await;
    // An admission whose entry was corrupted: it holds a slot with an untold mark.
    let poison = r#"["p-poison","user-x",253402300800000,253402300800000]"#;
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(k.outbox(p))
        .arg(0)
        .arg(poison)
        .ignore()
        .cmd("SADD")
        .arg(k.processing(p))
        .arg("p-poison")
        .ignore()
        .cmd("ZADD")
        .arg(k.deadlines(p))
        .arg(1_125_899_906_842_624u64 + now)
        .arg("p-poison")
        .ignore()
        .cmd("SET")
        .arg(k.outbox_invalid(p))
        .arg("not a sorted set")
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("seed");

    let w = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(p)
            .event(q)
            .checkout_window(Duration::from_secs(5))
            .session_ttl(Duration::from_secs(600)),
    )
    .await;
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    let told: HashSet<String> = reader
        .read_until(6, Duration::from_secs(30))
        .iter()
        .map(|m| m.key.clone())
        .collect();
    for sid in p_ids.iter().chain(&q_ids) {
        assert!(told.contains(sid), "{sid} was not told");
    }
    assert!(!told.contains("p-poison"));
    assert!(Stats::get(&w.stats.outbox_invalid) >= 1);
    // It is moved aside, and its slot comes back.
    eventually(
        Duration::from_secs(20),
        "the poisoned entry moved aside",
        || {
            let mut c = conn.clone();
            let k = k.clone();
            async move {
                let aside = zcard(&mut c, &k.outbox_invalid(p)).await == 1;
                let members = smembers(&mut c, &k.processing(p)).await;
                (aside && !members.iter().any(|m| m == "p-poison")).then_some(())
            }
        },
    )
    .await;
    assert_eq!(zcard(&mut conn, &k.outbox(p)).await, 0);
    let garbage: String = redis::cmd("GET")
        .arg(format!("{}:corrupt", k.outbox_invalid(p)))
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(
        garbage, "not a sorted set",
        "the garbage key was moved aside, not lost"
    );
    w.stop().await;
}

/// Issue 14: a token is written in the same atomic step as `status=admitted`, so
/// whoever reads a session hash (the API, another replica) never finds it admitted
/// without its token, however the read falls between the worker's steps. A watcher
/// reads every session (one HMGET each, atomic per hash) over and over while a
/// running worker admits 1,500 sessions 50 at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_is_ever_seen_admitted_without_its_token() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let n = 1500;
    let queued = enqueue(&mut conn, EVENT, "s", n, clock::now_ms() - 60_000).await;
    let running = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .max_concurrent(n as u64)
            .batch_size(50),
    )
    .await;
    let (mut reads, mut partial, mut bare) = (0u64, 0u64, Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut p = redis::pipe();
        for sid in &queued {
            p.cmd("HMGET")
                .arg(k.session(EVENT, sid))
                .arg("status")
                .arg("checkout_token");
        }
        let rows: Vec<(Option<String>, Option<String>)> =
            p.query_async(&mut conn).await.expect("HMGET");
        reads += 1;
        let admitted = rows
            .iter()
            .filter(|(s, _)| s.as_deref() == Some("admitted"))
            .count();
        for (sid, (status, token)) in queued.iter().zip(&rows) {
            if status.as_deref() == Some("admitted") && token.is_none() {
                bare.push(sid.clone());
            }
        }
        if admitted > 0 && admitted < n {
            partial += 1;
        }
        if admitted == n || std::time::Instant::now() > deadline {
            break;
        }
    }
    running.stop().await;
    assert!(
        bare.is_empty(),
        "seen admitted without a token: {:?}",
        &bare[..bare.len().min(5)]
    );
    assert!(
        partial > 0,
        "the watcher never saw the admission under way ({reads} reads)"
    );
    assert_eq!(scard(&mut conn, &k.processing(EVENT)).await, n as u64);
    // The tokens written with the admission are the ones published.
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    let msgs = reader.read_until(n, Duration::from_secs(30)).to_vec();
    assert_eq!(msgs.len(), n);
    let verifier = Verifier::hs256(SECRET.as_bytes(), "waitroom", "checkout").expect("verifier");
    for m in &msgs {
        let h = hgetall(&mut conn, &k.session(EVENT, &m.key)).await;
        assert_eq!(m.value["checkout_token"], h["checkout_token"].as_str());
        let c = verifier
            .verify(&h["checkout_token"])
            .expect("token verifies");
        assert_eq!(c.sid, m.key);
        assert_eq!(m.value["admitted_at"], h["admitted_at"].as_str());
        assert_eq!(m.value["expires_at"], h["checkout_expires_at"].as_str());
    }
}

/// The signed admit call admits only a waiter whose token it carries, signed for
/// that waiter's user, at an instant close to Redis's clock; else it stops at the
/// waiter (who stays first in line) and names the waiters to sign for. Malformed
/// token arguments are refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_admission_needs_the_waiters_own_token() {
    use waitroom_worker::scripts::{self, admit::Signed};
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let queued = enqueue(&mut conn, EVENT, "w", 3, clock::now_ms() - 60_000).await;
    let s = Scripts::new();
    let a = admit_args(10, 10);
    let now: u64 = {
        let (sec, us): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .expect("TIME");
        sec * 1000 + us / 1000
    };
    let run = |signed: Signed| {
        let mut c = conn.clone();
        let s = &s;
        let k = &k;
        let a = &a;
        async move {
            let call = admit::call_signed(&s.admit, k, EVENT, a, &signed);
            let mut r = scripts::run_batch(&mut c, std::slice::from_ref(&call))
                .await
                .expect("pipeline");
            r.pop().expect("one reply")
        }
    };
    let tok = |sid: &str, user: &str| (sid.to_owned(), user.to_owned(), format!("tok-{sid}"));

    // No token at all: nobody admitted, the first waiter named (with the lookahead).
    let o = admit::parse(
        run(Signed {
            admitted_ms: now,
            claim_window_ms: 0,
            lookahead: 2,
            tokens: vec![],
        })
        .await
        .expect("reply"),
    )
    .expect("parse");
    assert_eq!(o.admitted, 0);
    assert!(o.short);
    assert_eq!(o.prospects[0], (queued[0].clone(), "user-w-0".to_owned()));
    assert_eq!(
        o.prospects.len(),
        3,
        "short: as many as the slots still wanted"
    );

    // A token for the wrong user, or for an instant 10 s off: nobody admitted.
    for (at, user) in [(now, "user-w-9"), (now - 10_000, "user-w-0")] {
        let o = admit::parse(
            run(Signed {
                admitted_ms: at,
                claim_window_ms: 0,
                lookahead: 0,
                tokens: vec![tok(&queued[0], user)],
            })
            .await
            .expect("reply"),
        )
        .expect("parse");
        assert_eq!((o.admitted, o.short), (0, true), "at {at} for {user}");
        assert_eq!(
            o.stale_stamp,
            at != now,
            "the reply says when the instant was the reason"
        );
    }

    // The first waiter's own token: admitted with it; the second has none: stop.
    let o = admit::parse(
        run(Signed {
            admitted_ms: now,
            claim_window_ms: 0,
            lookahead: 0,
            tokens: vec![tok(&queued[0], "user-w-0"), tok(&queued[2], "user-w-2")],
        })
        .await
        .expect("reply"),
    )
    .expect("parse");
    assert_eq!((o.admitted, o.short), (1, true));
    let h = hgetall(&mut conn, &k.session(EVENT, &queued[0])).await;
    assert_eq!(h["status"], "admitted");
    assert_eq!(h["checkout_token"], format!("tok-{}", queued[0]));
    assert_eq!(
        h["admitted_ms"],
        now.to_string(),
        "admitted at the signed instant"
    );
    assert_eq!(
        hgetall(&mut conn, &k.session(EVENT, &queued[2])).await["status"],
        "queued",
        "order kept"
    );

    // Tokens not in threes: an error reply, nothing written.
    let mut bad = admit::call_signed(
        &s.admit,
        &k,
        EVENT,
        &a,
        &Signed {
            admitted_ms: now,
            claim_window_ms: 0,
            lookahead: 0,
            tokens: vec![tok(&queued[1], "user-w-1")],
        },
    );
    bad.args.pop();
    let r = scripts::run_batch(&mut conn, std::slice::from_ref(&bad))
        .await
        .expect("pipeline")
        .pop()
        .expect("one reply");
    let e = r.expect_err("refused");
    assert!(
        e.to_string().contains("want 3 ARGV per signed admission"),
        "{e}"
    );
    assert_eq!(
        hgetall(&mut conn, &k.session(EVENT, &queued[1])).await["status"],
        "queued"
    );
}

/// `lua/peek.lua` names the waiters at the head of the line in the order the
/// admit call takes them (the same interleaving of the lanes by the priority
/// share, from the same counts) and the claim window the call reads, valid
/// settings or not, so the tokens signed from it are the ones the call needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_names_the_waiters_as_the_admit_call_takes_them() {
    use waitroom_worker::scripts::{self, admit::Signed, peek};
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let t0 = clock::now_ms() - 60_000;
    enqueue(&mut conn, EVENT, "m", 6, t0).await;
    let vip = enqueue(&mut conn, EVENT, "p", 4, t0).await;
    to_priority(&mut conn, EVENT, &vip, t0).await;
    // Counts carried over from earlier calls.
    let mut p = redis::pipe();
    p.cmd("HSET")
        .arg(k.rate(EVENT))
        .arg("lane_p")
        .arg(1)
        .arg("lane_q")
        .arg(1)
        .ignore();
    p.query_async::<()>(&mut conn).await.expect("lanes");
    let s = Scripts::new();
    let a = admit_args(100, 10);
    let default_claim = Duration::from_millis(4_000);
    async fn one(
        c: &mut redis::aio::MultiplexedConnection,
        call: scripts::Call<'_>,
    ) -> redis::Value {
        scripts::run_batch(c, std::slice::from_ref(&call))
            .await
            .expect("pipeline")
            .pop()
            .expect("one reply")
            .expect("reply")
    }
    for (share, claim) in [
        ("30", "2500"),
        ("70", "0"),
        ("inf", "1e3"),
        (" 5", "-1"),
        ("100", "99999999999999"),
    ] {
        let _: () = redis::cmd("HSET")
            .arg(k.config(EVENT))
            .arg("priority_share")
            .arg(share)
            .arg("claim_window_ms")
            .arg(claim)
            .query_async(&mut conn)
            .await
            .expect("config");
        let head =
            peek::parse(one(&mut conn, peek::call(&s.peek, &k, EVENT, 10, default_claim)).await)
                .expect("peek");
        let mut a = a.clone();
        a.claim_window = default_claim;
        let o = admit::parse(
            one(
                &mut conn,
                admit::call_signed(
                    &s.admit,
                    &k,
                    EVENT,
                    &a,
                    &Signed {
                        admitted_ms: clock::now_ms(),
                        claim_window_ms: 0,
                        lookahead: 10,
                        tokens: vec![],
                    },
                ),
            )
            .await,
        )
        .expect("admit");
        assert_eq!((o.admitted, o.short), (0, true), "{share}/{claim}");
        assert_eq!(head.prospects, o.prospects, "{share}/{claim}");
        assert_eq!(head.prospects.len(), 10, "{share}/{claim}");
        assert_eq!(head.claim_window_ms, o.claim_window_ms, "{share}/{claim}");
    }
    // The share interleaves the lanes (30 %: the queue goes first here), and an
    // invalid one reads as 100 (the priority lane first).
    let _: () = redis::cmd("HSET")
        .arg(k.config(EVENT))
        .arg("priority_share")
        .arg("30")
        .query_async(&mut conn)
        .await
        .expect("config");
    let head = peek::parse(one(&mut conn, peek::call(&s.peek, &k, EVENT, 10, default_claim)).await)
        .expect("peek");
    assert!(
        head.prospects[0].0.starts_with("m-"),
        "{:?}",
        head.prospects
    );
    assert!(head.prospects.iter().any(|(sid, _)| sid.starts_with("p-")));
}

/// An event's first pass carries the tokens of its first waiters, read with
/// `lua/peek.lua`: one admit call per event admits them, no second call follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_pass_admits_with_one_admit_call_per_event() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let events: Vec<String> = (0..20).map(|i| format!("first-{i:02}")).collect();
    let t0 = clock::now_ms() - 60_000;
    // Session ids are global (the default layout): each event has its own.
    for e in &events {
        enqueue(&mut conn, e, e, 3, t0).await;
    }
    let _: () = redis::cmd("SADD")
        .arg(k.active_events())
        .arg(&events)
        .query_async(&mut conn)
        .await
        .expect("SADD active_events");
    let mut w = start_worker(settings(&redis.url(), &kafka.bootstrap)).await;
    assert!(w.cycle().await);
    for e in &events {
        assert_eq!(zcard(&mut conn, &k.queue(e)).await, 0, "{e}: all admitted");
        for i in 0..3 {
            let h = hgetall(&mut conn, &k.session(e, &format!("{e}-{i:06}"))).await;
            assert_eq!(h["status"], "admitted", "{e}");
            assert!(
                h.get("checkout_token").is_some_and(|t| !t.is_empty()),
                "{e}"
            );
        }
    }
    assert_eq!(
        Stats::get(&w.stats().admit_second_calls),
        0,
        "no event needed a second admit call"
    );
}

/// The events whose line `lua/peek.lua` was run for, as Redis's slow log names
/// them: the first key of each call is the event's queue.
async fn peeked(conn: &mut redis::aio::MultiplexedConnection, k: &Keys) -> HashSet<String> {
    let peek = Scripts::new().peek.sha().to_owned();
    let prefix = format!("{}:", k.prefix());
    script_runs(conn, &peek)
        .await
        .into_iter()
        .filter_map(|args| {
            let queue = args.first()?;
            let event = queue.strip_prefix(&prefix)?.strip_suffix(":queue")?;
            Some(event.to_owned())
        })
        .collect()
}

/// A replica's first pass asks whether anyone waits in the events it sees for the
/// first time: an event holding slots with nobody waiting is not peeked at
/// (`lua/peek.lua`, a script call per event); one with waiters is, and admits them
/// with one admit call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_pass_peeks_only_at_events_someone_waits_in() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let t0 = clock::now_ms() - 60_000;
    let busy: Vec<String> = (0..20).map(|i| format!("busy-{i:02}")).collect();
    let held: Vec<String> = (0..40).map(|i| format!("held-{i:02}")).collect();
    for e in &busy {
        enqueue(&mut conn, e, e, 3, t0).await;
    }
    // Slots in checkout, deadlines an hour away, nobody waiting.
    let deadline = clock::now_ms() + 3_600_000;
    for e in &held {
        for i in 0..2 {
            let sid = format!("{e}-{i}");
            let _: () = redis::pipe()
                .cmd("SADD")
                .arg(k.processing(e))
                .arg(&sid)
                .cmd("ZADD")
                .arg(k.deadlines(e))
                .arg(deadline)
                .arg(&sid)
                .query_async(&mut conn)
                .await
                .expect("a held slot");
        }
    }
    let _: () = redis::cmd("SADD")
        .arg(k.active_events())
        .arg(&busy)
        .arg(&held)
        .query_async(&mut conn)
        .await
        .expect("SADD active_events");
    let mut w = start_worker(settings(&redis.url(), &kafka.bootstrap)).await;
    log_every_command(&mut conn).await;
    assert!(w.cycle().await);
    let peeked = peeked(&mut conn, &k).await;
    assert_eq!(
        peeked,
        busy.iter().cloned().collect::<HashSet<_>>(),
        "peeked at exactly the events someone waits in"
    );
    for e in &busy {
        assert_eq!(zcard(&mut conn, &k.queue(e)).await, 0, "{e}: all admitted");
    }
    for e in &held {
        assert_eq!(
            scard(&mut conn, &k.processing(e)).await,
            2,
            "{e}: slots kept"
        );
    }
    assert_eq!(
        Stats::get(&w.stats().admit_second_calls),
        0,
        "no event needed a second admit call"
    );
}
