//! Issue 14, part 1: the events are shared among the live replicas. Each event is
//! passed (reaper, outbox claim, admit) by the one replica that owns it, and a
//! killed replica's events are taken over within three intervals of its last beat.
//! Ownership is never a lock: the chaos suite (tests/chaos.rs) keeps proving the
//! invariants with replicas dying and joining.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use waitroom_worker::ownership::{owner, owner_window};
use waitroom_worker::{Keys, Stats};

const EVENTS: usize = 30;

fn events() -> Vec<String> {
    (0..EVENTS).map(|i| format!("ev-{i:02}")).collect()
}

async fn activate(conn: &mut redis::aio::MultiplexedConnection, k: &Keys, events: &[String]) {
    let _: () = redis::cmd("SADD")
        .arg(k.active_events())
        .arg(events)
        .query_async(conn)
        .await
        .expect("SADD active_events");
}

/// Redis's clock, ms.
async fn redis_ms(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    s * 1000 + us / 1000
}

/// `n` replicas `replica-0`, `replica-1`, ... on `redis` and `kafka`, each with the
/// common test settings, `interval` and then `configure`: their ids, the running
/// workers, and (id, stats) for [`steady`].
async fn replicas(
    redis: &RedisServer,
    kafka: &MockKafka,
    n: usize,
    interval: Duration,
    configure: impl Fn(waitroom_worker::ConfigBuilder) -> waitroom_worker::ConfigBuilder,
) -> (Vec<String>, Vec<Running>, Vec<(String, Arc<Stats>)>) {
    let ids: Vec<String> = (0..n).map(|i| format!("replica-{i}")).collect();
    let mut running = Vec::new();
    for id in &ids {
        let base = settings(&redis.url(), &kafka.bootstrap)
            .worker_id(id)
            .process_interval(interval);
        running.push(run_worker(configure(base)).await);
    }
    let stats = ids
        .iter()
        .cloned()
        .zip(running.iter().map(|r| r.stats.clone()))
        .collect();
    (ids, running, stats)
}

/// Until every replica sees all of `ids` sharing the events and together they
/// own each event once.
async fn steady(stats: &[(String, Arc<Stats>)], ids: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    eventually(
        Duration::from_secs(20),
        "the replicas share the events",
        || {
            let ok = stats.iter().all(|(_, s)| {
                s.ownership_shared.load(Relaxed) && s.owner_replicas.load(Relaxed) == ids as u64
            }) && stats
                .iter()
                .map(|(_, s)| s.owned_events.load(Relaxed))
                .sum::<u64>()
                == EVENTS as u64;
            async move { ok.then_some(()) }
        },
    )
    .await;
}

