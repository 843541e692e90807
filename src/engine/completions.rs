//! The completion consumer: frees the slot of every session whose checkout ended.
//!
//! It reads the checkout service's completion messages in a consumer group, applies
//! each with the idempotent release script, and only then stores the message's
//! offset for commit (at-least-once: a replay after a crash releases nothing twice).
//! A freed slot wakes the admission of its event at once ([`Refill`]). A message it
//! cannot use is logged, counted, optionally forwarded to a dead-letter topic, and
//! skipped; the consumer never stops on bad input.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use serde::Deserialize;
use thiserror::Error;

use crate::base::error_chain::chain;
use crate::base::shutdown::Shutdown;
use crate::engine::refill::Refill;
use crate::kafka::publisher::{KafkaLogs, Publisher, RECONNECT_BACKOFF_MAX_MS};
use crate::model::keys::{KeyLayout, Keys};
use crate::ops::stats::{ErrorKind, Stats};
use crate::redis::retry::Backoff;
use crate::redis::scripts::release::{self, Outcome, Released};
use crate::redis::scripts::{ScriptError, Scripts};
use crate::redis::store::RedisConn;

/// A completion message: `session_id`, optionally `event_id` and `outcome`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Completion {
    /// The session whose checkout ended.
    pub session_id: String,
    /// Its event, if the message says.
    #[serde(default)]
    pub event_id: Option<String>,
    /// `completed` (default), `abandoned` or `failed`.
    #[serde(default)]
    pub outcome: Option<String>,
    /// Units bought (a completed checkout; default 1): they leave the event's
    /// `stock`. A JSON integer from 1 to 1,000,000.
    #[serde(default)]
    pub quantity: Option<serde_json::Value>,
}

/// Most units one completion may name.
pub const MAX_QUANTITY: u64 = 1_000_000;

impl Completion {
    /// The units bought: the message's `quantity`, 1 when absent (checked by
    /// [`parse`]).
    pub fn units(&self) -> u64 {
        self.quantity
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(1)
    }
}

/// Why a message was skipped.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Rejected {
    /// Not JSON, or without a session id.
    #[error("not a completion message: {0}")]
    Malformed(String),
    /// An outcome the worker does not know.
    #[error("unknown outcome {0:?} (want completed, abandoned or failed)")]
    Outcome(String),
    /// A quantity that is not a whole number from 1 to 1,000,000.
    #[error("bad quantity {0} (want a JSON integer from 1 to 1000000)")]
    Quantity(String),
    /// No session hash and no event id to find it.
    #[error("unknown session (no hash, no event_id in the message)")]
    UnknownSession,
    /// The session belongs to another event than the message says.
    #[error("the session belongs to another event")]
    OtherEvent,
}

/// Parse a payload into the completion and its outcome.
pub fn parse(payload: Option<&[u8]>) -> Result<(Completion, Outcome), Rejected> {
    let bytes = payload.ok_or_else(|| Rejected::Malformed("empty payload".into()))?;
    let c: Completion =
        serde_json::from_slice(bytes).map_err(|e| Rejected::Malformed(e.to_string()))?;
    if c.session_id.is_empty() {
        return Err(Rejected::Malformed("empty session_id".into()));
    }
    if c.event_id.as_deref() == Some("") {
        return Err(Rejected::Malformed("empty event_id".into()));
    }
    let outcome = match c.outcome.as_deref() {
        None => Outcome::Completed,
        Some(o) => Outcome::parse(o).ok_or_else(|| Rejected::Outcome(o.to_owned()))?,
    };
    if let Some(q) = &c.quantity
        && !q.as_u64().is_some_and(|n| (1..=MAX_QUANTITY).contains(&n))
    {
        let mut shown = q.to_string();
        shown.truncate(40);
        return Err(Rejected::Quantity(shown));
    }
    Ok((c, outcome))
}

