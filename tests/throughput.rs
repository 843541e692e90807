//! Admission throughput measurement (not a test: ignored, prints figures; see
//! BENCHMARKS.md).
//!
//! cargo test --release --test throughput -- --ignored --nocapture
//!
//! One event, capacity out of the way, cycles run back to back: the full path
//! (reap, claim, admit, sign, token patch, publish, Kafka acknowledgement, outbox
//! acknowledgement). Reports users/s per batch size and Redis commands per cycle.

mod support;

use std::time::{Duration, Instant};

use support::*;
use waitroom_worker::clock;
use waitroom_worker::shutdown;
use waitroom_worker::worker::Worker;

const EVENT: &str = "bench";

async fn commands_processed(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run by hand (BENCHMARKS.md)"]
async fn admission_throughput() {
    let users: usize = std::env::var("USERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    for batch in [10usize, 100, 1000] {
        let redis = RedisServer::start();
        let kafka = MockKafka::start();
        let mut conn = redis.conn().await;
        let k = keys();
        enqueue(&mut conn, EVENT, "s", users, clock::now_ms()).await;
        let b = batch.to_string();
        let s = settings(
            &redis.url(),
            &kafka.bootstrap,
            &[
                "--event",
                EVENT,
                "--max-concurrent",
                "100000000",
                "--batch-size",
                &b,
            ],
        );
        let (_t, mut l) = shutdown::channel();
        let mut w = Worker::start(s, &mut l)
            .await
            .expect("start")
            .expect("running");
        let cmd0 = commands_processed(&mut conn).await;
        let t0 = Instant::now();
        let mut cycles = 0u64;
        while zcard(&mut conn, &k.queue(EVENT)).await > 0 {
            assert!(w.cycle().await);
            cycles += 1;
        }
        let cmds = commands_processed(&mut conn).await - cmd0;
        // Done when Kafka acknowledged everything and the outbox is empty.
        let outbox = k.outbox(EVENT);
        while zcard(&mut conn, &outbox).await > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "outbox never drained"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        // The test's own ZCARD per cycle is not the worker's.
        let per_cycle = (cmds as f64 - cycles as f64) / cycles as f64;
        println!(
            "batch {batch:>4}: {users} users in {secs:.2} s = {:.0} users/s end to end; {cycles} cycles, {per_cycle:.1} Redis commands per cycle (incl. outbox settlement)",
            users as f64 / secs
        );
    }
}
