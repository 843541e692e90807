//! What `waitroom-worker status` and `waitroom-worker inspect` show: read-only views
//! of the Redis state, one pipeline per event or session.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::RedisError;
use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::model::clock;
use crate::model::event::EventId;
use crate::model::keys::Keys;
use crate::model::outbox::OutboxEntry;
use crate::redis::heartbeat;

/// One event at a glance.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventStatus {
    /// Sessions waiting in the main queue.
    pub queue_length: u64,
    /// Sessions waiting in the priority lane.
    pub priority_length: u64,
    /// How long the first in line has waited (ms), if anyone waits.
    pub oldest_wait_ms: Option<u64>,
    /// Checkout slots taken.
    pub slots_in_use: u64,
    /// The event's capacity.
    pub capacity: u64,
    /// Whether the config hash pauses it.
    pub paused: bool,
    /// Admissions whose QUEUE_READY Kafka has not acknowledged.
    pub outbox_depth: u64,
    /// Admissions in the current minute, all replicas.
    pub admitted_this_minute: u64,
    /// Admissions in the previous minute, all replicas.
    pub admitted_last_minute: u64,
    /// Age of the oldest admission whose QUEUE_READY is not acknowledged yet (ms).
    pub unpublished_age_ms: Option<u64>,
    /// The configured `new_users_per_minute`, if any.
    pub rate_per_minute: Option<u64>,
    /// Why the event admits nobody, if it does not: `retired` (known, no longer
    /// served), `publishing_stalled` (unpublished age past the max), `paused`.
    pub held: Option<String>,
    /// The wait figures the workers last wrote to the stats hash, if any.
    pub wait: Option<WaitView>,
    /// Units left (the config's `stock`), when set; 0 is sold out.
    pub stock: Option<u64>,
    /// The checkout-health valve's effective capacity and the reason of its last
    /// step, when the event's config turns it on (`adaptive`).
    pub valve: Option<(u64, String)>,
}

/// The wait figures of `<prefix>:<event>:stats`, as the API reads them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WaitView {
    /// How much each position ahead adds to a waiter's wait, ms.
    pub wait_ms_per_position: f64,
    /// `measured` or `bound`.
    pub basis: Option<String>,
    /// Mean time from admission to completion, ms.
    pub avg_checkout_ms: Option<f64>,
    /// Share of freed slots never claimed.
    pub no_show_rate: Option<f64>,
    /// Share of waiters at their turn who had left.
    pub left_queue_rate: Option<f64>,
    /// When a worker last wrote them (RFC 3339).
    pub updated_at: Option<String>,
}

/// A worker-written decimal: finite and not negative, else absent.
fn decimal(v: &Option<String>) -> Option<f64> {
    v.as_deref()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|f| f.is_finite() && *f >= 0.0)
}

/// Every event at a glance, and the replicas alive.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    /// Per event id.
    pub events: BTreeMap<String, EventStatus>,
    /// Ids of the live workers.
    pub live_workers: Vec<String>,
}

/// A number as the contract writes it: plain decimal digits that fit a u64. Anything
/// else (`inf`, `1e3`, `+5`, ` 5`, `-1`, `0x10`) reads as absent.
fn int(v: &Option<String>) -> Option<u64> {
    v.as_deref()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
}

/// Whether the config's `paused` value stops admission, as the admit script reads
/// it: absent or 0/false/no/off (any case) admits, 1/true/yes/on pauses, and any
/// other value pauses too (fail safe: the operator meant something).
fn pause_flag(v: Option<&str>) -> bool {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None | Some("0" | "false" | "no" | "off") => false,
        Some(_) => true,
    }
}

/// An event id the worker would serve: UTF-8, non-empty, without braces. Other
/// members of `active_events` are ignored by the worker, and so here.
fn event_id(raw: Vec<u8>) -> Option<String> {
    String::from_utf8(raw).ok().filter(|e| EventId::is_valid(e))
}

