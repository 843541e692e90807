//! A private redis-server for the demo, the bench and the tests, and a private
//! three-master Redis Cluster for the bench's cluster section and the cluster tests:
//! started on free loopback ports ([`free_port`]) in temporary directories, stopped
//! and cleaned up when dropped. They never touch any other Redis.
//!
//! What the tests need of a server is here too: an append-only file, a password,
//! TLS, a stop (SIGKILL), a restart after one, and a graceful restart (SIGTERM).
//!
//! # Never left behind
//!
//! Every process started here is stopped however the process that started it ends:
//!
//! - Portable: each server belongs to a value ([`PrivateRedis`], [`PrivateCluster`],
//!   [`PrivateSentinel`]) whose `Drop` kills and reaps it and removes its directory.
//!   That covers a normal end, an error (returned up through the owner), and a panic
//!   that unwinds. The demo and the bench also catch SIGINT and SIGTERM, stop, and
//!   return normally (src/cli), so their `Drop`s run then too.
//! - Linux, for what `Drop` cannot cover (SIGKILL of the parent, a panic with
//!   `panic = "abort"`, `std::process::exit`, an uncaught signal): each child is
//!   started with `prctl(PR_SET_PDEATHSIG, SIGKILL)`, so the kernel kills it when its
//!   parent dies. Linux counts the *thread* that forked as the parent, so children
//!   are forked by one thread that lives as long as the process (`spawn_owned`):
//!   forked from a short-lived thread (a test's helper thread, a `spawn_blocking`
//!   task), a server would be killed when that thread ends. Each child is
//!   also put in a process group of its own, so a Ctrl-C at the terminal (SIGINT to
//!   the whole foreground group) reaches the demo alone, which stops its servers
//!   itself after its summary, instead of the servers vanishing under it; with the
//!   death signal behind it, that never leaves one running.
//!
//! Elsewhere (macOS, ...) only the portable part applies: a SIGKILLed parent leaves
//! its servers running there.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::tools::ports::{NoFreePort, free_port};

/// Why a local server did not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// redis-server is not installed.
    #[error(
        "redis-server not found on PATH ({0}); install it (Debian: apt-get install redis-server)"
    )]
    Missing(std::io::Error),
    /// It started and does not answer.
    #[error("redis-server did not answer on port {0} within 10s")]
    NoAnswer(u16),
    /// It exited before it answered: its port was taken, or it refused an option.
    #[error(
        "redis-server on port {0} exited before it answered (port taken, or an option refused)"
    )]
    Exited(u16),
    /// `redis-cli --cluster create` failed.
    #[error("redis-cli --cluster create failed: {0}")]
    ClusterCreate(String),
    /// The cluster did not become ok.
    #[error("cluster node on port {0} did not report cluster_state:ok within 20s")]
    ClusterNotOk(u16),
    /// No port left for a server.
    #[error(transparent)]
    NoFreePort(#[from] NoFreePort),
    /// Any other I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How a [`PrivateRedis`] runs; the default is a plain server that keeps nothing.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Keep an append-only file fsynced on every write, so the data survives a
    /// stop and a restart.
    pub appendonly: bool,
    /// `requirepass`: clients must authenticate. [`PrivateRedis::url`] carries it, so
    /// it must be valid in a URL as it is (no `@`, `/`, `:` or `%`).
    pub password: Option<String>,
    /// Also speak TLS, on a port of its own ([`PrivateRedis::tls_port`]).
    pub tls: Option<ServerTls>,
    /// With [`tls`](Self::tls): speak TLS only, no plain-text port (`--port 0`), and
    /// replicate over TLS (`--tls-replication yes`). [`PrivateRedis::port`] is then
    /// the TLS port, and the kit's own checks connect over TLS trusting the CA,
    /// without a client certificate (so `auth_clients` must be false).
    pub tls_only: bool,
    /// Start as a replica of the server on this loopback port.
    pub replica_of: Option<u16>,
}

