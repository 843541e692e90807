//! Queue users exactly as the API would (the seed's load generator, without gRPC):
//! a session hash with `status=queued`, `user_id`, `event_id`, `position` and a TTL,
//! a queue member scored by join time, and the event in `active_events`.

use std::time::Duration;

use redis::RedisError;
use redis::aio::ConnectionLike;

use crate::model::clock;
use crate::model::keys::Keys;

/// Sessions written per pipeline.
const CHUNK: usize = 1000;

/// What was queued: how many, and the first and last session ids (queue order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// Sessions queued.
    pub count: usize,
    /// The first one's id.
    pub first: Option<String>,
    /// The last one's id.
    pub last: Option<String>,
}

/// Queue `users` new sessions for `event`; ids are `<run>-<i, 7 digits>`, users `user-<run>-<i>`.
/// Ids are not collected, so a million users cost no memory here.
pub async fn enqueue<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    event: &str,
    users: usize,
    session_ttl: Duration,
) -> Result<Enqueued, RedisError> {
    let run = format!("{:x}", clock::now_ms());
    let start: u64 = redis::cmd("ZCARD")
        .arg(keys.queue(event))
        .query_async(conn)
        .await?;
    let ttl = session_ttl.as_millis().max(1) as u64;
    let mut done = Enqueued {
        count: 0,
        first: None,
        last: None,
    };
    let mut i = 0;
    while i < users {
        let end = (i + CHUNK).min(users);
        let now = clock::now_ms();
        let mut p = redis::pipe();
        for n in i..end {
            let sid = format!("{run}-{n:07}");
            let key = keys.session(event, &sid);
            p.cmd("HSET")
                .arg(&key)
                .arg("status")
                .arg("queued")
                .arg("user_id")
                .arg(format!("user-{run}-{n}"))
                .arg("event_id")
                .arg(event)
                .arg("position")
                .arg(start + n as u64 + 1)
                .ignore();
            p.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
            // Score = join time (ms); within one ms the zero-padded ids keep the order written.
            p.cmd("ZADD")
                .arg(keys.queue(event))
                .arg(now)
                .arg(&sid)
                .ignore();
            if done.first.is_none() {
                done.first = Some(sid.clone());
            }
            done.count += 1;
            done.last = Some(sid);
        }
        p.cmd("SADD").arg(keys.active_events()).arg(event).ignore();
        p.query_async::<()>(conn).await?;
        i = end;
    }
    Ok(done)
}
