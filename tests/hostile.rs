//! Hostile input: property tests over what crosses the worker's edges. Session ids
//! (empty, huge, unicode, binary, colons and braces), queue scores (inf, negative),
//! session hashes with missing, extra or wrong-typed fields, config hash garbage,
//! completion payloads and outbox entries of every shape. Expected every time: no
//! panic, no script error, a clear skip; capacity holds, every valid session is
//! either admitted (in order) or still waiting, nothing invalid takes a slot.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use support::*;
use waitroom_worker::completions;
use waitroom_worker::outbox::{EntryError, MAX_ID_BYTES, MAX_MS, OutboxEntry};
use waitroom_worker::scripts::Scripts;
use waitroom_worker::scripts::admit::{self, AdmitArgs};

const EVENT: &str = "hostile";

#[derive(Debug, Clone)]
enum Session {
    Valid,
    Missing,
    Status(String),
    NoUser,
    BinaryUser,
    OtherEvent,
    WrongType,
    Extra,
}

fn session_kind() -> impl Strategy<Value = Session> {
    prop_oneof![
        4 => Just(Session::Valid),
        1 => Just(Session::Missing),
        1 => "[a-z]{0,8}".prop_map(Session::Status),
        1 => Just(Session::NoUser),
        1 => Just(Session::BinaryUser),
        1 => Just(Session::OtherEvent),
        1 => Just(Session::WrongType),
        1 => Just(Session::Extra),
    ]
}

fn session_id() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z0-9-]{1,12}".prop_map(String::into_bytes),
        "\\PC{1,12}".prop_map(String::into_bytes),
        "[:{}a-z]{1,10}".prop_map(String::into_bytes),
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 1..12),
        "[a-z]{2000,3000}".prop_map(String::into_bytes),
    ]
}

fn score() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..1_000_000).prop_map(|s| s.to_string()),
        Just("+inf".to_owned()),
        Just("-inf".to_owned()),
        (-1000i64..0).prop_map(|s| s.to_string()),
    ]
}

fn config_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        (0u64..30).prop_map(|n| Some(n.to_string())),
        "\\PC{0,6}".prop_map(Some),
        Just(Some("-3".to_owned())),
        Just(Some("1e2".to_owned())),
        Just(Some("inf".to_owned())),
        Just(Some("infinity".to_owned())),
        Just(Some("0x10".to_owned())),
        Just(Some(" 5".to_owned())),
        Just(Some("5 ".to_owned())),
        Just(Some("2.0".to_owned())),
        Just(Some("99999999999999999999".to_owned())),
    ]
}

/// A waiter's `last_seen` that must not make it a leaver: absent, not plain digits,
/// or in the future.
fn last_seen() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("1e3".to_owned())),
        Just(Some("-5".to_owned())),
        Just(Some(" 12".to_owned())),
        Just(Some(String::new())),
        Just(Some("inf".to_owned())),
        Just(Some("99999999999999".to_owned())),
        Just(Some("9999999999999999999999".to_owned())),
        "\\PC{0,6}"
            .prop_filter("not plain digits", |s| !s
                .bytes()
                .all(|b| b.is_ascii_digit())
                || s.is_empty())
            .prop_map(Some),
    ]
}

/// What the admit script should make of a config value (mirrors its validation:
/// plain decimal digits, at most 12 of them and at most 10^8, else the default).
fn effective(v: &Option<String>, default: u64) -> u64 {
    match v {
        None => default,
        Some(s) if s.is_empty() => default,
        Some(s) if s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) => default,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n <= 100_000_000 => n,
            _ => default,
        },
    }
}

