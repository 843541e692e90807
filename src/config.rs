//! Command-line flags, their environment variables, and the checked settings.
//!
//! Every setting is a flag and an environment variable; durations read as humantime
//! (`1s`, `250ms`, `2h`). Parsing (clap) catches malformed values; [`RunArgs::settings`]
//! then checks what only makes sense together and names the setting it refuses.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use jsonwebtoken::Algorithm;
use thiserror::Error;

use crate::model::keys::{KeyLayout, Keys};
use crate::model::token::{Signer, TokenError};
use crate::redis::store::{Endpoint, TlsFiles};

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 250ms, 1s, 15m, 2h)"))
}

/// librdkafka settings from `--kafka-config` and `--kafka-config-file`, in order. Its
/// `Debug` masks the values of keys that name a secret (`sasl.password`,
/// `ssl.key.password`, `*.secret`, `ssl.key.pem`, ...), so settings can be logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaConfig(pub Vec<(String, String)>);

impl KafkaConfig {
    fn is_secret(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        ["password", "secret", "key", "token", "jaas"]
            .iter()
            .any(|w| k.contains(w))
    }
}

impl std::ops::Deref for KafkaConfig {
    type Target = [(String, String)];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if Self::is_secret(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err("expected key=value".to_owned()),
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "waitroom-worker",
    version,
    about = "Admits users from a ticketing waiting room into checkout"
)]
pub struct Cli {
    /// How log lines are written on stderr, for every subcommand: `text` for people
    /// (coloured only when stderr is a terminal and NO_COLOR is unset) or `json`, one
    /// object per line (timestamp, level, target, message, fields) for log shippers.
    #[arg(
        long,
        global = true,
        env = "QUEUE_LOG_FORMAT",
        value_name = "text|json",
        default_value = "text",
        value_parser = log_format
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The binary's log format (`--log-format`); the library never reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `text` or `json`; empty (`QUEUE_LOG_FORMAT=`) means unset, so the default.
fn log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim() {
        "" | "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?} is not a log format (text or json)")),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the admission worker until SIGTERM or SIGINT.
    Run(Box<RunArgs>),
    /// Queue N users for an event exactly as the API would (a load generator).
    Enqueue(EnqueueArgs),
    /// One screen per event: queue, oldest wait, slots, paused, outbox, admissions, live workers.
    Status(StatusArgs),
    /// Where one session stands: its hash, queue position, slot, deadline, outbox.
    Inspect(InspectArgs),
    /// Measure throughput, Redis CPU, refill latency, scaling and memory (BENCHMARKS.md).
    Bench(crate::tools::bench::BenchArgs),
    /// A flash sale on this machine: private redis-server, embedded Kafka, simulated checkout.
    Demo(crate::tools::demo::DemoArgs),
    /// Probe a worker's /healthz (for a container HEALTHCHECK): exit 0 on 2xx, else 1.
    Health(HealthArgs),
}

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The endpoint to GET: http://host:port/path only (no https).
    #[arg(
        long,
        env = "QUEUE_HEALTH_URL",
        default_value = "http://127.0.0.1:9090/healthz"
    )]
    pub url: String,
    /// How long the whole probe (connect, ask, read) may take.
    #[arg(long, env = "QUEUE_HEALTH_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Only these events (repeatable; default: every member of `<prefix>:active_events`).
    #[arg(long = "event", value_name = "ID")]
    pub events: Vec<String>,
    /// Capacity shown for events without a `max_concurrent` override.
    #[arg(long, env = "QUEUE_DEFAULT_MAX_CONCURRENT", default_value_t = 100)]
    pub max_concurrent: u64,
    /// Accepted for compatibility, unused: each heartbeat carries its own period and
    /// expiry, so liveness needs no interval here.
    #[arg(long, env = "QUEUE_PROCESS_INTERVAL", default_value = "1s", value_parser = duration)]
    pub process_interval: Duration,
    /// The workers' max unpublished age: an event whose oldest unpublished admission
    /// is older shows as held (publishing stalled).
    #[arg(long, env = "QUEUE_MAX_UNPUBLISHED_AGE", default_value = "30s", value_parser = duration)]
    pub max_unpublished_age: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The session id.
    pub session: String,
    /// The event (needed with the cluster layout; else read from the session hash).
    #[arg(long)]
    pub event: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print the whole checkout token (a live credential); by default only its
    /// first characters are shown, in text and JSON alike.
    #[arg(long)]
    pub show_token: bool,
}

#[derive(Debug, Clone, Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The event to queue users for (also added to `<prefix>:active_events`).
    #[arg(long)]
    pub event: String,
    /// How many users.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// TTL of the session hashes.
    #[arg(long, env = "QUEUE_SESSION_TTL", default_value = "2h", value_parser = duration)]
    pub session_ttl: Duration,
}