/// A failed attempt, and whether the release call had been sent (then it may
/// have been applied although no reply came).
struct Failed {
    error: ScriptError,
    sent: bool,
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSettings {
    pub brokers: String,
    pub extra: crate::kafka::options::ClientOptions,
    pub topic: String,
    pub group: String,
    pub fetch_wait: Duration,
    pub session_timeout: Duration,
    pub dead_letter_topic: Option<String>,
    pub session_ttl: Duration,
    pub backoff: Backoff,
    /// Replicas that must hold a release before its message is committed (0: none).
    pub replica_acks: u64,
    /// Longest wait for them per try.
    pub replica_ack_timeout: Duration,
    /// Longest wait for the consumer to commit and leave its group at shutdown.
    pub close_timeout: Duration,
}

pub(crate) struct Completions {
    consumer: StreamConsumer<KafkaLogs>,
    conn: RedisConn,
    scripts: Arc<Scripts>,
    keys: Keys,
    refill: Arc<Refill>,
    stats: Arc<Stats>,
    publisher: Arc<Publisher>,
    settings: ConsumerSettings,
}

impl Completions {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        settings: ConsumerSettings,
        conn: RedisConn,
        scripts: Arc<Scripts>,
        keys: Keys,
        refill: Arc<Refill>,
        stats: Arc<Stats>,
        publisher: Arc<Publisher>,
    ) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "500")
            .set("auto.offset.reset", "earliest")
            .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
            .set(
                "fetch.wait.max.ms",
                settings.fetch_wait.as_millis().to_string(),
            )
            .set(
                "session.timeout.ms",
                settings.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (settings.session_timeout.as_millis() / 3)
                    .max(100)
                    .to_string(),
            );
        for (k, v) in settings.extra.iter() {
            config.set(k, v);
        }
        // Subscribed only when it runs: a consumer that joined a group and is then
        // dropped unpolled can hang in librdkafka's close (its rebalance callback
        // waits on an assign nobody serves), which a worker that never ran would do.
        let consumer: StreamConsumer<KafkaLogs> = config.create_with_context(KafkaLogs)?;
        Ok(Completions {
            consumer,
            conn,
            scripts,
            keys,
            refill,
            stats,
            publisher,
            settings,
        })
    }

    /// Consume until shutdown; then commit what was applied and leave the group.
    pub(crate) async fn run(self, mut shutdown: Shutdown) {
        if let Err(e) = self.consumer.subscribe(&[&self.settings.topic]) {
            self.stats.error(ErrorKind::Kafka);
            tracing::error!(topic = %self.settings.topic, error = %chain(&e), "cannot subscribe to the completion topic; slots come back by expiry only");
            close(self.consumer, self.settings.close_timeout).await;
            return;
        }
        tracing::info!(topic = %self.settings.topic, group = %self.settings.group, "completion consumer started");
        loop {
            let msg = tokio::select! {
                _ = shutdown.recv() => break,
                m = self.consumer.recv() => m,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    crate::log_limited!(WARN, "completion consumer error", error = %chain(&e));
                    self.stats.error(ErrorKind::Kafka);
                    tokio::select! {
                        _ = shutdown.recv() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    continue;
                }
            };
            // Names this message's release in the session hash (`released_by`), so a
            // retry whose earlier attempt was applied unseen is told from a duplicate.
            let release_id = format!("{}/{}/{}", msg.topic(), msg.partition(), msg.offset());
            let applied = self.handle(msg.payload(), &release_id, &mut shutdown).await;
            if !applied {
                // Shutdown while Redis was away: leave the offset, the message is
                // read again by whoever owns the partition next.
                break;
            }
            if let Err(e) = self.consumer.store_offset_from_message(&msg) {
                crate::log_limited!(WARN, "could not store a completion offset", error = %chain(&e));
            }
        }
        close(self.consumer, self.settings.close_timeout).await;
    }

    /// Apply one message. Returns false only if shutdown came while Redis could not
    /// be reached (the message is then not done).
    ///
    /// A release attempt that failed in transit (a timeout while Redis hung) may
    /// still have been applied. If a later attempt then finds the slot freed by this
    /// very release (reply 2), the earlier one did it: that is this message's
    /// release, counted once. A first attempt that finds it so is a replay of a
    /// message already applied (a duplicate), counted as a no-op.
    async fn handle(
        &self,
        payload: Option<&[u8]>,
        release_id: &str,
        shutdown: &mut Shutdown,
    ) -> bool {
        let (c, outcome) = match parse(payload) {
            Ok(v) => v,
            Err(r) => {
                self.reject(payload, &r).await;
                return true;
            }
        };
        let mut attempt = 0;
        let mut maybe_applied = false;
        let mut counted = false;
        loop {
            attempt += 1;
            match self
                .apply(&c, outcome, release_id, maybe_applied, counted)
                .await
            {
                Ok(Ok(event)) => {
                    if self.replicated().await {
                        self.refill.wake(&event);
                        return true;
                    }
                    // Not held by enough replicas: applied again after a pause. The
                    // release is idempotent: a master that lost it in a failover
                    // frees the slot now, one that has it says so. Counted once.
                    counted = true;
                    maybe_applied = true;
                    tokio::select! {
                        _ = shutdown.recv() => return false,
                        _ = tokio::time::sleep(self.settings.backoff.delay(attempt)) => {}
                    }
                }
                Ok(Err(r)) => {
                    self.reject(payload, &r).await;
                    return true;
                }
                Err(Failed { error: e, sent }) if e.is_transient() => {
                    maybe_applied |= sent;
                    self.stats.error(ErrorKind::Redis);
                    let wait = self.settings.backoff.delay(attempt);
                    crate::log_limited!(WARN, "release failed, retrying", session_id = %c.session_id, error = %chain(&e), retry_in = ?wait);
                    tokio::select! {
                        _ = shutdown.recv() => return false,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(Failed { error: e, .. }) => {
                    self.stats.error(ErrorKind::Release);
                    crate::log_limited!(ERROR, "release failed, skipping the message", session_id = %c.session_id, error = %chain(&e));
                    return true;
                }
            }
        }
    }

    /// With `--replica-acks N`, whether N replicas hold this connection's writes
    /// (the release just applied): only then is the message done (its offset
    /// committed), so a failover cannot undo a release the checkout service was
    /// told of.
    async fn replicated(&self) -> bool {
        let n = self.settings.replica_acks;
        if n == 0 {
            return true;
        }
        let mut conn = self.conn.clone();
        match crate::redis::store::wait_replicas(&mut conn, n, self.settings.replica_ack_timeout)
            .await
        {
            Ok(got) if got >= n => true,
            Ok(got) => {
                Stats::add(&self.stats.replica_waits_short, 1);
                crate::log_limited!(
                    WARN,
                    "release not yet held by enough replicas; applied again before its completion is committed",
                    replicas = got,
                    wanted = n
                );
                false
            }
            Err(e) => {
                self.stats.error(ErrorKind::Redis);
                crate::log_limited!(WARN, "WAIT for replicas failed; the release is applied again before its completion is committed", error = %chain(&e));
                false
            }
        }
    }

    /// Resolve the event and release. `Ok(Ok(event))` when a slot was freed or the
    /// release was a harmless repeat. `maybe_applied`: an earlier attempt of this
    /// release failed after it was sent, so it may have been applied unseen.
    async fn apply(
        &self,
        c: &Completion,
        outcome: Outcome,
        release_id: &str,
        maybe_applied: bool,
        counted: bool,
    ) -> Result<Result<String, Rejected>, Failed> {
        let mut conn = self.conn.clone();
        let event = match &c.event_id {
            Some(e) => e.clone(),
            None if self.keys.layout() == KeyLayout::Default => {
                let key = self.keys.session("", &c.session_id);
                let e: Option<String> = redis::cmd("HGET")
                    .arg(&key)
                    .arg("event_id")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| Failed {
                        error: e.into(),
                        sent: false,
                    })?;
                match e.filter(|e| !e.is_empty()) {
                    Some(e) => e,
                    None => return Ok(Err(Rejected::UnknownSession)),
                }
            }
            None => return Ok(Err(Rejected::UnknownSession)),
        };
        let r = release::release(
            &self.scripts.release,
            &mut conn,
            &self.keys,
            &event,
            &c.session_id,
            outcome,
            self.settings.session_ttl,
            release_id,
            c.units(),
        )
        .await
        .map_err(|error| {
            // A refused connection never carried the call; anything else may have.
            let sent = !matches!(&error, ScriptError::Redis(e) if e.is_connection_refusal());
            Failed { error, sent }
        })?;
        match r {
            // A repeat after a replication wait: counted the first time.
            Released::Freed | Released::AlreadyReleased | Released::NotInProcessing if counted => {
                Ok(Ok(event))
            }
            Released::Freed => {
                self.stats.event_released(&event);
                tracing::info!(event_id = %event, session_id = %c.session_id, outcome = outcome.status(), "Checkout slot released");
                Ok(Ok(event))
            }
            Released::AlreadyReleased if maybe_applied => {
                self.stats.event_released(&event);
                tracing::info!(event_id = %event, session_id = %c.session_id, outcome = outcome.status(), "Checkout slot released (by an earlier attempt whose reply was lost)");
                Ok(Ok(event))
            }
            Released::NotInProcessing | Released::AlreadyReleased => {
                Stats::add(&self.stats.release_noop, 1);
                tracing::debug!(event_id = %event, session_id = %c.session_id, "completion for a session holding no slot (duplicate or expired)");
                Ok(Ok(event))
            }
            Released::OtherEvent => Ok(Err(Rejected::OtherEvent)),
        }
    }

    async fn reject(&self, payload: Option<&[u8]>, r: &Rejected) {
        Stats::add(&self.stats.completions_rejected, 1);
        crate::log_limited!(WARN, "skipping a completion message", reason = %r);
        if let Some(topic) = &self.settings.dead_letter_topic {
            let body = payload.unwrap_or_default();
            match self.publisher.forward(topic, body, &r.to_string()) {
                Ok(fut) => {
                    if !matches!(fut.await, Ok(Ok(_))) {
                        crate::log_limited!(WARN, "dead-letter forward not acknowledged", topic = %topic);
                    }
                }
                Err(e) => {
                    crate::log_limited!(WARN, "dead-letter forward failed", topic = %topic, error = %chain(&e))
                }
            }
        }
    }
}

