//! The binary itself: settings refused at start, graceful shutdown on SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_waitroom-worker");

fn run_with(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.arg("run").args(args);
    for var in [
        "QUEUE_JWT_SECRET",
        "QUEUE_JWT_SECRET_FILE",
        "QUEUE_PROCESS_INTERVAL",
        "QUEUE_DEFAULT_MAX_CONCURRENT",
        "QUEUE_DEFAULT_RELEASE_RATE",
        "REDIS_URL",
        "KAFKA_BROKERS",
    ] {
        c.env_remove(var);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run the binary")
}

#[test]
fn bad_settings_are_refused_with_a_message_naming_them() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("QUEUE_JWT_SECRET", SECRET),
                ("QUEUE_PROCESS_INTERVAL", "often"),
            ],
            "--process-interval",
        ),
        (
            &[
                ("QUEUE_JWT_SECRET", SECRET),
                ("QUEUE_DEFAULT_MAX_CONCURRENT", "lots"),
            ],
            "--max-concurrent",
        ),
        (
            &[
                ("QUEUE_JWT_SECRET", SECRET),
                ("QUEUE_DEFAULT_RELEASE_RATE", "0"),
            ],
            "QUEUE_DEFAULT_RELEASE_RATE",
        ),
        (
            &[
                ("QUEUE_JWT_SECRET", SECRET),
                ("QUEUE_CHECKOUT_WINDOW", "1000000000h"),
            ],
            "--checkout-window (QUEUE_CHECKOUT_WINDOW): must be at most 24h",
        ),
        (&[("QUEUE_JWT_SECRET", "short-secret")], "at least 32"),
        (&[], "QUEUE_JWT_SECRET"),
        (
            &[
                ("QUEUE_JWT_SECRET", SECRET),
                ("REDIS_URL", "localhost:6379"),
            ],
            "REDIS_URL",
        ),
    ];
    for (env, needle) in cases {
        let out = run_with(&[], env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} must be refused");
        assert!(
            stderr.contains(needle),
            "{env:?}: stderr should name {needle}: {stderr}"
        );
        assert!(
            !stderr.contains("short-secret"),
            "a secret must never be echoed: {stderr}"
        );
    }
}

#[test]
fn sigterm_shuts_down_gracefully_with_exit_zero() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--redis-url",
            &redis.url(),
            "--kafka-brokers",
            &kafka.bootstrap,
            "--event",
            "e1",
            "--process-interval",
            "50ms",
            "--shutdown-timeout",
            "5s",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .env("QUEUE_JWT_SECRET", SECRET)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker");
    // Wait until it has loaded its scripts and started cycling.
    let client = redis::Client::open(redis.url()).expect("url");
    let mut c = client.get_connection().expect("connect");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let loaded: Vec<bool> = redis::cmd("SCRIPT")
            .arg("EXISTS")
            .arg(waitroom_worker::scripts::Scripts::new().admit.sha())
            .query(&mut c)
            .expect("SCRIPT EXISTS");
        if loaded == [true] {
            break;
        }
        assert!(Instant::now() < deadline, "worker never loaded its scripts");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let code = loop {
        if let Some(code) = child.try_wait().expect("wait") {
            break code;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "worker did not stop within its shutdown timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(code.success(), "exit status {code:?}; stderr: {stderr}");
    assert!(stderr.contains("Queue processor stopped"), "{stderr}");
    assert!(!stderr.contains(SECRET), "the secret must never be logged");
}

#[test]
fn demo_runs_a_small_sale_to_completion() {
    let out = Command::new(BIN)
        .args([
            "demo",
            "--users",
            "150",
            "--capacity",
            "20",
            "--batch",
            "10",
            "--checkout-time",
            "50ms",
            "--checkout-window",
            "2s",
            "--interval",
            "50ms",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run the demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    assert!(stderr.contains("150 users through checkout"), "{stderr}");
    assert!(stderr.contains("capacity never exceeded: true"), "{stderr}");
    assert!(stderr.contains("0 tokens failed verification"), "{stderr}");
}

#[test]
fn enqueue_writes_the_contract() {
    let redis = RedisServer::start();
    let out = Command::new(BIN)
        .args([
            "enqueue",
            "--redis-url",
            &redis.url(),
            "--event",
            "e9",
            "--users",
            "25",
        ])
        .output()
        .expect("run enqueue");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = redis::Client::open(redis.url()).expect("url");
    let mut c = client.get_connection().expect("connect");
    let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg("waitroom:e9:queue")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut c)
        .expect("ZRANGE");
    assert_eq!(members.len(), 25);
    let now = waitroom_worker::clock::now_ms() as f64;
    for (i, (sid, score)) in members.iter().enumerate() {
        assert!(
            (now - score).abs() < 60_000.0,
            "score is the join time in ms"
        );
        let h: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("waitroom:session:{sid}"))
            .query(&mut c)
            .expect("HGETALL");
        assert_eq!(h["status"], "queued");
        assert_eq!(h["event_id"], "e9");
        assert_eq!(h["position"], (i + 1).to_string());
        assert!(h["user_id"].starts_with("user-"));
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("waitroom:session:{sid}"))
            .query(&mut c)
            .expect("PTTL");
        assert!(ttl > 0);
    }
    let active: Vec<String> = redis::cmd("SMEMBERS")
        .arg("waitroom:active_events")
        .query(&mut c)
        .expect("SMEMBERS");
    assert_eq!(active, ["e9"]);
}

