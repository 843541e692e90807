//! Slots for people who are there (issue 12): the claim window (no-shows), queue
//! leavers, and the wait figures of the stats hash. Lua-level cases run the scripts
//! against a private redis-server; the end-to-end ones run the worker with
//! librdkafka's mock cluster.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use support::*;
use waitroom_worker::clock;
use waitroom_worker::scripts::Scripts;
use waitroom_worker::scripts::admit::{self, AdmitArgs, AdmitOutcome};
use waitroom_worker::scripts::claim::{self, Claimed};
use waitroom_worker::scripts::reap;
use waitroom_worker::token::Verifier;

const EVENT: &str = "presale";
const BIN: &str = env!("CARGO_BIN_EXE_waitroom-worker");

fn args(capacity: u64, claim_window: Duration, idle: Duration) -> AdmitArgs {
    AdmitArgs {
        claim_window,
        waiter_idle_timeout: idle,
        ..admit_args(capacity, capacity)
    }
}

async fn admit_once(conn: &mut MultiplexedConnection, a: &AdmitArgs) -> AdmitOutcome {
    admit::admit(&Scripts::new().admit, conn, &keys(), EVENT, a)
        .await
        .expect("admit")
}

async fn redis_ms(conn: &mut MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    s * 1000 + us / 1000
}

async fn score(conn: &mut MultiplexedConnection, sid: &str) -> Option<u64> {
    let v: Option<f64> = redis::cmd("ZSCORE")
        .arg(keys().deadlines(EVENT))
        .arg(sid)
        .query_async(conn)
        .await
        .expect("ZSCORE");
    v.map(|f| f as u64)
}

async fn held(conn: &mut MultiplexedConnection, sid: &str) -> bool {
    redis::cmd("SISMEMBER")
        .arg(keys().processing(EVENT))
        .arg(sid)
        .query_async(conn)
        .await
        .expect("SISMEMBER")
}

/// Seconds since the epoch of the RFC 3339 seconds the scripts write.
fn secs(rfc: &str) -> u64 {
    humantime::parse_rfc3339(rfc)
        .expect("RFC 3339")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs()
}

/// What the acknowledgement does to an admitted session's mark (settle.lua): its
/// deadline becomes the entry's told deadline, the claim deadline while a claim
/// window runs. Done by hand in the Lua-level tests, which run no Kafka.
async fn tell(conn: &mut MultiplexedConnection, o: &AdmitOutcome) -> Vec<(String, u64)> {
    let mut told = Vec::new();
    for raw in &o.entries {
        let e = waitroom_worker::outbox::OutboxEntry::parse(raw.clone()).expect("entry");
        let _: () = redis::cmd("ZADD")
            .arg(keys().deadlines(EVENT))
            .arg("XX")
            .arg(e.told_deadline_ms())
            .arg(&e.session_id)
            .query_async(conn)
            .await
            .expect("ZADD");
        let d = e.told_deadline_ms();
        told.push((e.session_id, d));
    }
    told
}

async fn reap_once(conn: &mut MultiplexedConnection) -> reap::Reaped {
    let scripts = Scripts::new();
    let c = reap::call(
        &scripts.reap,
        &keys(),
        EVENT,
        clock::now_ms(),
        Duration::from_secs(60),
        Duration::from_secs(3600),
    );
    let k: Vec<&str> = c.keys.iter().map(String::as_str).collect();
    let a: Vec<&str> = c.args.iter().map(String::as_str).collect();
    let v: redis::Value = scripts.reap.invoke(conn, &k, &a).await.expect("reap");
    reap::parse(v).expect("reap reply")
}

async fn claim_now(conn: &mut MultiplexedConnection, sid: &str) -> Claimed {
    claim::claim(&Scripts::new().claim, conn, &keys(), EVENT, sid)
        .await
        .expect("claim")
}

