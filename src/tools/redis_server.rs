//! A private redis-server for the demo and the bench, and a private three-master
//! Redis Cluster for the bench's cluster section and the cluster tests: started on
//! free loopback ports in temporary directories, stopped and cleaned up when
//! dropped. They never touch any other Redis.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

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
    /// `redis-cli --cluster create` failed.
    #[error("redis-cli --cluster create failed: {0}")]
    ClusterCreate(String),
    /// The cluster did not become ok.
    #[error("cluster node on port {0} did not report cluster_state:ok within 20s")]
    ClusterNotOk(u16),
    /// No free port pair for a node and its bus.
    #[error("no free loopback port between 20000 and 32000")]
    NoPortPair,
    /// Any other I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A redis-server of this process's own, on a free loopback port, in a temp
/// directory; stopped and removed when dropped.
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl PrivateRedis {
    /// Start it and wait until it answers PING.
    pub fn start() -> Result<Self, ServerError> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir =
            std::env::temp_dir().join(format!("waitroom-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(ServerError::Missing)?;
        // Dropped on failure: the process is killed and the dir removed.
        let mut server = PrivateRedis { port, child, dir };
        let url = server.url();
        if answers_ping(&mut server.child, &url, Duration::from_secs(10)) {
            Ok(server)
        } else {
            Err(ServerError::NoAnswer(port))
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port below 32768 (out of Linux's ephemeral range, so no outgoing
/// connection takes it between this check and the server's bind), never handed out
/// twice by this process.
fn reserve_port() -> Result<u16, ServerError> {
    static USED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut used = USED.lock().unwrap_or_else(|p| p.into_inner());
    // Start somewhere that depends on the process, so parallel test binaries spread.
    let start = (std::process::id() as usize * 7919) % 12000;
    for k in 0..12000 {
        let p = 20000 + ((start + k * 37) % 12000) as u16;
        if !used.contains(&p) && TcpListener::bind(("127.0.0.1", p)).is_ok() {
            used.push(p);
            return Ok(p);
        }
    }
    Err(ServerError::NoPortPair)
}

/// Wait until the redis-server `child` answers PING at `url`: true when it does,
/// false as soon as the process has exited, or when `within` has passed.
pub fn answers_ping(child: &mut Child, url: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    loop {
        if let Ok(mut c) = client.get_connection()
            && redis::cmd("PING").query::<String>(&mut c).is_ok()
        {
            return true;
        }
        if !matches!(child.try_wait(), Ok(None)) || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll one server with `args` until `ok` holds for its reply, at most `within`.
fn wait_for(port: u16, args: &[&str], within: Duration, ok: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + within;
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
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
            .map(|_| reserve_port())
            .collect::<Result<Vec<u16>, _>>()?;
        let bus_ports = (0..3)
            .map(|_| reserve_port())
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
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()?;
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
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
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
            .stderr(Stdio::null())
            .spawn()
            .map_err(ServerError::Missing)?;
        // A node that exits (a port taken after all) fails at once, not after 10 s.
        let answered = answers_ping(&mut child, &self.url(i), Duration::from_secs(10));
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