/// (a) Three replicas, batch 1, four users in each of 30 events: each event is
/// admitted for by exactly one replica, the one the rendezvous hash names. Were
/// every replica passing every event, the four admissions of an event would be
/// spread over whichever replica passed first each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_passed_by_exactly_one_replica() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let evs = events();
    activate(&mut conn, &k, &evs).await;
    let interval = Duration::from_millis(500);
    let (ids, running, stats) = replicas(&redis, &kafka, 3, interval, |b| {
        b.batch_size(1).max_concurrent(1000)
    })
    .await;
    steady(&stats, 3).await;
    if let Some(addr) = running[0].http {
        let (code, body) = http_get(addr, "/status").await;
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["ownership"]["shared"], true, "{body}");
        assert_eq!(v["ownership"]["live_replicas"], 3, "{body}");
    }

    let now = waitroom_worker::clock::now_ms();
    for e in &evs {
        enqueue(&mut conn, e, &format!("{e}-s"), 4, now).await;
    }
    eventually(Duration::from_secs(30), "every user admitted", || {
        let (mut c, evs, k) = (conn.clone(), evs.clone(), k.clone());
        async move {
            for e in &evs {
                if zcard(&mut c, &k.queue(e)).await > 0 {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;

    let mut by_event: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (id, s) in &stats {
        for (e, snap) in s.events() {
            if snap.admitted_total > 0 {
                by_event
                    .entry(e)
                    .or_default()
                    .push((id.clone(), snap.admitted_total));
            }
        }
    }
    for e in &evs {
        let admitters = by_event.get(e).cloned().unwrap_or_default();
        let expected = owner(e, &ids).expect("an owner");
        assert_eq!(
            admitters,
            [(expected.to_owned(), 4)],
            "{e}: admitted by {admitters:?}, owner {expected}"
        );
    }
    for r in running {
        r.stop().await;
    }
}

/// (b) Kill one of three replicas (its loop dies mid-sale, no goodbye): users then
/// queued in the events it owned are admitted by the survivors within three
/// intervals of its last beat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_events_are_taken_over_within_three_intervals() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let evs = events();
    activate(&mut conn, &k, &evs).await;
    let interval = Duration::from_millis(400);
    let (ids, mut running, stats) =
        replicas(&redis, &kafka, 3, interval, |b| b.max_concurrent(1000)).await;
    steady(&stats, 3).await;
    // Mid-sale: every event has someone in checkout and someone waiting.
    let now = waitroom_worker::clock::now_ms();
    for e in &evs {
        enqueue(&mut conn, e, &format!("{e}-a"), 2, now).await;
    }

    let victim = running.remove(0);
    victim.kill().await;
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(k.owners())
        .arg(&ids[0])
        .query_async(&mut conn)
        .await
        .expect("ZSCORE");
    let window = owner_window(interval).as_millis() as u64;
    let last_beat = score.expect("the killed replica's owner entry") as u64 - window;
    let orphans: Vec<&String> = evs
        .iter()
        .filter(|e| owner(e, &ids) == Some(ids[0].as_str()))
        .collect();
    assert!(!orphans.is_empty(), "replica-0 owned no event");
    let t0 = waitroom_worker::clock::now_ms() + 1_000_000;
    for e in &orphans {
        enqueue(&mut conn, e, &format!("{e}-b"), 1, t0).await;
    }
    let taken_over = eventually(
        Duration::from_secs(10),
        "the orphans' users admitted",
        || {
            let (mut c, k) = (conn.clone(), k.clone());
            let orphans = orphans.clone();
            async move {
                for e in &orphans {
                    if zcard(&mut c, &k.queue(e)).await > 0 {
                        return None;
                    }
                }
                Some(redis_ms(&mut c).await)
            }
        },
    )
    .await;
    let limit = 3 * interval.as_millis() as u64;
    assert!(
        taken_over.saturating_sub(last_beat) <= limit,
        "taken over {} ms after the last beat (limit {limit} ms)",
        taken_over.saturating_sub(last_beat)
    );
    let survivors: Vec<(String, _)> = stats[1..].to_vec();
    steady(&survivors, 2).await;
    for r in running {
        r.stop().await;
    }
}

/// Until every replica has run `n` more passes.
async fn more_passes(stats: &[(String, Arc<Stats>)], n: u64, what: &str) {
    let cycles = |s: &Arc<Stats>| Stats::get(&s.cycles);
    let c0: Vec<u64> = stats.iter().map(|(_, s)| cycles(s)).collect();
    eventually(Duration::from_secs(10), what, || {
        let done = stats.iter().zip(&c0).all(|((_, s), c)| cycles(s) >= c + n);
        async move { done.then_some(()) }
    })
    .await;
}

/// One waiter in `gone` and one in `new`, then `gone` swapped for `new` in
/// `active_events` (the set keeps its size), until `new` is served: how long
/// that took. Then a few more passes of every replica, and `gone`'s waiter is
/// still waiting.
async fn swap_and_serve(
    conn: &mut redis::aio::MultiplexedConnection,
    k: &Keys,
    stats: &[(String, Arc<Stats>)],
    gone: &str,
    new: &str,
) -> Duration {
    let now = waitroom_worker::clock::now_ms();
    enqueue(conn, gone, "gone", 1, now).await;
    enqueue(conn, new, "new", 1, now).await;
    let _: () = redis::pipe()
        .atomic()
        .cmd("SREM")
        .arg(k.active_events())
        .arg(gone)
        .ignore()
        .cmd("SADD")
        .arg(k.active_events())
        .arg(new)
        .ignore()
        .query_async(conn)
        .await
        .expect("swap");
    let swapped = std::time::Instant::now();
    eventually(Duration::from_secs(15), "the new event served", || {
        let (mut c, q) = (conn.clone(), k.queue(new));
        async move { (zcard(&mut c, &q).await == 0).then_some(()) }
    })
    .await;
    let took = swapped.elapsed();
    // Every replica has passed since (the new event's owner at least twice).
    more_passes(stats, 3, "more passes").await;
    assert_eq!(
        zcard(conn, &k.queue(gone)).await,
        1,
        "the event that left admitted"
    );
    took
}

/// Replicas read `active_events` in full only when it may have changed. An event
/// swapped for another (same size) is still seen: the new one is served within a
/// few passes (well before the complete pass, every 30th, would read the set
/// anyway), and the one that left admits nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_swapped_for_another_is_seen() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let evs = events();
    activate(&mut conn, &k, &evs).await;
    let interval = Duration::from_millis(300);
    let (_, running, stats) = replicas(&redis, &kafka, 2, interval, |b| b).await;
    steady(&stats, 2).await;
    // A few more passes, so both have read the set and skip reading it again.
    more_passes(&stats, 3, "a few passes").await;
    let took = swap_and_serve(&mut conn, &k, &stats, &evs[0], "ev-new").await;
    // The owner of the event that left sees it gone at its next pass and bumps the
    // version; the others read the set again at theirs: a few intervals, not the
    // 9 s until a complete pass.
    assert!(took < interval * 7, "the new event waited {took:?}");
    for r in running {
        r.stop().await;
    }
}

/// Only one replica (the first of the owners by id) checks every member of
/// `active_events` on each pass; the others check only their own events with
/// people waiting, and an event about to admit that nobody checked is checked
/// before its admit call. Here a listed owner that runs no loop (`0-watch`, first
/// by id) keeps watch, so no running replica checks the whole set: an event
/// swapped out (same size) with a waiter still admits nobody, and its owner's
/// check makes every replica read the set again, so the event swapped in is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_leaves_admits_nobody_when_no_running_replica_keeps_watch() {
    use std::sync::atomic::Ordering::Relaxed;
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let evs = events();
    activate(&mut conn, &k, &evs).await;
    let interval = Duration::from_millis(300);
    let watch = "0-watch";
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(k.owners())
        .arg(4_000_000_000_000u64)
        .arg(watch)
        .ignore()
        .cmd("HSET")
        .arg(k.worker(watch))
        .arg("period_ms")
        .arg(interval.as_millis() as u64)
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("list 0-watch");
    let (ids, running, stats) = replicas(&redis, &kafka, 2, interval, |b| b).await;
    let candidates: Vec<String> = std::iter::once(watch.to_owned())
        .chain(ids.iter().cloned())
        .collect();
    eventually(Duration::from_secs(20), "both see three owners", || {
        let ok = stats
            .iter()
            .all(|(_, s)| s.ownership_shared.load(Relaxed) && s.owner_replicas.load(Relaxed) == 3);
        async move { ok.then_some(()) }
    })
    .await;
    more_passes(&stats, 3, "a few passes").await;

    // An event a running replica owns leaves; one a running replica owns comes.
    let owned_by_a_replica = |e: &str| owner(e, &candidates) != Some(watch);
    let gone = evs
        .iter()
        .find(|e| owned_by_a_replica(e))
        .expect("an event a replica owns")
        .clone();
    let new = (0..)
        .map(|i| format!("ev-new-{i}"))
        .find(|e| owned_by_a_replica(e))
        .expect("a name a replica owns");
    let took = swap_and_serve(&mut conn, &k, &stats, &gone, &new).await;
    // Long before a complete pass (every 30th) would have read the set anyway.
    assert!(took < interval * 10, "the new event waited {took:?}");
    for r in running {
        r.stop().await;
    }
}

/// EVALSHA calls `redis` has answered so far.
async fn script_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    command_calls(conn, "evalsha").await
}

