//! The command line: every flag, its environment variable and its default, and
//! how each subcommand's flags become the library's typed settings.
//!
//! Parsing (clap) catches malformed values; the library's builders then check what
//! only makes sense together, and name a refused setting by its flag and variable
//! ([`FLAGS`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
#[cfg(feature = "tools")]
use waitroom_worker::bench::BenchOptions;
#[cfg(feature = "tools")]
use waitroom_worker::demo::{DemoError, DemoOptions};
use waitroom_worker::{
    ClientOptions, Config, ConfigError, KeyLayout, Keys, Naming, RedisBuilder, Setting,
    check_process_interval,
};
#[cfg(feature = "tools")]
use waitroom_worker::{EventId, check_session_ttl};

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 250ms, 1s, 15m, 2h)"))
}

#[derive(Debug, Parser)]
#[command(
    name = "waitroom-worker",
    version,
    about = "Admits users from a ticketing waiting room into checkout"
)]
pub(crate) struct Cli {
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
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The binary's log format (`--log-format`); the library never reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
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
pub(crate) enum Command {
    /// Run the admission worker until SIGTERM or SIGINT.
    Run(Box<RunArgs>),
    /// Queue N users for an event exactly as the API would (a load generator).
    #[cfg(feature = "tools")]
    Enqueue(EnqueueArgs),
    /// One screen per event: queue, oldest wait, slots, paused, outbox, admissions, live workers.
    Status(StatusArgs),
    /// Where one session stands: its hash, queue position, slot, deadline, outbox.
    Inspect(InspectArgs),
    /// Claim an admitted session's slot as the checkout service does (lua/claim.lua):
    /// prints claimed, already_claimed, too_late or not_admitted; exit 0 for the first
    /// two, 3 for too_late, 4 for not_admitted, 1 when it could not ask.
    Claim(ClaimArgs),
    /// Measure throughput, Redis CPU, refill latency, scaling and memory (BENCHMARKS.md).
    #[cfg(feature = "tools")]
    Bench(BenchArgs),
    /// A flash sale on this machine: private redis-server, embedded Kafka, simulated checkout.
    #[cfg(feature = "tools")]
    Demo(DemoArgs),
    /// Probe a worker's /healthz (for a container HEALTHCHECK): exit 0 on 2xx, else 1.
    Health(HealthArgs),
    // Without the `tools` feature (the production image) the tools are not in the
    // binary. Their names are still known, hidden from the help, so that asking for
    // one says why it is missing instead of "unrecognized subcommand".
    #[cfg(not(feature = "tools"))]
    #[command(hide = true, disable_help_flag = true)]
    Enqueue(NotBuilt),
    #[cfg(not(feature = "tools"))]
    #[command(hide = true, disable_help_flag = true)]
    Bench(NotBuilt),
    #[cfg(not(feature = "tools"))]
    #[command(hide = true, disable_help_flag = true)]
    Demo(NotBuilt),
}

/// The arguments of a tool this binary was built without: anything, since the
/// command is refused whatever they are.
#[cfg(not(feature = "tools"))]
#[derive(Debug, Clone, Args)]
pub(crate) struct NotBuilt {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _args: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct HealthArgs {
    /// The endpoint to GET: http://host:port/path only (no https).
    #[arg(
        long,
        env = "QUEUE_HEALTH_URL",
        default_value = "http://127.0.0.1:9090/healthz"
    )]
    pub(crate) url: String,
    /// How long the whole probe (connect, ask, read) may take.
    #[arg(long, env = "QUEUE_HEALTH_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) redis: RedisArgs,
    /// Only these events (repeatable; default: every member of `<prefix>:active_events`).
    #[arg(long = "event", value_name = "ID")]
    pub(crate) events: Vec<String>,
    /// Capacity shown for events without a `max_concurrent` override.
    #[arg(long, env = "QUEUE_DEFAULT_MAX_CONCURRENT", default_value_t = 100)]
    pub(crate) max_concurrent: u64,
    /// Accepted for compatibility, unused: each heartbeat carries its own period and
    /// expiry, so liveness needs no interval here.
    #[arg(long, env = "QUEUE_PROCESS_INTERVAL", default_value = "1s", value_parser = duration)]
    pub(crate) process_interval: Duration,
    /// The workers' max unpublished age: an event whose oldest unpublished admission
    /// is older shows as held (publishing stalled).
    #[arg(long, env = "QUEUE_MAX_UNPUBLISHED_AGE", default_value = "30s", value_parser = duration)]
    pub(crate) max_unpublished_age: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct InspectArgs {
    #[command(flatten)]
    pub(crate) redis: RedisArgs,
    /// The session id.
    pub(crate) session: String,
    /// The event (needed with the cluster layout; else read from the session hash).
    #[arg(long)]
    pub(crate) event: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print the whole checkout token (a live credential); by default only its
    /// first characters are shown, in text and JSON alike.
    #[arg(long)]
    pub(crate) show_token: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ClaimArgs {
    #[command(flatten)]
    pub(crate) redis: RedisArgs,
    /// The event the session was admitted to.
    #[arg(long)]
    pub(crate) event: String,
    /// The session id.
    pub(crate) session: String,
}

#[cfg(feature = "tools")]
#[derive(Debug, Clone, Args)]
pub(crate) struct EnqueueArgs {
    #[command(flatten)]
    pub(crate) redis: RedisArgs,
    /// The event to queue users for (also added to `<prefix>:active_events`).
    #[arg(long)]
    pub(crate) event: String,
    /// How many users.
    #[arg(long, default_value_t = 1000)]
    pub(crate) users: usize,
    /// TTL of the session hashes.
    #[arg(long, env = "QUEUE_SESSION_TTL", default_value = "2h", value_parser = duration)]
    pub(crate) session_ttl: Duration,
}

/// Where Redis is and how its keys are named; shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub(crate) struct RedisArgs {
    /// Redis URL (redis:// or rediss://; a password in it is never logged).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub(crate) redis_url: String,
    /// Redis Cluster seed nodes, comma-separated URLs; takes precedence over
    /// --redis-url, and implies --key-layout cluster.
    #[arg(long, env = "REDIS_CLUSTER_URLS")]
    pub(crate) redis_cluster: Option<String>,
    /// Sentinels to ask where the master is (comma-separated `redis://[:password@]host:port`);
    /// take precedence over --redis-url, and the worker follows failovers by itself.
    #[arg(long, env = "REDIS_SENTINEL_URLS")]
    pub(crate) redis_sentinel: Option<String>,
    /// The master's name in Sentinel.
    #[arg(long, env = "REDIS_SENTINEL_MASTER", default_value = "mymaster")]
    pub(crate) redis_sentinel_master: String,
    /// The master's password under Sentinel (the sentinels' own goes in their URLs).
    #[arg(long, env = "REDIS_SENTINEL_MASTER_PASSWORD", hide_env_values = true)]
    pub(crate) redis_sentinel_master_password: Option<String>,
    /// PEM CA certificate(s) that sign the server's certificate, for rediss://
    /// (default: the system's trust store).
    #[arg(long, env = "REDIS_TLS_CA")]
    pub(crate) redis_tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a server that checks clients (with --redis-tls-key).
    #[arg(long, env = "REDIS_TLS_CERT")]
    pub(crate) redis_tls_cert: Option<PathBuf>,
    /// PEM PKCS#8 private key of --redis-tls-cert.
    #[arg(long, env = "REDIS_TLS_KEY")]
    pub(crate) redis_tls_key: Option<PathBuf>,
    /// Prefix of every key.
    #[arg(long, env = "QUEUE_KEY_PREFIX", default_value = "waitroom")]
    pub(crate) key_prefix: String,
    /// Key layout: `default`, or `cluster` (every key of an event in one hash slot).
    /// Default: `cluster` with --redis-cluster, `default` otherwise.
    #[arg(long, env = "QUEUE_KEY_LAYOUT")]
    pub(crate) key_layout: Option<KeyLayout>,
    /// How long a Redis command may take before it counts as failed.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub(crate) redis_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) redis: RedisArgs,

    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub(crate) kafka_brokers: String,
    /// Extra librdkafka setting, repeatable (e.g. security.protocol=SASL_SSL); wins
    /// over the same key in --kafka-config-file.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE", value_parser = ClientOptions::parse_pair)]
    pub(crate) kafka_config: Vec<(String, String)>,
    /// File of librdkafka settings, one KEY=VALUE per line (`#` comments), for the
    /// ones that are secrets (sasl.password): not on the command line, where `ps`
    /// shows them.
    #[arg(long, env = "KAFKA_CONFIG_FILE")]
    pub(crate) kafka_config_file: Option<PathBuf>,
    /// Topic of the admission messages.
    #[arg(long, env = "QUEUE_READY_TOPIC", default_value = "QUEUE_READY")]
    pub(crate) ready_topic: String,
    /// Replicas that must hold an admission round (Redis WAIT) before its tokens and
    /// QUEUE_READY leave the worker, and a release before its completion is
    /// committed; 0: no wait. Recommended 1 under Sentinel.
    #[arg(long, env = "QUEUE_REPLICA_ACKS", default_value_t = 0)]
    pub(crate) replica_acks: u64,
    /// Longest wait for those replicas; short of them nothing is published yet (the
    /// outbox keeps it and retries).
    #[arg(long, env = "QUEUE_REPLICA_ACK_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub(crate) replica_ack_timeout: Duration,
    /// After the worker sees a new Redis master (its run id changed), it admits
    /// nobody for this long; 0s: no hold.
    #[arg(long, env = "QUEUE_FAILOVER_HOLD", default_value = "5s", value_parser = duration)]
    pub(crate) failover_hold: Duration,
    /// Topic of the sell-out announcements (an event's `stock` reached 0).
    #[arg(long, env = "QUEUE_SOLD_OUT_TOPIC", default_value = "EVENT_SOLD_OUT")]
    pub(crate) sold_out_topic: String,
    /// How long Kafka may take to acknowledge a message before it is retried (message.timeout.ms).
    #[arg(long, env = "QUEUE_PUBLISH_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub(crate) publish_timeout: Duration,

    /// Topic of the checkout service's completion messages.
    #[arg(
        long,
        env = "QUEUE_COMPLETED_TOPIC",
        default_value = "CHECKOUT_COMPLETED"
    )]
    pub(crate) completed_topic: String,
    /// Consumer group of the completion consumer (shared by the replicas).
    #[arg(long, env = "QUEUE_CONSUMER_GROUP", default_value = "waitroom-worker")]
    pub(crate) consumer_group: String,
    /// Where completion messages that cannot be used are forwarded (off when unset).
    #[arg(long, env = "QUEUE_DEAD_LETTER_TOPIC")]
    pub(crate) dead_letter_topic: Option<String>,
    /// Longest a broker may hold a fetch open (fetch.wait.max.ms); small = fast refill.
    #[arg(long, env = "QUEUE_CONSUMER_FETCH_WAIT", default_value = "10ms", value_parser = duration)]
    pub(crate) consumer_fetch_wait: Duration,
    /// How soon a dead replica's partitions move to the others (session.timeout.ms).
    #[arg(long, env = "QUEUE_CONSUMER_SESSION_TIMEOUT", default_value = "6s", value_parser = duration)]
    pub(crate) consumer_session_timeout: Duration,

    /// Address of the HTTP endpoint (/healthz, /readyz, /status, /metrics); `off` disables it.
    #[arg(long, env = "QUEUE_HTTP_ADDR", default_value = "127.0.0.1:9090")]
    pub(crate) http_addr: String,
    /// This worker's id in heartbeats (default `<host>-<pid>`).
    #[arg(long, env = "QUEUE_WORKER_ID")]
    pub(crate) worker_id: Option<String>,
    /// Share the events among the live replicas: each passes (reaper, outbox claim,
    /// admit) only the events it owns, and takes over a dead replica's within a few
    /// intervals. `false`: this replica passes every event (as before issue 14).
    #[arg(long, env = "QUEUE_EVENT_OWNERSHIP", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub(crate) event_ownership: bool,

    /// Event to serve, repeatable; `<prefix>:active_events` is read every cycle as well.
    #[arg(long = "event", value_name = "ID")]
    pub(crate) events: Vec<String>,
    /// Time between admission cycles.
    #[arg(long, env = "QUEUE_PROCESS_INTERVAL", default_value = "1s", value_parser = duration)]
    pub(crate) process_interval: Duration,
    /// Users in checkout per event, unless the event's config hash says otherwise.
    #[arg(long, env = "QUEUE_DEFAULT_MAX_CONCURRENT", default_value_t = 100)]
    pub(crate) max_concurrent: u64,
    /// Users admitted per cycle per event, unless the event's config hash says otherwise.
    #[arg(long, env = "QUEUE_DEFAULT_RELEASE_RATE", default_value_t = 10)]
    pub(crate) batch_size: u64,
    /// TTL given to a session hash on every state change.
    #[arg(long, env = "QUEUE_SESSION_TTL", default_value = "2h", value_parser = duration)]
    pub(crate) session_ttl: Duration,
    /// How long an admitted user holds the slot; the token expires at the same instant.
    #[arg(long, env = "QUEUE_CHECKOUT_WINDOW", default_value = "15m", value_parser = duration)]
    pub(crate) checkout_window: Duration,
    /// An admitted user must claim the slot within this (lua/claim.lua, `claim`), or it
    /// comes back as a no-show; 0s: off. The config hash's `claim_window_ms` overrides.
    #[arg(long, env = "QUEUE_CLAIM_WINDOW", default_value = "0s", value_parser = duration)]
    pub(crate) claim_window: Duration,
    /// A waiter whose `last_seen` is older than this when its turn comes has left and
    /// is skipped (status left_queue); 0s: off. The config hash's
    /// `waiter_idle_timeout_ms` overrides.
    #[arg(long, env = "QUEUE_WAITER_IDLE_TIMEOUT", default_value = "0s", value_parser = duration)]
    pub(crate) waiter_idle_timeout: Duration,
    /// The checkout-health valve for events whose config hash sets no `adaptive`.
    #[arg(long, env = "QUEUE_ADAPTIVE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub(crate) adaptive: bool,
    /// The valve's floor, percent of the capacity, for events whose config hash sets
    /// no `min_concurrent`.
    #[arg(long, env = "QUEUE_MIN_CONCURRENT_PERCENT", default_value_t = 10)]
    pub(crate) min_concurrent_percent: u64,
    /// The valve steps at most once per this much time.
    #[arg(long, env = "QUEUE_VALVE_INTERVAL", default_value = "5s", value_parser = duration)]
    pub(crate) valve_interval: Duration,
    /// The valve cuts when more than this share of a step's completions failed.
    #[arg(long, env = "QUEUE_VALVE_FAIL_THRESHOLD", default_value_t = 0.2)]
    pub(crate) valve_fail_threshold: f64,
    /// The valve cuts when a step's mean checkout time exceeds its baseline times this.
    #[arg(long, env = "QUEUE_VALVE_SLOW_FACTOR", default_value_t = 2.0)]
    pub(crate) valve_slow_factor: f64,
    /// Completions a valve step needs to be judged (fewer: it holds).
    #[arg(long, env = "QUEUE_VALVE_MIN_COMPLETIONS", default_value_t = 5)]
    pub(crate) valve_min_completions: u64,
    /// A valve cut multiplies the effective capacity by this.
    #[arg(long, env = "QUEUE_VALVE_CUT", default_value_t = 0.5)]
    pub(crate) valve_cut: f64,
    /// A healthy valve step adds this share of max_concurrent (at least one slot).
    #[arg(long, env = "QUEUE_VALVE_STEP_UP", default_value_t = 0.1)]
    pub(crate) valve_step_up: f64,

    /// `iss` of the checkout tokens.
    #[arg(long, env = "QUEUE_JWT_ISSUER", default_value = "waitroom")]
    pub(crate) jwt_issuer: String,
    /// `aud` of the checkout tokens.
    #[arg(long, env = "QUEUE_JWT_AUDIENCE", default_value = "checkout")]
    pub(crate) jwt_audience: String,
    /// Signing algorithm: HS256, RS256, ES256 or EdDSA.
    #[arg(long, env = "QUEUE_JWT_ALGORITHM", default_value = "HS256")]
    pub(crate) jwt_algorithm: String,
    /// HS256 secret (at least 32 bytes). Prefer the environment or a file: a flag shows in `ps`.
    #[arg(long, env = "QUEUE_JWT_SECRET", hide_env_values = true)]
    pub(crate) jwt_secret: Option<String>,
    /// File holding the HS256 secret (trailing newline ignored).
    #[arg(long, env = "QUEUE_JWT_SECRET_FILE")]
    pub(crate) jwt_secret_file: Option<PathBuf>,
    /// PEM private key for RS256, ES256 or EdDSA.
    #[arg(long, env = "QUEUE_JWT_PRIVATE_KEY_FILE")]
    pub(crate) jwt_private_key_file: Option<PathBuf>,
    /// `kid` header naming the key, for verifiers that rotate keys.
    #[arg(long, env = "QUEUE_JWT_KID")]
    pub(crate) jwt_kid: Option<String>,

    /// Tries of a failed Redis operation within a cycle.
    #[arg(long, env = "QUEUE_RETRY_ATTEMPTS", default_value_t = 3)]
    pub(crate) retry_attempts: u32,
    /// First retry delay; doubles on each retry.
    #[arg(long, env = "QUEUE_RETRY_DELAY", default_value = "1s", value_parser = duration)]
    pub(crate) retry_delay: Duration,
    /// Longest delay between two publish attempts of one outbox entry.
    #[arg(long, env = "QUEUE_RETRY_MAX_DELAY", default_value = "30s", value_parser = duration)]
    pub(crate) retry_max_delay: Duration,
    /// How long a graceful shutdown may take before the process exits anyway.
    #[arg(long, env = "QUEUE_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub(crate) shutdown_timeout: Duration,
    /// Longest one cycle may run; what is left is picked up by the next one.
    #[arg(long, env = "QUEUE_MAX_PROCESSING_TIME", default_value = "30s", value_parser = duration)]
    pub(crate) max_processing_time: Duration,
    /// How long an outbox entry stays with the worker publishing it before another
    /// replica may take it over; must exceed the publish timeout.
    #[arg(long, env = "QUEUE_OUTBOX_LEASE", default_value = "30s", value_parser = duration)]
    pub(crate) outbox_lease: Duration,
    /// Most outbox entries one event drains per cycle.
    #[arg(long, env = "QUEUE_OUTBOX_BATCH", default_value_t = 1000)]
    pub(crate) outbox_batch: u64,
    /// Backpressure: an event stops admitting while its oldest admission whose
    /// QUEUE_READY Kafka has not acknowledged is older than this, and resumes by
    /// itself once publishing catches up. Must be shorter than the checkout window.
    /// Default: 30s, or a quarter of the checkout window when that is shorter.
    #[arg(long, env = "QUEUE_MAX_UNPUBLISHED_AGE", value_parser = duration)]
    pub(crate) max_unpublished_age: Option<Duration>,
}

