//! Calls `lua/admit.lua`: one atomic admission step for one event.

use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionLike;

use super::{Call, Script, ScriptError};
use crate::model::keys::Keys;

const NAME: &str = "admit";

/// The script of `lua/admit.lua`, its includes spliced in.
pub fn script() -> Script {
    Script::new(NAME, include_str!("../../../lua/admit.lua"))
}

/// Offset of an untold mark in the deadlines set: until Kafka acknowledged a
/// session's QUEUE_READY, its score there is `UNTOLD_MS + admitted_ms` (2^50 ms is
/// about 35,000 years, past any real deadline), so the reaper never takes it back.
pub const UNTOLD_MS: u64 = 1 << 50;

/// Most sessions one call may admit, whatever the settings say: bounds how long one
/// call holds Redis (and stays well inside Lua's `unpack` limit).
pub const MAX_ADMIT_PER_CALL: u64 = 1000;

/// What one admission step needs besides the keys. Times come from Redis's own
/// clock inside the script, so no instant is passed.
#[derive(Debug, Clone)]
pub struct AdmitArgs {
    /// Slots of an event whose config hash sets no `max_concurrent`.
    pub default_max_concurrent: u64,
    /// Most admissions per step of an event whose config hash sets no `batch_size`.
    pub default_batch_size: u64,
    /// How long an admitted session may hold its slot (its checkout deadline).
    pub checkout_window: Duration,
    /// TTL set on each admitted session's hash.
    pub session_ttl: Duration,
    /// Entries come due after this, so other replicas publish them only if this one dies.
    pub outbox_lease: Duration,
    /// Hold admission while the oldest unpublished admission is older than this.
    pub max_unpublished_age: Duration,
    /// The workers' process interval: the default rate burst is one interval's worth.
    pub process_interval: Duration,
    /// An admission not claimed within this gives its slot back (zero: off), unless
    /// the event's config hash sets `claim_window_ms`.
    pub claim_window: Duration,
    /// A waiter not seen for this long when its turn comes has left (zero: off),
    /// unless the event's config hash sets `waiter_idle_timeout_ms`.
    pub waiter_idle_timeout: Duration,
    /// The checkout-health valve on for events whose config sets no `adaptive`.
    pub adaptive: bool,
    /// The valve's floor, percent of the capacity, unless the config sets
    /// `min_concurrent`.
    pub min_concurrent_percent: u64,
}

/// The counters the scripts keep in the event's stats hash (all replicas), as the
/// admit call read them: what the wait estimate is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Sessions admitted.
    pub admitted: u64,
    /// Waiters dropped at their turn because they had left (idle past the timeout).
    pub left_queue: u64,
    /// Queue members dropped as not admissible (no hash, not queued, other event).
    pub skipped: u64,
    /// Admissions never claimed whose slot came back at the claim window.
    pub no_show: u64,
    /// Slots taken back at the checkout deadline.
    pub expired: u64,
    /// Slots freed by a completion message.
    pub completed: u64,
    /// Of those, with outcome `failed`.
    pub failed: u64,
    /// Sum over those of the time from admission to completion, ms.
    pub checkout_ms: u64,
}

/// Why an event admitted nobody although it could have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Hold {
    /// Not held.
    #[default]
    No,
    /// QUEUE_READY publishing is stalled: the oldest unpublished admission is older
    /// than the max unpublished age (a Kafka outage). Lifts by itself.
    PublishingStalled,
    /// The event is no longer served (retired): it is drained, nobody is admitted.
    Retired,
    /// The event's `stock` is 0: sold out, nobody is admitted until it is raised.
    SoldOut,
}

impl Hold {
    /// The reason as operators read it (`/status`, `status`, metrics), if held.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Hold::No => None,
            Hold::PublishingStalled => Some("publishing_stalled"),
            Hold::Retired => Some("retired"),
            Hold::SoldOut => Some("sold_out"),
        }
    }
}

