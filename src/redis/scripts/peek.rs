//! Calls `lua/peek.lua`: who is first in one event's line, with their user ids, so
//! the worker signs their tokens before its first admit call for the event.

use std::time::Duration;

use redis::Value;

use super::{Call, Script, ScriptError};
use crate::model::keys::Keys;

const NAME: &str = "peek";

/// The script of `lua/peek.lua`.
pub fn script() -> Script {
    Script::new(NAME, include_str!("../../../lua/peek.lua"))
}

/// What the head of an event's line looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// The event's claim window (ms, 0: none), as the admit call will read it: the
    /// tokens are signed with it.
    pub claim_window_ms: u64,
    /// The first waiters, in the order the next admit call takes them: session id,
    /// user id.
    pub prospects: Vec<(String, String)>,
}

/// The call reading the first `n` waiters of each lane of `event` (`claim_window`:
/// the default, for an event whose config sets none).
pub fn call<'a>(
    script: &'a Script,
    keys: &Keys,
    event: &str,
    n: u64,
    claim_window: Duration,
) -> Call<'a> {
    Call {
        script,
        keys: vec![
            keys.queue(event),
            keys.priority(event),
            keys.config(event),
            keys.rate(event),
        ],
        args: vec![
            keys.session_prefix(event),
            n.min(super::admit::MAX_ADMIT_PER_CALL).to_string(),
            claim_window.as_millis().to_string(),
        ],
    }
}

/// Read the script's reply.
pub fn parse(reply: Value) -> Result<Head, ScriptError> {
    let Value::Array(parts) = reply else {
        return Err(ScriptError::reply(NAME, "not an array"));
    };
    let [Value::Int(claim_window), Value::Array(flat)] = parts.as_slice() else {
        return Err(ScriptError::reply(
            NAME,
            "want the claim window and an array",
        ));
    };
    let prospects = super::prospect_pairs(NAME, flat)?;
    Ok(Head {
        claim_window_ms: u64::try_from(*claim_window).unwrap_or(0),
        prospects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_in_pairs_and_anything_else_is_refused() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let head = parse(Value::Array(vec![
            Value::Int(30_000),
            Value::Array(vec![b("s1"), b("u1"), b("s2"), b("u2")]),
        ]));
        assert_eq!(
            head.ok(),
            Some(Head {
                claim_window_ms: 30_000,
                prospects: vec![("s1".into(), "u1".into()), ("s2".into(), "u2".into())],
            })
        );
        assert!(
            parse(Value::Array(vec![
                Value::Int(0),
                Value::Array(vec![b("s1")])
            ]))
            .is_err()
        );
        assert!(parse(Value::Array(vec![Value::Int(0)])).is_err());
        assert!(parse(Value::Nil).is_err());
    }
}
