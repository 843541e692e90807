//! The worker: start, the loop and its passes, shutdown; delivery of admissions
//! (sign, patch, publish, settle); the completion consumer; refills.

pub(crate) mod completions;
pub(crate) mod delivery;
pub(crate) mod refill;
pub(crate) mod settler;
// The loop's file is reworked next (the pass as named steps, error kinds); its
// remaining undocumented items (error variants, one accessor) go with that.
#[allow(missing_docs)]
pub(crate) mod worker;
