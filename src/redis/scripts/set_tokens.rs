//! Calls `lua/set_tokens.lua`: write checkout tokens into session hashes.

use super::{Call, Script};

pub fn script() -> Script {
    Script::new("set_tokens", include_str!("../../../lua/set_tokens.lua"))
}

/// One token to write: the session hash, the `admitted_at` it was signed for, the token.
#[derive(Debug, Clone)]
pub struct TokenPatch {
    pub session_key: String,
    pub admitted_at: String,
    pub token: String,
}

/// The call writing every token of one event; its reply says, per token, whether it
/// was written (a hash that is gone, no longer `admitted` or of another admission is
/// left alone, and its QUEUE_READY is not sent).
pub fn call(script: &Script, patches: Vec<TokenPatch>) -> Call<'_> {
    let mut keys = Vec::with_capacity(patches.len());
    let mut args = Vec::with_capacity(2 * patches.len());
    for p in patches {
        keys.push(p.session_key);
        args.push(p.admitted_at);
        args.push(p.token);
    }
    Call { script, keys, args }
}

/// Read the reply: per token, whether it was written.
pub fn parse(v: redis::Value) -> Result<Vec<bool>, super::ScriptError> {
    let flags: Vec<i64> = redis::from_redis_value(v).map_err(|e| super::ScriptError::Reply {
        script: "set_tokens",
        detail: e.to_string(),
    })?;
    Ok(flags.into_iter().map(|f| f == 1).collect())
}
