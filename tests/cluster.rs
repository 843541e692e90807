//! Against a real three-master Redis Cluster started by the test: with the cluster
//! key layout every key of an event lives in the event's hash slot, scripts are
//! loaded on every master, and events owned by different masters are admitted,
//! tokened, published and released with capacity held per event.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::*;
use waitroom_worker::scripts::Scripts;
use waitroom_worker::store::{self, Endpoint, RedisConn};
use waitroom_worker::token::Verifier;
use waitroom_worker::{KeyLayout, Keys};

const CAPACITY: u64 = 5;
const USERS_PER_EVENT: usize = 20;

fn cluster_keys() -> Keys {
    Keys::new("waitroom", KeyLayout::Cluster)
}

/// One event id per master, so the run spans all three.
async fn one_event_per_node(cluster: &RedisCluster) -> Vec<String> {
    let mut by_node: HashMap<usize, String> = HashMap::new();
    for i in 0..256 {
        let e = format!("show-{i}");
        let node = cluster.owner(&format!("{{{e}}}")).await;
        by_node.entry(node).or_insert(e);
        if by_node.len() == cluster.ports.len() {
            let mut v: Vec<(usize, String)> = by_node.into_iter().collect();
            v.sort();
            return v.into_iter().map(|(_, e)| e).collect();
        }
    }
    panic!("256 event ids did not cover every master");
}

/// Queue `n` users per event as the `enqueue` subcommand does: one pipeline that
/// spans the events' slots and `active_events`, split by slot under the hood.
/// Returns (event, session) pairs.
async fn enqueue_all(
    conn: &mut RedisConn,
    k: &Keys,
    events: &[String],
    n: usize,
) -> Vec<(String, String)> {
    let mut sessions = Vec::new();
    for e in events {
        let done = waitroom_worker::enqueue::enqueue(conn, k, e, n, Duration::from_secs(600))
            .await
            .expect("enqueue on the cluster");
        assert_eq!(done.count, n);
        let first = done.first.expect("a first session");
        let run = first.rsplit_once('-').map(|(r, _)| r).expect("run prefix");
        for i in 0..n {
            sessions.push((e.clone(), format!("{run}-{i:07}")));
        }
    }
    sessions
}

async fn scard(conn: &mut RedisConn, key: &str) -> u64 {
    redis::cmd("SCARD")
        .arg(key)
        .query_async(conn)
        .await
        .expect("SCARD")
}

