//! Calls `lua/claim_outbox.lua`: take due outbox entries under a lease.

use std::time::Duration;

use redis::Value;

use super::{Call, Script, ScriptError};

pub fn script() -> Script {
    Script::new("claim_outbox", include_str!("../../lua/claim_outbox.lua"))
}

/// The call claiming up to `limit` entries of `outbox_key` due at `now_ms`; they are
/// due again at `now_ms + lease` unless acknowledged or rescheduled first.
pub fn call<'a>(
    script: &'a Script,
    outbox_key: &str,
    now_ms: u64,
    lease: Duration,
    limit: u64,
) -> Call<'a> {
    Call {
        script,
        keys: vec![outbox_key.to_owned()],
        args: vec![
            now_ms.to_string(),
            lease.as_millis().to_string(),
            limit.to_string(),
        ],
    }
}

/// Read the script's reply: the claimed entries.
pub fn parse(v: Value) -> Result<Vec<Vec<u8>>, ScriptError> {
    redis::from_redis_value(v).map_err(|e| ScriptError::Reply {
        script: "claim_outbox",
        detail: e.to_string(),
    })
}