/// Wait until Redis's clock is in the second `sec` (or later).
async fn until_second(conn: &mut MultiplexedConnection, sec: u64) {
    eventually(
        Duration::from_secs(10),
        "Redis's clock to reach the second",
        || {
            let mut c = conn.clone();
            async move { (redis_ms(&mut c).await / 1000 >= sec).then_some(()) }
        },
    )
    .await;
}

/// A waiter idle past the timeout is dropped as `left_queue` and takes no slot;
/// the waiter behind it is admitted in the same call, and one without `last_seen`
/// is admitted as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaver_is_skipped_and_the_next_waiter_admitted_in_the_same_call() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "w", 4, clock::now_ms() - 60_000).await;
    let now = redis_ms(&mut conn).await;
    for (sid, seen) in [(&ids[0], now - 60_000), (&ids[1], now - 500)] {
        let _: () = redis::cmd("HSET")
            .arg(k.session(EVENT, sid))
            .arg("last_seen")
            .arg(seen)
            .query_async(&mut conn)
            .await
            .expect("HSET");
    }
    let o = admit_once(&mut conn, &args(2, Duration::ZERO, Duration::from_secs(5))).await;
    assert_eq!((o.admitted, o.left_queue, o.skipped), (2, 1, 0));
    assert!(!held(&mut conn, &ids[0]).await);
    assert!(held(&mut conn, &ids[1]).await && held(&mut conn, &ids[2]).await);
    let left = hgetall(&mut conn, &k.session(EVENT, &ids[0])).await;
    assert_eq!(left["status"], "left_queue");
    assert!(left.contains_key("ended_at"));
    assert_eq!(
        zcard(&mut conn, &k.queue(EVENT)).await,
        1,
        "only the 4th waits"
    );
    assert_eq!(o.totals.left_queue, 1);
    assert_eq!(o.totals.admitted, 2);
    let stats = hgetall(&mut conn, &k.stats(EVENT)).await;
    assert_eq!(stats["left_queue_total"], "1");

    // Off (the default): the same idle waiter is admitted.
    let ids = enqueue(&mut conn, "other", "x", 1, clock::now_ms()).await;
    let _: () = redis::cmd("HSET")
        .arg(k.session("other", &ids[0]))
        .arg("last_seen")
        .arg(now - 3_600_000)
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let o = admit::admit(
        &Scripts::new().admit,
        &mut conn,
        &k,
        "other",
        &args(2, Duration::ZERO, Duration::ZERO),
    )
    .await
    .expect("admit");
    assert_eq!((o.admitted, o.left_queue), (1, 0));
}

/// A `last_seen` that is not plain digits reads as absent (admitted) and is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_last_seen_is_read_as_absent_and_reported() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let ids = enqueue(&mut conn, EVENT, "g", 3, clock::now_ms() - 60_000).await;
    for (sid, v) in ids.iter().zip(["1e3", "-5", " 12"]) {
        let _: () = redis::cmd("HSET")
            .arg(keys().session(EVENT, sid))
            .arg("last_seen")
            .arg(v)
            .query_async(&mut conn)
            .await
            .expect("HSET");
    }
    let o = admit_once(&mut conn, &args(5, Duration::ZERO, Duration::from_secs(1))).await;
    assert_eq!((o.admitted, o.left_queue, o.bad_last_seen), (3, 0, 3));
}

