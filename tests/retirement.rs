//! Retired events, end to end (private redis-server, librdkafka's mock cluster, the
//! worker's own loop): only served events admit, refills included; a retired event
//! is drained (its outbox publishes, its slots expire) and then forgotten, and
//! per-event figures exist only for served and draining events.

mod support;

use std::time::Duration;

use support::*;
use waitroom_worker::scripts::Scripts;
use waitroom_worker::scripts::admit::{self, AdmitArgs};

const SERVED: &str = "served";
const RETIRED: &str = "retired";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retired_event_is_drained_admits_nobody_and_is_forgotten() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let now = waitroom_worker::clock::now_ms();
    let served_ids = enqueue(&mut conn, SERVED, "a", 10, now).await;
    let retired_ids = enqueue(&mut conn, RETIRED, "b", 10, now).await;

    // A worker served both events, admitted three of the retired one and died before
    // publishing; then ops took the event out of service.
    let _: () = redis::cmd("SADD")
        .arg(k.known_events())
        .arg(RETIRED)
        .query_async(&mut conn)
        .await
        .expect("SADD");
    let dead = admit::admit(
        &Scripts::new().admit,
        &mut conn,
        &k,
        RETIRED,
        &AdmitArgs {
            default_max_concurrent: 3,
            default_batch_size: 3,
            checkout_window: Duration::from_secs(3),
            session_ttl: Duration::from_secs(600),
            outbox_lease: Duration::from_millis(200),
            max_unpublished_age: Duration::from_secs(1),
            process_interval: Duration::from_secs(1),
            claim_window: Duration::ZERO,
            waiter_idle_timeout: Duration::ZERO,
            adaptive: false,
            min_concurrent_percent: 10,
        },
    )
    .await
    .expect("admit");
    assert_eq!(dead.admitted, 3);
    let _: () = redis::cmd("SADD")
        .arg(k.active_events())
        .arg(SERVED)
        .query_async(&mut conn)
        .await
        .expect("SADD");

    let w = run_worker(
        settings(&redis.url(), &kafka.bootstrap)
            .max_concurrent(3)
            .batch_size(3)
            .checkout_window(Duration::from_secs(3))
            .session_ttl(Duration::from_secs(600)),
    )
    .await;

    // The retired event's outbox still publishes: its three are told.
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    eventually(
        Duration::from_secs(30),
        "the retired event's admissions told",
        || {
            let got: Vec<String> = reader
                .read_for(Duration::from_millis(100))
                .iter()
                .map(|m| m.key.clone())
                .collect();
            let done = retired_ids[..3].iter().all(|s| got.contains(s));
            async move { done.then_some(()) }
        },
    )
    .await;
    // While it drains, it has figures, and says why it admits nobody.
    eventually(
        Duration::from_secs(10),
        "the retired event's figures",
        || {
            let stats = w.stats.clone();
            async move { (stats.events().get(RETIRED)?.held == Some("retired")).then_some(()) }
        },
    )
    .await;

    // A completion releases its slot, but wakes no admission there.
    let checkout = CheckoutService::new(&kafka.bootstrap);
    checkout
        .complete(&retired_ids[0], Some(RETIRED), "completed")
        .await;
    // A completion naming an event nobody serves (nor ever served) grows nothing.
    checkout
        .complete("ghost-1", Some("ghost-event"), "completed")
        .await;
    let session_key = k.session(RETIRED, &retired_ids[0]);
    eventually(Duration::from_secs(15), "the completion applied", || {
        let mut c = conn.clone();
        let key = session_key.clone();
        async move { (hgetall(&mut c, &key).await.get("status")? == "completed").then_some(()) }
    })
    .await;

    // The other two expire; then nothing of the event is left and it is forgotten.
    eventually(
        Duration::from_secs(20),
        "the retired event forgotten",
        || {
            let mut c = conn.clone();
            let key = k.known_events();
            async move {
                let known = smembers(&mut c, &key).await;
                (!known.iter().any(|e| e == RETIRED)).then_some(())
            }
        },
    )
    .await;
    for sid in &retired_ids[1..3] {
        assert_eq!(
            hgetall(&mut conn, &k.session(RETIRED, sid)).await["status"],
            "expired"
        );
    }
    assert_eq!(scard(&mut conn, &k.processing(RETIRED)).await, 0);
    assert_eq!(zcard(&mut conn, &k.outbox(RETIRED)).await, 0);
    assert_eq!(zcard(&mut conn, &k.deadlines(RETIRED)).await, 0);
    assert_eq!(
        zcard(&mut conn, &k.queue(RETIRED)).await,
        7,
        "a retired event admitted somebody"
    );

    // The served event went on: its first three were admitted and told in order.
    let served_told: Vec<String> = reader
        .messages
        .iter()
        .filter(|m| m.key.starts_with("a-"))
        .map(|m| m.key.clone())
        .collect();
    assert!(served_told.len() >= 3, "served event told: {served_told:?}");
    assert_eq!(served_told[..3], served_ids[..3]);

    // Figures follow: the forgotten event and the ghost have no series, no status.
    eventually(
        Duration::from_secs(10),
        "the retired event's figures gone",
        || {
            let stats = w.stats.clone();
            async move { (!stats.events().contains_key(RETIRED)).then_some(()) }
        },
    )
    .await;
    let metrics = w.stats.encode_prometheus();
    assert!(
        !metrics.contains("event_id=\"retired\""),
        "series of a forgotten event: {metrics}"
    );
    assert!(
        !metrics.contains("ghost-event"),
        "series of an event nobody serves: {metrics}"
    );
    assert!(metrics.contains("event_id=\"served\""));
    w.stop().await;
}
