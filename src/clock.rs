//! Wall-clock instants as the contract writes them: ms since the epoch in scores,
//! RFC 3339 UTC in hashes and messages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// `2024-10-13T10:35:00Z` (whole seconds, truncated).
pub fn rfc3339_seconds(ms: u64) -> String {
    humantime::format_rfc3339_seconds(at(ms)).to_string()
}

/// `2024-10-13T10:35:00.123Z`.
pub fn rfc3339_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(at(ms)).to_string()
}

/// The checkout deadline of an admission at `admitted_ms`: at least `window` later,
/// rounded up to a whole second, because the token's `exp` counts whole seconds and
/// the slot's deadline must be the very same instant.
pub fn deadline_ms(admitted_ms: u64, window: Duration) -> u64 {
    let raw = admitted_ms + window.as_millis() as u64;
    raw.div_ceil(1000) * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339_seconds(1_728_815_700_123), "2024-10-13T10:35:00Z");
        assert_eq!(
            rfc3339_millis(1_728_815_700_123),
            "2024-10-13T10:35:00.123Z"
        );
    }

    #[test]
    fn deadline_is_a_whole_second_not_before_the_window() {
        let d = deadline_ms(1_728_815_700_123, Duration::from_secs(900));
        assert_eq!(d, 1_728_816_601_000);
        assert_eq!(deadline_ms(1_000, Duration::from_secs(2)), 3_000);
    }
}