/// How many times Redis ran `command` (lower case) so far, `INFO commandstats`.
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// An event a replica gains between complete passes (taken over, or new) used
/// to run every script on its first pass, idle or not: a takeover of thousands
/// of idle events waited for that pass. Now one EXISTS says whether it holds
/// anything to work on; with nothing, no script runs for it. One with a waiter
/// is admitted as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gained_event_with_nothing_in_it_runs_no_script() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    activate(&mut conn, &k, &events()).await;
    let interval = Duration::from_millis(200);
    let (_, running, stats) = replicas(&redis, &kafka, 1, interval, |b| b).await;
    let s = stats[0].1.clone();
    let cycles = || Stats::get(&s.cycles);
    for attempt in 0.. {
        assert!(attempt < 3, "no window between complete passes");
        // Just after a complete pass (every 30th, which runs everything anyway).
        eventually(Duration::from_secs(30), "a complete pass", || {
            let c = cycles();
            async move { (c % 30 == 2).then_some(()) }
        })
        .await;
        let (c0, calls0) = (cycles(), script_calls(&mut conn).await);
        let idle: Vec<String> = (0..100).map(|i| format!("new-{attempt}-{i:03}")).collect();
        activate(&mut conn, &k, &idle).await;
        let busy = format!("busy-{attempt}");
        enqueue(&mut conn, &busy, &busy, 1, waitroom_worker::clock::now_ms()).await;
        activate(&mut conn, &k, std::slice::from_ref(&busy)).await;
        eventually(Duration::from_secs(10), "the new waiter admitted", || {
            let (mut c, q) = (conn.clone(), k.queue(&busy));
            async move { (zcard(&mut c, &q).await == 0).then_some(()) }
        })
        .await;
        let c1 = cycles();
        eventually(Duration::from_secs(10), "three more passes", || {
            let c = cycles();
            async move { (c >= c1 + 3).then_some(()) }
        })
        .await;
        let (c2, calls) = (cycles(), script_calls(&mut conn).await - calls0);
        if c2 / 30 != c0 / 30 {
            continue;
        }
        // The busy event's own calls (peek, reaper, claim, admit, settle ...), a
        // few a pass; running every script for the idle ones would be 300 at once.
        assert!(calls < 60, "{calls} script calls for 100 idle events");
        break;
    }
    for r in running {
        r.stop().await;
    }
}

