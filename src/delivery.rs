//! From an outbox entry to a published admission: sign the token, write it into the
//! session hash, send QUEUE_READY, and take the entry out of the outbox only once
//! Kafka acknowledged the message.
//!
//! The same path serves fresh admissions and entries claimed back from the outbox
//! (after a crash, an outage or a failed publish), so both behave the same. Waiting
//! for Kafka's acknowledgement happens in a background task: the admission loop
//! goes on while messages are in flight, and a Kafka outage slows nothing but the
//! outbox's draining.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::task::JoinSet;

use crate::clock;
use crate::keys::Keys;
use crate::outbox::{self, OutboxEntry, Settlement};
use crate::publisher::{Publisher, ReadyMessage};
use crate::retry::{self, Backoff};
use crate::scripts::set_tokens::{self, TokenPatch};
use crate::scripts::{ScriptError, Scripts};
use crate::stats::Stats;
use crate::store::RedisConn;
use crate::token::{self, Signer};

#[derive(Debug, Error)]
pub enum DeliveryError {
    #[error("writing checkout tokens: {0}")]
    Tokens(#[source] ScriptError),
}

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryPolicy {
    /// Tries of a Redis operation.
    pub attempts: u32,
    /// Backoff between those tries.
    pub backoff: Backoff,
    /// Spacing of publish retries of one entry (first, max).
    pub publish_retry: Backoff,
}

/// Signs, patches and publishes outbox entries.
pub struct Delivery {
    conn: RedisConn,
    scripts: Arc<Scripts>,
    keys: Keys,
    signer: Signer,
    publisher: Arc<Publisher>,
    stats: Arc<Stats>,
    policy: DeliveryPolicy,
    inflight: Mutex<JoinSet<()>>,
}

/// One entry on its way: what was built for it.
struct Prepared {
    entry: OutboxEntry,
    message: ReadyMessage,
    message_id: String,
}

impl Delivery {
    pub fn new(
        conn: RedisConn,
        scripts: Arc<Scripts>,
        keys: Keys,
        signer: Signer,
        publisher: Arc<Publisher>,
        stats: Arc<Stats>,
        policy: DeliveryPolicy,
    ) -> Self {
        Delivery {
            conn,
            scripts,
            keys,
            signer,
            publisher,
            stats,
            policy,
            inflight: Mutex::new(JoinSet::new()),
        }
    }

    /// Sign and write the tokens of `entries` (one round trip), then queue their
    /// messages. Returns once the tokens are in Redis and the messages are queued;
    /// acknowledging happens in the background. On error nothing was queued and the
    /// entries stay in the outbox, due again when their lease runs out.
    pub async fn dispatch(
        &self,
        event: &str,
        entries: Vec<OutboxEntry>,
    ) -> Result<(), DeliveryError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut prepared = Vec::with_capacity(entries.len());
        let mut unsigned = Vec::new();
        for entry in entries {
            let claims = self.signer.claims(
                event,
                &entry.session_id,
                &entry.user_id,
                entry.admitted_ms,
                entry.deadline_ms,
            );
            match self.signer.sign(&claims) {
                Ok(tok) => prepared.push(Prepared {
                    message: ReadyMessage {
                        session_id: entry.session_id.clone(),
                        user_id: entry.user_id.clone(),
                        event_id: event.to_owned(),
                        checkout_token: tok,
                        admitted_at: clock::rfc3339_seconds(entry.admitted_ms),
                        expires_at: clock::rfc3339_seconds(entry.deadline_ms),
                        timestamp: clock::rfc3339_millis(entry.admitted_ms),
                    },
                    message_id: token::admission_id(event, &entry.session_id, entry.admitted_ms),
                    entry,
                }),
                Err(e) => {
                    tracing::error!(event_id = event, session_id = %entry.session_id, error = %e, "signing checkout token failed");
                    self.stats.error("sign");
                    unsigned.push(entry);
                }
            }
        }