/// Read the status of `events` (or, when empty, of every active event and every
/// retired one still draining).
pub async fn status<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    events: &[String],
    default_capacity: u64,
    max_unpublished_age: Duration,
) -> Result<Status, RedisError> {
    let mut list: Vec<String> = events.to_vec();
    let mut retired = std::collections::BTreeSet::new();
    if list.is_empty() {
        let (active, known): (Vec<Vec<u8>>, Vec<Vec<u8>>) = redis::pipe()
            .cmd("SMEMBERS")
            .arg(keys.active_events())
            .cmd("SMEMBERS")
            .arg(keys.known_events())
            .query_async(conn)
            .await?;
        list = active.into_iter().filter_map(event_id).collect();
        for e in known.into_iter().filter_map(event_id) {
            if !list.contains(&e) {
                retired.insert(e.clone());
                list.push(e);
            }
        }
        list.sort();
    }
    // Redis's clock, as the scripts use it.
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    let now = secs.saturating_mul(1000).saturating_add(micros / 1000);
    let untold = crate::redis::scripts::admit::UNTOLD_MS;
    let minute = now / 60_000;
    let mut out = BTreeMap::new();
    for e in list {
        type Row = (
            u64,
            u64,
            Vec<(Vec<u8>, f64)>,
            Vec<(Vec<u8>, f64)>,
            u64,
            (
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            ),
            u64,
            (Option<String>, Option<String>, Option<String>),
            Vec<(Vec<u8>, f64)>,
            Vec<Option<String>>,
            (Option<String>, Option<String>),
        );
        let (
            q,
            p,
            head,
            phead,
            in_use,
            (cap, paused, rate, stock, adaptive),
            outbox,
            (m, count, prev),
            mark,
            w,
            (valve_cap, valve_reason),
        ): Row = redis::pipe()
            .cmd("ZCARD")
            .arg(keys.queue(&e))
            .cmd("ZCARD")
            .arg(keys.priority(&e))
            .cmd("ZRANGE")
            .arg(keys.queue(&e))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .cmd("ZRANGE")
            .arg(keys.priority(&e))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .cmd("SCARD")
            .arg(keys.processing(&e))
            .cmd("HMGET")
            .arg(keys.config(&e))
            .arg("max_concurrent")
            .arg("paused")
            .arg("new_users_per_minute")
            .arg("stock")
            .arg("adaptive")
            .cmd("ZCARD")
            .arg(keys.outbox(&e))
            .cmd("HMGET")
            .arg(keys.rate(&e))
            .arg("minute")
            .arg("count")
            .arg("prev")
            .cmd("ZRANGEBYSCORE")
            .arg(keys.deadlines(&e))
            .arg(untold)
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(1)
            .cmd("HMGET")
            .arg(keys.stats(&e))
            .arg("wait_ms_per_position")
            .arg("wait_basis")
            .arg("avg_checkout_ms")
            .arg("no_show_rate")
            .arg("left_queue_rate")
            .arg("updated_at")
            .cmd("HMGET")
            .arg(keys.valve(&e))
            .arg("cap")
            .arg("reason")
            .query_async(conn)
            .await?;
        let field = |i: usize| w.get(i).cloned().flatten();
        let wait = decimal(&field(0)).map(|per| WaitView {
            wait_ms_per_position: per,
            basis: field(1),
            avg_checkout_ms: decimal(&field(2)),
            no_show_rate: decimal(&field(3)),
            left_queue_rate: decimal(&field(4)),
            updated_at: field(5),
        });
        // The oldest untold mark: 2^50 + its admission time.
        let unpublished_age_ms = mark
            .first()
            .map(|(_, s)| *s)
            .filter(|s| s.is_finite() && *s >= untold as f64)
            .map(|s| now.saturating_sub((s - untold as f64) as u64));
        let paused = pause_flag(paused.as_deref());
        let stock = int(&stock);
        // `adaptive` as the admit script reads it: on words only (anything else off).
        let adaptive = matches!(
            adaptive.as_deref().map(str::to_ascii_lowercase).as_deref(),
            Some("1" | "true" | "yes" | "on")
        );
        let valve = match (adaptive, int(&valve_cap)) {
            (true, Some(c)) => Some((c, valve_reason.unwrap_or_default())),
            _ => None,
        };
        let held = if retired.contains(&e) {
            Some("retired")
        } else if unpublished_age_ms.is_some_and(|a| a > max_unpublished_age.as_millis() as u64) {
            Some("publishing_stalled")
        } else if stock == Some(0) {
            Some("sold_out")
        } else if paused {
            Some("paused")
        } else {
            None
        };
        // Only a plausible join time (1970 to 9999) counts; a score of inf, -5 or
        // 1e300 is no instant anyone joined at.
        let oldest = head
            .iter()
            .chain(phead.iter())
            .map(|(_, s)| *s)
            .filter(|s| (0.0..=clock::MAX_MS as f64).contains(s))
            .fold(None, |a: Option<f64>, s| Some(a.map_or(s, |a| a.min(s))));
        let (this, last) = match int(&m) {
            Some(x) if x == minute => (int(&count).unwrap_or(0), int(&prev).unwrap_or(0)),
            Some(x) if minute.checked_sub(1) == Some(x) => (0, int(&count).unwrap_or(0)),
            _ => (0, 0),
        };
        out.insert(
            e,
            EventStatus {
                queue_length: q,
                priority_length: p,
                oldest_wait_ms: oldest.map(|s| now.saturating_sub(s as u64)),
                slots_in_use: in_use,
                capacity: int(&cap).unwrap_or(default_capacity),
                paused,
                outbox_depth: outbox,
                admitted_this_minute: this,
                admitted_last_minute: last,
                unpublished_age_ms,
                rate_per_minute: int(&rate),
                held: held.map(str::to_owned),
                wait,
                stock,
                valve,
            },
        );
    }
    // Each heartbeat carries its own expiry: live = not expired on Redis's clock.
    let live_workers = heartbeat::live(conn, keys, now).await?;
    Ok(Status {
        events: out,
        live_workers,
    })
}

