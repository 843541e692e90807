//! Calls `lua/set_tokens.lua`: write checkout tokens into session hashes.

use super::{Call, Script};

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

/// The call writing every token of one event; its reply is how many hashes were
/// written (a hash that is gone or belongs to another admission is left alone).
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
