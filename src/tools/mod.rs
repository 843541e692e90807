//! What drives the worker from outside: the bench, the demo, the load generator,
//! and the private redis-server and embedded Kafka they and the tests start (one
//! kit: the tests' servers are these, with the options the tests need).
//!
//! Built only with the `tools` cargo feature (on by default); the production
//! image is built without it and carries only the worker.

pub mod bench;
pub mod demo;
pub mod embedded_kafka;
pub mod enqueue;
pub mod ports;
pub mod redis_server;
