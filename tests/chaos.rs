//! Chaos: three worker processes, capacity 50, 2000 users, a simulated checkout that
//! completes or abandons; meanwhile workers are killed with SIGKILL and restarted,
//! the script cache is flushed, the workers' connections are killed, redis-server
//! restarts (AOF, so data survives) and the Kafka brokers go away for seconds.
//! A monitor checks capacity all along; at the end: no session admitted twice,
//! every admitted session has its token and at least one QUEUE_READY, every slot
//! came back. Duplicates (allowed by at-least-once) are counted and reported.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_waitroom-worker");
const EVENT: &str = "chaos";
const CAPACITY: u64 = 50;
const USERS: usize = 2000;

fn spawn_worker(redis_url: &str, brokers: &str, id: usize) -> Child {
    Command::new(BIN)
        .args([
            "run",
            "--redis-url",
            redis_url,
            "--kafka-brokers",
            brokers,
            "--event",
            EVENT,
        ])
        .args(["--worker-id", &format!("chaos-{id}"), "--http-addr", "off"])
        .args([
            "--process-interval",
            "100ms",
            "--max-concurrent",
            "50",
            "--batch-size",
            "20",
        ])
        .args(["--checkout-window", "3s", "--session-ttl", "10m"])
        .args(["--publish-timeout", "1s", "--outbox-lease", "2s"])
        .args([
            "--retry-delay",
            "100ms",
            "--retry-max-delay",
            "1s",
            "--redis-timeout",
            "1s",
        ])
        .args([
            "--consumer-session-timeout",
            "3s",
            "--shutdown-timeout",
            "5s",
        ])
        .env("QUEUE_JWT_SECRET", SECRET)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(id))
        .spawn()
        .expect("spawn worker")
}

/// Each worker's log, appended across restarts, kept for a failure's post-mortem.
fn log_file(id: usize) -> Stdio {
    let path = std::env::temp_dir().join(format!(
        "waitroom-chaos-worker-{}-{id}.log",
        std::process::id()
    ));
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::null(),
    }
}

