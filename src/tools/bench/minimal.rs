//! Issue 14's "minimal" reference: the least an admission can cost Redis. One
//! script call per batch that does only SCARD, ZPOPMIN up to the batch, and per
//! user HMGET status and user_id, SADD processing, HSET the three admission fields,
//! EXPIRE, RPUSH to a list: no validation beyond status, no token, no outbox, no
//! Kafka. The worker's whole path is measured against it in the same run.
//!
//! Beside it, "minimal + token": the same script, but each admission also writes
//! a signed checkout token (about 340 bytes, passed in as an argument) in its
//! `HSET`, as any design that hands the token out with the admission must. It is
//! the floor for that: what carrying and storing the token alone costs Redis.

use std::time::{Duration, Instant};

use crate::redis::scripts::Script;

use super::{BenchError, EVENT, Env, Throughput, clear, redis_cpu, seed, throughput};

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
    if ARGV[5] then
      redis.call('HSET', key, 'status', 'admitted', 'admitted_at', at,
        'checkout_expires_at', at + 900, 'checkout_token', ARGV[4 + (i + 1) / 2])
    else
      redis.call('HSET', key, 'status', 'admitted', 'admitted_at', at,
        'checkout_expires_at', at + 900)
    end
    redis.call('EXPIRE', key, ARGV[4])
    redis.call('RPUSH', KEYS[3], sid)
    admitted = admitted + 1
  end
end
return admitted
"#;

