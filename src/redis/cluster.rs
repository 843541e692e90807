//! Pipelines on a Redis Cluster: one pipeline per master per round.
//!
//! Every module builds one pipeline per round trip as it would for one server. A
//! cluster node only runs commands of the slots it owns, and redis-rs routes a
//! pipeline by its first key, so a pipeline that spans events must be split. Split
//! per hash slot, a pass over 10,000 events (one slot each in the cluster key layout)
//! was 10,000 small pipelines and cost 2.5x the single-server pass (BENCHMARKS.md).
//! Here it is split per master instead: a slot map of our own (`CLUSTER SLOTS`) names
//! each slot's master, and each master gets one pipeline holding the commands of all
//! its slots, in their order, on a plain multiplexed connection to that master.
//!
//! Why not redis-rs's `ClusterConnection::route_pipeline` by address: when any reply
//! of a routed pipeline is a redirect (MOVED, ASK) or a cluster error (TRYAGAIN,
//! CLUSTERDOWN, ...), redis-rs sends the *whole* pipeline again to the redirect's
//! node (redis-rs 1.8 `choose_response`). For a pipeline of many slots that runs the
//! commands that had succeeded a second time, on the wrong node, where they are
//! redirected back, and after its retries the whole pipeline fails with the replies
//! that did run lost. On a connection of our own, a redirect is just a reply: only
//! those commands are sent again, one by one through redis-rs (which follows
//! redirects), and the map is read again.
//!
//! The map is read at the first pipeline, after a MOVED, READONLY or CLUSTERDOWN
//! reply or a master's connection failing (at most every [`MAP_MIN_INTERVAL`]), and
//! at most [`MAP_MAX_AGE`] after the last read. A slot the map does not know goes by
//! slot through redis-rs, as before.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{
    Arg, AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline,
    RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};

/// The longest the slot map is used without being read again. Redirects refresh it
/// as soon as a slot moves; this only bounds how long a master that gained slots
/// without any redirect being seen (none of its events were sent) goes unnoticed.
pub(crate) const MAP_MAX_AGE: Duration = Duration::from_secs(60);

/// The map is read at most this often. While a master is down every pipeline finds
/// its connection failing, and a failed read is followed by the next pipeline: this
/// keeps that to a few reads a second. Redirects in the meantime cost only their
/// commands sent again.
const MAP_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// Hash slots in a Redis Cluster.
const SLOTS: u16 = 16384;

/// A Redis Cluster connection: redis-rs's cluster connection (single-slot commands,
/// keyless commands, redirects), plus the slot map and one connection per master for
/// the pipelines that span slots. Clones share the map, the masters' connections and
/// the counts.
#[derive(Clone)]
pub struct ClusterConn {
    conn: ClusterConnection,
    router: Arc<Router>,
}

/// How a cluster connection (and all its clones) sent its pipelines so far: for
/// tests, the bench and anyone asking why a pass got slower.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineCounts {
    /// Pipelines sent to one master by address, holding the commands of all the
    /// slots it owns.
    pub node_pipelines: u64,
    /// Pipelines sent for one hash slot through redis-rs's routing: pipelines of a
    /// single slot, and slots the map does not know.
    pub slot_pipelines: u64,
    /// Commands a master answered with a redirect or a cluster error (MOVED, ASK,
    /// TRYAGAIN, ...), sent again one by one, and commands of a master that could not
    /// be connected to.
    pub redirected: u64,
    /// Successful reads of the slot map.
    pub map_reads: u64,
}

impl ClusterConn {
    /// Wrap redis-rs's cluster connection. `seed` is the URL of a seed node: each
    /// master is reached with its credentials and TLS settings, at the address the
    /// cluster announces; `timeout` bounds connecting to a master and every reply.
    pub(crate) fn new(conn: ClusterConnection, seed: &str, timeout: Duration) -> RedisResult<Self> {
        Ok(ClusterConn {
            conn,
            router: Arc::new(Router {
                seed: seed.into_connection_info()?,
                timeout,
                state: Mutex::new(State {
                    map: None,
                    read_at: None,
                    last_read: None,
                    nodes: HashMap::new(),
                }),
                reading: tokio::sync::Mutex::new(()),
                counts: Counters::default(),
            }),
        })
    }