#[cfg(feature = "tools")]
#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {
    /// Use this Redis instead of a private redis-server (its data is left alone:
    /// every key is under a `bench-*` prefix).
    #[arg(long)]
    pub(crate) redis_url: Option<String>,
    /// Use these Kafka brokers instead of the embedded one.
    #[arg(long)]
    pub(crate) kafka_brokers: Option<String>,
    /// Users per throughput run.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) users: usize,
    /// Queue length of the "big queue" cycle-cost run.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) big_queue: usize,
    /// Most events of the full-pass run (also run with 1 and 1000).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) events: usize,
    /// Replicas of the replica section (on the largest event count).
    #[arg(long, default_value_t = 8)]
    pub(crate) replicas: usize,
    /// Refill latency samples.
    #[arg(long, default_value_t = 200)]
    pub(crate) samples: usize,
    /// A tiny run (CI smoke test): few users, small queues, few samples.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Give the private redis-server a replica (the baseline for --replica-acks).
    #[arg(long)]
    pub(crate) with_replica: bool,
    /// Run the workers with --replica-acks N (a replica is started for the private
    /// redis-server).
    #[arg(long, default_value_t = 0)]
    pub(crate) replica_acks: u64,
    /// Run one section only: `cluster` (the full pass at 1,000 and --events events,
    /// on one server and on a three-master cluster), or `admission` (sections 1-3:
    /// the whole path, the admit script alone, the minimal reference, the naive flow).
    #[arg(long, value_parser = ["cluster", "admission"])]
    pub(crate) only: Option<String>,
    /// Run only the section of replicas sharing the events (issue 14): Redis CPU
    /// per second, steady round and takeover for each event count and replica count.
    #[arg(long)]
    pub(crate) sharing: bool,
    /// Event counts of `--sharing`.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    pub(crate) sharing_events: Vec<usize>,
    /// Replica counts of `--sharing`.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub(crate) sharing_replicas: Vec<usize>,
    /// One more `--sharing` run with this many events (0: none) ...
    #[arg(long, default_value_t = 100_000)]
    pub(crate) sharing_big_events: usize,
    /// ... and this many replicas.
    #[arg(long, default_value_t = 4)]
    pub(crate) sharing_big_replicas: usize,
    /// How long `--sharing` measures Redis CPU per run: 30 intervals of 1 s hold
    /// each replica's complete pass (every 30th) once.
    #[arg(long, default_value = "30s", value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
    pub(crate) sharing_window: Duration,
    /// `--sharing` with every replica passing every event (the cost before issue 14).
    #[arg(long)]
    pub(crate) sharing_off: bool,
}