/// Admit `users` with the reference script, `batch` a call; `with_token`: each
/// call carries a signed token per admission and writes it (signed here, for
/// placeholder sessions: only their size matters to Redis).
pub(super) async fn minimal(
    env: &mut Env,
    batch: u64,
    users: usize,
    with_token: bool,
) -> Result<Throughput, BenchError> {
    let prefix = format!(
        "bench-minimal{}-{batch}",
        if with_token { "-token" } else { "" }
    );
    let keys = seed(env, &prefix, users).await?;
    let script = Script::new("minimal", MINIMAL);
    script
        .load(&mut env.conn)
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let list = format!("{prefix}:admitted");
    let k = [keys.queue(EVENT), keys.processing(EVENT), list];
    let k: Vec<&str> = k.iter().map(String::as_str).collect();
    let fixed = [
        keys.session_prefix(EVENT),
        batch.to_string(),
        "1000000000".to_owned(),
        Duration::from_secs(7200).as_secs().to_string(),
    ];
    let signer = crate::model::token::Signer::hs256(&[7u8; 32], "waitroom", "checkout")
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let cpu0 = redis_cpu(&mut env.conn).await?;
    let t0 = Instant::now();
    let mut admitted = 0u64;
    loop {
        let mut a: Vec<String> = fixed.to_vec();
        if with_token {
            let at = crate::model::clock::now_ms();
            for i in 0..batch {
                let sid = format!("s-{admitted:09}-{i:05}-placeholder");
                let claims = signer.claims(EVENT, &sid, "u-placeholder-0001", at, at + 900_000);
                a.push(
                    signer
                        .sign(&claims)
                        .map_err(|e| BenchError::Other(e.to_string()))?,
                );
            }
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
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
    clear(env, &prefix).await?;
    Ok(throughput(batch, users, admitted, secs, cpu))
}

/// `bench --only admission`: sections 1 to 3 alone (the whole path, the admit script
/// alone, the minimal reference, per batch size, and the naive flow), all in one run
/// on one server, so their ratios compare like with like.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdmissionReport {
    /// The full path, per batch size.
    pub end_to_end: Vec<Throughput>,
    /// The admit script alone, per batch size.
    pub admit_script_only: Vec<Throughput>,
    /// The admit script alone, signed (tokens in, prospects out), per batch size.
    pub admit_signed_only: Vec<Throughput>,
    /// The minimal reference, per batch size.
    pub minimal_reference: Vec<Throughput>,
    /// The minimal reference writing a token with each admission, per batch size.
    pub minimal_with_token: Vec<Throughput>,
    /// The naive per-user flow (batch 100).
    pub naive_per_user: Throughput,
}

/// Run sections 1 to 3 only.
pub async fn run_admission_only(a: super::BenchOptions) -> Result<AdmissionReport, BenchError> {
    let users = if a.quick { a.users.min(2_000) } else { a.users };
    let (mut env, _servers) = super::plain_env(&a).await?;
    let say = |s: &str| {
        if !a.json {
            eprintln!("bench: {s}");
        }
    };
    let mut r = AdmissionReport {
        end_to_end: Vec::new(),
        admit_script_only: Vec::new(),
        admit_signed_only: Vec::new(),
        minimal_reference: Vec::new(),
        minimal_with_token: Vec::new(),
        naive_per_user: throughput(100, 0, 0, 1.0, 0.0),
    };
    for batch in [10u64, 100, 1000] {
        say(&format!("end to end, batch {batch}, {users} users"));
        r.end_to_end
            .push(super::end_to_end(&mut env, batch, users).await?);
        say(&format!("admit script only, batch {batch}"));
        r.admit_script_only
            .push(super::admit_only(&mut env, batch, users).await?);
        say(&format!("admit script only, signed, batch {batch}"));
        r.admit_signed_only
            .push(admit_signed_only(&mut env, batch, users).await?);
        say(&format!("minimal reference, batch {batch}"));
        r.minimal_reference
            .push(minimal(&mut env, batch, users, false).await?);
        say(&format!("minimal reference with a token, batch {batch}"));
        r.minimal_with_token
            .push(minimal(&mut env, batch, users, true).await?);
    }
    say("naive per-user implementation, batch 100");
    r.naive_per_user = super::naive(&mut env, 100, (users / 2).max(1)).await?;
    Ok(r)
}

/// The admission-only report as a table, with the ratios issue 14 sets targets for.
pub fn render_admission_only(r: &AdmissionReport) -> String {
    let mut t = String::from(
        "batch   end to end  cpu µs   admit only  cpu µs       signed  cpu µs      minimal  cpu µs    min+token  cpu µs   e2e/min  cpu e2e/min  cpu e2e/min+tok\n",
    );
    for ((((e, c), s), m), k) in r
        .end_to_end
        .iter()
        .zip(&r.admit_script_only)
        .zip(&r.admit_signed_only)
        .zip(&r.minimal_reference)
        .zip(&r.minimal_with_token)
    {
        t.push_str(&format!(
            "{:>5} {:>12.0} {:>7.1} {:>12.0} {:>7.1} {:>12.0} {:>7.1} {:>12.0} {:>7.1} {:>12.0} {:>7.1} {:>8.2}x {:>11.2}x {:>15.2}x\n",
            e.batch,
            e.users_per_sec,
            e.redis_cpu_us_per_admission,
            c.users_per_sec,
            c.redis_cpu_us_per_admission,
            s.users_per_sec,
            s.redis_cpu_us_per_admission,
            m.users_per_sec,
            m.redis_cpu_us_per_admission,
            k.users_per_sec,
            k.redis_cpu_us_per_admission,
            e.users_per_sec / m.users_per_sec.max(f64::MIN_POSITIVE),
            e.redis_cpu_us_per_admission / m.redis_cpu_us_per_admission.max(f64::MIN_POSITIVE),
            e.redis_cpu_us_per_admission / k.redis_cpu_us_per_admission.max(f64::MIN_POSITIVE),
        ));
    }
    let n = &r.naive_per_user;
    let e2e = r.end_to_end.last().map_or(0.0, |e| e.users_per_sec);
    t.push_str(&format!(
        "naive per-user (batch {}): {:.0} users/s, {:.1} µs Redis CPU per admission; end to end at batch 1000 is {:.1}x naive\n",
        n.batch,
        n.users_per_sec,
        n.redis_cpu_us_per_admission,
        e2e / n.users_per_sec.max(f64::MIN_POSITIVE)
    ));
    t
}

/// The signed admit script alone: as [`super::admit_only`], but each call carries
/// the tokens of the waiters the previous reply named and asks for the next ones,
/// as the worker does (tokens are signed here; only Redis's CPU is compared).
pub(super) async fn admit_signed_only(
    env: &mut Env,
    batch: u64,
    users: usize,
) -> Result<Throughput, BenchError> {
    use crate::model::token::{self, Signer};
    use crate::redis::scripts::admit::{self, Signed};
    use crate::redis::scripts::{self as scripts, Scripts};
    let other = |e: &dyn std::fmt::Display| BenchError::Other(e.to_string());
    let prefix = format!("bench-signed-{batch}");
    let keys = seed(env, &prefix, users).await?;
    let all = Scripts::new();
    all.load_all(&mut env.conn).await.map_err(|e| other(&e))?;
    let signer = Signer::hs256(&[7u8; 32], "waitroom", "checkout").map_err(|e| other(&e))?;
    let mut a = super::admit_args(batch);
    a.checkout_window = Duration::from_secs(900);
    let window = 900_000;
    let mut prospects: Vec<(String, String)> = Vec::new();
    let mut now_ms = 0u64;
    let cpu0 = redis_cpu(&mut env.conn).await?;
    let t0 = Instant::now();
    let mut admitted = 0u64;
    let mut idle = 0;
    while (admitted as usize) < users && idle < 3 {
        let at = if now_ms == 0 {
            crate::model::clock::now_ms()
        } else {
            now_ms
        };
        let (deadline, _) = token::stamps(at, window, 0);
        let mut tokens = Vec::with_capacity(prospects.len());
        for (sid, user) in &prospects {
            let claims = signer.claims(EVENT, sid, user, at, deadline);
            let t = signer.sign(&claims).map_err(|e| other(&e))?;
            tokens.push((sid.clone(), user.clone(), t));
        }
        let signed = Signed {
            admitted_ms: at,
            claim_window_ms: 0,
            lookahead: batch,
            tokens,
        };
        let call = admit::call_signed(&all.admit, &keys, EVENT, &a, &signed);
        let reply = scripts::run_batch(&mut env.conn, std::slice::from_ref(&call))
            .await?
            .pop()
            .ok_or_else(|| BenchError::Other("no reply".into()))??;
        let o = admit::parse(reply).map_err(|e| other(&e))?;
        // The clock moves on by about the time a call takes.
        now_ms = o.now_ms + 1;
        prospects = o.prospects;
        idle = if o.admitted == 0 { idle + 1 } else { 0 };
        admitted += o.admitted;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = redis_cpu(&mut env.conn).await? - cpu0;
    clear(env, &prefix).await?;
    Ok(throughput(batch, users, admitted, secs, cpu))
}
