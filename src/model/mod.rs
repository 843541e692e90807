//! The domain, pure (no I/O): key names, time, outbox entries, checkout tokens.

pub mod clock;
pub(crate) mod event;
pub(crate) mod keys;
pub mod outbox;
pub(crate) mod ownership;
pub mod token;
pub(crate) mod wait_estimate;