/// 100 idle events (`idle-000` ...) in `active_events`, one replica passing them
/// every 100 ms, and its figures.
async fn one_replica_over_idle_events(
    redis: &RedisServer,
    kafka: &MockKafka,
    conn: &mut redis::aio::MultiplexedConnection,
    k: &Keys,
) -> (Vec<String>, Vec<Running>, Arc<Stats>) {
    let idle: Vec<String> = (0..100).map(|i| format!("idle-{i:03}")).collect();
    activate(conn, k, &idle).await;
    let (_, running, stats) = replicas(redis, kafka, 1, Duration::from_millis(100), |b| b).await;
    let s = stats[0].1.clone();
    (idle, running, s)
}

/// Until the replica has made `n` passes since its last complete one (every 30th).
async fn passes_past_a_complete_one(s: &Stats, n: u64) {
    eventually(Duration::from_secs(30), "a few passes", || {
        let c = Stats::get(&s.cycles);
        async move { (c % 30 == n).then_some(()) }
    })
    .await;
}

/// A complete pass (every 30th) used to run the reaper, the outbox claim and the
/// admit call for every event it owns: with 10,000 idle events a burst of about
/// 200 ms of Redis CPU every 30 s (BENCHMARKS.md). Now an `EXISTS` says whether
/// an event holds anything for the reaper or the claim; an event with nothing in
/// it runs no script, unless it has a config hash, which its admit call still
/// reads (a stock of 0 set while nobody waits is announced on that pass). The
/// events are asked 16 to an `EXISTS` (their keys, then their configs), and
/// only a group whose configs count one is asked event by event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_pass_runs_no_script_for_an_event_with_nothing_in_it_and_asks_in_groups() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let (idle, running, s) = one_replica_over_idle_events(&redis, &kafka, &mut conn, &k).await;
    let cycles = || Stats::get(&s.cycles);
    // Past the first pass (a complete one) and a few more.
    passes_past_a_complete_one(&s, 3).await;
    let (c0, calls0, exists0) = (
        cycles(),
        script_calls(&mut conn).await,
        command_calls(&mut conn, "exists").await,
    );
    // No script ran for them, and still each shows its figures (the defaults: none
    // has a config), as an admit call's reply would have.
    let shown = s.events();
    let default_capacity = settings(&redis.url(), &kafka.bootstrap)
        .build()
        .expect("settings")
        .admission
        .max_concurrent;
    for e in &idle {
        let snap = shown
            .get(e)
            .unwrap_or_else(|| panic!("{e} is not in the figures"));
        assert_eq!(snap.capacity, default_capacity, "{e}: {snap:?}");
        assert_eq!(
            (snap.queue_length, snap.slots_in_use),
            (0, 0),
            "{e}: {snap:?}"
        );
    }
    // Sold out while nobody waits: only a complete pass looks at this event again.
    let sold = &idle[7];
    let _: () = redis::cmd("HSET")
        .arg(k.config(sold))
        .arg("stock")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("HSET stock");
    eventually(Duration::from_secs(30), "the next complete pass", || {
        let c = cycles();
        async move { (c >= c0 + 30).then_some(()) }
    })
    .await;
    let calls = script_calls(&mut conn).await - calls0;
    let exists = command_calls(&mut conn, "exists").await - exists0;
    let passes = cycles() - c0;
    let announced: bool = redis::cmd("EXISTS")
        .arg(k.sold_out(sold))
        .query_async(&mut conn)
        .await
        .expect("EXISTS sold_out");
    assert!(
        announced,
        "the sell-out of an idle event was never recorded"
    );
    // The sold-out event's admit call and its announcement (settle_sold_out), a
    // few; every script for every event would be 300.
    assert!(
        calls < 10,
        "{calls} script calls over a complete pass of 100 idle events"
    );
    // Asked in groups on the complete pass too: 7 `EXISTS` a plain pass, and on
    // the complete one 14 for the groups, 16 for the configs of the group that
    // has one, one for the key layout. One per event and key set, as before, is
    // 200 more, and the layout check's two per event 200 more again.
    assert!(
        exists <= passes * 8 + 100,
        "{exists} EXISTS over {passes} passes of 100 idle events, a complete one among them"
    );
    for r in running {
        r.stop().await;
    }
}

