//! Calls `lua/claim.lua`: the checkout service claims an admitted session's slot.
//!
//! The worker itself never claims; this module is what `waitroom-worker claim`
//! and the tests call, and it shows a checkout service written in Rust how.

use redis::aio::ConnectionLike;

use super::{Script, ScriptError};
use crate::model::keys::Keys;

const NAME: &str = "claim";

/// The script of `lua/claim.lua` (it includes nothing: `redis-cli --eval` runs the
/// file as it is).
pub fn script() -> Script {
    Script::new(NAME, include_str!("../../../lua/claim.lua"))
}

/// The script's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The slot is the session's until its checkout deadline.
    Claimed,
    /// Claimed before; nothing changed.
    AlreadyClaimed,
    /// The claim window has passed; nothing changed (the slot comes back as a no-show).
    TooLate,
    /// The session holds no slot of this event.
    NotAdmitted,
}

impl Claimed {
    /// The answer as the script gives it (and `claim` prints it).
    pub fn as_str(self) -> &'static str {
        match self {
            Claimed::Claimed => "claimed",
            Claimed::AlreadyClaimed => "already_claimed",
            Claimed::TooLate => "too_late",
            Claimed::NotAdmitted => "not_admitted",
        }
    }

    /// Whether the session may go on to checkout (`claimed`, `already_claimed`).
    pub fn holds(self) -> bool {
        matches!(self, Claimed::Claimed | Claimed::AlreadyClaimed)
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Claimed::Claimed,
            Claimed::AlreadyClaimed,
            Claimed::TooLate,
            Claimed::NotAdmitted,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// Claim `session`'s slot of `event`.
pub async fn claim<C: ConnectionLike + Send>(
    script: &Script,
    conn: &mut C,
    keys: &Keys,
    event: &str,
    session: &str,
) -> Result<Claimed, ScriptError> {
    let k = [
        keys.session(event, session),
        keys.processing(event),
        keys.deadlines(event),
    ];
    let keys_ref: Vec<&str> = k.iter().map(String::as_str).collect();
    let answer: String = script.invoke(conn, &keys_ref, &[session, event]).await?;
    Claimed::parse(&answer).ok_or_else(|| ScriptError::Reply {
        script: NAME,
        detail: format!("unknown answer {answer:?}"),
    })
}
