//! What the integration tests share: the library's own local servers (a private
//! redis-server, a private Redis Cluster, librdkafka's mock Kafka cluster: the kit
//! of `waitroom_worker::{redis_server, embedded_kafka, ports}`, which the demo and
//! the bench use too) behind thin wrappers that fail the test with a clear message,
//! a consumer of what the worker published, and helpers that write the queue
//! exactly as the API would.
//!
//! Every test starts its own redis-server on a free loopback port and stops it; it
//! never touches a Redis it did not start.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use redis::aio::MultiplexedConnection;
use waitroom_worker::embedded_kafka::EmbeddedKafka;
use waitroom_worker::redis_server::{PrivateCluster, PrivateRedis, RedisOptions, ServerTls};
use waitroom_worker::shutdown::{self, ShutdownTrigger};
use waitroom_worker::{Config, ConfigBuilder, KeyLayout, Keys, Stats, Worker};

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";
pub const TOPIC: &str = "QUEUE_READY";
pub const COMPLETED: &str = "CHECKOUT_COMPLETED";

/// A free TCP port on loopback, below the ephemeral range, that no other server of
/// this test binary gets (see `waitroom_worker::ports`).
pub fn free_port() -> u16 {
    waitroom_worker::ports::free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// Poll `check` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A redis-server of the test's own, on a free loopback port, in a temp dir.
pub struct RedisServer {
    pub port: u16,
    inner: PrivateRedis,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With `appendonly`, data survives a restart.
    pub fn start_with(appendonly: bool) -> Self {
        Self::start_options(RedisOptions {
            appendonly,
            ..RedisOptions::default()
        })
    }

    /// With `requirepass`: clients must authenticate.
    pub fn start_with_password(password: &str) -> Self {
        Self::start_options(RedisOptions {
            password: Some(password.to_owned()),
            ..RedisOptions::default()
        })
    }

    fn start_options(options: RedisOptions) -> Self {
        let inner = PrivateRedis::start_with(options).unwrap_or_else(|e| {
            panic!("the test's redis-server did not start (the test command installs it): {e}")
        });
        RedisServer {
            port: inner.port,
            inner,
        }
    }

    pub fn url(&self) -> String {
        self.inner.url()
    }

    pub async fn conn(&self) -> MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }

    /// SIGKILL; it keeps its port and directory for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        self.inner.stop();
    }

    /// SIGKILL if it runs, then start again on the same port and directory.
    pub fn restart(&mut self) {
        let port = self.port;
        self.inner
            .restart()
            .unwrap_or_else(|e| panic!("the test's redis-server on {port} did not restart: {e}"));
    }

    /// Stop with SIGTERM (Redis flushes its AOF and exits cleanly), then start
    /// again on the same port and directory.
    pub fn restart_graceful(&mut self) {
        let port = self.port;
        self.inner.restart_graceful().unwrap_or_else(|e| {
            panic!("the test's redis-server on {port} did not restart after SIGTERM: {e}")
        });
    }
}

/// librdkafka's mock cluster (the library's embedded Kafka): one broker with the
/// QUEUE_READY topic (one partition, so order is total) and CHECKOUT_COMPLETED (two).
pub struct MockKafka {
    pub bootstrap: String,
    inner: EmbeddedKafka,
}

impl MockKafka {
    pub fn start() -> Self {
        let inner = EmbeddedKafka::start(&[(TOPIC, 1), (COMPLETED, 2)])
            .unwrap_or_else(|e| panic!("the mock Kafka cluster did not start: {e}"));
        MockKafka {
            bootstrap: inner.bootstrap.clone(),
            inner,
        }
    }

    /// Every broker down: connections closed, new ones refused.
    pub fn brokers_down(&self) {
        self.inner
            .brokers_down()
            .unwrap_or_else(|e| panic!("mock brokers down: {e}"));
    }

    /// Every broker back up.
    pub fn brokers_up(&self) {
        self.inner
            .brokers_up()
            .unwrap_or_else(|e| panic!("mock brokers up: {e}"));
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.inner
            .create_topic(topic, partitions)
            .unwrap_or_else(|e| panic!("mock topic {topic}: {e}"));
    }
}