/// What the step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmitOutcome {
    /// Sessions admitted by this step.
    pub admitted: u64,
    /// Members dropped from the lanes: missing hash, not `queued`, no user, other event.
    pub skipped: u64,
    /// Slots in use after the step.
    pub in_use: u64,
    /// Slots of the event: its `max_concurrent`, or the default.
    pub capacity: u64,
    /// Most admissions per step: the event's `batch_size`, or the default.
    pub batch: u64,
    /// Whether the event is paused (an invalid `paused` value pauses it: fail safe).
    pub paused: bool,
    /// Admissions left in this minute under `new_users_per_minute`, if one is set.
    pub rate_left: Option<u64>,
    /// Waiting sessions left in both lanes.
    pub queue_length: u64,
    /// Size of the event's outbox after the call.
    pub outbox_depth: u64,
    /// Size of the deadlines set after the call.
    pub deadlines: u64,
    /// The earliest checkout deadline (ms), if any told slot has one.
    pub next_deadline_ms: Option<u64>,
    /// Whether admission is held, and why.
    pub held: Hold,
    /// Age of the oldest admission whose QUEUE_READY is not acknowledged yet.
    pub unpublished_age_ms: Option<u64>,
    /// Redis's clock (ms) when the step ran.
    pub now_ms: u64,
    /// Worker-owned keys that held the wrong type and were moved aside.
    pub repaired: Vec<String>,
    /// The configured `new_users_per_minute`, if any.
    pub rate_per_minute: Option<u64>,
    /// Admissions of the last 60 s (all replicas).
    pub outflow_per_minute: u64,
    /// Waiters dropped because they had left the queue (not counted in `skipped`).
    pub left_queue: u64,
    /// Waiters whose `last_seen` was not plain digits (read as absent, admitted).
    pub bad_last_seen: u64,
    /// The stats hash's counters after the call.
    pub totals: Totals,
    /// Units left (`stock` in the config hash), if set.
    pub stock: Option<u64>,
    /// Whether the checkout-health valve is on for the event.
    pub adaptive: bool,
    /// The configured capacity, before the valve and the stock (`capacity` is the
    /// effective one).
    pub max_capacity: u64,
    /// A sell-out this worker must announce now: (when it was recorded, ms; queue
    /// length then). The lease is this worker's.
    pub announce: Option<(u64, u64)>,
    /// Config hash fields that were invalid (their defaults were used).
    pub invalid_config: Vec<String>,
    /// Outbox entries of the admitted sessions, in admission order.
    pub entries: Vec<Vec<u8>>,
    /// The event's effective claim window (ms, 0: none), what tokens are signed with.
    pub claim_window_ms: u64,
    /// Signed: admission stopped at a waiter without a usable token.
    pub short: bool,
    /// Signed: tokens came, but their admission instant was too far from Redis's
    /// clock (or left too little of the claim window): none was usable.
    pub stale_stamp: bool,
    /// Signed: the waiters to sign for next (session id, user id), in lane order.
    pub prospects: Vec<(String, String)>,
}

/// The call for one admission step of `event` (to run alone or in a batch); a
/// retired event (`served` false) admits nobody and only reports.
pub fn call<'a>(
    script: &'a Script,
    keys: &Keys,
    event: &str,
    a: &AdmitArgs,
    served: bool,
) -> Call<'a> {
    Call {
        script,
        keys: vec![
            keys.queue(event),
            keys.priority(event),
            keys.processing(event),
            keys.config(event),
            keys.outbox(event),
            keys.deadlines(event),
            keys.rate(event),
            keys.stats(event),
            keys.valve(event),
            keys.sold_out(event),
        ],
        args: vec![
            keys.session_prefix(event),
            event.to_owned(),
            a.default_max_concurrent.to_string(),
            a.default_batch_size.to_string(),
            a.checkout_window.as_millis().to_string(),
            a.session_ttl.as_millis().max(1).to_string(),
            a.outbox_lease.as_millis().to_string(),
            MAX_ADMIT_PER_CALL.to_string(),
            (2 * MAX_ADMIT_PER_CALL).to_string(),
            a.max_unpublished_age.as_millis().to_string(),
            if served { "1" } else { "0" }.to_owned(),
            a.process_interval.as_millis().max(1).to_string(),
            a.claim_window.as_millis().to_string(),
            a.waiter_idle_timeout.as_millis().to_string(),
            if a.adaptive { "1" } else { "0" }.to_owned(),
            a.min_concurrent_percent.to_string(),
        ],
    }
}