/// Idle events are asked whether anyone waits sixteen at a time, one `EXISTS` of
/// all their lanes (default key layout): a steady pass over 100 idle events sends
/// 7 commands for them, not 100. A group that counts something is read event by
/// event: a waiter who joins an idle event is admitted, and on a refresh pass an
/// idle event's slots still show in its figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_events_are_asked_in_groups_and_a_new_waiter_is_still_admitted() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let (idle, running, s) = one_replica_over_idle_events(&redis, &kafka, &mut conn, &k).await;
    let cycles = || Stats::get(&s.cycles);
    // Ten passes between complete passes (every 30th, which also checks the key
    // layout with EXISTS): one of them a refresh, asked in groups too.
    passes_past_a_complete_one(&s, 5).await;
    let (c0, exists0) = (cycles(), command_calls(&mut conn, "exists").await);
    eventually(Duration::from_secs(30), "ten more passes", || {
        let c = cycles();
        async move { (c >= c0 + 10).then_some(()) }
    })
    .await;
    let exists = command_calls(&mut conn, "exists").await - exists0;
    let passes = cycles() - c0;
    // 7 a pass (100 events in groups of 16); one per event would be 100 a pass.
    assert!(
        exists <= passes * 8,
        "{exists} EXISTS over {passes} passes of 100 idle events"
    );

    // A waiter in the middle of a group is admitted.
    let now = waitroom_worker::clock::now_ms();
    let busy = &idle[50];
    enqueue(&mut conn, busy, "late", 1, now).await;
    until_one_slot_taken(&conn, &k, busy).await;

    // A slot taken in an idle event (its figures said none) shows after a refresh.
    let held = &idle[20];
    let _: () = redis::cmd("SADD")
        .arg(k.processing(held))
        .arg("someone")
        .query_async(&mut conn)
        .await
        .expect("SADD");
    eventually(Duration::from_secs(20), "the slot in the figures", || {
        let n = s.events().get(held.as_str()).map(|e| e.slots_in_use);
        async move { (n == Some(1)).then_some(()) }
    })
    .await;
    for r in running {
        r.stop().await;
    }
}

