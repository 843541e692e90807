//! What the binary writes on stderr: each cause of a refused start printed once.

mod support;

use std::process::Command;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_waitroom-worker");

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