/// A claim in the window's last second succeeds and moves the deadline to the full
/// checkout deadline; the slot then outlives the claim window; a second claim says
/// `already_claimed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_just_before_the_window_ends_keeps_the_slot_to_the_full_deadline() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "c", 1, clock::now_ms() - 60_000).await;
    let o = admit_once(&mut conn, &args(5, Duration::from_secs(1), Duration::ZERO)).await;
    let told = tell(&mut conn, &o).await;
    let h = hgetall(&mut conn, &k.session(EVENT, &ids[0])).await;
    let cby = secs(&h["claim_expires_at"]);
    assert_eq!(told[0].1, cby * 1000, "told deadline is the claim deadline");
    assert_eq!(h["admitted_ms"].parse::<u64>().ok(), Some(o.now_ms));

    until_second(&mut conn, cby).await;
    assert_eq!(claim_now(&mut conn, &ids[0]).await, Claimed::Claimed);
    let full = secs(&h["checkout_expires_at"]) * 1000;
    assert_eq!(score(&mut conn, &ids[0]).await, Some(full));
    let h = hgetall(&mut conn, &k.session(EVENT, &ids[0])).await;
    assert!(h.contains_key("claimed_at"));

    until_second(&mut conn, cby + 2).await;
    let r = reap_once(&mut conn).await;
    assert_eq!((r.expired, r.no_shows), (0, 0));
    assert!(held(&mut conn, &ids[0]).await);
    assert_eq!(claim_now(&mut conn, &ids[0]).await, Claimed::AlreadyClaimed);
}

/// A claim after the window gets `too_late` and changes nothing: the slot is not
/// taken back by the claim (the reaper does that) and its deadline stays; once
/// reaped, the session is a `no_show` and a claim is still `too_late`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_after_the_window_is_too_late_and_changes_nothing() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "l", 1, clock::now_ms() - 60_000).await;
    let o = admit_once(&mut conn, &args(5, Duration::from_secs(1), Duration::ZERO)).await;
    let told = tell(&mut conn, &o).await;
    let cby = told[0].1 / 1000;
    until_second(&mut conn, cby + 1).await;
    let before = hgetall(&mut conn, &k.session(EVENT, &ids[0])).await;
    assert_eq!(claim_now(&mut conn, &ids[0]).await, Claimed::TooLate);
    assert_eq!(hgetall(&mut conn, &k.session(EVENT, &ids[0])).await, before);
    assert_eq!(score(&mut conn, &ids[0]).await, Some(told[0].1));
    assert!(held(&mut conn, &ids[0]).await);

    let r = reap_once(&mut conn).await;
    assert_eq!((r.expired, r.no_shows), (1, 1));
    let h = hgetall(&mut conn, &k.session(EVENT, &ids[0])).await;
    assert_eq!(h["status"], "no_show");
    assert_eq!(claim_now(&mut conn, &ids[0]).await, Claimed::TooLate);
    assert_eq!(
        hgetall(&mut conn, &k.stats(EVENT)).await["no_show_total"],
        "1"
    );
    // Someone never admitted, and a finished one, are not admitted.
    assert_eq!(claim_now(&mut conn, "nobody").await, Claimed::NotAdmitted);
}

/// Claims racing the reaper across the window's edge: for every session exactly one
/// wins. A `claimed` answer means the slot is still held with the full deadline; a
/// `too_late` one that the slot comes back as a no-show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claim_and_reap_never_both_win() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let n = 300;
    let ids = enqueue(&mut conn, EVENT, "r", n, clock::now_ms() - 60_000).await;
    let o = admit_once(
        &mut conn,
        &args(n as u64, Duration::from_secs(1), Duration::ZERO),
    )
    .await;
    assert_eq!(o.admitted, n as u64);
    let told = tell(&mut conn, &o).await;
    let cby = told[0].1 / 1000;
    until_second(&mut conn, cby).await;

    // Claims spread over the edge of the window while reapers run in a loop.
    let reaper = {
        let mut c = redis.conn().await;
        tokio::spawn(async move {
            let mut reaped = 0;
            for _ in 0..400 {
                reaped += reap_once(&mut c).await.no_shows;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            reaped
        })
    };
    let mut answers = HashMap::new();
    for sid in &ids {
        answers.insert(sid.clone(), claim_now(&mut conn, sid).await);
        tokio::time::sleep(Duration::from_millis(6)).await;
    }
    let reaped = reaper.await.expect("reaper");
    let mut claimed = 0;
    for sid in &ids {
        let h = hgetall(&mut conn, &k.session(EVENT, sid)).await;
        match answers[sid] {
            Claimed::Claimed => {
                claimed += 1;
                assert!(held(&mut conn, sid).await, "{sid} claimed but reaped");
                assert_eq!(h["status"], "admitted");
                assert_eq!(
                    score(&mut conn, sid).await,
                    Some(secs(&h["checkout_expires_at"]) * 1000)
                );
            }
            Claimed::TooLate => {
                // Reaped now, or when the next reaper comes.
                assert!(
                    !h.contains_key("claimed_at"),
                    "{sid}: too late, yet claimed"
                );
            }
            other => panic!("{sid}: {other:?}"),
        }
    }
    let r = reap_once(&mut conn).await;
    assert_eq!(
        claimed + reaped + r.no_shows,
        n as u64,
        "every slot: one winner"
    );
    assert!(
        claimed > 0 && reaped + r.no_shows > 0,
        "the race crossed the edge"
    );
    assert_eq!(scard(&mut conn, &k.processing(EVENT)).await, claimed);
}