#[test]
fn admit_survives_hostile_queues_and_keeps_every_invariant() {
    let redis = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let scripts = Scripts::new();
    let k = keys();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec((session_id(), score(), session_kind()), 0..25),
        config_value(),
        config_value(),
        0u64..4,
        (config_value(), config_value(), last_seen()),
    );
    runner
        .run(
            &strategy,
            |(members, cap_cfg, batch_cfg, busy, (claim_cfg, idle_cfg, last_seen_v))| {
                rt.block_on(async {
                    let mut conn = redis.conn().await;
                    redis::cmd("FLUSHALL")
                        .query_async::<()>(&mut conn)
                        .await
                        .expect("flush own test redis");
                    let mut p = redis::pipe();
                    for i in 0..busy {
                        p.cmd("SADD")
                            .arg(k.processing(EVENT))
                            .arg(format!("busy-{i}"))
                            .ignore();
                    }
                    if let Some(v) = &cap_cfg {
                        p.cmd("HSET")
                            .arg(k.config(EVENT))
                            .arg("max_concurrent")
                            .arg(v)
                            .ignore();
                    }
                    if let Some(v) = &batch_cfg {
                        p.cmd("HSET")
                            .arg(k.config(EVENT))
                            .arg("batch_size")
                            .arg(v)
                            .ignore();
                    }
                    // Issue 12's fields, hostile too: they must never cost a valid
                    // session its turn (a last_seen that is not plain digits reads as
                    // absent; one in the future is no idle waiter).
                    for (field, v) in [
                        ("claim_window_ms", &claim_cfg),
                        ("waiter_idle_timeout_ms", &idle_cfg),
                    ] {
                        if let Some(v) = v {
                            p.cmd("HSET")
                                .arg(k.config(EVENT))
                                .arg(field)
                                .arg(v)
                                .ignore();
                        }
                    }
                    let mut valid: Vec<Vec<u8>> = Vec::new();
                    let mut seen = HashSet::new();
                    for (sid, sc, kind) in &members {
                        if !seen.insert(sid.clone()) {
                            continue;
                        }
                        let mut key = k.session_prefix(EVENT).into_bytes();
                        key.extend_from_slice(sid);
                        match kind {
                            Session::Valid => {
                                p.cmd("HSET")
                                    .arg(&key)
                                    .arg("status")
                                    .arg("queued")
                                    .arg("user_id")
                                    .arg("u1")
                                    .ignore();
                                if let Some(v) = &last_seen_v {
                                    p.cmd("HSET").arg(&key).arg("last_seen").arg(v).ignore();
                                }
                            }
                            Session::Missing => {}
                            Session::Status(s) => {
                                p.cmd("HSET")
                                    .arg(&key)
                                    .arg("status")
                                    .arg(s)
                                    .arg("user_id")
                                    .arg("u1")
                                    .ignore();
                            }
                            Session::NoUser => {
                                p.cmd("HSET").arg(&key).arg("status").arg("queued").ignore();
                            }
                            Session::BinaryUser => {
                                p.cmd("HSET")
                                    .arg(&key)
                                    .arg("status")
                                    .arg("queued")
                                    .arg("user_id")
                                    .arg(&b"\xff\xfe"[..])
                                    .ignore();
                            }
                            Session::OtherEvent => {
                                p.cmd("HSET")
                                    .arg(&key)
                                    .arg("status")
                                    .arg("queued")
                                    .arg("user_id")
                                    .arg("u")
                                    .arg("event_id")
                                    .arg("elsewhere")
                                    .ignore();
                            }
                            Session::WrongType => {
                                p.cmd("SET").arg(&key).arg("x").ignore();
                            }
                            Session::Extra => {
                                p.cmd("HSET")
                                    .arg(&key)
                                    .arg("status")
                                    .arg("queued")
                                    .arg("user_id")
                                    .arg("u2")
                                    .arg("junk")
                                    .arg("\u{1F4A5}")
                                    .arg("position")
                                    .arg("not-a-number")
                                    .ignore();
                            }
                        }
                        p.cmd("ZADD").arg(k.queue(EVENT)).arg(sc).arg(sid).ignore();
                        // An id the outbox entry could not carry (over MAX_ID_BYTES) must not
                        // be admitted: its QUEUE_READY could never be published.
                        let good_id = !sid.is_empty()
                            && sid.len() <= MAX_ID_BYTES
                            && std::str::from_utf8(sid).is_ok();
                        if good_id && matches!(kind, Session::Valid | Session::Extra) {
                            valid.push(sid.clone());
                        }
                    }
                    p.query_async::<()>(&mut conn).await.expect("setup");
                    // Queue order as Redis sees it.
                    let order: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                        .arg(k.queue(EVENT))
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                        .expect("ZRANGE");
                    let valid_in_order: Vec<Vec<u8>> = order
                        .iter()
                        .filter(|m| valid.contains(m))
                        .cloned()
                        .collect();

                    let capacity = effective(&cap_cfg, 10);
                    let batch = effective(&batch_cfg, 5);
                    let outcome = admit::admit(
                        &scripts.admit,
                        &mut conn,
                        &k,
                        EVENT,
                        &AdmitArgs {
                            default_max_concurrent: 10,
                            default_batch_size: 5,
                            checkout_window: Duration::from_secs(60),
                            session_ttl: Duration::from_secs(600),
                            outbox_lease: Duration::from_secs(30),
                            max_unpublished_age: Duration::from_secs(600),
                            process_interval: Duration::from_secs(1),
                            claim_window: Duration::ZERO,
                            waiter_idle_timeout: Duration::ZERO,
                            adaptive: false,
                            min_concurrent_percent: 10,
                        },
                    )
                    .await
                    .map_err(|e| TestCaseError::fail(format!("admit failed: {e}")))?;

                    let processing: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                        .arg(k.processing(EVENT))
                        .query_async(&mut conn)
                        .await
                        .expect("SMEMBERS");
                    prop_assert!(
                        processing.len() as u64 <= capacity.max(busy),
                        "capacity {capacity}, in use {}",
                        processing.len()
                    );
                    let admitted: Vec<Vec<u8>> = processing
                        .into_iter()
                        .filter(|m| !m.starts_with(b"busy-"))
                        .collect();
                    prop_assert_eq!(admitted.len() as u64, outcome.admitted);
                    // Only valid sessions, and the first ones in queue order.
                    let want = capacity.saturating_sub(busy).min(batch) as usize;
                    let expected: HashSet<Vec<u8>> =
                        valid_in_order.iter().take(want).cloned().collect();
                    let got: HashSet<Vec<u8>> = admitted.iter().cloned().collect();
                    prop_assert_eq!(got, expected);
                    // Every valid session not admitted still waits; nothing invalid holds a slot.
                    let left: HashSet<Vec<u8>> = redis::cmd("ZRANGE")
                        .arg(k.queue(EVENT))
                        .arg(0)
                        .arg(-1)
                        .query_async::<Vec<Vec<u8>>>(&mut conn)
                        .await
                        .expect("ZRANGE")
                        .into_iter()
                        .collect();
                    for v in valid_in_order.iter().skip(want) {
                        prop_assert!(left.contains(v), "a valid session vanished");
                    }
                    // Every outbox entry parses, and names an admitted session.
                    for raw in &outcome.entries {
                        let e = OutboxEntry::parse(raw.clone())
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert!(admitted.contains(&e.session_id.into_bytes()));
                    }
                    Ok(())
                })
            },
        )
        .expect("property holds");
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    /// Any bytes at all: a completion is parsed or refused, never a panic.
    #[test]
    fn completion_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = completions::parse(Some(&bytes));
    }

    /// JSON of many shapes: accepted only with a non-empty string session id and a
    /// known outcome.
    #[test]
    fn completion_parsing_accepts_only_what_it_should(
        sid in prop_oneof![Just(serde_json::json!(null)), Just(serde_json::json!(7)), "\\PC{0,10}".prop_map(serde_json::Value::from)],
        outcome in prop_oneof![Just(None), Just(Some("completed")), Just(Some("abandoned")), Just(Some("failed")), Just(Some("won"))],
        event in prop_oneof![Just(None), Just(Some(serde_json::json!("e"))), Just(Some(serde_json::json!(3)))],
    ) {
        let mut v = serde_json::json!({"session_id": sid.clone()});
        if let Some(o) = outcome { v["outcome"] = serde_json::Value::from(o); }
        if let Some(e) = &event { v["event_id"] = e.clone(); }
        let r = completions::parse(Some(v.to_string().as_bytes()));
        let ok = sid.as_str().is_some_and(|s| !s.is_empty())
            && outcome != Some("won")
            && event.as_ref().is_none_or(|e| e.is_string());
        prop_assert_eq!(r.is_ok(), ok, "{}", v);
    }

    /// Any bytes as an outbox member: parsed or refused, never a panic; what parses
    /// encodes back to itself when it came from the encoder.
    #[test]
    fn outbox_entries_parse_or_refuse(
        bytes in proptest::collection::vec(any::<u8>(), 0..128),
        sid in "\\PC{1,20}",
        uid in "\\PC{1,20}",
        (a, d) in (1u64..=MAX_MS).prop_flat_map(|a| (Just(a), a..=MAX_MS)),
    ) {
        let _ = OutboxEntry::parse(bytes);
        let raw = OutboxEntry::encode(&sid, &uid, a, d);
        let e = OutboxEntry::parse(raw).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!((e.session_id, e.user_id, e.admitted_ms, e.deadline_ms), (sid, uid, a, d));
    }

    /// Entries with every kind of field, in range or not (huge numbers, 1e300, u64::MAX,
    /// year 10000, negative, fractional, exponents, strings, ids of every length):
    /// parse never panics, accepts exactly the in-range entries, and names the first
    /// field that is wrong.
    #[test]
    fn outbox_entries_are_accepted_only_in_range(
        (sid, sid_ok) in id_json(),
        (uid, uid_ok) in id_json(),
        (a, a_ms) in ms_json(),
        (d, d_ms) in ms_json(),
    ) {
        let raw = format!("[{sid},{uid},{a},{d}]");
        let in_range = |ms: Option<u64>| ms.filter(|ms| (1..=MAX_MS).contains(ms));
        let want = match (&sid_ok, &uid_ok, in_range(a_ms), in_range(d_ms)) {
            (None, ..) => Err(EntryError::SessionId),
            (_, None, ..) => Err(EntryError::UserId),
            (_, _, None, _) => Err(EntryError::AdmittedMs),
            (_, _, _, None) => Err(EntryError::DeadlineMs),
            (_, _, Some(a), Some(d)) if d < a => Err(EntryError::DeadlineBeforeAdmission),
            (Some(s), Some(u), Some(a), Some(d)) => Ok((s.clone(), u.clone(), a, d)),
        };
        let got = OutboxEntry::parse(raw.clone().into_bytes())
            .map(|e| (e.session_id, e.user_id, e.admitted_ms, e.deadline_ms));
        prop_assert_eq!(got, want, "{}", raw);
    }

    /// Anything but a JSON array of four elements (or five: with a claim window) is
    /// `Shape`.
    #[test]
    fn outbox_entries_of_another_shape_are_refused(
        n in (0usize..8).prop_filter("not four or five", |n| *n != 4 && *n != 5),
        object in any::<bool>(),
    ) {
        let items = ["\"s\"", "\"u\"", "1", "2", "3", "4", "5"];
        let body = items[..n.min(items.len())].join(",");
        let raw = if object { format!("{{\"a\":[{body}]}}") } else { format!("[{body}]") };
        prop_assert_eq!(OutboxEntry::parse(raw.into_bytes()), Err(EntryError::Shape));
    }
}

