//! The Lua scripts in `lua/` and how they are called.
//!
//! Each script is one state transition, and has exactly one module here that builds
//! its KEYS and ARGV and reads its reply; the two read side by side. Scripts are
//! called with EVALSHA by a SHA1 computed here from the embedded source. Redis forgets
//! scripts on restart, failover and `SCRIPT FLUSH`; on NOSCRIPT the call is sent again
//! as EVAL with the source (which caches the script again), so a vanished cache never
//! stops the worker and a flush racing a reload cannot fail the call.

pub mod admit;
pub mod claim;
pub mod claim_outbox;
pub mod peek;
pub mod quarantine;
pub mod reap;
pub mod release;
pub mod set_tokens;
pub mod settle;
pub mod settle_sold_out;
pub mod valve;

use redis::aio::ConnectionLike;
use redis::{ErrorKind, FromRedisValue, RedisError, ServerErrorKind};
use thiserror::Error;

/// What can go wrong calling a script.
#[derive(Debug, Error)]
pub enum ScriptError {
    /// Redis refused the call, or the connection failed.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// Redis hashed the source differently: EVALSHA by the worker's SHA would never find it.
    #[error("script {script}: SCRIPT LOAD returned sha {got}, expected {expected}")]
    ShaMismatch {
        /// The script's name.
        script: &'static str,
        /// The SHA1 the worker computed from the source.
        expected: String,
        /// The SHA1 Redis returned.
        got: String,
    },
    /// The reply is not in the shape the script's header documents.
    #[error("script {script}: unexpected reply: {detail}")]
    Reply {
        /// The script's name.
        script: &'static str,
        /// What was wrong with the reply.
        detail: String,
    },
}

impl ScriptError {
    /// A reply of `script` that is not in the shape its header documents.
    pub(crate) fn reply(script: &'static str, detail: impl Into<String>) -> Self {
        ScriptError::Reply {
            script,
            detail: detail.into(),
        }
    }

    /// Whether the call may succeed if simply tried again (a dropped connection, a
    /// timeout, a server that is loading or busy).
    pub fn is_transient(&self) -> bool {
        match self {
            ScriptError::Redis(e) => crate::redis::retry::is_transient(e),
            _ => false,
        }
    }
}

/// The waiters `lane_prospects` (`lua/include/prospects.lua`) named in a reply of
/// `script`: session id, user id, in the order the next admit call takes them.
pub(crate) fn prospect_pairs(
    script: &'static str,
    flat: &[redis::Value],
) -> Result<Vec<(String, String)>, ScriptError> {
    if !flat.len().is_multiple_of(2) {
        return Err(ScriptError::reply(script, "prospects must come in pairs"));
    }
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        _ => Err(ScriptError::reply(script, "want bulk strings")),
    };
    flat.chunks_exact(2)
        .map(|p| Ok((text(&p[0])?, text(&p[1])?)))
        .collect()
}

/// Lua that several scripts share (BullMQ's includes), in `lua/include/`: a script
/// says `-- @include <name>` on a line of its own and the file's text goes there
/// when the script is built, so the copies cannot drift apart. Redis only ever sees
/// the whole text (its SHA is of that text).
const INCLUDES: &[(&str, &str)] = &[
    (
        "prospects",
        include_str!("../../../lua/include/prospects.lua"),
    ),
    ("rfc3339", include_str!("../../../lua/include/rfc3339.lua")),
    ("untold", include_str!("../../../lua/include/untold.lua")),
];

/// `source` with every `-- @include <name>` line replaced by that include. An
/// unknown name is left as it is (a comment; the unit tests refuse it).
fn expand(source: &str) -> String {
    let mut out = String::with_capacity(source.len() + 2048);
    for line in source.split_inclusive('\n') {
        let include = line
            .trim_end()
            .strip_prefix("-- @include ")
            .and_then(|name| INCLUDES.iter().find(|(n, _)| *n == name.trim()));
        match include {
            Some((_, text)) => {
                out.push_str(text);
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str(line),
        }
    }
    out
}

/// Most items (tokens, settled entries) one merged call may carry, so no call holds
/// Redis for long however many events a pass serves.
pub(crate) const MAX_ITEMS_PER_CALL: usize = 5_000;

/// Consecutive runs of items whose sizes add up to at most `cap` (an item larger
/// than `cap` alone makes a run): how many events' work goes into each call.
pub(crate) fn group_by_size(sizes: &[usize], cap: usize) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut total) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && total + n > cap {
            groups.push(start..i);
            (start, total) = (i, 0);
        }
        total += n;
    }
    if start < sizes.len() {
        groups.push(start..sizes.len());
    }
    groups
}

/// One Lua script: its source (includes spliced in), version and SHA1.
#[derive(Debug, Clone)]
pub struct Script {
    name: &'static str,
    version: u32,
    source: String,
    sha: String,
}

