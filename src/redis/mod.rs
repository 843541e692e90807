//! Redis as the worker uses it: the connection, retries, the Lua scripts (one module
//! per file of `lua/`), the replicas' heartbeats, and Redis's clock as seen here.

pub(crate) mod heartbeat;
pub(crate) mod redis_time;
pub(crate) mod retry;
// The scripts' items are documented by each module's header and the Lua file's;
// their files are edited for speed elsewhere, so docs are not enforced item by item.
#[allow(missing_docs)]
pub mod scripts;
pub mod store;