#[cfg(feature = "tools")]
#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Users joining the queue.
    #[arg(long, default_value_t = 3000)]
    pub(crate) users: usize,
    /// Checkout slots.
    #[arg(long, default_value_t = 100)]
    pub(crate) capacity: u64,
    /// Users admitted per cycle.
    #[arg(long, default_value_t = 50)]
    pub(crate) batch: u64,
    /// Simulated checkout time: the longest (each user takes a random time up to
    /// this), or the mean with --checkout-distribution around.
    #[arg(long, default_value = "400ms", value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
    pub(crate) checkout_time: Duration,
    /// How each checkout time is drawn: up-to (uniform in [0, --checkout-time]) or
    /// around (uniform in [0.5, 1.5] x --checkout-time).
    #[arg(long, default_value = "up-to", value_name = "up-to|around", value_parser = |s: &str| s.parse::<waitroom_worker::demo::CheckoutDistribution>())]
    pub(crate) checkout_distribution: waitroom_worker::demo::CheckoutDistribution,
    /// Share of admitted users who walk away without completing (0..1); with a claim
    /// window they claim first.
    #[arg(long, default_value_t = 0.05)]
    pub(crate) abandon_rate: f64,
    /// Share of admitted users who never open checkout (0..1; leavers aside): with a
    /// claim window their slots come back when it ends, else at the checkout window.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) no_show_rate: f64,
    /// Share of waiters who close the waiting page while waiting (0..1), at a random
    /// point of the first half of their way through the queue; the simulated API then
    /// stops writing their last_seen.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) leave_rate: f64,
    /// Checkout window: how long an abandoned slot stays taken.
    #[arg(long, default_value = "5s", value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
    pub(crate) checkout_window: Duration,
    /// The worker's claim window (0s: off): present users claim their slot before
    /// checking out; an unclaimed slot comes back as a no-show.
    #[arg(long, default_value = "0s", value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
    pub(crate) claim_window: Duration,
    /// The worker's waiter idle timeout (0s: off): a waiter not seen for this long at
    /// its turn is skipped. The simulated API writes last_seen every 250ms for the
    /// open pages when this or --leave-rate is set.
    #[arg(long, default_value = "0s", value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
    pub(crate) waiter_idle_timeout: Duration,
    /// Show the worker's logs (RUST_LOG, default info) instead of warnings only.
    #[arg(long)]
    pub(crate) verbose: bool,
    /// Admission interval.
    #[arg(long, default_value = "100ms", value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
    pub(crate) interval: Duration,
    /// Cap admissions at N a minute (the event's `new_users_per_minute`), to watch a
    /// smooth outflow: the progress lines show admissions per second.
    #[arg(long, value_name = "PER_MINUTE")]
    pub(crate) rate: Option<u64>,
    /// Measure the wait estimate: from --probe-after on, every --probe-every, take
    /// the waiters at --probe-positions (queue ranks), predict position x the stats
    /// hash's wait_ms_per_position, and compare with when each is admitted (a table
    /// and the |error| per position at the end; probes on leavers are left out).
    #[arg(long)]
    pub(crate) wait_probe: bool,
    /// Queue positions probed by --wait-probe (1-based ranks, comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000")]
    pub(crate) probe_positions: Vec<u64>,
    /// First --wait-probe after the sale opened.
    #[arg(long, default_value = "30s", value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
    pub(crate) probe_after: Duration,
    /// Time between --wait-probe probes.
    #[arg(long, default_value = "10s", value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
    pub(crate) probe_every: Duration,
    /// Tickets for sale (the event's `stock`); each completed checkout buys one
    /// (`quantity` 1). When they are sold out the worker admits nobody more and
    /// announces EVENT_SOLD_OUT; the demo shows that message (read from the embedded
    /// Kafka) and ends, the waiters left sold out before their turn. The progress
    /// lines show the stock.
    #[arg(long, value_name = "N")]
    pub(crate) stock: Option<u64>,
    /// Share of completions that fail (outcome `failed`) during --fail-phase, 0..1
    /// (1: all). Turns the worker's checkout-health valve on (`adaptive`, a step
    /// every 1s): the progress lines show the effective capacity and the valve's
    /// reason falling while checkout fails and climbing back after.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub(crate) fail_rate: f64,
    /// When completions fail, after the sale opened: FROM..TO, e.g. 20s..40s
    /// (default 5s..15s); needs --fail-rate.
    #[arg(long, value_name = "FROM..TO", value_parser = |s: &str| s.parse::<waitroom_worker::demo::FailPhase>())]
    pub(crate) fail_phase: Option<waitroom_worker::demo::FailPhase>,
}

