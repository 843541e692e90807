//! Operating the worker: HTTP endpoints, metrics, heartbeats, `status`, `inspect`.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;
use waitroom_worker::Stats;
use waitroom_worker::clock;

const EVENT: &str = "show";
const BIN: &str = env!("CARGO_BIN_EXE_waitroom-worker");

async fn until_http(addr: std::net::SocketAddr, path: &str, code: u16, what: &str) -> String {
    eventually(Duration::from_secs(30), what, || async move {
        let (c, body) = http_get(addr, path).await;
        (c == code).then_some(body)
    })
    .await
}

/// healthz, readyz, status and metrics agree with Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_report_what_redis_shows() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    enqueue(&mut conn, EVENT, "s", 30, clock::now_ms()).await;
    let s = settings(&redis.url(), &kafka.bootstrap)
        .event(EVENT)
        .max_concurrent(10)
        .worker_id("w-test");
    let w = run_worker(s).await;
    let addr = w.http.expect("http on");
    let stats = w.stats.clone();
    let proc_key = k.processing(EVENT);
    eventually(Duration::from_secs(20), "10 admitted and published", || {
        let (mut c, key, s) = (conn.clone(), proc_key.clone(), stats.clone());
        async move { (scard(&mut c, &key).await == 10 && Stats::get(&s.published) == 10).then_some(()) }
    })
    .await;

    let (code, body) = http_get(addr, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    let body = until_http(addr, "/readyz", 200, "ready").await;
    assert!(body.contains(r#""ready":true"#), "{body}");

    // Let a cycle observe the settled state.
    let c0 = Stats::get(&stats.cycles);
    eventually(Duration::from_secs(5), "another cycle", || {
        let s = stats.clone();
        async move { (Stats::get(&s.cycles) > c0 + 1).then_some(()) }
    })
    .await;
    let (code, body) = http_get(addr, "/status").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    let in_redis = scard(&mut conn, &proc_key).await;
    assert_eq!(v["is_running"], true);
    assert_eq!(v["worker_id"], "w-test");
    assert_eq!(v["total_admitted"], in_redis);
    assert_eq!(v["error_count"], 0);
    assert!(v["started_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert!(
        v["last_processed"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
    let e = &v["events"][EVENT];
    assert_eq!(e["slots_in_use"], in_redis);
    assert_eq!(e["capacity"], 10);
    assert_eq!(e["queue_length"], zcard(&mut conn, &k.queue(EVENT)).await);
    assert_eq!(e["outbox_depth"], 0);

    let (code, text) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let admitted = scrape
        .samples
        .iter()
        .find(|s| s.metric == "waitroom_admitted_total" && s.labels.get("event_id") == Some(EVENT))
        .expect("admitted counter");
    match admitted.value {
        prometheus_parse::Value::Counter(n) | prometheus_parse::Value::Untyped(n) => {
            assert_eq!(n as u64, in_redis)
        }
        ref other => panic!("admitted is not a counter: {other:?}"),
    }
    for name in [
        "waitroom_slots_in_use",
        "waitroom_capacity",
        "waitroom_queue_length",
        "waitroom_outbox_depth",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.metric == name),
            "{name} missing"
        );
    }
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("waitroom_cycle_duration_seconds"))
    );

    // The heartbeat lists this replica; a clean stop removes it.
    let live: Vec<String> = redis::cmd("ZRANGE")
        .arg("waitroom:workers")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("ZRANGE");
    assert_eq!(live, ["w-test"]);
    let beat = hgetall(&mut conn, "waitroom:worker:w-test").await;
    for f in ["id", "host", "pid", "version", "started_at", "last_cycle"] {
        assert!(beat.contains_key(f), "heartbeat lacks {f}");
    }
    w.stop().await;
    let live: Vec<String> = redis::cmd("ZRANGE")
        .arg("waitroom:workers")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("ZRANGE");
    assert!(live.is_empty());
}

/// /readyz goes not-ready when its Redis stops and ready again when it returns;
/// the same for Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_redis_and_kafka() {
    let mut redis = RedisServer::start();
    let kafka = MockKafka::start();
    let s = settings(&redis.url(), &kafka.bootstrap)
        .event(EVENT)
        .redis_timeout(Duration::from_secs(1));
    let w = run_worker(s).await;
    let addr = w.http.expect("http on");
    until_http(addr, "/readyz", 200, "ready at first").await;

    redis.stop();
    let body = until_http(addr, "/readyz", 503, "not ready without Redis").await;
    assert!(body.contains(r#""ready":false"#), "{body}");
    let (code, _) = http_get(addr, "/healthz").await;
    assert_eq!(code, 200, "alive while Redis is away");
    redis.restart();
    until_http(addr, "/readyz", 200, "ready again after Redis returned").await;

    kafka.brokers_down();
    until_http(addr, "/readyz", 503, "not ready without Kafka").await;
    kafka.brokers_up();
    until_http(addr, "/readyz", 200, "ready again after Kafka returned").await;
    w.stop().await;
}

/// `status --json` and `inspect --json` show what Redis holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_inspect_match_redis() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let t0 = clock::now_ms() - 90_000;
    let ids = enqueue(&mut conn, EVENT, "s", 25, t0).await;
    redis::cmd("SADD")
        .arg(k.active_events())
        .arg(EVENT)
        .query_async::<()>(&mut conn)
        .await
        .expect("SADD");
    redis::cmd("HSET")
        .arg(k.config(EVENT))
        .arg("max_concurrent")
        .arg(12)
        .query_async::<()>(&mut conn)
        .await
        .expect("HSET");
    let mut w = start_worker(settings(&redis.url(), &kafka.bootstrap).batch_size(5)).await;
    assert!(w.cycle().await);
    assert!(w.cycle().await);

    let out = Command::new(BIN)
        .args(["status", "--json", "--redis-url", &redis.url()])
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let e = &v["events"][EVENT];
    assert_eq!(e["queue_length"], zcard(&mut conn, &k.queue(EVENT)).await);
    assert_eq!(
        e["slots_in_use"],
        scard(&mut conn, &k.processing(EVENT)).await
    );
    assert_eq!(e["slots_in_use"], 10);
    assert_eq!(e["capacity"], 12);
    assert_eq!(e["paused"], false);
    assert_eq!(
        e["admitted_this_minute"].as_u64().unwrap_or(0)
            + e["admitted_last_minute"].as_u64().unwrap_or(0),
        10
    );
    let wait = e["oldest_wait_ms"].as_u64().expect("someone waits");
    assert!((85_000..200_000).contains(&wait), "oldest wait {wait}");
    let text = Command::new(BIN)
        .args(["status", "--redis-url", &redis.url()])
        .output()
        .expect("status");
    assert!(String::from_utf8_lossy(&text.stdout).contains(EVENT));

    let out = Command::new(BIN)
        .args(["inspect", &ids[20], "--json", "--redis-url", &redis.url()])
        .output()
        .expect("inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["queue_position"], 11, "20th of 25, 10 admitted before it");
    assert_eq!(v["in_processing"], false);
    assert_eq!(v["hash"]["status"], "queued");

    // Once its QUEUE_READY is acknowledged, an admitted session has a deadline.
    eventually(Duration::from_secs(10), "the outbox drained", || {
        let mut c = conn.clone();
        let key = k.outbox(EVENT);
        async move { (zcard(&mut c, &key).await == 0).then_some(()) }
    })
    .await;
    let out = Command::new(BIN)
        .args(["inspect", &ids[0], "--json", "--redis-url", &redis.url()])
        .output()
        .expect("inspect");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["in_processing"], true);
    assert!(v["deadline"].as_str().is_some_and(|d| d.ends_with('Z')));
    assert_eq!(v["hash"]["status"], "admitted");
    assert!(v["queue_position"].is_null());
}

/// `inspect` finds the outbox entry of a session whose id cjson encodes differently
/// from serde_json (`/` as `\/`, 0x7f as `\u007f`): the entry is written here exactly
/// as the admit script writes it, with cjson inside Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_finds_the_outbox_entry_of_a_session_cjson_escapes() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let sid = "vip/session\u{7f}-42";
    // Another session whose id is a prefix of this one's: it must not be reported.
    let other = "vip/session\u{7f}-4";
    redis::cmd("HSET")
        .arg(k.session(EVENT, sid))
        .arg("status")
        .arg("admitted")
        .arg("user_id")
        .arg("user/1")
        .arg("event_id")
        .arg(EVENT)
        .query_async::<()>(&mut conn)
        .await
        .expect("HSET");
    let cjson_zadd = "return redis.call('ZADD', KEYS[1], 1, '[' .. cjson.encode(ARGV[1]) .. ',' .. cjson.encode(ARGV[2]) .. ',1,2]')";
    for (s, user) in [(other, "user/0"), (sid, "user/1")] {
        redis::cmd("EVAL")
            .arg(cjson_zadd)
            .arg(1)
            .arg(k.outbox(EVENT))
            .arg(s)
            .arg(user)
            .query_async::<()>(&mut conn)
            .await
            .expect("EVAL cjson ZADD");
    }
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(k.outbox(EVENT))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("ZRANGE");
    assert!(
        members.iter().any(|m| m.contains(r"vip\/session\u007f-42")),
        "written as cjson writes it: {members:?}"
    );

    let out = Command::new(BIN)
        .args(["inspect", sid, "--json", "--redis-url", &redis.url()])
        .output()
        .expect("inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["event_id"], EVENT);
    let entry = v["outbox_entry"].as_str().expect("pending in the outbox");
    let decoded: serde_json::Value = serde_json::from_str(entry).expect("entry is JSON");
    assert_eq!(decoded[0], sid, "{entry}");
    assert_eq!(decoded[1], "user/1", "{entry}");

    let out = Command::new(BIN)
        .args(["inspect", sid, "--redis-url", &redis.url()])
        .output()
        .expect("inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("QUEUE_READY pending in outbox: yes"),
        "{text}"
    );
}

/// `inspect` shows only the start of the checkout token (a live credential), in the
/// text view and in `--json` alike; `--show-token` shows all of it in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shortens_the_checkout_token_unless_asked() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let ids = enqueue(&mut conn, EVENT, "s", 1, clock::now_ms()).await;
    let mut w = start_worker(settings(&redis.url(), &kafka.bootstrap).event(EVENT)).await;
    assert!(w.cycle().await);
    let token = eventually(Duration::from_secs(10), "the token in the hash", || {
        let mut c = conn.clone();
        let key = k.session(EVENT, &ids[0]);
        async move { hgetall(&mut c, &key).await.remove("checkout_token") }
    })
    .await;
    assert!(token.len() > 100, "a JWT: {token}");
    let shortened = format!("{}...", &token[..24]);
    let inspect = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["inspect", &ids[0], "--redis-url", &redis.url()])
            .args(extra)
            .output()
            .expect("inspect");
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    };

    let json = inspect(&["--json"]);
    assert!(
        !json.contains(&token),
        "--json printed the whole token: {json}"
    );
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["hash"]["checkout_token"], shortened.as_str());
    let text = inspect(&[]);
    assert!(
        !text.contains(&token),
        "the text view printed the whole token"
    );
    assert!(text.contains(&shortened), "{text}");

    let v: serde_json::Value =
        serde_json::from_str(&inspect(&["--json", "--show-token"])).expect("JSON");
    assert_eq!(v["hash"]["checkout_token"], token.as_str());
    assert!(inspect(&["--show-token"]).contains(&token));
}

