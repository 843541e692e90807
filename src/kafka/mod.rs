//! Kafka as the worker uses it: the producer and the QUEUE_READY message, and the
//! extra librdkafka options every client gets.

pub(crate) mod options;
pub(crate) mod publisher;
