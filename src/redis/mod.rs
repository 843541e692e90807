pub mod heartbeat;
pub mod redis_time;
pub mod retry;
pub mod scripts;
pub mod store;