/// Signed admissions: the tokens signed ahead for the waiters at the head of the
/// lanes, so each is written in the same atomic step as `status=admitted`.
#[derive(Debug, Clone, Default)]
pub struct Signed {
    /// The admission instant the tokens were signed for (Redis's clock, ms). The
    /// script uses it if it is within 2 s before to 1 s after its own clock.
    pub admitted_ms: u64,
    /// The claim window the tokens were signed with (ms, 0: none); the script uses
    /// the tokens only if it is the event's.
    pub claim_window_ms: u64,
    /// How many waiters of each lane the reply should name to sign for next.
    pub lookahead: u64,
    /// The tokens: session id, the user id signed for, the token.
    pub tokens: Vec<(String, String, String)>,
}

/// A signed admission step (see [`Signed`]): only sessions with their token are
/// admitted, and the token goes into the hash with the admission.
pub fn call_signed<'a>(
    script: &'a Script,
    keys: &Keys,
    event: &str,
    a: &AdmitArgs,
    signed: &Signed,
) -> Call<'a> {
    let mut c = call(script, keys, event, a, true);
    c.args.reserve(4 + 3 * signed.tokens.len());
    c.args.push("1".to_owned());
    c.args.push(signed.admitted_ms.to_string());
    c.args.push(signed.claim_window_ms.to_string());
    c.args
        .push(signed.lookahead.min(MAX_ADMIT_PER_CALL).to_string());
    for (sid, user, token) in &signed.tokens {
        c.args.push(sid.clone());
        c.args.push(user.clone());
        c.args.push(token.clone());
    }
    c
}

/// Run one admission step for `event`.
pub async fn admit<C: ConnectionLike + Send>(
    script: &Script,
    conn: &mut C,
    keys: &Keys,
    event: &str,
    a: &AdmitArgs,
) -> Result<AdmitOutcome, ScriptError> {
    let c = call(script, keys, event, a, true);
    let keys_ref: Vec<&str> = c.keys.iter().map(String::as_str).collect();
    let argv_ref: Vec<&str> = c.args.iter().map(String::as_str).collect();
    let reply: Value = script.invoke(conn, &keys_ref, &argv_ref).await?;
    parse(reply)
}

fn bad(detail: impl Into<String>) -> ScriptError {
    ScriptError::reply(NAME, detail)
}

