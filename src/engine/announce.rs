//! The sell-out announcement: one EVENT_SOLD_OUT per sell-out, with the outbox's
//! guarantees.
//!
//! The admit script records a sell-out (stock 0) as pending in `<event>:sold_out`
//! and leases it to the worker whose call saw it; that worker publishes the message
//! here and, once Kafka acknowledged it, `settle_sold_out.lua` marks it sent. If the
//! worker dies between the record and the acknowledgement, or Kafka refuses, the
//! lease runs out and the next admit call (any replica's) takes it over: nothing is
//! lost, and a second message can only follow a publish whose acknowledgement was
//! not recorded (at least once, with a stable message id to drop duplicates by).

use std::sync::Arc;

use crate::base::error_chain::chain;
use crate::kafka::publisher::{PublishError, Publisher, SoldOutMessage};
use crate::model::clock;
use crate::model::keys::Keys;
use crate::ops::stats::{ErrorKind, Stats};
use crate::redis::scripts::{Scripts, settle_sold_out};
use crate::redis::store::RedisConn;

/// What announcing needs, cloned into the task of each announcement.
#[derive(Clone)]
pub(crate) struct Announcer {
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) conn: RedisConn,
    pub(crate) scripts: Arc<Scripts>,
    pub(crate) keys: Keys,
    pub(crate) topic: String,
    pub(crate) stats: Arc<Stats>,
}

/// The stable id of one sell-out's message: hex SHA1 over event and instant.
pub(crate) fn message_id(event: &str, at_ms: u64) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(b"sold_out\0");
    h.update(event.as_bytes());
    h.update(&[0]);
    h.update(at_ms.to_string().as_bytes());
    h.digest().to_string()
}

impl Announcer {
    /// Publish the sell-out of `event` recorded at `at_ms` and, once acknowledged,
    /// mark it sent; in a task of its own (the pass does not wait). A failure is
    /// counted and logged; the lease brings it back.
    pub(crate) fn spawn(&self, event: String, at_ms: u64, queue_length: u64) {
        let a = self.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("sold_out", event_id = %event);
            let _ = tracing::Instrument::instrument(a.announce(&event, at_ms, queue_length), span)
                .await;
        });
    }

    async fn announce(&self, event: &str, at_ms: u64, queue_length: u64) {
        let msg = SoldOutMessage {
            event_id: event.to_owned(),
            queue_length,
            timestamp: clock::rfc3339_millis(at_ms),
        };
        let sent = match serde_json::to_vec(&msg) {
            Ok(payload) => {
                let id = message_id(event, at_ms);
                self.publisher
                    .announce_acked(&self.topic, event, &payload, &id)
                    .await
            }
            Err(e) => Err(PublishError::Encode(e)),
        };
        if let Err(e) = sent {
            self.stats.error(ErrorKind::Kafka);
            crate::log_limited!(WARN, "EVENT_SOLD_OUT not acknowledged; announced again when its lease runs out", event_id = %event, error = %chain(&e));
            return;
        }
        let mut conn = self.conn.clone();
        match settle_sold_out::settle(
            &self.scripts.settle_sold_out,
            &mut conn,
            &self.keys,
            event,
            at_ms,
        )
        .await
        {
            Ok(_) => {
                tracing::warn!(
                    queue_length,
                    "Event sold out: announced on the sell-out topic"
                );
                Stats::add(&self.stats.sold_out_announced, 1);
            }
            Err(e) => {
                self.stats.error(ErrorKind::Redis);
                crate::log_limited!(WARN, "EVENT_SOLD_OUT acknowledged but not recorded; it may be announced again", event_id = %event, error = %chain(&e));
            }
        }
    }
}
