//! What the binary writes on stderr: a bounded number of warnings through a Kafka
//! outage and while Redis refuses writes, no colour codes in a pipe, one JSON
//! object per line with `--log-format json`, and each cause of a refused start
//! printed once.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_waitroom-worker");

/// The worker binary with stderr read line by line on a thread of its own.
struct Worker {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Worker {
    /// `waitroom-worker run ARGS` with `env`, stderr a pipe, and no environment
    /// variable of the worker's or of colour control inherited from the test.
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut c = Command::new(BIN);
        c.args(args);
        for var in [
            "NO_COLOR",
            "CLICOLOR_FORCE",
            "QUEUE_LOG_FORMAT",
            "QUEUE_JWT_SECRET",
            "REDIS_URL",
            "REDIS_CLUSTER_URLS",
            "KAFKA_BROKERS",
        ] {
            c.env_remove(var);
        }
        c.env("RUST_LOG", "info");
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the worker");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line).into_owned();
                sink.lock().expect("lines").push(text);
            }
        });
        Worker {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Poll stderr until a line contains `needle`, at most `timeout`.
    fn wait_for_line(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.lines().iter().any(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} within {timeout:?}: {}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait for the exit (at most 15 s) and for stderr to close; every line.
    fn stop(mut self) -> Vec<String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        let code = loop {
            if let Some(code) = self.child.try_wait().expect("wait") {
                break code;
            }
            assert!(Instant::now() < deadline, "the worker did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            r.join().expect("stderr reader");
        }
        let lines = self.lines();
        assert!(code.success(), "exit {code:?}: {}", lines.join("\n"));
        lines
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A text line without its ANSI escape sequences (the old output had them in pipes).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7e).
            if chars.next() == Some('[') {
                for d in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The level of a text line (`<timestamp> <LEVEL> <target>: ...`), if it is one.
fn level(line: &str) -> Option<String> {
    let plain = strip_ansi(line);
    let mut words = plain.split_whitespace();
    words.next()?;
    let l = words.next()?;
    ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
        .contains(&l)
        .then(|| l.to_owned())
}

fn run_args<'a>(redis: &'a str, kafka: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "run",
        "--redis-url",
        redis,
        "--kafka-brokers",
        kafka,
        "--jwt-secret",
        SECRET,
        "--http-addr",
        "127.0.0.1:0",
        "--shutdown-timeout",
        "5s",
    ];
    a.extend_from_slice(extra);
    a
}

/// A worker admitting 150 users while Kafka is away for 8 s, then draining its
/// outbox, writes at most 40 WARN/ERROR lines in all. Measured on this machine over
/// five runs: the code before the log limiter wrote 365 to 422 (one warning per
/// outbox entry per retry, growing with the outbox, about 290; a consumer error
/// every 200 ms, about 50; librdkafka's reports of every reconnect attempt, about
/// 80); with it, 8 to 10 (the first of each kind, then one summary per kind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_writes_a_bounded_number_of_warnings() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let url = redis.url();
    let w = Worker::spawn(
        &run_args(
            &url,
            &kafka.bootstrap,
            &[
                "--event",
                "sale",
                "--process-interval",
                "100ms",
                "--batch-size",
                "2",
                "--max-concurrent",
                "1000",
                "--publish-timeout",
                "1s",
                "--outbox-lease",
                "3s",
                "--retry-delay",
                "100ms",
                "--retry-max-delay",
                "1s",
            ],
        ),
        &[],
    );
    w.wait_for_line("Queue processor started", Duration::from_secs(30));
    // Give the consumer and producer their first connection, then take Kafka away
    // while users keep arriving and being admitted.
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    kafka.brokers_down();
    let outage = Instant::now();
    let t0 = waitroom_worker::clock::now_ms();
    for wave in 0..15 {
        enqueue(
            &mut conn,
            "sale",
            &format!("w{wave:02}"),
            10,
            t0 + wave * 100,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The outage lasts 8 s (this is the scenario, not a wait for something).
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(outage.elapsed())).await;
    kafka.brokers_up();
    let published = tokio::task::spawn_blocking(move || {
        reader.read_until(150, Duration::from_secs(60));
        reader.by_session().len()
    })
    .await
    .expect("reader");
    assert_eq!(published, 150, "every admission published after the outage");
    eventually(Duration::from_secs(30), "the outbox drained", || {
        let mut c = conn.clone();
        async move { (zcard(&mut c, "waitroom:sale:outbox").await == 0).then_some(()) }
    })
    .await;
    let lines = w.stop();
    let loud: Vec<&String> = lines
        .iter()
        .filter(|l| matches!(level(l).as_deref(), Some("WARN" | "ERROR")))
        .collect();
    let text: Vec<String> = loud.iter().map(|l| strip_ansi(l)).collect();
    eprintln!(
        "{} WARN/ERROR lines of {}:\n{}",
        loud.len(),
        lines.len(),
        text.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("more like this in the last")),
        "repeats are summarised with a count"
    );
    assert!(
        loud.len() <= 40,
        "{} WARN/ERROR lines through an 8 s outage",
        loud.len()
    );
}