/// End to end: with the claim window on, a told admission nobody claims gives its
/// slot back as a no-show within one interval after the window (the end of the
/// `cby` second), and the next waiter is admitted into it. Its token carries `cby`,
/// its message `claim_expires_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_shows_slot_returns_within_one_interval_after_its_claim_window() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "n", 3, clock::now_ms() - 60_000).await;
    let interval = Duration::from_millis(100);
    let w = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .max_concurrent(2)
            .process_interval(interval)
            .claim_window(Duration::from_secs(1)),
    )
    .await;
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    let msgs = reader.read_until(2, Duration::from_secs(20)).to_vec();
    assert_eq!(msgs.len(), 2);
    let first = &msgs[0];
    let sid = first.key.clone();
    let cby_text = first.value["claim_expires_at"]
        .as_str()
        .expect("claim_expires_at in QUEUE_READY")
        .to_owned();
    let h = hgetall(&mut conn, &k.session(EVENT, &sid)).await;
    assert_eq!(h["claim_expires_at"], cby_text);
    let claims = Verifier::hs256(SECRET.as_bytes(), "waitroom", "checkout")
        .expect("verifier")
        .verify(&h["checkout_token"])
        .expect("token");
    let cby = secs(&cby_text);
    assert_eq!(claims.cby, Some(cby));
    assert!(claims.exp > cby);

    // Nobody claims: back as a no-show by the end of the cby second plus one interval.
    let back_at = eventually(Duration::from_secs(20), "the no-show's slot", || {
        let mut c = conn.clone();
        let key = k.session(EVENT, &sid);
        async move {
            let status: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg("status")
                .query_async(&mut c)
                .await
                .expect("HGET");
            if status.as_deref() == Some("no_show") {
                Some(redis_ms(&mut c).await)
            } else {
                None
            }
        }
    })
    .await;
    let edge = (cby + 1) * 1000;
    assert!(back_at >= edge, "reaped before the window ended");
    // One interval, and the poll's own round trip.
    assert!(
        back_at <= edge + interval.as_millis() as u64 + 150,
        "slot back {} ms after the window",
        back_at - edge
    );
    eventually(Duration::from_secs(10), "the third waiter admitted", || {
        let mut c = conn.clone();
        let sid = ids[2].clone();
        async move { held(&mut c, &sid).await.then_some(()) }
    })
    .await;
    assert!(w.stats.no_shows.get() >= 1);
    w.stop().await;
}

