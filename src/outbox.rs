//! The outbox: admissions whose QUEUE_READY Kafka has not acknowledged yet.
//!
//! `<prefix>:<event>:outbox` is a sorted set. A member is the JSON array
//! `[session_id, user_id, admitted_ms, deadline_ms]`, written by the admit script in
//! the same atomic step as the admission; the score is when the entry is next due
//! for publishing (ms). An entry leaves the outbox only after Kafka acknowledged its
//! message. Everything needed to sign the token and build the message is in the
//! entry, so any replica can publish it, after a crash too.

use std::time::Duration;

use redis::RedisError;
use redis::aio::ConnectionLike;
use serde_json::Value;
use thiserror::Error;

/// One admission waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The member exactly as stored, to remove or reschedule it.
    pub raw: Vec<u8>,
    pub session_id: String,
    pub user_id: String,
    pub admitted_ms: u64,
    pub deadline_ms: u64,
}

/// Why an outbox member could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("outbox entry is not a JSON array [session_id, user_id, admitted_ms, deadline_ms]")]
    Shape,
}

impl OutboxEntry {
    pub fn parse(raw: Vec<u8>) -> Result<Self, EntryError> {
        let v: Value = serde_json::from_slice(&raw).map_err(|_| EntryError::Shape)?;
        let a = v
            .as_array()
            .filter(|a| a.len() == 4)
            .ok_or(EntryError::Shape)?;
        let text = |i: usize| a[i].as_str().map(str::to_owned).ok_or(EntryError::Shape);
        let ms = |i: usize| {
            a[i].as_u64()
                .or_else(|| {
                    a[i].as_f64()
                        .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                        .map(|f| f as u64)
                })
                .ok_or(EntryError::Shape)
        };
        let entry = OutboxEntry {
            session_id: text(0)?,
            user_id: text(1)?,
            admitted_ms: ms(2)?,
            deadline_ms: ms(3)?,
            raw,
        };
        if entry.session_id.is_empty() || entry.user_id.is_empty() {
            return Err(EntryError::Shape);
        }
        Ok(entry)
    }

    /// The JSON a well-formed entry is stored as (what the admit script writes).
    pub fn encode(session_id: &str, user_id: &str, admitted_ms: u64, deadline_ms: u64) -> Vec<u8> {
        serde_json::to_vec(&(session_id, user_id, admitted_ms, deadline_ms)).unwrap_or_default()
    }
}

/// Entries a claim or admission returned, split into those that parse and those that
/// do not (which are moved aside so they are not claimed again and again).
pub fn parse_all(raws: Vec<Vec<u8>>) -> (Vec<OutboxEntry>, Vec<Vec<u8>>) {
    let mut good = Vec::with_capacity(raws.len());
    let mut bad = Vec::new();
    for raw in raws {
        match OutboxEntry::parse(raw.clone()) {
            Ok(e) => good.push(e),
            Err(_) => bad.push(raw),
        }
    }
    (good, bad)
}

/// What to do with each entry after a publish attempt, applied in one round trip.
#[derive(Debug, Default)]
pub struct Settlement<'a> {
    /// Kafka acknowledged these: remove them.
    pub acked: Vec<&'a [u8]>,
    /// These failed: due again at the given time (ms).
    pub retry: Vec<(&'a [u8], u64)>,
}