    /// How this connection and its clones sent their pipelines so far.
    pub fn pipeline_counts(&self) -> PipelineCounts {
        let c = &self.router.counts;
        PipelineCounts {
            node_pipelines: c.node_pipelines.load(Ordering::Relaxed),
            slot_pipelines: c.slot_pipelines.load(Ordering::Relaxed),
            redirected: c.redirected.load(Ordering::Relaxed),
            map_reads: c.map_reads.load(Ordering::Relaxed),
        }
    }
}

impl ConnectionLike for ClusterConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.conn.req_packed_command(cmd)
    }

    /// A transaction stays whole (it is in one slot); a part of a pipeline goes as
    /// redis-rs sends it; a whole pipeline is split by master.
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        if pipeline.is_transaction() || offset != 0 || count != pipeline.len() {
            self.conn.req_packed_commands(pipeline, offset, count)
        } else {
            Box::pin(split_by_master(self.clone(), pipeline))
        }
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// A master's address as the cluster announces it.
#[derive(Clone, PartialEq, Eq, Hash)]
struct NodeAddr {
    host: String,
    port: u16,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Which master owns each slot, as one `CLUSTER SLOTS` answer said.
struct SlotMap {
    /// Slot → index in `masters`. A slot missing here is not served (or the node
    /// that answered did not know the master's address).
    owner: HashMap<Slot, usize>,
    masters: Vec<NodeAddr>,
}

impl SlotMap {
    fn master_of(&self, slot: Slot) -> Option<usize> {
        self.owner.get(&slot).copied()
    }

    /// The map from a `CLUSTER SLOTS` reply: `[start, end, [host, port, id, ..],
    /// replicas..]` per range. A range whose master has no usable address (an empty
    /// host or `?`: the answering node does not know it) is left out.
    fn parse(reply: &Value) -> Result<SlotMap, &'static str> {
        let Value::Array(ranges) = reply else {
            return Err("CLUSTER SLOTS did not answer an array");
        };
        let mut map = SlotMap {
            owner: HashMap::new(),
            masters: Vec::new(),
        };
        for range in ranges {
            let Value::Array(fields) = range else {
                return Err("a CLUSTER SLOTS range is not an array");
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err("a CLUSTER SLOTS range lacks its bounds or its master");
            };
            let host = match master.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => return Err("a CLUSTER SLOTS master has no host"),
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return Err("a CLUSTER SLOTS master has no port");
            };
            let Ok(port) = u16::try_from(*port) else {
                return Err("a CLUSTER SLOTS port is out of range");
            };
            if host.is_empty() || host == "?" || port == 0 {
                continue;
            }
            let addr = NodeAddr { host, port };
            let idx = match map.masters.iter().position(|m| *m == addr) {
                Some(i) => i,
                None => {
                    map.masters.push(addr);
                    map.masters.len() - 1
                }
            };
            let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else {
                return Err("a CLUSTER SLOTS range is out of bounds");
            };
            for n in start..=end.min(SLOTS - 1) {
                if let Some(slot) = Slot::new(n) {
                    map.owner.insert(slot, idx);
                }
            }
        }
        Ok(map)
    }
}

/// The state clones of a [`ClusterConn`] share.
struct Router {
    /// The seed's connection settings; each master's address replaces the seed's.
    seed: ConnectionInfo,
    timeout: Duration,
    state: Mutex<State>,
    /// Held while the map is read, so a pass that finds it stale reads it once and
    /// the pipelines of the same moment wait for that read instead of repeating it.
    reading: tokio::sync::Mutex<()>,
    counts: Counters,
}

struct State {
    map: Option<Arc<SlotMap>>,
    /// When the map is to be read again; None: now.
    read_at: Option<Instant>,
    /// When it was last read (or tried).
    last_read: Option<Instant>,
    /// One multiplexed connection per master, made at its first pipeline and
    /// dropped when it fails or the master leaves the map.
    nodes: HashMap<NodeAddr, MultiplexedConnection>,
}

#[derive(Default)]
struct Counters {
    node_pipelines: AtomicU64,
    slot_pipelines: AtomicU64,
    redirected: AtomicU64,
    map_reads: AtomicU64,
}

