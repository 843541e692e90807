//! Retrying what failed for a reason that may pass: exponential backoff and the
//! classification of Redis errors into transient (retry) and permanent (report).

use std::future::Future;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{ErrorKind, FromRedisValue, Pipeline, RedisError, ServerErrorKind};

/// Exponential backoff: `first`, `2 * first`, `4 * first`, ... never above `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay.
    pub first: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// Whether a Redis error may go away on its own: a dropped or refused connection, a
/// timeout, a server still loading its data, a cluster moving slots or failing over.
pub(crate) fn is_transient(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return true;
    }
    matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                // A redirect the cluster client could not follow (the slot's master
                // unreachable, the slot map changing): its events wait a pass.
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        )
    ) || e.code() == Some("BUSY")
}

/// Run `op` up to `attempts` times, sleeping with `backoff` between tries, as long
/// as `transient` says the error may pass. Returns the last error otherwise.
pub(crate) async fn with_retries<T, E, F, Fut>(
    attempts: u32,
    backoff: Backoff,
    transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < attempts.max(1) && transient(&e) => {
                tokio::time::sleep(backoff.delay(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `pipe` on a clone of `conn`, tried again as [`with_retries`] does while the
/// error is transient.
pub(crate) async fn query_retrying<T, C>(
    conn: &C,
    pipe: &Pipeline,
    attempts: u32,
    backoff: Backoff,
) -> Result<T, RedisError>
where
    T: FromRedisValue,
    C: ConnectionLike + Clone + Send,
{
    with_retries(attempts, backoff, is_transient, || {
        let mut conn = conn.clone();
        async move { pipe.query_async(&mut conn).await }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(400));
        assert_eq!(b.delay(4), Duration::from_millis(500));
        assert_eq!(b.delay(60), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn retries_transient_errors_only() {
        let b = Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(1),
        };
        let mut calls = 0;
        let r: Result<(), &str> = with_retries(
            3,
            b,
            |e| *e == "transient",
            || {
                calls += 1;
                async { Err("transient") }
            },
        )
        .await;
        assert_eq!(r, Err("transient"));
        assert_eq!(calls, 3);

        let mut calls = 0;
        let r: Result<(), &str> = with_retries(
            3,
            b,
            |e| *e == "transient",
            || {
                calls += 1;
                async { Err("permanent") }
            },
        )
        .await;
        assert_eq!(r, Err("permanent"));
        assert_eq!(calls, 1);
    }
}
