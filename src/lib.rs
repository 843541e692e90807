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

pub mod bench;
pub mod clock;
pub mod completions;
pub mod delivery;
pub mod demo;
pub mod embedded_kafka;
pub mod enqueue;
pub mod error_chain;
pub mod heartbeat;
pub mod http;
pub mod keys;
pub mod log_limit;
pub mod outbox;
pub mod probe;
pub mod publisher;
pub mod redis_server;
pub mod redis_time;
pub mod refill;
pub mod report;
pub mod retry;
pub mod scripts;
pub mod settings;
pub mod shutdown;
pub mod stats;
pub mod store;
pub mod token;
pub mod worker;
