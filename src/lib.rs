//! waitroom-worker: admits users from a ticketing waiting room into checkout.
//!
//! Modules are grouped in layer folders; the command line lives in the binary
//! (`src/cli/`) and builds the worker's typed settings ([`Config`]) through
//! [`ConfigBuilder`].

pub mod base;
pub mod config;
pub mod engine;
pub mod kafka;
pub mod model;
pub mod ops;
pub mod redis;
pub mod tools;

pub use base::{error_chain, log_limit, shutdown};
pub use config::{
    AdmissionConfig, Config, ConfigBuilder, ConfigError, ConsumerConfig, HttpConfig, KafkaConfig,
    Naming, OutboxConfig, ProducerConfig, RedisBuilder, RedisConfig, RetryConfig, Setting,
    WorkerConfig, check_process_interval, check_session_ttl,
};
pub use engine::worker::{EventError, StartError, Worker};
pub use engine::{completions, delivery, refill, worker};
pub use kafka::options::ClientOptions;
pub use kafka::publisher;
pub use model::keys::{KeyLayout, Keys};
pub use model::{clock, keys, outbox, token};
pub use ops::stats::{EventSnapshot, Stats};
pub use ops::{http, probe, report, stats};
pub use redis::retry::Backoff;
pub use redis::{heartbeat, redis_time, retry, scripts, store};
pub use tools::{bench, demo, embedded_kafka, enqueue, redis_server};
