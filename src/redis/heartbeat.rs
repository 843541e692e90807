//! Worker heartbeats in Redis, so `redis-cli` (and `waitroom-worker status`) list the
//! live replicas:
//!
//! - `<prefix>:workers` ZSET: member = worker id, score = the instant (ms, Redis's
//!   clock) its heartbeat expires: its last beat plus *its own* TTL. A replica is
//!   live while its score is in the future, so liveness follows each replica's own
//!   interval whoever reads or prunes: a 1 s replica never drops a 12 s one.
//! - `<prefix>:worker:<id>` HASH: `id`, `host`, `pid`, `version`, `started_at`,
//!   `last_cycle`, `last_beat`, `period_ms` (its interval), `ttl_ms` (how long a
//!   beat counts), with that TTL, so a dead worker's hash vanishes.
//! - `<prefix>:owners` ZSET: member = worker id, score = until when (ms, Redis's
//!   clock) it counts as an owner of events (`model::ownership`): renewed with the
//!   heartbeat only after a pass that went through, so a replica whose passes fail
//!   stops being handed events within 1.5 of its periods, while its heartbeat
//!   (which says it is running) lasts longer.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Pipeline, RedisError, Value};

use crate::model::clock;
use crate::model::keys::Keys;
use crate::model::ownership::OwnerEntry;

/// What a heartbeat does to this worker's entry in `<prefix>:owners`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnerBeat {
    /// The pass went through: count as an owner for this long from now.
    Renew(Duration),
    /// The pass failed: leave the entry to run out (a failing replica's events
    /// move to the others; one late pass must not make them flap).
    Keep,
    /// Ownership is off here: not a candidate (this replica passes everything).
    Withdraw,
}

/// Who this worker is.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub version: &'static str,
    pub started_ms: u64,
}

impl Identity {
    /// `id` given, or `<host>-<pid>`.
    pub(crate) fn new(id: Option<String>) -> Self {
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
pub(crate) fn ttl(interval: Duration) -> Duration {
    interval.saturating_mul(3).max(Duration::from_secs(10))
}

/// Redis's clock (TIME), ms: every replica's heartbeat is stamped and judged on it,
/// so replicas whose clocks disagree still agree on who is live.
pub(crate) async fn redis_now_ms<C: ConnectionLike + Send>(
    conn: &mut C,
) -> Result<u64, RedisError> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(secs.saturating_mul(1000).saturating_add(micros / 1000))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Write this worker's heartbeat, which counts for `ttl(period)` (`period`: this
/// worker's interval), do what `owner` says to its entry in `<prefix>:owners`, and
/// drop the replicas whose own heartbeat or owner entry has expired. One pipeline,
/// stamped with `now_ms` (Redis's clock as the caller knows it, from a `TIME` it
/// read moments ago), or, when the caller does not know it, one more round trip
/// for Redis's clock first.
pub(crate) async fn beat<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    me: &Identity,
    last_cycle_ms: u64,
    period: Duration,
    owner: OwnerBeat,
    now_ms: Option<u64>,
) -> Result<(), RedisError> {
    let now = match now_ms {
        Some(now) => now,
        None => redis_now_ms(conn).await?,
    };
    let mut p = redis::pipe();
    add_beat(&mut p, keys, me, last_cycle_ms, period, owner, now);
    p.query_async::<()>(conn).await
}

/// Add [`beat`]'s commands to `p`, stamped with `now` (Redis's clock, ms), their
/// replies ignored: a pass sends its replica's heartbeat with the reads that open
/// it, one round trip fewer per replica and pass.
pub(crate) fn add_beat(
    p: &mut Pipeline,
    keys: &Keys,
    me: &Identity,
    last_cycle_ms: u64,
    period: Duration,
    owner: OwnerBeat,
    now: u64,
) {
    let ttl_ms = millis(ttl(period)).max(1);
    let key = keys.worker(&me.id);
    p.cmd("HSET")
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
        .arg("last_beat")
        .arg(clock::rfc3339_millis(now))
        .arg("period_ms")
        .arg(millis(period))
        .arg("ttl_ms")
        .arg(ttl_ms)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(ttl_ms)
        .ignore()
        .cmd("ZADD")
        .arg(keys.workers())
        .arg(now.saturating_add(ttl_ms))
        .arg(&me.id)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(keys.workers())
        .arg("-inf")
        .arg(now)
        .ignore();
    // After the hash, so a listed owner's `period_ms` is there to be read.
    match owner {
        OwnerBeat::Renew(window) => {
            p.cmd("ZADD")
                .arg(keys.owners())
                .arg(now.saturating_add(millis(window)))
                .arg(&me.id)
                .ignore();
        }
        OwnerBeat::Keep => {}
        OwnerBeat::Withdraw => {
            p.cmd("ZREM").arg(keys.owners()).arg(&me.id).ignore();
        }
    }
    p.cmd("ZREMRANGEBYSCORE")
        .arg(keys.owners())
        .arg("-inf")
        .arg(now)
        .ignore();
}

/// Add the reads of the list of owners to `p`: Redis's clock (`TIME`) and the
/// list (`ZRANGE ... WITHSCORES`), two replies for [`owners_from`]. Apart, so a
/// pass reads them in the round trip that opens it, with its other reads.
pub(crate) fn read_owners(p: &mut Pipeline, keys: &Keys) {
    p.cmd("TIME")
        .cmd("ZRANGE")
        .arg(keys.owners())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES");
}

/// The list of owners as it stands (`model::ownership::candidates` picks from
/// it), with Redis's clock to judge it by. One round trip for the clock and the
/// list ([`owners_from`] says the rest).
#[cfg(test)]
pub(crate) async fn owners<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    known: &mut HashMap<String, u64>,
    all: bool,
) -> Result<(u64, Vec<OwnerEntry>), RedisError> {
    let mut p = redis::pipe();
    read_owners(&mut p, keys);
    let (time, listed): (Value, Value) = p.query_async(conn).await?;
    owners_from(conn, keys, known, all, Ok(time), Ok(listed)).await
}