/// Names the settings by their flag and environment variable, as every message
/// of the command line always has: `--batch-size (QUEUE_DEFAULT_RELEASE_RATE)`;
/// a setting mentioned in another's reason by its flag alone.
pub(crate) struct Flags;

/// The command line's [`Naming`].
pub(crate) static FLAGS: Flags = Flags;

impl Naming for Flags {
    fn name(&self, setting: Setting) -> &'static str {
        use Setting::*;
        match setting {
            RedisUrl => "--redis-url (REDIS_URL)",
            RedisCluster => "--redis-cluster (REDIS_CLUSTER_URLS)",
            RedisTls => "--redis-tls-ca/--redis-tls-cert/--redis-tls-key",
            RedisTlsCa => "--redis-tls-ca (REDIS_TLS_CA)",
            RedisTlsCert => "--redis-tls-cert (REDIS_TLS_CERT)",
            RedisTlsKey => "--redis-tls-key (REDIS_TLS_KEY)",
            RedisTlsClient => "--redis-tls-cert/--redis-tls-key",
            KeyPrefix => "--key-prefix (QUEUE_KEY_PREFIX)",
            KeyLayout => "--key-layout (QUEUE_KEY_LAYOUT)",
            RedisTimeout => "--redis-timeout (REDIS_TIMEOUT)",
            KafkaBrokers => "--kafka-brokers (KAFKA_BROKERS)",
            KafkaConfigFile => "--kafka-config-file (KAFKA_CONFIG_FILE)",
            ReadyTopic => "--ready-topic (QUEUE_READY_TOPIC)",
            RedisSentinel => "--redis-sentinel (REDIS_SENTINEL_URLS)",
            RedisSentinelMaster => "--redis-sentinel-master (REDIS_SENTINEL_MASTER)",
            SoldOutTopic => "--sold-out-topic (QUEUE_SOLD_OUT_TOPIC)",
            ReplicaAcks => "--replica-acks (QUEUE_REPLICA_ACKS)",
            ReplicaAckTimeout => "--replica-ack-timeout (QUEUE_REPLICA_ACK_TIMEOUT)",
            FailoverHold => "--failover-hold (QUEUE_FAILOVER_HOLD)",
            Adaptive => "--adaptive (QUEUE_ADAPTIVE)",
            MinConcurrentPercent => "--min-concurrent-percent (QUEUE_MIN_CONCURRENT_PERCENT)",
            ValveInterval => "--valve-interval (QUEUE_VALVE_INTERVAL)",
            ValveFailThreshold => "--valve-fail-threshold (QUEUE_VALVE_FAIL_THRESHOLD)",
            ValveSlowFactor => "--valve-slow-factor (QUEUE_VALVE_SLOW_FACTOR)",
            ValveMinCompletions => "--valve-min-completions (QUEUE_VALVE_MIN_COMPLETIONS)",
            ValveCut => "--valve-cut (QUEUE_VALVE_CUT)",
            ValveStepUp => "--valve-step-up (QUEUE_VALVE_STEP_UP)",
            PublishTimeout => "--publish-timeout (QUEUE_PUBLISH_TIMEOUT)",
            CompletedTopic => "--completed-topic (QUEUE_COMPLETED_TOPIC)",
            ConsumerGroup => "--consumer-group (QUEUE_CONSUMER_GROUP)",
            ConsumerFetchWait => "--consumer-fetch-wait (QUEUE_CONSUMER_FETCH_WAIT)",
            ConsumerSessionTimeout => "--consumer-session-timeout (QUEUE_CONSUMER_SESSION_TIMEOUT)",
            HttpAddr => "--http-addr (QUEUE_HTTP_ADDR)",
            WorkerId => "--worker-id (QUEUE_WORKER_ID)",
            Event => "--event",
            ProcessInterval => "--process-interval (QUEUE_PROCESS_INTERVAL)",
            MaxConcurrent => "--max-concurrent (QUEUE_DEFAULT_MAX_CONCURRENT)",
            BatchSize => "--batch-size (QUEUE_DEFAULT_RELEASE_RATE)",
            SessionTtl => "--session-ttl (QUEUE_SESSION_TTL)",
            CheckoutWindow => "--checkout-window (QUEUE_CHECKOUT_WINDOW)",
            ClaimWindow => "--claim-window (QUEUE_CLAIM_WINDOW)",
            WaiterIdleTimeout => "--waiter-idle-timeout (QUEUE_WAITER_IDLE_TIMEOUT)",
            JwtIssuerAudience => "--jwt-issuer / --jwt-audience",
            JwtAlgorithm => "--jwt-algorithm (QUEUE_JWT_ALGORITHM)",
            JwtSecret => "QUEUE_JWT_SECRET",
            JwtSecretFile => "--jwt-secret-file (QUEUE_JWT_SECRET_FILE)",
            JwtSecretSource => "QUEUE_JWT_SECRET / --jwt-secret-file",
            JwtPrivateKeyFile => "--jwt-private-key-file (QUEUE_JWT_PRIVATE_KEY_FILE)",
            RetryAttempts => "--retry-attempts (QUEUE_RETRY_ATTEMPTS)",
            RetryDelay => "--retry-delay (QUEUE_RETRY_DELAY)",
            RetryMaxDelay => "--retry-max-delay (QUEUE_RETRY_MAX_DELAY)",
            ShutdownTimeout => "--shutdown-timeout (QUEUE_SHUTDOWN_TIMEOUT)",
            MaxProcessingTime => "--max-processing-time (QUEUE_MAX_PROCESSING_TIME)",
            OutboxLease => "--outbox-lease (QUEUE_OUTBOX_LEASE)",
            OutboxBatch => "--outbox-batch (QUEUE_OUTBOX_BATCH)",
            MaxUnpublishedAge => "--max-unpublished-age (QUEUE_MAX_UNPUBLISHED_AGE)",
        }
    }

    /// The flag alone: `--retry-delay`.
    fn mention(&self, setting: Setting) -> &'static str {
        let name = self.name(setting);
        name.split_once(" (").map_or(name, |(flag, _)| flag)
    }
}