impl Script {
    /// `source` must carry a `-- version: N` line in its header.
    pub fn new(name: &'static str, source: &'static str) -> Self {
        let version = source
            .lines()
            .take_while(|l| l.starts_with("--"))
            .find_map(|l| l.strip_prefix("-- version:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let source = expand(source);
        let sha = sha1_smol::Sha1::from(&source).digest().to_string();
        Script {
            name,
            version,
            source,
            sha,
        }
    }

    /// The script's name (its file in `lua/`), for logs and errors.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The `-- version: N` of its header (0 when there is none).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The SHA1 of the text Redis runs, which EVALSHA calls it by.
    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// SCRIPT LOAD the source and check that Redis computed the same SHA.
    pub async fn load<C: ConnectionLike + Send>(&self, conn: &mut C) -> Result<(), ScriptError> {
        let got: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(&self.source)
            .query_async(conn)
            .await?;
        if got != self.sha {
            return Err(ScriptError::ShaMismatch {
                script: self.name,
                expected: self.sha.clone(),
                got,
            });
        }
        Ok(())
    }

    /// EVALSHA, loading the script first if Redis does not know it.
    pub async fn invoke<C, T>(
        &self,
        conn: &mut C,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, ScriptError>
    where
        C: ConnectionLike + Send,
        T: FromRedisValue,
    {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(keys.len()).arg(keys).arg(args);
        match cmd.query_async(conn).await {
            Err(e) if is_noscript(&e) => {
                // EVAL with the source cannot meet NOSCRIPT, and caches the script again.
                crate::log_limited!(WARN, "script missing from Redis cache, sending its source", script = self.name, sha = %self.sha);
                let mut eval = redis::cmd("EVAL");
                eval.arg(&self.source).arg(keys.len()).arg(keys).arg(args);
                Ok(eval.query_async(conn).await?)
            }
            other => Ok(other?),
        }
    }
}

/// One script call of a batch.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// The script to run.
    pub script: &'a Script,
    /// Its KEYS, in the order its Lua header lists them.
    pub keys: Vec<String>,
    /// Its ARGV, in the order its Lua header lists them.
    pub args: Vec<String>,
}

impl Call<'_> {
    fn add_to(&self, pipe: &mut redis::Pipeline) {
        pipe.cmd("EVALSHA")
            .arg(&self.script.sha)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
    }
}

/// [`run_batch`] on a clone of `conn`, the whole pipeline tried again (up to
/// `attempts`, with `backoff`) while the failure is transient: what the pass, the
/// token writes and the settler all do with their calls.
pub(crate) async fn run_batch_retrying(
    conn: &crate::redis::store::RedisConn,
    calls: &[Call<'_>],
    attempts: u32,
    backoff: crate::redis::retry::Backoff,
) -> Result<Vec<Result<redis::Value, RedisError>>, RedisError> {
    crate::redis::retry::with_retries(attempts, backoff, crate::redis::retry::is_transient, || {
        let mut conn = conn.clone();
        async move { run_batch(&mut conn, calls).await }
    })
    .await
}

/// Run many script calls in one pipeline (one round trip), each with its own result,
/// so one event's error costs only that event. Calls that met NOSCRIPT did not run:
/// their scripts are loaded and just those calls are sent again, so a flushed cache
/// costs one more round trip, never a lost or doubled call.
pub async fn run_batch<C: ConnectionLike + Send>(
    conn: &mut C,
    calls: &[Call<'_>],
) -> Result<Vec<Result<redis::Value, RedisError>>, RedisError> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for c in calls {
        c.add_to(&mut pipe);
    }
    let mut results: Vec<Result<redis::Value, RedisError>> = pipe.query_async(conn).await?;
    let missing: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Err(e) if is_noscript(e)))
        .map(|(i, _)| i)
        .collect();
    if missing.is_empty() {
        return Ok(results);
    }
    // Send just those calls again as EVAL with the source: it cannot meet NOSCRIPT
    // (a flush racing a SCRIPT LOAD could), and it puts the script back in the cache.
    // One line for the batch (a flushed cache meets every event's call at once).
    let mut scripts: Vec<&str> = missing.iter().map(|&i| calls[i].script.name).collect();
    scripts.sort_unstable();
    scripts.dedup();
    crate::log_limited!(
        WARN,
        "script missing from Redis cache, sending its source",
        ?scripts,
        calls = missing.len()
    );
    let mut again = redis::pipe();
    again.ignore_errors();
    for &i in &missing {
        let c = &calls[i];
        again
            .cmd("EVAL")
            .arg(&c.script.source)
            .arg(c.keys.len())
            .arg(&c.keys)
            .arg(&c.args);
    }
    let retried: Vec<Result<redis::Value, RedisError>> = again.query_async(conn).await?;
    for (i, r) in missing.into_iter().zip(retried) {
        results[i] = r;
    }
    Ok(results)
}