/// The list of owners from the two replies of [`read_owners`] (each may be an
/// error, a command's own), with Redis's clock. A second round trip reads the
/// `period_ms` of the listed replicas `known` has no period for (every listed
/// replica's when `all`), and `known` learns them. A replica's period is its
/// interval, fixed for its life, so a steady list costs no command per replica
/// (R replicas reading each other's periods on every pass were R² reads a
/// second); the caller asks for `all` now and then, for an id reused by a restart
/// with another interval.
pub(crate) async fn owners_from<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    known: &mut HashMap<String, u64>,
    all: bool,
    time: Result<Value, RedisError>,
    listed: Result<Value, RedisError>,
) -> Result<(u64, Vec<OwnerEntry>), RedisError> {
    type Listed = Vec<(Vec<u8>, f64)>;
    let (secs, micros): (u64, u64) = redis::from_redis_value(time?)?;
    let listed: Listed = redis::from_redis_value(listed?)?;
    let now = secs.saturating_mul(1000).saturating_add(micros / 1000);
    let ids: Vec<String> = listed
        .iter()
        .map(|(id, _)| String::from_utf8_lossy(id).into_owned())
        .collect();
    known.retain(|id, _| ids.contains(id));
    let unknown: Vec<&String> = ids
        .iter()
        .filter(|id| all || !known.contains_key(*id))
        .collect();
    if !unknown.is_empty() {
        let mut p = redis::pipe();
        for id in &unknown {
            p.cmd("HGET").arg(keys.worker(id)).arg("period_ms");
        }
        let raw: Vec<Option<String>> = p.query_async(conn).await?;
        // Written by the worker itself as plain digits; anything else is unknown
        // (and read again next time).
        for (id, r) in unknown.into_iter().zip(raw) {
            match r.and_then(|v| v.parse::<u64>().ok()) {
                Some(period) => {
                    known.insert(id.clone(), period);
                }
                None => {
                    known.remove(id);
                }
            }
        }
    }
    let periods: Vec<Option<u64>> = ids.iter().map(|id| known.get(id).copied()).collect();
    let entries = ids
        .into_iter()
        .zip(listed)
        .zip(periods)
        .map(|((id, (_, until)), period_ms)| OwnerEntry {
            id,
            // A score written by hand may be anything: not finite or negative
            // counts as expired.
            until_ms: if until.is_finite() && until > 0.0 {
                until as u64
            } else {
                0
            },
            period_ms,
        })
        .collect();
    Ok((now, entries))
}

