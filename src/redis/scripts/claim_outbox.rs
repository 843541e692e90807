//! Calls `lua/claim_outbox.lua`: take due outbox entries under a lease, oldest
//! admission first, renewing admissions whose window ran out unpublished.

use std::time::Duration;

use redis::Value;

use super::{Call, Script, ScriptError};
use crate::model::keys::Keys;

/// The script of `lua/claim_outbox.lua`, its includes spliced in.
pub fn script() -> Script {
    Script::new(
        "claim_outbox",
        include_str!("../../../lua/claim_outbox.lua"),
    )
}

/// How one event's claim is made.
#[derive(Debug, Clone, Copy)]
pub struct ClaimArgs {
    /// Claimed entries are due again after this unless settled first.
    pub lease: Duration,
    /// The most entries one call claims.
    pub limit: u64,
    /// The checkout window (a renewed admission gets a whole one).
    pub checkout_window: Duration,
    /// Renew an admission whose deadline is closer than this.
    pub renew_within: Duration,
    /// TTL set again on a renewed admission's session hash.
    pub session_ttl: Duration,
}

/// What one claim gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    /// Admissions renewed because their window ran out unpublished.
    pub renewed: u64,
    /// Entries dropped: their session no longer holds the slot.
    pub dropped: u64,
    /// The claimed entries, oldest admission first (unreadable ones first).
    pub entries: Vec<Vec<u8>>,
}

/// The claim of `event`'s due outbox entries.
pub fn call<'a>(script: &'a Script, keys: &Keys, event: &str, a: &ClaimArgs) -> Call<'a> {
    Call {
        script,
        keys: vec![
            keys.outbox(event),
            keys.processing(event),
            keys.deadlines(event),
        ],
        args: vec![
            a.limit.to_string(),
            a.lease.as_millis().to_string(),
            keys.session_prefix(event),
            a.renew_within.as_millis().to_string(),
            a.checkout_window.as_millis().to_string(),
            a.session_ttl.as_millis().max(1).to_string(),
        ],
    }
}

/// Read the script's reply.
pub fn parse(v: Value) -> Result<Claimed, ScriptError> {
    let ((renewed, dropped), entries): ((u64, u64), Vec<Vec<u8>>) = redis::from_redis_value(v)
        .map_err(|e| ScriptError::Reply {
            script: "claim_outbox",
            detail: e.to_string(),
        })?;
    Ok(Claimed {
        renewed,
        dropped,
        entries,
    })
}