/// Render a status as a screen of text.
pub fn render_status(s: &Status) -> String {
    let mut t = format!(
        "{:<24} {:>9} {:>9} {:>12} {:>9} {:>6} {:>7} {:>12} {:>8} {:>11} {:>9} {:>8} {}\n",
        "event",
        "queued",
        "priority",
        "oldest wait",
        "in use",
        "paused",
        "outbox",
        "admitted/min",
        "rate/min",
        "unpublished",
        "wait/pos",
        "stock",
        "held"
    );
    for (e, v) in &s.events {
        let wait = v
            .oldest_wait_ms
            .map(|ms| humantime::format_duration(Duration::from_secs(ms / 1000)).to_string())
            .unwrap_or_else(|| "-".into());
        let unpublished = v
            .unpublished_age_ms
            .map(|ms| humantime::format_duration(Duration::from_secs(ms / 1000)).to_string())
            .unwrap_or_else(|| "-".into());
        t.push_str(&format!(
            "{:<24} {:>9} {:>9} {:>12} {:>4}/{:<4} {:>6} {:>7} {:>5} ({:>4}) {:>8} {:>11} {:>9} {:>8} {}{}\n",
            e,
            v.queue_length,
            v.priority_length,
            wait,
            v.slots_in_use,
            v.capacity,
            if v.paused { "yes" } else { "no" },
            v.outbox_depth,
            v.admitted_this_minute,
            v.admitted_last_minute,
            v.rate_per_minute
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            unpublished,
            v.wait
                .as_ref()
                .map(|w| format!("{:.0}ms", w.wait_ms_per_position))
                .unwrap_or_else(|| "-".into()),
            v.stock
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            v.held.as_deref().unwrap_or("-"),
            v.valve
                .as_ref()
                .map(|(c, r)| format!("  valve {c} ({r})"))
                .unwrap_or_default(),
        ));
    }
    if s.events.is_empty() {
        t.push_str("(no active events)\n");
    }
    t.push_str(&format!(
        "live workers ({}): {}\n",
        s.live_workers.len(),
        if s.live_workers.is_empty() {
            "none".to_owned()
        } else {
            s.live_workers.join(", ")
        }
    ));
    t
}

/// Where one session stands.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionView {
    /// The session id.
    pub session_id: String,
    /// Its hash's key.
    pub key: String,
    /// Its event (given, or read from the hash).
    pub event_id: Option<String>,
    /// The hash's fields (the token shortened unless asked).
    pub hash: BTreeMap<String, String>,
    /// 1-based position in the queue, if waiting there.
    pub queue_position: Option<u64>,
    /// 1-based position in the priority lane, if waiting there.
    pub priority_position: Option<u64>,
    /// Whether it holds a checkout slot.
    pub in_processing: bool,
    /// When its slot is taken back, if it has a deadline.
    pub deadline: Option<String>,
    /// When it was admitted, if its QUEUE_READY is not acknowledged yet: its slot
    /// has no deadline until then (it is never reaped untold).
    pub untold_since: Option<String>,
    /// The outbox entry, if its QUEUE_READY is not yet acknowledged.
    pub outbox_entry: Option<String>,
}

