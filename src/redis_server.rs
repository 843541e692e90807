//! A private redis-server for the demo and the bench: started on a free loopback
//! port in a temporary directory, stopped and cleaned up when dropped. It never
//! touches any other Redis.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(
        "redis-server not found on PATH ({0}); install it (Debian: apt-get install redis-server)"
    )]
    Missing(std::io::Error),
    #[error("redis-server did not answer on port {0} within 10s")]
    NoAnswer(u16),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub struct PrivateRedis {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl PrivateRedis {
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
        let server = PrivateRedis { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(server.url())
                && let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(ServerError::NoAnswer(port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

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