/// One QUEUE_READY message as read back.
#[derive(Debug, Clone)]
pub struct Published {
    pub key: String,
    pub value: serde_json::Value,
    pub message_id: String,
    /// The message's Kafka timestamp (set by the producer when it produced it), ms.
    pub produced_ms: i64,
}

/// A consumer assigned partition 0 of `topic` from its first message (no group
/// join, so no rebalance wait).
fn from_the_start(bootstrap: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition offset");
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// Reads a topic from the beginning.
pub struct TopicReader {
    consumer: BaseConsumer,
    pub messages: Vec<Published>,
    /// The last error the consumer reported, for a timeout's message.
    last_error: Option<String>,
}

impl TopicReader {
    pub fn new(bootstrap: &str, topic: &str) -> Self {
        let consumer = from_the_start(bootstrap, topic);
        TopicReader {
            consumer,
            messages: Vec::new(),
            last_error: None,
        }
    }

    /// Read until `n` messages in all were seen, or fail after `timeout`.
    pub fn read_until(&mut self, n: usize, timeout: Duration) -> &[Published] {
        let deadline = Instant::now() + timeout;
        while self.messages.len() < n {
            assert!(
                Instant::now() < deadline,
                "timed out: {} of {n} messages after {timeout:?} (last consumer error: {:?})",
                self.messages.len(),
                self.last_error
            );
            self.poll_once(Duration::from_millis(100));
        }
        &self.messages
    }

    /// Read whatever arrives within `d`.
    pub fn read_for(&mut self, d: Duration) -> &[Published] {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            self.poll_once(Duration::from_millis(50));
        }
        &self.messages
    }

    fn poll_once(&mut self, d: Duration) {
        let m = match self.consumer.poll(d) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                self.last_error = Some(e.to_string());
                return;
            }
            None => return,
        };
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON payload");
        let message_id = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "message-id"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let produced_ms = m.timestamp().to_millis().unwrap_or(0);
        self.messages.push(Published {
            key,
            value,
            message_id,
            produced_ms,
        });
    }

    /// Messages per session id.
    pub fn by_session(&self) -> HashMap<String, Vec<Published>> {
        let mut m: HashMap<String, Vec<Published>> = HashMap::new();
        for p in &self.messages {
            m.entry(p.key.clone()).or_default().push(p.clone());
        }
        m
    }
}

/// What a worker starts from: settings already built, or a builder (built here,
/// and it must be valid).
pub trait IntoConfig {
    fn into_config(self) -> Config;
}

impl IntoConfig for Config {
    fn into_config(self) -> Config {
        self
    }
}

impl IntoConfig for ConfigBuilder {
    fn into_config(self) -> Config {
        self.build().expect("settings valid")
    }
}

/// A worker started from `settings` (scripts loaded, Kafka clients made), not yet
/// running: a test drives its cycles or hands it to [`run_worker`].
pub async fn start_worker(settings: impl IntoConfig) -> Worker {
    let (_t, mut l) = shutdown::channel();
    Worker::start(settings.into_config(), &mut l)
        .await
        .expect("worker starts")
        .expect("not shut down")
}

/// A worker running its loop in a task until [`Running::stop`].
pub struct Running {
    pub stats: Arc<Stats>,
    /// Where its HTTP endpoint listens, when on.
    pub http: Option<std::net::SocketAddr>,
    trigger: ShutdownTrigger,
    handle: tokio::task::JoinHandle<()>,
}

pub async fn run_worker(settings: impl IntoConfig) -> Running {
    let w = start_worker(settings).await;
    let (stats, http) = (w.stats(), w.http_addr());
    let (trigger, listener) = shutdown::channel();
    let handle = tokio::spawn(w.run(listener));
    Running {
        stats,
        http,
        trigger,
        handle,
    }
}

impl Running {
    /// The loop dies where it is, as in a crash: no goodbye, so its heartbeat and
    /// its owner entry stay until they run out. (Its completion consumer and HTTP
    /// tasks, spawned apart, go on until the test ends.)
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }

    /// Graceful shutdown, awaited.
    pub async fn stop(self) {
        self.trigger.trigger();
        self.handle.await.expect("worker task");
    }
}