#[cfg(feature = "tools")]
fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

impl RedisArgs {
    /// The flags as the library's Redis settings, refusals named by flag.
    pub(crate) fn builder(&self) -> RedisBuilder {
        let mut b = RedisBuilder::default()
            .naming(&FLAGS)
            .url(&self.redis_url)
            .key_prefix(&self.key_prefix)
            .timeout(self.redis_timeout);
        if let Some(list) = &self.redis_cluster {
            b = b.cluster(list.split(','));
        }
        if let Some(list) = &self.redis_sentinel {
            b = b
                .sentinel(list.split(','))
                .sentinel_master(&self.redis_sentinel_master);
        }
        if let Some(p) = &self.redis_sentinel_master_password {
            b = b.sentinel_master_password(p);
        }
        if let Some(p) = &self.redis_tls_ca {
            b = b.tls_ca(p);
        }
        if let Some(p) = &self.redis_tls_cert {
            b = b.tls_cert(p);
        }
        if let Some(p) = &self.redis_tls_key {
            b = b.tls_key(p);
        }
        if let Some(l) = self.key_layout {
            b = b.key_layout(l);
        }
        b
    }

    /// The key names: prefix and layout. The URLs and TLS files are checked by
    /// [`RedisArgs::endpoint`], which every connection goes through.
    pub(crate) fn keys(&self) -> Result<Keys, ConfigError> {
        self.builder().keys()
    }

