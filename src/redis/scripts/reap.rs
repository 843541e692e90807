//! Calls `lua/reap.lua`: take back slots whose checkout window has passed.

use std::time::Duration;

use redis::Value;

use super::{Call, Script, ScriptError};
use crate::model::clock;
use crate::model::keys::Keys;

/// The script of `lua/reap.lua`, its includes spliced in.
pub fn script() -> Script {
    Script::new("reap", include_str!("../../../lua/reap.lua"))
}

/// Most deadlines one call handles.
pub const REAP_LIMIT: u64 = 500;
/// SSCAN COUNT of the adoption sweep, per call.
pub const SWEEP_COUNT: u64 = 100;

/// What one reap did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Slots taken back (status set to `expired`, or `no_show`, where it was
    /// `admitted`); the no-shows among them are counted in `no_shows` too.
    pub expired: u64,
    /// Of those, admissions never claimed within their claim window.
    pub no_shows: u64,
    /// Deadlines dropped because their session no longer holds a slot.
    pub stale: u64,
    /// Slots held without a deadline that got one, so no slot leaks.
    pub adopted: u64,
    /// Ids of the sessions whose slots were taken back.
    pub sessions: Vec<String>,
    /// Worker-owned keys that held garbage and were moved aside or reset.
    pub repaired: Vec<String>,
    /// Untold marks left without an outbox that became real deadlines.
    pub orphans: u64,
}

/// The call for one reap of `event`. The script reads Redis's clock itself;
/// `now_ms` only stamps `ended_at`.
pub fn call<'a>(
    script: &'a Script,
    keys: &Keys,
    event: &str,
    now_ms: u64,
    checkout_window: Duration,
    session_ttl: Duration,
) -> Call<'a> {
    Call {
        script,
        keys: vec![
            keys.deadlines(event),
            keys.processing(event),
            keys.reap_cursor(event),
            keys.outbox(event),
            keys.stats(event),
        ],
        args: vec![
            keys.session_prefix(event),
            checkout_window.as_millis().to_string(),
            REAP_LIMIT.to_string(),
            clock::rfc3339_seconds(now_ms),
            SWEEP_COUNT.to_string(),
            session_ttl.as_millis().max(1).to_string(),
        ],
    }
}

/// Read the script's reply.
pub fn parse(v: Value) -> Result<Reaped, ScriptError> {
    type Reply = (u64, u64, u64, Vec<String>, Vec<String>, u64, u64);
    let (expired, stale, adopted, sessions, repaired, orphans, no_shows): Reply =
        redis::from_redis_value(v).map_err(|e| ScriptError::Reply {
            script: "reap",
            detail: e.to_string(),
        })?;
    Ok(Reaped {
        expired,
        stale,
        adopted,
        sessions,
        repaired,
        orphans,
        no_shows,
    })
}
