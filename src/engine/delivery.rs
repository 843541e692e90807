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

use rdkafka::producer::DeliveryFuture;
use thiserror::Error;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::base::error_chain::chain;
use crate::engine::settler::{Outcome, Settler, SettlerParts};
use crate::kafka::publisher::{Publisher, ReadyMessage};
use crate::model::clock;
use crate::model::keys::Keys;
use crate::model::outbox::{self, OutboxEntry};
use crate::model::token::{self, Signer};
use crate::ops::stats::{ErrorKind, Stats};
use crate::redis::redis_time::RedisTime;
use crate::redis::retry::Backoff;
use crate::redis::scripts::set_tokens::{self, TokenPatch, Written};
use crate::redis::scripts::{self, ScriptError, Scripts};
use crate::redis::store::RedisConn;

#[derive(Debug, Error)]
pub enum DeliveryError {
    #[error("writing checkout tokens")]
    Tokens(#[source] ScriptError),
}

/// How hard to try, and by which clock.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryPolicy {
    /// Tries of a Redis operation.
    pub attempts: u32,
    /// Backoff between those tries; also bounds the spacing of publish retries of
    /// one outbox entry (at least `first`, at most `max`).
    pub backoff: Backoff,
    /// Redis's clock as seen from here: when a failed entry is due again.
    pub time: Arc<RedisTime>,
}

/// Signs, patches and publishes outbox entries.
pub(crate) struct Delivery {
    conn: RedisConn,
    scripts: Arc<Scripts>,
    keys: Keys,
    signer: Signer,
    publisher: Arc<Publisher>,
    stats: Arc<Stats>,
    policy: DeliveryPolicy,
    settler: Settler,
    inflight: Mutex<JoinSet<()>>,
}

/// One entry on its way: what was built for it.
struct Prepared {
    entry: OutboxEntry,
    message: ReadyMessage,
    message_id: String,
    /// The token is in the session hash already (written by the signed admit call).
    written: bool,
}

/// An entry handed to delivery, with the token the admit call wrote with it, if any
/// (a fresh signed admission); without one the token is signed and patched in.
pub(crate) type Outgoing = (OutboxEntry, Option<String>);

/// How long after its admit call answered a signed admission is published without
/// reading its hash again. The admit call wrote `status=admitted` and the token in
/// one atomic step, so within this bound the publish is exactly as fresh as the
/// unsigned path's (its `set_tokens` check, then the publish): re-reading the hash
/// would only narrow a window both paths have, at one `HMGET` per admission (about
/// 8% of the Redis CPU of an admission). Older (the previous dispatch held this one
/// up while Redis failed and was retried), every such entry is checked first.
const WRITTEN_FRESH: Duration = Duration::from_secs(1);

impl Delivery {
    pub(crate) fn new(
        conn: RedisConn,
        scripts: Arc<Scripts>,
        keys: Keys,
        signer: Signer,
        publisher: Arc<Publisher>,
        stats: Arc<Stats>,
        policy: DeliveryPolicy,
    ) -> Self {
        let settler = Settler::start(SettlerParts {
            conn: conn.clone(),
            keys: keys.clone(),
            scripts: scripts.clone(),
            stats: stats.clone(),
            attempts: policy.attempts,
            backoff: policy.backoff,
        });
        Delivery {
            conn,
            scripts,
            keys,
            signer,
            publisher,
            stats,
            policy,
            settler,
            inflight: Mutex::new(JoinSet::new()),
        }
    }

    /// Sign and write the tokens of every event's `entries` (one round trip), then
    /// queue their messages. Returns once the tokens are in Redis and the messages
    /// are queued; acknowledging and settling happen in the background. On error
    /// nothing was queued and the entries stay in the outbox, due again when their
    /// lease runs out.
    /// `answered` is when the admit calls that wrote the entries' tokens answered
    /// (see [`WRITTEN_FRESH`]).
    pub(crate) async fn dispatch_many(
        &self,
        batches: Vec<(String, Vec<Outgoing>)>,
        answered: Instant,
    ) -> Result<(), DeliveryError> {
        let batches: Vec<(String, Vec<Outgoing>)> =
            batches.into_iter().filter(|(_, e)| !e.is_empty()).collect();
        if batches.is_empty() {
            return Ok(());
        }
        // The caller counted these in flight; they stop being so once settled (or
        // once this fails before anything was sent).
        let handed: Vec<(String, i64)> = batches
            .iter()
            .map(|(e, es)| (e.clone(), es.len() as i64))
            .collect();
        let result = self.dispatch_counted(batches, &handed, answered).await;
        if result.is_err() {
            self.settled(&handed);
        }
        result
    }

