pub mod error_chain;
pub mod log_limit;
pub mod shutdown;