/// Where Redis is and how its keys are named; shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL (redis:// or rediss://; a password in it is never logged).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Redis Cluster seed nodes, comma-separated URLs; takes precedence over
    /// --redis-url, and implies --key-layout cluster.
    #[arg(long, env = "REDIS_CLUSTER_URLS")]
    pub redis_cluster: Option<String>,
    /// PEM CA certificate(s) that sign the server's certificate, for rediss://
    /// (default: the system's trust store).
    #[arg(long, env = "REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a server that checks clients (with --redis-tls-key).
    #[arg(long, env = "REDIS_TLS_CERT")]
    pub redis_tls_cert: Option<PathBuf>,
    /// PEM PKCS#8 private key of --redis-tls-cert.
    #[arg(long, env = "REDIS_TLS_KEY")]
    pub redis_tls_key: Option<PathBuf>,
    /// Prefix of every key.
    #[arg(long, env = "QUEUE_KEY_PREFIX", default_value = "waitroom")]
    pub key_prefix: String,
    /// Key layout: `default`, or `cluster` (every key of an event in one hash slot).
    /// Default: `cluster` with --redis-cluster, `default` otherwise.
    #[arg(long, env = "QUEUE_KEY_LAYOUT")]
    pub key_layout: Option<KeyLayout>,
    /// How long a Redis command may take before it counts as failed.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub redis_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub redis: RedisArgs,

    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Extra librdkafka setting, repeatable (e.g. security.protocol=SASL_SSL); wins
    /// over the same key in --kafka-config-file.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE", value_parser = key_value)]
    pub kafka_config: Vec<(String, String)>,
    /// File of librdkafka settings, one KEY=VALUE per line (`#` comments), for the
    /// ones that are secrets (sasl.password): not on the command line, where `ps`
    /// shows them.
    #[arg(long, env = "KAFKA_CONFIG_FILE")]
    pub kafka_config_file: Option<PathBuf>,
    /// Topic of the admission messages.
    #[arg(long, env = "QUEUE_READY_TOPIC", default_value = "QUEUE_READY")]
    pub ready_topic: String,
    /// How long Kafka may take to acknowledge a message before it is retried (message.timeout.ms).
    #[arg(long, env = "QUEUE_PUBLISH_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub publish_timeout: Duration,

    /// Topic of the checkout service's completion messages.
    #[arg(
        long,
        env = "QUEUE_COMPLETED_TOPIC",
        default_value = "CHECKOUT_COMPLETED"
    )]
    pub completed_topic: String,
    /// Consumer group of the completion consumer (shared by the replicas).
    #[arg(long, env = "QUEUE_CONSUMER_GROUP", default_value = "waitroom-worker")]
    pub consumer_group: String,
    /// Where completion messages that cannot be used are forwarded (off when unset).
    #[arg(long, env = "QUEUE_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,
    /// Longest a broker may hold a fetch open (fetch.wait.max.ms); small = fast refill.
    #[arg(long, env = "QUEUE_CONSUMER_FETCH_WAIT", default_value = "10ms", value_parser = duration)]
    pub consumer_fetch_wait: Duration,
    /// How soon a dead replica's partitions move to the others (session.timeout.ms).
    #[arg(long, env = "QUEUE_CONSUMER_SESSION_TIMEOUT", default_value = "6s", value_parser = duration)]
    pub consumer_session_timeout: Duration,

    /// Address of the HTTP endpoint (/healthz, /readyz, /status, /metrics); `off` disables it.
    #[arg(long, env = "QUEUE_HTTP_ADDR", default_value = "127.0.0.1:9090")]
    pub http_addr: String,
    /// This worker's id in heartbeats (default `<host>-<pid>`).
    #[arg(long, env = "QUEUE_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Event to serve, repeatable; `<prefix>:active_events` is read every cycle as well.
    #[arg(long = "event", value_name = "ID")]
    pub events: Vec<String>,
    /// Time between admission cycles.
    #[arg(long, env = "QUEUE_PROCESS_INTERVAL", default_value = "1s", value_parser = duration)]
    pub process_interval: Duration,
    /// Users in checkout per event, unless the event's config hash says otherwise.
    #[arg(long, env = "QUEUE_DEFAULT_MAX_CONCURRENT", default_value_t = 100)]
    pub max_concurrent: u64,
    /// Users admitted per cycle per event, unless the event's config hash says otherwise.
    #[arg(long, env = "QUEUE_DEFAULT_RELEASE_RATE", default_value_t = 10)]
    pub batch_size: u64,
    /// TTL given to a session hash on every state change.
    #[arg(long, env = "QUEUE_SESSION_TTL", default_value = "2h", value_parser = duration)]
    pub session_ttl: Duration,
    /// How long an admitted user holds the slot; the token expires at the same instant.
    #[arg(long, env = "QUEUE_CHECKOUT_WINDOW", default_value = "15m", value_parser = duration)]
    pub checkout_window: Duration,

    /// `iss` of the checkout tokens.
    #[arg(long, env = "QUEUE_JWT_ISSUER", default_value = "waitroom")]
    pub jwt_issuer: String,
    /// `aud` of the checkout tokens.
    #[arg(long, env = "QUEUE_JWT_AUDIENCE", default_value = "checkout")]
    pub jwt_audience: String,
    /// Signing algorithm: HS256, RS256, ES256 or EdDSA.
    #[arg(long, env = "QUEUE_JWT_ALGORITHM", default_value = "HS256")]
    pub jwt_algorithm: String,
    /// HS256 secret (at least 32 bytes). Prefer the environment or a file: a flag shows in `ps`.
    #[arg(long, env = "QUEUE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// File holding the HS256 secret (trailing newline ignored).
    #[arg(long, env = "QUEUE_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM private key for RS256, ES256 or EdDSA.
    #[arg(long, env = "QUEUE_JWT_PRIVATE_KEY_FILE")]
    pub jwt_private_key_file: Option<PathBuf>,
    /// `kid` header naming the key, for verifiers that rotate keys.
    #[arg(long, env = "QUEUE_JWT_KID")]
    pub jwt_kid: Option<String>,

    /// Tries of a failed Redis operation within a cycle.
    #[arg(long, env = "QUEUE_RETRY_ATTEMPTS", default_value_t = 3)]
    pub retry_attempts: u32,
    /// First retry delay; doubles on each retry.
    #[arg(long, env = "QUEUE_RETRY_DELAY", default_value = "1s", value_parser = duration)]
    pub retry_delay: Duration,
    /// Longest delay between two publish attempts of one outbox entry.
    #[arg(long, env = "QUEUE_RETRY_MAX_DELAY", default_value = "30s", value_parser = duration)]
    pub retry_max_delay: Duration,
    /// How long a graceful shutdown may take before the process exits anyway.
    #[arg(long, env = "QUEUE_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub shutdown_timeout: Duration,
    /// Longest one cycle may run; what is left is picked up by the next one.
    #[arg(long, env = "QUEUE_MAX_PROCESSING_TIME", default_value = "30s", value_parser = duration)]
    pub max_processing_time: Duration,
    /// How long an outbox entry stays with the worker publishing it before another
    /// replica may take it over; must exceed the publish timeout.
    #[arg(long, env = "QUEUE_OUTBOX_LEASE", default_value = "30s", value_parser = duration)]
    pub outbox_lease: Duration,
    /// Most outbox entries one event drains per cycle.
    #[arg(long, env = "QUEUE_OUTBOX_BATCH", default_value_t = 1000)]
    pub outbox_batch: u64,
    /// Backpressure: an event stops admitting while its oldest admission whose
    /// QUEUE_READY Kafka has not acknowledged is older than this, and resumes by
    /// itself once publishing catches up. Must be shorter than the checkout window.
    /// Default: 30s, or a quarter of the checkout window when that is shorter.
    #[arg(long, env = "QUEUE_MAX_UNPUBLISHED_AGE", value_parser = duration)]
    pub max_unpublished_age: Option<Duration>,
}

