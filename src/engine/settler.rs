//! Settles what Kafka said of publish attempts, many deliveries per Redis call.
//!
//! Every delivery waits for Kafka's verdict on its messages and then hands the
//! outcome here. Outcomes that arrive while a settle call is on its way are merged
//! into the next one (group commit): with small batches at a high rate one call
//! settles many deliveries, and when the load is light each delivery still gets its
//! own call at once. A delivery learns whether its outcome was settled; if not, its
//! entries stay claimed and are published again after their lease (a duplicate that
//! the message id lets consumers drop).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::base::error_chain::chain;
use crate::model::keys::Keys;
use crate::model::outbox::OutboxEntry;
use crate::ops::stats::{ErrorKind, Stats};
use crate::redis::retry::{self, Backoff};
use crate::redis::scripts::settle::{self, Acked, EventSettlement};
use crate::redis::scripts::{self, Call, Scripts};
use crate::redis::store::RedisConn;

/// One delivery's outcome: entries Kafka acknowledged, entries due again at a time
/// (ms), each with its event.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) acked: Vec<(String, OutboxEntry)>,
    pub(crate) retry: Vec<(String, OutboxEntry, u64)>,
}

impl Outcome {
    fn len(&self) -> usize {
        self.acked.len() + self.retry.len()
    }
}

struct Job {
    outcome: Outcome,
    done: oneshot::Sender<bool>,
}

/// The handle deliveries settle through; the task behind it ends when the last
/// handle is dropped.
#[derive(Clone)]
pub(crate) struct Settler {
    jobs: mpsc::UnboundedSender<Job>,
}

/// What the settler needs of the worker.
pub(crate) struct SettlerParts {
    pub(crate) conn: RedisConn,
    pub(crate) keys: Keys,
    pub(crate) scripts: Arc<Scripts>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) attempts: u32,
    pub(crate) backoff: Backoff,
}

impl Settler {
    /// Start the settler task (call within a Tokio runtime).
    pub(crate) fn start(parts: SettlerParts) -> Settler {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(parts, rx));
        Settler { jobs: tx }
    }

    /// Settle `outcome`; true once it is in Redis, false if it could not be.
    pub(crate) async fn settle(&self, outcome: Outcome) -> bool {
        if outcome.len() == 0 {
            return true;
        }
        let (done, settled) = oneshot::channel();
        if self.jobs.send(Job { outcome, done }).is_err() {
            return false;
        }
        settled.await.unwrap_or(false)
    }
}

async fn run(parts: SettlerParts, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut size = first.outcome.len();
        let mut batch = vec![first];
        // Whatever else is waiting goes into the same settlement, up to the cap of
        // one call (settle::calls splits a bigger one).
        while size < scripts::MAX_ITEMS_PER_CALL {
            match jobs.try_recv() {
                Ok(j) => {
                    size += j.outcome.len();
                    batch.push(j);
                }
                Err(_) => break,
            }
        }
        let ok = settle_batch(&parts, &batch).await;
        for job in batch {
            let _ = job.done.send(ok);
        }
    }
}

/// One settle call for every event of `batch` in the default key layout (one per
/// event in the cluster layout, in one pipeline).
async fn settle_batch(parts: &SettlerParts, batch: &[Job]) -> bool {
    type PerEvent<'a> = (Vec<Acked<'a>>, Vec<(&'a [u8], u64)>);
    let mut by_event: BTreeMap<&str, PerEvent<'_>> = BTreeMap::new();
    for job in batch {
        for (event, e) in &job.outcome.acked {
            by_event.entry(event.as_str()).or_default().0.push(Acked {
                raw: &e.raw,
                session_id: &e.session_id,
                // A claim window's deadline while unclaimed (a claim moves it on).
                deadline_ms: e.told_deadline_ms(),
                admitted_ms: e.admitted_ms,
            });
        }
        for (event, e, due) in &job.outcome.retry {
            by_event
                .entry(event.as_str())
                .or_default()
                .1
                .push((e.raw.as_slice(), *due));
        }
    }
    let settlements: Vec<EventSettlement<'_>> = by_event
        .iter()
        .map(|(event, (acked, retry))| EventSettlement {
            event,
            acked,
            retry,
        })
        .collect();
    let calls: Vec<Call<'_>> = settle::calls(&parts.scripts.settle, &parts.keys, &settlements);
    let result = retry::with_retries(parts.attempts, parts.backoff, retry::is_transient, || {
        let mut conn = parts.conn.clone();
        let calls = &calls;
        async move {
            let results = scripts::run_batch(&mut conn, calls).await?;
            match results.into_iter().find_map(Result::err) {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
    })
    .await;
    match result {
        Ok(()) => true,
        Err(e) => {
            // The entries stay claimed; their lease runs out and they are published
            // again (a duplicate the message id lets consumers drop).
            crate::log_limited!(ERROR, "could not settle outbox entries", error = %chain(&e));
            parts.stats.error(ErrorKind::Redis);
            false
        }
    }
}
