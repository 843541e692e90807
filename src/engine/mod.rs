//! The worker: start, the loop and its passes, shutdown; delivery of admissions
//! (sign, patch, publish, settle); the completion consumer; refills.

pub(crate) mod announce;
pub(crate) mod completions;
pub(crate) mod delivery;
pub(crate) mod refill;
pub(crate) mod settler;
pub(crate) mod wait_stats;
pub(crate) mod worker;
