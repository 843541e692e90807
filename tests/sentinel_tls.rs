//! Sentinel over TLS (issue 15, "passwords and TLS as for `--redis-url`"): a master,
//! a replica and three sentinels of the test's own that speak TLS only (no
//! plain-text port anywhere, replication and the sentinels' links over TLS too),
//! and the worker binary given `rediss://` sentinel URLs, trusting the test's CA
//! through `SSL_CERT_FILE` as a cluster over `rediss://` does. It admits users,
//! follows a failover to the new master over TLS, and admits there; with a CA it
//! does not trust it admits nobody, says why, and does not crash.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use support::*;
use waitroom_worker::clock;
use waitroom_worker::redis_server::{PrivateRedis, PrivateSentinel, ServerTls};

const BIN: &str = env!("CARGO_BIN_EXE_waitroom-worker");
const EVENT: &str = "tls-sentinel-sale";

/// The bed over TLS only; the servers take clients without a certificate, as the
/// worker following Sentinel has none to show.
fn tls_bed(certs: &TestCerts) -> PrivateSentinel {
    PrivateSentinel::start_tls(ServerTls {
        auth_clients: false,
        ..ServerTls::in_dir(&certs.dir)
    })
    .expect("sentinel bed over TLS")
}

/// A TLS connection to one of the bed's servers, trusting the test's CA.
async fn conn_to(server: &PrivateRedis) -> MultiplexedConnection {
    server
        .client()
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect over TLS")
}

/// The worker binary, stopped (SIGKILL) if the test ends without stopping it.
struct WorkerProcess {
    child: Option<Child>,
    log: PathBuf,
    http: std::net::SocketAddr,
}

impl WorkerProcess {
    /// `waitroom-worker run` on the bed's `rediss://` sentinels, trusting the CA in
    /// `ca_file` (and nothing else) through `SSL_CERT_FILE`.
    fn start(bed: &PrivateSentinel, brokers: &str, ca_file: &str, name: &str) -> Self {
        let log = std::env::temp_dir().join(format!(
            "waitroom-sentinel-tls-{}-{name}.log",
            std::process::id()
        ));
        let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let urls = bed.sentinel_urls();
        assert!(
            urls.split(',').all(|u| u.starts_with("rediss://")),
            "{urls}"
        );
        let child = Command::new(BIN)
            .args(["run", "--redis-sentinel", &urls])
            .args(["--kafka-brokers", brokers, "--event", EVENT])
            .args(["--http-addr", &http.to_string()])
            .args(["--process-interval", "50ms", "--batch-size", "10"])
            .args(["--max-concurrent", "1000", "--failover-hold", "500ms"])
            .args(["--redis-timeout", "2s", "--publish-timeout", "1s"])
            .args(["--retry-delay", "100ms", "--retry-max-delay", "500ms"])
            .args(["--shutdown-timeout", "5s"])
            .env("SSL_CERT_FILE", ca_file)
            .env_remove("SSL_CERT_DIR")
            .env("QUEUE_JWT_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&log).expect("worker log file"),
            ))
            .spawn()
            .expect("spawn worker");
        WorkerProcess {
            child: Some(child),
            log,
            http,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it still runs.
    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM if it still runs, and wait (at most 15 s) for it to exit: how it
    /// exited, and its log.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("started");
        if matches!(child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the worker did not stop on SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A server's `port` and `tls-port` settings (`port` 0: no plain text), asked
/// over TLS.
fn ports(server: &PrivateRedis) -> (String, String) {
    let mut c = server
        .client()
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .expect("connect over TLS");
    let get = |c: &mut redis::Connection, name: &str| {
        let kv: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query(c)
            .expect("CONFIG GET");
        kv.get(1).cloned().unwrap_or_default()
    };
    (get(&mut c, "port"), get(&mut c, "tls-port"))
}

/// Whether a plain-text client gets a PING answered on loopback `port`.
fn answers_plain_text(port: u16) -> bool {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            redis::cmd("PING").query::<String>(&mut c)
        })
        .is_ok()
}

/// Wait until `ids` all have a token on `conn`'s server and a QUEUE_READY was read.
async fn admitted_and_told(
    conn: &MultiplexedConnection,
    reader: &mut TopicReader,
    ids: &[String],
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = conn.clone();
        let mut tokens = 0;
        for sid in ids {
            let h = hgetall(&mut c, &keys().session(EVENT, sid)).await;
            if h.get("status").map(String::as_str) == Some("admitted")
                && h.get("checkout_token").is_some_and(|t| !t.is_empty())
            {
                tokens += 1;
            }
        }
        reader.read_for(Duration::from_millis(100));
        let by = reader.by_session();
        let told = ids.iter().filter(|s| by.contains_key(*s)).count();
        if tokens == ids.len() && told == ids.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {tokens} of {} with a token, {told} told, after 30 s",
            ids.len()
        );
    }
}

