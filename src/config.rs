//! The worker's settings: typed, nested, checked, built with [`ConfigBuilder`].
//!
//! [`Config`] is what the worker runs with, grouped by the part that reads it:
//! `redis`, `keys`, `kafka` (with `kafka.producer` and `kafka.consumer`),
//! `admission`, `signer`, `outbox`, `retry`, `worker` and `http`.
//! [`ConfigBuilder`] takes the inputs one by one, each starting at the default the
//! command line shows; [`ConfigBuilder::build`] checks them alone and together,
//! reads the files they name and builds the `Config`, or refuses with a
//! [`ConfigError`] that names the setting.
//!
//! The library knows no flags: a refusal names its setting through a [`Naming`],
//! by default the builder method that set it (`batch_size: must be between 1 and
//! 1000`). The command line passes its own, which names the flag and the
//! environment variable (`--batch-size (QUEUE_DEFAULT_RELEASE_RATE): ...`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use thiserror::Error;

use crate::kafka::options::ClientOptions;
use crate::model::event::EventId;
use crate::model::keys::{KeyLayout, Keys};
use crate::model::token::{Signer, TokenError};
use crate::redis::retry::Backoff;
use crate::redis::scripts::admit::{AdmitArgs, MAX_ADMIT_PER_CALL};
use crate::redis::scripts::claim_outbox::ClaimArgs;
use crate::redis::scripts::valve::ValveArgs;
use crate::redis::store::{Endpoint, TlsFiles};

/// Everything the worker runs with, checked. Built by [`Config::builder`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Where Redis is and how long a command may take.
    pub redis: RedisConfig,
    /// The key names: prefix and layout.
    pub keys: Keys,
    /// The brokers, extra librdkafka settings, the producer and the consumer.
    pub kafka: KafkaConfig,
    /// Which events admit, how many users, for how long.
    pub admission: AdmissionConfig,
    /// Signs the checkout tokens.
    pub signer: Signer,
    /// Leases and claims of outbox entries.
    pub outbox: OutboxConfig,
    /// Retries of failed Redis operations, and the spacing of publish retries.
    pub retry: RetryConfig,
    /// The loop: its id, interval, bound of one pass and shutdown grace.
    pub worker: WorkerConfig,
    /// The operator's HTTP endpoint.
    pub http: HttpConfig,
}

/// Where Redis is.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// One server, or a cluster's seed nodes.
    pub endpoint: Endpoint,
    /// How long a command may take before it counts as failed.
    pub timeout: Duration,
    /// Replicas that must hold an admission round (Redis `WAIT`) before any of its
    /// tokens or messages leave the worker, and a release before its completion is
    /// committed; 0: no wait.
    pub replica_acks: u64,
    /// Longest wait for those replicas; short of them, nothing is published yet.
    pub replica_ack_timeout: Duration,
    /// After the worker sees a new master (its run id changed), it admits nobody
    /// for this long; zero: no hold.
    pub failover_hold: Duration,
}

/// Kafka: what every client gets, then what the producer and the consumer get.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// Extra librdkafka settings, applied after the worker's own.
    pub options: ClientOptions,
    /// The QUEUE_READY producer.
    pub producer: ProducerConfig,
    /// The completion consumer.
    pub consumer: ConsumerConfig,
}

/// The QUEUE_READY producer.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Topic of the admission messages.
    pub topic: String,
    /// Topic of the sell-out announcements.
    pub sold_out_topic: String,
    /// How long Kafka may take to acknowledge a message (`message.timeout.ms`).
    pub publish_timeout: Duration,
}

/// The completion consumer.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Topic of the checkout service's completion messages.
    pub topic: String,
    /// Consumer group, shared by the replicas.
    pub group: String,
    /// Where messages that cannot be used are forwarded, if anywhere.
    pub dead_letter_topic: Option<String>,
    /// Longest a broker may hold a fetch open (`fetch.wait.max.ms`).
    pub fetch_wait: Duration,
    /// How soon a dead replica's partitions move to the others (`session.timeout.ms`).
    pub session_timeout: Duration,
}

/// Which events admit, how many users, for how long.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Events served besides `<prefix>:active_events`, without duplicates.
    pub events: Vec<String>,
    /// Users in checkout per event, unless the event's config hash says otherwise.
    pub max_concurrent: u64,
    /// Users admitted per cycle per event, unless the event's config hash says otherwise.
    pub batch_size: u64,
    /// TTL given to a session hash on every state change.
    pub session_ttl: Duration,
    /// How long an admitted user holds the slot; the token expires with it.
    pub checkout_window: Duration,
    /// An event stops admitting while its oldest unacknowledged admission is older.
    pub max_unpublished_age: Duration,
    /// An admission must be claimed within this or its slot comes back as a no-show
    /// (zero: off), unless the event's config hash sets `claim_window_ms`.
    pub claim_window: Duration,
    /// A waiter not seen for this long when its turn comes has left the queue (zero:
    /// off), unless the event's config hash sets `waiter_idle_timeout_ms`.
    pub waiter_idle_timeout: Duration,
    /// The checkout-health valve, on for events whose config sets no `adaptive`.
    pub adaptive: bool,
    /// The valve's floor, percent of the capacity, for events whose config sets no
    /// `min_concurrent`.
    pub min_concurrent_percent: u64,
    /// The valve's control law.
    pub valve: ValveSettings,
}

/// The checkout-health valve's control law (see `lua/valve.lua` and the README).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValveSettings {
    /// One step per this much time.
    pub interval: Duration,
    /// Cut when more than this share of a step's completions failed.
    pub fail_threshold: f64,
    /// Cut when a step's mean checkout time exceeds the baseline times this.
    pub slow_factor: f64,
    /// Completions a step needs to be judged.
    pub min_completions: u64,
    /// A cut multiplies the effective capacity by this.
    pub cut: f64,
    /// A healthy step adds this share of `max_concurrent`.
    pub step_up: f64,
}

impl Default for ValveSettings {
    fn default() -> Self {
        ValveSettings {
            interval: Duration::from_secs(5),
            fail_threshold: 0.2,
            slow_factor: 2.0,
            min_completions: 5,
            cut: 0.5,
            step_up: 0.1,
        }
    }
}

/// Leases and claims of outbox entries.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// How long an entry stays with the worker publishing it.
    pub lease: Duration,
    /// Most entries one event drains per cycle.
    pub batch: u64,
}

/// Retries of failed Redis operations.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Tries of a failed Redis operation within a cycle.
    pub attempts: u32,
    /// The one backoff: between those tries, of the loop while Redis is away, and
    /// bounding the spacing of publish retries of one outbox entry.
    pub backoff: Backoff,
}

/// The loop.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's id in heartbeats (default `<host>-<pid>`).
    pub id: Option<String>,
    /// Time between admission cycles.
    pub process_interval: Duration,
    /// Longest one cycle may run.
    pub max_processing_time: Duration,
    /// How long a graceful shutdown may take before the process exits anyway.
    pub shutdown_timeout: Duration,
    /// Share the events among the live replicas (each passes only the events it
    /// owns, see `model::ownership`); off, this replica passes every event.
    pub event_ownership: bool,
}

/// The operator's HTTP endpoint.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where it listens; `None`: off.
    pub addr: Option<SocketAddr>,
}