    /// Where Redis is: the cluster's seed nodes when given, else the one URL.
    pub(crate) fn endpoint(&self) -> Result<waitroom_worker::store::Endpoint, ConfigError> {
        self.builder().endpoint()
    }
}

impl StatusArgs {
    /// Check the flags; the key names (with the Redis settings checked).
    pub(crate) fn keys(&self) -> Result<Keys, ConfigError> {
        check_process_interval(self.process_interval, &FLAGS)?;
        self.redis.keys()
    }
}

#[cfg(feature = "tools")]
impl EnqueueArgs {
    /// Check the flags; the key names (with the Redis settings checked).
    pub(crate) fn keys(&self) -> Result<Keys, ConfigError> {
        check_session_ttl(self.session_ttl, &FLAGS)?;
        if !EventId::is_valid(&self.event) {
            return Err(invalid("--event", "must be non-empty, without braces"));
        }
        self.redis.keys()
    }
}

impl RunArgs {
    /// The flags as the library's settings, checked; a refusal names the flag and
    /// its variable.
    pub(crate) fn config(&self) -> Result<Config, ConfigError> {
        let mut b = Config::builder()
            .naming(&FLAGS)
            .redis(self.redis.builder())
            .kafka_brokers(&self.kafka_brokers)
            .ready_topic(&self.ready_topic)
            .sold_out_topic(&self.sold_out_topic)
            .replica_acks(self.replica_acks)
            .replica_ack_timeout(self.replica_ack_timeout)
            .failover_hold(self.failover_hold)
            .adaptive(self.adaptive)
            .min_concurrent_percent(self.min_concurrent_percent)
            .valve_interval(self.valve_interval)
            .valve_fail_threshold(self.valve_fail_threshold)
            .valve_slow_factor(self.valve_slow_factor)
            .valve_min_completions(self.valve_min_completions)
            .valve_cut(self.valve_cut)
            .valve_step_up(self.valve_step_up)
            .publish_timeout(self.publish_timeout)
            .completed_topic(&self.completed_topic)
            .consumer_group(&self.consumer_group)
            .consumer_fetch_wait(self.consumer_fetch_wait)
            .consumer_session_timeout(self.consumer_session_timeout)
            .http_addr_written(&self.http_addr)
            .process_interval(self.process_interval)
            .event_ownership(self.event_ownership)
            .max_concurrent(self.max_concurrent)
            .batch_size(self.batch_size)
            .session_ttl(self.session_ttl)
            .checkout_window(self.checkout_window)
            .claim_window(self.claim_window)
            .waiter_idle_timeout(self.waiter_idle_timeout)
            .jwt_issuer(&self.jwt_issuer)
            .jwt_audience(&self.jwt_audience)
            .jwt_algorithm_named(&self.jwt_algorithm)
            .retry_attempts(self.retry_attempts)
            .retry_delay(self.retry_delay)
            .retry_max_delay(self.retry_max_delay)
            .shutdown_timeout(self.shutdown_timeout)
            .max_processing_time(self.max_processing_time)
            .outbox_lease(self.outbox_lease)
            .outbox_batch(self.outbox_batch);
        for (k, v) in &self.kafka_config {
            b = b.kafka_option(k, v);
        }
        if let Some(p) = &self.kafka_config_file {
            b = b.kafka_config_file(p);
        }
        if let Some(t) = &self.dead_letter_topic {
            b = b.dead_letter_topic(t);
        }
        if let Some(id) = &self.worker_id {
            b = b.worker_id(id);
        }
        for e in &self.events {
            b = b.event(e);
        }
        if let Some(s) = &self.jwt_secret {
            b = b.jwt_secret(s);
        }
        if let Some(p) = &self.jwt_secret_file {
            b = b.jwt_secret_file(p);
        }
        if let Some(p) = &self.jwt_private_key_file {
            b = b.jwt_private_key_file(p);
        }
        if let Some(k) = &self.jwt_kid {
            b = b.jwt_kid(k);
        }
        if let Some(d) = self.max_unpublished_age {
            b = b.max_unpublished_age(d);
        }
        b.build()
    }
}

