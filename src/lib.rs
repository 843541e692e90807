//! waitroom-worker: admits users from a ticketing waiting room into checkout.
//!
//! The file tree is the architecture. Each folder is a layer and imports only from
//! the layers below it (`tests/layers.rs` fails the build otherwise, and on any
//! import cycle):
//!
//! | rank | layer | what it holds |
//! |---|---|---|
//! | 0 | `model/` | the domain, pure: event ids, key names, clock, outbox entry, checkout token |
//! | 0 | `base/` | what every layer may use: the shutdown signal, bounded repeated logs, error chains |
//! | 1 | `redis/` | the connection, retries, the Lua scripts (one module per `lua/` file), heartbeats, Redis's clock |
//! | 1 | `kafka/` | the producer, the QUEUE_READY message, extra librdkafka options |
//! | 2 | `config.rs` | typed, nested settings, their checks and their builder |
//! | 2 | `ops/` | what operators see: HTTP endpoints, metrics, the `status` and `inspect` views, the probe |
//! | 3 | `engine/` | the worker: start, loop and its passes, shutdown, delivery, settlement, completions, refill |
//! | 4 | `tools/` | bench, demo, load generator, and the local redis-server and Kafka they and the tests start (the `tools` feature) |
//!
//! Layers of one rank do not import each other. The command line (`src/cli/`) is
//! the binary's, above all of them: the library knows no flags.
//!
//! Everything inside is `pub(crate)`; what follows is the surface the binary, the
//! tests, the fuzz targets and the tools use, chosen here.

#![warn(unreachable_pub, missing_docs)]

mod base;
mod config;
mod engine;
mod kafka;
mod model;
mod ops;
mod redis;
#[cfg(feature = "tools")]
mod tools;

// The worker: its settings, start, run and shutdown, its figures, its key names.
pub use crate::base::shutdown;
pub use crate::config::{
    AdmissionConfig, Config, ConfigBuilder, ConfigError, ConsumerConfig, HttpConfig, KafkaConfig,
    Naming, OutboxConfig, ProducerConfig, RedisBuilder, RedisConfig, RetryConfig, Setting,
    WorkerConfig, check_process_interval, check_session_ttl,
};
pub use crate::engine::worker::{EventError, StartError, Worker};
pub use crate::kafka::options::ClientOptions;
pub use crate::model::event::{EventId, InvalidEventId};
pub use crate::model::keys::{KeyLayout, Keys};
pub use crate::ops::stats::{EventSnapshot, Stats, WaitFigures};
pub use crate::redis::retry::Backoff;

// The domain, pure: time, outbox entries, checkout tokens.
pub use crate::model::{clock, outbox, token};

// Redis as the worker speaks it: the connection, and the Lua scripts one module
// each (the integration tests and fuzz targets call them directly).
pub use crate::redis::{scripts, sentinel, store};

/// Kafka as the worker speaks it: the QUEUE_READY producer and message.
pub mod publisher {
    pub use crate::kafka::publisher::{
        MESSAGE_ID_HEADER, PublishError, Publisher, ReadyMessage, SoldOutMessage,
    };
}

/// The checkout service's completion message, as the worker reads it.
pub mod completions {
    pub use crate::engine::completions::{Completion, MAX_QUANTITY, Rejected, parse};
    pub use crate::redis::scripts::release::Outcome;
}

// Operator commands: the `status` and `inspect` views, the probe, the logs.
pub use crate::base::error_chain;
pub use crate::ops::report;

/// Which replica owns which event (issue 14): the same function every replica
/// uses, for tests and tools that check or predict it.
pub mod ownership {
    pub use crate::model::ownership::{owner, owner_window};
}

/// `waitroom-worker health`: the container's probe of `/healthz`.
pub mod probe {
    pub use crate::ops::probe::{ProbeError, check};
}

/// Repeated warnings written once, then counted.
pub mod log_limit {
    pub use crate::base::log_limit::flush;
}

// Tools (the `tools` feature, on by default): the bench, the demo, the load
// generator, and the local servers they and the tests start.
#[cfg(feature = "tools")]
pub use crate::tools::{bench, demo, embedded_kafka, enqueue, ports, redis_server};

// `crate::log_limited!` for every module; not exported.
pub(crate) use crate::base::log_limit::log_limited;