impl Config {
    /// A builder with every input at its default.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// What the admit script needs from the settings.
    pub fn admit_args(&self) -> AdmitArgs {
        AdmitArgs {
            default_max_concurrent: self.admission.max_concurrent,
            default_batch_size: self.admission.batch_size,
            checkout_window: self.admission.checkout_window,
            session_ttl: self.admission.session_ttl,
            outbox_lease: self.outbox.lease,
            max_unpublished_age: self.admission.max_unpublished_age,
            process_interval: self.worker.process_interval,
            claim_window: self.admission.claim_window,
            waiter_idle_timeout: self.admission.waiter_idle_timeout,
            adaptive: self.admission.adaptive,
            min_concurrent_percent: self.admission.min_concurrent_percent,
        }
    }

    /// What the valve needs from the settings.
    pub fn valve_args(&self) -> ValveArgs {
        let v = &self.admission.valve;
        ValveArgs {
            default_max_concurrent: self.admission.max_concurrent,
            min_concurrent_percent: self.admission.min_concurrent_percent,
            interval: v.interval,
            fail_threshold: v.fail_threshold,
            slow_factor: v.slow_factor,
            min_completions: v.min_completions,
            cut: v.cut,
            step_up: v.step_up,
        }
    }

    /// What the outbox claim needs from the settings. An admission is renewed when
    /// less than half its window (and at least the publish timeout) is left, so a
    /// QUEUE_READY always carries a token that is valid for a while after it leaves.
    pub fn claim_args(&self) -> ClaimArgs {
        ClaimArgs {
            lease: self.outbox.lease,
            limit: self.outbox.batch,
            checkout_window: self.admission.checkout_window,
            // At least the publish timeout (checked: the window is at least twice it).
            renew_within: (self.admission.checkout_window / 2)
                .max(self.kafka.producer.publish_timeout),
            session_ttl: self.admission.session_ttl,
        }
    }
}

/// A setting a refusal can name: one input of [`ConfigBuilder`] (or a group of
/// inputs that go together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // each is the builder method of the same name
pub enum Setting {
    RedisUrl,
    RedisCluster,
    RedisSentinel,
    RedisSentinelMaster,
    /// The TLS files as a group (they need a rediss:// URL, and no cluster).
    RedisTls,
    RedisTlsCa,
    RedisTlsCert,
    RedisTlsKey,
    /// The client certificate and its key, which go together.
    RedisTlsClient,
    KeyPrefix,
    KeyLayout,
    RedisTimeout,
    KafkaBrokers,
    KafkaConfigFile,
    ReadyTopic,
    SoldOutTopic,
    ReplicaAcks,
    ReplicaAckTimeout,
    FailoverHold,
    Adaptive,
    MinConcurrentPercent,
    ValveInterval,
    ValveFailThreshold,
    ValveSlowFactor,
    ValveMinCompletions,
    ValveCut,
    ValveStepUp,
    PublishTimeout,
    CompletedTopic,
    ConsumerGroup,
    ConsumerFetchWait,
    ConsumerSessionTimeout,
    HttpAddr,
    WorkerId,
    Event,
    ProcessInterval,
    MaxConcurrent,
    BatchSize,
    SessionTtl,
    CheckoutWindow,
    ClaimWindow,
    WaiterIdleTimeout,
    /// The issuer and the audience, which must both be set.
    JwtIssuerAudience,
    JwtAlgorithm,
    JwtSecret,
    JwtSecretFile,
    /// Where the HS256 secret comes from: the secret or its file, exactly one.
    JwtSecretSource,
    JwtPrivateKeyFile,
    RetryAttempts,
    RetryDelay,
    RetryMaxDelay,
    ShutdownTimeout,
    MaxProcessingTime,
    OutboxLease,
    OutboxBatch,
    MaxUnpublishedAge,
}

impl Setting {
    /// The name of the [`ConfigBuilder`] method that sets it.
    pub fn builder_name(self) -> &'static str {
        use Setting::*;
        match self {
            RedisUrl => "redis_url",
            RedisCluster => "redis_cluster",
            RedisSentinel => "sentinel",
            RedisSentinelMaster => "sentinel_master",
            RedisTls => "redis_tls_ca/redis_tls_cert/redis_tls_key",
            RedisTlsCa => "redis_tls_ca",
            RedisTlsCert => "redis_tls_cert",
            RedisTlsKey => "redis_tls_key",
            RedisTlsClient => "redis_tls_cert/redis_tls_key",
            KeyPrefix => "key_prefix",
            KeyLayout => "key_layout",
            RedisTimeout => "redis_timeout",
            KafkaBrokers => "kafka_brokers",
            KafkaConfigFile => "kafka_config_file",
            ReadyTopic => "ready_topic",
            SoldOutTopic => "sold_out_topic",
            ReplicaAcks => "replica_acks",
            ReplicaAckTimeout => "replica_ack_timeout",
            FailoverHold => "failover_hold",
            Adaptive => "adaptive",
            MinConcurrentPercent => "min_concurrent_percent",
            ValveInterval => "valve_interval",
            ValveFailThreshold => "valve_fail_threshold",
            ValveSlowFactor => "valve_slow_factor",
            ValveMinCompletions => "valve_min_completions",
            ValveCut => "valve_cut",
            ValveStepUp => "valve_step_up",
            PublishTimeout => "publish_timeout",
            CompletedTopic => "completed_topic",
            ConsumerGroup => "consumer_group",
            ConsumerFetchWait => "consumer_fetch_wait",
            ConsumerSessionTimeout => "consumer_session_timeout",
            HttpAddr => "http_addr",
            WorkerId => "worker_id",
            Event => "event",
            ProcessInterval => "process_interval",
            MaxConcurrent => "max_concurrent",
            BatchSize => "batch_size",
            SessionTtl => "session_ttl",
            CheckoutWindow => "checkout_window",
            ClaimWindow => "claim_window",
            WaiterIdleTimeout => "waiter_idle_timeout",
            JwtIssuerAudience => "jwt_issuer / jwt_audience",
            JwtAlgorithm => "jwt_algorithm",
            JwtSecret => "jwt_secret",
            JwtSecretFile => "jwt_secret_file",
            JwtSecretSource => "jwt_secret / jwt_secret_file",
            JwtPrivateKeyFile => "jwt_private_key_file",
            RetryAttempts => "retry_attempts",
            RetryDelay => "retry_delay",
            RetryMaxDelay => "retry_max_delay",
            ShutdownTimeout => "shutdown_timeout",
            MaxProcessingTime => "max_processing_time",
            OutboxLease => "outbox_lease",
            OutboxBatch => "outbox_batch",
            MaxUnpublishedAge => "max_unpublished_age",
        }
    }
}

/// How a refusal names settings.
pub trait Naming: Sync {
    /// The refused setting, at the head of the message.
    fn name(&self, setting: Setting) -> &'static str;
    /// Another setting, mentioned in the reason (`must not be below <retry delay>`).
    fn mention(&self, setting: Setting) -> &'static str {
        self.name(setting)
    }
}

/// The default [`Naming`]: the builder's method names.
struct BuilderNames;

impl Naming for BuilderNames {
    fn name(&self, setting: Setting) -> &'static str {
        setting.builder_name()
    }
}