#[cfg(feature = "tools")]
impl BenchArgs {
    /// What the bench measures.
    pub(crate) fn options(&self) -> BenchOptions {
        BenchOptions {
            redis_url: self.redis_url.clone(),
            kafka_brokers: self.kafka_brokers.clone(),
            users: self.users,
            big_queue: self.big_queue,
            events: self.events,
            replicas: self.replicas,
            samples: self.samples,
            quick: self.quick,
            json: self.json,
            with_replica: self.with_replica,
            replica_acks: self.replica_acks,
            only_cluster: self.only.as_deref() == Some("cluster"),
            only_admission: self.only.as_deref() == Some("admission"),
        }
    }

    /// What `--sharing` measures.
    pub(crate) fn sharing_options(&self) -> waitroom_worker::bench::replicas::SharingOptions {
        waitroom_worker::bench::replicas::SharingOptions {
            redis_url: self.redis_url.clone(),
            kafka_brokers: self.kafka_brokers.clone(),
            events: self.sharing_events.clone(),
            replicas: self.sharing_replicas.clone(),
            big_events: self.sharing_big_events,
            big_replicas: self.sharing_big_replicas,
            window: self.sharing_window,
            ownership: !self.sharing_off,
            json: self.json,
            ..Default::default()
        }
    }
}