/// Redis refusing writes for 3 s (`maxmemory` reached) with 20 events waiting: every
/// cycle (50 ms) fails to record the known events and every event's tokens fail to
/// be written. Measured on this machine: the worker's loop before its warnings went
/// through the limiter wrote 63 WARN/ERROR lines (a "could not update the known
/// events" every cycle); with it, 4 (the first of each kind and its summary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_writes_writes_a_bounded_number_of_warnings() {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let events: Vec<String> = (0..20).map(|i| format!("ev{i:02}")).collect();
    for e in &events {
        let _: () = redis::cmd("SADD")
            .arg("waitroom:active_events")
            .arg(e)
            .query_async(&mut conn)
            .await
            .expect("SADD");
    }
    let set_maxmemory = |c: &mut redis::aio::MultiplexedConnection, v: &'static str| {
        let mut c = c.clone();
        async move {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(v)
                .query_async(&mut c)
                .await
                .expect("CONFIG SET maxmemory");
        }
    };
    for e in &events {
        enqueue(&mut conn, e, e, 1, waitroom_worker::clock::now_ms()).await;
    }
    set_maxmemory(&mut conn, "1").await;
    let url = redis.url();
    let w = Worker::spawn(
        &run_args(
            &url,
            &kafka.bootstrap,
            &["--process-interval", "50ms", "--retry-attempts", "1"],
        ),
        &[],
    );
    w.wait_for_line("Queue processor started", Duration::from_secs(30));
    // Redis refuses writes for 3 s (this is the scenario, not a wait for something).
    tokio::time::sleep(Duration::from_secs(3)).await;
    set_maxmemory(&mut conn, "0").await;
    eventually(Duration::from_secs(30), "every event admitted", || {
        let mut c = conn.clone();
        let events = events.clone();
        async move {
            for e in &events {
                if scard(&mut c, &format!("waitroom:{e}:processing")).await != 1 {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    let lines = w.stop();
    let loud: Vec<String> = lines
        .iter()
        .filter(|l| matches!(level(l).as_deref(), Some("WARN" | "ERROR")))
        .map(|l| strip_ansi(l))
        .collect();
    eprintln!("{} WARN/ERROR lines:\n{}", loud.len(), loud.join("\n"));
    assert!(
        loud.len() <= 20,
        "{} WARN/ERROR lines while Redis refused writes",
        loud.len()
    );
}

/// A quick worker run: started, admitting, stopped; its stderr lines.
async fn short_run(extra: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    enqueue(&mut conn, "e1", "s", 3, waitroom_worker::clock::now_ms()).await;
    let url = redis.url();
    let mut args = run_args(
        &url,
        &kafka.bootstrap,
        &["--event", "e1", "--process-interval", "50ms"],
    );
    args.extend_from_slice(extra);
    let w = Worker::spawn(&args, env);
    eventually(Duration::from_secs(30), "three admissions", || {
        let mut c = conn.clone();
        async move { (scard(&mut c, "waitroom:e1:processing").await == 3).then_some(()) }
    })
    .await;
    w.wait_for_line("User admitted to checkout", Duration::from_secs(30));
    w.stop()
}

/// With stderr a pipe (a file, a log collector) no ANSI escape is written, without
/// anyone having to set NO_COLOR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_into_a_pipe_carry_no_colour_codes() {
    let lines = short_run(&[], &[]).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Admitting users to checkout"))
    );
    let coloured: Vec<&String> = lines.iter().filter(|l| l.contains('\u{1b}')).collect();
    assert!(coloured.is_empty(), "ESC in the output: {coloured:?}");
}

/// On a terminal the text format is coloured, unless NO_COLOR is set. The terminal is
/// a pseudo-terminal from util-linux `script`; without it there is nothing to check.
#[test]
fn a_terminal_gets_colour_unless_no_color_is_set() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` (util-linux) to make a terminal");
        return;
    }
    // Redis on a closed port: the worker warns at once, then SIGTERM from `timeout`.
    let port = free_port();
    let on_a_terminal = |no_color: Option<&str>| -> String {
        let inner = format!(
            "timeout -s TERM 2 {BIN} run --redis-url redis://127.0.0.1:{port} \
             --redis-timeout 200ms --jwt-secret {SECRET} --http-addr off"
        );
        let mut c = Command::new("script");
        c.args(["-qec", &inner, "/dev/null"])
            .env_remove("NO_COLOR")
            .env_remove("QUEUE_LOG_FORMAT")
            .env("RUST_LOG", "info");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = c.stdin(Stdio::null()).output().expect("run script");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_a_terminal(None);
    assert!(coloured.contains("redis not reachable"), "{coloured}");
    assert!(
        coloured.contains('\u{1b}'),
        "a terminal gets colour: {coloured}"
    );
    let plain = on_a_terminal(Some("1"));
    assert!(plain.contains("redis not reachable"), "{plain}");
    assert!(!plain.contains('\u{1b}'), "NO_COLOR=1: {plain}");
}

/// Every line is one JSON object with the level, the message and the line's fields.
fn assert_json_lines(lines: &[String]) {
    assert!(!lines.is_empty());
    let mut admitted = false;
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {l}"));
        assert!(
            o.get("level").and_then(|x| x.as_str()).is_some(),
            "level: {l}"
        );
        assert!(o.get("timestamp").is_some(), "timestamp: {l}");
        let msg = o
            .get("message")
            .and_then(|x| x.as_str())
            .unwrap_or_default();
        assert!(!msg.is_empty(), "message: {l}");
        if msg == "Admitting users to checkout" {
            assert_eq!(o["level"], "INFO");
            assert_eq!(o["event_id"], "e1", "fields are keys of the object: {l}");
            assert_eq!(o["user_count"], 3, "numbers stay numbers: {l}");
            admitted = true;
        }
    }
    assert!(admitted, "the admission line is there: {lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_per_line() {
    let lines = short_run(&["--log-format", "json"], &[]).await;
    assert_json_lines(&lines);
    let lines = short_run(&[], &[("QUEUE_LOG_FORMAT", "json")]).await;
    assert_json_lines(&lines);
    // It is a global option: a refused setting of any subcommand is a JSON line too.
    let out = Command::new(BIN)
        .args(["--log-format", "json", "status", "--redis-url", "nonsense"])
        .output()
        .expect("run status");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<String> = stderr.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!(v["level"], "ERROR", "{stderr}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("REDIS_URL"),
        "{stderr}"
    );
    // An empty value means unset: the text format.
    let out = Command::new(BIN)
        .args(["status", "--redis-url", "nonsense"])
        .env("QUEUE_LOG_FORMAT", "")
        .output()
        .expect("run status");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    // An unknown format is refused by name.
    let out = Command::new(BIN)
        .args(["--log-format", "xml", "status"])
        .output()
        .expect("run status");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-format"));
}

/// A refused start names each cause once: the short secret (from a setting) and a
/// Redis error (from Redis, through three layers of context).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_start_prints_each_cause_once() {
    let out = Command::new(BIN)
        .args(["run", "--jwt-secret", "hunter2"])
        .env_remove("QUEUE_JWT_SECRET")
        .env_remove("QUEUE_JWT_SECRET_FILE")
        .env_remove("NO_COLOR")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr
            .matches("the JWT secret is 7 bytes; at least 32 are required")
            .count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("QUEUE_JWT_SECRET"),
        "names the setting: {stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the secret is never echoed");

    // A cluster client pointed at a standalone Redis.
    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let url = redis.url();
    let out = Command::new(BIN)
        .args([
            "run",
            "--redis-cluster",
            &url,
            "--kafka-brokers",
            &kafka.bootstrap,
            "--jwt-secret",
            SECRET,
            "--http-addr",
            "off",
            "--redis-timeout",
            "2s",
        ])
        .env_remove("REDIS_URL")
        .env_remove("NO_COLOR")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last.matches("cluster support disabled").count(),
        1,
        "{stderr}"
    );
}
