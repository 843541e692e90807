//! Any string as a checkout token presented to the HS256 verifier: verified or
//! refused (`TokenError::Invalid`), never a panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use waitroom_worker::token::Verifier;

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef0123";

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    Verifier::hs256(SECRET, "waitroom", "checkout").expect("a fixed 32-byte secret")
});

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    // The fuzzer cannot forge an HMAC: nothing it makes may verify.
    assert!(VERIFIER.verify(&token).is_err());
});
