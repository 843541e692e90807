//! What operators see: the HTTP endpoints, the metrics, the `status` and `inspect`
//! views, and the probe. Below the engine: the worker fills the metrics and serves
//! the endpoints, which take what it hands them and know nothing of its loop.

pub(crate) mod http;
pub(crate) mod probe;
pub mod report;
pub(crate) mod stats;
