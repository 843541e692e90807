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

/// The calls writing every event's tokens (`patches`, one list per event): in the
/// default key layout as few as [`super::MAX_ITEMS_PER_CALL`] tokens a call allow,
/// one per event in the cluster layout (an event's sessions share a hash slot,
/// different events' do not). Read the replies back per event with [`per_event`].
pub fn calls(
    script: &Script,
    layout: crate::model::keys::KeyLayout,
    patches: Vec<Vec<TokenPatch>>,
) -> (Vec<Call<'_>>, Grouping) {
    match layout {
        crate::model::keys::KeyLayout::Default => {
            let sizes: Vec<usize> = patches.iter().map(Vec::len).collect();
            let mut events = patches.into_iter();
            let mut calls = Vec::new();
            let mut lens = Vec::new();
            for r in super::group_by_size(&sizes, super::MAX_ITEMS_PER_CALL) {
                let group: Vec<Vec<TokenPatch>> = events.by_ref().take(r.len()).collect();
                lens.push(group.iter().map(Vec::len).collect());
                calls.push(call(script, group.into_iter().flatten().collect()));
            }
            (calls, Grouping::Merged(lens))
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
    /// Per call, its events' numbers of tokens, in order.
    Merged(Vec<Vec<usize>>),
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
        Grouping::Merged(groups) => {
            let mut results = results.into_iter();
            let mut out = Vec::new();
            for lens in groups {
                let outcome = match results.next() {
                    Some(r) => read(r),
                    None => Written::Failed("no reply".to_owned()),
                };
                out.extend(split(outcome, &lens));
            }
            out
        }
    }
}

/// One merged call's outcome, per event of the call.
fn split(outcome: Written, lens: &[usize]) -> Vec<Written> {
    let total: usize = lens.iter().sum();
    let unexpected = |detail: String| {
        lens.iter()
            .map(|_| {
                Written::Unexpected(super::ScriptError::Reply {
                    script: "set_tokens",
                    detail: detail.clone(),
                })
            })
            .collect()
    };
    match outcome {
        Written::Flags(flags) if flags.len() == total => {
            let mut rest = flags.as_slice();
            lens.iter()
                .map(|&n| {
                    let (mine, after) = rest.split_at(n);
                    rest = after;
                    Written::Flags(mine.to_vec())
                })
                .collect()
        }
        Written::Flags(flags) => unexpected(format!("{} flags for {total} tokens", flags.len())),
        Written::Unexpected(e) => unexpected(e.to_string()),
        Written::Failed(e) => lens.iter().map(|_| Written::Failed(e.clone())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patches(n: usize) -> Vec<TokenPatch> {
        (0..n)
            .map(|i| TokenPatch {
                session_key: format!("s{i}"),
                admitted_at: "2026-11-29T00:00:00Z".into(),
                token: "t".into(),
            })
            .collect()
    }

    #[test]
    fn merged_calls_are_capped_and_replies_go_back_to_their_events() {
        let script = script();
        let big = crate::redis::scripts::MAX_ITEMS_PER_CALL;
        let (made, grouping) = calls(
            &script,
            crate::model::keys::KeyLayout::Default,
            vec![patches(2), patches(big), patches(1)],
        );
        let sizes: Vec<usize> = made.iter().map(|c| c.keys.len()).collect();
        assert_eq!(sizes, vec![2, big, 1], "no call over the cap");
        let flags =
            |v: &[i64]| redis::Value::Array(v.iter().map(|&f| redis::Value::Int(f)).collect());
        let out = per_event(
            grouping,
            vec![
                Ok(flags(&[1, 0])),
                Ok(flags(&vec![1; big])),
                Ok(flags(&[0])),
            ],
        );
        let got: Vec<Vec<bool>> = out
            .into_iter()
            .map(|w| match w {
                Written::Flags(f) => f,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got[0], vec![true, false]);
        assert_eq!(got[1], vec![true; big]);
        assert_eq!(got[2], vec![false]);

        // Two small events share a call; a missing reply fails both, not others.
        let (small, grouping) = calls(
            &script,
            crate::model::keys::KeyLayout::Default,
            vec![patches(1), patches(2)],
        );
        assert_eq!(small.len(), 1);
        let out = per_event(grouping, vec![]);
        assert!(out.iter().all(|w| matches!(w, Written::Failed(_))));
        assert_eq!(out.len(), 2);
    }
}
