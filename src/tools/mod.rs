pub mod bench;
pub mod demo;
pub mod embedded_kafka;
pub mod enqueue;
pub mod redis_server;
