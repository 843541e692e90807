//! QUEUE_READY messages to Kafka through an idempotent producer.
//!
//! The producer is idempotent (no duplicates from its own retries within one
//! session) and bounded by `message.timeout.ms`; a message that is not acknowledged
//! within it fails, and its outbox entry is retried later. A replay after a crash
//! is a duplicate Kafka cannot see, so every message is keyed by session id and
//! carries a stable `message-id` header for consumers to drop duplicates by.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, DeliveryFuture, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::base::error_chain::chain;

/// The producer, with librdkafka's reports going through [`KafkaLogs`].
pub(crate) type FutureProducer = rdkafka::producer::FutureProducer<KafkaLogs>;

/// Where librdkafka's own log lines and error reports go: through the log limiter
/// ([`crate::base::log_limit`]). While the brokers are away, librdkafka reports every
/// reconnect attempt of every client (producer, consumer, readiness probe), several
/// a second; the first of each kind is written, the rest counted.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KafkaLogs;

impl ClientContext for KafkaLogs {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                crate::log_limited!(ERROR, "librdkafka error", facility, detail = message)
            }
            RDKafkaLogLevel::Warning => {
                crate::log_limited!(WARN, "librdkafka warning", facility, detail = message)
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::log_limited!(ERROR, "kafka client error", error = %chain(&error), reason);
    }
}

impl ConsumerContext for KafkaLogs {}

impl rdkafka::producer::ProducerContext for KafkaLogs {
    type DeliveryOpaque = ();

    /// The readiness probe sends nothing; there is nothing to deliver.
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// librdkafka's `reconnect.backoff.max.ms` for the worker's clients (its
/// default is 10 s). The backoff doubles on each failed attempt, so after an outage
/// of more than a few seconds a client can sit up to 10 s in backoff while the
/// brokers are back: the producer holds admission (publishing stalled) and the
/// consumer's group coordinator connection stays down (no completion applied) that
/// much longer than the outage. 1 s, the Java client's default, bounds that delay;
/// one attempt a second per broker during an outage costs nothing. `--kafka-config`
/// can still set it.
pub(crate) const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// Why a message could not be queued for sending.
#[derive(Debug, Error)]
pub enum PublishError {
    /// The producer refused it.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// It could not be encoded.
    #[error("encoding the message")]
    Encode(#[from] serde_json::Error),
}

/// The header carrying the stable message id.
pub const MESSAGE_ID_HEADER: &str = "message-id";

/// The QUEUE_READY payload, fields in the seed's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyMessage {
    /// The admitted session.
    pub session_id: String,
    /// Its user.
    pub user_id: String,
    /// The event.
    pub event_id: String,
    /// The signed checkout token (a JWT).
    pub checkout_token: String,
    /// When it was admitted (RFC 3339, seconds).
    pub admitted_at: String,
    /// When its checkout window, and the token, end (RFC 3339, seconds).
    pub expires_at: String,
    /// The admission instant with milliseconds; fixed per admission, so a replayed
    /// message is byte for byte the same.
    pub timestamp: String,
    /// With a claim window: the last second the admission may be claimed (RFC 3339,
    /// seconds), the token's `cby`. Absent without a claim window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_expires_at: Option<String>,
}

/// The EVENT_SOLD_OUT payload: the event sold out, and how many were waiting then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoldOutMessage {
    /// The event whose stock reached 0.
    pub event_id: String,
    /// Sessions waiting (both lanes) when the sell-out was recorded.
    pub queue_length: u64,
    /// When it was recorded (RFC 3339 with milliseconds); fixed per sell-out, so a
    /// replayed message is byte for byte the same.
    pub timestamp: String,
}

/// Owns the producer; rebuilds it after a fatal error (which an idempotent
/// producer can raise and never recovers from).
pub struct Publisher {
    config: ClientConfig,
    producer: RwLock<Arc<FutureProducer>>,
    topic: String,
}

