//! A connection to the master of a Sentinel-managed Redis, that follows failovers.
//!
//! Sentinel names the master; this asks it at connect, again about every second in
//! the background, and at once when a command fails in a way a failover causes (the
//! connection dropped or refused, a timeout, `READONLY` from a demoted master). When
//! the master moved, a fresh self-reconnecting connection to the new one replaces
//! the old; the command that failed is retried by its caller as any transient
//! failure, and a script the new master lacks is sent again whole (NOSCRIPT path).
//! redis-rs's `sentinel` feature does the asking (`Sentinel::async_master_for`, which
//! also checks that the server it names says it is a master).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// How often the background task asks Sentinel where the master is.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The master of one Sentinel-managed Redis, followed across failovers. Clones share
/// one connection.
#[derive(Clone)]
pub struct SentinelConn {
    inner: Arc<Inner>,
}

struct Inner {
    sentinel: tokio::sync::Mutex<Sentinel>,
    master_name: String,
    node: SentinelNodeConnectionInfo,
    timeout: Duration,
    /// The master's address as Sentinel gave it, and the connection to it.
    current: RwLock<(String, ConnectionManager)>,
    /// A lookup is running (at most one at a time).
    resolving: AtomicBool,
}

impl SentinelConn {
    /// Ask `sentinels` for the master named `master_name` and connect to it
    /// (`password` for the master, which may differ from the sentinels').
    pub async fn connect(
        sentinels: &[String],
        master_name: &str,
        password: Option<&str>,
        tls: bool,
        timeout: Duration,
    ) -> RedisResult<Self> {
        let mut sentinel = Sentinel::build(sentinels.iter().map(String::as_str).collect())?;
        let mut redis_info = redis::RedisConnectionInfo::default();
        if let Some(p) = password {
            redis_info = redis_info.set_password(p);
        }
        let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis_info);
        if tls {
            node = node.set_tls_mode(redis::TlsMode::Secure);
        }
        let (addr, manager) = open_master(&mut sentinel, master_name, &node, timeout).await?;
        let inner = Arc::new(Inner {
            sentinel: tokio::sync::Mutex::new(sentinel),
            master_name: master_name.to_owned(),
            node,
            timeout,
            current: RwLock::new((addr, manager)),
            resolving: AtomicBool::new(false),
        });
        tokio::spawn(watch(Arc::downgrade(&inner)));
        Ok(SentinelConn { inner })
    }

    fn manager(&self) -> ConnectionManager {
        match self.inner.current.read() {
            Ok(c) => c.1.clone(),
            Err(p) => p.into_inner().1.clone(),
        }
    }

    /// A failure a failover causes: look the master up now (in the background).
    fn on_error(&self, e: &RedisError) {
        let failover_like = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                    | ErrorKind::Server(redis::ServerErrorKind::MasterDown)
            );
        if failover_like {
            let weak = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                if let Some(inner) = weak.upgrade() {
                    resolve(&inner).await;
                }
            });
        }
    }
}

/// Ask Sentinel for the master and open a connection to it.
async fn open_master(
    sentinel: &mut Sentinel,
    name: &str,
    node: &SentinelNodeConnectionInfo,
    timeout: Duration,
) -> RedisResult<(String, ConnectionManager)> {
    let client = sentinel.async_master_for(name, Some(node)).await?;
    let addr = client.get_connection_info().addr().to_string();
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    let manager = client.get_connection_manager_with_config(config).await?;
    Ok((addr, manager))
}

/// Look the master up; when it moved, connect to the new one and switch.
async fn resolve(inner: &Inner) {
    if inner.resolving.swap(true, Ordering::AcqRel) {
        return;
    }
    let known = match inner.current.read() {
        Ok(c) => c.0.clone(),
        Err(p) => p.into_inner().0.clone(),
    };
    let found = {
        let mut sentinel = inner.sentinel.lock().await;
        tokio::time::timeout(
            inner.timeout * 3,
            open_master(
                &mut sentinel,
                &inner.master_name,
                &inner.node,
                inner.timeout,
            ),
        )
        .await
    };
    match found {
        Ok(Ok((addr, manager))) if addr != known => {
            tracing::warn!(from = %known, to = %addr, master = %inner.master_name, "Redis master moved (Sentinel failover): switched to the new master");
            match inner.current.write() {
                Ok(mut c) => *c = (addr, manager),
                Err(p) => *p.into_inner() = (addr, manager),
            }
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            crate::log_limited!(WARN, "Sentinel did not name a reachable master yet", master = %inner.master_name, error = %crate::base::error_chain::chain(&e));
        }
        Err(_) => {
            crate::log_limited!(WARN, "asking Sentinel for the master timed out", master = %inner.master_name);
        }
    }
    inner.resolving.store(false, Ordering::Release);
}

/// Ask about every second, for as long as a connection handle lives: a failover
/// that no command noticed yet (an idle worker) is followed too.
async fn watch(weak: Weak<Inner>) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(inner) = weak.upgrade() else { return };
        resolve(&inner).await;
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut m = self.manager();
        let this = self.clone();
        Box::pin(async move {
            let r = m.req_packed_command(cmd).await;
            if let Err(e) = &r {
                this.on_error(e);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut m = self.manager();
        let this = self.clone();
        Box::pin(async move {
            let r = m.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &r {
                this.on_error(e);
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.manager().get_db()
    }
}