/// Settings as `waitroom-worker run` builds them by default, with test defaults
/// on top (fast interval, short publish timeout and lease, HTTP on a free port);
/// a test sets what it needs on the builder, which replaces these.
pub fn settings(redis_url: &str, brokers: &str) -> ConfigBuilder {
    Config::builder()
        .redis_url(redis_url)
        .kafka_brokers(brokers)
        .jwt_secret(SECRET)
        .process_interval(Duration::from_millis(20))
        .publish_timeout(Duration::from_secs(1))
        .outbox_lease(Duration::from_secs(2))
        .retry_delay(Duration::from_millis(50))
        .retry_max_delay(Duration::from_millis(500))
        .shutdown_timeout(Duration::from_secs(5))
        .http_addr(Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))))
}

/// What the admit script is called with in the Lua-level tests: `capacity` and
/// `batch` by default, a minute's checkout window, an hour's TTL and backpressure
/// bound, everything of issues 12 and 13 off. A test changes what it needs.
pub fn admit_args(capacity: u64, batch: u64) -> waitroom_worker::scripts::admit::AdmitArgs {
    waitroom_worker::scripts::admit::AdmitArgs {
        default_max_concurrent: capacity,
        default_batch_size: batch,
        checkout_window: Duration::from_secs(60),
        session_ttl: Duration::from_secs(3600),
        outbox_lease: Duration::from_secs(60),
        max_unpublished_age: Duration::from_secs(3600),
        process_interval: Duration::from_secs(1),
        claim_window: Duration::ZERO,
        waiter_idle_timeout: Duration::ZERO,
        adaptive: false,
        min_concurrent_percent: 10,
    }
}

pub fn keys() -> Keys {
    Keys::new("waitroom", KeyLayout::Default)
}

/// Queue `n` sessions for `event` exactly as the API would: a hash with status
/// `queued`, user, event and position, and a queue member scored by join time.
/// Session ids are `<prefix>-<i>`, joined at `t0 + i` ms.
pub async fn enqueue(
    conn: &mut MultiplexedConnection,
    event: &str,
    prefix: &str,
    n: usize,
    t0: u64,
) -> Vec<String> {
    let k = keys();
    let mut ids = Vec::with_capacity(n);
    let mut p = redis::pipe();
    for i in 0..n {
        let sid = format!("{prefix}-{i:06}");
        p.cmd("HSET")
            .arg(k.session(event, &sid))
            .arg("status")
            .arg("queued")
            .arg("user_id")
            .arg(format!("user-{prefix}-{i}"))
            .arg("event_id")
            .arg(event)
            .arg("position")
            .arg(i + 1)
            .ignore();
        p.cmd("ZADD")
            .arg(k.queue(event))
            .arg(t0 + i as u64)
            .arg(&sid)
            .ignore();
        ids.push(sid);
    }
    p.query_async::<()>(conn).await.expect("enqueue");
    ids
}

/// Move `sids` of `event` from the queue to the priority lane, joined at `t0`.
pub async fn to_priority(conn: &mut MultiplexedConnection, event: &str, sids: &[String], t0: u64) {
    let k = keys();
    let mut p = redis::pipe();
    for sid in sids {
        p.cmd("ZREM").arg(k.queue(event)).arg(sid).ignore();
        p.cmd("ZADD")
            .arg(k.priority(event))
            .arg(t0)
            .arg(sid)
            .ignore();
    }
    p.query_async::<()>(conn).await.expect("priority lane");
}

pub async fn scard(conn: &mut MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("SCARD")
        .arg(key)
        .query_async(conn)
        .await
        .expect("SCARD")
}

pub async fn zcard(conn: &mut MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(conn)
        .await
        .expect("ZCARD")
}

pub async fn hgetall(conn: &mut MultiplexedConnection, key: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("HGETALL")
}

/// Produces completion messages as the checkout service would.
pub struct CheckoutService {
    producer: rdkafka::producer::FutureProducer,
}