impl Publisher {
    /// A producer of `topic` on `brokers`: idempotent, `acks=all`, messages
    /// failing after `publish_timeout`; `extra` librdkafka settings last.
    pub fn new(
        brokers: &str,
        extra: &[(String, String)],
        topic: &str,
        publish_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                publish_timeout.as_millis().to_string(),
            )
            .set("linger.ms", "2")
            .set("compression.type", "none")
            .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
        for (k, v) in extra {
            config.set(k, v);
        }
        let producer: FutureProducer = config.create_with_context(KafkaLogs)?;
        Ok(Publisher {
            config,
            producer: RwLock::new(Arc::new(producer)),
            topic: topic.to_owned(),
        })
    }

    fn producer(&self) -> Arc<FutureProducer> {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Queue one message; the future resolves when Kafka acknowledged it or it failed.
    pub fn enqueue(
        &self,
        msg: &ReadyMessage,
        message_id: &str,
    ) -> Result<DeliveryFuture, PublishError> {
        let payload = serde_json::to_vec(msg)?;
        let headers = OwnedHeaders::new().insert(Header {
            key: MESSAGE_ID_HEADER,
            value: Some(message_id.as_bytes()),
        });
        let record = FutureRecord::to(&self.topic)
            .key(msg.session_id.as_bytes())
            .payload(&payload)
            .headers(headers);
        self.producer()
            .send_result(record)
            .map_err(|(e, _)| PublishError::Kafka(e))
    }

    /// Queue one message of another kind than QUEUE_READY (the sell-out) on `topic`,
    /// keyed and carrying its stable message id like every QUEUE_READY.
    pub fn announce(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        message_id: &str,
    ) -> Result<DeliveryFuture, PublishError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: MESSAGE_ID_HEADER,
            value: Some(message_id.as_bytes()),
        });
        let record = FutureRecord::to(topic)
            .key(key.as_bytes())
            .payload(payload)
            .headers(headers);
        self.producer()
            .send_result(record)
            .map_err(|(e, _)| PublishError::Kafka(e))
    }

    /// [`Publisher::announce`], then wait for Kafka's verdict.
    pub async fn announce_acked(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        message_id: &str,
    ) -> Result<(), PublishError> {
        match self.announce(topic, key, payload, message_id)?.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(PublishError::Kafka(e)),
            Err(_) => Err(PublishError::Kafka(KafkaError::Canceled)),
        }
    }

    /// Forward a message the worker could not use to a dead-letter topic, with the
    /// reason in a `reason` header.
    pub fn forward(
        &self,
        topic: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<DeliveryFuture, PublishError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: "reason",
            value: Some(reason.as_bytes()),
        });
        let record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).payload(payload).headers(headers);
        self.producer()
            .send_result(record)
            .map_err(|(e, _)| PublishError::Kafka(e))
    }

    /// If the producer hit a fatal error, replace it with a fresh one. Returns
    /// whether it did.
    pub fn recover_if_fatal(&self) -> bool {
        let current = self.producer();
        let Some((code, reason)) = current.client().fatal_error() else {
            return false;
        };
        crate::log_limited!(ERROR, "kafka producer fatal error, creating a new producer", ?code, %reason);
        match self
            .config
            .create_with_context::<_, FutureProducer>(KafkaLogs)
        {
            Ok(fresh) => {
                if let Ok(mut slot) = self.producer.write() {
                    *slot = Arc::new(fresh);
                }
                true
            }
            Err(e) => {
                crate::log_limited!(ERROR, "could not create a new kafka producer", error = %chain(&e));
                false
            }
        }
    }

    /// Wait for everything queued to be acknowledged or to fail, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer().flush(timeout)
    }

    /// Ask the brokers for the topic's metadata: is Kafka reachable? A fresh client
    /// asks, so the answer is about the brokers now, not about the long-lived
    /// producer's connection state (which may sit in reconnect backoff).
    pub fn check(&self, timeout: Duration) -> Result<(), KafkaError> {
        let mut config = self.config.clone();
        config.set("enable.idempotence", "false");
        let probe: BaseProducer<KafkaLogs> = config.create_with_context(KafkaLogs)?;
        probe
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .map(|_| ())
    }
}
