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

/// A sale with capacity out of the way, so only the rate limits admission: its own
/// Redis and Kafka, `users` queued, `new_users_per_minute` = `rate`, `replicas`
/// workers at `interval`, and a reader that has seen the first admission.
struct Sale {
    _redis: RedisServer,
    _kafka: MockKafka,
    conn: redis::aio::MultiplexedConnection,
    workers: Vec<Running>,
    reader: TopicReader,
}

impl Sale {
    async fn start(
        event: &str,
        users: usize,
        rate: &str,
        interval: Duration,
        replicas: usize,
    ) -> Sale {
        let redis = RedisServer::start();
        let kafka = MockKafka::start();
        let mut conn = redis.conn().await;
        enqueue(
            &mut conn,
            event,
            "r",
            users,
            waitroom_worker::clock::now_ms(),
        )
        .await;
        set_config(&mut conn, event, "new_users_per_minute", rate).await;
        let mut workers = Vec::new();
        for _ in 0..replicas {
            workers.push(
                run_worker(
                    settings(&redis.url(), &kafka.bootstrap)
                        .event(event)
                        .max_concurrent(100000)
                        .batch_size(1000)
                        .process_interval(interval),
                )
                .await,
            );
        }
        let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
        reader.read_until(1, Duration::from_secs(30));
        Sale {
            _redis: redis,
            _kafka: kafka,
            conn,
            workers,
            reader,
        }
    }

    /// Read QUEUE_READY for `d`: the sorted admission instants so far.
    fn admissions_for(&mut self, d: Duration) -> Vec<u64> {
        let mut t: Vec<u64> = self.reader.read_for(d).iter().map(admitted_ms).collect();
        t.sort_unstable();
        t
    }

    async fn stop(self) {
        for w in self.workers {
            w.stop().await;
        }
    }
}

/// How many of `times` fall within `ms` of the first.
fn from_first(times: &[u64], ms: u64) -> usize {
    times.iter().filter(|t| **t < times[0] + ms).count()
}

/// 600 a minute at a 100 ms interval: no second holds more than 10 plus the burst
/// (one interval's worth: 1), and a minute holds 600 within one burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_a_minute_arrive_evenly() {
    let mut sale = Sale::start("rate600", 3000, "600", Duration::from_millis(100), 1).await;
    let times = sale.admissions_for(Duration::from_secs(62));
    sale.stop().await;
    let in_minute = from_first(&times, 60_000);
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
    let mut sale = Sale::start("rate7", 100, "7", Duration::from_secs(1), 1).await;
    let times = sale.admissions_for(Duration::from_secs(62));
    sale.stop().await;
    // Cell 7 is due 60 s after cell 0, right at the window's edge: 7, or 8 within
    // the burst of one.
    let in_minute = from_first(&times, 60_000);
    assert!(
        (7..=8).contains(&in_minute),
        "{in_minute} admitted in the first minute: {times:?}"
    );
    // Evenly: never two in one interval (the burst is one), and 60/7 s apart on
    // average (a cell may go up to 0.45 of a cell early, on the 1 s tick grid).
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap > 1_000, "two admissions {gap} ms apart: {times:?}");
    }
    let mean = (times[times.len() - 1] - times[0]) / (times.len() as u64 - 1);
    assert!(
        (7_500..=9_300).contains(&mean),
        "mean gap {mean} ms, 8571 expected: {times:?}"
    );
}

/// Two replicas share the limiter: together they stay within the same bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_the_rate() {
    let mut sale = Sale::start("rate2", 3000, "600", Duration::from_millis(100), 2).await;
    let times = sale.admissions_for(Duration::from_secs(12));
    sale.stop().await;
    let peak = max_in_window(&times, 1000);
    assert!(
        peak <= 11,
        "{peak} admitted within one second by two replicas"
    );
    let in_ten = from_first(&times, 10_000);
    assert!((99..=101).contains(&in_ten), "{in_ten} admitted in 10 s");
}

/// A new rate takes effect within one interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_change_takes_effect_within_one_interval() {
    const EVENT: &str = "ratechange";
    let mut sale = Sale::start(EVENT, 3000, "6000", Duration::from_millis(100), 1).await;
    sale.reader.read_until(50, Duration::from_secs(30));
    // Down to 60 a minute: from one interval after the change, at most one a second
    // (plus the burst of one).
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut sale.conn)
        .await
        .expect("TIME");
    set_config(&mut sale.conn, EVENT, "new_users_per_minute", "60").await;
    let changed = secs * 1000 + micros / 1000;
    let started = Instant::now();
    let times = sale.admissions_for(Duration::from_secs(4));
    let after = times.iter().filter(|t| **t >= changed + 100).count() as u64;
    let span = started.elapsed().as_millis() as u64;
    assert!(
        after <= span / 1000 + 2,
        "{after} admitted in {span} ms after the change to 60 a minute"
    );
    // And up again to 6000: the outflow recovers within one interval.
    set_config(&mut sale.conn, EVENT, "new_users_per_minute", "6000").await;
    let before = sale.reader.messages.len();
    sale.reader.read_until(before + 50, Duration::from_secs(5));
    sale.stop().await;
}