impl Router {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every point a panic could happen (plain
        // assignments), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The map is read again before the next pipeline, or [`MAP_MIN_INTERVAL`] after
    /// the last read if that is later.
    fn mark_stale(&self) {
        let mut s = self.state();
        s.read_at = s.last_read.map(|t| t + MAP_MIN_INTERVAL);
    }

    fn fresh_map(&self) -> Option<Option<Arc<SlotMap>>> {
        let s = self.state();
        match s.read_at {
            Some(at) if Instant::now() < at => Some(s.map.clone()),
            _ => None,
        }
    }

    /// The slot map, read first if it is stale. None: no map (never read, or the
    /// cluster did not answer): every slot goes by slot.
    async fn map(&self, conn: &mut ClusterConnection) -> Option<Arc<SlotMap>> {
        if let Some(map) = self.fresh_map() {
            return map;
        }
        let _reading = self.reading.lock().await;
        if let Some(map) = self.fresh_map() {
            return map;
        }
        let read = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Value>(conn)
            .await
            .map_err(|e| crate::base::error_chain::chain(&e).to_string())
            .and_then(|v| SlotMap::parse(&v).map_err(str::to_owned));
        let mut s = self.state();
        s.last_read = Some(Instant::now());
        match read {
            Ok(map) => {
                s.nodes.retain(|addr, _| map.masters.contains(addr));
                s.map = Some(Arc::new(map));
                s.read_at = Some(Instant::now() + MAP_MAX_AGE);
                self.counts.map_reads.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                crate::log_limited!(WARN, "could not read the cluster's slot map; pipelines go by slot until it is read", error = %error);
                s.read_at = Some(Instant::now() + MAP_MIN_INTERVAL);
            }
        }
        s.map.clone()
    }

    /// The connection to a master, made if there is none.
    async fn node(&self, addr: &NodeAddr) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.state().nodes.get(addr) {
            return Ok(c.clone());
        }
        let addr_info = match self.seed.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: addr.host.clone(),
                port: addr.port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(addr.host.clone(), addr.port),
        };
        let client = redis::Client::open(self.seed.clone().set_addr(addr_info))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(self
            .state()
            .nodes
            .entry(addr.clone())
            .or_insert(conn)
            .clone())
    }

    /// Forget a master's connection after it failed: the next pipeline connects
    /// again, and reads the map again (the master may have moved).
    fn forget(&self, addr: &NodeAddr) {
        self.state().nodes.remove(addr);
        self.mark_stale();
    }
}

/// Where one part of a split pipeline goes.
enum Route {
    /// To a master by address (index in the map's masters), on our connection.
    Master(usize),
    /// To a slot, through redis-rs (which follows redirects).
    Slot(Slot),
    /// A command without a key, alone, as redis-rs routes it.
    Keyless,
}

struct Part {
    route: Route,
    pipe: Pipeline,
    /// The index in the whole pipeline of each command of the part.
    idx: Vec<usize>,
}

