//! Calls `lua/settle.lua`: what Kafka said of one event's publish attempts.
//! Acknowledged entries leave the outbox and their slot gets its real deadline in
//! the same atomic step; failed ones are due again later.

use super::{Call, Script};
use crate::model::keys::Keys;

pub fn script() -> Script {
    Script::new("settle", include_str!("../../../lua/settle.lua"))
}

/// An acknowledged entry: the stored member, its session, its deadline and its
/// admission time (ms).
#[derive(Debug, Clone, Copy)]
pub struct Acked<'a> {
    pub raw: &'a [u8],
    pub session_id: &'a str,
    pub deadline_ms: u64,
    pub admitted_ms: u64,
}

/// The settlement of `event`'s publish attempts: `acked` leave the outbox, each of
/// `retry` is due again at its time (ms).
pub fn call<'a>(
    script: &'a Script,
    keys: &Keys,
    event: &str,
    acked: &[Acked<'_>],
    retry: &[(&[u8], u64)],
) -> Call<'a> {
    // Entries that parsed are JSON, so UTF-8: the lossy conversion changes nothing.
    let text = |raw: &[u8]| String::from_utf8_lossy(raw).into_owned();
    let mut args: Vec<String> = Vec::with_capacity(1 + 4 * acked.len() + 2 * retry.len());
    args.push(acked.len().to_string());
    for a in acked {
        args.push(text(a.raw));
        args.push(a.session_id.to_owned());
        args.push(a.deadline_ms.to_string());
        args.push(a.admitted_ms.to_string());
    }
    for (raw, due) in retry {
        args.push(due.to_string());
        args.push(text(raw));
    }
    Call {
        script,
        keys: vec![keys.outbox(event), keys.deadlines(event)],
        args,
    }
}
