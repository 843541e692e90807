//! Redis as the worker uses it: the connection, retries, the Lua scripts (one module
//! per file of `lua/`), the replicas' heartbeats, and Redis's clock as seen here.

pub(crate) mod heartbeat;
pub(crate) mod redis_time;
pub(crate) mod retry;
// The scripts' items are documented by each module's header and its Lua file's
// header (KEYS, ARGV, reply); their fields and variants are not, item by item.
#[allow(missing_docs)]
pub mod scripts;
pub mod store;
