//! What every layer may use: the shutdown signal, repeated warnings written once
//! then counted, an error and its causes on one line.

pub mod error_chain;
pub(crate) mod log_limit;
pub mod shutdown;