/// The SCAN MATCH pattern that narrows the outbox to entries that may be `session`'s.
///
/// The admit script writes entries with cjson, which escapes more than serde_json
/// does (`/` as `\/`, 0x7f as `\u007f`), so the session's own encoding cannot be
/// matched. Only the id's leading run of characters that cjson and serde_json both
/// write as themselves (ASCII letters, digits, `-`, `_`, `.`, `:`; none a glob
/// character) goes in the pattern; the entries it lets through are decoded and
/// compared, so an id of other characters costs a wider scan, never a miss.
fn outbox_pattern(session: &str) -> String {
    let plain: String = session
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        .collect();
    format!("\\[\"{plain}*")
}

/// Whether an outbox member is the entry of `session` (decoded, so however it was
/// escaped). An entry the worker refuses (out-of-range values, bytes that are not
/// UTF-8) still names its session if its first element does: the operator sees it.
fn is_entry_of(member: &[u8], session: &str) -> bool {
    if let Ok(e) = OutboxEntry::parse(member.to_vec()) {
        return e.session_id == session;
    }
    // Only the first element is read: whatever follows may not even be JSON.
    let text = String::from_utf8_lossy(member);
    let Some(rest) = text.trim_start().strip_prefix('[') else {
        return false;
    };
    let mut de = serde_json::Deserializer::from_str(rest);
    <String as serde::Deserialize>::deserialize(&mut de).is_ok_and(|s| s == session)
}

