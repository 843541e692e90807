//! Security edges: Redis over TLS (`rediss://`) with the worker's own CA and a client
//! certificate, and Kafka security settings passed through to librdkafka.
//! (Tokens refusing `none` and algorithm switches are unit tests of `src/token.rs`;
//! secrets staying out of the logs is in `tests/cli.rs`.)

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;
use waitroom_worker::clock;
use waitroom_worker::publisher::Publisher;

const BIN: &str = env!("CARGO_BIN_EXE_waitroom-worker");
const EVENT: &str = "tls";

/// With --redis-tls-ca and a client certificate, a worker on `rediss://` admits users:
/// the TLS port is the only one it was given, and the server checks client certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_admits_over_tls_with_its_own_ca_and_a_client_certificate() {
    let certs = TestCerts::make("worker");
    let redis = TlsRedis::start(&certs);
    let kafka = MockKafka::start();
    let mut conn = redis.conn().await;
    let k = keys();
    enqueue(&mut conn, EVENT, "t", 5, clock::now_ms()).await;
    let s = settings(&redis.tls_url(), &kafka.bootstrap)
        .event(EVENT)
        .redis_tls_ca(certs.path("ca.pem"))
        .redis_tls_cert(certs.path("client.pem"))
        .redis_tls_key(certs.path("client.key"));
    let mut w = start_worker(s).await;
    assert!(w.cycle().await, "a cycle over TLS reaches Redis");
    assert_eq!(scard(&mut conn, &k.processing(EVENT)).await, 5);
    // The connection the worker holds is a TLS one: the server lists it on its TLS port.
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .expect("CLIENT LIST");
    assert!(
        clients
            .lines()
            .any(|l| l.contains(&format!("laddr=127.0.0.1:{}", redis.tls_port))),
        "no client on the TLS port: {clients}"
    );
}

fn status(redis: &TlsRedis, extra: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args([
            "status",
            "--redis-url",
            &redis.tls_url(),
            "--redis-timeout",
            "3s",
        ])
        .args(extra)
        .output()
        .expect("run status");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Without the CA the server's certificate is refused; without a client certificate
/// the server refuses the worker; each says so in its error.
#[test]
fn tls_without_the_ca_or_the_client_certificate_fails_with_a_clear_error() {
    let certs = TestCerts::make("status");
    let redis = TlsRedis::start(&certs);
    let client = [
        "--redis-tls-cert",
        &certs.path("client.pem"),
        "--redis-tls-key",
        &certs.path("client.key"),
    ];
    let (ok, err) = status(&redis, &client);
    assert!(!ok, "an unknown CA must be refused");
    assert!(
        err.contains("connecting to rediss://127.0.0.1") && err.contains("certificate"),
        "{err}"
    );
    let ca = ["--redis-tls-ca", &certs.path("ca.pem")];
    let (ok, err) = status(&redis, &ca);
    assert!(!ok, "the server demands a client certificate");
    assert!(err.contains("connecting to rediss://127.0.0.1"), "{err}");
    let (ok, err) = status(&redis, &[&ca[..], &client[..]].concat());
    assert!(ok, "status over TLS: {err}");
}

/// `--kafka-config` reaches librdkafka: SSL and SASL settings are accepted (the build
/// has SSL), and a bad one is refused by name at start-up.
#[test]
fn kafka_security_settings_pass_through_to_librdkafka() {
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let certs = TestCerts::make("kafka");
    let ssl = pairs(&[
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "worker"),
        ("sasl.password", "kafka-secret"),
        ("ssl.ca.location", &certs.path("ca.pem")),
    ]);
    Publisher::new("127.0.0.1:9", &ssl, "QUEUE_READY", Duration::from_secs(1))
        .expect("librdkafka takes SASL_SSL with SCRAM");
    let bad = pairs(&[
        ("security.protocol", "SSL"),
        ("ssl.ca.location", "/nonexistent/ca.pem"),
    ]);
    let err = Publisher::new("127.0.0.1:9", &bad, "QUEUE_READY", Duration::from_secs(1))
        .err()
        .expect("a missing CA file is refused");
    assert!(
        err.to_string().contains("ssl.ca.location") || err.to_string().contains("ca.pem"),
        "{err}"
    );
}
