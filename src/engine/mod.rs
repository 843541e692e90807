pub mod completions;
pub mod delivery;
pub mod refill;
pub mod worker;
