//! The outbox: admissions whose QUEUE_READY Kafka has not acknowledged yet.
//!
//! `<prefix>:<event>:outbox` is a sorted set. A member is the JSON array
//! `[session_id, user_id, admitted_ms, deadline_ms]`, or with a claim window
//! `[session_id, user_id, admitted_ms, deadline_ms, claim_by_ms]`, written by the admit script in
//! the same atomic step as the admission; the score is when the entry is next due
//! for publishing (ms). An entry leaves the outbox only after Kafka acknowledged its
//! message. Everything needed to sign the token and build the message is in the
//! entry, so any replica can publish it, after a crash too.

use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

/// One admission waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The member exactly as stored, to remove or reschedule it.
    pub raw: Vec<u8>,
    /// The admitted session.
    pub session_id: String,
    /// Its user.
    pub user_id: String,
    /// When it was admitted (ms since the epoch).
    pub admitted_ms: u64,
    /// When its checkout window ends (ms since the epoch).
    pub deadline_ms: u64,
    /// With a claim window: by when the admission must be claimed (ms since the
    /// epoch, a whole second), or its slot comes back as a no-show.
    pub claim_by_ms: Option<u64>,
}

/// Longest session id or user id an entry may carry, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

/// Latest instant an entry may name: 9999-12-31T23:59:59.999Z, the last one RFC 3339
/// (and so the message and the session hash) can write.
pub const MAX_MS: u64 = crate::model::clock::MAX_MS;

/// Why an outbox member could not be read: the structure, or which field is wrong.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum EntryError {
    /// Wrong: not a JSON array of four (or five) elements.
    #[error(
        "outbox entry is not a JSON array [session_id, user_id, admitted_ms, deadline_ms] \
         (with a claim window, claim_by_ms after them)"
    )]
    Shape,
    /// Wrong: the session id.
    #[error("outbox entry's session_id is not a string of 1 to 1024 bytes")]
    SessionId,
    /// Wrong: the user id.
    #[error("outbox entry's user_id is not a string of 1 to 1024 bytes")]
    UserId,
    /// Wrong: the admission instant.
    #[error(
        "outbox entry's admitted_ms is not an integer from 1 to 253402300799999 \
         (1970-01-01T00:00:00.001Z to 9999-12-31T23:59:59.999Z)"
    )]
    AdmittedMs,
    /// Wrong: the deadline.
    #[error(
        "outbox entry's deadline_ms is not an integer from 1 to 253402300799999 \
         (1970-01-01T00:00:00.001Z to 9999-12-31T23:59:59.999Z)"
    )]
    DeadlineMs,
    /// Wrong: a deadline before the admission.
    #[error("outbox entry's deadline_ms is before its admitted_ms")]
    DeadlineBeforeAdmission,
    /// Wrong: the claim deadline.
    #[error("outbox entry's claim_by_ms is not an integer from its admitted_ms to its deadline_ms")]
    ClaimByMs,
}

/// A non-empty string of at most [`MAX_ID_BYTES`].
fn id(v: &Value, err: EntryError) -> Result<String, EntryError> {
    match v.as_str() {
        Some(s) if !s.is_empty() && s.len() <= MAX_ID_BYTES => Ok(s.to_owned()),
        _ => Err(err),
    }
}

/// A plain JSON integer (no fraction, no exponent, no sign) from 1 to [`MAX_MS`].
/// The admit script writes the instants as decimal digits, so anything else
/// (`1.7e12`, `1e300`, `-1`, `5.5`, a string) was not written by it.
fn instant(v: &Value, err: EntryError) -> Result<u64, EntryError> {
    v.as_u64().filter(|ms| (1..=MAX_MS).contains(ms)).ok_or(err)
}

impl OutboxEntry {
    /// Read a member as the admit script writes it; total: any bytes give an entry or
    /// an error naming what is wrong, never a panic.
    pub fn parse(raw: Vec<u8>) -> Result<Self, EntryError> {
        let v: Value = serde_json::from_slice(&raw).map_err(|_| EntryError::Shape)?;
        let (sid, uid, admitted, deadline, claim_by) = match v.as_array().map(Vec::as_slice) {
            Some([sid, uid, admitted, deadline]) => (sid, uid, admitted, deadline, None),
            Some([sid, uid, admitted, deadline, claim_by]) => {
                (sid, uid, admitted, deadline, Some(claim_by))
            }
            _ => return Err(EntryError::Shape),
        };
        let session_id = id(sid, EntryError::SessionId)?;
        let user_id = id(uid, EntryError::UserId)?;
        let admitted_ms = instant(admitted, EntryError::AdmittedMs)?;
        let deadline_ms = instant(deadline, EntryError::DeadlineMs)?;
        if deadline_ms < admitted_ms {
            return Err(EntryError::DeadlineBeforeAdmission);
        }
        let claim_by_ms = match claim_by {
            None => None,
            Some(v) => Some(
                instant(v, EntryError::ClaimByMs)
                    .ok()
                    .filter(|c| (admitted_ms..=deadline_ms).contains(c))
                    .ok_or(EntryError::ClaimByMs)?,
            ),
        };
        Ok(OutboxEntry {
            raw,
            session_id,
            user_id,
            admitted_ms,
            deadline_ms,
            claim_by_ms,
        })
    }