fn is_noscript(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Server(ServerErrorKind::NoScript)) || e.code() == Some("NOSCRIPT")
}

/// Every script the worker uses, built once.
#[derive(Debug, Clone)]
pub struct Scripts {
    /// `lua/admit.lua`: moves waiting sessions of one event into checkout.
    pub admit: Script,
    /// `lua/claim_outbox.lua`: takes due outbox entries under a lease for publishing.
    pub claim_outbox: Script,
    /// `lua/claim.lua`: the checkout service claims an admitted session's slot.
    pub claim: Script,
    /// `lua/set_tokens.lua`: writes checkout tokens into session hashes.
    pub set_tokens: Script,
    /// `lua/release.lua`: frees the slot of a session that finished checkout.
    pub release: Script,
    /// `lua/reap.lua`: takes back slots whose checkout window has passed.
    pub reap: Script,
    /// `lua/settle.lua`: records what Kafka said of publish attempts.
    pub settle: Script,
    /// `lua/quarantine.lua`: moves unreadable outbox entries aside.
    pub quarantine: Script,
    /// `lua/valve.lua`: one step of an event's checkout-health valve.
    pub valve: Script,
    /// `lua/settle_sold_out.lua`: an event's sell-out was announced.
    pub settle_sold_out: Script,
    /// `lua/peek.lua`: who is first in an event's line (reads only).
    pub peek: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

impl Scripts {
    /// Build every script from its embedded source (no Redis call).
    pub fn new() -> Self {
        Scripts {
            admit: admit::script(),
            claim_outbox: claim_outbox::script(),
            claim: claim::script(),
            set_tokens: set_tokens::script(),
            release: release::script(),
            reap: reap::script(),
            settle: settle::script(),
            quarantine: quarantine::script(),
            valve: valve::script(),
            settle_sold_out: settle_sold_out::script(),
            peek: peek::script(),
        }
    }

    /// Every script, in one list (to load or log them all).
    pub fn all(&self) -> [&Script; 11] {
        [
            &self.admit,
            &self.claim_outbox,
            &self.claim,
            &self.set_tokens,
            &self.release,
            &self.reap,
            &self.settle,
            &self.quarantine,
            &self.valve,
            &self.settle_sold_out,
            &self.peek,
        ]
    }

    /// Load every script (at start-up, so a broken script fails fast) and log
    /// name, version and SHA of each.
    pub async fn load_all<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<(), ScriptError> {
        for s in self.all() {
            s.load(conn).await?;
            tracing::info!(
                script = s.name(),
                version = s.version(),
                sha = s.sha(),
                "script loaded"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_has_a_version_and_a_sha() {
        for s in Scripts::new().all() {
            assert!(s.version() >= 1, "{} has no version line", s.name());
            assert_eq!(s.sha().len(), 40);
        }
    }

    #[test]
    fn includes_are_spliced_in_and_every_one_is_known() {
        for s in Scripts::new().all() {
            assert!(
                !s.source.contains("-- @include"),
                "{}: an include was not found",
                s.name()
            );
            assert_eq!(
                s.sha(),
                sha1_smol::Sha1::from(&s.source).digest().to_string(),
                "{}: the SHA is of the text Redis runs",
                s.name()
            );
        }
        let scripts = Scripts::new();
        for s in [&scripts.admit, &scripts.claim_outbox] {
            assert_eq!(s.source.matches("local function rfc3339(sec)").count(), 1);
        }
        for s in scripts.all() {
            if s.source.contains("UNTOLD") {
                assert_eq!(
                    s.source.matches("local UNTOLD = 1125899906842624").count(),
                    1,
                    "{}",
                    s.name()
                );
            }
        }
        assert_eq!(
            expand("a\n-- @include nowhere\nb"),
            "a\n-- @include nowhere\nb"
        );
    }

    /// `lua/claim.lua` is run as it is by checkout services (`redis-cli --eval`,
    /// EVALSHA of the file's SHA): it includes nothing, and its copy of the RFC 3339
    /// formatter is the shared one, line for line.
    #[test]
    fn claim_lua_runs_as_the_file_is_and_formats_times_as_the_others() {
        let file = include_str!("../../../lua/claim.lua");
        assert!(!file.contains("-- @include"));
        assert_eq!(Scripts::new().claim.source, file);
        let shared = include_str!("../../../lua/include/rfc3339.lua");
        let body = shared.split_once('\n').map(|(_, b)| b).unwrap_or(shared);
        assert!(
            file.contains(body),
            "claim.lua's rfc3339 drifted from the include"
        );
    }
}