/// Everything off (the default): no claim fields, a token without `cby`, a message
/// without `claim_expires_at`, an old `last_seen` admitted, four-element entries,
/// and the slot kept to the checkout deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_off_by_default_behaves_as_before() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "d", 2, clock::now_ms() - 60_000).await;
    let _: () = redis::cmd("HSET")
        .arg(k.session(EVENT, &ids[0]))
        .arg("last_seen")
        .arg(clock::now_ms() - 3_600_000)
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let w = run_worker(settings(&redis.url(), &kafka.bootstrap).event(EVENT)).await;
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    let msgs = reader.read_until(2, Duration::from_secs(20)).to_vec();
    assert_eq!(msgs.len(), 2);
    let verifier = Verifier::hs256(SECRET.as_bytes(), "waitroom", "checkout").expect("verifier");
    for (m, sid) in msgs.iter().zip(&ids) {
        assert!(m.value.get("claim_expires_at").is_none());
        let h = hgetall(&mut conn, &k.session(EVENT, sid)).await;
        assert_eq!(h["status"], "admitted");
        assert!(!h.contains_key("claim_expires_at") && !h.contains_key("claimed_at"));
        let c = verifier.verify(&h["checkout_token"]).expect("token");
        assert_eq!(c.cby, None);
        let token_json = h["checkout_token"].split('.').nth(1).expect("payload");
        assert!(!token_json.is_empty());
        // Told: the real deadline is the checkout deadline.
        eventually(Duration::from_secs(10), "the acknowledgement", || {
            let mut c = conn.clone();
            let sid = sid.clone();
            let full = secs(&h["checkout_expires_at"]) * 1000;
            async move { (score(&mut c, &sid).await == Some(full)).then_some(()) }
        })
        .await;
    }
    assert_eq!(w.stats.left_queue.get(), 0);
    w.stop().await;
}

/// The stats hash follows the real outflow: with completions flowing it measures
/// the wait per position, and when capacity doubles the figure halves at once
/// (within a few seconds), as does the wait it implies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_follow_a_change_of_capacity() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    enqueue(&mut conn, EVENT, "s", 3000, clock::now_ms() - 60_000).await;
    let w = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .max_concurrent(4)
            .batch_size(50)
            .process_interval(Duration::from_millis(50)),
    )
    .await;
    // The checkout service: every admitted user completes 300 ms after admission.
    let checkout = CheckoutLoop::start(
        &kafka.bootstrap,
        EVENT,
        Duration::from_millis(300),
        || "completed",
    );
    let wait_of = |conn: &MultiplexedConnection| {
        let mut c = conn.clone();
        let key = k.stats(EVENT);
        async move {
            let h = hgetall(&mut c, &key).await;
            (h.get("wait_basis").map(String::as_str) == Some("measured"))
                .then(|| h["wait_ms_per_position"].parse::<f64>().expect("decimal"))
                .map(|w| (w, h))
        }
    };
    let (before, h) = eventually(Duration::from_secs(30), "a measured figure", || {
        let (f, mut c, key) = (wait_of(&conn), conn.clone(), k.stats(EVENT));
        async move {
            let r = f.await;
            if r.is_none() {
                eprintln!("stats so far: {:?}", hgetall(&mut c, &key).await);
            }
            r
        }
    })
    .await;
    for field in [
        "admitted_per_min",
        "avg_checkout_ms",
        "no_show_rate",
        "left_queue_rate",
        "queue_length",
        "updated_at",
        "wait_ms_per_position",
    ] {
        assert!(h.contains_key(field), "{field} missing from {h:?}");
    }
    assert!(before > 0.0);
    let _: () = redis::cmd("HSET")
        .arg(k.config(EVENT))
        .arg("max_concurrent")
        .arg(8)
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let after = eventually(Duration::from_secs(10), "the figure to follow", || {
        let f = wait_of(&conn);
        async move { f.await.and_then(|(w, _)| (w < before * 0.7).then_some(w)) }
    })
    .await;
    assert!(after > before * 0.3, "{before} -> {after}: not a halving");
    let snap = w.stats.events().remove(EVENT).expect("snapshot");
    assert!(snap.wait.is_some());
    assert!(
        w.stats
            .encode_prometheus()
            .contains("waitroom_wait_ms_per_position{event_id=\"presale\"}")
    );
    checkout.stop();
    w.stop().await;
}