/// An id field as JSON text, and the string it must parse to if it is acceptable
/// (non-empty, at most 1024 bytes).
fn id_json() -> impl Strategy<Value = (String, Option<String>)> {
    let json = |s: &str| serde_json::to_string(s).expect("a string encodes");
    prop_oneof![
        6 => "\\PC{1,20}".prop_map(move |s| (json(&s), Some(s))),
        1 => Just(("\"\"".to_owned(), None)),
        1 => (MAX_ID_BYTES - 3..MAX_ID_BYTES + 3).prop_map(move |n| {
            let s = "x".repeat(n);
            (json(&s), (n <= MAX_ID_BYTES).then_some(s))
        }),
        // Three bytes a character: the bound counts bytes.
        1 => (340usize..344).prop_map(move |n| {
            let s = "\u{20ac}".repeat(n);
            (json(&s), (s.len() <= MAX_ID_BYTES).then_some(s))
        }),
        1 => prop_oneof![Just("7"), Just("null"), Just("[\"s\"]"), Just("{}"), Just("true")]
            .prop_map(|t| (t.to_owned(), None)),
    ]
}

/// An instant field as JSON text, and the integer it holds if it is a plain JSON
/// integer that fits a u64 (in range or not); None for anything else.
fn ms_json() -> impl Strategy<Value = (String, Option<u64>)> {
    let int = |n: u64| (n.to_string(), Some(n));
    prop_oneof![
        4 => (1u64..=MAX_MS).prop_map(int),
        4 => (1_700_000_000_000u64..1_700_000_001_000).prop_map(int),
        1 => (MAX_MS + 1..=u64::MAX).prop_map(int),
        1 => prop_oneof![Just(0), Just(MAX_MS), Just(MAX_MS + 1), Just(253_402_300_800_000), Just(u64::MAX)]
            .prop_map(int),
        1 => (1i64..=i64::MAX).prop_map(|n| (format!("-{n}"), None)),
        1 => (0u64..=MAX_MS, 1u32..1000).prop_map(|(n, f)| (format!("{n}.{f:03}"), None)),
        1 => prop_oneof![
            Just("1e300"),
            Just("-1e300"),
            Just("1e3"),
            Just("1E3"),
            Just("1.7e12"),
            Just("1700000000000.0"),
            Just("18446744073709551616"),
            Just("99999999999999999999999999"),
            Just("-0"),
            Just("-1"),
            Just("0.5"),
            Just("\"1700000000000\""),
            Just("null"),
            Just("[1]"),
        ]
        .prop_map(|t| (t.to_owned(), None)),
    ]
}
