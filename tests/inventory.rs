//! Stop selling what is gone, and stop sending people into a failing checkout
//! (issue 13): the stock cap and the sell-out announcement, the checkout-health
//! valve, and the priority lane's share. Lua-level cases run the scripts against a
//! private redis-server; the end-to-end ones run the worker (in process, or the
//! binary where a process must die) with librdkafka's mock cluster.

mod support;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use support::*;
use waitroom_worker::clock;
use waitroom_worker::scripts::Scripts;
use waitroom_worker::scripts::admit::{self, AdmitArgs, AdmitOutcome, Hold};
use waitroom_worker::scripts::valve::{self, ValveArgs, ValveStep};

const EVENT: &str = "drop";
const SOLD_OUT: &str = "EVENT_SOLD_OUT";
const BIN: &str = env!("CARGO_BIN_EXE_waitroom-worker");

async fn admit_once(conn: &mut MultiplexedConnection, a: &AdmitArgs) -> AdmitOutcome {
    admit::admit(&Scripts::new().admit, conn, &keys(), EVENT, a)
        .await
        .expect("admit")
}

async fn config(conn: &mut MultiplexedConnection, field: &str, value: &str) {
    let _: () = redis::cmd("HSET")
        .arg(keys().config(EVENT))
        .arg(field)
        .arg(value)
        .query_async(conn)
        .await
        .expect("HSET config");
}

async fn stock(conn: &mut MultiplexedConnection) -> Option<String> {
    redis::cmd("HGET")
        .arg(keys().config(EVENT))
        .arg("stock")
        .query_async(conn)
        .await
        .expect("HGET")
}

/// The stock caps the number in checkout on top of max_concurrent; at 0 the event
/// is held as sold out and the sell-out is recorded once, leased to the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_caps_the_number_in_checkout_and_zero_is_a_sell_out() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let k = keys();
    enqueue(&mut conn, EVENT, "s", 10, clock::now_ms() - 60_000).await;
    config(&mut conn, "stock", "3").await;
    let o = admit_once(&mut conn, &admit_args(10, 10)).await;
    assert_eq!((o.admitted, o.in_use, o.capacity), (3, 3, 3));
    assert_eq!((o.stock, o.max_capacity), (Some(3), 10));
    assert_eq!(o.announce, None);
    let o = admit_once(&mut conn, &admit_args(10, 10)).await;
    assert_eq!(o.admitted, 0, "three in checkout for three units");

    config(&mut conn, "stock", "0").await;
    let o = admit_once(&mut conn, &admit_args(10, 10)).await;
    assert_eq!(o.held, Hold::SoldOut);
    let (at, waiting) = o.announce.expect("the sell-out handed over to announce");
    assert_eq!(waiting, 7);
    let h = hgetall(&mut conn, &k.sold_out(EVENT)).await;
    assert_eq!(h["state"], "pending");
    assert_eq!(h["at"], at.to_string());
    // Leased: the next call (any replica) does not announce it again.
    let o = admit_once(&mut conn, &admit_args(10, 10)).await;
    assert_eq!((o.held, o.announce), (Hold::SoldOut, None));

    // Stock back: admission resumes and the record is gone.
    config(&mut conn, "stock", "5").await;
    let o = admit_once(&mut conn, &admit_args(10, 10)).await;
    assert_eq!((o.held, o.admitted), (Hold::No, 2));
    assert!(hgetall(&mut conn, &k.sold_out(EVENT)).await.is_empty());
}