/// A setting that was refused, named by the [`Naming`] in use.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A value out of bounds, contradicting another, or a file that cannot be read.
    #[error("{setting}: {reason}")]
    Invalid {
        /// The setting's name.
        setting: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The signing key could not be made from what was given.
    #[error("{setting}")]
    Token {
        /// The setting's name.
        setting: &'static str,
        /// What the token module said.
        #[source]
        source: TokenError,
    },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

/// Upper bounds of the durations. They keep every instant the worker computes (now
/// plus a window, a lease, a TTL, a backoff) far from year 9999 and every
/// millisecond count within a u64 and within what Redis and librdkafka accept,
/// and they are far above any sane value.
mod bounds {
    use std::time::Duration;

    const HOUR: Duration = Duration::from_secs(3600);

    /// The checkout window: a token and a slot for at most a day.
    pub(super) const CHECKOUT_WINDOW: (Duration, &str) = (Duration::from_secs(24 * 3600), "24h");
    /// The session TTL: a session hash lives at most 30 days.
    pub(super) const SESSION_TTL: (Duration, &str) =
        (Duration::from_secs(30 * 24 * 3600), "720h (30 days)");
    /// Leases, timeouts, delays and intervals: at most an hour.
    pub(super) const SHORT: (Duration, &str) = (HOUR, "1h");
}

/// Refuse a duration above `max`, naming the setting and the bound.
fn at_most(
    setting: &'static str,
    value: Duration,
    (max, shown): (Duration, &str),
) -> Result<(), ConfigError> {
    if value > max {
        return Err(invalid(setting, format!("must be at most {shown}")));
    }
    Ok(())
}

/// The process interval's upper bound, for `run` and for `status` (which accepts
/// one for compatibility).
pub fn check_process_interval(d: Duration, naming: &dyn Naming) -> Result<(), ConfigError> {
    at_most(naming.name(Setting::ProcessInterval), d, bounds::SHORT)
}

/// The session TTL's upper bound, for `run` and for `enqueue`.
pub fn check_session_ttl(d: Duration, naming: &dyn Naming) -> Result<(), ConfigError> {
    at_most(naming.name(Setting::SessionTtl), d, bounds::SESSION_TTL)
}

/// Where Redis is and how its keys are named, as given: the part of the settings
/// that every command shares. [`RedisBuilder::keys`] and [`RedisBuilder::endpoint`]
/// check it.
#[derive(Clone)]
pub struct RedisBuilder {
    url: String,
    cluster: Option<Vec<String>>,
    sentinel: Option<Vec<String>>,
    sentinel_master: String,
    sentinel_master_password: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    key_prefix: String,
    key_layout: Option<KeyLayout>,
    timeout: Duration,
    naming: &'static dyn Naming,
}

impl Default for RedisBuilder {
    fn default() -> Self {
        RedisBuilder {
            url: "redis://127.0.0.1:6379".into(),
            cluster: None,
            sentinel: None,
            sentinel_master: "mymaster".into(),
            sentinel_master_password: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            key_prefix: "waitroom".into(),
            key_layout: None,
            timeout: Duration::from_secs(5),
            naming: &BuilderNames,
        }
    }
}

impl RedisBuilder {
    /// How refusals name the settings (default: the builder's method names).
    pub fn naming(mut self, naming: &'static dyn Naming) -> Self {
        self.naming = naming;
        self
    }

    /// Redis URL: `redis://`, `rediss://` or `unix://` (default `redis://127.0.0.1:6379`).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Redis Cluster seed nodes; take precedence over the URL, and imply the
    /// cluster key layout.
    pub fn cluster<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Self {
        self.cluster = Some(urls.into_iter().map(Into::into).collect());
        self
    }

    /// Sentinels (`redis://[:password@]host:port`) to ask where the master is;
    /// take precedence over the URL (not with a cluster).
    pub fn sentinel<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Self {
        self.sentinel = Some(urls.into_iter().map(Into::into).collect());
        self
    }

    /// The master's name in Sentinel (default `mymaster`).
    pub fn sentinel_master(mut self, name: impl Into<String>) -> Self {
        self.sentinel_master = name.into();
        self
    }

    /// The master's password under Sentinel (the sentinels' own goes in their URLs).
    pub fn sentinel_master_password(mut self, password: impl Into<String>) -> Self {
        self.sentinel_master_password = Some(password.into());
        self
    }

    /// PEM CA certificate(s) that sign the server's certificate (rediss:// only).
    pub fn tls_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(path.into());
        self
    }

    /// PEM client certificate (with [`RedisBuilder::tls_key`]).
    pub fn tls_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_cert = Some(path.into());
        self
    }

    /// PEM PKCS#8 private key of the client certificate.
    pub fn tls_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_key = Some(path.into());
        self
    }

    /// Prefix of every key (default `waitroom`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Key layout (default: cluster with a cluster, default otherwise).
    pub fn key_layout(mut self, layout: KeyLayout) -> Self {
        self.key_layout = Some(layout);
        self
    }

    /// How long a Redis command may take (default 5s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The key names: prefix and layout. The URLs and TLS files are checked by
    /// [`RedisBuilder::endpoint`], which every connection goes through.
    pub fn keys(&self) -> Result<Keys, ConfigError> {
        self.keys_named(self.naming)
    }

    /// Where Redis is: the cluster's seed nodes when given, else the one URL.
    pub fn endpoint(&self) -> Result<Endpoint, ConfigError> {
        self.endpoint_named(self.naming)
    }

    fn keys_named(&self, naming: &dyn Naming) -> Result<Keys, ConfigError> {
        let p = self.key_prefix.trim();
        if p.is_empty() || p.contains(['{', '}', ' ']) {
            return Err(invalid(
                naming.name(Setting::KeyPrefix),
                "must be non-empty, without spaces or braces",
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid(
                naming.name(Setting::RedisTimeout),
                "must be above zero",
            ));
        }
        at_most(
            naming.name(Setting::RedisTimeout),
            self.timeout,
            bounds::SHORT,
        )?;
        let layout = match (self.key_layout, self.cluster.is_some()) {
            (None, true) | (Some(KeyLayout::Cluster), _) => KeyLayout::Cluster,
            (Some(KeyLayout::Default), true) => {
                return Err(invalid(
                    naming.name(Setting::KeyLayout),
                    format!(
                        "must be cluster with {}: a script may only touch keys of \
                         one hash slot, and the default layout spreads an event over many",
                        naming.mention(Setting::RedisCluster)
                    ),
                ));
            }
            (None | Some(KeyLayout::Default), false) => KeyLayout::Default,
        };
        Ok(Keys::new(p, layout))
    }

    fn endpoint_named(&self, naming: &dyn Naming) -> Result<Endpoint, ConfigError> {
        fn check(flag: &'static str, url: &str, unix_ok: bool) -> Result<(), ConfigError> {
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
        let tls_given = self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_key.is_some();
        if let Some(list) = &self.sentinel {
            let flag = naming.name(Setting::RedisSentinel);
            if self.cluster.is_some() {
                return Err(invalid(
                    flag,
                    format!(
                        "and {} exclude each other: Sentinel watches one master, a \
                         cluster has many",
                        naming.mention(Setting::RedisCluster)
                    ),
                ));
            }
            if tls_given {
                return Err(invalid(
                    naming.name(Setting::RedisTls),
                    format!(
                        "apply to {} only; for Sentinel over rediss:// put the CA in the \
                         system trust store or point SSL_CERT_FILE at it",
                        naming.mention(Setting::RedisUrl)
                    ),
                ));
            }
            let urls: Vec<String> = list
                .iter()
                .map(|u| u.trim())
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            if urls.is_empty() {
                return Err(invalid(flag, "must name at least one sentinel URL"));
            }
            let tls = urls.iter().all(|u| u.starts_with("rediss://"));
            if !tls && !urls.iter().all(|u| u.starts_with("redis://")) {
                return Err(invalid(
                    flag,
                    "every URL must start with redis://, or every one with rediss://",
                ));
            }
            let master = self.sentinel_master.trim();
            if master.is_empty() || master.contains(char::is_whitespace) {
                return Err(invalid(
                    naming.name(Setting::RedisSentinelMaster),
                    "must be a name without spaces",
                ));
            }
            return Ok(Endpoint::Sentinel {
                sentinels: urls,
                master: master.to_owned(),
                password: self
                    .sentinel_master_password
                    .clone()
                    .filter(|p| !p.is_empty()),
                tls,
            });
        }
        match &self.cluster {
            Some(_) if tls_given => Err(invalid(
                naming.name(Setting::RedisTls),
                format!(
                    "apply to {} only; for a cluster over rediss:// put the CA in the \
                     system trust store or point SSL_CERT_FILE at it",
                    naming.mention(Setting::RedisUrl)
                ),
            )),
            Some(list) => {
                let flag = naming.name(Setting::RedisCluster);
                let urls: Vec<String> = list
                    .iter()
                    .map(|u| u.trim())
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
                check(naming.name(Setting::RedisUrl), &self.url, true)?;
                if tls_given && !self.url.starts_with("rediss://") {
                    return Err(invalid(
                        naming.name(Setting::RedisTls),
                        format!("need a rediss:// {}", naming.name(Setting::RedisUrl)),
                    ));
                }
                let read = |flag: &'static str, path: &PathBuf| {
                    std::fs::read(path)
                        .map_err(|e| invalid(flag, format!("cannot read {}: {e}", path.display())))
                };
                let ca = match &self.tls_ca {
                    Some(p) => Some(read(naming.name(Setting::RedisTlsCa), p)?),
                    None => None,
                };
                let client = match (&self.tls_cert, &self.tls_key) {
                    (Some(c), Some(k)) => Some((
                        read(naming.name(Setting::RedisTlsCert), c)?,
                        read(naming.name(Setting::RedisTlsKey), k)?,
                    )),
                    (None, None) => None,
                    _ => {
                        return Err(invalid(
                            naming.name(Setting::RedisTlsClient),
                            "go together: give both or neither",
                        ));
                    }
                };
                Ok(Endpoint::Single {
                    url: self.url.clone(),
                    tls: TlsFiles { ca, client },
                })
            }
        }
    }
}