/// Until `event` has exactly one slot taken: the waiter queued there admitted.
async fn until_one_slot_taken(conn: &redis::aio::MultiplexedConnection, k: &Keys, event: &str) {
    eventually(Duration::from_secs(20), "the waiter admitted", || {
        let (mut c, key) = (conn.clone(), k.processing(event));
        async move {
            let n: u64 = redis::cmd("SCARD")
                .arg(&key)
                .query_async(&mut c)
                .await
                .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
}

/// Redis's count of reads from its clients (`total_reads_processed`): one per
/// request that fits its 16 KB read buffer, so one per round trip of a small
/// pipeline.
async fn reads_processed(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_reads_processed in INFO stats")
}

/// A pass over idle events took one round trip to open it and one more per
/// chunk of events to ask whether anyone waits, and each round trip costs Redis
/// about as much as sixty `EXISTS`: sixteen replicas made sixteen times the
/// round trips for the events one served. Now the question goes with the
/// opening reads, so a pass in which nobody waits is one round trip; a waiter
/// who joins is still admitted (its group counts someone and is read on its
/// own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_over_idle_events_is_one_round_trip() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let (idle, running, s) = one_replica_over_idle_events(&redis, &kafka, &mut conn, &k).await;
    let cycles = || Stats::get(&s.cycles);
    // Past a complete pass (every 30th, which asks every event for more), and
    // ten plain passes (one of them a refresh) before the next.
    passes_past_a_complete_one(&s, 3).await;
    let (c0, reads0) = (cycles(), reads_processed(&mut conn).await);
    eventually(Duration::from_secs(30), "ten more passes", || {
        let c = cycles();
        async move { (c >= c0 + 10).then_some(()) }
    })
    .await;
    // Less this test's own second INFO.
    let reads = reads_processed(&mut conn).await - reads0 - 1;
    let passes = cycles() - c0;
    assert!(
        reads * 2 <= passes * 3,
        "{reads} reads by Redis over {passes} passes of 100 idle events: more than one round trip a pass"
    );

    let now = waitroom_worker::clock::now_ms();
    let busy = &idle[70];
    enqueue(&mut conn, busy, "late", 1, now).await;
    until_one_slot_taken(&conn, &k, busy).await;
    for r in running {
        r.stop().await;
    }
}
