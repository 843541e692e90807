//! waitroom-worker: admits users from a ticketing waiting room into checkout.
//!
//! The file tree is the architecture:
//! - [`settings`]: flags, environment variables and their checks.
//! - [`keys`]: the Redis key contract, in the default and the cluster layout.
//! - [`scripts`]: the Lua scripts of `lua/`, one Rust module each.
//! - [`worker`]: the admission loop; [`delivery`]: token, patch, publish, acknowledge.
//! - [`completions`]: the completion consumer; [`refill`]: freed slots wake admission.
//! - [`outbox`], [`publisher`], [`token`]: the outbox, Kafka, the checkout token.
//! - [`report`]: the `status` and `inspect` views.
//! - [`bench`]: `waitroom-worker bench`, the cost of the worker measured.
//! - [`demo`], [`enqueue`], [`redis_server`], [`embedded_kafka`]: the demo and its parts.
//! - [`http`]: health, readiness, status and metrics; [`heartbeat`]: live replicas in Redis.
//! - [`probe`]: `waitroom-worker health`, the container's probe of `/healthz`.
//! - [`log_limit`]: repeated warnings written once, then counted; [`error_chain`]:
//!   an error and its causes on one line, each once.
//! - [`store`], [`retry`], [`shutdown`], [`stats`], [`clock`], [`redis_time`]: plumbing.

pub mod base;
pub mod config;
pub mod engine;
pub mod kafka;
pub mod model;
pub mod ops;
pub mod redis;
pub mod tools;

pub use base::{error_chain, log_limit, shutdown};
pub use config as settings;
pub use engine::{completions, delivery, refill, worker};
pub use kafka::publisher;
pub use model::{clock, keys, outbox, token};
pub use ops::{http, probe, report, stats};
pub use redis::{heartbeat, redis_time, retry, scripts, store};
pub use tools::{bench, demo, embedded_kafka, enqueue, redis_server};
