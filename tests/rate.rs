//! The per-minute rate cap shapes the outflow (GCRA in `lua/admit.lua`), end to end:
//! a private redis-server, librdkafka's mock cluster, the worker's own loop. The
//! admission instants are read back from the QUEUE_READY messages (`timestamp` is the
//! admission time in ms, on Redis's clock).

mod support;

use std::time::{Duration, Instant};

use support::*;

fn admitted_ms(m: &Published) -> u64 {
    humantime::parse_rfc3339(m.value["timestamp"].as_str().expect("timestamp"))
        .expect("RFC 3339")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
}

/// The most admissions inside any window of `window_ms` (sorted instants).
fn max_in_window(times: &[u64], window_ms: u64) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window_ms {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

async fn set_config(conn: &mut redis::aio::MultiplexedConnection, event: &str, f: &str, v: &str) {
    let _: () = redis::cmd("HSET")
        .arg(keys().config(event))
        .arg(f)
        .arg(v)
        .query_async(conn)
        .await
        .expect("HSET");
}

/// Flags that take capacity out of the way: only the rate limits admission.
fn uncapped(event: &str, interval: &str) -> Vec<String> {
    [
        "--event",
        event,
        "--max-concurrent",
        "100000",
        "--batch-size",
        "1000",
        "--process-interval",
        interval,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Read QUEUE_READY for `d`, returning the sorted admission instants.
fn admissions_for(reader: &mut TopicReader, d: Duration) -> Vec<u64> {
    let mut t: Vec<u64> = reader.read_for(d).iter().map(admitted_ms).collect();
    t.sort_unstable();
    t
}

/// 600 a minute at a 100 ms interval: no second holds more than 10 plus the burst
/// (one interval's worth: 1), and a minute holds 600 within one burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_a_minute_arrive_evenly() {
    const EVENT: &str = "rate600";
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    enqueue(
        &mut conn,
        EVENT,
        "r",
        3000,
        waitroom_worker::clock::now_ms(),
    )
    .await;
    set_config(&mut conn, EVENT, "new_users_per_minute", "600").await;
    let flags = uncapped(EVENT, "100ms");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let w = run_worker(settings(&redis.url(), &kafka.bootstrap, &flags)).await;
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    reader.read_until(1, Duration::from_secs(30));
    let times = admissions_for(&mut reader, Duration::from_secs(62));
    w.stop().await;
    let first = times[0];
    let in_minute = times.iter().filter(|t| **t < first + 60_000).count();
    assert!(
        (599..=601).contains(&in_minute),
        "{in_minute} admitted in the first minute"
    );
    let peak = max_in_window(&times, 1000);
    assert!(peak <= 11, "{peak} admitted within one second");
}

/// 7 a minute at a 1 s interval does not divide into intervals: it still averages 7
/// a minute, with no burst beyond one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_a_minute_average_exactly() {
    const EVENT: &str = "rate7";
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    enqueue(&mut conn, EVENT, "r", 100, waitroom_worker::clock::now_ms()).await;
    set_config(&mut conn, EVENT, "new_users_per_minute", "7").await;
    let flags = uncapped(EVENT, "1s");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let w = run_worker(settings(&redis.url(), &kafka.bootstrap, &flags)).await;
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    reader.read_until(1, Duration::from_secs(30));
    let times = admissions_for(&mut reader, Duration::from_secs(62));
    w.stop().await;
    let first = times[0];
    let in_minute = times.iter().filter(|t| **t < first + 60_000).count();
    // Cell 7 is due 60 s after cell 0, right at the window's edge: 7, or 8 within
    // the burst of one.
    assert!(
        (7..=8).contains(&in_minute),
        "{in_minute} admitted in the first minute: {times:?}"
    );
    // Evenly: never two in one interval (the burst is one), and 60/7 s apart on
    // average (a cell may go up to a quarter of a cell early, on the 1 s tick grid).
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap > 1_000, "two admissions {gap} ms apart: {times:?}");
    }
    let mean = (times[times.len() - 1] - times[0]) / (times.len() as u64 - 1);
    assert!(
        (7_800..=9_300).contains(&mean),
        "mean gap {mean} ms, 8571 expected: {times:?}"
    );
}

/// Two replicas share the limiter: together they stay within the same bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_the_rate() {
    const EVENT: &str = "rate2";
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    enqueue(
        &mut conn,
        EVENT,
        "r",
        3000,
        waitroom_worker::clock::now_ms(),
    )
    .await;
    set_config(&mut conn, EVENT, "new_users_per_minute", "600").await;
    let flags = uncapped(EVENT, "100ms");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = run_worker(settings(&redis.url(), &kafka.bootstrap, &flags)).await;
    let b = run_worker(settings(&redis.url(), &kafka.bootstrap, &flags)).await;
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    reader.read_until(1, Duration::from_secs(30));
    let times = admissions_for(&mut reader, Duration::from_secs(12));
    a.stop().await;
    b.stop().await;
    let peak = max_in_window(&times, 1000);
    assert!(
        peak <= 11,
        "{peak} admitted within one second by two replicas"
    );
    let first = times[0];
    let in_ten = times.iter().filter(|t| **t < first + 10_000).count();
    assert!((99..=101).contains(&in_ten), "{in_ten} admitted in 10 s");
}

/// A new rate takes effect within one interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_change_takes_effect_within_one_interval() {
    const EVENT: &str = "ratechange";
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    enqueue(
        &mut conn,
        EVENT,
        "r",
        3000,
        waitroom_worker::clock::now_ms(),
    )
    .await;
    set_config(&mut conn, EVENT, "new_users_per_minute", "6000").await;
    let flags = uncapped(EVENT, "100ms");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let w = run_worker(settings(&redis.url(), &kafka.bootstrap, &flags)).await;
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    reader.read_until(50, Duration::from_secs(30));
    // Down to 60 a minute: from one interval after the change, at most one a second
    // (plus the burst of one).
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .expect("TIME");
    set_config(&mut conn, EVENT, "new_users_per_minute", "60").await;
    let changed = secs * 1000 + micros / 1000;
    let started = Instant::now();
    let times = admissions_for(&mut reader, Duration::from_secs(4));
    let after: Vec<u64> = times
        .iter()
        .copied()
        .filter(|t| *t >= changed + 100)
        .collect();
    let span = started.elapsed().as_millis() as u64;
    assert!(
        after.len() as u64 <= span / 1000 + 2,
        "{} admitted in {span} ms after the change to 60 a minute",
        after.len()
    );
    // And up again to 6000: the outflow recovers within one interval.
    set_config(&mut conn, EVENT, "new_users_per_minute", "6000").await;
    let before = reader.messages.len();
    reader.read_until(before + 50, Duration::from_secs(5));
    w.stop().await;
}