/// Remove the acknowledged entries and reschedule the failed ones, for many
/// outboxes (key, settlement) in one pipeline. Rescheduling uses ZADD XX: an entry
/// another replica already acknowledged is not brought back.
pub async fn settle_many<C: ConnectionLike + Send>(
    conn: &mut C,
    settlements: &[(String, Settlement<'_>)],
) -> Result<(), RedisError> {
    let mut p = redis::pipe();
    let mut any = false;
    for (key, s) in settlements {
        any |= add_settlement(&mut p, key, s);
    }
    if !any {
        return Ok(());
    }
    p.query_async::<()>(conn).await
}

fn add_settlement(p: &mut redis::Pipeline, outbox_key: &str, s: &Settlement<'_>) -> bool {
    if !s.acked.is_empty() {
        p.cmd("ZREM").arg(outbox_key).arg(&s.acked).ignore();
    }
    if !s.retry.is_empty() {
        let mut c = redis::cmd("ZADD");
        c.arg(outbox_key).arg("XX");
        for (raw, due) in &s.retry {
            c.arg(*due).arg(*raw);
        }
        p.add_command(c).ignore();
    }
    !s.acked.is_empty() || !s.retry.is_empty()
}

/// Move unreadable entries to `<outbox>:invalid` (same score) so an operator can look
/// at them, and out of the way of the claim. An entry whose session id can still be
/// read gives its slot a deadline of now (`deadlines_key`, only lowering): nobody can
/// be told from a corrupt entry, so its untold mark must not hold the slot forever.
pub async fn quarantine<C: ConnectionLike + Send>(
    conn: &mut C,
    outbox_key: &str,
    invalid_key: &str,
    deadlines_key: &str,
    bad: &[Vec<u8>],
    now_ms: u64,
) -> Result<(), RedisError> {
    if bad.is_empty() {
        return Ok(());
    }
    let mut p = redis::pipe();
    let mut add = redis::cmd("ZADD");
    add.arg(invalid_key);
    for raw in bad {
        add.arg(now_ms).arg(raw);
    }
    p.add_command(add).ignore();
    p.cmd("ZREM").arg(outbox_key).arg(bad).ignore();
    for sid in bad.iter().filter_map(|raw| session_of(raw)) {
        p.cmd("ZADD")
            .arg(deadlines_key)
            .arg("XX")
            .arg("LT")
            .arg(now_ms)
            .arg(sid)
            .ignore();
    }
    p.query_async::<()>(conn).await
}

/// The session id of an outbox member that is otherwise unreadable, if its first
/// element is still a non-empty string.
fn session_of(raw: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    let sid = v.as_array()?.first()?.as_str()?;
    (!sid.is_empty()).then(|| sid.to_owned())
}

/// When a failed entry is due again: backoff grows with the entry's age (time since
/// its admission), so retries space out exponentially with no per-entry state, shared
/// by every replica: at least `first`, about the age again, at most `max`.
pub fn next_due(now_ms: u64, admitted_ms: u64, first: Duration, max: Duration) -> u64 {
    let age = Duration::from_millis(now_ms.saturating_sub(admitted_ms));
    now_ms + age.clamp(first, max.max(first)).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_admit_script_writes() {
        let raw = br#"["session-abc","user-123",1728815700123,1728816601000]"#.to_vec();
        let e = OutboxEntry::parse(raw.clone()).expect("parses");
        assert_eq!(e.session_id, "session-abc");
        assert_eq!(e.user_id, "user-123");
        assert_eq!(e.admitted_ms, 1_728_815_700_123);
        assert_eq!(e.deadline_ms, 1_728_816_601_000);
        assert_eq!(
            OutboxEntry::encode(
                "session-abc",
                "user-123",
                1_728_815_700_123,
                1_728_816_601_000
            ),
            raw
        );
    }

    #[test]
    fn rejects_garbage() {
        for raw in [
            &b"not json"[..],
            b"{}",
            br#"["s","u",1]"#,
            br#"["s",5,1,2]"#,
            br#"["","u",1,2]"#,
            br#"["s","u",-1,2]"#,
            b"\xff\xfe",
        ] {
            assert_eq!(
                OutboxEntry::parse(raw.to_vec()),
                Err(EntryError::Shape),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn retries_space_out_with_age() {
        let s = Duration::from_secs(1);
        let m = Duration::from_secs(30);
        assert_eq!(next_due(10_000, 9_900, s, m), 11_000);
        assert_eq!(next_due(10_000, 5_000, s, m), 15_000);
        assert_eq!(next_due(100_000, 0, s, m), 130_000);
    }
}
