//! Worker heartbeats in Redis, so `redis-cli` (and `waitroom-worker status`) list the
//! live replicas:
//!
//! - `<prefix>:workers` ZSET: member = worker id, score = last heartbeat (ms)
//! - `<prefix>:worker:<id>` HASH: `id`, `host`, `pid`, `version`, `started_at`,
//!   `last_cycle`, with a TTL of a few intervals, so a dead worker's hash vanishes.

use std::time::Duration;

use redis::RedisError;
use redis::aio::ConnectionLike;

use crate::clock;
use crate::keys::Keys;

/// Who this worker is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub version: &'static str,
    pub started_ms: u64,
}

impl Identity {
    /// `id` given, or `<host>-<pid>`.
    pub fn new(id: Option<String>) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        let pid = std::process::id();
        Identity {
            id: id
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| format!("{host}-{pid}")),
            host,
            pid,
            version: env!("CARGO_PKG_VERSION"),
            started_ms: clock::now_ms(),
        }
    }
}

/// How long a heartbeat counts: a few intervals, at least 10s (saturating).
pub fn ttl(interval: Duration) -> Duration {
    interval.saturating_mul(3).max(Duration::from_secs(10))
}

/// Write this worker's heartbeat (one round trip) and drop replicas silent for
/// longer than `ttl` from the set.
pub async fn beat<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    me: &Identity,
    last_cycle_ms: u64,
    ttl: Duration,
) -> Result<(), RedisError> {
    let now = clock::now_ms();
    let key = keys.worker(&me.id);
    redis::pipe()
        .cmd("HSET")
        .arg(&key)
        .arg("id")
        .arg(&me.id)
        .arg("host")
        .arg(&me.host)
        .arg("pid")
        .arg(me.pid)
        .arg("version")
        .arg(me.version)
        .arg("started_at")
        .arg(clock::rfc3339_seconds(me.started_ms))
        .arg("last_cycle")
        .arg(clock::rfc3339_millis(last_cycle_ms))
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(ttl.as_millis() as u64)
        .ignore()
        .cmd("ZADD")
        .arg(keys.workers())
        .arg(now)
        .arg(&me.id)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(keys.workers())
        .arg("-inf")
        .arg(now.saturating_sub(ttl.as_millis() as u64))
        .ignore()
        .query_async::<()>(conn)
        .await
}

/// Ids of the workers that beat within `ttl` (an id that is not UTF-8 is shown with
/// U+FFFD in place of its bad bytes rather than failing the whole list).
pub async fn live<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    ttl: Duration,
) -> Result<Vec<String>, RedisError> {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let since = clock::now_ms().saturating_sub(ttl_ms);
    let ids: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys.workers())
        .arg(since)
        .arg("+inf")
        .query_async(conn)
        .await?;
    Ok(ids
        .into_iter()
        .map(|id| String::from_utf8_lossy(&id).into_owned())
        .collect())
}

/// Say goodbye on a clean shutdown, so the replica drops from the list at once.
pub async fn leave<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    me: &Identity,
) -> Result<(), RedisError> {
    redis::pipe()
        .cmd("ZREM")
        .arg(keys.workers())
        .arg(&me.id)
        .ignore()
        .cmd("DEL")
        .arg(keys.worker(&me.id))
        .ignore()
        .query_async::<()>(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_a_few_intervals_and_saturates() {
        assert_eq!(ttl(Duration::from_secs(1)), Duration::from_secs(10));
        assert_eq!(ttl(Duration::from_secs(5)), Duration::from_secs(15));
        assert_eq!(ttl(Duration::MAX), Duration::MAX);
    }
}