    /// The JSON a well-formed entry is stored as (what the admit script writes).
    pub fn encode(session_id: &str, user_id: &str, admitted_ms: u64, deadline_ms: u64) -> Vec<u8> {
        serde_json::to_vec(&(session_id, user_id, admitted_ms, deadline_ms)).unwrap_or_default()
    }

    /// Where the slot's deadline goes once Kafka acknowledged the message: the claim
    /// deadline while a claim window runs, else the checkout deadline.
    pub fn told_deadline_ms(&self) -> u64 {
        self.claim_by_ms.unwrap_or(self.deadline_ms)
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

/// When a failed entry is due again: backoff grows with the entry's age (time since
/// its admission), so retries space out exponentially with no per-entry state, shared
/// by every replica: at least `first`, about the age again, at most `max`.
/// Saturates instead of overflowing.
pub fn next_due(now_ms: u64, admitted_ms: u64, first: Duration, max: Duration) -> u64 {
    let age = Duration::from_millis(now_ms.saturating_sub(admitted_ms));
    let delay = age.clamp(first, max.max(first)).as_millis();
    now_ms.saturating_add(u64::try_from(delay).unwrap_or(u64::MAX))
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

    fn parse(raw: &[u8]) -> Result<OutboxEntry, EntryError> {
        OutboxEntry::parse(raw.to_vec())
    }

    #[test]
    fn rejects_what_is_not_a_four_or_five_element_array() {
        for raw in [
            &b"not json"[..],
            b"",
            b"{}",
            b"[]",
            br#"["s","u",1]"#,
            br#"["s","u",1,2,2,3]"#,
            br#""s""#,
            b"\xff\xfe",
            br#"["s","u",1,2"#,
        ] {
            assert_eq!(parse(raw), Err(EntryError::Shape), "{raw:?}");
        }
    }

    #[test]
    fn a_claim_deadline_is_read_and_must_lie_between_admission_and_deadline() {
        let e = parse(br#"["s","u",1000,9000,3000]"#).expect("parses");
        assert_eq!(e.claim_by_ms, Some(3000));
        assert_eq!(e.told_deadline_ms(), 3000);
        let plain = parse(br#"["s","u",1000,9000]"#).expect("parses");
        assert_eq!(plain.claim_by_ms, None);
        assert_eq!(plain.told_deadline_ms(), 9000);
        for raw in [
            &br#"["s","u",1000,9000,999]"#[..],
            br#"["s","u",1000,9000,9001]"#,
            br#"["s","u",1000,9000,"3000"]"#,
            br#"["s","u",1000,9000,3e3]"#,
            br#"["s","u",1000,9000,null]"#,
        ] {
            assert_eq!(parse(raw), Err(EntryError::ClaimByMs), "{raw:?}");
        }
    }

    #[test]
    fn ids_must_be_strings_of_1_to_1024_bytes() {
        assert_eq!(parse(br#"["","u",1,2]"#), Err(EntryError::SessionId));
        assert_eq!(parse(br#"[5,"u",1,2]"#), Err(EntryError::SessionId));
        assert_eq!(parse(br#"[null,"u",1,2]"#), Err(EntryError::SessionId));
        assert_eq!(parse(br#"["s","",1,2]"#), Err(EntryError::UserId));
        assert_eq!(parse(br#"["s",5,1,2]"#), Err(EntryError::UserId));
        assert_eq!(parse(br#"["s",["u"],1,2]"#), Err(EntryError::UserId));
        let at_limit = "s".repeat(1024);
        let over = "s".repeat(1025);
        assert!(OutboxEntry::parse(OutboxEntry::encode(&at_limit, &at_limit, 1, 2)).is_ok());
        assert_eq!(
            OutboxEntry::parse(OutboxEntry::encode(&over, "u", 1, 2)),
            Err(EntryError::SessionId)
        );
        assert_eq!(
            OutboxEntry::parse(OutboxEntry::encode("s", &over, 1, 2)),
            Err(EntryError::UserId)
        );
        // Bytes, not characters: 342 three-byte characters are 1026 bytes.
        let wide = "\u{20ac}".repeat(342);
        assert_eq!(
            OutboxEntry::parse(OutboxEntry::encode(&wide, "u", 1, 2)),
            Err(EntryError::SessionId)
        );
    }

    #[test]
    fn instants_must_be_plain_integers_from_1970_to_9999() {
        for (raw, want) in [
            (&br#"["s","u",1e300,2]"#[..], EntryError::AdmittedMs),
            (br#"["s","u",1,1e300]"#, EntryError::DeadlineMs),
            (br#"["s","u",-1,2]"#, EntryError::AdmittedMs),
            (br#"["s","u",1,-2]"#, EntryError::DeadlineMs),
            (br#"["s","u",0,2]"#, EntryError::AdmittedMs),
            (br#"["s","u",1,0]"#, EntryError::DeadlineMs),
            (br#"["s","u",1.5,2]"#, EntryError::AdmittedMs),
            (br#"["s","u",1,2.5]"#, EntryError::DeadlineMs),
            (br#"["s","u",1.7e12,1700000600000]"#, EntryError::AdmittedMs),
            (
                br#"["s","u",1700000000000,1700000600000.0]"#,
                EntryError::DeadlineMs,
            ),
            (br#"["s","u","1",2]"#, EntryError::AdmittedMs),
            (br#"["s","u",null,2]"#, EntryError::AdmittedMs),
            (br#"["s","u",1,true]"#, EntryError::DeadlineMs),
            (
                br#"["s","u",18446744073709551615,18446744073709551615]"#,
                EntryError::AdmittedMs,
            ),
            (
                br#"["s","u",18446744073709551616,2]"#,
                EntryError::AdmittedMs,
            ),
            (
                br#"["s","u",253402300800000,253402300800000]"#,
                EntryError::AdmittedMs,
            ),
            (br#"["s","u",1,253402300800000]"#, EntryError::DeadlineMs),
        ] {
            assert_eq!(parse(raw), Err(want), "{}", String::from_utf8_lossy(raw));
        }
        let last =
            parse(br#"["s","u",253402300799999,253402300799999]"#).expect("the last ms of 9999");
        assert_eq!((last.admitted_ms, last.deadline_ms), (MAX_MS, MAX_MS));
        let first = parse(br#"["s","u",1,1]"#).expect("the first ms after the epoch");
        assert_eq!((first.admitted_ms, first.deadline_ms), (1, 1));
    }

    #[test]
    fn a_deadline_before_the_admission_is_refused() {
        assert_eq!(
            parse(br#"["s","u",1728816601000,1728815700123]"#),
            Err(EntryError::DeadlineBeforeAdmission)
        );
        assert_eq!(
            parse(br#"["s","u",2,1]"#),
            Err(EntryError::DeadlineBeforeAdmission)
        );
        assert!(parse(br#"["s","u",2,2]"#).is_ok());
    }

    #[test]
    fn each_refusal_says_which_field_is_wrong() {
        let shown = |raw: &[u8]| parse(raw).expect_err("refused").to_string();
        assert!(shown(br#"["","u",1,2]"#).contains("session_id"));
        assert!(shown(br#"["s","",1,2]"#).contains("user_id"));
        assert!(shown(br#"["s","u",1e300,2]"#).contains("admitted_ms"));
        assert!(shown(br#"["s","u",1,1e300]"#).contains("deadline_ms"));
        assert!(shown(br#"["s","u",2,1]"#).contains("before its admitted_ms"));
    }

    #[test]
    fn parse_all_sorts_every_member_into_good_or_bad() {
        let good = OutboxEntry::encode("s", "u", 1, 2);
        let raws = vec![
            good.clone(),
            br#"["s","u",1e300,2]"#.to_vec(),
            b"x".to_vec(),
            br#"["s","u",2,1]"#.to_vec(),
        ];
        let (ok, bad) = parse_all(raws.clone());
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].raw, good);
        assert_eq!(bad, raws[1..]);
    }

    #[test]
    fn retries_space_out_with_age() {
        let s = Duration::from_secs(1);
        let m = Duration::from_secs(30);
        assert_eq!(next_due(10_000, 9_900, s, m), 11_000);
        assert_eq!(next_due(10_000, 5_000, s, m), 15_000);
        assert_eq!(next_due(100_000, 0, s, m), 130_000);
        assert_eq!(next_due(u64::MAX, 0, s, m), u64::MAX);
        assert_eq!(next_due(0, 0, Duration::MAX, Duration::MAX), u64::MAX);
    }
}
