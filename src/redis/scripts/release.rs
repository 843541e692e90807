//! Calls `lua/release.lua`: free the slot of a session that finished checkout.

use std::time::Duration;

use redis::aio::ConnectionLike;

use super::{Call, Script, ScriptError};
use crate::model::clock;
use crate::model::keys::Keys;

/// The script of `lua/release.lua`, its includes spliced in.
pub fn script() -> Script {
    Script::new("release", include_str!("../../../lua/release.lua"))
}

/// How a checkout ended, as the completion message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The checkout finished (also when the message names no outcome).
    Completed,
    /// The user left the checkout.
    Abandoned,
    /// The checkout failed.
    Failed,
}

impl Outcome {
    /// The outcome a completion message names; `None` for an unknown one.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "completed" => Some(Outcome::Completed),
            "abandoned" => Some(Outcome::Abandoned),
            "failed" => Some(Outcome::Failed),
            _ => None,
        }
    }

    /// The session status it leads to.
    pub fn status(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Abandoned => "abandoned",
            Outcome::Failed => "failed",
        }
    }
}

/// What a release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The slot was freed.
    Freed,
    /// The session held no slot (a duplicate, or already expired): nothing changed.
    NotInProcessing,
    /// The session held no slot because this very release (same release id) freed
    /// it earlier: an attempt whose reply was lost was applied. Nothing changed.
    AlreadyReleased,
    /// The session's hash names another event: nothing changed.
    OtherEvent,
}

/// The call releasing `session` of `event` (to run alone or in a batch).
/// `release_id` names this release (the same for every attempt of one completion
/// message, unique otherwise); it is recorded as the hash's `released_by`.
/// `quantity` (at least 1) is what a completed checkout bought: it leaves the
/// event's `stock`, when one is set.
#[allow(clippy::too_many_arguments)]
pub fn call<'a>(
    script: &'a Script,
    keys: &Keys,
    event: &str,
    session: &str,
    outcome: Outcome,
    session_ttl: Duration,
    release_id: &str,
    quantity: u64,
) -> Call<'a> {
    Call {
        script,
        keys: vec![
            keys.processing(event),
            keys.deadlines(event),
            keys.session(event, session),
            keys.stats(event),
            keys.config(event),
        ],
        args: vec![
            session.to_owned(),
            event.to_owned(),
            outcome.status().to_owned(),
            clock::rfc3339_seconds(clock::now_ms()),
            session_ttl.as_millis().max(1).to_string(),
            release_id.to_owned(),
            quantity.max(1).to_string(),
        ],
    }
}

/// Read the script's reply.
pub fn parse(r: i64) -> Released {
    match r {
        1 => Released::Freed,
        2 => Released::AlreadyReleased,
        -1 => Released::OtherEvent,
        _ => Released::NotInProcessing,
    }
}

/// Release `session` of `event` in a call of its own (see [`call`]) and read the reply.
#[allow(clippy::too_many_arguments)]
pub async fn release<C: ConnectionLike + Send>(
    script: &Script,
    conn: &mut C,
    keys: &Keys,
    event: &str,
    session: &str,
    outcome: Outcome,
    session_ttl: Duration,
    release_id: &str,
    quantity: u64,
) -> Result<Released, ScriptError> {
    let c = call(
        script,
        keys,
        event,
        session,
        outcome,
        session_ttl,
        release_id,
        quantity,
    );
    let keys_ref: Vec<&str> = c.keys.iter().map(String::as_str).collect();
    let argv_ref: Vec<&str> = c.args.iter().map(String::as_str).collect();
    let r: i64 = script.invoke(conn, &keys_ref, &argv_ref).await?;
    Ok(parse(r))
}
