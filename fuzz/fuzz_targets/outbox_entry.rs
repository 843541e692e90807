//! Any bytes as outbox sorted-set members: parsed or refused (an `EntryError` that
//! names the structure or the field, or sorted into the `bad` list to be
//! quarantined), never a panic; what is accepted is within range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waitroom_worker::outbox::{self, MAX_ID_BYTES, MAX_MS, OutboxEntry};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = OutboxEntry::parse(data.to_vec()) {
        assert!(!e.session_id.is_empty() && e.session_id.len() <= MAX_ID_BYTES);
        assert!(!e.user_id.is_empty() && e.user_id.len() <= MAX_ID_BYTES);
        assert!(1 <= e.admitted_ms && e.admitted_ms <= e.deadline_ms && e.deadline_ms <= MAX_MS);
        assert_eq!(e.raw, data);
    }
    // The same bytes as a claim reply of several members, one per line.
    let raws: Vec<Vec<u8>> = data.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    let n = raws.len();
    let (good, bad) = outbox::parse_all(raws);
    // Every member is either an entry or quarantined, none lost, none doubled.
    assert_eq!(good.len() + bad.len(), n);
});