impl CheckoutService {
    pub fn new(bootstrap: &str) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "0")
            // Short, so a send during a broker outage fails fast and is sent again.
            .set("message.timeout.ms", "2000")
            .create()
            .expect("producer");
        CheckoutService { producer }
    }

    /// Send a raw payload and wait for the broker's acknowledgement, sending again
    /// while the brokers are away (for at most 60s).
    pub async fn send_raw(&self, key: &str, payload: &[u8]) {
        let start = Instant::now();
        loop {
            let rec = rdkafka::producer::FutureRecord::to(COMPLETED)
                .key(key)
                .payload(payload);
            match self.producer.send(rec, Duration::from_secs(2)).await {
                Ok(_) => return,
                Err((e, _)) => assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "completion not acknowledged for 60s: {e}"
                ),
            }
        }
    }

    pub async fn complete(&self, session: &str, event: Option<&str>, outcome: &str) {
        let mut v = serde_json::json!({"session_id": session, "outcome": outcome});
        if let Some(e) = event {
            v["event_id"] = serde_json::Value::from(e);
        }
        self.send_raw(session, v.to_string().as_bytes()).await;
    }
}

/// The checkout service as the sale tests play it: every session told on QUEUE_READY
/// (once, however many copies come) completes `after` later, each on its own (so
/// throughput follows the capacity), with the outcome `outcome()` gives then. The
/// topic is read in a thread of its own: librdkafka's poll blocks.
pub struct CheckoutLoop {
    stop: Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<Vec<Published>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CheckoutLoop {
    pub fn start(
        bootstrap: &str,
        event: &str,
        after: Duration,
        outcome: impl Fn() -> &'static str + Send + Sync + 'static,
    ) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let reader = {
            let (bootstrap, stop) = (bootstrap.to_owned(), stop.clone());
            std::thread::spawn(move || {
                let mut reader = TopicReader::new(&bootstrap, TOPIC);
                let mut done = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let seen = reader.read_for(Duration::from_millis(50));
                    for m in &seen[done..] {
                        let _ = tx.send(m.key.clone());
                    }
                    done = seen.len();
                }
                reader.messages
            })
        };
        let (bootstrap, event, outcome) =
            (bootstrap.to_owned(), event.to_owned(), Arc::new(outcome));
        let task = tokio::spawn(async move {
            let service = Arc::new(CheckoutService::new(&bootstrap));
            let mut seen = std::collections::HashSet::new();
            while let Some(sid) = rx.recv().await {
                if !seen.insert(sid.clone()) {
                    continue;
                }
                let (service, event, outcome) = (service.clone(), event.clone(), outcome.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    service.complete(&sid, Some(&event), outcome()).await;
                });
            }
        });
        CheckoutLoop {
            stop,
            reader: Some(reader),
            task,
        }
    }

    /// Stop reading and completing; every QUEUE_READY read.
    pub fn stop(mut self) -> Vec<Published> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let messages = self
            .reader
            .take()
            .map(|r| r.join().expect("the QUEUE_READY reader"))
            .unwrap_or_default();
        self.task.abort();
        messages
    }
}

pub async fn smembers(conn: &mut MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("SMEMBERS")
        .arg(key)
        .query_async(conn)
        .await
        .expect("SMEMBERS")
}

/// Counts the messages of a topic (payloads of any shape).
pub struct TopicReaderRaw {
    consumer: BaseConsumer,
}

impl TopicReaderRaw {
    pub fn new(bootstrap: &str, topic: &str) -> Self {
        let consumer = from_the_start(bootstrap, topic);
        TopicReaderRaw { consumer }
    }

    /// Count messages until `n` were seen or `timeout` passed; returns the count.
    pub fn count_until(&mut self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        while seen < n && Instant::now() < deadline {
            if let Some(Ok(_)) = self.consumer.poll(Duration::from_millis(100)) {
                seen += 1;
            }
        }
        seen
    }
}