/// A setting that was refused, with the flag and variable that set it.
#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("{setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error("{setting}")]
    Token {
        setting: &'static str,
        #[source]
        source: TokenError,
    },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        setting,
        reason: reason.into(),
    }
}

/// Upper bounds of the durations. They keep every instant the worker computes (now
/// plus a window, a lease, a TTL, a backoff) far from year 9999 and every
/// millisecond count within a u64 and within what Redis and librdkafka accept,
/// and they are far above any sane value.
pub mod bounds {
    use std::time::Duration;

    const HOUR: Duration = Duration::from_secs(3600);

    /// `--checkout-window`: a token and a slot for at most a day.
    pub const CHECKOUT_WINDOW: (Duration, &str) = (Duration::from_secs(24 * 3600), "24h");
    /// `--session-ttl`: a session hash lives at most 30 days.
    pub const SESSION_TTL: (Duration, &str) =
        (Duration::from_secs(30 * 24 * 3600), "720h (30 days)");
    /// Leases, timeouts, delays and intervals: at most an hour.
    pub const SHORT: (Duration, &str) = (HOUR, "1h");
}

/// Refuse a duration above `max`, naming the setting and the bound.
fn at_most(
    setting: &'static str,
    value: Duration,
    (max, shown): (Duration, &str),
) -> Result<(), SettingsError> {
    if value > max {
        return Err(invalid(setting, format!("must be at most {shown}")));
    }
    Ok(())
}

/// Everything `run` needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub redis: Endpoint,
    pub redis_timeout: Duration,
    pub keys: Keys,
    pub kafka_brokers: String,
    pub kafka_config: KafkaConfig,
    pub ready_topic: String,
    pub publish_timeout: Duration,
    pub completed_topic: String,
    pub consumer_group: String,
    pub dead_letter_topic: Option<String>,
    pub consumer_fetch_wait: Duration,
    pub consumer_session_timeout: Duration,
    pub http_addr: Option<std::net::SocketAddr>,
    pub worker_id: Option<String>,
    pub events: Vec<String>,
    pub process_interval: Duration,
    pub max_concurrent: u64,
    pub batch_size: u64,
    pub session_ttl: Duration,
    pub checkout_window: Duration,
    pub signer: Signer,
    pub retry_attempts: u32,
    pub retry_delay: Duration,
    pub retry_max_delay: Duration,
    pub shutdown_timeout: Duration,
    pub max_processing_time: Duration,
    pub outbox_lease: Duration,
    pub outbox_batch: u64,
    pub max_unpublished_age: Duration,
}

impl RedisArgs {
    /// The key names: prefix and layout. The URLs and TLS files are checked by
    /// [`RedisArgs::endpoint`], which every connection goes through.
    pub fn keys(&self) -> Result<Keys, SettingsError> {
        let p = self.key_prefix.trim();
        if p.is_empty() || p.contains(['{', '}', ' ']) {
            return Err(invalid(
                "--key-prefix (QUEUE_KEY_PREFIX)",
                "must be non-empty, without spaces or braces",
            ));
        }
        if self.redis_timeout.is_zero() {
            return Err(invalid(
                "--redis-timeout (REDIS_TIMEOUT)",
                "must be above zero",
            ));
        }
        at_most(
            "--redis-timeout (REDIS_TIMEOUT)",
            self.redis_timeout,
            bounds::SHORT,
        )?;
        let layout = match (self.key_layout, self.redis_cluster.is_some()) {
            (None, true) | (Some(KeyLayout::Cluster), _) => KeyLayout::Cluster,
            (Some(KeyLayout::Default), true) => {
                return Err(invalid(
                    "--key-layout (QUEUE_KEY_LAYOUT)",
                    "must be cluster with --redis-cluster: a script may only touch keys of \
                     one hash slot, and the default layout spreads an event over many",
                ));
            }
            (None | Some(KeyLayout::Default), false) => KeyLayout::Default,
        };
        Ok(Keys::new(p, layout))
    }

