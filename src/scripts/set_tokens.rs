//! Calls `lua/set_tokens.lua`: write checkout tokens into session hashes.

use redis::aio::ConnectionLike;

use super::{Script, ScriptError};

pub fn script() -> Script {
    Script::new("set_tokens", include_str!("../../lua/set_tokens.lua"))
}

/// One token to write: the session hash, the `admitted_at` it was signed for, the token.
#[derive(Debug, Clone)]
pub struct TokenPatch {
    pub session_key: String,
    pub admitted_at: String,
    pub token: String,
}

/// Write every token in one call; returns how many hashes were written (a hash that
/// is gone or belongs to another admission is left alone).
pub async fn set_tokens<C: ConnectionLike + Send>(
    script: &Script,
    conn: &mut C,
    patches: &[TokenPatch],
) -> Result<u64, ScriptError> {
    if patches.is_empty() {
        return Ok(0);
    }
    let keys: Vec<&str> = patches.iter().map(|p| p.session_key.as_str()).collect();
    let args: Vec<&str> = patches
        .iter()
        .flat_map(|p| [p.admitted_at.as_str(), p.token.as_str()])
        .collect();
    script.invoke(conn, &keys, &args).await
}
