//! Soak (not run in CI: ignored; command in the README). One million users through
//! one event at capacity 1,000: a simulated checkout completes every session it
//! sees in checkout, through the release script the completion consumer uses.
//! Checks that everyone was admitted once and every worker-owned key is back to
//! empty afterwards; reports the process's resident memory along the way (memory
//! is reported, never asserted).
//!
//! SOAK_USERS=1000000 cargo test --release --test soak -- --ignored --nocapture

mod support;

use std::time::{Duration, Instant};

use support::*;
use waitroom_worker::Stats;
use waitroom_worker::scripts::release::{self, Outcome};
use waitroom_worker::scripts::{self, Scripts};

const EVENT: &str = "soak";

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: long, run by hand (README)"]
async fn a_million_users_through_one_event() {
    let users: usize = std::env::var("SOAK_USERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    waitroom_worker::enqueue::enqueue(&mut conn, &k, EVENT, users, Duration::from_secs(7200))
        .await
        .expect("enqueue");
    let s = settings(&redis.url(), &kafka.bootstrap)
        .event(EVENT)
        .max_concurrent(1000)
        .batch_size(1000)
        .process_interval(Duration::from_millis(10));
    let w = run_worker(s).await;
    let stats = w.stats.clone();

    // The checkout: release everyone in checkout, 1,000 per round trip.
    let scripts = Scripts::new();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut last_sample = Instant::now();
    let mut released = 0usize;
    loop {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(k.processing(EVENT))
            .query_async(&mut conn)
            .await
            .expect("SMEMBERS");
        if !members.is_empty() {
            let calls: Vec<_> = members
                .iter()
                .map(|sid| {
                    release::call(
                        &scripts.release,
                        &k,
                        EVENT,
                        sid,
                        Outcome::Completed,
                        Duration::from_secs(7200),
                        &format!("soak/{sid}"),
                        1,
                    )
                })
                .collect();
            let results = scripts::run_batch(&mut conn, &calls)
                .await
                .expect("release batch");
            released += results
                .iter()
                .filter(|r| matches!(r, Ok(redis::Value::Int(1))))
                .count();
        }
        if last_sample.elapsed() > Duration::from_secs(5) {
            samples.push((
                started.elapsed().as_secs(),
                Stats::get(&stats.admitted),
                rss_mb(),
            ));
            last_sample = Instant::now();
        }
        let queue: u64 = zcard(&mut conn, &k.queue(EVENT)).await;
        if queue == 0 && members.is_empty() && Stats::get(&stats.admitted) as usize == users {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "soak did not finish in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let the last acknowledgements land.
    let outbox = k.outbox(EVENT);
    let deadline = Instant::now() + Duration::from_secs(60);
    while zcard(&mut conn, &outbox).await > 0 {
        assert!(Instant::now() < deadline, "outbox did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.stop().await;
    let secs = started.elapsed().as_secs_f64();

    assert_eq!(
        Stats::get(&stats.admitted) as usize,
        users,
        "each user admitted once"
    );
    assert_eq!(released, users, "each slot released once");
    assert_eq!(
        Stats::get(&stats.published) as usize,
        users,
        "one QUEUE_READY each"
    );
    for key in [k.outbox(EVENT), k.deadlines(EVENT), k.queue(EVENT)] {
        assert_eq!(zcard(&mut conn, &key).await, 0, "{key} not empty");
    }
    assert_eq!(scard(&mut conn, &k.processing(EVENT)).await, 0);
    // Worker-owned keys: only the per-minute counter may remain (it expires by itself).
    let mut owned = Vec::new();
    for key in [
        k.outbox(EVENT),
        k.deadlines(EVENT),
        k.rate(EVENT),
        k.reap_cursor(EVENT),
        k.outbox_invalid(EVENT),
    ] {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        if exists {
            owned.push(key);
        }
    }
    assert!(
        owned.iter().all(|key| *key == k.rate(EVENT)),
        "worker-owned keys left behind: {owned:?}"
    );
    println!(
        "soak: {users} users in {secs:.1} s ({:.0}/s); worker-owned keys left: {owned:?}",
        users as f64 / secs
    );
    for (t, admitted, rss) in samples {
        println!("soak: t={t:>4}s admitted {admitted:>8} rss {rss:.1} MB");
    }
}
