//! Any RESP reply as the answer of a Lua script: read or refused
//! (`ScriptError::Reply`), never a panic. Simulates a Redis (or a proxy, or a newer
//! script version) replying with a shape the worker does not expect.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waitroom_worker::scripts::{admit, claim_outbox, reap, release};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = redis::parse_redis_value(data) else {
        return;
    };
    let _ = admit::parse(value.clone());
    let _ = reap::parse(value.clone());
    let _ = claim_outbox::parse(value.clone());
    // The release script replies with one integer.
    if let Ok(i) = redis::from_redis_value::<i64>(value) {
        let _ = release::parse(i);
    }
});
