//! Calls `lua/reap.lua`: take back slots whose checkout window has passed.

use std::time::Duration;

use redis::Value;

use super::{Call, Script, ScriptError};
use crate::clock;
use crate::keys::Keys;

pub fn script() -> Script {
    Script::new("reap", include_str!("../../lua/reap.lua"))
}

/// Most deadlines one call handles.
pub const REAP_LIMIT: u64 = 500;
/// SSCAN COUNT of the adoption sweep, per call.
pub const SWEEP_COUNT: u64 = 100;

/// What one reap did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    pub expired: u64,
    pub stale: u64,
    pub adopted: u64,
    pub sessions: Vec<String>,
}

/// The call for one reap of `event`.
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
        ],
        args: vec![
            keys.session_prefix(event),
            now_ms.to_string(),
            REAP_LIMIT.to_string(),
            clock::rfc3339_seconds(now_ms),
            session_ttl.as_millis().max(1).to_string(),
            SWEEP_COUNT.to_string(),
            clock::deadline_ms(now_ms, checkout_window).to_string(),
        ],
    }
}

/// Read the script's reply.
pub fn parse(v: Value) -> Result<Reaped, ScriptError> {
    let (expired, stale, adopted, sessions): (u64, u64, u64, Vec<String>) =
        redis::from_redis_value(v).map_err(|e| ScriptError::Reply {
            script: "reap",
            detail: e.to_string(),
        })?;
    Ok(Reaped {
        expired,
        stale,
        adopted,
        sessions,
    })
}
