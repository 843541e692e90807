//! Any bytes as outbox sorted-set members: parsed or refused
//! (`EntryError::Shape`, or sorted into the `bad` list to be quarantined), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waitroom_worker::outbox::{self, OutboxEntry};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = OutboxEntry::parse(data.to_vec()) {
        assert!(!e.session_id.is_empty() && !e.user_id.is_empty());
        assert_eq!(e.raw, data);
    }
    // The same bytes as a claim reply of several members, one per line.
    let raws: Vec<Vec<u8>> = data.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    let n = raws.len();
    let (good, bad) = outbox::parse_all(raws);
    // Every member is either an entry or quarantined, none lost, none doubled.
    assert_eq!(good.len() + bad.len(), n);
});