    /// Where Redis is: the cluster's seed nodes when given, else the one URL.
    pub fn endpoint(&self) -> Result<Endpoint, SettingsError> {
        fn check(flag: &'static str, url: &str, unix_ok: bool) -> Result<(), SettingsError> {
            let ok = url.starts_with("redis://")
                || url.starts_with("rediss://")
                || (unix_ok && url.starts_with("unix://"));
            if ok {
                Ok(())
            } else if unix_ok {
                Err(invalid(
                    flag,
                    "must start with redis://, rediss:// or unix://",
                ))
            } else {
                Err(invalid(
                    flag,
                    "every URL must start with redis:// or rediss://",
                ))
            }
        }
        let tls_given = self.redis_tls_ca.is_some()
            || self.redis_tls_cert.is_some()
            || self.redis_tls_key.is_some();
        match &self.redis_cluster {
            Some(_) if tls_given => Err(invalid(
                "--redis-tls-ca/--redis-tls-cert/--redis-tls-key",
                "apply to --redis-url only; for a cluster over rediss:// put the CA in the \
                 system trust store or point SSL_CERT_FILE at it",
            )),
            Some(list) => {
                let flag = "--redis-cluster (REDIS_CLUSTER_URLS)";
                let urls: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect();
                if urls.is_empty() {
                    return Err(invalid(flag, "must name at least one node URL"));
                }
                for u in &urls {
                    check(flag, u, false)?;
                }
                Ok(Endpoint::Cluster(urls))
            }
            None => {
                check("--redis-url (REDIS_URL)", &self.redis_url, true)?;
                if tls_given && !self.redis_url.starts_with("rediss://") {
                    return Err(invalid(
                        "--redis-tls-ca/--redis-tls-cert/--redis-tls-key",
                        "need a rediss:// --redis-url (REDIS_URL)",
                    ));
                }
                let read = |flag: &'static str, path: &PathBuf| {
                    std::fs::read(path)
                        .map_err(|e| invalid(flag, format!("cannot read {}: {e}", path.display())))
                };
                let ca = match &self.redis_tls_ca {
                    Some(p) => Some(read("--redis-tls-ca (REDIS_TLS_CA)", p)?),
                    None => None,
                };
                let client = match (&self.redis_tls_cert, &self.redis_tls_key) {
                    (Some(c), Some(k)) => Some((
                        read("--redis-tls-cert (REDIS_TLS_CERT)", c)?,
                        read("--redis-tls-key (REDIS_TLS_KEY)", k)?,
                    )),
                    (None, None) => None,
                    _ => {
                        return Err(invalid(
                            "--redis-tls-cert/--redis-tls-key",
                            "go together: give both or neither",
                        ));
                    }
                };
                Ok(Endpoint::Single {
                    url: self.redis_url.clone(),
                    tls: TlsFiles { ca, client },
                })
            }
        }
    }
}

/// `--process-interval`, for `run` and for `status` (which derives the heartbeat
/// TTL from it).
fn check_process_interval(d: Duration) -> Result<(), SettingsError> {
    at_most(
        "--process-interval (QUEUE_PROCESS_INTERVAL)",
        d,
        bounds::SHORT,
    )
}

/// `--session-ttl`, for `run` and `enqueue`.
fn check_session_ttl(d: Duration) -> Result<(), SettingsError> {
    at_most("--session-ttl (QUEUE_SESSION_TTL)", d, bounds::SESSION_TTL)
}

impl StatusArgs {
    /// Check the flags; the key names (with the Redis settings checked).
    pub fn keys(&self) -> Result<Keys, SettingsError> {
        check_process_interval(self.process_interval)?;
        self.redis.keys()
    }
}

impl EnqueueArgs {
    /// Check the flags; the key names (with the Redis settings checked).
    pub fn keys(&self) -> Result<Keys, SettingsError> {
        check_session_ttl(self.session_ttl)?;
        if self.event.is_empty() || self.event.contains(['{', '}']) {
            return Err(invalid("--event", "must be non-empty, without braces"));
        }
        self.redis.keys()
    }
}