/// CI runs only a tiny smoke run of the bench, to keep it working (figures are in
/// BENCHMARKS.md, never asserted).
#[test]
fn bench_quick_smoke_run_reports_every_section() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "--quick",
            "--json",
            "--users",
            "300",
            "--big-queue",
            "2000",
            "--events",
            "20",
            "--samples",
            "3",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run the bench");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["end_to_end"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["admit_script_only"].as_array().map(Vec::len), Some(3));
    for key in [
        "naive_per_user",
        "ratio_to_naive",
        "refill_p50_ms",
        "refill_p99_ms",
        "cycle_cost_ratio",
        "full_pass",
        "peak_rss_mb",
    ] {
        assert!(!v[key].is_null(), "{key} missing");
    }
    for e in v["end_to_end"].as_array().into_iter().flatten() {
        assert!(e["users_per_sec"].as_f64().is_some_and(|x| x > 0.0));
    }
    // The cluster section ran a pass over the 20 events on its own three masters,
    // its steady pass by master.
    let cluster = v["cluster_pass"].as_array().expect("cluster_pass");
    assert_eq!(cluster.len(), 1);
    assert_eq!(cluster[0]["events"].as_u64(), Some(20));
    assert!(cluster[0]["first_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    assert!(
        cluster[0]["steady_node_pipelines"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{}",
        cluster[0]
    );
}

/// A Redis with a password works, and neither the password, the JWT secret nor a
/// Kafka password from --kafka-config-file reaches a log line, even at debug level.
#[test]
fn password_protected_redis_works_and_secrets_stay_out_of_the_logs() {
    let password = "s3cret-redis-pass";
    let redis = RedisServer::start_with_password(password);
    let kafka = MockKafka::start();
    let client = redis::Client::open(redis.url()).expect("url");
    let mut c = client.get_connection().expect("connect with the password");
    for i in 0..5 {
        let sid = format!("pw-{i}");
        let _: () = redis::cmd("HSET")
            .arg(format!("waitroom:session:{sid}"))
            .arg("status")
            .arg("queued")
            .arg("user_id")
            .arg("u")
            .query(&mut c)
            .expect("HSET");
        let _: () = redis::cmd("ZADD")
            .arg("waitroom:pw:queue")
            .arg(i)
            .arg(&sid)
            .query(&mut c)
            .expect("ZADD");
    }
    // A SASL password librdkafka accepts but the plaintext mock never asks for.
    let kafka_password = "kafka-s3cret-pass";
    let props = std::env::temp_dir().join(format!("waitroom-kafka-{}.properties", redis.port));
    std::fs::write(
        &props,
        format!("sasl.username=worker\nsasl.password={kafka_password}\n"),
    )
    .expect("write the Kafka properties");
    let mut child = Command::new(BIN)
        .env("KAFKA_CONFIG_FILE", &props)
        .args([
            "run",
            "--redis-url",
            &redis.url(),
            "--kafka-brokers",
            &kafka.bootstrap,
            "--event",
            "pw",
        ])
        .args([
            "--process-interval",
            "50ms",
            "--http-addr",
            "127.0.0.1:0",
            "--shutdown-timeout",
            "5s",
        ])
        .env("QUEUE_JWT_SECRET", SECRET)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: u64 = redis::cmd("SCARD")
            .arg("waitroom:pw:processing")
            .query(&mut c)
            .expect("SCARD");
        if n == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing admitted through a password-protected Redis"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let code = child.wait().expect("wait");
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(code.success(), "{stderr}");
    assert!(
        stderr.contains("Admitting users to checkout"),
        "the logs were read: {stderr}"
    );
    assert!(
        !stderr.contains(password),
        "the Redis password reached the logs"
    );
    assert!(!stderr.contains(SECRET), "the JWT secret reached the logs");
    assert!(
        !stderr.contains(kafka_password),
        "the Kafka password reached the logs"
    );
    let _ = std::fs::remove_file(&props);
}

/// `waitroom-worker health ARGS` with the probe's environment variables cleared
/// (plus `env`), run off the async runtime so a server in the test keeps answering.
async fn health(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.arg("health").args(args);
    c.env_remove("QUEUE_HEALTH_URL")
        .env_remove("QUEUE_HEALTH_TIMEOUT");
    for (k, v) in env {
        c.env(k, v);
    }
    tokio::task::spawn_blocking(move || c.output().expect("run the binary"))
        .await
        .expect("probe task")
}

/// A one-shot HTTP server on loopback: answers the first request with `answer` and
/// closes; the handle yields the request it read.
async fn answering(
    answer: &'static str,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let h = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.expect("read request");
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        s.write_all(answer.as_bytes()).await.expect("answer");
        s.shutdown().await.expect("close");
        String::from_utf8_lossy(&req).into_owned()
    });
    (addr, h)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The probe the container HEALTHCHECK runs passes against a live worker's /healthz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probe_passes_against_a_running_worker() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let w = run_worker(settings(&redis.url(), &kafka.bootstrap).event("e1")).await;
    let addr = w.http.expect("http on");
    let out = health(&["--url", &format!("http://{addr}/healthz")], &[]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {stdout} stderr {stderr}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("HTTP/1.0 200 OK "), "{stdout}");
    assert!(stdout.contains(r#""status":"ok""#), "{stdout}");
    w.stop().await;
}

/// 2xx passes, anything else fails with exit 1 and one line saying why; the URL can
/// come from QUEUE_HEALTH_URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probe_exits_1_on_503_and_sends_a_plain_get() {
    let (addr, req) = answering(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}",
    )
    .await;
    let out = health(
        &[],
        &[("QUEUE_HEALTH_URL", &format!("http://{addr}/healthz"))],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "HTTP/1.1 200 OK {\"status\":\"ok\"}\n");
    let req = req.await.expect("server task");
    assert!(req.starts_with("GET /healthz HTTP/1.0\r\n"), "{req}");
    assert!(req.contains(&format!("\r\nHost: {addr}\r\n")), "{req}");

    let (addr, req) = answering(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\r\n{\"status\":\"stalled\",\"last_loop_ms_ago\":9000}",
    )
    .await;
    let out = health(&["--url", &format!("http://{addr}/healthz")], &[]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("unhealthy") && stderr.contains("503") && stderr.contains("stalled"),
        "{stderr}"
    );
    req.await.expect("server task");
}