/// The PEM files of a redis-server that speaks TLS, and whether it checks client
/// certificates.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signs the server's certificate and the ones clients show.
    pub ca: PathBuf,
    /// `tls-auth-clients yes`: clients must show a certificate signed by `ca`;
    /// false: `no`, any client that trusts `ca` may connect (as a worker following
    /// Sentinel, which has no client certificate to show).
    pub auth_clients: bool,
}

impl ServerTls {
    /// The files in `dir` (`server.pem`, `server.key`, `ca.pem`), clients checked.
    pub fn in_dir(dir: &std::path::Path) -> Self {
        ServerTls {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            ca: dir.join("ca.pem"),
            auth_clients: true,
        }
    }

    fn args(&self, cmd: &mut Command) {
        cmd.arg("--tls-cert-file")
            .arg(&self.cert)
            .arg("--tls-key-file")
            .arg(&self.key)
            .arg("--tls-ca-cert-file")
            .arg(&self.ca)
            .args([
                "--tls-auth-clients",
                if self.auth_clients { "yes" } else { "no" },
            ]);
    }
}

/// How the kit's own checks reach a server: plain text, or TLS trusting a CA
/// (PEM), without a client certificate.
#[derive(Debug, Clone)]
enum Reach {
    Plain,
    Tls(Vec<u8>),
}

impl Reach {
    /// For a server with `tls` that has no plain-text port: TLS with its CA.
    fn of(tls: Option<&ServerTls>, tls_only: bool) -> Result<Reach, ServerError> {
        match tls {
            Some(t) if tls_only => {
                if t.auth_clients {
                    return Err(ServerError::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "a TLS-only server must not demand client certificates: the \
                         kit's own checks have none",
                    )));
                }
                Ok(Reach::Tls(std::fs::read(&t.ca)?))
            }
            _ => Ok(Reach::Plain),
        }
    }

    /// `redis://` or `rediss://`.
    fn scheme(&self) -> &'static str {
        match self {
            Reach::Plain => "redis",
            Reach::Tls(_) => "rediss",
        }
    }

    /// A client for the server at `url` (of [`scheme`](Self::scheme)).
    fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        match self {
            Reach::Plain => redis::Client::open(url),
            Reach::Tls(ca) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
        }
    }

    /// A client for the server on loopback `port`, without a password.
    fn client_on(&self, port: u16) -> redis::RedisResult<redis::Client> {
        self.client(&format!("{}://127.0.0.1:{port}", self.scheme()))
    }
}

/// A redis-server of this process's own, on a free loopback port, in a temp
/// directory; stopped and removed when dropped. It keeps its port and directory
/// across [`stop`](Self::stop) and the restarts.
pub struct PrivateRedis {
    /// Its port: plain text, or TLS with [`RedisOptions::tls_only`].
    pub port: u16,
    /// Its TLS port, when started with [`RedisOptions::tls`] (with
    /// [`RedisOptions::tls_only`], the same as `port`).
    pub tls_port: Option<u16>,
    options: RedisOptions,
    reach: Reach,
    child: Option<Child>,
    dir: PathBuf,
}

impl PrivateRedis {
    /// Start a plain one and wait until it answers PING.
    pub fn start() -> Result<Self, ServerError> {
        Self::start_with(RedisOptions::default())
    }