impl RunArgs {
    /// The settings of --kafka-config-file, then those of --kafka-config.
    fn kafka_config(&self) -> Result<KafkaConfig, SettingsError> {
        let mut pairs = Vec::new();
        if let Some(path) = &self.kafka_config_file {
            let flag = "--kafka-config-file (KAFKA_CONFIG_FILE)";
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(flag, format!("cannot read {}: {e}", path.display())))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                // The line itself may hold a secret: only its number is reported.
                let pair = key_value(line)
                    .map_err(|_| invalid(flag, format!("line {} is not KEY=VALUE", n + 1)))?;
                pairs.push((pair.0, pair.1.trim_start().to_owned()));
            }
        }
        pairs.extend(self.kafka_config.iter().cloned());
        Ok(KafkaConfig(pairs))
    }

    /// Check the flags together and build the signer.
    pub fn settings(&self) -> Result<Settings, SettingsError> {
        let keys = self.redis.keys()?;
        if self.kafka_brokers.trim().is_empty() {
            return Err(invalid(
                "--kafka-brokers (KAFKA_BROKERS)",
                "must name at least one broker",
            ));
        }
        if self.ready_topic.trim().is_empty() {
            return Err(invalid(
                "--ready-topic (QUEUE_READY_TOPIC)",
                "must not be empty",
            ));
        }
        if self.completed_topic.trim().is_empty() {
            return Err(invalid(
                "--completed-topic (QUEUE_COMPLETED_TOPIC)",
                "must not be empty",
            ));
        }
        if self.consumer_group.trim().is_empty() {
            return Err(invalid(
                "--consumer-group (QUEUE_CONSUMER_GROUP)",
                "must not be empty",
            ));
        }
        if self.consumer_fetch_wait.is_zero() || self.consumer_fetch_wait > Duration::from_secs(5) {
            return Err(invalid(
                "--consumer-fetch-wait (QUEUE_CONSUMER_FETCH_WAIT)",
                "must be between 1ms and 5s",
            ));
        }
        if self.consumer_session_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "--consumer-session-timeout (QUEUE_CONSUMER_SESSION_TIMEOUT)",
                "must be at least 1s",
            ));
        }
        // librdkafka's own limit of session.timeout.ms.
        at_most(
            "--consumer-session-timeout (QUEUE_CONSUMER_SESSION_TIMEOUT)",
            self.consumer_session_timeout,
            bounds::SHORT,
        )?;
        if self.process_interval < Duration::from_millis(10) {
            return Err(invalid(
                "--process-interval (QUEUE_PROCESS_INTERVAL)",
                "must be at least 10ms",
            ));
        }
        check_process_interval(self.process_interval)?;
        if self.max_concurrent == 0 {
            return Err(invalid(
                "--max-concurrent (QUEUE_DEFAULT_MAX_CONCURRENT)",
                "must be at least 1",
            ));
        }
        let cap = crate::redis::scripts::admit::MAX_ADMIT_PER_CALL;
        if self.batch_size == 0 || self.batch_size > cap {
            return Err(invalid(
                "--batch-size (QUEUE_DEFAULT_RELEASE_RATE)",
                format!("must be between 1 and {cap}"),
            ));
        }
        if self.checkout_window < Duration::from_secs(1) {
            return Err(invalid(
                "--checkout-window (QUEUE_CHECKOUT_WINDOW)",
                "must be at least 1s",
            ));
        }
        at_most(
            "--checkout-window (QUEUE_CHECKOUT_WINDOW)",
            self.checkout_window,
            bounds::CHECKOUT_WINDOW,
        )?;
        check_session_ttl(self.session_ttl)?;
        if self.session_ttl <= self.checkout_window {
            return Err(invalid(
                "--session-ttl (QUEUE_SESSION_TTL)",
                "must be longer than the checkout window, or sessions vanish mid-checkout",
            ));
        }
        if self.retry_attempts == 0 {
            return Err(invalid(
                "--retry-attempts (QUEUE_RETRY_ATTEMPTS)",
                "must be at least 1",
            ));
        }
        if self.retry_delay.is_zero() {
            return Err(invalid(
                "--retry-delay (QUEUE_RETRY_DELAY)",
                "must be above zero",
            ));
        }
        at_most(
            "--retry-delay (QUEUE_RETRY_DELAY)",
            self.retry_delay,
            bounds::SHORT,
        )?;
        if self.retry_max_delay < self.retry_delay {
            return Err(invalid(
                "--retry-max-delay (QUEUE_RETRY_MAX_DELAY)",
                "must not be below --retry-delay",
            ));
        }
        at_most(
            "--retry-max-delay (QUEUE_RETRY_MAX_DELAY)",
            self.retry_max_delay,
            bounds::SHORT,
        )?;
        if self.shutdown_timeout.is_zero() {
            return Err(invalid(
                "--shutdown-timeout (QUEUE_SHUTDOWN_TIMEOUT)",
                "must be above zero",
            ));
        }
        at_most(
            "--shutdown-timeout (QUEUE_SHUTDOWN_TIMEOUT)",
            self.shutdown_timeout,
            bounds::SHORT,
        )?;
        if self.max_processing_time.is_zero() {
            return Err(invalid(
                "--max-processing-time (QUEUE_MAX_PROCESSING_TIME)",
                "must be above zero",
            ));
        }
        at_most(
            "--max-processing-time (QUEUE_MAX_PROCESSING_TIME)",
            self.max_processing_time,
            bounds::SHORT,
        )?;
        if self.publish_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "--publish-timeout (QUEUE_PUBLISH_TIMEOUT)",
                "must be at least 100ms",
            ));
        }
        at_most(
            "--publish-timeout (QUEUE_PUBLISH_TIMEOUT)",
            self.publish_timeout,
            bounds::SHORT,
        )?;
        at_most(
            "--outbox-lease (QUEUE_OUTBOX_LEASE)",
            self.outbox_lease,
            bounds::SHORT,
        )?;
        if self.outbox_lease <= self.publish_timeout {
            return Err(invalid(
                "--outbox-lease (QUEUE_OUTBOX_LEASE)",
                "must be longer than --publish-timeout, or a replica may publish what another still waits on",
            ));
        }
        if self.outbox_batch == 0 || self.outbox_batch > 10_000 {
            return Err(invalid(
                "--outbox-batch (QUEUE_OUTBOX_BATCH)",
                "must be between 1 and 10000",
            ));
        }
        if self.checkout_window < self.publish_timeout * 2 {
            return Err(invalid(
                "--checkout-window (QUEUE_CHECKOUT_WINDOW)",
                "must be at least twice --publish-timeout, or a QUEUE_READY could carry a token that expires before Kafka acknowledges it",
            ));
        }
        if self.redis.redis_timeout >= self.max_processing_time {
            return Err(invalid(
                "--max-processing-time (QUEUE_MAX_PROCESSING_TIME)",
                "must be longer than --redis-timeout, or a cycle is cut before one Redis call can time out",
            ));
        }
        let max_unpublished_age = self
            .max_unpublished_age
            .unwrap_or((self.checkout_window / 4).min(Duration::from_secs(30)));
        if max_unpublished_age < Duration::from_millis(100)
            || max_unpublished_age >= self.checkout_window
        {
            return Err(invalid(
                "--max-unpublished-age (QUEUE_MAX_UNPUBLISHED_AGE)",
                "must be at least 100ms and shorter than --checkout-window, or admission would go on while nobody can be told",
            ));
        }
        let http_addr = match self.http_addr.trim() {
            "" | "off" => None,
            a => Some(a.parse().map_err(|_| {
                invalid(
                    "--http-addr (QUEUE_HTTP_ADDR)",
                    format!("{a:?} is not host:port (e.g. 127.0.0.1:9090) or off"),
                )
            })?),
        };
        if let Some(id) = &self.worker_id
            && (id.is_empty() || id.contains([' ', '{', '}']))
        {
            return Err(invalid(
                "--worker-id (QUEUE_WORKER_ID)",
                "must be non-empty, without spaces or braces",
            ));
        }
        let mut events = Vec::new();
        for e in &self.events {
            if e.is_empty() || e.contains(['{', '}']) {
                return Err(invalid(
                    "--event",
                    format!("{e:?} is not a valid event id (empty or has braces)"),
                ));
            }
            if !events.contains(e) {
                events.push(e.clone());
            }
        }
        Ok(Settings {
            redis: self.redis.endpoint()?,
            redis_timeout: self.redis.redis_timeout,
            keys,
            kafka_brokers: self.kafka_brokers.clone(),
            kafka_config: self.kafka_config()?,
            ready_topic: self.ready_topic.clone(),
            publish_timeout: self.publish_timeout,
            completed_topic: self.completed_topic.clone(),
            consumer_group: self.consumer_group.clone(),
            dead_letter_topic: self.dead_letter_topic.clone().filter(|t| !t.is_empty()),
            consumer_fetch_wait: self.consumer_fetch_wait,
            consumer_session_timeout: self.consumer_session_timeout,
            http_addr,
            worker_id: self.worker_id.clone(),
            events,
            process_interval: self.process_interval,
            max_concurrent: self.max_concurrent,
            batch_size: self.batch_size,
            session_ttl: self.session_ttl,
            checkout_window: self.checkout_window,
            signer: self.signer()?,
            retry_attempts: self.retry_attempts,
            retry_delay: self.retry_delay,
            retry_max_delay: self.retry_max_delay,
            shutdown_timeout: self.shutdown_timeout,
            max_processing_time: self.max_processing_time,
            outbox_lease: self.outbox_lease,
            outbox_batch: self.outbox_batch,
            max_unpublished_age,
        })
    }

    fn signer(&self) -> Result<Signer, SettingsError> {
        let alg: Algorithm = match self.jwt_algorithm.as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            "EdDSA" => Algorithm::EdDSA,
            other => {
                return Err(invalid(
                    "--jwt-algorithm (QUEUE_JWT_ALGORITHM)",
                    format!("{other:?} is not one of HS256, RS256, ES256, EdDSA"),
                ));
            }
        };
        let iss = self.jwt_issuer.as_str();
        let aud = self.jwt_audience.as_str();
        if iss.is_empty() || aud.is_empty() {
            return Err(invalid(
                "--jwt-issuer / --jwt-audience",
                "must not be empty",
            ));
        }
        if alg != Algorithm::HS256 {
            let path = self.jwt_private_key_file.as_ref().ok_or_else(|| {
                invalid(
                    "--jwt-private-key-file (QUEUE_JWT_PRIVATE_KEY_FILE)",
                    format!("required for {}", self.jwt_algorithm),
                )
            })?;
            let pem = std::fs::read(path).map_err(|e| {
                invalid(
                    "--jwt-private-key-file (QUEUE_JWT_PRIVATE_KEY_FILE)",
                    format!("{}: {e}", path.display()),
                )
            })?;
            return Signer::asymmetric(alg, &pem, self.jwt_kid.clone(), iss, aud).map_err(
                |source| SettingsError::Token {
                    setting: "--jwt-private-key-file (QUEUE_JWT_PRIVATE_KEY_FILE)",
                    source,
                },
            );
        }
        let (setting, secret): (&'static str, Vec<u8>) =
            match (&self.jwt_secret, &self.jwt_secret_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "QUEUE_JWT_SECRET / --jwt-secret-file",
                        "set one of them, not both",
                    ));
                }
                (Some(s), None) => ("QUEUE_JWT_SECRET", s.as_bytes().to_vec()),
                (None, Some(path)) => {
                    let mut bytes = std::fs::read(path).map_err(|e| {
                        invalid(
                            "--jwt-secret-file (QUEUE_JWT_SECRET_FILE)",
                            format!("{}: {e}", path.display()),
                        )
                    })?;
                    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        bytes.pop();
                    }
                    ("--jwt-secret-file (QUEUE_JWT_SECRET_FILE)", bytes)
                }
                (None, None) => {
                    return Err(invalid(
                        "QUEUE_JWT_SECRET / --jwt-secret-file",
                        "an HS256 secret of at least 32 bytes is required",
                    ));
                }
            };
        Signer::hs256(&secret, iss, aud).map_err(|source| SettingsError::Token { setting, source })
    }
}