/// The inputs of a [`Config`], each at the default the command line shows until
/// set; [`ConfigBuilder::build`] checks them and builds the `Config`.
#[derive(Clone)]
pub struct ConfigBuilder {
    redis: RedisBuilder,
    kafka_brokers: String,
    kafka_options: Vec<(String, String)>,
    kafka_config_file: Option<PathBuf>,
    ready_topic: String,
    sold_out_topic: String,
    adaptive: bool,
    min_concurrent_percent: u64,
    valve_interval: Duration,
    valve_fail_threshold: f64,
    valve_slow_factor: f64,
    valve_min_completions: u64,
    valve_cut: f64,
    valve_step_up: f64,
    publish_timeout: Duration,
    completed_topic: String,
    consumer_group: String,
    dead_letter_topic: Option<String>,
    consumer_fetch_wait: Duration,
    consumer_session_timeout: Duration,
    http_addr: HttpInput,
    worker_id: Option<String>,
    event_ownership: bool,
    events: Vec<String>,
    process_interval: Duration,
    max_concurrent: u64,
    batch_size: u64,
    session_ttl: Duration,
    checkout_window: Duration,
    claim_window: Duration,
    waiter_idle_timeout: Duration,
    jwt_issuer: String,
    jwt_audience: String,
    jwt_algorithm: AlgorithmInput,
    jwt_secret: Option<Vec<u8>>,
    jwt_secret_file: Option<PathBuf>,
    jwt_private_key_file: Option<PathBuf>,
    jwt_kid: Option<String>,
    retry_attempts: u32,
    retry_delay: Duration,
    retry_max_delay: Duration,
    shutdown_timeout: Duration,
    max_processing_time: Duration,
    outbox_lease: Duration,
    outbox_batch: u64,
    max_unpublished_age: Option<Duration>,
    replica_acks: u64,
    replica_ack_timeout: Duration,
    failover_hold: Duration,
    naming: &'static dyn Naming,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder {
            redis: RedisBuilder::default(),
            kafka_brokers: "127.0.0.1:9092".into(),
            kafka_options: Vec::new(),
            kafka_config_file: None,
            ready_topic: "QUEUE_READY".into(),
            sold_out_topic: "EVENT_SOLD_OUT".into(),
            adaptive: false,
            min_concurrent_percent: 10,
            valve_interval: ValveSettings::default().interval,
            valve_fail_threshold: ValveSettings::default().fail_threshold,
            valve_slow_factor: ValveSettings::default().slow_factor,
            valve_min_completions: ValveSettings::default().min_completions,
            valve_cut: ValveSettings::default().cut,
            valve_step_up: ValveSettings::default().step_up,
            publish_timeout: Duration::from_secs(10),
            completed_topic: "CHECKOUT_COMPLETED".into(),
            consumer_group: "waitroom-worker".into(),
            dead_letter_topic: None,
            consumer_fetch_wait: Duration::from_millis(10),
            consumer_session_timeout: Duration::from_secs(6),
            http_addr: HttpInput::Addr(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)))),
            worker_id: None,
            event_ownership: true,
            events: Vec::new(),
            process_interval: Duration::from_secs(1),
            max_concurrent: 100,
            batch_size: 10,
            session_ttl: Duration::from_secs(2 * 3600),
            checkout_window: Duration::from_secs(15 * 60),
            claim_window: Duration::ZERO,
            waiter_idle_timeout: Duration::ZERO,
            jwt_issuer: "waitroom".into(),
            jwt_audience: "checkout".into(),
            jwt_algorithm: AlgorithmInput::Given(Algorithm::HS256),
            jwt_secret: None,
            jwt_secret_file: None,
            jwt_private_key_file: None,
            jwt_kid: None,
            retry_attempts: 3,
            retry_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            max_processing_time: Duration::from_secs(30),
            outbox_lease: Duration::from_secs(30),
            outbox_batch: 1000,
            max_unpublished_age: None,
            replica_acks: 0,
            replica_ack_timeout: Duration::from_secs(1),
            failover_hold: Duration::from_secs(5),
            naming: &BuilderNames,
        }
    }
}

/// The HTTP address as given: typed, or as written (checked in `build`, in order).
#[derive(Clone)]
enum HttpInput {
    Addr(Option<SocketAddr>),
    Written(String),
}

/// The signing algorithm as given: typed, or by name (checked with the signer).
#[derive(Clone)]
enum AlgorithmInput {
    Given(Algorithm),
    Named(String),
}

/// A setter per input: `fn name(mut self, value) -> Self`.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty => $field:ident = $value:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $field: $ty) -> Self {
                self.$field = $value;
                self
            }
        )*
    };
}

