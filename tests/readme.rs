//! The README's `redis-cli` examples, run as written against a private redis-server.
//!
//! Every line of a ```sh block of README.md that starts with `redis-cli` is run with
//! `sh -c` exactly as written, except that `-h 127.0.0.1 -p <port> -e` is put right
//! after `redis-cli`: it talks to this test's own server, never to 127.0.0.1:6379,
//! and exits non-zero on an error reply (without `-e` it exits 0 even then).
//! Inline examples (`` `redis-cli ...` `` in the text) are run too; those written as
//! templates have their placeholders (`<event>`, `<session>`, `<id>`) filled in
//! first. Each must exit 0 (no error reply).
//!
//! Skipped, as they need more than a Redis (or would write system files): lines
//! of the other commands in those blocks, `./scripts/demo.sh`, `./scripts/test.sh`,
//! `cargo run ...` (with or without `QUEUE_JWT_SECRET=...` in front),
//! `waitroom-worker ...`, `printf ... > /etc/waitroom/...`, `docker compose ...` and
//! `curl ...`, their continuation lines, and comments. A line of any other command
//! fails the test, so a new kind of example is decided on rather than ignored.
//!
//! The priority-lane example must do what its text says: the session it puts in the
//! lane has a hash, joined now (not at a fixed instant), and is admitted first,
//! before sessions that joined the main queue earlier.

mod support;

use std::process::Command;

use support::*;
use waitroom_worker::clock;

const EVENT: &str = "concert-2024";
const VIP: &str = "session-vip";

/// Commands of the README's sh blocks that this test does not run.
const SKIPPED: [&str; 8] = [
    "./scripts/",
    "cargo ",
    "QUEUE_JWT_SECRET=",
    "waitroom-worker ",
    "printf ",
    "docker ",
    "curl ",
    "#",
];

/// Placeholders of inline template examples, and what stands in for them.
const FILLED: [(&str, &str); 3] = [
    ("<event>", EVENT),
    ("<session>", "session-abc"),
    ("<id>", "worker-1"),
];

struct Examples {
    /// `redis-cli` lines, in README order, as written (templates filled in).
    run: Vec<String>,
    /// Lines of other commands (first lines only).
    skipped: Vec<String>,
}

fn examples(readme: &str) -> Examples {
    let mut ex = Examples {
        run: Vec::new(),
        skipped: Vec::new(),
    };
    let mut fence: Option<String> = None;
    let mut continued = false;
    for line in readme.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(rest.trim().to_owned()),
            };
            continued = false;
            continue;
        }
        match fence.as_deref() {
            Some("sh") => {
                let is_continuation = continued;
                continued = trimmed.ends_with('\\');
                if is_continuation || trimmed.is_empty() {
                    continue;
                }
                if trimmed.starts_with("redis-cli ") {
                    assert!(
                        !trimmed.ends_with('\\'),
                        "a redis-cli example over several lines: {line}"
                    );
                    ex.run.push(trimmed.to_owned());
                } else {
                    ex.skipped.push(trimmed.to_owned());
                }
            }
            Some(_) => {}
            None => {
                // Inline code spans: `redis-cli ...`.
                for (i, span) in line.split('`').enumerate() {
                    if i % 2 == 1 && span.starts_with("redis-cli ") {
                        let mut filled = span.to_owned();
                        for (placeholder, value) in FILLED {
                            filled = filled.replace(placeholder, value);
                        }
                        assert!(
                            !filled.contains('<'),
                            "a placeholder this test cannot fill: {span}"
                        );
                        ex.run.push(filled);
                    }
                }
            }
        }
    }
    ex
}

/// Run one example with `sh -c`, pointed at `port`: (exit code, stdout, stderr).
fn run(example: &str, port: u16) -> (Option<i32>, String, String) {
    let rest = example
        .strip_prefix("redis-cli ")
        .expect("a redis-cli example");
    let line = format!("redis-cli -h 127.0.0.1 -p {port} -e {rest}");
    let out = Command::new("sh")
        .arg("-c")
        .arg(&line)
        .output()
        .expect("sh runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redis_cli_example_of_the_readme_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let ex = examples(&readme);
    for s in &ex.skipped {
        assert!(
            SKIPPED.iter().any(|p| s.starts_with(p)),
            "an example of a command this test neither runs nor knows to skip: {s}"
        );
    }
    assert!(
        ex.run.len() >= 15,
        "only {} redis-cli examples found: {:?}",
        ex.run.len(),
        ex.run
    );
    assert!(
        ex.run
            .iter()
            .any(|e| e.starts_with("redis-cli ZADD waitroom:concert-2024:priority ")),
        "the priority-lane example is among them: {:?}",
        ex.run
    );

    let redis = RedisServer::start();
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    // Others waiting in the main queue, who joined before the VIP.
    let queued = enqueue(&mut conn, EVENT, "fan", 5, clock::now_ms() - 5_000).await;

    for e in &ex.run {
        let (code, stdout, stderr) = run(e, redis.port);
        assert_eq!(code, Some(0), "{e}\nstdout: {stdout}\nstderr: {stderr}");
    }
    eprintln!(
        "ran {} redis-cli examples; skipped {} lines of other commands",
        ex.run.len(),
        ex.skipped.len()
    );

    // The VIP joined now, on Redis's clock, not at some fixed instant.
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .expect("TIME");
    let now = secs * 1000 + micros / 1000;
    let joined: Option<f64> = redis::cmd("ZSCORE")
        .arg(k.priority(EVENT))
        .arg(VIP)
        .query_async(&mut conn)
        .await
        .expect("ZSCORE");
    let joined = joined.expect("the example put the VIP in the priority lane") as u64;
    assert!(
        now.abs_diff(joined) < 60_000,
        "the VIP joined at {joined}, {} ms from now: status would show that as its wait",
        now.abs_diff(joined)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_waitroom-worker"))
        .args([
            "status",
            "--json",
            "--event",
            EVENT,
            "--redis-url",
            &redis.url(),
        ])
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let e = &v["events"][EVENT];
    assert_eq!(e["priority_length"], 1, "{e}");
    assert_eq!(e["paused"], false, "the example paused, then resumed: {e}");
    let wait = e["oldest_wait_ms"].as_u64().expect("someone waits");
    assert!(wait < 60_000, "oldest wait {wait} ms");

    // The VIP's hash makes it admissible, and the lane goes first.
    let mut w = start_worker(settings(&redis.url(), &kafka.bootstrap).event(EVENT)).await;
    let o = w.admit_event(EVENT).await.expect("admit");
    assert_eq!(o.skipped, 0, "nobody dropped: {o:?}");
    assert!(
        o.entries
            .first()
            .is_some_and(|e| e.starts_with(format!("[\"{VIP}\"").as_bytes())),
        "the VIP is admitted first: {:?}",
        o.entries
    );
    let h = hgetall(&mut conn, &k.session(EVENT, VIP)).await;
    assert_eq!(
        h.get("status").map(String::as_str),
        Some("admitted"),
        "{h:?}"
    );
    assert!(
        smembers(&mut conn, &k.processing(EVENT))
            .await
            .contains(&VIP.to_owned())
    );
    for sid in &queued[o.entries.len() - 1..] {
        assert_eq!(
            hgetall(&mut conn, &k.session(EVENT, sid)).await["status"],
            "queued",
            "{sid} waits behind the VIP"
        );
    }
}