/// Send a pipeline to a cluster as one pipeline per master, concurrently, and put the
/// replies back in the order of the commands. Commands of one master keep their
/// order; a command without a key goes on its own as a plain command, so redis-rs
/// routes it as it would outside a pipeline (SCRIPT LOAD to every master, say); a
/// slot the map does not know goes by slot. A pipeline of one slot goes to redis-rs
/// whole.
///
/// A reply that is a redirect or a cluster error (MOVED, ASK, TRYAGAIN, CLUSTERDOWN,
/// MASTERDOWN, LOADING, READONLY) means the command did not run: those commands go
/// again in a second round, one by one through redis-rs (see [`one_by_one`]), which
/// follows the redirect or waits as it would for any command; a MOVED, READONLY or
/// CLUSTERDOWN also has the map read again before the next pipeline.
///
/// A part that fails as a whole with a transient error (its master unreachable or
/// failing over) turns into a TRYAGAIN error reply for each of its commands, so with
/// `ignore_errors` the events of the other masters go on and only that master's
/// events wait for the next pass (which reads the map again). A master that cannot be
/// connected to for any other reason (nothing was sent) has its commands sent by
/// slot. Any other error, or every part failing, fails the pipeline, as one pipeline
/// to one server would.
async fn split_by_master(cc: ClusterConn, pipeline: &Pipeline) -> RedisResult<Vec<Value>> {
    let mut conn = cc.conn.clone();
    let router = &cc.router;
    let map = router.map(&mut conn).await;
    let mut parts: Vec<Part> = Vec::new();
    let mut by_master: HashMap<usize, usize> = HashMap::new();
    let mut by_slot: HashMap<Slot, usize> = HashMap::new();
    let mut first_slot: Option<Slot> = None;
    let mut many_slots = false;
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        let slot = slot_of(cmd);
        if let Some(s) = slot {
            many_slots |= first_slot.is_some_and(|f| f != s);
            first_slot.get_or_insert(s);
        }
        let route = match slot {
            None => Route::Keyless,
            Some(s) => match map.as_ref().and_then(|m| m.master_of(s)) {
                Some(m) => Route::Master(m),
                None => Route::Slot(s),
            },
        };
        let existing = match route {
            Route::Master(m) => by_master.get(&m).copied(),
            Route::Slot(s) => by_slot.get(&s).copied(),
            Route::Keyless => None,
        };
        let part = match existing {
            Some(p) => p,
            None => {
                match route {
                    Route::Master(m) => by_master.insert(m, parts.len()),
                    Route::Slot(s) => by_slot.insert(s, parts.len()),
                    Route::Keyless => None,
                };
                parts.push(Part {
                    route,
                    pipe: redis::pipe(),
                    idx: Vec::new(),
                });
                parts.len() - 1
            }
        };
        parts[part].pipe.add_command(cmd.clone());
        parts[part].idx.push(i);
    }
    if parts.len() <= 1 && !many_slots {
        router.counts.slot_pipelines.fetch_add(1, Ordering::Relaxed);
        return conn.req_packed_commands(pipeline, 0, pipeline.len()).await;
    }

    let sends = parts.iter().map(|part| {
        let mut c = conn.clone();
        let master = match part.route {
            Route::Master(m) => map.as_ref().and_then(|map| map.masters.get(m)).cloned(),
            _ => None,
        };
        async move {
            match (&part.route, master) {
                (Route::Keyless, _) => match part.pipe.cmd_iter().next() {
                    Some(cmd) => Sent::Done(c.req_packed_command(cmd).await.map(|v| vec![v])),
                    None => Sent::Done(Ok(Vec::new())),
                },
                (Route::Master(_), Some(addr)) => send_to_master(router, addr, &part.pipe).await,
                // Not in the map it came from: cannot happen; by slot if it did.
                (Route::Master(_), None) => Sent::Unsent,
                (Route::Slot(_), _) => {
                    router.counts.slot_pipelines.fetch_add(1, Ordering::Relaxed);
                    Sent::Done(c.req_packed_commands(&part.pipe, 0, part.pipe.len()).await)
                }
            }
        }
    });
    let replies = futures_util::future::join_all(sends).await;
    if replies
        .iter()
        .all(|r| matches!(r, Sent::Done(Err(_)) | Sent::Failed(_)))
    {
        let first = replies.into_iter().find_map(|r| match r {
            Sent::Done(Err(e)) | Sent::Failed(e) => Some(e),
            _ => None,
        });
        return Err(first.unwrap_or_else(|| {
            RedisError::from((redis::ErrorKind::Client, "empty cluster pipeline"))
        }));
    }

    let mut out: Vec<Option<Value>> = vec![None; pipeline.len()];
    let mut again: Vec<usize> = Vec::new();
    for (part, reply) in parts.iter().zip(replies) {
        match reply {
            Sent::Done(Ok(values)) => {
                for (&i, v) in part.idx.iter().zip(values) {
                    if let Some(kind) = redirect(&v) {
                        if matches!(
                            kind,
                            ServerErrorKind::Moved
                                | ServerErrorKind::ReadOnly
                                | ServerErrorKind::ClusterDown
                        ) {
                            router.mark_stale();
                        }
                        if matches!(part.route, Route::Master(_)) {
                            again.push(i);
                            continue;
                        }
                    }
                    out[i] = Some(v);
                }
            }
            Sent::Unsent => again.extend_from_slice(&part.idx),
            Sent::Done(Err(e)) | Sent::Failed(e) => {
                let failed = transient_replies(e)?;
                for &i in &part.idx {
                    out[i] = Some(failed.clone());
                }
            }
        }
    }

    if !again.is_empty() {
        again.sort_unstable();
        router
            .counts
            .redirected
            .fetch_add(again.len() as u64, Ordering::Relaxed);
        match one_by_one(&conn, pipeline, &again).await {
            Ok(values) => {
                for (&i, v) in again.iter().zip(values) {
                    out[i] = Some(v);
                }
            }
            Err(e) => {
                let failed = transient_replies(e)?;
                for &i in &again {
                    out[i] = Some(failed.clone());
                }
            }
        }
    }

    out.into_iter()
        .map(|v| {
            v.ok_or_else(|| {
                RedisError::from((
                    redis::ErrorKind::Client,
                    "cluster pipeline part returned fewer replies than commands",
                ))
            })
        })
        .collect()
}

