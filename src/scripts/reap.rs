//! Calls `lua/reap.lua`: take back slots whose checkout window has passed.

use std::time::Duration;

use redis::aio::ConnectionLike;

use super::{Script, ScriptError};
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

pub async fn reap<C: ConnectionLike + Send>(
    script: &Script,
    conn: &mut C,
    keys: &Keys,
    event: &str,
    now_ms: u64,
    checkout_window: Duration,
    session_ttl: Duration,
) -> Result<Reaped, ScriptError> {
    let k = [
        keys.deadlines(event),
        keys.processing(event),
        keys.reap_cursor(event),
    ];
    let argv = [
        keys.session_prefix(event),
        now_ms.to_string(),
        REAP_LIMIT.to_string(),
        clock::rfc3339_seconds(now_ms),
        session_ttl.as_millis().max(1).to_string(),
        SWEEP_COUNT.to_string(),
        clock::deadline_ms(now_ms, checkout_window).to_string(),
    ];
    let keys_ref: Vec<&str> = k.iter().map(String::as_str).collect();
    let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (expired, stale, adopted, sessions): (u64, u64, u64, Vec<String>) =
        script.invoke(conn, &keys_ref, &argv_ref).await?;
    Ok(Reaped {
        expired,
        stale,
        adopted,
        sessions,
    })
}
