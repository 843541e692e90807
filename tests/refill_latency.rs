//! Refill latency measurement (not a test: ignored, prints figures; see BENCHMARKS.md).
//!
//! cargo test --release --test refill_latency -- --ignored --nocapture
//!
//! A worker at a 1s interval keeps 10 slots full from a long queue. For each
//! sample: produce one completion for a session in checkout, then poll Redis until
//! a new session holds the freed slot. Reports median and p99.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::*;
use waitroom_worker::clock;
use waitroom_worker::shutdown;
use waitroom_worker::stats::Stats;
use waitroom_worker::worker::Worker;

const EVENT: &str = "bench";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run by hand (BENCHMARKS.md)"]
async fn refill_latency() {
    let samples: usize = std::env::var("SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    enqueue(&mut conn, EVENT, "s", samples + 20, clock::now_ms()).await;
    let s = settings(
        &redis.url(),
        &kafka.bootstrap,
        &[
            "--event",
            EVENT,
            "--process-interval",
            "1s",
            "--max-concurrent",
            "10",
            "--batch-size",
            "10",
        ],
    );
    let (_t, mut l) = shutdown::channel();
    let w = Worker::start(s, &mut l)
        .await
        .expect("start")
        .expect("running");
    let stats = w.stats();
    let (trigger, listener) = shutdown::channel();
    let handle = tokio::spawn(w.run(listener));
    let checkout = CheckoutService::new(&kafka.bootstrap);
    // Warm up: the consumer's first assignment takes seconds on the mock.
    let start = Instant::now();
    while Stats::get(&stats.completions_rejected) == 0 {
        checkout.send_raw("warm", b"warm-up").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "consumer never assigned"
        );
    }
    let key = k.processing(EVENT);
    let mut lat = Vec::with_capacity(samples);
    // When the freed slot was first seen empty: the consumer's share of the latency.
    let mut freed = Vec::with_capacity(samples);
    for _ in 0..samples {
        let before: HashSet<String> = smembers(&mut conn, &key).await.into_iter().collect();
        assert_eq!(before.len(), 10);
        let victim = before.iter().min().cloned().expect("a session in checkout");
        let t0 = Instant::now();
        checkout.complete(&victim, Some(EVENT), "completed").await;
        let mut released_at = None;
        loop {
            let now: HashSet<String> = smembers(&mut conn, &key).await.into_iter().collect();
            if released_at.is_none() && !now.contains(&victim) {
                released_at = Some(t0.elapsed());
            }
            if !now.contains(&victim) && now.len() == 10 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no refill");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        freed.push(released_at.unwrap_or_default());
        lat.push(t0.elapsed());
    }
    lat.sort();
    freed.sort();
    println!(
        "completion produced -> slot freed in Redis (consumer share): p50 {:.2} ms",
        freed[freed.len() / 2].as_secs_f64() * 1e3
    );
    let p = |q: f64| {
        lat[((lat.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(lat.len() - 1)]
    };
    println!(
        "refill latency over {} samples at a 1s interval: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        p(0.5).as_secs_f64() * 1e3,
        p(0.9).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
    trigger.trigger();
    handle.await.expect("worker");
}