/// Commit what was applied and leave the group, on a thread of its own, waiting at
/// most `bound`.
///
/// librdkafka's close (the commit, the unsubscribe, and the drop that waits for the
/// consumer to be closed) blocks, and with the brokers gone for good it can block
/// forever: rdkafka's `Drop` polls until the group is left. On a runtime thread that
/// would hang the runtime's own shutdown, so it runs apart; after `bound` it is left
/// to finish (or not) on its own, and the process is free to exit.
async fn close(consumer: StreamConsumer<KafkaLogs>, bound: Duration) {
    let (closed, wait) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("completions-close".into())
        .spawn(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %chain(&e), "final offset commit");
            }
            consumer.unsubscribe();
            drop(consumer);
            let _ = closed.send(());
        });
    match spawned {
        Err(e) => {
            // The closure, consumer and all, was dropped here, on this thread.
            tracing::warn!(error = %e, "no thread to close the completion consumer on; closed in place");
        }
        Ok(_) => match tokio::time::timeout(bound, wait).await {
            Ok(Ok(())) => tracing::info!("completion consumer stopped"),
            // The thread ended without saying so: it panicked inside librdkafka.
            Ok(Err(_)) => {
                tracing::warn!(
                    "the completion consumer's close failed; its uncommitted offsets are read again by the next owner"
                )
            }
            Err(_) => {
                tracing::warn!(timeout = ?bound, "the completion consumer did not leave its group in time (Kafka unreachable?); left behind, its uncommitted offsets are read again by the next owner")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_completions_and_rejects_garbage() {
        let (c, o) = parse(Some(br#"{"session_id":"s1"}"#)).expect("minimal");
        assert_eq!(
            (c.session_id.as_str(), c.event_id, o),
            ("s1", None, Outcome::Completed)
        );
        let (_, o) = parse(Some(
            br#"{"session_id":"s1","event_id":"e","outcome":"abandoned"}"#,
        ))
        .expect("full");
        assert_eq!(o, Outcome::Abandoned);
        for bad in [
            &b"not json"[..],
            b"{}",
            br#"{"session_id":5}"#,
            br#"{"session_id":""}"#,
            br#"{"session_id":"s","event_id":7}"#,
            br#"[1,2]"#,
        ] {
            assert!(
                matches!(parse(Some(bad)), Err(Rejected::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse(Some(br#"{"session_id":"s","outcome":"won"}"#)),
            Err(Rejected::Outcome(_))
        ));
        assert!(matches!(parse(None), Err(Rejected::Malformed(_))));
    }
}