/// rediss:// sentinels: the worker reaches the sentinels and the master over TLS,
/// admits, and after a failover goes on on the new master, over TLS too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_follows_sentinel_over_tls_through_a_failover() {
    let certs = TestCerts::make("sentinel-tls");
    let mut bed = tls_bed(&certs);
    let kafka = MockKafka::start();
    let new_port = bed.replica.port;
    // No plain-text path exists: the servers have no plain-text port (the port
    // Sentinel names is their TLS port), and the sentinels' ports speak TLS.
    for server in [&bed.master, &bed.replica] {
        assert_eq!(ports(server), ("0".into(), server.port.to_string()));
    }
    for url in bed.sentinel_urls().split(',') {
        let port = url.rsplit(':').next().and_then(|p| p.parse().ok());
        assert!(
            !answers_plain_text(port.expect("a port")),
            "{url} answers plain text"
        );
    }
    let mut master = conn_to(&bed.master).await;
    let first = enqueue(&mut master, EVENT, "a", 30, clock::now_ms() - 60_000).await;
    let mut reader = TopicReader::new(&kafka.bootstrap, TOPIC);
    let worker = WorkerProcess::start(&bed, &kafka.bootstrap, &certs.path("ca.pem"), "ok");

    eventually(Duration::from_secs(30), "the worker ready over TLS", || {
        let addr = worker.http;
        async move {
            tokio::net::TcpStream::connect(addr).await.ok()?;
            (http_get(addr, "/readyz").await.0 == 200).then_some(())
        }
    })
    .await;
    admitted_and_told(&master, &mut reader, &first, "before the failover").await;
    // The worker's own connection is on the master (a client that is neither a
    // replica nor a sentinel), which listens on its TLS port alone.
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut master)
        .await
        .expect("CLIENT LIST");
    let own: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut master)
        .await
        .expect("CLIENT ID");
    let worker_clients = |list: &str, own: i64| {
        list.lines()
            .filter(|l| !l.contains("name=sentinel-") && !l.contains("flags=S"))
            .filter(|l| !l.starts_with(&format!("id={own} ")))
            .count()
    };
    assert!(
        worker_clients(&clients, own) > 0,
        "no worker client: {clients}"
    );
    // The replica holds the first admissions before the master dies (the test's
    // own wait; this test is about TLS, not about --replica-acks).
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut master)
        .await
        .expect("WAIT");

    let took = bed
        .fail_over()
        .expect("Sentinel promotes the replica over TLS");
    assert_eq!(bed.master_port(), Some(new_port));
    let mut new_master = conn_to(&bed.replica).await;
    let second = enqueue(&mut new_master, EVENT, "b", 30, clock::now_ms() - 30_000).await;
    admitted_and_told(&new_master, &mut reader, &second, "after the failover").await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut new_master)
        .await
        .expect("CLIENT LIST");
    let own: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut new_master)
        .await
        .expect("CLIENT ID");
    assert!(
        worker_clients(&clients, own) > 0,
        "no worker client on the new master: {clients}"
    );
    // Everyone was told once per admission, each with the token the master keeps.
    let by = reader.by_session();
    for sid in first.iter().chain(&second) {
        let h = hgetall(&mut new_master, &keys().session(EVENT, sid)).await;
        let sent = &by.get(sid).expect("told")[0].value;
        assert_eq!(
            sent["checkout_token"].as_str(),
            h.get("checkout_token").map(String::as_str),
            "{sid}"
        );
    }
    let log = worker.log();
    assert!(
        log.contains("Redis master moved") && log.contains(&format!("127.0.0.1:{new_port}")),
        "the worker did not log the move to {new_port}: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    let (status, log) = worker.stop();
    assert!(status.success(), "worker exit: {status:?}: {log}");
    eprintln!("failover over TLS took {took:?}");
}

/// A worker that does not trust the CA of the sentinels' certificates admits
/// nobody, never becomes ready, and exits (as with `--redis-url`: a certificate it
/// refuses is a setting to fix, not an outage to wait out) with an error that names
/// the sentinels and the certificate; no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_does_not_trust_the_sentinels_ca_admits_nobody_and_says_why() {
    let certs = TestCerts::make("sentinel-tls-bed");
    let stranger = TestCerts::make("sentinel-tls-stranger");
    let bed = tls_bed(&certs);
    let kafka = MockKafka::start();
    let mut master = conn_to(&bed.master).await;
    enqueue(&mut master, EVENT, "x", 10, clock::now_ms() - 60_000).await;
    let mut worker =
        WorkerProcess::start(&bed, &kafka.bootstrap, &stranger.path("ca.pem"), "stranger");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = false;
    while worker.running() {
        assert!(
            Instant::now() < deadline,
            "still running after 30 s: {}",
            worker.log()
        );
        ready |= tokio::net::TcpStream::connect(worker.http).await.is_ok();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, log) = worker.stop();
    assert!(!ready, "its endpoint opened without a trusted Redis: {log}");
    assert_eq!(status.code(), Some(1), "{status:?}: {log}");
    let sentinels = bed.sentinel_urls();
    assert!(
        log.contains(&format!("redis at sentinel {sentinels} master mymaster"))
            && log.contains("certificate verify failed"),
        "the error names neither the sentinels nor the certificate: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(zcard(&mut master, &keys().queue(EVENT)).await, 10);
    assert_eq!(scard(&mut master, &keys().processing(EVENT)).await, 0);
}