fn lossy(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Look one session up; `event` is needed in the cluster layout, else read from the hash.
pub async fn inspect<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    session: &str,
    event: Option<&str>,
) -> Result<SessionView, RedisError> {
    let key = keys.session(event.unwrap_or(""), session);
    // Bytes, not strings: a field or value that is not UTF-8 is shown, not an error.
    let raw: BTreeMap<Vec<u8>, Vec<u8>> = redis::cmd("HGETALL").arg(&key).query_async(conn).await?;
    let event = event
        .map(str::to_owned)
        .or_else(|| raw.get(&b"event_id"[..]).and_then(|e| event_id(e.clone())));
    let hash: BTreeMap<String, String> =
        raw.into_iter().map(|(k, v)| (lossy(k), lossy(v))).collect();
    let mut view = SessionView {
        session_id: session.to_owned(),
        key,
        event_id: event.clone(),
        hash,
        queue_position: None,
        priority_position: None,
        in_processing: false,
        deadline: None,
        untold_since: None,
        outbox_entry: None,
    };
    let Some(e) = event else {
        return Ok(view);
    };
    let (q, p, inproc, deadline): (Option<u64>, Option<u64>, bool, Option<f64>) = redis::pipe()
        .cmd("ZRANK")
        .arg(keys.queue(&e))
        .arg(session)
        .cmd("ZRANK")
        .arg(keys.priority(&e))
        .arg(session)
        .cmd("SISMEMBER")
        .arg(keys.processing(&e))
        .arg(session)
        .cmd("ZSCORE")
        .arg(keys.deadlines(&e))
        .arg(session)
        .query_async(conn)
        .await?;
    view.queue_position = q.map(|r| r.saturating_add(1));
    view.priority_position = p.map(|r| r.saturating_add(1));
    view.in_processing = inproc;
    // A deadline past year 9999 reads as its end (see `clock`); inf or a negative
    // score is no instant at all.
    let untold = crate::redis::scripts::admit::UNTOLD_MS as f64;
    view.untold_since = deadline
        .filter(|d| d.is_finite() && *d >= untold)
        .map(|d| clock::rfc3339_seconds((d - untold) as u64));
    view.deadline = deadline
        .filter(|d| d.is_finite() && *d >= 0.0 && *d < untold)
        .map(|d| clock::rfc3339_seconds(d as u64));
    let pattern = outbox_pattern(session);
    let mut cursor = 0u64;
    // Bounded: at most 100 SCAN steps over the outbox.
    for _ in 0..100 {
        let (next, found): (u64, Vec<Vec<u8>>) = redis::cmd("ZSCAN")
            .arg(keys.outbox(&e))
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        // ZSCAN replies member, score, member, score...
        if let Some(m) = found
            .into_iter()
            .step_by(2)
            .find(|m| is_entry_of(m, session))
        {
            view.outbox_entry = Some(lossy(m));
            break;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(view)
}

/// How much of a checkout token `inspect` shows unless `--show-token` is given:
/// about the JWT's header, which says nothing secret.
const TOKEN_SHOWN: usize = 24;

impl SessionView {
    /// Cut the checkout token to its first characters and `...`: a live credential
    /// does not belong on a screen, in a terminal log or in a pasted ticket.
    pub fn shorten_token(&mut self) {
        if let Some(t) = self.hash.get_mut("checkout_token")
            && t.chars().count() > TOKEN_SHOWN
        {
            *t = format!("{}...", t.chars().take(TOKEN_SHOWN).collect::<String>());
        }
    }
}

/// The view as text, fields as they are (`inspect` shortens the token first with
/// [`SessionView::shorten_token`] unless asked not to).
pub fn render_session(v: &SessionView) -> String {
    let mut t = format!("session {} ({})\n", v.session_id, v.key);
    if v.hash.is_empty() {
        t.push_str("  hash: missing (never created, deleted or expired)\n");
    }
    for (k, val) in &v.hash {
        t.push_str(&format!("  {k:<20} {val}\n"));
    }
    let e = v.event_id.as_deref().unwrap_or("?");
    t.push_str(&format!("event: {e}\n"));
    t.push_str(&format!(
        "queue position: {}\npriority position: {}\nholds a checkout slot: {}\ndeadline: {}\nQUEUE_READY pending in outbox: {}\n",
        v.queue_position.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        v.priority_position.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        if v.in_processing { "yes" } else { "no" },
        match (&v.deadline, &v.untold_since) {
            (Some(d), _) => d.clone(),
            (None, Some(at)) => format!("none yet: QUEUE_READY not acknowledged (admitted {at})"),
            (None, None) => "-".to_owned(),
        },
        if v.outbox_entry.is_some() { "yes" } else { "no" },
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_keeps_only_the_plainly_encoded_start_of_the_id() {
        assert_eq!(
            outbox_pattern("session-abc_1.2:3"),
            r#"\["session-abc_1.2:3*"#
        );
        assert_eq!(outbox_pattern("vip/s\u{7f}*?[x]"), r#"\["vip*"#);
        assert_eq!(outbox_pattern("/x"), r#"\["*"#);
    }

    #[test]
    fn entries_are_matched_decoded_whatever_their_escapes() {
        // As cjson writes ["a/b\x7f", "u", 1, 2].
        let cjson = br#"["a\/b\u007f","u",1,2]"#;
        assert!(is_entry_of(cjson, "a/b\u{7f}"));
        assert!(!is_entry_of(cjson, "a/b"));
        assert!(is_entry_of(
            &OutboxEntry::encode("a/b\u{7f}", "u", 1, 2),
            "a/b\u{7f}"
        ));
        assert!(!is_entry_of(b"not json", "a/b\u{7f}"));
    }

    #[test]
    fn the_token_is_shortened_to_its_start() {
        let mut v = SessionView {
            session_id: "s".into(),
            key: "k".into(),
            event_id: None,
            hash: BTreeMap::from([
                (
                    "checkout_token".to_owned(),
                    format!("{}.secret", "h".repeat(30)),
                ),
                ("user_id".to_owned(), "u".repeat(40)),
            ]),
            queue_position: None,
            priority_position: None,
            in_processing: false,
            deadline: None,
            untold_since: None,
            outbox_entry: None,
        };
        v.shorten_token();
        assert_eq!(v.hash["checkout_token"], format!("{}...", "h".repeat(24)));
        assert_eq!(v.hash["user_id"], "u".repeat(40), "only the token");
        v.hash.insert("checkout_token".into(), "short".into());
        v.shorten_token();
        assert_eq!(v.hash["checkout_token"], "short");
    }

    #[test]
    fn numbers_are_plain_digits_that_fit() {
        let read = |s: &str| int(&Some(s.to_owned()));
        assert_eq!(read("12"), Some(12));
        assert_eq!(read("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "inf",
            "1e3",
            "+5",
            " 5",
            "5 ",
            "-1",
            "0x10",
            "1.0",
            "18446744073709551616",
        ] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
        assert_eq!(int(&None), None);
    }

    #[test]
    fn paused_fails_safe_as_the_admit_script_reads_it() {
        for on in [
            "1", "true", "TRUE", "Yes", "on", "maybe", "", " 1", "2", "1e0",
        ] {
            assert!(pause_flag(Some(on)), "{on:?}");
        }
        for off in ["0", "false", "False", "no", "NO", "off", "Off"] {
            assert!(!pause_flag(Some(off)), "{off:?}");
        }
        assert!(!pause_flag(None));
    }

    #[test]
    fn only_event_ids_the_worker_serves_are_listed() {
        assert_eq!(event_id(b"concert".to_vec()).as_deref(), Some("concert"));
        for bad in [&b""[..], b"\xff\xfe", b"{x}", b"a}"] {
            assert_eq!(event_id(bad.to_vec()), None, "{bad:?}");
        }
    }
}