/// Liveness of a replica comes from its own heartbeat period, whoever prunes: a
/// replica at 50 ms and one at 12 s both stay in `waitroom:workers` and in `status`
/// for longer than the 12 s replica's interval.
///
/// Before, the score was the last beat and every replica pruned with its own TTL
/// (10 s at 50 ms), so the 50 ms replica removed the 12 s one 10 s after each of
/// its beats, and `status` alternated between 2 and 1 live workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_different_intervals_stay_live_together() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    let replica = |id: &'static str, interval: Duration| {
        settings(&redis.url(), &kafka.bootstrap)
            .worker_id(id)
            .process_interval(interval)
    };
    let fast = run_worker(replica("fast", Duration::from_millis(50))).await;
    let slow = run_worker(replica("slow", Duration::from_secs(12))).await;
    let members = |c: &redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        let key = k.workers();
        async move {
            let mut m: Vec<String> = redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
                .expect("ZRANGE");
            m.sort();
            m
        }
    };
    eventually(Duration::from_secs(10), "both replicas' heartbeats", || {
        let m = members(&conn);
        async move { (m.await == ["fast", "slow"]).then_some(()) }
    })
    .await;

    // Longer than the slow replica's interval (so it beat again) and than the fast
    // one's TTL (so the old pruning would have struck): sample the set every 100 ms
    // and the operator's view (`status --json`) every second.
    let start = std::time::Instant::now();
    let mut status_runs = 0;
    while start.elapsed() < Duration::from_secs(13) {
        assert_eq!(
            members(&conn).await,
            ["fast", "slow"],
            "waitroom:workers after {:?}",
            start.elapsed()
        );
        if start.elapsed() >= Duration::from_secs(status_runs) {
            status_runs += 1;
            let out = Command::new(BIN)
                .args(["status", "--json", "--redis-url", &redis.url()])
                .output()
                .expect("status");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            let mut live: Vec<&str> = v["live_workers"]
                .as_array()
                .expect("live workers")
                .iter()
                .filter_map(|w| w.as_str())
                .collect();
            live.sort();
            assert_eq!(
                live,
                ["fast", "slow"],
                "status's live workers after {:?}",
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(status_runs >= 10, "status ran {status_runs} times");
    // Each heartbeat says its own period and how long it counts.
    for (id, period, ttl) in [("fast", "50", "10000"), ("slow", "12000", "36000")] {
        let h = hgetall(&mut conn, &k.worker(id)).await;
        assert_eq!(
            (
                h.get("period_ms").map(String::as_str),
                h.get("ttl_ms").map(String::as_str)
            ),
            (Some(period), Some(ttl)),
            "{id}: {h:?}"
        );
    }
    fast.stop().await;
    slow.stop().await;
    assert!(
        members(&conn).await.is_empty(),
        "a clean stop leaves the list"
    );
}