async fn manager(url: &str) -> ConnectionManager {
    redis::Client::open(url)
        .expect("url")
        .get_connection_manager()
        .await
        .expect("connection manager")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_through_kills_flushes_restarts_and_outages() {
    let mut redis = RedisServer::start_with(true);
    let kafka = MockKafka::start();
    let url = redis.url();
    let k = keys();
    {
        let mut c = redis.conn().await;
        enqueue(&mut c, EVENT, "s", USERS, waitroom_worker::clock::now_ms()).await;
    }
    let mut workers: Vec<Child> = (0..3)
        .map(|i| spawn_worker(&url, &kafka.bootstrap, i))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    // QUEUE_READY is read while it is produced: the mock broker keeps only the last
    // few MB of a partition, so reading from the start at the end could miss the
    // oldest messages of a run with many retries.
    // What has been told so far: the checkout completes only sessions whose
    // QUEUE_READY (and so token) reached it, as a real checkout does.
    let told: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
    let read_all = {
        let (stop, bootstrap, told) = (stop.clone(), kafka.bootstrap.clone(), told.clone());
        std::thread::spawn(move || {
            let mut reader = TopicReader::new(&bootstrap, TOPIC);
            let mut seen = 0;
            while !stop.load(Ordering::Relaxed) {
                let msgs = reader.read_for(Duration::from_millis(50));
                if let Ok(mut t) = told.lock() {
                    t.extend(msgs[seen..].iter().map(|m| m.key.clone()));
                }
                seen = msgs.len();
            }
            reader
        })
    };
    // Capacity monitor.
    let monitor = {
        let (stop, peak, key) = (stop.clone(), peak.clone(), k.processing(EVENT));
        let mut c = manager(&url).await;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = redis::cmd("SCARD")
                    .arg(&key)
                    .query_async::<u64>(&mut c)
                    .await
                {
                    peak.fetch_max(n, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // The checkout: completes 4 of 5 sessions it sees in checkout once told, the rest
    // expire.
    let checkout = {
        let (stop, key, told) = (stop.clone(), k.processing(EVENT), told.clone());
        let mut c = manager(&url).await;
        let service = CheckoutService::new(&kafka.bootstrap);
        tokio::spawn(async move {
            let mut done = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(members) = redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async::<Vec<String>>(&mut c)
                    .await
                {
                    let told: HashSet<String> = told.lock().map(|t| t.clone()).unwrap_or_default();
                    for sid in members {
                        let n: usize = sid.trim_start_matches("s-").parse().unwrap_or(0);
                        if n % 5 != 4 && told.contains(&sid) && done.insert(sid.clone()) {
                            let t = Instant::now();
                            service.complete(&sid, Some(EVENT), "completed").await;
                            if t.elapsed() > Duration::from_secs(1) {
                                eprintln!("chaos: completion send took {:?}", t.elapsed());
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // The chaos, one step at a time, with a capacity check after each.
    let mut control = manager(&url).await;
    let mut kills = 0;
    let check = |step: &str| {
        let p = peak.load(Ordering::Relaxed);
        assert!(p <= CAPACITY, "capacity exceeded ({p}) after {step}");
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    workers[0].kill().expect("SIGKILL worker 0");
    let _ = workers[0].wait();
    kills += 1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    workers[0] = spawn_worker(&url, &kafka.bootstrap, 0);
    check("kill -9 of worker 0");

    tokio::time::sleep(Duration::from_secs(1)).await;
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut control)
        .await
        .expect("SCRIPT FLUSH");
    check("SCRIPT FLUSH");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut control)
        .await
        .expect("CLIENT KILL");
    assert!(killed > 0, "there were connections to kill");
    check("CLIENT KILL");

    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart_graceful();
    check("redis-server restart");

    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka.brokers_down();
    tokio::time::sleep(Duration::from_secs(4)).await;
    kafka.brokers_up();
    check("Kafka outage");

    tokio::time::sleep(Duration::from_secs(1)).await;
    workers[1].kill().expect("SIGKILL worker 1");
    let _ = workers[1].wait();
    kills += 1;
    workers[1] = spawn_worker(&url, &kafka.bootstrap, 1);
    check("kill -9 of worker 1");

    // Everyone through, every slot back, every outbox empty.
    let mut c = manager(&url).await;
    let start = Instant::now();
    loop {
        let r: Result<(u64, u64, u64), _> = redis::pipe()
            .cmd("ZCARD")
            .arg(k.queue(EVENT))
            .cmd("SCARD")
            .arg(k.processing(EVENT))
            .cmd("ZCARD")
            .arg(k.outbox(EVENT))
            .query_async(&mut c)
            .await;
        if let Ok((0, 0, 0)) = r {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "not drained: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    monitor.await.expect("monitor");
    checkout.await.expect("checkout");
    for mut w in workers {
        let _ = Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status();
        let _ = w.wait();
    }
    let p = peak.load(Ordering::Relaxed);
    assert!(p <= CAPACITY, "capacity exceeded: {p}");

    // Every admitted session: one admission (one message id), its token, a message.
    let mut reader = read_all.join().expect("reader thread");
    reader.read_until(USERS, Duration::from_secs(60));
    reader.read_for(Duration::from_millis(500));
    let by = reader.by_session();
    let mut duplicates = 0;
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for i in 0..USERS {
        let sid = format!("s-{i:06}");
        let msgs = by
            .get(&sid)
            .unwrap_or_else(|| panic!("{sid} has no QUEUE_READY"));
        // One admission per session: every message id is that admission, or a
        // renewal of it (an admission whose window ran out before Kafka acknowledged
        // it gets a new admitted_at, so a new id); never two ids for one admitted_at.
        let mut by_id: HashMap<&str, &str> = HashMap::new();
        for m in msgs {
            let at = m.value["admitted_at"].as_str().unwrap_or_default();
            let first = by_id.entry(m.message_id.as_str()).or_insert(at);
            assert_eq!(*first, at, "{sid}: one message id, two admissions");
        }
        let times: HashSet<&str> = by_id.values().copied().collect();
        assert_eq!(times.len(), by_id.len(), "{sid} admitted more than once");
        duplicates += msgs.len() - by_id.len();
        let latest = msgs
            .iter()
            .max_by_key(|m| {
                m.value["admitted_at"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .expect("a message");
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(k.session(EVENT, &sid))
            .query_async(&mut c)
            .await
            .expect("HGETALL");
        assert_eq!(
            h.get("checkout_token").map(String::as_str),
            latest.value["checkout_token"].as_str(),
            "{sid} token"
        );
        *statuses
            .entry(h.get("status").cloned().unwrap_or_default())
            .or_default() += 1;
    }
    let deadlines: u64 = redis::cmd("ZCARD")
        .arg(k.deadlines(EVENT))
        .query_async(&mut c)
        .await
        .expect("ZCARD");
    assert_eq!(deadlines, 0, "a deadline left behind");
    assert!(
        statuses.keys().all(|s| s == "completed" || s == "expired"),
        "{statuses:?}"
    );
    eprintln!(
        "chaos: {USERS} users, 3 workers, {kills} kill -9, 1 SCRIPT FLUSH, 1 CLIENT KILL, 1 redis restart, \
         1 Kafka outage of 4s; peak {p}/{CAPACITY} in checkout; {duplicates} duplicate QUEUE_READY; statuses {statuses:?}; lost: 0"
    );
}