/// A completion's quantity leaves the stock once per freed slot: a duplicate
/// takes nothing, the stock never goes below 0, and bad quantities are rejected
/// like any bad completion (counted, nothing taken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantities_leave_the_stock_exactly_once_under_duplicate_completions() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "q", 3, clock::now_ms() - 60_000).await;
    config(&mut conn, "stock", "10").await;
    let w = run_worker(settings(&redis.url(), &kafka.bootstrap).event(EVENT)).await;
    eventually(Duration::from_secs(20), "three admitted", || {
        let mut c = conn.clone();
        async move { (scard(&mut c, &keys().processing(EVENT)).await == 3).then_some(()) }
    })
    .await;
    let service = CheckoutService::new(&kafka.bootstrap);
    let send = |sid: &str, q: serde_json::Value| {
        let v = serde_json::json!({"session_id": sid, "event_id": EVENT, "outcome": "completed", "quantity": q});
        v.to_string()
    };
    // Bad quantities first: rejected, the slot kept, nothing taken.
    for bad in [
        serde_json::json!(0),
        serde_json::json!(-2),
        serde_json::json!(2.5),
        serde_json::json!("2"),
        serde_json::json!(1_000_001),
    ] {
        service
            .send_raw(&ids[0], send(&ids[0], bad).as_bytes())
            .await;
    }
    eventually(Duration::from_secs(20), "the bad ones rejected", || {
        let n = w.stats.completions_rejected.get();
        async move { (n >= 5).then_some(()) }
    })
    .await;
    assert_eq!(stock(&mut conn).await.as_deref(), Some("10"));
    assert_eq!(scard(&mut conn, &k.processing(EVENT)).await, 3);

    // Quantity 4, twice (a duplicate): taken once.
    service
        .send_raw(&ids[0], send(&ids[0], serde_json::json!(4)).as_bytes())
        .await;
    service
        .send_raw(&ids[0], send(&ids[0], serde_json::json!(4)).as_bytes())
        .await;
    // No quantity: one unit. Then 9 more than is left: never below 0.
    service.complete(&ids[1], Some(EVENT), "completed").await;
    eventually(Duration::from_secs(20), "two released", || {
        let mut c = conn.clone();
        async move { (scard(&mut c, &keys().processing(EVENT)).await == 1).then_some(()) }
    })
    .await;
    // Both duplicates were consumed before the third message's release is seen.
    eventually(Duration::from_secs(20), "the duplicate consumed", || {
        let n = w.stats.release_noop.get();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    assert_eq!(stock(&mut conn).await.as_deref(), Some("5"));
    // An abandoned checkout buys nothing.
    service.complete(&ids[2], Some(EVENT), "abandoned").await;
    eventually(Duration::from_secs(20), "the last released", || {
        let mut c = conn.clone();
        async move { (scard(&mut c, &keys().processing(EVENT)).await == 0).then_some(()) }
    })
    .await;
    assert_eq!(stock(&mut conn).await.as_deref(), Some("5"));
    w.stop().await;

    // Never below 0 (Lua level, the same script).
    let s = Scripts::new();
    let ids = enqueue(&mut conn, EVENT, "z", 1, clock::now_ms()).await;
    admit_once(&mut conn, &admit_args(10, 10)).await;
    let r = waitroom_worker::scripts::release::release(
        &s.release,
        &mut conn,
        &k,
        EVENT,
        &ids[0],
        waitroom_worker::completions::Outcome::Completed,
        Duration::from_secs(60),
        "t-1",
        9,
    )
    .await
    .expect("release");
    assert_eq!(r, waitroom_worker::scripts::release::Released::Freed);
    assert_eq!(stock(&mut conn).await.as_deref(), Some("0"));
}

fn spawn_worker(redis_url: &str, brokers: &str) -> Child {
    Command::new(BIN)
        .args(["run", "--redis-url", redis_url, "--kafka-brokers", brokers])
        .args(["--event", EVENT, "--http-addr", "off"])
        .args(["--process-interval", "50ms", "--outbox-lease", "2s"])
        .args(["--publish-timeout", "1s", "--retry-delay", "100ms"])
        .args([
            "--consumer-session-timeout",
            "3s",
            "--shutdown-timeout",
            "5s",
        ])
        .env("QUEUE_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker")
}

/// A sell-out stops admission and is announced exactly once, though the worker
/// that decided it is killed (SIGKILL) before it could publish: the next worker
/// takes the lease over. Raising the stock resumes admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sell_out_is_announced_exactly_once_through_a_kill_and_stock_back_resumes() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    kafka.create_topic(SOLD_OUT, 1);
    let mut conn = redis.conn().await;
    let k = keys();
    enqueue(&mut conn, EVENT, "k", 6, clock::now_ms() - 60_000).await;
    config(&mut conn, "stock", "0").await;

    // Kafka away: the first worker records the sell-out but cannot publish it.
    kafka.brokers_down();
    let mut first = spawn_worker(&redis.url(), &kafka.bootstrap);
    eventually(Duration::from_secs(20), "the sell-out recorded", || {
        let mut c = conn.clone();
        async move {
            let h = hgetall(&mut c, &keys().sold_out(EVENT)).await;
            (h.get("state").map(String::as_str) == Some("pending")).then_some(())
        }
    })
    .await;
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    kafka.brokers_up();

    let mut second = spawn_worker(&redis.url(), &kafka.bootstrap);
    let mut reader = TopicReader::new(&kafka.bootstrap, SOLD_OUT);
    let got = reader.read_until(1, Duration::from_secs(30)).to_vec();
    assert_eq!(got.len(), 1, "the sell-out announced");
    let m = &got[0];
    assert_eq!(m.key, EVENT);
    assert_eq!(m.value["event_id"], EVENT);
    assert_eq!(m.value["queue_length"], 6);
    assert!(
        m.value["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(m.message_id.len(), 40);
    eventually(Duration::from_secs(10), "the sell-out marked sent", || {
        let mut c = conn.clone();
        async move {
            let h = hgetall(&mut c, &keys().sold_out(EVENT)).await;
            (h.get("state").map(String::as_str) == Some("sent")).then_some(())
        }
    })
    .await;
    // Nothing more: no second message, nobody admitted.
    assert_eq!(reader.read_for(Duration::from_secs(3)).len(), 1);
    assert_eq!(scard(&mut conn, &k.processing(EVENT)).await, 0);

    // Stock back: admission resumes by itself, the record goes.
    config(&mut conn, "stock", "2").await;
    eventually(Duration::from_secs(20), "two admitted", || {
        let mut c = conn.clone();
        async move { (scard(&mut c, &keys().processing(EVENT)).await == 2).then_some(()) }
    })
    .await;
    assert!(hgetall(&mut conn, &k.sold_out(EVENT)).await.is_empty());
    second.kill().expect("SIGKILL");
    second.wait().expect("reaped");
}

fn valve_args(interval: Duration) -> ValveArgs {
    ValveArgs {
        default_max_concurrent: 20,
        min_concurrent_percent: 10,
        interval,
        fail_threshold: 0.2,
        slow_factor: 2.0,
        min_completions: 5,
        cut: 0.5,
        step_up: 0.1,
    }
}

async fn valve_step(conn: &mut MultiplexedConnection, a: &ValveArgs) -> ValveStep {
    let s = Scripts::new();
    let c = valve::call(&s.valve, &keys(), EVENT, a);
    let k: Vec<&str> = c.keys.iter().map(String::as_str).collect();
    let v: Vec<&str> = c.args.iter().map(String::as_str).collect();
    let r: redis::Value = s.valve.invoke(conn, &k, &v).await.expect("valve");
    valve::parse(r).expect("valve reply")
}

/// Completions since the last step, as release.lua counts them.
async fn completions(conn: &mut MultiplexedConnection, done: u64, failed: u64, ms_each: u64) {
    let _: () = redis::pipe()
        .cmd("HINCRBY")
        .arg(keys().stats(EVENT))
        .arg("completed_total")
        .arg(done)
        .cmd("HINCRBY")
        .arg(keys().stats(EVENT))
        .arg("failed_total")
        .arg(failed)
        .cmd("HINCRBY")
        .arg(keys().stats(EVENT))
        .arg("checkout_ms_total")
        .arg(done * ms_each)
        .query_async(conn)
        .await
        .expect("HINCRBY");
}

/// The control law, step by step: failures cut multiplicatively, a slow spell cuts,
/// health climbs back additively, too few completions hold; always within
/// [min_concurrent, max_concurrent]; and at most one step per interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_valve_follows_its_control_law_within_bounds() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let a = valve_args(Duration::from_millis(1));
    let tick = || tokio::time::sleep(Duration::from_millis(5));
    let s = valve_step(&mut conn, &a).await;
    assert_eq!((s.cap, s.reason.as_str()), (20, "start"));
    tick().await;
    completions(&mut conn, 10, 0, 1000).await;
    let s = valve_step(&mut conn, &a).await;
    assert_eq!(
        (s.cap, s.reason.as_str(), s.baseline_ms),
        (20, "healthy", Some(1000))
    );
    // 30% failed: halved, then halved again, never below the floor (10% of 20).
    let mut caps = Vec::new();
    for _ in 0..5 {
        tick().await;
        completions(&mut conn, 10, 3, 1000).await;
        let s = valve_step(&mut conn, &a).await;
        assert_eq!(s.reason, "failures");
        caps.push(s.cap);
    }
    assert_eq!(caps, vec![10, 5, 2, 2, 2]);
    // Too few completions to judge: hold.
    tick().await;
    completions(&mut conn, 2, 2, 1000).await;
    let s = valve_step(&mut conn, &a).await;
    assert_eq!((s.cap, s.reason.as_str(), s.changed), (2, "hold", false));
    // Healthy again: +2 (10% of 20) a step, up to 20 and no further.
    let mut caps = Vec::new();
    for _ in 0..10 {
        tick().await;
        completions(&mut conn, 10, 0, 1000).await;
        caps.push(valve_step(&mut conn, &a).await.cap);
    }
    assert_eq!(caps, vec![4, 6, 8, 10, 12, 14, 16, 18, 20, 20]);
    // Checkout three times slower than the baseline: a cut.
    tick().await;
    completions(&mut conn, 10, 0, 3000).await;
    let s = valve_step(&mut conn, &a).await;
    assert_eq!((s.cap, s.reason.as_str()), (10, "slow"));
    // One step per interval, whoever calls.
    let slow = valve_args(Duration::from_secs(60));
    completions(&mut conn, 10, 10, 1000).await;
    let s = valve_step(&mut conn, &slow).await;
    assert_eq!((s.cap, s.changed), (10, false));
    // min_concurrent from the config is the floor.
    config(&mut conn, "min_concurrent", "8").await;
    tick().await;
    completions(&mut conn, 10, 10, 1000).await;
    let s = valve_step(&mut conn, &a).await;
    assert_eq!((s.cap, s.reason.as_str()), (8, "failures"));
}

/// End to end: with `adaptive` on, a burst of `failed` outcomes closes the valve
/// within a few steps, and it reopens when they stop; the effective capacity stays
/// within [min_concurrent, max_concurrent], the admit script never fills more than
/// it, and nobody is evicted (every session ends by its own completion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_valve_closes_on_failures_and_reopens_without_evicting_anyone() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    enqueue(&mut conn, EVENT, "v", 5000, clock::now_ms() - 60_000).await;
    config(&mut conn, "adaptive", "1").await;
    config(&mut conn, "min_concurrent", "4").await;
    let w = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .max_concurrent(20)
            .batch_size(50)
            .process_interval(Duration::from_millis(50))
            .valve_interval(Duration::from_millis(300))
            .valve_min_completions(3)
            .valve_slow_factor(50.0),
    )
    .await;
    let failing = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // The checkout service: every admitted user finishes 100 ms later, failing or not.
    let checkout = {
        let failing = failing.clone();
        CheckoutLoop::start(
            &kafka.bootstrap,
            EVENT,
            Duration::from_millis(100),
            move || {
                if failing.load(Ordering::Relaxed) {
                    "failed"
                } else {
                    "completed"
                }
            },
        )
    };
    // The bounds, watched all along: the valve's cap and the slots in use.
    let (low, high, over) = (
        Arc::new(AtomicU64::new(u64::MAX)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let watcher = {
        let (low, high, over, stop) = (low.clone(), high.clone(), over.clone(), stop.clone());
        let mut c = conn.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (cap, in_use): (Option<u64>, u64) = redis::pipe()
                    .cmd("HGET")
                    .arg(keys().valve(EVENT))
                    .arg("cap")
                    .cmd("SCARD")
                    .arg(keys().processing(EVENT))
                    .query_async(&mut c)
                    .await
                    .expect("watch");
                if let Some(cap) = cap {
                    low.fetch_min(cap, Ordering::Relaxed);
                    high.fetch_max(cap, Ordering::Relaxed);
                }
                if in_use > 20 {
                    over.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let cap = |conn: &MultiplexedConnection| {
        let mut c = conn.clone();
        async move {
            let h = hgetall(&mut c, &keys().valve(EVENT)).await;
            h.get("cap")
                .and_then(|v| v.parse::<u64>().ok())
                .map(|cap| (cap, h.get("reason").cloned().unwrap_or_default()))
        }
    };
    eventually(
        Duration::from_secs(20),
        "the valve open and healthy",
        || {
            let f = cap(&conn);
            async move { f.await.filter(|(c, r)| *c == 20 && r == "healthy") }
        },
    )
    .await;
    failing.store(true, Ordering::Relaxed);
    let (closed, _) = eventually(Duration::from_secs(10), "the valve to cut", || {
        let f = cap(&conn);
        async move { f.await.filter(|(c, r)| *c <= 10 && r == "failures") }
    })
    .await;
    assert!(closed >= 4);
    eventually(Duration::from_secs(10), "the valve at its floor", || {
        let f = cap(&conn);
        async move { f.await.filter(|(c, _)| *c == 4) }
    })
    .await;
    // Closed: the admit script fills no more than the valve allows.
    eventually(
        Duration::from_secs(10),
        "checkout down to the floor",
        || {
            let mut c = conn.clone();
            async move { (scard(&mut c, &keys().processing(EVENT)).await <= 4).then_some(()) }
        },
    )
    .await;
    failing.store(false, Ordering::Relaxed);
    eventually(Duration::from_secs(20), "the valve to reopen", || {
        let f = cap(&conn);
        async move { f.await.filter(|(c, _)| *c == 20) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    watcher.await.expect("watcher");
    checkout.stop();
    assert_eq!(low.load(Ordering::Relaxed), 4, "never below min_concurrent");
    assert_eq!(
        high.load(Ordering::Relaxed),
        20,
        "never above max_concurrent"
    );
    assert_eq!(over.load(Ordering::Relaxed), 0, "never over capacity");
    // Nobody evicted: no slot ended but by its own completion.
    assert_eq!(w.stats.expired.get(), 0);
    let snap = w.stats.events().remove(EVENT).expect("snapshot");
    assert_eq!(snap.valve.map(|v| v.capacity), Some(20));
    w.stop().await;
}

/// `n` waiters in each lane (main `m-*`, priority `p-*`, all joined a minute ago)
/// and `priority_share 50`; their ids.
async fn two_lanes_half_and_half(
    conn: &mut MultiplexedConnection,
    n: usize,
) -> (Vec<String>, Vec<String>) {
    let t0 = clock::now_ms() - 60_000;
    let main = enqueue(conn, EVENT, "m", n, t0).await;
    let vip = enqueue(conn, EVENT, "p", n, t0).await;
    to_priority(conn, EVENT, &vip, t0).await;
    config(conn, "priority_share", "50").await;
    (main, vip)
}

/// `priority_share 50` with both lanes waiting: each batch splits half and half,
/// FIFO within each lane; across calls the share holds; without the setting the
/// priority lane goes first as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_share_splits_each_batch_between_the_lanes() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let (main, vip) = two_lanes_half_and_half(&mut conn, 30).await;
    let lanes_of = |admitted: &[String]| {
        let p: Vec<&String> = admitted.iter().filter(|s| s.starts_with("p-")).collect();
        let m: Vec<&String> = admitted.iter().filter(|s| s.starts_with("m-")).collect();
        (p.len(), m.len())
    };
    let mut seen_p: Vec<String> = Vec::new();
    let mut seen_m: Vec<String> = Vec::new();
    for batch in [10, 10, 3, 1, 1] {
        let o = admit_once(&mut conn, &admit_args(1000, batch)).await;
        let admitted: Vec<String> = o
            .entries
            .iter()
            .map(|raw| {
                waitroom_worker::outbox::OutboxEntry::parse(raw.clone())
                    .expect("entry")
                    .session_id
            })
            .collect();
        let (np, nm) = lanes_of(&admitted);
        assert!(
            np.abs_diff(nm) <= 1,
            "batch of {batch}: {np} priority, {nm} main"
        );
        seen_p.extend(admitted.iter().filter(|s| s.starts_with("p-")).cloned());
        seen_m.extend(admitted.iter().filter(|s| s.starts_with("m-")).cloned());
    }
    // Across calls: 25 admitted, split 12/13 or 13/12, each lane in order.
    assert!(seen_p.len().abs_diff(seen_m.len()) <= 1);
    assert_eq!(seen_p, vip[..seen_p.len()].to_vec());
    assert_eq!(seen_m, main[..seen_m.len()].to_vec());

    // The default (100): the priority lane first, as before.
    let _: () = redis::cmd("HDEL")
        .arg(k.config(EVENT))
        .arg("priority_share")
        .query_async(&mut conn)
        .await
        .expect("HDEL");
    let o = admit_once(&mut conn, &admit_args(1000, 5)).await;
    let ids: HashSet<String> = o
        .entries
        .iter()
        .map(|raw| {
            waitroom_worker::outbox::OutboxEntry::parse(raw.clone())
                .expect("entry")
                .session_id
        })
        .collect();
    assert!(ids.iter().all(|s| s.starts_with("p-")), "{ids:?}");
}

/// The same share through the worker, which signs tokens ahead: the waiters the
/// admit reply names come in the order the share takes them, so the tokens signed
/// for the first of them are the ones the next call needs, and admission goes on
/// lane by lane instead of stopping at a queue-lane waiter without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_share_holds_with_signed_admissions() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let (main, vip) = two_lanes_half_and_half(&mut conn, 20).await;
    let mut w = start_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .max_concurrent(1000)
            .batch_size(4),
    )
    .await;
    let mut order: Vec<String> = Vec::new();
    for _ in 0..5 {
        assert!(w.cycle().await);
        let admitted: HashSet<String> = smembers(&mut conn, &k.processing(EVENT))
            .await
            .into_iter()
            .collect();
        let mut new: Vec<String> = admitted
            .into_iter()
            .filter(|s| !order.contains(s))
            .collect();
        new.sort();
        assert_eq!(new.len(), 4, "a whole batch each pass: {new:?}");
        let np = new.iter().filter(|s| s.starts_with("p-")).count();
        assert_eq!(np, 2, "half and half: {new:?}");
        order.extend(new);
    }
    let seen_p: Vec<String> = order
        .iter()
        .filter(|s| s.starts_with("p-"))
        .cloned()
        .collect();
    let seen_m: Vec<String> = order
        .iter()
        .filter(|s| s.starts_with("m-"))
        .cloned()
        .collect();
    assert_eq!(seen_p, vip[..10].to_vec());
    assert_eq!(seen_m, main[..10].to_vec());
    // Every admission carries its token.
    for sid in &order {
        let h = hgetall(&mut conn, &k.session(EVENT, sid)).await;
        assert!(h.contains_key("checkout_token"), "{sid}: {h:?}");
    }
}