    /// Start one with `options` and wait until it answers PING. A server that exits
    /// at once (a port taken in between by another process) is tried again on new
    /// ports, three times in all.
    pub fn start_with(options: RedisOptions) -> Result<Self, ServerError> {
        let reach = Reach::of(options.tls.as_ref(), options.tls_only)?;
        let mut tries = 0;
        loop {
            tries += 1;
            let port = free_port()?;
            let tls_port = match options.tls {
                Some(_) if options.tls_only => Some(port),
                Some(_) => Some(free_port()?),
                None => None,
            };
            let dir =
                std::env::temp_dir().join(format!("waitroom-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            // Dropped on failure: the process is killed and the dir removed.
            let mut server = PrivateRedis {
                port,
                tls_port,
                options: options.clone(),
                reach: reach.clone(),
                child: None,
                dir,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(ServerError::Exited(_)) if tries < 3 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), ServerError> {
        let mut cmd = Command::new("redis-server");
        let plain_port = match (&self.options.tls, self.options.tls_only) {
            (Some(_), true) => 0,
            _ => self.port,
        };
        cmd.args(["--port", &plain_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        if self.options.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(p) = &self.options.password {
            cmd.args(["--requirepass", p]);
        }
        if let Some(port) = self.options.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &port.to_string()]);
        }
        if let (Some(tls), Some(port)) = (&self.options.tls, self.tls_port) {
            cmd.args(["--tls-port", &port.to_string()]);
            tls.args(&mut cmd);
            if self.options.tls_only {
                cmd.args(["--tls-replication", "yes"]);
            }
        }
        cmd.arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_owned(cmd).map_err(ServerError::Missing)?;
        let client = self.client();
        // Kept even when it does not answer, so that drop stops it.
        let child = self.child.insert(child);
        match wait_until_up(child, client, Duration::from_secs(10)) {
            Up::Answered => Ok(()),
            Up::Exited => Err(ServerError::Exited(self.port)),
            Up::Silent => Err(ServerError::NoAnswer(self.port)),
        }
    }

    /// Its URL (plain text; `rediss://` with [`RedisOptions::tls_only`]), with the
    /// password when it has one.
    pub fn url(&self) -> String {
        let scheme = self.reach.scheme();
        match &self.options.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// A client for it at [`url`](Self::url): with [`RedisOptions::tls_only`], over
    /// TLS trusting its CA.
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        self.reach.client(&self.url())
    }

    /// The process id of the running server, if it runs (not after [`stop`](Self::stop)).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its `rediss://` URL, when it speaks TLS.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://127.0.0.1:{p}"))
    }

    /// Stop it at once with SIGKILL, as a crash would (with
    /// [`RedisOptions::appendonly`] every write it acknowledged is on disk). Its port
    /// and directory stay its own for a restart.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freeze it (SIGSTOP): it answers nothing and, as a replica, acknowledges no
    /// replication, until [`resume`](Self::resume). A stalled or lagging server.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Let a [`pause`](Self::pause)d server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Stop it (SIGKILL) if it runs, then start it again on the same port and
    /// directory, and wait until it answers.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.stop();
        self.spawn()
    }

    /// Stop it with SIGTERM (Redis flushes its append-only file and exits cleanly)
    /// and wait until it has exited, then start it again on the same port and
    /// directory, and wait until it answers.
    pub fn restart_graceful(&mut self) -> Result<(), ServerError> {
        if let Some(mut c) = self.child.take() {
            let term = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !matches!(term, Ok(s) if s.success()) {
                let _ = c.kill();
            }
            c.wait()?;
            term?;
        }
        self.spawn()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A master, one replica and three sentinels watching them (as `mymaster`,
/// quorum 2, a master down after 1 s), all on loopback ports of their own, for
/// failover tests: kill the master and Sentinel promotes the replica. Everything
/// stops when dropped.
///
/// Started with [`start_tls`](Self::start_tls), every one of them speaks TLS only
/// (no plain-text port): clients, replication, the sentinels' links to the servers
/// and to each other, and the addresses Sentinel gives out are TLS ports.
pub struct PrivateSentinel {
    /// The master at start.
    pub master: PrivateRedis,
    /// Its replica (the master after a failover).
    pub replica: PrivateRedis,
    sentinels: Vec<(u16, Child)>,
    reach: Reach,
    dir: PathBuf,
}

/// The master's name the sentinels of [`PrivateSentinel`] use.
pub const SENTINEL_MASTER: &str = "mymaster";

impl PrivateSentinel {
    /// Start the master, the replica (and wait until it is in sync), and three
    /// sentinels (and wait until they see the replica).
    pub fn start() -> Result<Self, ServerError> {
        Self::start_with(None)
    }

    /// [`start`](Self::start), everything over TLS only with the files of `tls`,
    /// which must not demand client certificates (`auth_clients: false`).
    pub fn start_tls(tls: ServerTls) -> Result<Self, ServerError> {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<ServerTls>) -> Result<Self, ServerError> {
        let tls_only = tls.is_some();
        let reach = Reach::of(tls.as_ref(), tls_only)?;
        let master = PrivateRedis::start_with(RedisOptions {
            tls: tls.clone(),
            tls_only,
            ..RedisOptions::default()
        })?;
        let replica = PrivateRedis::start_with(RedisOptions {
            tls: tls.clone(),
            tls_only,
            replica_of: Some(master.port),
            ..RedisOptions::default()
        })?;
        if !wait_for_with(
            &reach,
            replica.port,
            &["INFO", "replication"],
            Duration::from_secs(20),
            |r| r.contains("master_link_status:up"),
        ) {
            return Err(ServerError::NoAnswer(replica.port));
        }
        let dir = std::env::temp_dir().join(format!(
            "waitroom-sentinel-{}-{}",
            std::process::id(),
            master.port
        ));
        std::fs::create_dir_all(&dir)?;
        let mut bed = PrivateSentinel {
            master,
            replica,
            sentinels: Vec::new(),
            reach,
            dir,
        };
        for i in 0..3 {
            let port = free_port()?;
            let conf = bed.dir.join(format!("sentinel-{i}.conf"));
            // Over TLS: no plain-text port; `tls-replication yes` makes a sentinel
            // reach the servers and the other sentinels over TLS, and announce its
            // TLS port to them.
            let listen = match &tls {
                None => format!("port {port}\n"),
                Some(_) => format!("port 0\ntls-port {port}\ntls-replication yes\n"),
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}bind 127.0.0.1\ndir {}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 3000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    bed.dir.display(),
                    bed.master.port
                ),
            )?;
            let mut cmd = Command::new("redis-server");
            cmd.arg(&conf).arg("--sentinel");
            if let Some(t) = &tls {
                t.args(&mut cmd);
            }
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            let mut child = spawn_owned(cmd).map_err(ServerError::Missing)?;
            let up = wait_until_up(
                &mut child,
                bed.reach.client_on(port),
                Duration::from_secs(10),
            );
            bed.sentinels.push((port, child));
            match up {
                Up::Answered => {}
                Up::Exited => return Err(ServerError::Exited(port)),
                Up::Silent => return Err(ServerError::NoAnswer(port)),
            }
        }
        // Each sentinel must know the replica (from the master's INFO) and the others.
        for (port, _) in &bed.sentinels {
            let ok = wait_for_with(
                &bed.reach,
                *port,
                &["SENTINEL", "CKQUORUM", SENTINEL_MASTER],
                Duration::from_secs(20),
                |r| r.starts_with("OK"),
            ) && wait_until_replica_known(&bed.reach, *port, Duration::from_secs(20));
            if !ok {
                return Err(ServerError::NoAnswer(*port));
            }
        }
        Ok(bed)
    }

    /// The sentinels' URLs, comma-separated (`--redis-sentinel`): `rediss://` when
    /// started with [`start_tls`](Self::start_tls).
    pub fn sentinel_urls(&self) -> String {
        let scheme = self.reach.scheme();
        self.sentinels
            .iter()
            .map(|(p, _)| format!("{scheme}://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client for sentinel `i` (over TLS trusting the bed's CA when started with
    /// [`start_tls`](Self::start_tls)).
    pub fn sentinel_client(&self, i: usize) -> redis::RedisResult<redis::Client> {
        let port = self.sentinels.get(i).map_or(0, |(p, _)| *p);
        self.reach.client_on(port)
    }

    /// The port of the master the first sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let client = self.sentinel_client(0).ok()?;
        let mut c = client.get_connection().ok()?;
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(SENTINEL_MASTER)
            .query(&mut c)
            .ok()?;
        addr.get(1)?.parse().ok()
    }

    /// Kill the master (SIGKILL) and wait until the sentinels promoted the replica
    /// and it took the role; how long that took.
    pub fn fail_over(&mut self) -> Result<Duration, ServerError> {
        let started = Instant::now();
        self.master.stop();
        let replica = self.replica.port;
        let deadline = started + Duration::from_secs(30);
        while self.master_port() != Some(replica) {
            if Instant::now() > deadline {
                return Err(ServerError::NoAnswer(replica));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !wait_for_with(
            &self.reach,
            replica,
            &["INFO", "replication"],
            Duration::from_secs(20),
            |r| r.contains("role:master"),
        ) {
            return Err(ServerError::NoAnswer(replica));
        }
        Ok(started.elapsed())
    }
}

/// Whether the sentinel on `port` lists a replica of the master.
fn wait_until_replica_known(reach: &Reach, port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let Ok(client) = reach.client_on(port) else {
        return false;
    };
    loop {
        let n = client.get_connection().ok().and_then(|mut c| {
            redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg(SENTINEL_MASTER)
                .query::<Vec<redis::Value>>(&mut c)
                .ok()
                .map(|v| v.len())
        });
        if n.is_some_and(|n| n > 0) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for PrivateSentinel {
    fn drop(&mut self) {
        for (_, c) in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Start `cmd` as a child that cannot outlive this process (see the module's
/// documentation, "Never left behind"). On Linux: in a process group of its own,
/// with SIGKILL as its parent-death signal, forked by one thread that lives as
/// long as the process; elsewhere a plain spawn.
pub(crate) fn spawn_owned(cmd: Command) -> std::io::Result<Child> {
    #[cfg(target_os = "linux")]
    {
        linux::spawn(cmd)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut cmd = cmd;
        cmd.spawn()
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};
    use std::sync::{OnceLock, mpsc};

    type Job = (Command, mpsc::Sender<io::Result<Child>>);

    /// The thread every child is forked from: started on first use, never ended
    /// (it waits on a channel whose sender is in a static), so the kernel's
    /// "parent" of each child is gone only when the whole process is.
    fn spawner() -> Option<&'static mpsc::Sender<Job>> {
        static SPAWNER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
        SPAWNER
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel::<Job>();
                std::thread::Builder::new()
                    .name("child-spawner".into())
                    .spawn(move || {
                        for (mut cmd, reply) in rx {
                            let _ = reply.send(cmd.spawn());
                        }
                    })
                    .ok()?;
                Some(tx)
            })
            .as_ref()
    }

    pub(super) fn spawn(mut cmd: Command) -> io::Result<Child> {
        let parent = std::process::id();
        cmd.process_group(0);
        // SAFETY: the hook runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: prctl and getppid are plain system
        // calls, and the errors are made without allocating.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) == -1
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent died between fork and prctl: the signal will never
                // come, so do not become a server nobody owns.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let gone = || io::Error::other("the thread that starts child processes is gone");
        let spawner = spawner().ok_or_else(gone)?;
        let (tx, rx) = mpsc::channel();
        spawner.send((cmd, tx)).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }
}

/// What a starting redis-server did.
#[derive(Debug, PartialEq, Eq)]
enum Up {
    /// It answered PING.
    Answered,
    /// Its process exited first.
    Exited,
    /// It did not answer in time.
    Silent,
}

/// Wait until the redis-server `child` answers PING through `client`; stop waiting
/// as soon as the process has exited, or when `within` has passed.
fn wait_until_up(
    child: &mut Child,
    client: redis::RedisResult<redis::Client>,
    within: Duration,
) -> Up {
    let deadline = Instant::now() + within;
    let Ok(client) = client else {
        return Up::Silent;
    };
    loop {
        if let Ok(mut c) = client.get_connection()
            && redis::cmd("PING").query::<String>(&mut c).is_ok()
        {
            return Up::Answered;
        }
        if !matches!(child.try_wait(), Ok(None)) {
            return Up::Exited;
        }
        if Instant::now() > deadline {
            return Up::Silent;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll one server with `args` until `ok` holds for its reply, at most `within`.
fn wait_for(port: u16, args: &[&str], within: Duration, ok: impl Fn(&str) -> bool) -> bool {
    wait_for_with(&Reach::Plain, port, args, within, ok)
}

/// [`wait_for`], reaching the server as `reach` says.
fn wait_for_with(
    reach: &Reach,
    port: u16,
    args: &[&str],
    within: Duration,
    ok: impl Fn(&str) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    let Ok(client) = reach.client_on(port) else {
        return false;
    };
    loop {
        let reply = client.get_connection().ok().and_then(|mut c| {
            let mut q = redis::cmd(args[0]);
            for a in &args[1..] {
                q.arg(*a);
            }
            q.query::<String>(&mut c).ok()
        });
        if reply.as_deref().is_some_and(&ok) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three masters, no replicas, joined with `redis-cli --cluster create`. Masters keep
/// serving their slots while another is down (`cluster-require-full-coverage no`);
/// with `durable`, each keeps an AOF fsynced on every write, so a master killed and
/// started again comes back with its data and its slots.
pub struct PrivateCluster {
    /// The masters' ports.
    pub ports: Vec<u16>,
    /// Each master's cluster bus port (`--cluster-port`).
    bus_ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: PathBuf,
    durable: bool,
}

impl PrivateCluster {
    /// Start the three masters, create the cluster, wait until it is ok.
    pub fn start(durable: bool) -> Result<Self, ServerError> {
        let ports = (0..3)
            .map(|_| free_port())
            .collect::<Result<Vec<u16>, _>>()?;
        let bus_ports = (0..3)
            .map(|_| free_port())
            .collect::<Result<Vec<u16>, _>>()?;
        let dir = std::env::temp_dir().join(format!(
            "waitroom-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        let mut cluster = PrivateCluster {
            children: ports.iter().map(|_| None).collect(),
            ports,
            bus_ports,
            dir,
            durable,
        };
        for i in 0..cluster.ports.len() {
            cluster.spawn(i)?;
        }
        let mut create = Command::new("redis-cli");
        create
            .arg("--cluster")
            .arg("create")
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = spawn_owned(create)?.wait_with_output()?;
        if !out.status.success() {
            return Err(ServerError::ClusterCreate(
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ));
        }
        for &p in &cluster.ports {
            cluster.wait_ok(p)?;
        }
        Ok(cluster)
    }

    fn wait_ok(&self, port: u16) -> Result<(), ServerError> {
        // Every node known and every slot assigned, not just "ok" (which a node says
        // as soon as the slots it knows of are covered).
        let n = self.ports.len();
        if wait_for(port, &["CLUSTER", "INFO"], Duration::from_secs(20), |r| {
            r.contains("cluster_state:ok")
                && r.contains(&format!("cluster_known_nodes:{n}\r"))
                && r.contains("cluster_slots_assigned:16384\r")
        }) {
            Ok(())
        } else {
            Err(ServerError::ClusterNotOk(port))
        }
    }

    fn spawn(&mut self, i: usize) -> Result<(), ServerError> {
        let port = self.ports[i];
        let node_dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir)?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-port", &self.bus_ports[i].to_string()])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "5000"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", ""])
            .args(["--appendonly", if self.durable { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&node_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = spawn_owned(cmd).map_err(ServerError::Missing)?;
        // A node that exits (a port taken after all) fails at once, not after 10 s.
        let answered = wait_until_up(
            &mut child,
            redis::Client::open(self.url(i)),
            Duration::from_secs(10),
        ) == Up::Answered;
        // Kept even when it did not answer, so that drop stops it.
        self.children[i] = Some(child);
        if answered {
            Ok(())
        } else {
            Err(ServerError::NoAnswer(port))
        }
    }

    /// Master `i`'s URL.
    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.ports[i])
    }

    /// Every master's URL, comma-separated, as `--redis-cluster` takes them.
    pub fn urls(&self) -> String {
        (0..self.ports.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL master `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start master `i` again on its port and dir; it rejoins with its slots.
    pub fn restart(&mut self, i: usize) -> Result<(), ServerError> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_ok(self.ports[i])
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
