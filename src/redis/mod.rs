//! Redis as the worker uses it: the connection (pipelines split by master on a
//! cluster), retries, the Lua scripts (one module per file of `lua/`), the replicas'
//! heartbeats, and Redis's clock as seen here.

pub(crate) mod cluster;
pub(crate) mod heartbeat;
pub(crate) mod redis_time;
pub(crate) mod retry;
pub mod scripts;
pub mod sentinel;
pub mod store;