        let patches: Vec<TokenPatch> = prepared
            .iter()
            .map(|p| TokenPatch {
                session_key: self.keys.session(event, &p.entry.session_id),
                admitted_at: p.message.admitted_at.clone(),
                token: p.message.checkout_token.clone(),
            })
            .collect();
        let written = retry::with_retries(
            self.policy.attempts,
            self.policy.backoff,
            ScriptError::is_transient,
            || {
                let mut conn = self.conn.clone();
                let patches = &patches;
                let script = &self.scripts.set_tokens;
                async move { set_tokens::set_tokens(script, &mut conn, patches).await }
            },
        )
        .await
        .map_err(DeliveryError::Tokens)?;
        Stats::add(&self.stats.tokens_written, written);

        let mut sent = Vec::with_capacity(prepared.len());
        let mut not_sent: Vec<OutboxEntry> = unsigned;
        for p in prepared {
            match self.publisher.enqueue(&p.message, &p.message_id) {
                Ok(fut) => sent.push((p, fut)),
                Err(e) => {
                    tracing::warn!(event_id = event, session_id = %p.entry.session_id, error = %e, "could not queue QUEUE_READY");
                    not_sent.push(p.entry);
                }
            }
        }

        let conn = self.conn.clone();
        let outbox_key = self.keys.outbox(event);
        let stats = self.stats.clone();
        let publisher = self.publisher.clone();
        let policy = self.policy;
        let event = event.to_owned();
        let mut inflight = match self.inflight.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        while inflight.try_join_next().is_some() {}
        inflight.spawn(async move {
            let mut acked = Vec::new();
            let mut failed = not_sent;
            for (p, fut) in sent {
                match fut.await {
                    Ok(Ok(_)) => {
                        tracing::info!(event_id = %event, session_id = %p.entry.session_id, user_id = %p.entry.user_id, "User admitted to checkout successfully");
                        acked.push(p.entry);
                    }
                    Ok(Err((e, _))) => {
                        tracing::warn!(event_id = %event, session_id = %p.entry.session_id, error = %e, "QUEUE_READY not acknowledged, will retry");
                        failed.push(p.entry);
                    }
                    Err(_) => failed.push(p.entry),
                }
            }
            Stats::add(&stats.published, acked.len() as u64);
            Stats::add(&stats.publish_failures, failed.len() as u64);
            if !failed.is_empty() {
                publisher.recover_if_fatal();
            }
            let now = clock::now_ms();
            let settlement = Settlement {
                acked: acked.iter().map(|e| e.raw.as_slice()).collect(),
                retry: failed
                    .iter()
                    .map(|e| {
                        let due = outbox::next_due(now, e.admitted_ms, policy.publish_retry.first, policy.publish_retry.max);
                        (e.raw.as_slice(), due)
                    })
                    .collect(),
            };
            let result = retry::with_retries(policy.attempts, policy.backoff, retry::is_transient, || {
                let mut conn = conn.clone();
                let (key, s) = (&outbox_key, &settlement);
                async move { outbox::settle(&mut conn, key, s).await }
            })
            .await;
            if let Err(e) = result {
                // The entries stay claimed; their lease runs out and they are published
                // again (a duplicate the message id lets consumers drop).
                tracing::error!(event_id = %event, error = %e, "could not settle outbox entries");
                stats.error("redis");
            }
        });
        Ok(())
    }

    /// Messages queued and not yet settled.
    pub fn in_flight(&self) -> usize {
        match self.inflight.lock() {
            Ok(g) => g.len(),
            Err(p) => p.into_inner().len(),
        }
    }

    /// Flush the producer and wait for every in-flight settlement, at most `timeout`.
    /// What is not settled by then stays in the outbox for the next worker.
    pub async fn finish(&self, timeout: Duration) {
        let publisher = self.publisher.clone();
        let flushed = tokio::task::spawn_blocking(move || publisher.flush(timeout)).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "kafka flush did not complete; unacknowledged entries stay in the outbox");
        }
        let mut set = match self.inflight.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        let drained =
            tokio::time::timeout(timeout, async { while set.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                "shutdown timeout reached with settlements in flight; they stay in the outbox"
            );
        }
    }
}