/// Read the script's reply.
pub fn parse(reply: Value) -> Result<AdmitOutcome, ScriptError> {
    let Value::Array(parts) = reply else {
        return Err(bad("not an array"));
    };
    let [
        Value::Array(counts),
        Value::Array(invalid),
        Value::Array(entries),
        Value::Array(repaired),
        Value::Array(totals),
        Value::Array(extra),
        Value::Array(prospects),
    ] = parts.as_slice()
    else {
        return Err(bad("want 7 arrays"));
    };
    let nums: Vec<i64> = counts
        .iter()
        .map(|v| match v {
            Value::Int(i) => Ok(*i),
            _ => Err(bad("counts must be integers")),
        })
        .collect::<Result<_, _>>()?;
    let [
        admitted,
        skipped,
        in_use,
        capacity,
        batch,
        paused,
        rate_left,
        queue_length,
        outbox_depth,
        deadlines,
        next_deadline_ms,
        held,
        unpublished_age_ms,
        now_ms,
        rate_per_minute,
        outflow_per_minute,
        left_queue,
        bad_last_seen,
    ] = nums.as_slice()
    else {
        return Err(bad("want 18 counts"));
    };
    let totals: Vec<u64> = totals
        .iter()
        .map(|v| match v {
            Value::Int(i) => Ok((*i).max(0) as u64),
            _ => Err(bad("totals must be integers")),
        })
        .collect::<Result<_, _>>()?;
    let [
        admitted_t,
        left_t,
        skipped_t,
        no_show_t,
        expired_t,
        completed_t,
        checkout_t,
    ] = totals.as_slice()
    else {
        return Err(bad("want 7 totals"));
    };
    let extra: Vec<i64> = extra
        .iter()
        .map(|v| match v {
            Value::Int(i) => Ok(*i),
            _ => Err(bad("extras must be integers")),
        })
        .collect::<Result<_, _>>()?;
    let [
        stock,
        adaptive,
        max_capacity,
        announce_at,
        announce_len,
        failed_t,
        claim_window,
        short,
        stale_stamp,
    ] = extra.as_slice()
    else {
        return Err(bad("want 9 extras"));
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Ok(b.clone()),
        _ => Err(bad("want bulk strings")),
    };
    let names = |vs: &[Value]| -> Result<Vec<String>, ScriptError> {
        vs.iter()
            .map(|v| text(v).map(|b| String::from_utf8_lossy(&b).into_owned()))
            .collect()
    };
    let prospects = super::prospect_pairs(NAME, prospects)?;
    Ok(AdmitOutcome {
        claim_window_ms: (*claim_window).max(0) as u64,
        short: *short == 1,
        stale_stamp: *stale_stamp == 1,
        prospects,
        admitted: (*admitted).max(0) as u64,
        skipped: (*skipped).max(0) as u64,
        in_use: (*in_use).max(0) as u64,
        capacity: (*capacity).max(0) as u64,
        batch: (*batch).max(0) as u64,
        paused: *paused == 1,
        rate_left: (*rate_left >= 0).then_some(*rate_left as u64),
        queue_length: (*queue_length).max(0) as u64,
        outbox_depth: (*outbox_depth).max(0) as u64,
        deadlines: (*deadlines).max(0) as u64,
        next_deadline_ms: (*next_deadline_ms >= 0).then_some(*next_deadline_ms as u64),
        held: match held {
            0 => Hold::No,
            1 => Hold::PublishingStalled,
            2 => Hold::Retired,
            3 => Hold::SoldOut,
            _ => return Err(bad("held must be 0, 1, 2 or 3")),
        },
        unpublished_age_ms: (*unpublished_age_ms >= 0).then_some(*unpublished_age_ms as u64),
        now_ms: (*now_ms).max(0) as u64,
        rate_per_minute: (*rate_per_minute >= 0).then_some(*rate_per_minute as u64),
        outflow_per_minute: (*outflow_per_minute).max(0) as u64,
        left_queue: (*left_queue).max(0) as u64,
        bad_last_seen: (*bad_last_seen).max(0) as u64,
        totals: Totals {
            admitted: *admitted_t,
            left_queue: *left_t,
            skipped: *skipped_t,
            no_show: *no_show_t,
            expired: *expired_t,
            completed: *completed_t,
            checkout_ms: *checkout_t,
            failed: (*failed_t).max(0) as u64,
        },
        stock: (*stock >= 0).then_some(*stock as u64),
        adaptive: *adaptive == 1,
        max_capacity: (*max_capacity).max(0) as u64,
        announce: (*announce_at >= 0)
            .then_some((*announce_at as u64, (*announce_len).max(0) as u64)),
        invalid_config: names(invalid)?,
        repaired: names(repaired)?,
        entries: entries.iter().map(text).collect::<Result<_, _>>()?,
    })
}
