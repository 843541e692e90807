//! Calls `lua/set_tokens.lua`: write checkout tokens into session hashes.

use super::{Call, Script};

/// The script of `lua/set_tokens.lua`, its includes spliced in.
pub fn script() -> Script {
    Script::new("set_tokens", include_str!("../../../lua/set_tokens.lua"))
}

/// One token to write: the session hash, the `admitted_at` it was signed for, the token.
#[derive(Debug, Clone)]
pub struct TokenPatch {
    /// The session hash the token goes into.
    pub session_key: String,
    /// The `admitted_at` it was signed for: written only while the hash still says it.
    pub admitted_at: String,
    /// The signed checkout token.
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

/// What became of one event's tokens.
#[derive(Debug)]
pub enum Written {
    /// Per token, in order: written or not.
    Flags(Vec<bool>),
    /// The reply could not be read.
    Unexpected(super::ScriptError),
    /// The call failed (the error and its causes, on one line).
    Failed(String),
}

/// The calls writing every event's tokens (`patches`, one list per event): one call
/// for all of them in the default key layout, one per event in the cluster layout
/// (an event's sessions share a hash slot, different events' do not). Read the
/// replies back per event with [`per_event`].
pub fn calls(
    script: &Script,
    layout: crate::model::keys::KeyLayout,
    patches: Vec<Vec<TokenPatch>>,
) -> (Vec<Call<'_>>, Grouping) {
    match layout {
        crate::model::keys::KeyLayout::Default => {
            let lens: Vec<usize> = patches.iter().map(Vec::len).collect();
            let all: Vec<TokenPatch> = patches.into_iter().flatten().collect();
            (vec![call(script, all)], Grouping::Merged(lens))
        }
        crate::model::keys::KeyLayout::Cluster => (
            patches.into_iter().map(|ps| call(script, ps)).collect(),
            Grouping::PerEvent,
        ),
    }
}

/// How the calls of [`calls`] map to events.
#[derive(Debug)]
pub enum Grouping {
    /// One call; each event's number of tokens, in order.
    Merged(Vec<usize>),
    /// One call per event.
    PerEvent,
}

/// The outcome per event, in the order the patches were given to [`calls`].
pub fn per_event(
    grouping: Grouping,
    results: Vec<Result<redis::Value, redis::RedisError>>,
) -> Vec<Written> {
    let read = |r: Result<redis::Value, redis::RedisError>| match r {
        Ok(v) => match parse(v) {
            Ok(flags) => Written::Flags(flags),
            Err(e) => Written::Unexpected(e),
        },
        Err(e) => Written::Failed(crate::base::error_chain::chain(&e).to_string()),
    };
    match grouping {
        Grouping::PerEvent => results.into_iter().map(read).collect(),
        Grouping::Merged(lens) => {
            let outcome = match results.into_iter().next() {
                Some(r) => read(r),
                None => Written::Failed("no reply".to_owned()),
            };
            match outcome {
                Written::Flags(flags) if flags.len() == lens.iter().sum::<usize>() => {
                    let mut rest = flags.as_slice();
                    lens.iter()
                        .map(|&n| {
                            let (mine, after) = rest.split_at(n);
                            rest = after;
                            Written::Flags(mine.to_vec())
                        })
                        .collect()
                }
                Written::Flags(flags) => {
                    let detail = format!(
                        "{} flags for {} tokens",
                        flags.len(),
                        lens.iter().sum::<usize>()
                    );
                    lens.iter()
                        .map(|_| {
                            Written::Unexpected(super::ScriptError::Reply {
                                script: "set_tokens",
                                detail: detail.clone(),
                            })
                        })
                        .collect()
                }
                Written::Unexpected(e) => {
                    let detail = e.to_string();
                    lens.iter()
                        .map(|_| {
                            Written::Unexpected(super::ScriptError::Reply {
                                script: "set_tokens",
                                detail: detail.clone(),
                            })
                        })
                        .collect()
                }
                Written::Failed(e) => lens.iter().map(|_| Written::Failed(e.clone())).collect(),
            }
        }
    }
}
