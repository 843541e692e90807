//! Loopback ports for the local servers the tools and the tests start.
//!
//! Ports come from 20000..32000, below Linux's ephemeral range (32768 and up, where
//! the kernel picks a port for `bind(0)` and for outgoing connections). The embedded
//! Kafka's broker listens on a port the kernel picked, so it is in that range: a
//! broker taken down keeps its port bound but not listening, and a redis-server
//! started meanwhile on a port from the ephemeral range could bind it too
//! (`SO_REUSEADDR`), after which the broker cannot listen again and librdkafka aborts
//! the process. A port from here never is one the kernel handed out, so that cannot
//! happen, and no outgoing connection takes it between this check and the server's
//! bind.

use std::net::TcpListener;
use std::sync::Mutex;

use thiserror::Error;

/// The first port handed out, and how many there are.
const FIRST: u16 = 20000;
const COUNT: usize = 12000;

/// Every port in the range is taken or was handed out already.
#[derive(Debug, Error)]
#[error("no free loopback port between {FIRST} and {}", FIRST as usize + COUNT - 1)]
pub struct NoFreePort;

/// A loopback port that nothing listens on now, below the ephemeral range, never
/// handed out twice by this process (a server stopped and started again keeps its
/// port, and nothing else of this process gets it in between).
pub fn free_port() -> Result<u16, NoFreePort> {
    static USED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut used = USED.lock().unwrap_or_else(|p| p.into_inner());
    // Start somewhere that depends on the process, so parallel test binaries spread;
    // 37 and 12000 are coprime, so the walk visits every port once.
    let start = (std::process::id() as usize * 7919) % COUNT;
    for k in 0..COUNT {
        let p = FIRST + ((start + k * 37) % COUNT) as u16;
        if !used.contains(&p) && TcpListener::bind(("127.0.0.1", p)).is_ok() {
            used.push(p);
            return Ok(p);
        }
    }
    Err(NoFreePort)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().expect("a free port")).collect();
        assert!(
            ports.iter().all(|p| (20000..32000).contains(p)),
            "{ports:?}"
        );
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
    }
}
