//! The Redis connection: one multiplexed, self-reconnecting connection per process,
//! to a single server, to the master Sentinel names (followed across failovers, see
//! `redis::sentinel`), or to a Redis Cluster.
//!
//! Commands time out (a hung server must not hang a cycle), and a dropped connection
//! is re-established in the background; the command that saw the drop fails, is
//! counted, and is retried by the caller.
//!
//! Against a cluster, every module keeps building one pipeline per round trip as it
//! does against one server: [`RedisConn`] splits a pipeline by master and sends the
//! parts concurrently, because a cluster node only runs commands of slots it owns
//! (`redis::cluster`). With the cluster key layout, everything one event needs lives
//! in one slot, so a pass over many events costs one pipeline per master, all in
//! flight at once.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

pub use crate::redis::cluster::{ClusterConn, PipelineCounts};
use crate::redis::sentinel::SentinelConn;

/// Where Redis is: one server, or the seed nodes of a cluster.
#[derive(Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `redis://`, `rediss://` or `unix://` URL of one server, and for `rediss://`
    /// the certificates to use instead of the system's.
    Single {
        /// The server's URL.
        url: String,
        /// Certificates instead of the system's.
        tls: TlsFiles,
    },
    /// URLs of some nodes of a Redis Cluster; the rest are discovered. With
    /// `rediss://` the system's trust store verifies the nodes (OpenSSL reads
    /// `SSL_CERT_FILE`).
    Cluster(Vec<String>),
    /// The master Sentinel names: the sentinels' URLs (with their own password, if
    /// any), the master's name, and the master's password.
    Sentinel {
        /// `redis://[:password@]host:port` of each sentinel.
        sentinels: Vec<String>,
        /// The monitored master's name (`sentinel monitor <name> ...`).
        master: String,
        /// The master's (and replicas') password, when it needs one.
        password: Option<String>,
        /// `rediss://` sentinels: the master is reached over TLS too (verified with
        /// the system's trust store, as for a cluster).
        tls: bool,
    },
}

/// PEM files for a TLS connection to one server, read when the settings are
/// checked so a missing file fails at start-up, not at the first reconnect.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates that sign the server's certificate; None: the system's.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and its PKCS#8 key, for a server with `tls-auth-clients`.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca.is_none() && self.client.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca.clone(),
        })
    }
}

/// Shows the URLs with any password replaced, so an endpoint can be logged.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Single { url, tls } => {
                f.write_str(&redact_url(url))?;
                match (&tls.ca, &tls.client) {
                    (None, None) => Ok(()),
                    (ca, client) => write!(
                        f,
                        " (tls:{}{})",
                        if ca.is_some() { " own CA" } else { "" },
                        if client.is_some() { " client cert" } else { "" }
                    ),
                }
            }
            Endpoint::Cluster(urls) => {
                let shown: Vec<String> = urls.iter().map(|u| redact_url(u)).collect();
                write!(f, "cluster {}", shown.join(","))
            }
            Endpoint::Sentinel {
                sentinels, master, ..
            } => {
                let shown: Vec<String> = sentinels.iter().map(|u| redact_url(u)).collect();
                write!(f, "sentinel {} master {master}", shown.join(","))
            }
        }
    }
}

/// Never prints a password: the same as [`fmt::Display`].
impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The connection every module uses.
#[derive(Clone)]
pub enum RedisConn {
    /// One server, reconnecting in the background.
    Single(ConnectionManager),
    /// A Redis Cluster; pipelines go one per master.
    Cluster(ClusterConn),
    /// The master Sentinel names, followed across failovers.
    Sentinel(SentinelConn),
}

impl RedisConn {
    /// How a cluster connection (with its clones) sent its pipelines so far: one per
    /// master, by slot, redirected. None for one server.
    pub fn pipeline_counts(&self) -> Option<PipelineCounts> {
        match self {
            RedisConn::Cluster(c) => Some(c.pipeline_counts()),
            RedisConn::Single(_) | RedisConn::Sentinel(_) => None,
        }
    }
}

impl fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedisConn::Single(_) => "RedisConn::Single",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
            RedisConn::Sentinel(_) => "RedisConn::Sentinel",
        })
    }
}

/// Connect to `endpoint`, with `timeout` on connecting and on every command.
pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<RedisConn, RedisError> {
    match endpoint {
        Endpoint::Single { url, tls } => {
            let client = match tls.certificates() {
                Some(certs) => redis::Client::build_with_tls(url.as_str(), certs)?,
                None => redis::Client::open(url.as_str())?,
            };
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2));
            Ok(RedisConn::Single(
                client.get_connection_manager_with_config(config).await?,
            ))
        }
        Endpoint::Cluster(urls) => {
            // Retries (redirects included) wait a random 10-20 ms, then 10-40 ms.
            // redis-rs waits at least 1.28 s by default, and a pass waits for its
            // slowest part: a master that is down would slow every other master's
            // events as much.
            let client = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .build()?;
            let seed = urls.first().map(String::as_str).unwrap_or_default();
            Ok(RedisConn::Cluster(ClusterConn::new(
                client.get_async_connection().await?,
                seed,
                timeout,
            )?))
        }
        Endpoint::Sentinel {
            sentinels,
            master,
            password,
            tls,
        } => Ok(RedisConn::Sentinel(
            SentinelConn::connect(sentinels, master, password.as_deref(), *tls, timeout).await?,
        )),
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
        }
    }
}

/// Wait until `replicas` replicas hold every write this connection made so far
/// (Redis `WAIT`), at most `timeout`; how many did. Replication is one ordered
/// stream, so those writes include everything the master took before them. On a
/// multiplexed connection WAIT holds the commands queued behind it, so `timeout`
/// should stay short.
pub async fn wait_replicas(
    conn: &mut RedisConn,
    replicas: u64,
    timeout: Duration,
) -> RedisResult<u64> {
    redis::cmd("WAIT")
        .arg(replicas)
        .arg(
            u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        )
        .query_async(conn)
        .await
}

/// The `run_id` in the text of an `INFO server` reply: it changes when another
/// server becomes the master (a failover) or the server restarted.
pub(crate) fn run_id_of(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
}

/// `redis://user:secret@host/` → `redis://user:***@host/`, and
/// `unix:///run/redis.sock?pass=secret` → `unix:///run/redis.sock?pass=***`, for logs.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = redact_userinfo(base);
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _))
                    if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                {
                    format!("{k}=***")
                }
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map(|(u, _)| u).unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_never_shows_a_password() {
        let e = Endpoint::Cluster(vec![
            "redis://:hunter2@a:7000".into(),
            "redis://u:pw@b:7001".into(),
        ]);
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("pw@"),
            "{shown}"
        );
        assert!(shown.contains("a:7000") && shown.contains("b:7001"));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://:hunter2@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://u:p@h"), "rediss://u:***@h");
        assert_eq!(
            redact_url("unix:///run/redis.sock?db=1&pass=hunter2"),
            "unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            redact_url("redis://:a@h/0?password=b"),
            "redis://:***@h/0?password=***"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