impl Settings {
    /// What the admit script needs from the settings.
    pub fn admit_args(&self) -> crate::redis::scripts::admit::AdmitArgs {
        crate::redis::scripts::admit::AdmitArgs {
            default_max_concurrent: self.max_concurrent,
            default_batch_size: self.batch_size,
            checkout_window: self.checkout_window,
            session_ttl: self.session_ttl,
            outbox_lease: self.outbox_lease,
            max_unpublished_age: self.max_unpublished_age,
            process_interval: self.process_interval,
        }
    }

    /// What the outbox claim needs from the settings. An admission is renewed when
    /// less than half its window (and at least the publish timeout) is left, so a
    /// QUEUE_READY always carries a token that is valid for a while after it leaves.
    pub fn claim_args(&self) -> crate::redis::scripts::claim_outbox::ClaimArgs {
        crate::redis::scripts::claim_outbox::ClaimArgs {
            lease: self.outbox_lease,
            limit: self.outbox_batch,
            checkout_window: self.checkout_window,
            // At least the publish timeout (checked: the window is at least twice it).
            renew_within: (self.checkout_window / 2).max(self.publish_timeout),
            session_ttl: self.session_ttl,
        }
    }
}

/// `redis://user:secret@host/` → `redis://user:***@host/`, and
/// `unix:///run/redis.sock?pass=secret` → `unix:///run/redis.sock?pass=***`, for logs.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = redact_userinfo(base);
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _))
                    if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                {
                    format!("{k}=***")
                }
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map(|(u, _)| u).unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let mut full = vec![
            "waitroom-worker",
            "run",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
        ];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full).map_err(|e| e.to_string())?;
        let Command::Run(run) = cli.command else {
            return Err("not run".into());
        };
        run.settings()
            .map_err(|e| crate::base::error_chain::chain(&e).to_string())
    }

    #[test]
    fn a_cluster_takes_precedence_and_brings_its_layout() {
        let s = parse(&["--redis-cluster", "redis://a:7000, redis://b:7001"]).unwrap();
        assert_eq!(
            s.redis,
            Endpoint::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()])
        );
        assert_eq!(s.keys.layout(), KeyLayout::Cluster);
        let s = parse(&[
            "--redis-cluster",
            "redis://a:7000",
            "--key-layout",
            "cluster",
        ])
        .unwrap();
        assert_eq!(s.keys.layout(), KeyLayout::Cluster);
        let s = parse(&["--key-layout", "cluster"]).unwrap();
        assert_eq!(
            s.redis,
            Endpoint::Single {
                url: "redis://127.0.0.1:6379".into(),
                tls: TlsFiles::default()
            }
        );
        assert_eq!(s.keys.layout(), KeyLayout::Cluster);
    }

    #[test]
    fn a_cluster_with_the_default_layout_or_a_bad_url_is_refused() {
        let e = parse(&[
            "--redis-cluster",
            "redis://a:7000",
            "--key-layout",
            "default",
        ])
        .unwrap_err();
        assert!(e.contains("--key-layout") && e.contains("cluster"), "{e}");
        let e = parse(&["--redis-cluster", "redis://a:7000,http://b"]).unwrap_err();
        assert!(e.contains("--redis-cluster"), "{e}");
        let e = parse(&["--redis-cluster", " , "]).unwrap_err();
        assert!(e.contains("at least one"), "{e}");
    }

    #[test]
    fn kafka_settings_come_from_a_file_then_the_flags() {
        let dir = std::env::temp_dir().join(format!("waitroom-kcf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kafka.properties");
        std::fs::write(
            &file,
            "# secrets\nsecurity.protocol=SASL_SSL\n\nsasl.password = p=w\nacks=1\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let s = parse(&["--kafka-config-file", f, "--kafka-config", "acks=all"]).unwrap();
        assert_eq!(
            s.kafka_config.0,
            vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.password".into(), "p=w".into()),
                ("acks".into(), "1".into()),
                ("acks".into(), "all".into()),
            ]
        );
        std::fs::write(&file, "sasl.password-without-equals-hunter2\n").unwrap();
        let e = parse(&["--kafka-config-file", f]).unwrap_err();
        assert!(e.contains("line 1") && !e.contains("hunter2"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What `run` would log if it logged its settings: no secret in it.
    #[test]
    fn settings_debug_shows_no_secret() {
        let s = parse(&[
            "--redis-url",
            "redis://:redis-pw-123@h:6379/0?password=redis-pw-456",
            "--kafka-config",
            "sasl.password=kafka-pw-789",
            "--kafka-config",
            "ssl.key.password=key-pw-012",
            "--kafka-config",
            "security.protocol=SASL_SSL",
        ])
        .unwrap();
        let shown = format!("{s:?}");
        for secret in [
            "redis-pw-123",
            "redis-pw-456",
            "kafka-pw-789",
            "key-pw-012",
            "0123456789abcdef0123456789abcdef",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("SASL_SSL") && shown.contains("sasl.password"),
            "{shown}"
        );
    }

    /// A file that exists wherever the tests run.
    const ANY_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

    #[test]
    fn tls_files_need_rediss_come_in_pairs_and_must_be_readable() {
        let e = parse(&["--redis-tls-ca", ANY_FILE]).unwrap_err();
        assert!(e.contains("rediss://"), "{e}");
        let tls = ["--redis-url", "rediss://h:6380"];
        let e = parse(&[&tls[..], &["--redis-tls-cert", ANY_FILE]].concat()).unwrap_err();
        assert!(e.contains("both or neither"), "{e}");
        let e =
            parse(&[&tls[..], &["--redis-tls-ca", "/nonexistent/ca.pem"]].concat()).unwrap_err();
        assert!(e.contains("cannot read /nonexistent/ca.pem"), "{e}");
        let e = parse(&[
            "--redis-cluster",
            "rediss://a:7000",
            "--redis-tls-ca",
            ANY_FILE,
        ])
        .unwrap_err();
        assert!(e.contains("SSL_CERT_FILE"), "{e}");
        let s = parse(&[&tls[..], &["--redis-tls-ca", ANY_FILE]].concat()).unwrap();
        assert!(matches!(&s.redis, Endpoint::Single { tls, .. } if tls.ca.is_some()));
    }

    #[test]
    fn defaults_are_the_seeds() {
        let s = parse(&[]).expect("defaults are valid");
        assert_eq!(s.process_interval, Duration::from_secs(1));
        assert_eq!(s.max_concurrent, 100);
        assert_eq!(s.batch_size, 10);
        assert_eq!(s.session_ttl, Duration::from_secs(7200));
        assert_eq!(s.checkout_window, Duration::from_secs(900));
        assert_eq!(s.retry_attempts, 3);
        assert_eq!(s.retry_delay, Duration::from_secs(1));
        assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(s.max_processing_time, Duration::from_secs(30));
        assert_eq!(s.ready_topic, "QUEUE_READY");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: &[(&[&str], &str)] = &[
            (&["--process-interval", "soon"], "--process-interval"),
            (&["--batch-size", "0"], "--batch-size"),
            (&["--batch-size=-3"], "--batch-size"),
            (&["--max-concurrent", "0"], "--max-concurrent"),
            (
                &["--checkout-window", "2h", "--session-ttl", "1h"],
                "--session-ttl",
            ),
            (
                &["--outbox-lease", "5s", "--publish-timeout", "10s"],
                "--outbox-lease",
            ),
            (&["--key-layout", "ring"], "--key-layout"),
            (&["--redis-url", "http://x"], "--redis-url"),
            (&["--jwt-algorithm", "none"], "--jwt-algorithm"),
            (&["--jwt-algorithm", "RS256"], "--jwt-private-key-file"),
            (&["--http-addr", "nine-oh-nine-oh"], "--http-addr"),
        ];
        for (args, setting) in cases {
            let err = parse(args).expect_err("must be refused");
            assert!(err.contains(setting), "{args:?}: {err}");
        }
        // Too long: refused with the setting and its bound, so that no instant the
        // worker computes can pass year 9999 and no millisecond count overflows.
        let too_long: &[(&[&str], &str, &str)] = &[
            (
                &["--checkout-window", "1000000000h"],
                "--checkout-window",
                "at most 24h",
            ),
            (
                &["--checkout-window", "25h", "--session-ttl", "48h"],
                "--checkout-window",
                "at most 24h",
            ),
            (
                &["--session-ttl", "31days"],
                "--session-ttl",
                "at most 720h",
            ),
            (
                &["--session-ttl", "1000000000h"],
                "--session-ttl",
                "at most 720h",
            ),
            (
                &["--outbox-lease", "1000000000h"],
                "--outbox-lease",
                "at most 1h",
            ),
            (
                &["--publish-timeout", "2h", "--outbox-lease", "3h"],
                "--publish-timeout",
                "at most 1h",
            ),
            (&["--retry-delay", "2h"], "--retry-delay", "at most 1h"),
            (
                &["--retry-max-delay", "1000000000h"],
                "--retry-max-delay",
                "at most 1h",
            ),
            (
                &["--shutdown-timeout", "61m"],
                "--shutdown-timeout",
                "at most 1h",
            ),
            (
                &["--max-processing-time", "2h"],
                "--max-processing-time",
                "at most 1h",
            ),
            (
                &["--process-interval", "1000000000h"],
                "--process-interval",
                "at most 1h",
            ),
            (&["--redis-timeout", "2h"], "--redis-timeout", "at most 1h"),
            (
                &["--consumer-session-timeout", "2h"],
                "--consumer-session-timeout",
                "at most 1h",
            ),
        ];
        for (args, setting, bound) in too_long {
            let err = parse(args).expect_err("must be refused");
            assert!(
                err.contains(setting) && err.contains(bound),
                "{args:?}: {err}"
            );
        }
    }

    #[test]
    fn settings_that_contradict_each_other_are_refused() {
        for (args, setting, why) in [
            (
                &["--checkout-window", "3s", "--publish-timeout", "2s"][..],
                "--checkout-window",
                "twice --publish-timeout",
            ),
            (
                &["--redis-timeout", "10s", "--max-processing-time", "10s"][..],
                "--max-processing-time",
                "longer than --redis-timeout",
            ),
            (
                &["--checkout-window", "1m", "--max-unpublished-age", "1m"][..],
                "--max-unpublished-age",
                "shorter than --checkout-window",
            ),
        ] {
            let err = parse(args).expect_err("must be refused");
            assert!(
                err.contains(setting) && err.contains(why),
                "{args:?}: {err}"
            );
        }
    }

    #[test]
    fn durations_at_their_bounds_are_accepted() {
        let s = parse(&[
            "--checkout-window",
            "24h",
            "--session-ttl",
            "720h",
            "--publish-timeout",
            "59m",
            "--outbox-lease",
            "1h",
            "--retry-delay",
            "1h",
            "--retry-max-delay",
            "1h",
            "--shutdown-timeout",
            "1h",
            "--max-processing-time",
            "1h",
            "--process-interval",
            "1h",
            "--redis-timeout",
            // Below the max processing time, which must outlast one Redis call.
            "59m",
            "--consumer-session-timeout",
            "1h",
        ])
        .expect("every bound is inclusive");
        assert_eq!(s.checkout_window, Duration::from_secs(24 * 3600));
        assert_eq!(s.session_ttl, Duration::from_secs(720 * 3600));
        // The latest instant an admission now can compute is far from year 9999.
        let deadline =
            crate::model::clock::deadline_ms(crate::model::clock::now_ms(), s.checkout_window);
        assert!(deadline < crate::model::clock::MAX_MS / 2);
    }

    #[test]
    fn status_and_enqueue_bound_their_durations_too() {
        let err = |args: &[&str]| -> String {
            let cli = Cli::try_parse_from(args).expect("parses");
            match cli.command {
                Command::Status(a) => a.keys().expect_err("refused").to_string(),
                Command::Enqueue(a) => a.keys().expect_err("refused").to_string(),
                _ => panic!("not status or enqueue"),
            }
        };
        let e = err(&["w", "status", "--process-interval", "1000000000h"]);
        assert!(
            e.contains("--process-interval") && e.contains("at most 1h"),
            "{e}"
        );
        let e = err(&["w", "status", "--redis-timeout", "2h"]);
        assert!(
            e.contains("--redis-timeout") && e.contains("at most 1h"),
            "{e}"
        );
        let e = err(&["w", "enqueue", "--event", "e", "--session-ttl", "31days"]);
        assert!(
            e.contains("--session-ttl") && e.contains("at most 720h"),
            "{e}"
        );
        let e = err(&["w", "enqueue", "--event", "{e}"]);
        assert!(e.contains("--event"), "{e}");
        let ok = Cli::try_parse_from(["w", "status", "--process-interval", "1h"]).expect("parses");
        let Command::Status(a) = ok.command else {
            panic!("not status");
        };
        assert!(a.keys().is_ok());
    }

    #[test]
    fn short_secret_refused() {
        let cli = Cli::try_parse_from(["waitroom-worker", "run", "--jwt-secret", "tooshort"])
            .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("not run");
        };
        let err =
            crate::base::error_chain::chain(&run.settings().expect_err("refused")).to_string();
        assert!(
            err.contains("QUEUE_JWT_SECRET") && err.contains("32"),
            "{err}"
        );
        assert!(
            !err.contains("tooshort"),
            "the secret must not be echoed: {err}"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://:hunter2@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://u:p@h"), "rediss://u:***@h");
        assert_eq!(
            redact_url("unix:///run/redis.sock?db=1&pass=hunter2"),
            "unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            redact_url("redis://:a@h/0?password=b"),
            "redis://:***@h/0?password=***"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
