//! `waitroom-worker health`: a health probe for container runtimes.
//!
//! A plain HTTP/1.0 GET of the worker's own `/healthz` (an `http://host:port/path`
//! URL, nothing else) over a tokio `TcpStream`, so a container HEALTHCHECK needs no
//! shell, curl or wget in the image. Healthy means a 2xx answer within the timeout;
//! anything else (bad URL, nothing listening, no answer in time, not HTTP, another
//! status) is an error with a one-line message.

use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of an answer read: the status line and the start of the body are enough.
const MAX_ANSWER: usize = 16 * 1024;
/// The most of the body shown in the one-line summary.
const MAX_SUMMARY: usize = 200;

/// Where to probe: an `http://host[:port][/path]` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// The `Host` header: the URL's authority as written.
    pub authority: String,
}

/// Why the probe did not find a healthy worker.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProbeError {
    /// The URL is not one the probe can ask (the command line names its flag).
    #[error("invalid URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection.
    #[error("cannot connect to {authority}: {reason}")]
    Unreachable {
        /// `host:port`.
        authority: String,
        /// Why.
        reason: String,
    },
    /// No complete answer in time.
    #[error("no answer from {url} within {timeout}")]
    Timeout {
        /// The URL asked.
        url: String,
        /// The time allowed.
        timeout: String,
    },
    /// The answer could not be read.
    #[error("reading the answer from {url}: {reason}")]
    Read {
        /// The URL asked.
        url: String,
        /// Why.
        reason: String,
    },
    /// The connection closed before an answer.
    #[error("{url} closed the connection without answering")]
    NoAnswer {
        /// The URL asked.
        url: String,
    },
    /// Something answered, not HTTP.
    #[error("{url} did not answer HTTP: {start:?}")]
    NotHttp {
        /// The URL asked.
        url: String,
        /// The first bytes of the answer.
        start: String,
    },
    /// The worker answered, not with 2xx.
    #[error("unhealthy: {url} answered {status_line}{summary}")]
    Unhealthy {
        /// The URL asked.
        url: String,
        /// The HTTP status line.
        status_line: String,
        /// What the body says, if anything.
        summary: String,
    },
}

fn bad(url: &str, reason: impl Into<String>) -> ProbeError {
    ProbeError::BadUrl {
        url: url.to_owned(),
        reason: reason.into(),
    }
}

/// Take an `http://host[:port][/path]` URL apart. https and every other scheme are
/// refused: the probe speaks plain HTTP to the worker's own endpoint.
pub(crate) fn parse_url(url: &str) -> Result<Target, ProbeError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad(url, "expected http://host:port/path"))?;
    if scheme.eq_ignore_ascii_case("https") {
        return Err(bad(
            url,
            "https is not supported: the probe speaks plain HTTP to the worker's own \
             endpoint (--http-addr); use http://",
        ));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(bad(
            url,
            format!("scheme {scheme:?} is not supported; use http://"),
        ));
    }
    // The fragment never goes to the server.
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = match path {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(url, "the path holds a space or a control character"));
    }
    if authority.contains('@') {
        return Err(bad(url, "credentials in the URL are not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad(url, "unclosed [ in the host"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad(url, "expected :port after ]"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad(url, "no host"));
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '[' | ']'))
    {
        return Err(bad(
            url,
            "the host holds a space, a bracket or a control character",
        ));
    }
    let port = match port {
        None => 80,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(url, format!("port {p} is out of range")))?,
        Some(p) => return Err(bad(url, format!("port {p:?} is not a number"))),
    };
    Ok(Target {
        host: host.to_owned(),
        port,
        path,
        authority: authority.to_owned(),
    })
}

/// GET `url` and return one line describing a healthy (2xx) answer, such as
/// `HTTP/1.0 200 OK {"status":"ok","last_loop_ms_ago":12}`.
pub async fn check(url: &str, timeout: Duration) -> Result<String, ProbeError> {
    let target = parse_url(url)?;
    let answer = tokio::time::timeout(timeout, fetch(url, &target))
        .await
        .map_err(|_| ProbeError::Timeout {
            url: url.to_owned(),
            timeout: humantime::format_duration(timeout).to_string(),
        })??;
    judge(url, &answer)
}

/// Send the request and read the answer until the server closes (HTTP/1.0), the
/// body its `Content-Length` announced came, or [`MAX_ANSWER`] bytes came.
async fn fetch(url: &str, t: &Target) -> Result<Vec<u8>, ProbeError> {
    let mut stream = TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| ProbeError::Unreachable {
            authority: t.authority.clone(),
            reason: e.to_string(),
        })?;
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: waitroom-worker-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        t.path, t.authority
    );
    let read_err = |e: std::io::Error| ProbeError::Read {
        url: url.to_owned(),
        reason: e.to_string(),
    };
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(read_err)?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while answer.len() < MAX_ANSWER && !complete(&answer) {
        let n = stream.read(&mut buf).await.map_err(read_err)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    Ok(answer)
}