/// Ids of the workers whose heartbeat has not expired at `now_ms` (Redis's clock):
/// score > now. An id that is not UTF-8 is shown with U+FFFD in place of its bad
/// bytes rather than failing the whole list.
pub(crate) async fn live<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    now_ms: u64,
) -> Result<Vec<String>, RedisError> {
    let ids: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys.workers())
        .arg(format!("({now_ms}"))
        .arg("+inf")
        .query_async(conn)
        .await?;
    Ok(ids
        .into_iter()
        .map(|id| String::from_utf8_lossy(&id).into_owned())
        .collect())
}

/// Say goodbye on a clean shutdown, so the replica drops from the list at once.
pub(crate) async fn leave<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    me: &Identity,
) -> Result<(), RedisError> {
    redis::pipe()
        .cmd("ZREM")
        .arg(keys.workers())
        .arg(&me.id)
        .ignore()
        .cmd("ZREM")
        .arg(keys.owners())
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

    /// A listed replica's period is read once, kept while it stays listed, read
    /// again when asked for all (a reused id may come back with another interval),
    /// and forgotten when it leaves the list.
    #[tokio::test]
    async fn owner_periods_are_read_once_and_refreshed_on_request() {
        use crate::model::keys::{KeyLayout, Keys};
        // A redis-server of its own on a unix socket (this layer may not use the
        // tools' server helper), killed when the test ends.
        struct Server(std::process::Child, std::path::PathBuf);
        impl Drop for Server {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
                let _ = std::fs::remove_dir_all(&self.1);
            }
        }
        let dir = std::env::temp_dir().join(format!("wr-heartbeat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let sock = dir.join("redis.sock");
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server: {e}"));
        let _server = Server(child, dir);
        let client = redis::Client::open(format!("unix://{}", sock.display()))
            .unwrap_or_else(|e| panic!("{e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match client.get_multiplexed_async_connection().await {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > deadline => panic!("no redis: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let keys = Keys::new("t", KeyLayout::Default);
        type Conn = redis::aio::MultiplexedConnection;
        // List `id` as an owner (far into the future); with a period, write it in
        // its heartbeat hash.
        async fn list(conn: &mut Conn, keys: &Keys, id: &str, period: Option<u64>) {
            let mut p = redis::pipe();
            p.cmd("ZADD")
                .arg(keys.owners())
                .arg(4_000_000_000_000u64)
                .arg(id)
                .ignore();
            if let Some(period) = period {
                p.cmd("HSET")
                    .arg(keys.worker(id))
                    .arg("period_ms")
                    .arg(period)
                    .ignore();
            }
            let _: () = p.query_async(conn).await.unwrap_or_else(|e| panic!("{e}"));
        }
        // The owners as read, with the periods they came with.
        async fn read(
            conn: &mut Conn,
            keys: &Keys,
            known: &mut HashMap<String, u64>,
            all: bool,
        ) -> Vec<(String, Option<u64>)> {
            let (_, entries) = owners(conn, keys, known, all)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            entries.into_iter().map(|e| (e.id, e.period_ms)).collect()
        }
        let of = |id: &str, p: Option<u64>| (id.to_owned(), p);
        let mut known = HashMap::new();
        list(&mut conn, &keys, "a", Some(1000)).await;
        assert_eq!(
            read(&mut conn, &keys, &mut known, false).await,
            vec![of("a", Some(1000))]
        );

        // The same id restarted with another interval: the kept period stands until
        // a read of all.
        list(&mut conn, &keys, "a", Some(5000)).await;
        assert_eq!(
            read(&mut conn, &keys, &mut known, false).await,
            vec![of("a", Some(1000))]
        );
        assert_eq!(
            read(&mut conn, &keys, &mut known, true).await,
            vec![of("a", Some(5000))]
        );

        // A new replica is read at once; one without a period stays unknown.
        list(&mut conn, &keys, "b", Some(500)).await;
        list(&mut conn, &keys, "c", None).await;
        assert_eq!(
            read(&mut conn, &keys, &mut known, false).await,
            vec![of("a", Some(5000)), of("b", Some(500)), of("c", None)]
        );

        // Gone from the list: forgotten.
        let _: () = redis::cmd("ZREM")
            .arg(keys.owners())
            .arg("a")
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(&mut conn, &keys, &mut known, false).await.len(), 2);
        assert!(!known.contains_key("a"));
    }
}
