//! The Redis connection: one multiplexed, self-reconnecting connection per process.
//!
//! Commands time out (a hung server must not hang a cycle), and a dropped connection
//! is re-established in the background; the command that saw the drop fails, is
//! counted, and is retried by the caller.

use std::time::Duration;

use redis::RedisError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The connection every module uses.
pub type RedisConn = ConnectionManager;

/// Connect to `url`, with `timeout` on connecting and on every command.
pub async fn connect(url: &str, timeout: Duration) -> Result<RedisConn, RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    client.get_connection_manager_with_config(config).await
}
