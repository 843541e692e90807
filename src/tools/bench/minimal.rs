//! Issue 14's "minimal" reference: the least an admission can cost Redis. One
//! script call per batch that does only SCARD, ZPOPMIN up to the batch, and per
//! user HMGET status and user_id, SADD processing, HSET the three admission fields,
//! EXPIRE, RPUSH to a list: no validation beyond status, no token, no outbox, no
//! Kafka. The worker's whole path is measured against it in the same run.

use std::time::{Duration, Instant};

use crate::redis::scripts::Script;

use super::{BenchError, EVENT, Env, Throughput, redis_cpu, seed, throughput};

/// The reference script (bench only; never loaded by the worker).
const MINIMAL: &str = r#"-- minimal reference (bench only)
-- version: 1
local in_use = redis.call('SCARD', KEYS[2])
local n = math.min(tonumber(ARGV[2]), tonumber(ARGV[3]) - in_use)
if n <= 0 then return 0 end
local popped = redis.call('ZPOPMIN', KEYS[1], n)
local t = redis.call('TIME')
local at = tonumber(t[1])
local admitted = 0
for i = 1, #popped, 2 do
  local sid = popped[i]
  local key = ARGV[1] .. sid
  local h = redis.call('HMGET', key, 'status', 'user_id')
  if h[1] == 'queued' then
    redis.call('SADD', KEYS[2], sid)
    redis.call('HSET', key, 'status', 'admitted', 'admitted_at', at,
      'checkout_expires_at', at + 900)
    redis.call('EXPIRE', key, ARGV[4])
    redis.call('RPUSH', KEYS[3], sid)
    admitted = admitted + 1
  end
end
return admitted
"#;

/// Admit `users` with the reference script, `batch` a call.
pub(super) async fn minimal(
    env: &mut Env,
    batch: u64,
    users: usize,
) -> Result<Throughput, BenchError> {
    let prefix = format!("bench-minimal-{batch}");
    let keys = seed(env, &prefix, users).await?;
    let script = Script::new("minimal", MINIMAL);
    script
        .load(&mut env.conn)
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let list = format!("{prefix}:admitted");
    let k = [keys.queue(EVENT), keys.processing(EVENT), list];
    let k: Vec<&str> = k.iter().map(String::as_str).collect();
    let a = [
        keys.session_prefix(EVENT),
        batch.to_string(),
        "1000000000".to_owned(),
        Duration::from_secs(7200).as_secs().to_string(),
    ];
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let cpu0 = redis_cpu(&mut env.conn).await?;
    let t0 = Instant::now();
    let mut admitted = 0u64;
    loop {
        let n: u64 = script
            .invoke(&mut env.conn, &k, &a)
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
        if n == 0 {
            break;
        }
        admitted += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = redis_cpu(&mut env.conn).await? - cpu0;
    Ok(throughput(batch, users, admitted, secs, cpu))
}