/// What became of one part of a split pipeline.
enum Sent {
    /// Sent; its replies, or the error that failed it as a whole.
    Done(RedisResult<Vec<Value>>),
    /// Its master's connection failed (made or used) with this error: it was
    /// forgotten and the map is read again.
    Failed(RedisError),
    /// Its master could not be connected to for a reason that is not transient
    /// (nothing was sent): its commands go by slot.
    Unsent,
}

/// One pipeline to one master, on our connection to it.
async fn send_to_master(router: &Router, addr: NodeAddr, pipe: &Pipeline) -> Sent {
    let mut conn = match router.node(&addr).await {
        Ok(c) => c,
        Err(e) if crate::redis::retry::is_transient(&e) => {
            router.forget(&addr);
            return Sent::Failed(e);
        }
        Err(e) => {
            crate::log_limited!(WARN, "could not connect to a cluster master; its commands go by slot", master = %addr, error = %crate::base::error_chain::chain(&e));
            router.forget(&addr);
            return Sent::Unsent;
        }
    };
    router.counts.node_pipelines.fetch_add(1, Ordering::Relaxed);
    match conn.req_packed_commands(pipe, 0, pipe.len()).await {
        Ok(values) => Sent::Done(Ok(values)),
        Err(e) => {
            router.forget(&addr);
            Sent::Failed(e)
        }
    }
}

/// The kind of a reply that says the command did not run on that node and may run
/// elsewhere or later: None for any other reply.
fn redirect(v: &Value) -> Option<ServerErrorKind> {
    let Value::ServerError(e) = v else {
        return None;
    };
    e.kind().filter(|k| {
        matches!(
            k,
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::ReadOnly
        )
    })
}

/// The reply that stands for each command of a part that failed as a whole: a
/// TRYAGAIN error reply if the error is transient (logged), else the error back.
fn transient_replies(e: RedisError) -> RedisResult<Value> {
    if !crate::redis::retry::is_transient(&e) {
        return Err(e);
    }
    crate::log_limited!(WARN, "part of a cluster pipeline failed; its commands are retried on the next pass", error = %crate::base::error_chain::chain(&e));
    part_failed(&e).ok_or(e)
}

/// Send again, through redis-rs, the commands a master answered with a redirect or a
/// cluster error, and their replies in the order of `again` (indices in `pipeline`).
/// Each command goes alone, as a plain command: redis-rs follows a MOVED, and for an
/// ASK it sends ASKING before the command, which covers one command only (a
/// pipeline behind ASKING has its second command redirected back). The commands of
/// one slot go one after another, in their order; the slots concurrently. A command
/// that fails with a transient error reads as a TRYAGAIN reply; any other error fails
/// the pipeline.
async fn one_by_one(
    conn: &ClusterConnection,
    pipeline: &Pipeline,
    again: &[usize],
) -> RedisResult<Vec<Value>> {
    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let mut by_slot: Vec<(Option<Slot>, Vec<usize>)> = Vec::new();
    for (n, &i) in again.iter().enumerate() {
        let slot = cmds.get(i).and_then(|c| slot_of(c));
        match by_slot.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, group)) => group.push(n),
            None => by_slot.push((slot, vec![n])),
        }
    }
    let sends = by_slot.iter().map(|(_, group)| {
        let mut c = conn.clone();
        let cmds = &cmds;
        async move {
            let mut replies = Vec::with_capacity(group.len());
            for &n in group {
                let Some(cmd) = again.get(n).and_then(|&i| cmds.get(i)) else {
                    continue;
                };
                let reply = match c.req_packed_command(cmd).await {
                    Ok(v) => v,
                    Err(e) => transient_replies(e)?,
                };
                replies.push((n, reply));
            }
            Ok::<_, RedisError>(replies)
        }
    });
    let mut out: Vec<Option<Value>> = vec![None; again.len()];
    for group in futures_util::future::join_all(sends).await {
        for (n, v) in group? {
            out[n] = Some(v);
        }
    }
    out.into_iter()
        .map(|v| {
            v.ok_or_else(|| {
                RedisError::from((
                    redis::ErrorKind::Client,
                    "a command sent again had no reply",
                ))
            })
        })
        .collect()
}

/// The error reply that stands for each command of a part that failed as a whole
/// with a transient error: TRYAGAIN (transient for the worker too), with the cause
/// on one line. None if Redis's own parser refuses the line.
fn part_failed(e: &RedisError) -> Option<Value> {
    let cause: String = e
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = format!("-TRYAGAIN cluster part failed: {cause}\r\n");
    redis::parse_redis_value(line.as_bytes()).ok()
}

