//! Calls `lua/quarantine.lua`: move unreadable outbox entries aside, atomically,
//! and give their slots back.

use redis::Value;

use super::{Call, Script, ScriptError};
use crate::model::keys::Keys;

/// The script of `lua/quarantine.lua`, its includes spliced in.
pub fn script() -> Script {
    Script::new("quarantine", include_str!("../../../lua/quarantine.lua"))
}

/// What one quarantine did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quarantined {
    /// Entries moved to `<event>:outbox:invalid`.
    pub moved: u64,
    /// Worker-owned keys of the wrong type moved aside first.
    pub repaired: Vec<String>,
}

/// The call moving `bad` (entries exactly as stored) of `event`'s outbox aside.
pub fn call<'a>(script: &'a Script, keys: &Keys, event: &str, bad: &[Vec<u8>]) -> Call<'a> {
    Call {
        script,
        keys: vec![
            keys.outbox(event),
            keys.outbox_invalid(event),
            keys.deadlines(event),
        ],
        // Call arguments are text. An entry that is not UTF-8 (only a hand-made
        // one: the admit script writes JSON) is sent in its lossy form, which is not
        // what is stored: it is not moved (`moved` says so) and keeps being claimed
        // and refused, costing only itself.
        args: bad
            .iter()
            .map(|raw| String::from_utf8_lossy(raw).into_owned())
            .collect(),
    }
}

/// Read the script's reply.
pub fn parse(v: Value) -> Result<Quarantined, ScriptError> {
    let (moved, repaired): (u64, Vec<String>) =
        redis::from_redis_value(v).map_err(|e| ScriptError::Reply {
            script: "quarantine",
            detail: e.to_string(),
        })?;
    Ok(Quarantined { moved, repaired })
}