#[cfg(feature = "tools")]
impl DemoArgs {
    /// The sale the demo plays, checked.
    pub(crate) fn options(&self) -> Result<DemoOptions, DemoError> {
        let share = |r: f64| (0.0..1.0).contains(&r);
        if self.users == 0
            || self.capacity == 0
            || self.batch == 0
            || !share(self.abandon_rate)
            || !share(self.no_show_rate)
            || !share(self.leave_rate)
        {
            return Err(DemoError::Setting(
                "--users, --capacity and --batch must be above 0, --abandon-rate, \
                 --no-show-rate and --leave-rate in [0, 1)"
                    .into(),
            ));
        }
        if self.wait_probe && (self.probe_positions.is_empty() || self.probe_positions.contains(&0))
        {
            return Err(DemoError::Setting(
                "--probe-positions must be queue ranks from 1".into(),
            ));
        }
        let second = Duration::from_secs(1);
        if (!self.claim_window.is_zero() && self.claim_window < second)
            || self.claim_window > self.checkout_window
            || (!self.waiter_idle_timeout.is_zero() && self.waiter_idle_timeout < second)
        {
            return Err(DemoError::Setting(
                "--claim-window must be 0s (off) or from 1s to --checkout-window, \
                 --waiter-idle-timeout 0s (off) or at least 1s"
                    .into(),
            ));
        }
        if self.wait_probe && self.probe_every.is_zero() {
            return Err(DemoError::Setting("--probe-every must be above 0".into()));
        }
        if self.stock == Some(0) {
            return Err(DemoError::Setting("--stock must be above 0".into()));
        }
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err(DemoError::Setting("--fail-rate must be in [0, 1]".into()));
        }
        if self.fail_phase.is_some() && self.fail_rate == 0.0 {
            return Err(DemoError::Setting(
                "--fail-phase needs --fail-rate above 0".into(),
            ));
        }
        Ok(DemoOptions {
            users: self.users,
            capacity: self.capacity,
            batch: self.batch,
            checkout_time: self.checkout_time,
            checkout_distribution: self.checkout_distribution,
            abandon_rate: self.abandon_rate,
            no_show_rate: self.no_show_rate,
            leave_rate: self.leave_rate,
            checkout_window: self.checkout_window,
            claim_window: self.claim_window,
            waiter_idle_timeout: self.waiter_idle_timeout,
            interval: self.interval,
            rate: self.rate,
            wait_probe: self.wait_probe.then(|| waitroom_worker::demo::WaitProbe {
                positions: self.probe_positions.clone(),
                after: self.probe_after,
                every: self.probe_every,
            }),
            stock: self.stock,
            fail_rate: self.fail_rate,
            fail_phase: self.fail_phase.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use waitroom_worker::Config;
    use waitroom_worker::store::{Endpoint, TlsFiles};

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
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
        run.config()
            .map_err(|e| waitroom_worker::error_chain::chain(&e).to_string())
    }

    #[test]
    fn a_cluster_takes_precedence_and_brings_its_layout() {
        let s = parse(&["--redis-cluster", "redis://a:7000, redis://b:7001"]).unwrap();
        assert_eq!(
            s.redis.endpoint,
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
            s.redis.endpoint,
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
            s.kafka.options.0,
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
        assert!(matches!(&s.redis.endpoint, Endpoint::Single { tls, .. } if tls.ca.is_some()));
    }

    #[test]
    fn defaults_are_the_seeds() {
        let s = parse(&[]).expect("defaults are valid");
        assert_eq!(s.worker.process_interval, Duration::from_secs(1));
        assert_eq!(s.admission.max_concurrent, 100);
        assert_eq!(s.admission.batch_size, 10);
        assert_eq!(s.admission.session_ttl, Duration::from_secs(7200));
        assert_eq!(s.admission.checkout_window, Duration::from_secs(900));
        assert_eq!(s.retry.attempts, 3);
        assert_eq!(s.retry.backoff.first, Duration::from_secs(1));
        assert_eq!(s.worker.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(s.worker.max_processing_time, Duration::from_secs(30));
        assert_eq!(s.kafka.producer.topic, "QUEUE_READY");
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
        assert_eq!(s.admission.checkout_window, Duration::from_secs(24 * 3600));
        assert_eq!(s.admission.session_ttl, Duration::from_secs(720 * 3600));
        // The latest instant an admission now can compute is far from year 9999.
        let deadline = waitroom_worker::clock::deadline_ms(
            waitroom_worker::clock::now_ms(),
            s.admission.checkout_window,
        );
        assert!(deadline < waitroom_worker::clock::MAX_MS / 2);
    }

    #[test]
    fn status_and_enqueue_bound_their_durations_too() {
        let err = |args: &[&str]| -> String {
            let cli = Cli::try_parse_from(args).expect("parses");
            match cli.command {
                Command::Status(a) => a.keys().expect_err("refused").to_string(),
                #[cfg(feature = "tools")]
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
        #[cfg(feature = "tools")]
        {
            let e = err(&["w", "enqueue", "--event", "e", "--session-ttl", "31days"]);
            assert!(
                e.contains("--session-ttl") && e.contains("at most 720h"),
                "{e}"
            );
            let e = err(&["w", "enqueue", "--event", "{e}"]);
            assert!(e.contains("--event"), "{e}");
        }
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
            waitroom_worker::error_chain::chain(&run.config().expect_err("refused")).to_string();
        assert!(
            err.contains("QUEUE_JWT_SECRET") && err.contains("32"),
            "{err}"
        );
        assert!(
            !err.contains("tooshort"),
            "the secret must not be echoed: {err}"
        );
    }

    /// The flags' defaults are the builder's: `run` with no flag but the secret
    /// builds what `Config::builder()` builds.
    #[test]
    fn flag_defaults_are_the_builders() {
        let from_flags = parse(&[]).expect("defaults are valid");
        let from_builder = Config::builder()
            .jwt_secret("0123456789abcdef0123456789abcdef")
            .build()
            .expect("defaults are valid");
        assert_eq!(format!("{from_flags:?}"), format!("{from_builder:?}"));
    }

    /// The tools' flags' defaults are their options' defaults.
    #[cfg(feature = "tools")]
    #[test]
    fn tool_flag_defaults_are_the_options() {
        let cli = Cli::try_parse_from(["w", "bench"]).expect("parses");
        let Command::Bench(b) = cli.command else {
            panic!("not bench");
        };
        assert_eq!(
            format!("{:?}", b.options()),
            format!("{:?}", waitroom_worker::bench::BenchOptions::default())
        );
        let cli = Cli::try_parse_from(["w", "demo"]).expect("parses");
        let Command::Demo(d) = cli.command else {
            panic!("not demo");
        };
        assert_eq!(
            format!("{:?}", d.options().expect("valid")),
            format!("{:?}", waitroom_worker::demo::DemoOptions::default())
        );
    }

    /// Without the `tools` feature the tools' names still parse, whatever follows
    /// them (`--help` included), so that the binary can say they are not built in;
    /// the help does not list them.
    #[cfg(not(feature = "tools"))]
    #[test]
    fn tools_not_built_still_parse_and_are_hidden() {
        for args in [
            &["w", "demo", "--users", "5"][..],
            &["w", "bench", "--quick", "--help"][..],
            &["w", "enqueue", "--event", "e"][..],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            assert!(
                matches!(
                    cli.command,
                    Command::Demo(_) | Command::Bench(_) | Command::Enqueue(_)
                ),
                "{args:?}"
            );
        }
        let help = <Cli as clap::CommandFactory>::command()
            .render_help()
            .to_string();
        for tool in ["demo", "bench", "enqueue"] {
            assert!(!help.contains(tool), "{tool} in the help:\n{help}");
        }
    }
}