/// The hash slot of a command that names a key: the first key of EVAL, EVALSHA and
/// FCALL (after the script and the key count), the first argument of the rest. None
/// for the commands without a key that the worker sends (PING, SCRIPT, INFO, ...),
/// and for a script called with no key.
fn slot_of(cmd: &Cmd) -> Option<Slot> {
    const KEYLESS: [&[u8]; 9] = [
        b"PING",
        b"SCRIPT",
        b"INFO",
        b"CLIENT",
        b"CONFIG",
        b"TIME",
        b"DBSIZE",
        b"CLUSTER",
        b"FUNCTION",
    ];
    const SCRIPTED: [&[u8]; 6] = [
        b"EVAL",
        b"EVALSHA",
        b"EVAL_RO",
        b"EVALSHA_RO",
        b"FCALL",
        b"FCALL_RO",
    ];
    let mut args = cmd.args_iter().filter_map(|a| match a {
        Arg::Simple(b) => Some(b),
        _ => None,
    });
    let name = args.next()?;
    if KEYLESS.iter().any(|n| name.eq_ignore_ascii_case(n)) {
        return None;
    }
    if SCRIPTED.iter().any(|n| name.eq_ignore_ascii_case(n)) {
        args.next()?; // the script, SHA or function
        let numkeys: u64 = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
        if numkeys == 0 {
            return None;
        }
    }
    args.next().map(Slot::for_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_of_one_event_share_a_slot_and_keyless_ones_have_none() {
        let q = redis::cmd("ZCARD").arg("w:{e1}:queue").clone();
        let admit = redis::cmd("EVALSHA")
            .arg("abc")
            .arg(2)
            .arg("w:{e1}:queue")
            .arg("w:{e1}:processing")
            .arg("x")
            .clone();
        let other = redis::cmd("ZCARD").arg("w:{e2}:queue").clone();
        assert_eq!(slot_of(&q), slot_of(&admit));
        assert!(slot_of(&q).is_some());
        assert_ne!(slot_of(&q), slot_of(&other));
        assert_eq!(slot_of(&redis::cmd("PING")), None);
        assert_eq!(
            slot_of(&redis::cmd("SCRIPT").arg("LOAD").arg("x").clone()),
            None
        );
    }

    #[test]
    fn a_failed_part_reads_as_a_transient_error_reply() {
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused\r\nby node",
        ));
        let Some(Value::ServerError(e)) = part_failed(&io) else {
            panic!("not an error reply");
        };
        let e = RedisError::from(e);
        assert!(crate::redis::retry::is_transient(&e), "{e}");
        assert!(e.to_string().contains("refused  by node"), "{e}");
    }

    fn reply(resp: &str) -> Value {
        redis::parse_redis_value(resp.as_bytes()).expect("a RESP reply")
    }

    #[test]
    fn redirects_and_cluster_errors_are_sent_again_and_script_errors_are_not() {
        for line in [
            "-MOVED 3999 127.0.0.1:6381\r\n",
            "-ASK 3999 127.0.0.1:6381\r\n",
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            "-CLUSTERDOWN The cluster is down\r\n",
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-READONLY You can't write against a read only replica.\r\n",
        ] {
            assert!(redirect(&reply(line)).is_some(), "{line}");
        }
        for line in [
            "-NOSCRIPT No matching script\r\n",
            "-ERR capacity not a number\r\n",
            ":1\r\n",
        ] {
            assert!(redirect(&reply(line)).is_none(), "{line}");
        }
    }

    #[test]
    fn the_slot_map_names_each_ranges_master_and_skips_unknown_addresses() {
        // Two ranges on :7000, one on :7001, one whose master's address is unknown.
        let v = reply(concat!(
            "*4\r\n",
            "*3\r\n:0\r\n:99\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n",
            "*3\r\n:100\r\n:199\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$2\r\nid\r\n",
            "*3\r\n:200\r\n:299\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n",
            "*3\r\n:300\r\n:399\r\n*3\r\n$0\r\n\r\n:7002\r\n$2\r\nid\r\n",
        ));
        let map = SlotMap::parse(&v).expect("parses");
        let at = |n: u16| {
            Slot::new(n)
                .and_then(|s| map.master_of(s))
                .map(|m| map.masters[m].to_string())
        };
        assert_eq!(at(0).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(at(150).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(at(299).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(at(350), None, "no address: by slot");
        assert_eq!(at(400), None, "not served");
        assert_eq!(map.masters.len(), 2);
        assert!(SlotMap::parse(&reply(":1\r\n")).is_err());
    }
}
