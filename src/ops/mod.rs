pub mod http;
pub mod probe;
pub mod report;
pub mod stats;