impl ConfigBuilder {
    /// How refusals name the settings (default: these methods' names).
    pub fn naming(mut self, naming: &'static dyn Naming) -> Self {
        self.naming = naming;
        self
    }

    /// Where Redis is and how its keys are named, all at once.
    pub fn redis(mut self, redis: RedisBuilder) -> Self {
        self.redis = redis;
        self
    }

    /// Redis URL (default `redis://127.0.0.1:6379`).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis = self.redis.url(url);
        self
    }

    /// Redis Cluster seed nodes (see [`RedisBuilder::cluster`]).
    pub fn redis_cluster<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Self {
        self.redis = self.redis.cluster(urls);
        self
    }

    /// PEM CA certificate(s) of the server (rediss:// only).
    pub fn redis_tls_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.redis = self.redis.tls_ca(path);
        self
    }

    /// PEM client certificate (with [`ConfigBuilder::redis_tls_key`]).
    pub fn redis_tls_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.redis = self.redis.tls_cert(path);
        self
    }

    /// PEM PKCS#8 private key of the client certificate.
    pub fn redis_tls_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.redis = self.redis.tls_key(path);
        self
    }

    /// Prefix of every key (default `waitroom`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis = self.redis.key_prefix(prefix);
        self
    }

    /// Key layout (default: cluster with a cluster, default otherwise).
    pub fn key_layout(mut self, layout: KeyLayout) -> Self {
        self.redis = self.redis.key_layout(layout);
        self
    }

    /// How long a Redis command may take (default 5s).
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis = self.redis.timeout(timeout);
        self
    }

    /// One extra librdkafka setting, after those of the file; repeatable.
    pub fn kafka_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.kafka_options.push((key.into(), value.into()));
        self
    }

    /// One event to serve besides `<prefix>:active_events`; repeatable.
    pub fn event(mut self, event: impl Into<String>) -> Self {
        self.events.push(event.into());
        self
    }

    /// Where the HTTP endpoint listens; `None`: off (default `127.0.0.1:9090`).
    pub fn http_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.http_addr = HttpInput::Addr(addr);
        self
    }

    /// Where the HTTP endpoint listens, as written: `host:port`, or `off` (or
    /// nothing) for none; anything else is refused by [`ConfigBuilder::build`].
    pub fn http_addr_written(mut self, text: impl Into<String>) -> Self {
        self.http_addr = HttpInput::Written(text.into());
        self
    }

    /// Signing algorithm: HS256 (default), RS256, ES256 or EdDSA.
    pub fn jwt_algorithm(mut self, alg: Algorithm) -> Self {
        self.jwt_algorithm = AlgorithmInput::Given(alg);
        self
    }

    /// Signing algorithm by its name (`HS256`, `RS256`, `ES256`, `EdDSA`); another
    /// name is refused by [`ConfigBuilder::build`].
    pub fn jwt_algorithm_named(mut self, name: impl Into<String>) -> Self {
        self.jwt_algorithm = AlgorithmInput::Named(name.into());
        self
    }

    /// The HS256 secret (at least 32 bytes).
    pub fn jwt_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.jwt_secret = Some(secret.as_ref().to_vec());
        self
    }

    setters! {
        /// Kafka bootstrap servers, comma separated (default `127.0.0.1:9092`).
        kafka_brokers: impl Into<String> => kafka_brokers = kafka_brokers.into();
        /// File of librdkafka settings, one KEY=VALUE per line (`#` comments).
        kafka_config_file: impl Into<PathBuf> => kafka_config_file = Some(kafka_config_file.into());
        /// Topic of the admission messages (default `QUEUE_READY`).
        ready_topic: impl Into<String> => ready_topic = ready_topic.into();
        /// Replicas that must hold an admission round before it is published, and a
        /// release before its completion is committed (default 0: no wait).
        replica_acks: u64 => replica_acks = replica_acks;
        /// Longest wait for those replicas (default 1s).
        replica_ack_timeout: Duration => replica_ack_timeout = replica_ack_timeout;
        /// After a new master is seen, admit nobody for this long (default 5s; 0s: no hold).
        failover_hold: Duration => failover_hold = failover_hold;
        /// Topic of the sell-out announcements (default `EVENT_SOLD_OUT`).
        sold_out_topic: impl Into<String> => sold_out_topic = sold_out_topic.into();
        /// The checkout-health valve for events whose config sets no `adaptive`
        /// (default off).
        adaptive: bool => adaptive = adaptive;
        /// The valve's floor, percent of the capacity (default 10).
        min_concurrent_percent: u64 => min_concurrent_percent = min_concurrent_percent;
        /// The valve: one step per this much time (default 5s).
        valve_interval: Duration => valve_interval = valve_interval;
        /// The valve cuts when more than this share of completions failed (default 0.2).
        valve_fail_threshold: f64 => valve_fail_threshold = valve_fail_threshold;
        /// The valve cuts when checkout takes longer than the baseline times this
        /// (default 2.0).
        valve_slow_factor: f64 => valve_slow_factor = valve_slow_factor;
        /// Completions a valve step needs to be judged (default 5).
        valve_min_completions: u64 => valve_min_completions = valve_min_completions;
        /// A valve cut multiplies the capacity by this (default 0.5).
        valve_cut: f64 => valve_cut = valve_cut;
        /// A healthy valve step adds this share of max_concurrent (default 0.1).
        valve_step_up: f64 => valve_step_up = valve_step_up;
        /// How long Kafka may take to acknowledge a message (default 10s).
        publish_timeout: Duration => publish_timeout = publish_timeout;
        /// Topic of the completion messages (default `CHECKOUT_COMPLETED`).
        completed_topic: impl Into<String> => completed_topic = completed_topic.into();
        /// Consumer group of the completion consumer (default `waitroom-worker`).
        consumer_group: impl Into<String> => consumer_group = consumer_group.into();
        /// Where completion messages that cannot be used go (default: nowhere).
        dead_letter_topic: impl Into<String> => dead_letter_topic = Some(dead_letter_topic.into());
        /// Longest a broker may hold a fetch open (default 10ms).
        consumer_fetch_wait: Duration => consumer_fetch_wait = consumer_fetch_wait;
        /// How soon a dead replica's partitions move on (default 6s).
        consumer_session_timeout: Duration => consumer_session_timeout = consumer_session_timeout;
        /// This worker's id in heartbeats (default `<host>-<pid>`).
        worker_id: impl Into<String> => worker_id = Some(worker_id.into());
        /// Share the events among the live replicas (default true).
        event_ownership: bool => event_ownership = event_ownership;
        /// Time between admission cycles (default 1s).
        process_interval: Duration => process_interval = process_interval;
        /// Users in checkout per event (default 100).
        max_concurrent: u64 => max_concurrent = max_concurrent;
        /// Users admitted per cycle per event (default 10).
        batch_size: u64 => batch_size = batch_size;
        /// TTL of a session hash (default 2h).
        session_ttl: Duration => session_ttl = session_ttl;
        /// How long an admitted user holds the slot (default 15m).
        checkout_window: Duration => checkout_window = checkout_window;
        /// Time an admitted user has to claim the slot, or it comes back as a
        /// no-show (default 0s: off).
        claim_window: Duration => claim_window = claim_window;
        /// A waiter whose `last_seen` is older than this at its turn has left the
        /// queue and is skipped (default 0s: off).
        waiter_idle_timeout: Duration => waiter_idle_timeout = waiter_idle_timeout;
        /// `iss` of the checkout tokens (default `waitroom`).
        jwt_issuer: impl Into<String> => jwt_issuer = jwt_issuer.into();
        /// `aud` of the checkout tokens (default `checkout`).
        jwt_audience: impl Into<String> => jwt_audience = jwt_audience.into();
        /// File holding the HS256 secret (trailing newline ignored).
        jwt_secret_file: impl Into<PathBuf> => jwt_secret_file = Some(jwt_secret_file.into());
        /// PEM private key for RS256, ES256 or EdDSA.
        jwt_private_key_file: impl Into<PathBuf> => jwt_private_key_file = Some(jwt_private_key_file.into());
        /// `kid` header naming the key.
        jwt_kid: impl Into<String> => jwt_kid = Some(jwt_kid.into());
        /// Tries of a failed Redis operation within a cycle (default 3).
        retry_attempts: u32 => retry_attempts = retry_attempts;
        /// First retry delay; doubles on each retry (default 1s).
        retry_delay: Duration => retry_delay = retry_delay;
        /// Longest retry delay (default 30s).
        retry_max_delay: Duration => retry_max_delay = retry_max_delay;
        /// How long a graceful shutdown may take (default 30s).
        shutdown_timeout: Duration => shutdown_timeout = shutdown_timeout;
        /// Longest one cycle may run (default 30s).
        max_processing_time: Duration => max_processing_time = max_processing_time;
        /// How long an outbox entry stays with the worker publishing it (default 30s).
        outbox_lease: Duration => outbox_lease = outbox_lease;
        /// Most outbox entries one event drains per cycle (default 1000).
        outbox_batch: u64 => outbox_batch = outbox_batch;
        /// Backpressure bound (default: 30s, or a quarter of the checkout window
        /// when that is shorter).
        max_unpublished_age: Duration => max_unpublished_age = Some(max_unpublished_age);
    }

    /// The settings of the options file, then those given one by one.
    fn kafka_options(&self, naming: &dyn Naming) -> Result<ClientOptions, ConfigError> {
        let mut pairs = Vec::new();
        if let Some(path) = &self.kafka_config_file {
            let flag = naming.name(Setting::KafkaConfigFile);
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(flag, format!("cannot read {}: {e}", path.display())))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                // The line itself may hold a secret: only its number is reported.
                let pair = ClientOptions::parse_pair(line)
                    .map_err(|_| invalid(flag, format!("line {} is not KEY=VALUE", n + 1)))?;
                pairs.push((pair.0, pair.1.trim_start().to_owned()));
            }
        }
        pairs.extend(self.kafka_options.iter().cloned());
        Ok(ClientOptions(pairs))
    }

    /// Check every input, alone and together, read the files, build the signer.
    pub fn build(self) -> Result<Config, ConfigError> {
        use Setting::*;
        let naming = self.naming;
        let name = |s: Setting| naming.name(s);
        let mention = |s: Setting| naming.mention(s);
        let keys = self.redis.keys_named(naming)?;
        let endpoint = self.redis.endpoint_named(naming)?;
        if self.kafka_brokers.trim().is_empty() {
            return Err(invalid(name(KafkaBrokers), "must name at least one broker"));
        }
        if self.ready_topic.trim().is_empty() {
            return Err(invalid(name(ReadyTopic), "must not be empty"));
        }
        if self.replica_acks > 16 {
            return Err(invalid(name(ReplicaAcks), "must be between 0 and 16"));
        }
        if self.replica_acks > 0 && matches!(endpoint, Endpoint::Cluster(_)) {
            return Err(invalid(
                name(ReplicaAcks),
                format!(
                    "is for one master (--redis-url or Sentinel), not {}: WAIT answers for \
                     one node's replicas only",
                    mention(RedisCluster)
                ),
            ));
        }
        if self.replica_ack_timeout < Duration::from_millis(10) {
            return Err(invalid(name(ReplicaAckTimeout), "must be at least 10ms"));
        }
        at_most(
            name(ReplicaAckTimeout),
            self.replica_ack_timeout,
            bounds::SHORT,
        )?;
        if self.replica_acks > 0 && self.replica_ack_timeout >= self.redis.timeout {
            return Err(invalid(
                name(ReplicaAckTimeout),
                format!(
                    "must be below {}: WAIT holds the connection, and a reply later than \
                     that counts as failed",
                    mention(RedisTimeout)
                ),
            ));
        }
        at_most(name(FailoverHold), self.failover_hold, bounds::SHORT)?;
        if self.sold_out_topic.trim().is_empty() {
            return Err(invalid(name(SoldOutTopic), "must not be empty"));
        }
        if self.min_concurrent_percent == 0 || self.min_concurrent_percent > 100 {
            return Err(invalid(
                name(MinConcurrentPercent),
                "must be between 1 and 100",
            ));
        }
        let v = ValveSettings {
            interval: self.valve_interval,
            fail_threshold: self.valve_fail_threshold,
            slow_factor: self.valve_slow_factor,
            min_completions: self.valve_min_completions,
            cut: self.valve_cut,
            step_up: self.valve_step_up,
        };
        if v.interval < Duration::from_millis(100) {
            return Err(invalid(name(ValveInterval), "must be at least 100ms"));
        }
        at_most(name(ValveInterval), v.interval, bounds::SHORT)?;
        let share = |x: f64| x.is_finite() && x > 0.0 && x < 1.0;
        if !share(v.fail_threshold) {
            return Err(invalid(
                name(ValveFailThreshold),
                "must be a share between 0 and 1 (e.g. 0.2)",
            ));
        }
        if !(v.slow_factor.is_finite() && v.slow_factor > 1.0 && v.slow_factor <= 100.0) {
            return Err(invalid(
                name(ValveSlowFactor),
                "must be above 1 and at most 100 (e.g. 2.0)",
            ));
        }
        if v.min_completions == 0 || v.min_completions > 1_000_000 {
            return Err(invalid(
                name(ValveMinCompletions),
                "must be between 1 and 1000000",
            ));
        }
        if !share(v.cut) {
            return Err(invalid(
                name(ValveCut),
                "must be a share between 0 and 1 (e.g. 0.5)",
            ));
        }
        if !(v.step_up.is_finite() && v.step_up > 0.0 && v.step_up <= 1.0) {
            return Err(invalid(
                name(ValveStepUp),
                "must be a share above 0, at most 1 (e.g. 0.1)",
            ));
        }
        if self.completed_topic.trim().is_empty() {
            return Err(invalid(name(CompletedTopic), "must not be empty"));
        }
        if self.consumer_group.trim().is_empty() {
            return Err(invalid(name(ConsumerGroup), "must not be empty"));
        }
        if self.consumer_fetch_wait.is_zero() || self.consumer_fetch_wait > Duration::from_secs(5) {
            return Err(invalid(
                name(ConsumerFetchWait),
                "must be between 1ms and 5s",
            ));
        }
        if self.consumer_session_timeout < Duration::from_secs(1) {
            return Err(invalid(name(ConsumerSessionTimeout), "must be at least 1s"));
        }
        // librdkafka's own limit of session.timeout.ms.
        at_most(
            name(ConsumerSessionTimeout),
            self.consumer_session_timeout,
            bounds::SHORT,
        )?;
        if self.process_interval < Duration::from_millis(10) {
            return Err(invalid(name(ProcessInterval), "must be at least 10ms"));
        }
        check_process_interval(self.process_interval, naming)?;
        if self.max_concurrent == 0 {
            return Err(invalid(name(MaxConcurrent), "must be at least 1"));
        }
        let cap = MAX_ADMIT_PER_CALL;
        if self.batch_size == 0 || self.batch_size > cap {
            return Err(invalid(
                name(BatchSize),
                format!("must be between 1 and {cap}"),
            ));
        }
        if self.checkout_window < Duration::from_secs(1) {
            return Err(invalid(name(CheckoutWindow), "must be at least 1s"));
        }
        at_most(
            name(CheckoutWindow),
            self.checkout_window,
            bounds::CHECKOUT_WINDOW,
        )?;
        if !self.claim_window.is_zero() && self.claim_window < Duration::from_secs(1) {
            return Err(invalid(
                name(ClaimWindow),
                "must be 0s (off) or at least 1s",
            ));
        }
        if self.claim_window > self.checkout_window {
            return Err(invalid(
                name(ClaimWindow),
                format!("must not be longer than {}", mention(CheckoutWindow)),
            ));
        }
        if !self.waiter_idle_timeout.is_zero() && self.waiter_idle_timeout < Duration::from_secs(1)
        {
            return Err(invalid(
                name(WaiterIdleTimeout),
                "must be 0s (off) or at least 1s",
            ));
        }
        at_most(
            name(WaiterIdleTimeout),
            self.waiter_idle_timeout,
            bounds::CHECKOUT_WINDOW,
        )?;
        check_session_ttl(self.session_ttl, naming)?;
        if self.session_ttl <= self.checkout_window {
            return Err(invalid(
                name(SessionTtl),
                "must be longer than the checkout window, or sessions vanish mid-checkout",
            ));
        }
        if self.retry_attempts == 0 {
            return Err(invalid(name(RetryAttempts), "must be at least 1"));
        }
        if self.retry_delay.is_zero() {
            return Err(invalid(name(RetryDelay), "must be above zero"));
        }
        at_most(name(RetryDelay), self.retry_delay, bounds::SHORT)?;
        if self.retry_max_delay < self.retry_delay {
            return Err(invalid(
                name(RetryMaxDelay),
                format!("must not be below {}", mention(RetryDelay)),
            ));
        }
        at_most(name(RetryMaxDelay), self.retry_max_delay, bounds::SHORT)?;
        if self.shutdown_timeout.is_zero() {
            return Err(invalid(name(ShutdownTimeout), "must be above zero"));
        }
        at_most(name(ShutdownTimeout), self.shutdown_timeout, bounds::SHORT)?;
        if self.max_processing_time.is_zero() {
            return Err(invalid(name(MaxProcessingTime), "must be above zero"));
        }
        at_most(
            name(MaxProcessingTime),
            self.max_processing_time,
            bounds::SHORT,
        )?;
        if self.publish_timeout < Duration::from_millis(100) {
            return Err(invalid(name(PublishTimeout), "must be at least 100ms"));
        }
        at_most(name(PublishTimeout), self.publish_timeout, bounds::SHORT)?;
        at_most(name(OutboxLease), self.outbox_lease, bounds::SHORT)?;
        if self.outbox_lease <= self.publish_timeout {
            return Err(invalid(
                name(OutboxLease),
                format!(
                    "must be longer than {}, or a replica may publish what another still waits on",
                    mention(PublishTimeout)
                ),
            ));
        }
        if self.outbox_batch == 0 || self.outbox_batch > 10_000 {
            return Err(invalid(name(OutboxBatch), "must be between 1 and 10000"));
        }
        if self.checkout_window < self.publish_timeout * 2 {
            return Err(invalid(
                name(CheckoutWindow),
                format!(
                    "must be at least twice {}, or a QUEUE_READY could carry a token that expires before Kafka acknowledges it",
                    mention(PublishTimeout)
                ),
            ));
        }
        if self.redis.timeout >= self.max_processing_time {
            return Err(invalid(
                name(MaxProcessingTime),
                format!(
                    "must be longer than {}, or a cycle is cut before one Redis call can time out",
                    mention(RedisTimeout)
                ),
            ));
        }
        let max_unpublished_age = self
            .max_unpublished_age
            .unwrap_or((self.checkout_window / 4).min(Duration::from_secs(30)));
        if max_unpublished_age < Duration::from_millis(100)
            || max_unpublished_age >= self.checkout_window
        {
            return Err(invalid(
                name(MaxUnpublishedAge),
                format!(
                    "must be at least 100ms and shorter than {}, or admission would go on while nobody can be told",
                    mention(CheckoutWindow)
                ),
            ));
        }
        let http_addr = match &self.http_addr {
            HttpInput::Addr(a) => *a,
            HttpInput::Written(text) => match text.trim() {
                "" | "off" => None,
                a => Some(a.parse().map_err(|_| {
                    invalid(
                        name(HttpAddr),
                        format!("{a:?} is not host:port (e.g. 127.0.0.1:9090) or off"),
                    )
                })?),
            },
        };
        if let Some(id) = &self.worker_id
            && (id.is_empty() || id.contains([' ', '{', '}']))
        {
            return Err(invalid(
                name(WorkerId),
                "must be non-empty, without spaces or braces",
            ));
        }
        let mut events: Vec<String> = Vec::new();
        for e in &self.events {
            if let Err(bad) = EventId::parse(e.as_str()) {
                return Err(invalid(name(Event), bad.to_string()));
            }
            if !events.contains(e) {
                events.push(e.clone());
            }
        }
        let options = self.kafka_options(naming)?;
        let signer = self.signer(naming)?;
        Ok(Config {
            redis: RedisConfig {
                endpoint,
                timeout: self.redis.timeout,
                replica_acks: self.replica_acks,
                replica_ack_timeout: self.replica_ack_timeout,
                failover_hold: self.failover_hold,
            },
            keys,
            kafka: KafkaConfig {
                brokers: self.kafka_brokers,
                options,
                producer: ProducerConfig {
                    topic: self.ready_topic,
                    sold_out_topic: self.sold_out_topic,
                    publish_timeout: self.publish_timeout,
                },
                consumer: ConsumerConfig {
                    topic: self.completed_topic,
                    group: self.consumer_group,
                    dead_letter_topic: self.dead_letter_topic.filter(|t| !t.is_empty()),
                    fetch_wait: self.consumer_fetch_wait,
                    session_timeout: self.consumer_session_timeout,
                },
            },
            admission: AdmissionConfig {
                events,
                max_concurrent: self.max_concurrent,
                batch_size: self.batch_size,
                session_ttl: self.session_ttl,
                checkout_window: self.checkout_window,
                max_unpublished_age,
                claim_window: self.claim_window,
                waiter_idle_timeout: self.waiter_idle_timeout,
                adaptive: self.adaptive,
                min_concurrent_percent: self.min_concurrent_percent,
                valve: v,
            },
            signer,
            outbox: OutboxConfig {
                lease: self.outbox_lease,
                batch: self.outbox_batch,
            },
            retry: RetryConfig {
                attempts: self.retry_attempts,
                backoff: Backoff {
                    first: self.retry_delay,
                    max: self.retry_max_delay,
                },
            },
            worker: WorkerConfig {
                id: self.worker_id,
                process_interval: self.process_interval,
                max_processing_time: self.max_processing_time,
                shutdown_timeout: self.shutdown_timeout,
                event_ownership: self.event_ownership,
            },
            http: HttpConfig { addr: http_addr },
        })
    }

    fn signer(&self, naming: &dyn Naming) -> Result<Signer, ConfigError> {
        use Setting::*;
        let unsupported = |name: &str| {
            invalid(
                naming.name(JwtAlgorithm),
                format!("{name:?} is not one of HS256, RS256, ES256, EdDSA"),
            )
        };
        let alg = match &self.jwt_algorithm {
            AlgorithmInput::Given(alg) => *alg,
            AlgorithmInput::Named(name) => {
                Algorithm::from_str(name).map_err(|_| unsupported(name))?
            }
        };
        if !matches!(
            alg,
            Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(unsupported(&format!("{alg:?}")));
        }
        let iss = self.jwt_issuer.as_str();
        let aud = self.jwt_audience.as_str();
        if iss.is_empty() || aud.is_empty() {
            return Err(invalid(naming.name(JwtIssuerAudience), "must not be empty"));
        }
        if alg != Algorithm::HS256 {
            let setting = naming.name(JwtPrivateKeyFile);
            let path = self
                .jwt_private_key_file
                .as_ref()
                .ok_or_else(|| invalid(setting, format!("required for {alg:?}")))?;
            let pem = std::fs::read(path)
                .map_err(|e| invalid(setting, format!("{}: {e}", path.display())))?;
            return Signer::asymmetric(alg, &pem, self.jwt_kid.clone(), iss, aud)
                .map_err(|source| ConfigError::Token { setting, source });
        }
        let (setting, secret): (&'static str, Vec<u8>) =
            match (&self.jwt_secret, &self.jwt_secret_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        naming.name(JwtSecretSource),
                        "set one of them, not both",
                    ));
                }
                (Some(s), None) => (naming.name(JwtSecret), s.clone()),
                (None, Some(path)) => {
                    let setting = naming.name(JwtSecretFile);
                    let mut bytes = std::fs::read(path)
                        .map_err(|e| invalid(setting, format!("{}: {e}", path.display())))?;
                    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        bytes.pop();
                    }
                    (setting, bytes)
                }
                (None, None) => {
                    return Err(invalid(
                        naming.name(JwtSecretSource),
                        "an HS256 secret of at least 32 bytes is required",
                    ));
                }
            };
        Signer::hs256(&secret, iss, aud).map_err(|source| ConfigError::Token { setting, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn error(b: ConfigBuilder) -> String {
        let e = b.build().expect_err("must be refused");
        crate::base::error_chain::chain(&e).to_string()
    }

    #[test]
    fn defaults_are_the_seeds() {
        let c = Config::builder()
            .jwt_secret(SECRET)
            .build()
            .expect("defaults are valid");
        assert_eq!(c.worker.process_interval, Duration::from_secs(1));
        assert_eq!(c.admission.max_concurrent, 100);
        assert_eq!(c.admission.batch_size, 10);
        assert_eq!(c.admission.session_ttl, Duration::from_secs(7200));
        assert_eq!(c.admission.checkout_window, Duration::from_secs(900));
        assert_eq!(c.retry.attempts, 3);
        assert_eq!(c.retry.backoff.first, Duration::from_secs(1));
        assert_eq!(c.worker.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.worker.max_processing_time, Duration::from_secs(30));
        assert_eq!(c.kafka.producer.topic, "QUEUE_READY");
        assert_eq!(c.admission.max_unpublished_age, Duration::from_secs(30));
    }

    #[test]
    fn refusals_name_the_builder_method_unless_told_otherwise() {
        let e = error(Config::builder().jwt_secret(SECRET).batch_size(0));
        assert_eq!(e, "batch_size: must be between 1 and 1000");
        let e = error(
            Config::builder()
                .jwt_secret(SECRET)
                .retry_delay(Duration::from_secs(2))
                .retry_max_delay(Duration::from_secs(1)),
        );
        assert_eq!(e, "retry_max_delay: must not be below retry_delay");

        struct Loud;
        impl Naming for Loud {
            fn name(&self, s: Setting) -> &'static str {
                match s {
                    Setting::RetryMaxDelay => "MAX",
                    _ => "OTHER",
                }
            }
            fn mention(&self, _: Setting) -> &'static str {
                "other"
            }
        }
        let e = error(
            Config::builder()
                .naming(&Loud)
                .jwt_secret(SECRET)
                .retry_delay(Duration::from_secs(2))
                .retry_max_delay(Duration::from_secs(1)),
        );
        assert_eq!(e, "MAX: must not be below other");
    }

    #[test]
    fn events_are_checked_and_deduplicated_in_order() {
        let c = Config::builder()
            .jwt_secret(SECRET)
            .event("b")
            .event("a")
            .event("b")
            .build()
            .expect("valid");
        assert_eq!(c.admission.events, ["b", "a"]);
        let e = error(Config::builder().jwt_secret(SECRET).event("{x}"));
        assert!(e.starts_with("event: "), "{e}");
    }

    #[test]
    fn one_backoff_from_the_retry_settings() {
        let c = Config::builder()
            .jwt_secret(SECRET)
            .retry_delay(Duration::from_millis(50))
            .retry_max_delay(Duration::from_millis(500))
            .build()
            .expect("valid");
        assert_eq!(c.retry.backoff.first, Duration::from_millis(50));
        assert_eq!(c.retry.backoff.max, Duration::from_millis(500));
    }

    #[test]
    fn written_values_are_read_where_the_command_line_checked_them() {
        let c = Config::builder()
            .jwt_secret(SECRET)
            .http_addr_written("off")
            .jwt_algorithm_named("HS256")
            .build()
            .expect("valid");
        assert_eq!(c.http.addr, None);
        let e = error(
            Config::builder()
                .jwt_secret(SECRET)
                .http_addr_written("nine-oh-nine-oh"),
        );
        assert_eq!(
            e,
            "http_addr: \"nine-oh-nine-oh\" is not host:port (e.g. 127.0.0.1:9090) or off"
        );
        // In the order the checks always had: the batch size before the address,
        // the address before the algorithm.
        let e = error(
            Config::builder()
                .jwt_secret(SECRET)
                .batch_size(0)
                .http_addr_written("x")
                .jwt_algorithm_named("none"),
        );
        assert!(e.starts_with("batch_size: "), "{e}");
        let e = error(
            Config::builder()
                .jwt_secret(SECRET)
                .http_addr_written("x")
                .jwt_algorithm_named("none"),
        );
        assert!(e.starts_with("http_addr: "), "{e}");
        let e = error(
            Config::builder()
                .jwt_secret(SECRET)
                .jwt_algorithm_named("none"),
        );
        assert_eq!(
            e,
            "jwt_algorithm: \"none\" is not one of HS256, RS256, ES256, EdDSA"
        );
    }

    #[test]
    fn an_unsupported_algorithm_is_refused_by_name() {
        let e = error(
            Config::builder()
                .jwt_secret(SECRET)
                .jwt_algorithm(Algorithm::HS384),
        );
        assert_eq!(
            e,
            "jwt_algorithm: \"HS384\" is not one of HS256, RS256, ES256, EdDSA"
        );
    }
}
