//! Any bytes as a Kafka completion payload: parsed or refused
//! (`Rejected::Malformed` / `Rejected::Outcome`), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waitroom_worker::completions;

fuzz_target!(|data: &[u8]| {
    // A tombstone / payload-less message.
    assert!(completions::parse(None).is_err());
    if let Ok((c, _outcome)) = completions::parse(Some(data)) {
        // What is accepted must satisfy the documented contract.
        assert!(!c.session_id.is_empty());
        assert_ne!(c.event_id.as_deref(), Some(""));
    }
});