/// Three events on three masters, capacity 5 each, 20 users each: every user is
/// admitted exactly once with a valid token and one QUEUE_READY, completed by the
/// checkout service and released, while a monitor sees no event above capacity.
/// Mid-run every master's script cache is flushed. The worker was given one seed
/// node only and found the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_three_masters_are_admitted_in_their_slots_and_never_over_capacity() {
    let cluster = RedisCluster::start();
    let kafka = MockKafka::start();
    let events = one_event_per_node(&cluster).await;
    let k = cluster_keys();
    let endpoint = Endpoint::Cluster(vec![cluster.url(2)]);
    let mut conn = store::connect(&endpoint, Duration::from_secs(5))
        .await
        .expect("cluster connection");

    let sessions = enqueue_all(&mut conn, &k, &events, USERS_PER_EVENT).await;
    // Each event's keys are on the master that owns its slot: a plain connection to
    // that node reads them without a redirect.
    for (i, e) in events.iter().enumerate() {
        let mut node = cluster.node(i).await;
        let queued: u64 = redis::cmd("ZCARD")
            .arg(k.queue(e))
            .query_async(&mut node)
            .await
            .expect("the queue lives on its event's master");
        assert_eq!(queued, USERS_PER_EVENT as u64);
        let (_, sid) = sessions.iter().find(|(ev, _)| ev == e).expect("a session");
        let status: String = redis::cmd("HGET")
            .arg(k.session(e, sid))
            .arg("status")
            .query_async(&mut node)
            .await
            .expect("the session hash lives on its event's master");
        assert_eq!(status, "queued");
    }

    let settings = settings(&cluster.url(0), &kafka.bootstrap)
        .redis_cluster([cluster.url(1)])
        .max_concurrent(CAPACITY)
        .batch_size(3)
        .build()
        .expect("settings valid");
    assert_eq!(settings.keys.layout(), KeyLayout::Cluster);
    let worker = run_worker(settings).await;
    let http = worker.http.expect("http on");
    // Loaded on every master at start-up.
    scripts_on_every_master(&cluster, "at start-up").await;

    // The monitor: processing of every event, polled until the end.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let monitor = {
        let (stop, peak, samples) = (stop.clone(), peak.clone(), samples.clone());
        let mut c = conn.clone();
        let keys: Vec<String> = events.iter().map(|e| k.processing(e)).collect();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for key in &keys {
                    peak.fetch_max(scard(&mut c, key).await, Ordering::Relaxed);
                }
                samples.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let checkout = CheckoutService::new(&kafka.bootstrap);
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    let total = sessions.len();
    let mut completed: HashSet<String> = HashSet::new();
    let mut flushed = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    while completed.len() < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} sessions went through in 90s",
            completed.len()
        );
        let seen: Vec<Published> =
            tokio::task::block_in_place(|| reader.read_for(Duration::from_millis(100)).to_vec());
        for m in seen {
            if completed.insert(m.key.clone()) {
                let event = m.value["event_id"].as_str().expect("event_id").to_owned();
                checkout.complete(&m.key, Some(&event), "completed").await;
            }
        }
        if !flushed && completed.len() >= total / 3 {
            flush_every_master(&cluster).await;
            flushed = true;
        }
    }
    assert!(flushed, "the script caches were flushed mid-run");

    // Every slot comes back.
    eventually(Duration::from_secs(20), "every slot released", || {
        let mut c = conn.clone();
        let keys: Vec<String> = events.iter().map(|e| k.processing(e)).collect();
        async move {
            for key in &keys {
                if scard(&mut c, key).await != 0 {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    monitor.await.expect("monitor");

    let by_session = reader.by_session();
    let verifier = Verifier::hs256(SECRET.as_bytes(), "waitroom", "checkout").expect("verifier");
    let mut duplicates = 0;
    for (e, sid) in &sessions {
        let msgs = by_session.get(sid).map(Vec::as_slice).unwrap_or_default();
        assert!(!msgs.is_empty(), "{sid} of {e} never got a QUEUE_READY");
        duplicates += msgs.len() - 1;
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(k.session(e, sid))
            .query_async(&mut conn)
            .await
            .expect("HGETALL");
        assert_eq!(h["status"], "completed", "{sid} of {e}");
        let claims = verifier
            .verify(&h["checkout_token"])
            .expect("token verifies");
        assert_eq!(
            (claims.sid.as_str(), claims.eid.as_str()),
            (sid.as_str(), e.as_str())
        );
        assert_eq!(
            msgs[0].value["checkout_token"],
            h["checkout_token"].as_str()
        );
    }
    assert_eq!(duplicates, 0, "QUEUE_READY sent twice for some session");
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= CAPACITY,
        "processing reached {peak} with capacity {CAPACITY}"
    );
    assert!(
        peak > 0 && samples.load(Ordering::Relaxed) > 10,
        "the monitor saw the run"
    );

    // Status reads every event's keys through the split pipelines.
    let st = waitroom_worker::report::status(&mut conn, &k, &[], CAPACITY, Duration::from_secs(30))
        .await
        .expect("status on the cluster");
    assert_eq!(st.events.keys().cloned().collect::<Vec<_>>(), {
        let mut e = events.clone();
        e.sort();
        e
    });
    assert!(
        st.events
            .values()
            .all(|s| s.queue_length == 0 && s.slots_in_use == 0)
    );
    assert_eq!(st.live_workers.len(), 1);

    // /readyz asks every master and loads what a flush took away, everywhere.
    flush_every_master(&cluster).await;
    let (code, body) = http_get(http, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    scripts_on_every_master(&cluster, "after /readyz").await;
    worker.stop().await;
}

async fn flush_every_master(cluster: &RedisCluster) {
    for i in 0..cluster.ports.len() {
        let mut node = cluster.node(i).await;
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut node)
            .await
            .expect("SCRIPT FLUSH");
    }
}

async fn scripts_on_every_master(cluster: &RedisCluster, when: &str) {
    let scripts = Scripts::new();
    for i in 0..cluster.ports.len() {
        let mut node = cluster.node(i).await;
        let mut q = redis::cmd("SCRIPT");
        q.arg("EXISTS");
        for s in scripts.all() {
            q.arg(s.sha());
        }
        let loaded: Vec<u8> = q.query_async(&mut node).await.expect("SCRIPT EXISTS");
        assert_eq!(
            loaded,
            vec![1; Scripts::new().all().len()],
            "scripts on node {i} {when}"
        );
    }
}

/// Processing of each event, read through the cluster connection; None while any
/// master does not answer.
async fn in_use(conn: &RedisConn, k: &Keys, events: &[String]) -> Option<Vec<u64>> {
    let mut c = conn.clone();
    let mut out = Vec::new();
    for e in events {
        out.push(
            redis::cmd("SCARD")
                .arg(k.processing(e))
                .query_async(&mut c)
                .await
                .ok()?,
        );
    }
    Some(out)
}

/// A master killed with SIGKILL stops only its own event: the events of the other
/// masters go on being admitted while it is down, and when it is back (with its AOF
/// and its slots) its event resumes. Nobody is lost or admitted twice: per event,
/// queue + processing still holds every user exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_going_down_stops_only_its_own_events() {
    const USERS: usize = 300;
    let mut cluster = RedisCluster::start_with(true);
    let kafka = MockKafka::start();
    let events = one_event_per_node(&cluster).await;
    let k = cluster_keys();
    let endpoint = Endpoint::Cluster(vec![cluster.url(1), cluster.url(2)]);
    let mut conn = store::connect(&endpoint, Duration::from_secs(2))
        .await
        .expect("cluster connection");
    enqueue_all(&mut conn, &k, &events, USERS).await;
    // One user per event every 20 ms: admission is still going on all three when
    // the master goes down.
    let settings = settings(&cluster.url(0), &kafka.bootstrap)
        .redis_cluster([cluster.url(1), cluster.url(2)])
        .max_concurrent(1000)
        .batch_size(1)
        .redis_timeout(Duration::from_secs(1))
        .retry_attempts(1);
    let worker = run_worker(settings).await;

    let started = eventually(Duration::from_secs(20), "all three admitting", || {
        let c = conn.clone();
        let (k, events) = (k.clone(), events.clone());
        async move {
            in_use(&c, &k, &events)
                .await
                .filter(|n| n.iter().all(|&x| x >= 5))
        }
    })
    .await;
    cluster.kill(0);
    let down_at = Instant::now();
    // The other two keep going: each admits 20 more while master 0 is down.
    let mut before = Vec::new();
    for e in &events[1..] {
        before.push(scard(&mut conn, &k.processing(e)).await);
    }
    eventually(
        Duration::from_secs(20),
        "the other masters' events go on",
        || {
            let c = conn.clone();
            let (k, events, before) = (k.clone(), events[1..].to_vec(), before.clone());
            async move {
                let now = in_use(&c, &k, &events).await?;
                now.iter()
                    .zip(&before)
                    .all(|(n, b)| *n >= b + 20)
                    .then_some(())
            }
        },
    )
    .await;
    let went_on_for = down_at.elapsed();
    cluster.restart(0);
    let stalled_at = {
        let mut node = cluster.node(0).await;
        redis::cmd("SCARD")
            .arg(k.processing(&events[0]))
            .query_async::<u64>(&mut node)
            .await
            .expect("SCARD on the restarted master")
    };
    assert!(stalled_at >= started[0], "the AOF kept event 0's slots");
    eventually(Duration::from_secs(30), "event 0 resumes", || {
        let c = conn.clone();
        let (k, e) = (k.clone(), vec![events[0].clone()]);
        async move {
            let n = in_use(&c, &k, &e).await?;
            (n[0] >= stalled_at + 10).then_some(())
        }
    })
    .await;
    worker.stop().await;

    for e in &events {
        let (queued, admitted): (u64, u64) = redis::pipe()
            .cmd("ZCARD")
            .arg(k.queue(e))
            .cmd("SCARD")
            .arg(k.processing(e))
            .query_async(&mut conn)
            .await
            .expect("counts");
        assert_eq!(
            queued + admitted,
            USERS as u64,
            "{e}: {queued} queued + {admitted} admitted"
        );
    }
    eprintln!(
        "cluster: master 0 down for {went_on_for:?} while the others admitted 20 more each; \
         event 0 held {stalled_at} slots across the restart and resumed"
    );
}

/// `n` events (`bulk-0` ..) with `i % 4 + 1` queued users each (queue entries only),
/// seeded through the cluster connection; the events and their queue lengths.
async fn queues(conn: &mut RedisConn, k: &Keys, n: usize) -> Vec<(String, u64)> {
    let mut p = redis::pipe();
    let mut out = Vec::new();
    for i in 0..n {
        let e = format!("bulk-{i}");
        let users = (i % 4 + 1) as u64;
        for u in 0..users {
            p.cmd("ZADD")
                .arg(k.queue(&e))
                .arg(u)
                .arg(format!("{e}-s{u}"))
                .ignore();
        }
        out.push((e, users));
    }
    p.query_async::<()>(conn).await.expect("seed the queues");
    out
}

/// One pipeline over every event, as a pass builds one: a script call per event
/// (ZCARD of its queue, through EVAL with the key declared) and a plain ZCARD, with a
/// keyless PING in the middle. Asserts every reply is the right one, in order.
async fn read_all(conn: &mut RedisConn, k: &Keys, events: &[(String, u64)], when: &str) {
    let mut p = redis::pipe();
    for (i, (e, _)) in events.iter().enumerate() {
        p.cmd("EVAL")
            .arg("return redis.call('ZCARD', KEYS[1])")
            .arg(1)
            .arg(k.queue(e));
        p.cmd("ZCARD").arg(k.queue(e));
        if i == events.len() / 2 {
            p.cmd("PING");
        }
    }
    let replies: Vec<redis::Value> = p.query_async(conn).await.expect("the pipeline");
    let mut it = replies.into_iter();
    for (i, (e, users)) in events.iter().enumerate() {
        for what in ["EVAL", "ZCARD"] {
            assert_eq!(
                it.next(),
                Some(redis::Value::Int(*users as i64)),
                "{what} of {e} {when}"
            );
        }
        if i == events.len() / 2 {
            assert_eq!(
                it.next(),
                Some(redis::Value::SimpleString("PONG".into())),
                "PING {when}"
            );
        }
    }
    assert_eq!(it.next(), None, "more replies than commands {when}");
}

fn counts(conn: &RedisConn) -> store::PipelineCounts {
    conn.pipeline_counts().expect("a cluster connection counts")
}

/// A pipeline over 300 events (all three masters, some 300 hash slots) goes as one
/// pipeline per master, with its replies in command order: if the split per hash slot
/// came back, this pipeline would be some 300 pipelines. A worker's steady pass over
/// the same events sends a handful of pipelines per master, not one per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_over_many_events_goes_as_one_pipeline_per_master() {
    const EVENTS: usize = 300;
    let cluster = RedisCluster::start();
    let k = cluster_keys();
    let mut conn = store::connect(
        &Endpoint::Cluster(vec![cluster.url(0)]),
        Duration::from_secs(5),
    )
    .await
    .expect("cluster connection");
    let events = queues(&mut conn, &k, EVENTS).await;
    let mut owners = HashSet::new();
    for (e, _) in &events[..30] {
        owners.insert(cluster.owner(&format!("{{{e}}}")).await);
    }
    assert_eq!(owners.len(), 3, "the events span every master");

    let before = counts(&conn);
    read_all(&mut conn, &k, &events, "on a settled cluster").await;
    let after = counts(&conn);
    assert_eq!(
        after.node_pipelines - before.node_pipelines,
        3,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.slot_pipelines, before.slot_pipelines, "{after:?}");
    assert_eq!(after.redirected, 0, "{after:?}");
    assert_eq!(after.map_reads, 1, "the map is read once: {after:?}");

    // A worker's pass: admit everyone, then time nothing but count a steady pass.
    let kafka = MockKafka::start();
    let mut p = redis::pipe();
    for (e, users) in &events {
        for u in 0..*users {
            p.cmd("HSET")
                .arg(k.session(e, &format!("{e}-s{u}")))
                .arg("status")
                .arg("queued")
                .arg("user_id")
                .arg(format!("u{u}"))
                .ignore();
        }
        p.cmd("SADD").arg(k.active_events()).arg(e).ignore();
    }
    p.query_async::<()>(&mut conn).await.expect("sessions");
    let mut w = start_worker(
        settings(&cluster.url(0), &kafka.bootstrap)
            .redis_cluster([cluster.url(1)])
            .max_concurrent(1000)
            .batch_size(10)
            .http_addr(None),
    )
    .await;
    assert!(w.cycle().await, "the admitting pass");
    assert!(w.cycle().await, "a pass");
    let before = w.redis_pipeline_counts().expect("cluster counts");
    assert!(w.cycle().await, "the steady pass");
    let after = w.redis_pipeline_counts().expect("cluster counts");
    let sent = (after.node_pipelines - before.node_pipelines)
        + (after.slot_pipelines - before.slot_pipelines);
    eprintln!("steady pass over {EVENTS} events: {before:?} -> {after:?}");
    assert!(
        after.node_pipelines > before.node_pipelines,
        "the pass went by master: {after:?}"
    );
    assert!(
        sent < EVENTS as u64 / 5,
        "{sent} pipelines for a pass over {EVENTS} events: split per slot again?"
    );
    assert_eq!(after.redirected, 0, "{after:?}");
    tokio::task::spawn_blocking(move || drop(w))
        .await
        .expect("drop the worker");
}

/// A plain connection to node `i` runs `args` and must succeed.
async fn on_node<T: redis::FromRedisValue>(cluster: &RedisCluster, i: usize, args: &[&str]) -> T {
    let mut c = cluster.node(i).await;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{args:?} on node {i}: {e}"))
}

/// After a slot moves to another master (keys migrated with MIGRATE, as `redis-cli
/// --cluster reshard` does), a connection whose map still names the old master gets
/// ASK (mid-migration) and MOVED (after) for that slot's commands: those alone are
/// sent again by slot, every reply stays in order, the map is read again, and the
/// next pipeline is one per master again. A worker made before the move keeps
/// admitting the moved event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_another_master_is_followed_with_replies_in_order() {
    const EVENTS: usize = 60;
    let cluster = RedisCluster::start();
    let kafka = MockKafka::start();
    let k = cluster_keys();
    let mut conn = store::connect(
        &Endpoint::Cluster(vec![cluster.url(0)]),
        Duration::from_secs(5),
    )
    .await
    .expect("cluster connection");
    let events = queues(&mut conn, &k, EVENTS).await;
    // One event per master with real sessions, admitted by a worker one per pass
    // each, so the worker's pipelines span the masters; the first one moves.
    let served = one_event_per_node(&cluster).await;
    let moved = served[0].clone();
    let sessions = enqueue_all(&mut conn, &k, &served, 50).await;
    assert_eq!(sessions.len(), 150);
    let mut w = start_worker(
        served
            .iter()
            .fold(settings(&cluster.url(0), &kafka.bootstrap), |s, e| {
                s.event(e)
            })
            .redis_cluster([cluster.url(0)])
            .max_concurrent(1000)
            .batch_size(1)
            .http_addr(None),
    )
    .await;
    assert!(w.cycle().await, "a pass before the move");
    read_all(&mut conn, &k, &events, "before the move").await;
    let settled = counts(&conn);

    // Move the slot of `moved` from node 0 (its owner) to node 1.
    let (from, to) = (0, 1);
    assert_eq!(cluster.owner(&format!("{{{moved}}}")).await, from);
    let slot: i64 = on_node(&cluster, from, &["CLUSTER", "KEYSLOT", &k.queue(&moved)]).await;
    let slot = slot.to_string();
    let from_id: String = on_node(&cluster, from, &["CLUSTER", "MYID"]).await;
    let to_id: String = on_node(&cluster, to, &["CLUSTER", "MYID"]).await;
    let _: () = on_node(
        &cluster,
        to,
        &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id],
    )
    .await;
    let _: () = on_node(
        &cluster,
        from,
        &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id],
    )
    .await;
    let to_port = cluster.ports[to].to_string();
    loop {
        let keys: Vec<String> =
            on_node(&cluster, from, &["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]).await;
        if keys.is_empty() {
            break;
        }
        let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        let _: () = on_node(&cluster, from, &args).await;
    }
    // Mid-migration: node 0 answers ASK for the moved slot's commands.
    let mid = events
        .iter()
        .cloned()
        .chain([(moved.clone(), 50)])
        .collect::<Vec<_>>();
    // `moved` has 50 sessions queued minus the one admitted before the move.
    let before_move: u64 = redis::cmd("ZCARD")
        .arg(k.queue(&moved))
        .query_async(&mut conn)
        .await
        .expect("ZCARD of the moved event");
    let mid: Vec<(String, u64)> = mid
        .into_iter()
        .map(|(e, n)| if e == moved { (e, before_move) } else { (e, n) })
        .collect();
    read_all(&mut conn, &k, &mid, "mid-migration (ASK)").await;
    let asked = counts(&conn);
    assert!(asked.redirected > settled.redirected, "{asked:?}");

    for i in [to, from, 2] {
        let _: () = on_node(&cluster, i, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]).await;
    }
    assert_eq!(cluster.owner(&format!("{{{moved}}}")).await, to);
    // After the move: node 0 answers MOVED; the map is read again.
    read_all(&mut conn, &k, &mid, "after the move (MOVED)").await;
    let moved_counts = counts(&conn);
    assert!(
        moved_counts.redirected > asked.redirected,
        "{moved_counts:?}"
    );
    // The map is read again at most every 250 ms: until then the moved slot's
    // commands are redirected again, with every reply still in order.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let before = counts(&conn);
        read_all(&mut conn, &k, &mid, "while the map is read again").await;
        let after = counts(&conn);
        if after.redirected == before.redirected {
            assert_eq!(
                after.node_pipelines - before.node_pipelines,
                3,
                "one per master again: {after:?}"
            );
            assert_eq!(after.slot_pipelines, before.slot_pipelines);
            break after;
        }
        assert!(
            Instant::now() < deadline,
            "still redirected 10 s after the move: {after:?}"
        );
    };
    assert!(after.map_reads > moved_counts.map_reads, "{after:?}");

    // The worker, whose map still says node 0, keeps admitting the moved event.
    let admitted_before: u64 = {
        let mut node = cluster.node(to).await;
        redis::cmd("SCARD")
            .arg(k.processing(&moved))
            .query_async(&mut node)
            .await
            .expect("processing on the new master")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Each pass admits one; a pass may fail while the map catches up.
        w.cycle().await;
        let n: u64 = redis::cmd("SCARD")
            .arg(k.processing(&moved))
            .query_async(&mut conn)
            .await
            .expect("SCARD through the cluster connection");
        if n >= admitted_before + 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the moved event admitted {} in 20s after the move",
            n - admitted_before
        );
    }
    let wc = w.redis_pipeline_counts().expect("cluster counts");
    // Its map may not have been read again yet (at most every 250 ms): the moved
    // slot's commands were redirected and sent again meanwhile.
    assert!(
        wc.node_pipelines > 0 && wc.redirected > 0,
        "the worker's pipelines went by master and followed the move: {wc:?}"
    );
    tokio::task::spawn_blocking(move || drop(w))
        .await
        .expect("drop the worker");
    for e in &served {
        let (queued, admitted): (u64, u64) = redis::pipe()
            .cmd("ZCARD")
            .arg(k.queue(e))
            .cmd("SCARD")
            .arg(k.processing(e))
            .query_async(&mut conn)
            .await
            .expect("counts");
        assert_eq!(queued + admitted, 50, "{e}: nobody lost or admitted twice");
    }
}
