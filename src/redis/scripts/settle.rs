//! Calls `lua/settle.lua`: what Kafka said of publish attempts, for one or more
//! events. Acknowledged entries leave the outbox and their slot gets its real
//! deadline in the same atomic step; failed ones are due again later.

use super::{Call, Script, ScriptError};
use crate::model::keys::{KeyLayout, Keys};

/// The script of `lua/settle.lua`, its includes spliced in.
pub fn script() -> Script {
    Script::new("settle", include_str!("../../../lua/settle.lua"))
}

/// An acknowledged entry: the stored member, its session, its deadline and its
/// admission time (ms).
#[derive(Debug, Clone, Copy)]
pub struct Acked<'a> {
    /// The entry exactly as stored (the outbox member to remove).
    pub raw: &'a [u8],
    /// The session the entry admitted.
    pub session_id: &'a str,
    /// The real checkout deadline (ms) that replaces the session's untold mark.
    pub deadline_ms: u64,
    /// Only a mark not newer than this is replaced, so a later admission keeps its own.
    pub admitted_ms: u64,
}

/// One event's part of a settlement: `acked` leave the outbox, each of `retry` is
/// due again at its time (ms).
#[derive(Debug, Clone, Copy)]
pub struct EventSettlement<'a> {
    /// The event whose outbox and deadlines are settled.
    pub event: &'a str,
    /// Entries Kafka acknowledged: they leave the outbox.
    pub acked: &'a [Acked<'a>],
    /// Entries whose publishing failed, each with when (ms) it is due again.
    pub retry: &'a [(&'a [u8], u64)],
}

/// The settlement of one event's publish attempts.
pub fn call<'a>(
    script: &'a Script,
    keys: &Keys,
    event: &str,
    acked: &[Acked<'_>],
    retry: &[(&[u8], u64)],
) -> Call<'a> {
    call_many(
        script,
        keys,
        &[EventSettlement {
            event,
            acked,
            retry,
        }],
    )
}

/// One call settling every one of `events` (their keys must be in one hash slot,
/// or the server not a cluster: see [`calls`]).
pub fn call_many<'a>(script: &'a Script, keys: &Keys, events: &[EventSettlement<'_>]) -> Call<'a> {
    // Entries that parsed are JSON, so UTF-8: the lossy conversion changes nothing.
    let text = |raw: &[u8]| String::from_utf8_lossy(raw).into_owned();
    let n: usize = events
        .iter()
        .map(|e| 2 + 4 * e.acked.len() + 2 * e.retry.len())
        .sum();
    let mut args: Vec<String> = Vec::with_capacity(n);
    let mut call_keys = Vec::with_capacity(2 * events.len());
    for e in events {
        call_keys.push(keys.outbox(e.event));
        call_keys.push(keys.deadlines(e.event));
        args.push(e.acked.len().to_string());
        args.push(e.retry.len().to_string());
        for a in e.acked {
            args.push(text(a.raw));
            args.push(a.session_id.to_owned());
            args.push(a.deadline_ms.to_string());
            args.push(a.admitted_ms.to_string());
        }
        for (raw, due) in e.retry {
            args.push(due.to_string());
            args.push(text(raw));
        }
    }
    Call {
        script,
        keys: call_keys,
        args,
    }
}

/// The calls settling `events`: in the default key layout (one server, or one
/// Sentinel master) as few as [`super::MAX_ITEMS_PER_CALL`] entries a call allow,
/// one per event in the cluster layout, where each event's keys live in their own
/// hash slot.
pub fn calls<'a>(script: &'a Script, keys: &Keys, events: &[EventSettlement<'_>]) -> Vec<Call<'a>> {
    if events.is_empty() {
        return Vec::new();
    }
    match keys.layout() {
        KeyLayout::Default => {
            let sizes: Vec<usize> = events
                .iter()
                .map(|e| e.acked.len() + e.retry.len())
                .collect();
            super::group_by_size(&sizes, super::MAX_ITEMS_PER_CALL)
                .into_iter()
                .map(|r| call_many(script, keys, &events[r]))
                .collect()
        }
        KeyLayout::Cluster => events
            .chunks(1)
            .map(|one| call_many(script, keys, one))
            .collect(),
    }
}

/// Read the reply: per event of the call, how many of its acknowledged entries were
/// still in the outbox.
pub fn parse(v: redis::Value) -> Result<Vec<u64>, ScriptError> {
    redis::from_redis_value(v).map_err(|e| ScriptError::Reply {
        script: "settle",
        detail: e.to_string(),
    })
}
