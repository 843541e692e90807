//! Calls `lua/valve.lua`: one step of an event's checkout-health valve.

use std::time::Duration;

use redis::Value;

use super::{Call, Script, ScriptError};
use crate::model::keys::Keys;

const NAME: &str = "valve";

/// The script of `lua/valve.lua`.
pub fn script() -> Script {
    Script::new(NAME, include_str!("../../../lua/valve.lua"))
}

/// The control law's settings (see the script's header and the README).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValveArgs {
    /// Capacity of an event whose config sets no `max_concurrent`.
    pub default_max_concurrent: u64,
    /// Floor of an event whose config sets no `min_concurrent`, percent of its capacity.
    pub min_concurrent_percent: u64,
    /// One step per this much time, whoever calls.
    pub interval: Duration,
    /// Cut when more than this share of the step's completions failed (0..1).
    pub fail_threshold: f64,
    /// Cut when the step's mean checkout time exceeds the baseline times this.
    pub slow_factor: f64,
    /// Completions a step needs to be judged (fewer: hold).
    pub min_completions: u64,
    /// A cut multiplies the capacity by this (0..1).
    pub cut: f64,
    /// A healthy step adds this share of `max_concurrent` (at least 1 slot).
    pub step_up: f64,
}

/// What one call of the valve did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValveStep {
    /// The effective capacity now.
    pub cap: u64,
    /// Whether this call changed it.
    pub changed: bool,
    /// Why it is what it is: start, hold, failures, slow, recovering, healthy.
    pub reason: String,
    /// The step's failed share, per mille (judged steps only).
    pub failed_per_mille: Option<u64>,
    /// The step's mean checkout time, ms (judged steps only).
    pub mean_checkout_ms: Option<u64>,
    /// The baseline checkout time, ms, once one was seen.
    pub baseline_ms: Option<u64>,
}

/// The call of one valve step for `event`.
pub fn call<'a>(script: &'a Script, keys: &Keys, event: &str, a: &ValveArgs) -> Call<'a> {
    let permille = |x: f64| ((x * 1000.0).round().max(0.0) as u64).to_string();
    let percent = |x: f64| ((x * 100.0).round().max(0.0) as u64).to_string();
    Call {
        script,
        keys: vec![keys.valve(event), keys.stats(event), keys.config(event)],
        args: vec![
            a.default_max_concurrent.to_string(),
            a.min_concurrent_percent.to_string(),
            a.interval.as_millis().max(1).to_string(),
            permille(a.fail_threshold),
            percent(a.slow_factor),
            a.min_completions.to_string(),
            percent(a.cut),
            percent(a.step_up),
        ],
    }
}

/// Read the script's reply.
pub fn parse(v: Value) -> Result<ValveStep, ScriptError> {
    type Reply = (u64, u64, String, i64, i64, i64);
    let (cap, changed, reason, fail, avg, base): Reply =
        redis::from_redis_value(v).map_err(|e| ScriptError::Reply {
            script: NAME,
            detail: e.to_string(),
        })?;
    let opt = |x: i64| (x >= 0).then_some(x as u64);
    Ok(ValveStep {
        cap,
        changed: changed == 1,
        reason,
        failed_per_mille: opt(fail),
        mean_checkout_ms: opt(avg),
        baseline_ms: opt(base),
    })
}