/// Whether the head and the whole `Content-Length` body of an answer are in, so a
/// server that keeps the connection open anyway does not run the probe out of time.
fn complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|len| answer.len() - (end + 4) >= len)
}

/// Printable, one line, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let mut out: String = s
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if s.trim().chars().count() > max {
        out.push_str("...");
    }
    out
}

/// Read the status line of an answer: healthy on 2xx.
fn judge(url: &str, answer: &[u8]) -> Result<String, ProbeError> {
    if answer.is_empty() {
        return Err(ProbeError::NoAnswer {
            url: url.to_owned(),
        });
    }
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default().trim();
    let mut parts = status_line.splitn(3, ' ');
    let code = match (parts.next(), parts.next()) {
        (Some(v), Some(c))
            if v.starts_with("HTTP/") && c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()) =>
        {
            c
        }
        _ => {
            return Err(ProbeError::NotHttp {
                url: url.to_owned(),
                start: one_line(status_line, 60),
            });
        }
    };
    let body = one_line(body.lines().next().unwrap_or_default(), MAX_SUMMARY);
    let summary = if body.is_empty() {
        String::new()
    } else {
        format!(" {body}")
    };
    let status_line = one_line(status_line, 100);
    if code.starts_with('2') {
        Ok(format!("{status_line}{summary}"))
    } else {
        Err(ProbeError::Unhealthy {
            url: url.to_owned(),
            status_line,
            summary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u16, path: &str, authority: &str) -> Target {
        Target {
            host: host.into(),
            port,
            path: path.into(),
            authority: authority.into(),
        }
    }

    #[test]
    fn urls_are_taken_apart() {
        assert_eq!(
            parse_url("http://127.0.0.1:9090/healthz"),
            Ok(target("127.0.0.1", 9090, "/healthz", "127.0.0.1:9090"))
        );
        assert_eq!(
            parse_url("HTTP://worker"),
            Ok(target("worker", 80, "/", "worker"))
        );
        assert_eq!(
            parse_url("http://[::1]:9090?x=1#frag"),
            Ok(target("::1", 9090, "/?x=1", "[::1]:9090"))
        );
        assert_eq!(
            parse_url("http://[::1]/healthz"),
            Ok(target("::1", 80, "/healthz", "[::1]"))
        );
    }

    #[test]
    fn other_schemes_and_broken_urls_are_refused() {
        for url in [
            "https://127.0.0.1:9090/healthz",
            "ftp://127.0.0.1/x",
            "127.0.0.1:9090/healthz",
            "http://",
            "http://:9090/",
            "http://host:0/",
            "http://host:65536/",
            "http://host:90a/",
            "http://host:/",
            "http://user:pw@host/",
            "http://[::1/",
            "http://[::1]x/",
            "http://host/a b",
            "http://host/a\r\nX-Injected: 1",
        ] {
            assert!(
                matches!(parse_url(url), Err(ProbeError::BadUrl { .. })),
                "{url} accepted"
            );
        }
        let https = parse_url("https://h/").expect_err("refused").to_string();
        assert!(https.contains("https is not supported"), "{https}");
    }

    #[test]
    fn only_2xx_is_healthy() {
        let ok = judge(
            "u",
            b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{\"status\":\"ok\"}",
        );
        assert_eq!(ok, Ok("HTTP/1.0 200 OK {\"status\":\"ok\"}".to_owned()));
        assert_eq!(
            judge("u", b"HTTP/1.1 204 No Content\r\n\r\n"),
            Ok("HTTP/1.1 204 No Content".to_owned())
        );
        let e = judge(
            "u",
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"status\":\"stalled\"}\n",
        )
        .expect_err("503 is unhealthy")
        .to_string();
        assert_eq!(
            e,
            "unhealthy: u answered HTTP/1.1 503 Service Unavailable {\"status\":\"stalled\"}"
        );
        assert_eq!(
            judge("u", b""),
            Err(ProbeError::NoAnswer { url: "u".into() })
        );
        for garbage in [&b"SSH-2.0-OpenSSH\r\n"[..], b"HTTP/1.1 2000 OK\r\n\r\n"] {
            assert!(
                matches!(judge("u", garbage), Err(ProbeError::NotHttp { .. })),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn an_answer_is_complete_once_its_announced_body_came() {
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\no"));
        assert!(complete(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
        // Without a length, only the server closing ends the answer.
        assert!(!complete(b"HTTP/1.0 200 OK\r\n\r\nok"));
    }

    #[test]
    fn the_summary_stays_one_short_line() {
        let long = format!("HTTP/1.1 200 OK\r\n\r\n{}\u{7}\nsecond", "x".repeat(500));
        let line = judge("u", long.as_bytes()).expect("healthy");
        assert!(!line.contains('\n') && !line.contains('\u{7}'), "{line}");
        assert!(line.len() < 260, "{line}");
        assert!(line.ends_with("..."), "{line}");
    }
}