/// A plain HTTP/1.0 GET on loopback: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read response");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The lib's private three-master cluster (see `redis_server::PrivateCluster`),
/// with the per-node helpers the tests use.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    inner: PrivateCluster,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With `durable`, every master keeps an AOF fsynced on each write.
    pub fn start_with(durable: bool) -> Self {
        let inner = PrivateCluster::start(durable).expect("a private Redis Cluster starts");
        RedisCluster {
            ports: inner.ports.clone(),
            inner,
        }
    }

    /// SIGKILL master `i`.
    pub fn kill(&mut self, i: usize) {
        self.inner.kill(i);
    }

    /// Start master `i` again; it rejoins with its slots.
    pub fn restart(&mut self, i: usize) {
        self.inner.restart(i).expect("the master comes back");
    }

    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.ports[i])
    }

    /// A plain connection to node `i` (for per-node checks).
    pub async fn node(&self, i: usize) -> MultiplexedConnection {
        redis::Client::open(self.url(i))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a cluster node")
    }

    /// Index of the node that owns `key`'s hash slot (from CLUSTER SLOTS).
    pub async fn owner(&self, key: &str) -> usize {
        let mut c = self.node(0).await;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut c)
            .await
            .expect("CLUSTER KEYSLOT");
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c)
            .await
            .expect("CLUSTER SLOTS");
        for r in ranges {
            let redis::Value::Array(parts) = r else {
                continue;
            };
            if let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi))) =
                (parts.first(), parts.get(1))
                && (*lo..=*hi).contains(&slot)
                && let Some(redis::Value::Array(master)) = parts.get(2)
                && let Some(redis::Value::Int(port)) = master.get(1)
                && let Some(i) = self.ports.iter().position(|p| i64::from(*p) == *port)
            {
                return i;
            }
        }
        panic!("no node of ours owns the slot of {key}");
    }
}

/// Certificates for a TLS test, made with the `openssl` command in a temp dir: a CA,
/// a server certificate for 127.0.0.1 signed by it, and a client certificate.
pub struct TestCerts {
    pub dir: PathBuf,
}

impl TestCerts {
    pub fn make(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("waitroom-test-certs-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("openssl must be installed (the test command installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        run(&[
            &[
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=waitroom test CA",
            ][..],
            &ec[..],
            &["-keyout", "ca.key", "-out", "ca.pem"][..],
        ]
        .concat());
        for (who, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.join(format!("{who}.ext")), ext).expect("write ext");
            run(&[
                &["req", "-nodes", "-subj", &format!("/CN={who}")][..],
                &ec[..],
                &[
                    "-keyout",
                    &format!("{who}.key"),
                    "-out",
                    &format!("{who}.csr"),
                ][..],
            ]
            .concat());
            run(&[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                &format!("{who}.ext"),
                "-out",
                &format!("{who}.pem"),
            ]);
        }
        TestCerts { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir
            .join(file)
            .to_str()
            .expect("utf-8 temp dir")
            .to_owned()
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server that speaks TLS on `tls_port` (clients must show a certificate
/// signed by the test CA) and plain text on `port`, for the test's own writes.
pub struct TlsRedis {
    pub port: u16,
    pub tls_port: u16,
    inner: PrivateRedis,
}

impl TlsRedis {
    pub fn start(certs: &TestCerts) -> Self {
        let tls = ServerTls::in_dir(&certs.dir);
        let inner = PrivateRedis::start_with(RedisOptions {
            tls: Some(tls),
            ..RedisOptions::default()
        })
        .unwrap_or_else(|e| panic!("the TLS redis-server did not start: {e}"));
        TlsRedis {
            port: inner.port,
            tls_port: inner.tls_port.expect("a TLS port"),
            inner,
        }
    }

    pub fn plain_url(&self) -> String {
        self.inner.url()
    }

    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    pub async fn conn(&self) -> MultiplexedConnection {
        redis::Client::open(self.plain_url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }
}

/// Have `conn`'s Redis log every command in its slow log (up to 100,000), from an
/// empty log: [`script_runs`] then reads what ran.
pub async fn log_every_command(conn: &mut MultiplexedConnection) {
    for (name, value) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "100000"),
    ] {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async::<()>(conn)
            .await
            .expect("CONFIG SET");
    }
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async::<()>(conn)
        .await
        .expect("SLOWLOG RESET");
}

/// The arguments (keys, then ARGV) of every `EVALSHA` of the script `sha` in the
/// slow log of `conn`'s Redis (see [`log_every_command`]).
pub async fn script_runs(conn: &mut MultiplexedConnection, sha: &str) -> Vec<Vec<String>> {
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(conn)
        .await
        .expect("SLOWLOG GET");
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    log.iter()
        .filter_map(|entry| {
            let redis::Value::Array(fields) = entry else {
                return None;
            };
            let Some(redis::Value::Array(args)) = fields.get(3) else {
                return None;
            };
            let args: Vec<String> = args.iter().map(text).collect();
            (args.len() > 2 && args[0].eq_ignore_ascii_case("evalsha") && args[1] == sha)
                .then(|| args[3..].to_vec())
        })
        .collect()
}