    fn settled(&self, handed: &[(String, i64)]) {
        for (event, n) in handed {
            self.stats.in_flight_add(event, -n);
        }
    }

    async fn dispatch_counted(
        &self,
        batches: Vec<(String, Vec<Outgoing>)>,
        handed: &[(String, i64)],
        answered: Instant,
    ) -> Result<(), DeliveryError> {
        let mut prepared: Vec<(String, Vec<Prepared>)> = Vec::with_capacity(batches.len());
        let mut not_sent: Vec<(String, Vec<OutboxEntry>)> = Vec::new();
        let mut recheck: Vec<(String, Vec<OutboxEntry>)> = Vec::new();
        for (event, entries) in batches {
            let mut ok = Vec::with_capacity(entries.len());
            let mut unsigned = Vec::new();
            for (entry, token) in entries {
                // No data should make signing panic (entries are range-checked when
                // read), but if one did, it costs that entry, never the pass.
                let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.prepare(&event, entry, token)
                }));
                match prepared {
                    Ok(Ok(p)) => ok.push(p),
                    Ok(Err(entry)) => unsigned.push(entry),
                    Err(_) => {
                        crate::log_limited!(ERROR, "building a QUEUE_READY panicked; the entry stays in the outbox", event_id = %event);
                        self.stats.error(ErrorKind::Delivery);
                    }
                }
            }
            if !unsigned.is_empty() {
                not_sent.push((event.clone(), unsigned));
            }
            prepared.push((event, ok));
        }

        // One round trip writes the tokens of every event, for the entries whose
        // admission did not write one (entries claimed back from the outbox); none
        // when every token was written with its admission.
        let patches: Vec<Vec<TokenPatch>> = prepared
            .iter()
            .map(|(event, ps)| {
                ps.iter()
                    .filter(|p| !p.written)
                    .map(|p| TokenPatch {
                        session_key: self.keys.session(event, &p.entry.session_id),
                        admitted_at: p.message.admitted_at.clone(),
                        token: p.message.checkout_token.clone(),
                    })
                    .collect()
            })
            .collect();
        // The entries whose admission wrote the token are published as they are when
        // that admission is fresh; held up longer, they are only checked: does the
        // hash still show this admission? (The API may have abandoned or re-queued
        // the session since: then nobody is told.)
        let checked = if answered.elapsed() <= WRITTEN_FRESH {
            None
        } else {
            Some(self.still_admitted(&prepared).await?)
        };
        let outcomes: Vec<Written> = if patches.iter().all(Vec::is_empty) {
            patches.iter().map(|_| Written::Flags(Vec::new())).collect()
        } else {
            // In the default layout one call for every event, else one per event.
            let (calls, grouping) =
                set_tokens::calls(&self.scripts.set_tokens, self.keys.layout(), patches);
            let results = scripts::run_batch_retrying(
                &self.conn,
                &calls,
                self.policy.attempts,
                self.policy.backoff,
            )
            .await
            .map_err(|e| DeliveryError::Tokens(ScriptError::Redis(e)))?;
            set_tokens::per_event(grouping, results)
        };

        let mut checked = checked.map(Vec::into_iter);
        let mut sent = Vec::new();
        for ((event, ps), result) in prepared.into_iter().zip(outcomes) {
            let written: Vec<bool> = match result {
                // The patched entries' flags, in order, between the checked ones.
                Written::Flags(flags) => {
                    let mut flags = flags.into_iter();
                    ps.iter()
                        .map(|p| {
                            if p.written {
                                checked.as_mut().is_none_or(|c| c.next().unwrap_or(false))
                            } else {
                                flags.next().unwrap_or(false)
                            }
                        })
                        .collect()
                }
                Written::Unexpected(e) => {
                    tracing::error!(event_id = %event, error = %e, "writing checkout tokens: unexpected reply");
                    self.stats.error(ErrorKind::Redis);
                    continue;
                }
                Written::Failed(e) => {
                    // This event's tokens are not written: publish nothing for it; its
                    // entries come back when their lease runs out.
                    crate::log_limited!(ERROR, "writing checkout tokens failed", event_id = %event, error = %e);
                    self.stats.error(ErrorKind::Redis);
                    continue;
                }
            };
            Stats::add(
                &self.stats.tokens_written,
                written.iter().filter(|w| **w).count() as u64,
            );
            // A token not written means the hash no longer shows this admission (the
            // API abandoned or re-queued the session): no QUEUE_READY for it. Its
            // entry stays leased; the next claim drops it and frees its mark.
            let unwritten = written.iter().filter(|w| !**w).count();
            if unwritten > 0 {
                tracing::info!(event_id = %event, count = unwritten, "not telling sessions whose hash no longer shows their admission");
            }
            let mut failed = Vec::new();
            let mut stale = Vec::new();
            let mut first_error = None;
            for (p, ok) in ps
                .into_iter()
                .zip(written.iter().copied().chain(std::iter::repeat(false)))
            {
                if !ok {
                    stale.push(p.entry);
                    continue;
                }
                match self.publisher.enqueue(&p.message, &p.message_id) {
                    Ok(fut) => sent.push((event.clone(), p, fut)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                        failed.push(p.entry);
                    }
                }
            }
            if !stale.is_empty() {
                recheck.push((event.clone(), stale));
            }
            // One line per event and pass, however many entries failed.
            if let Some(e) = first_error {
                crate::log_limited!(WARN, "could not queue QUEUE_READY", event_id = %event, failed = failed.len(), error = %chain(&e));
                not_sent.push((event, failed));
            }
        }
        self.settle_in_background(sent, not_sent, recheck, handed.to_vec());
        Ok(())
    }

    /// For every entry whose admission wrote its token, in order: whether its session
    /// hash still shows that admission (`status=admitted`, the same `admitted_at`).
    /// One pipeline of `HMGET`s, read only; none when there is no such entry.
    async fn still_admitted(
        &self,
        prepared: &[(String, Vec<Prepared>)],
    ) -> Result<Vec<bool>, DeliveryError> {
        let mut pipe = redis::pipe();
        // A hash of the wrong type (or a cluster part that failed) answers an error
        // for itself: that entry reads as not admitted (checked again by the next
        // claim), the others go on.
        pipe.ignore_errors();
        let mut want: Vec<String> = Vec::new();
        for (event, ps) in prepared {
            for p in ps.iter().filter(|p| p.written) {
                pipe.cmd("HMGET")
                    .arg(self.keys.session(event, &p.entry.session_id))
                    .arg("status")
                    .arg("admitted_at");
                want.push(p.message.admitted_at.clone());
            }
        }
        if want.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<redis::Value> = crate::redis::retry::query_retrying(
            &self.conn,
            &pipe,
            self.policy.attempts,
            self.policy.backoff,
        )
        .await
        .map_err(|e| DeliveryError::Tokens(ScriptError::Redis(e)))?;
        Ok(rows
            .into_iter()
            .zip(want)
            .map(|(row, want)| {
                match redis::from_redis_value::<(Option<String>, Option<String>)>(row) {
                    Ok((status, at)) => {
                        status.as_deref() == Some("admitted")
                            && at.as_deref() == Some(want.as_str())
                    }
                    Err(_) => false,
                }
            })
            .collect())
    }

    /// The token of one admission: what [`Delivery::prepare`] would sign for its
    /// outbox entry, so a token signed ahead (before the admit call) and one signed
    /// from the entry later (after a crash) are the very same.
    pub(crate) fn sign(
        &self,
        event: &str,
        session: &str,
        user: &str,
        admitted_ms: u64,
        deadline_ms: u64,
        claim_by_ms: Option<u64>,
    ) -> Result<String, token::TokenError> {
        let mut claims = self
            .signer
            .claims(event, session, user, admitted_ms, deadline_ms);
        claims.cby = claim_by_ms.map(|ms| ms / 1000);
        self.signer.sign(&claims)
    }

    /// Build one entry's message, with the token its admission wrote (`token`) or
    /// one signed now; gives the entry back if signing failed.
    fn prepare(
        &self,
        event: &str,
        entry: OutboxEntry,
        token: Option<String>,
    ) -> Result<Prepared, OutboxEntry> {
        let written = token.is_some();
        let signed = match token {
            Some(t) => Ok(t),
            None => self.sign(
                event,
                &entry.session_id,
                &entry.user_id,
                entry.admitted_ms,
                entry.deadline_ms,
                entry.claim_by_ms,
            ),
        };
        match signed {
            Ok(tok) => Ok(Prepared {
                written,
                message: ReadyMessage {
                    session_id: entry.session_id.clone(),
                    user_id: entry.user_id.clone(),
                    event_id: event.to_owned(),
                    checkout_token: tok,
                    admitted_at: clock::rfc3339_seconds(entry.admitted_ms),
                    expires_at: clock::rfc3339_seconds(entry.deadline_ms),
                    timestamp: clock::rfc3339_millis(entry.admitted_ms),
                    claim_expires_at: entry.claim_by_ms.map(clock::rfc3339_seconds),
                },
                message_id: token::admission_id(event, &entry.session_id, entry.admitted_ms),
                entry,
            }),
            Err(e) => {
                crate::log_limited!(ERROR, "signing checkout token failed", event_id = event, session_id = %entry.session_id, error = %chain(&e));
                self.stats.error(ErrorKind::Sign);
                Err(entry)
            }
        }
    }

    /// Await Kafka's verdict on every queued message, then remove the acknowledged
    /// entries and reschedule the rest, in one pipeline for all events.
    fn settle_in_background(
        &self,
        sent: Vec<(String, Prepared, DeliveryFuture)>,
        not_sent: Vec<(String, Vec<OutboxEntry>)>,
        recheck: Vec<(String, Vec<OutboxEntry>)>,
        handed: Vec<(String, i64)>,
    ) {
        let stats = self.stats.clone();
        let publisher = self.publisher.clone();
        let policy = self.policy.clone();
        let settler = self.settler.clone();
        let mut inflight = match self.inflight.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        while inflight.try_join_next().is_some() {}
        inflight.spawn(async move {
            let mut acked: Vec<(String, OutboxEntry)> = Vec::with_capacity(sent.len());
            let mut failed: Vec<(String, OutboxEntry)> = not_sent
                .into_iter()
                .flat_map(|(e, es)| es.into_iter().map(move |x| (e.clone(), x)))
                .collect();
            // Per event: how many Kafka did not acknowledge, and the first reason.
            let mut refused: std::collections::BTreeMap<String, (usize, String)> =
                Default::default();
            for (event, p, fut) in sent {
                match fut.await {
                    Ok(Ok(_)) => {
                        tracing::info!(event_id = %event, session_id = %p.entry.session_id, user_id = %p.entry.user_id, "User admitted to checkout successfully");
                        acked.push((event, p.entry));
                    }
                    Ok(Err((e, _))) => {
                        let r = refused.entry(event.clone()).or_insert_with(|| (0, chain(&e).to_string()));
                        r.0 += 1;
                        failed.push((event, p.entry));
                    }
                    Err(_) => {
                        let r = refused.entry(event.clone()).or_insert_with(|| (0, "the producer dropped the message".to_owned()));
                        r.0 += 1;
                        failed.push((event, p.entry));
                    }
                }
            }
            // One line per event and settlement, with the count, however many
            // entries failed; repeats across settlements are summarised.
            for (event, (n, error)) in &refused {
                crate::log_limited!(WARN, "QUEUE_READY not acknowledged, will retry", event_id = %event, failed = n, error = %error);
            }
            Stats::add(&stats.published, acked.len() as u64);
            Stats::add(&stats.publish_failures, failed.len() as u64);
            if !failed.is_empty() {
                stats.error(ErrorKind::Kafka);
                publisher.recover_if_fatal();
            }
            // Acknowledged entries leave the outbox and their slot's untold mark
            // becomes the real deadline, atomically (the settler merges this with
            // whatever other deliveries finished meanwhile); failed entries are all
            // due again at one time per event (the oldest's backoff), so after an
            // outage the backlog comes back oldest admission first.
            let now = policy.time.now_ms();
            let mut oldest_failed: std::collections::BTreeMap<&str, u64> = Default::default();
            for (event, e) in &failed {
                let o = oldest_failed.entry(event.as_str()).or_insert(e.admitted_ms);
                *o = (*o).min(e.admitted_ms);
            }
            let due: std::collections::BTreeMap<String, u64> = oldest_failed
                .into_iter()
                .map(|(event, oldest)| {
                    let due =
                        outbox::next_due(now, oldest, policy.backoff.first, policy.backoff.max);
                    (event.to_owned(), due)
                })
                .collect();
            let mut outcome = Outcome {
                acked,
                retry: Vec::with_capacity(failed.len()),
            };
            for (event, e) in failed {
                let at = due.get(&event).copied().unwrap_or(now);
                outcome.retry.push((event, e, at));
            }
            // Entries whose token was not written are due at once: the next claim
            // checks their session and drops them (and their untold mark).
            for (event, es) in recheck {
                for e in es {
                    outcome.retry.push((event.clone(), e, now));
                }
            }
            settler.settle(outcome).await;
            for (event, n) in &handed {
                stats.in_flight_add(event, -n);
            }
        });
    }

    /// Flush the producer and wait for every in-flight settlement, at most `timeout`.
    /// What is not settled by then stays in the outbox for the next worker.
    pub(crate) async fn finish(&self, timeout: Duration) {
        let publisher = self.publisher.clone();
        let flushed = tokio::task::spawn_blocking(move || publisher.flush(timeout)).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %chain(&e), "kafka flush did not complete; unacknowledged entries stay in the outbox");
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