/// Nothing listening, no answer in time, https or a broken URL: exit 1 and one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probe_exits_1_when_unreachable_silent_or_misconfigured() {
    let closed = free_port();
    let out = health(
        &["--url", &format!("http://127.0.0.1:{closed}/healthz")],
        &[],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to 127.0.0.1:"), "{stderr}");

    // Accepts, never answers: the probe gives up at --timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let (s, _) = silent.accept().await.expect("accept");
        s
    });
    let started = Instant::now();
    let out = health(
        &[
            "--url",
            &format!("http://{addr}/healthz"),
            "--timeout",
            "300ms",
        ],
        &[],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no answer from") && stderr.contains("300ms"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout held"
    );
    drop(hold.await.expect("held connection"));

    for (url, says) in [
        ("https://127.0.0.1:9090/healthz", "https is not supported"),
        ("ftp://127.0.0.1/healthz", "use http://"),
        ("127.0.0.1:9090/healthz", "expected http://host:port/path"),
        ("http://127.0.0.1:99999/healthz", "out of range"),
    ] {
        let out = health(&["--url", url], &[]).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {stderr}");
        assert!(stderr.contains(says), "{url}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }

    // A flag clap cannot read is a usage error, exit 2 as for every subcommand.
    let out = health(&["--timeout", "soon"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// `status` and `inspect` read whatever Redis holds: a score of 1e300 or inf, a rate
/// minute of u64::MAX, config values like `inf`, bytes that are not UTF-8 in members,
/// hashes and ids. They must exit 0 with sane output, never panic.
#[test]
fn status_and_inspect_survive_hostile_values_in_redis() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).expect("url");
    let mut c = client.get_connection().expect("connect");
    let not_utf8: &[u8] = b"\xff\xfe";
    let huge_id = "x".repeat(5000);
    let mut p = redis::pipe();
    p.cmd("SADD")
        .arg("waitroom:active_events")
        .arg("hostile")
        .arg(not_utf8)
        .arg("{braced}")
        .arg("")
        .ignore();
    // The first in line joined at -inf, the first in the priority lane in year 1e290.
    p.cmd("ZADD")
        .arg("waitroom:hostile:queue")
        .arg("-inf")
        .arg(not_utf8)
        .arg("1e300")
        .arg("s1")
        .ignore();
    p.cmd("ZADD")
        .arg("waitroom:hostile:priority")
        .arg("1e300")
        .arg("p1")
        .arg("inf")
        .arg("p2")
        .ignore();
    p.cmd("SADD")
        .arg("waitroom:hostile:processing")
        .arg(not_utf8)
        .arg(&huge_id)
        .arg("s1")
        .arg("s2")
        .ignore();
    p.cmd("HSET")
        .arg("waitroom:hostile:config")
        .arg("max_concurrent")
        .arg("inf")
        .arg("paused")
        .arg("1e3")
        .ignore();
    p.cmd("HSET")
        .arg("waitroom:hostile:rate")
        .arg("minute")
        .arg(u64::MAX.to_string())
        .arg("count")
        .arg("inf")
        .arg("prev")
        .arg("-5")
        .ignore();
    p.cmd("ZADD")
        .arg("waitroom:hostile:deadlines")
        .arg("1e300")
        .arg("s1")
        .arg("inf")
        .arg("s2")
        .ignore();
    p.cmd("ZADD")
        .arg("waitroom:hostile:outbox")
        .arg(1)
        .arg([&br#"["s1","u",1e300,"#[..], not_utf8, b"]"].concat())
        .ignore();
    p.cmd("ZADD")
        .arg("waitroom:workers")
        .arg("inf")
        .arg(not_utf8)
        .arg("1e300")
        .arg("w1")
        .ignore();
    p.cmd("HSET")
        .arg("waitroom:session:s1")
        .arg("status")
        .arg(not_utf8)
        .arg("event_id")
        .arg("hostile")
        .arg("admitted_at")
        .arg("1e300")
        .arg("checkout_token")
        .arg([&b"eyJ"[..], &[0xffu8; 40][..]].concat())
        .arg(not_utf8)
        .arg("key not UTF-8")
        .ignore();
    p.cmd("HSET")
        .arg("waitroom:session:s2")
        .arg("status")
        .arg("admitted")
        .arg("event_id")
        .arg("hostile")
        .ignore();
    p.query::<()>(&mut c).expect("write hostile values");

    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--redis-url", &redis.url()])
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?} failed: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        String::from_utf8(out.stdout).expect("UTF-8 output")
    };

    let v: serde_json::Value =
        serde_json::from_str(&run(&["status", "--json"])).expect("status JSON");
    let events = v["events"].as_object().expect("events");
    assert_eq!(
        events.keys().collect::<Vec<_>>(),
        ["hostile"],
        "ids the worker ignores (not UTF-8, empty, braced) are not shown"
    );
    let e = &v["events"]["hostile"];
    assert_eq!(e["queue_length"], 2);
    assert_eq!(e["priority_length"], 2);
    assert!(e["oldest_wait_ms"].is_null(), "no plausible join time: {e}");
    assert_eq!(e["slots_in_use"], 4);
    assert_eq!(
        e["capacity"], 100,
        "max_concurrent inf reads as the default"
    );
    assert_eq!(
        e["paused"], true,
        "paused 1e3 is no valid value: the event stays paused (as admit.lua reads it)"
    );
    assert_eq!(e["admitted_this_minute"], 0);
    assert_eq!(e["admitted_last_minute"], 0);
    let workers = v["live_workers"].as_array().expect("live workers");
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert!(workers.contains(&serde_json::json!("w1")));
    let text = run(&["status"]);
    assert!(text.contains("hostile") && text.contains("4/100"), "{text}");

    let v: serde_json::Value =
        serde_json::from_str(&run(&["inspect", "s1", "--json"])).expect("inspect JSON");
    assert_eq!(v["event_id"], "hostile");
    assert_eq!(v["in_processing"], true);
    assert_eq!(v["queue_position"], 2);
    // A score that large is read as an untold mark (2^50 + admission ms), whose
    // admission time past year 9999 reads as its end.
    assert!(v["deadline"].is_null(), "{v}");
    assert_eq!(
        v["untold_since"], "9999-12-31T23:59:59Z",
        "an instant past year 9999 reads as its end"
    );
    assert_eq!(v["hash"]["status"], "\u{fffd}\u{fffd}");
    assert!(
        v["outbox_entry"]
            .as_str()
            .is_some_and(|m| m.starts_with(r#"["s1""#))
    );
    let text = run(&["inspect", "s1"]);
    assert!(text.contains("9999-12-31T23:59:59Z"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&run(&["inspect", "s2", "--json"])).expect("inspect JSON");
    assert!(
        v["deadline"].is_null(),
        "an infinite deadline is no instant: {v}"
    );
    run(&["inspect", "s2"]);
}