/// `waitroom-worker claim`: the answer on stdout, exit 0 for claimed and
/// already_claimed, 3 for too_late, 4 for not_admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_command_answers_and_exits_by_the_answer() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let ids = enqueue(&mut conn, EVENT, "cli", 1, clock::now_ms() - 60_000).await;
    let o = admit_once(&mut conn, &args(5, Duration::from_secs(30), Duration::ZERO)).await;
    tell(&mut conn, &o).await;
    let run = |sid: &str| {
        let out = Command::new(BIN)
            .args(["claim", "--redis-url", &redis.url(), "--event", EVENT, sid])
            .env_remove("RUST_LOG")
            .output()
            .expect("runs");
        (
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            out.status.code(),
        )
    };
    assert_eq!(run(&ids[0]), ("claimed".to_owned(), Some(0)));
    assert_eq!(run(&ids[0]), ("already_claimed".to_owned(), Some(0)));
    assert_eq!(run("nobody"), ("not_admitted".to_owned(), Some(4)));
}

/// An admission told late (Kafka away) is renewed when less than half its claim
/// window is left: a new admission time, a claim deadline a whole window away, the
/// hash's claim_expires_at rewritten; so a user is never told with no time to claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_told_admission_is_renewed_with_a_whole_claim_window() {
    use waitroom_worker::scripts::claim_outbox::{self, ClaimArgs};
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "late", 1, clock::now_ms() - 60_000).await;
    // Due at once (no lease), a 4 s claim window.
    let mut a = args(5, Duration::from_secs(4), Duration::ZERO);
    a.outbox_lease = Duration::ZERO;
    let o = admit_once(&mut conn, &a).await;
    let first = waitroom_worker::outbox::OutboxEntry::parse(o.entries[0].clone()).expect("entry");
    let claim_by = first.claim_by_ms.expect("a claim deadline");
    let claim = |conn: &MultiplexedConnection| {
        let mut c = conn.clone();
        async move {
            let scripts = Scripts::new();
            let call = claim_outbox::call(
                &scripts.claim_outbox,
                &keys(),
                EVENT,
                &ClaimArgs {
                    lease: Duration::from_secs(30),
                    limit: 10,
                    checkout_window: Duration::from_secs(60),
                    renew_within: Duration::from_secs(1),
                    session_ttl: Duration::from_secs(3600),
                },
            );
            let k: Vec<&str> = call.keys.iter().map(String::as_str).collect();
            let a: Vec<&str> = call.args.iter().map(String::as_str).collect();
            let v: redis::Value = scripts
                .claim_outbox
                .invoke(&mut c, &k, &a)
                .await
                .expect("claim");
            claim_outbox::parse(v).expect("reply")
        }
    };
    // With more than half the window left, the entry is leased as it is.
    let c = claim(&conn).await;
    assert_eq!((c.renewed, c.entries.len()), (0, 1));
    assert_eq!(c.entries[0], o.entries[0]);
    // Make it due again, and wait until less than half the window is left.
    let _: () = redis::cmd("ZADD")
        .arg(k.outbox(EVENT))
        .arg(0)
        .arg(&o.entries[0])
        .query_async(&mut conn)
        .await
        .expect("ZADD");
    let half = (claim_by - first.admitted_ms) / 2;
    eventually(
        Duration::from_secs(10),
        "half the claim window to pass",
        || {
            let mut c = conn.clone();
            async move { (redis_ms(&mut c).await + half > claim_by).then_some(()) }
        },
    )
    .await;
    let c = claim(&conn).await;
    assert_eq!(c.renewed, 1);
    let renewed = waitroom_worker::outbox::OutboxEntry::parse(c.entries[0].clone()).expect("entry");
    let now = redis_ms(&mut conn).await;
    let by = renewed.claim_by_ms.expect("still a claim deadline");
    assert!(by >= now + 3_000, "a whole window again: {by} vs now {now}");
    assert!(renewed.admitted_ms > first.admitted_ms);
    let h = hgetall(&mut conn, &k.session(EVENT, &ids[0])).await;
    assert_eq!(h["claim_expires_at"], clock::rfc3339_seconds(by));
    assert_eq!(h["admitted_ms"], renewed.admitted_ms.to_string());
}
