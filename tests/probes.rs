//! What an operator reads must be true: liveness that survives a deliberate
//! backoff, readiness that waits for a cycle against a recovered Redis, figures that
//! follow Redis, an outbox gauge that is not Kafka lag, a key layout mismatch said
//! out loud, and empty environment variables that mean unset. A private
//! redis-server, librdkafka's mock cluster, the worker's own loop and HTTP endpoint.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use waitroom_worker::{KeyLayout, clock};

const EVENT: &str = "probes";
const BIN: &str = env!("CARGO_BIN_EXE_waitroom-worker");

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).expect("JSON body")
}

/// With Redis down and a long backoff, `/healthz` stays 200 (`backing_off`) past
/// the old fixed cut-off (max processing time + two intervals); `/readyz` is 503
/// until a cycle has run against the Redis that came back, and that cycle comes
/// within about a second of Redis answering again, not at the end of the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_outlasts_a_backoff_and_readiness_waits_for_a_cycle() {
    let mut redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    enqueue(&mut conn, EVENT, "s", 5, clock::now_ms()).await;
    let w = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .max_processing_time(Duration::from_secs(1))
            .redis_timeout(Duration::from_millis(300))
            .retry_delay(Duration::from_secs(2))
            .retry_max_delay(Duration::from_secs(30)),
    )
    .await;
    let addr = w.http.expect("http endpoint");
    eventually(Duration::from_secs(20), "ready", || async move {
        (http_get(addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    redis.stop();
    // Well past the old cut-off of 1.04 s, the worker is alive and says it backs off.
    let down = Instant::now();
    let mut saw_backoff = false;
    while down.elapsed() < Duration::from_secs(8) {
        let (code, body) = http_get(addr, "/healthz").await;
        assert_eq!(code, 200, "liveness failed while only backing off: {body}");
        saw_backoff |= json(&body)["status"] == "backing_off";
        let (code, _) = http_get(addr, "/readyz").await;
        assert_eq!(code, 503, "ready while Redis is down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_backoff, "/healthz never said backing_off");

    // The backoff has grown to several seconds by now; Redis comes back.
    redis.restart();
    let back = clock::now_ms();
    let t0 = Instant::now();
    let ready_at = eventually(Duration::from_secs(20), "ready again", || async move {
        let (code, body) = http_get(addr, "/readyz").await;
        (code == 200).then_some(body)
    })
    .await;
    let took = t0.elapsed();
    let ok_at = w
        .stats
        .last_cycle_ok_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(ok_at >= back, "ready before a cycle ran: {ready_at}");
    assert!(
        took < Duration::from_secs(4),
        "ready {took:?} after Redis came back (the backoff did not end early)"
    );
    w.stop().await;
}

/// Per-event figures follow Redis between admit calls (an idle event), and vanish
/// once the event is no longer served and nothing of it is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_follow_redis_and_vanish_with_the_event() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "s", 4, clock::now_ms()).await;
    let _: () = redis::cmd("SADD")
        .arg(k.active_events())
        .arg(EVENT)
        .query_async(&mut conn)
        .await
        .expect("SADD");
    let w = run_worker(settings(&redis.url(), &kafka.bootstrap)).await;
    eventually(Duration::from_secs(20), "all admitted and told", || {
        let stats = w.stats.clone();
        async move {
            let e = stats.events().get(EVENT).cloned()?;
            (e.slots_in_use == 4 && e.outbox_depth == 0).then_some(())
        }
    })
    .await;
    // The API takes two out of checkout; the event is idle (nobody waits), and its
    // figures still follow.
    let _: () = redis::cmd("SREM")
        .arg(k.processing(EVENT))
        .arg(&ids[..2])
        .query_async(&mut conn)
        .await
        .expect("SREM");
    eventually(Duration::from_secs(5), "slots_in_use follows Redis", || {
        let stats = w.stats.clone();
        async move { (stats.events().get(EVENT)?.slots_in_use == 2).then_some(()) }
    })
    .await;
    let addr = w.http.expect("http endpoint");
    let (_, body) = http_get(addr, "/metrics").await;
    assert!(
        body.contains(&format!("waitroom_slots_in_use{{event_id=\"{EVENT}\"}} 2")),
        "{body}"
    );

    // Out of service: its last two slots go (the API again), and it is forgotten.
    let _: () = redis::pipe()
        .cmd("SREM")
        .arg(k.active_events())
        .arg(EVENT)
        .ignore()
        .cmd("DEL")
        .arg(k.processing(EVENT))
        .arg(k.deadlines(EVENT))
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("retire");
    eventually(Duration::from_secs(10), "figures gone", || {
        let stats = w.stats.clone();
        async move { (!stats.events().contains_key(EVENT)).then_some(()) }
    })
    .await;
    let (_, body) = http_get(addr, "/metrics").await;
    assert!(!body.contains(&format!("event_id=\"{EVENT}\"")), "{body}");
    let (_, body) = http_get(addr, "/status").await;
    assert!(json(&body)["events"].get(EVENT).is_none(), "{body}");
    w.stop().await;
}

/// With Kafka healthy, `outbox_waiting` stays 0 while admissions flow (what is in
/// flight is not lag); with Kafka away the unpublished age grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_waiting_is_zero_when_kafka_is_fine_and_the_age_grows_when_it_is_not() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    enqueue(&mut conn, EVENT, "s", 400, clock::now_ms()).await;
    let w = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .max_concurrent(1000)
            .batch_size(4)
            .checkout_window(Duration::from_secs(600))
            .session_ttl(Duration::from_secs(3600)),
    )
    .await;
    let mut samples = 0;
    let mut max_depth = 0;
    while w
        .stats
        .events()
        .get(EVENT)
        .is_none_or(|e| e.queue_length > 40)
    {
        if let Some(e) = w.stats.events().get(EVENT) {
            assert_eq!(e.outbox_waiting, 0, "waiting with Kafka fine: {e:?}");
            max_depth = max_depth.max(e.outbox_depth);
            samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        samples > 50 && max_depth > 0,
        "{samples} samples, depth {max_depth}"
    );

    // With Kafka away, what tells is the age of the oldest unacknowledged admission
    // (the messages themselves are in flight, retried by the producer).
    kafka.brokers_down();
    eventually(Duration::from_secs(20), "unpublished age grows", || {
        let stats = w.stats.clone();
        async move { (stats.events().get(EVENT)?.unpublished_age_ms? > 2_000).then_some(()) }
    })
    .await;
    kafka.brokers_up();
    w.stop().await;
}

/// `--key-layout cluster` against a Redis that holds the default layout admits
/// nobody: `/readyz` says so (503, naming the event) instead of a silent 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_layout_mismatch_is_not_ready_and_says_why() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    enqueue(&mut conn, EVENT, "s", 50, clock::now_ms()).await;
    let w = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .event(EVENT)
            .key_layout(KeyLayout::Cluster),
    )
    .await;
    let addr = w.http.expect("http endpoint");
    let body = eventually(Duration::from_secs(20), "a cycle ran", || async move {
        let (code, body) = http_get(addr, "/readyz").await;
        let v = json(&body);
        (v["cycle"] == "ok").then_some((code, v))
    })
    .await;
    assert_eq!(body.0, 503, "{}", body.1);
    assert!(
        body.1["key_layout"]
            .as_str()
            .is_some_and(|s| s.contains(EVENT)),
        "{}",
        body.1
    );
    w.stop().await;
}

/// An empty environment variable means unset: `REDIS_CLUSTER_URLS=` does not
/// select a cluster of no nodes, and `QUEUE_PROCESS_INTERVAL=` takes the default.
#[test]
fn empty_environment_variables_mean_unset() {
    let redis = RedisServer::start();
    let out = Command::new(BIN)
        .args(["status", "--redis-url", &redis.url()])
        .env("REDIS_CLUSTER_URLS", "")
        .env("QUEUE_PROCESS_INTERVAL", "")
        .env("REDIS_TLS_CA", "")
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
