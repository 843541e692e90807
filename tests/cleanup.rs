//! Local servers are always cleaned up (issue 15, part 4): every redis-server the
//! tools start is stopped however the process that started it ends.
//!
//! - SIGTERM and SIGINT: the demo stops promptly, prints its summary so far, and
//!   returns, so its servers are stopped by their `Drop` (their temp directory is
//!   removed: the proof that `Drop`, not the kernel, stopped them). SIGINT works even
//!   when the launcher started the demo with SIGINT ignored (`demo &` in a script).
//! - SIGKILL: nothing in the demo runs; the kernel kills its redis-server (its
//!   parent-death signal, Linux only).
//! - A panic: the server's owner is dropped while unwinding.
//!
//! And the death signal must not fire early: a server started from a thread that
//! ends is still up (the kernel's "parent" is a thread, so the servers are forked
//! from one that lives as long as the process).
//!
//! Linux only: the parent-death signal and /proc are Linux's.

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use waitroom_worker::redis_server::PrivateRedis;

const BIN: &str = env!("CARGO_BIN_EXE_waitroom-worker");

/// Long enough for the demo to be anywhere (a debug build, a loaded machine).
const START_WITHIN: Duration = Duration::from_secs(60);

/// How promptly the demo must end once asked.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Poll `f` every 20 ms until it gives a value, at most `within`.
fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/proc/<pid>/stat`: (command name, state, parent pid).
fn stat(pid: u32) -> Option<(String, char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let mut rest = s.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

/// Whether `pid` is a process that still runs (a zombie has ended: it only waits
/// for its parent, or init, to collect its exit status).
fn running(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, state, _)| state != 'Z' && state != 'X')
}

/// The redis-server children of `parent`.
fn redis_children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat(pid).is_some_and(|(comm, _, ppid)| ppid == parent && comm == "redis-server")
        })
        .collect()
}

fn kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill {signal} {pid}");
}

/// A running demo, its stderr collected as it comes.
struct Demo {
    child: Child,
    pid: u32,
    stderr: Arc<Mutex<String>>,
}

impl Demo {
    /// `demo --users 100000` (minutes of work), started through `sh` so that
    /// `prelude` (e.g. `trap '' INT`) applies to it: `sh` execs the demo, whose
    /// pid is the child's.
    fn start(prelude: &str) -> Demo {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{prelude} exec \"$0\" demo --users 100000"))
            .arg(BIN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the demo");
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr");
        let into = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = into.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        Demo { child, pid, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Its redis-server's pid, once it has one (and the demo is the `sh`'s exec).
    fn redis(&mut self, within: Duration) -> u32 {
        let found = poll(within, || match redis_children(self.pid).first() {
            Some(&pid) => Some(Some(pid)),
            None if !matches!(self.child.try_wait(), Ok(None)) => Some(None), // ended
            None => None,
        });
        found.flatten().unwrap_or_else(|| {
            panic!(
                "no redis-server child of the demo; stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// Wait until the sale is open: the first progress line.
    fn wait_for_the_sale(&mut self) {
        let open = poll(START_WITHIN, || {
            if self.stderr().lines().any(|l| l.contains(" admitted ")) {
                Some(true)
            } else if !matches!(self.child.try_wait(), Ok(None)) {
                Some(false) // it ended on its own
            } else {
                None
            }
        });
        assert_eq!(
            open,
            Some(true),
            "the sale never opened; stderr:\n{}",
            self.stderr()
        );
    }

    /// Wait for the demo to exit, at most `within`; its status.
    fn exit_within(&mut self, within: Duration) -> ExitStatus {
        let status = poll(within, || self.child.try_wait().ok().flatten());
        match status {
            Some(s) => s,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the demo did not exit within {within:?}; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// Its redis-server's directory (`<tmp>/waitroom-redis-<demo pid>-<port>`), from
    /// the URL it printed.
    fn redis_dir(&self) -> PathBuf {
        let err = self.stderr();
        let port = err
            .split("redis-server on redis://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no redis URL printed; stderr:\n{err}"));
        std::env::temp_dir().join(format!("waitroom-redis-{}-{port}", self.pid))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A test that failed half-way leaves nothing running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Signal a demo whose sale is open, and check that it ended promptly with its
/// summary so far and its redis-server stopped by `Drop`.
fn stops_with_summary(prelude: &str, signal: &str, name: &str, code: i32) {
    let mut demo = Demo::start(prelude);
    let redis = demo.redis(START_WITHIN);
    demo.wait_for_the_sale();
    let dir = demo.redis_dir();
    assert!(dir.is_dir(), "{} exists while the demo runs", dir.display());
    let sent = Instant::now();
    kill(demo.pid, signal);
    let status = demo.exit_within(STOP_WITHIN);
    let took = sent.elapsed();
    let err = demo.stderr();
    assert_eq!(
        status.code(),
        Some(code),
        "exit status {status:?}; stderr:\n{err}"
    );
    assert!(
        err.contains(&format!("demo: {name}: stopped")),
        "says what stopped it; stderr:\n{err}"
    );
    assert!(
        err.contains("of 100000 users admitted in") && err.contains("capacity never exceeded"),
        "prints its summary so far; stderr:\n{err}"
    );
    assert!(
        !running(redis),
        "redis-server {redis} still runs after the demo ended ({took:?})"
    );
    assert!(
        !dir.exists(),
        "{} left behind: Drop did not run",
        dir.display()
    );
}

#[test]
fn sigterm_stops_the_demo_with_its_summary_and_its_redis_server() {
    stops_with_summary("", "-TERM", "SIGTERM", 143);
}

/// As a script's `demo &` starts it: with SIGINT ignored, which `kill -INT` used to
/// meet.
#[test]
fn sigint_stops_the_demo_with_its_summary_even_when_started_ignoring_it() {
    stops_with_summary("trap '' INT;", "-INT", "SIGINT", 130);
}

/// A signal while the demo is still starting (servers up, users being queued):
/// stopped at once, servers too.
#[test]
fn sigterm_while_the_demo_starts_stops_it_and_its_redis_server() {
    let mut demo = Demo::start("");
    let redis = demo.redis(START_WITHIN);
    kill(demo.pid, "-TERM");
    let status = demo.exit_within(STOP_WITHIN);
    let err = demo.stderr();
    assert_eq!(
        status.code(),
        Some(143),
        "exit status {status:?}; stderr:\n{err}"
    );
    // Usually before the sale opened; on a fast machine it may just have opened.
    assert!(
        err.contains("demo: SIGTERM before the sale opened")
            || err.contains("demo: SIGTERM: stopped"),
        "{err}"
    );
    assert!(
        !running(redis),
        "redis-server {redis} still runs after the demo ended"
    );
}

/// SIGKILL: nothing of the demo runs; its redis-server dies with it all the same.
#[test]
fn sigkill_of_the_demo_takes_its_redis_server_along() {
    let mut demo = Demo::start("");
    let redis = demo.redis(START_WITHIN);
    let dir = poll(START_WITHIN, || {
        demo.stderr()
            .contains("redis-server on ")
            .then(|| demo.redis_dir())
    });
    kill(demo.pid, "-KILL");
    let status = demo.exit_within(STOP_WITHIN);
    assert_eq!(status.code(), None, "killed by a signal: {status:?}");
    let gone = poll(Duration::from_secs(5), || (!running(redis)).then_some(()));
    assert!(
        gone.is_some(),
        "redis-server {redis} outlived its SIGKILLed parent"
    );
    // Nothing ran to remove its (empty) directory: this test's to clean.
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A panic: the owner is dropped while unwinding, the server with it.
#[test]
fn a_panic_stops_the_private_redis_server() {
    let started = Arc::new(Mutex::new(None));
    let seen = started.clone();
    let result = std::thread::spawn(move || {
        let server = PrivateRedis::start().expect("redis-server");
        *seen.lock().unwrap_or_else(|e| e.into_inner()) = server.pid();
        panic!("a panic while the server runs");
    })
    .join();
    assert!(result.is_err(), "the thread panicked");
    let pid = started
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .expect("the server had started");
    assert!(!running(pid), "redis-server {pid} outlived the panic");
}

/// The death signal is tied to the thread that forks: servers are forked from one
/// that lives as long as the process, so a server outlives the (short-lived) thread
/// that asked for it.
#[test]
fn a_private_redis_server_outlives_the_thread_that_started_it() {
    let server = std::thread::spawn(|| PrivateRedis::start().expect("redis-server"))
        .join()
        .expect("the thread");
    let pid = server.pid().expect("runs");
    let client = redis::Client::open(server.url()).expect("url");
    // It must keep answering, not be killed a moment after the thread ended.
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        let pong: Result<String, _> = client
            .get_connection()
            .and_then(|mut c| redis::cmd("PING").query(&mut c));
        assert_eq!(
            pong.as_deref().ok(),
            Some("PONG"),
            "redis-server {pid} went away"
        );
        assert!(running(pid), "redis-server {pid} went away");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    assert!(
        !running(pid),
        "redis-server {pid} still runs after its owner was dropped"
    );
}
