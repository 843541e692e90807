//! Wall-clock instants as the contract writes them: ms since the epoch in scores,
//! RFC 3339 UTC in hashes and messages.
//!
//! Every function here is total: an instant past the end of year 9999 (which RFC 3339
//! cannot write, and humantime panics on) is formatted as the last millisecond of
//! 9999, and arithmetic saturates instead of overflowing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The last instant RFC 3339 can write, 9999-12-31T23:59:59.999Z, in ms since the
/// epoch. Later instants are formatted as this one.
pub const MAX_MS: u64 = 253_402_300_799_999;

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.min(MAX_MS))
}

/// `2024-10-13T10:35:00Z` (whole seconds, truncated). Instants past the end of year
/// 9999 are clamped: they read `9999-12-31T23:59:59Z`.
pub fn rfc3339_seconds(ms: u64) -> String {
    humantime::format_rfc3339_seconds(at(ms)).to_string()
}

/// `2024-10-13T10:35:00.123Z`. Instants past the end of year 9999 are clamped: they
/// read `9999-12-31T23:59:59.999Z`.
pub fn rfc3339_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(at(ms)).to_string()
}

/// The largest whole second (in ms) a `u64` holds: where [`deadline_ms`] saturates.
const MAX_WHOLE_SECOND_MS: u64 = u64::MAX / 1000 * 1000;

/// The checkout deadline of an admission at `admitted_ms`: at least `window` later,
/// rounded up to a whole second, because the token's `exp` counts whole seconds and
/// the slot's deadline must be the very same instant. Saturates at the largest whole
/// second a `u64` holds instead of overflowing (the settings bound the window, so a
/// real admission never comes near it).
pub fn deadline_ms(admitted_ms: u64, window: Duration) -> u64 {
    let raw = u128::from(admitted_ms) + window.as_millis();
    u64::try_from(raw.div_ceil(1000) * 1000)
        .unwrap_or(MAX_WHOLE_SECOND_MS)
        .min(MAX_WHOLE_SECOND_MS)
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

    #[test]
    fn instants_past_year_9999_are_clamped_not_a_panic() {
        assert_eq!(rfc3339_seconds(MAX_MS), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_millis(MAX_MS), "9999-12-31T23:59:59.999Z");
        for ms in [MAX_MS + 1, 253_402_300_800_000, 1 << 60, u64::MAX] {
            assert_eq!(rfc3339_seconds(ms), "9999-12-31T23:59:59Z", "{ms}");
            assert_eq!(rfc3339_millis(ms), "9999-12-31T23:59:59.999Z", "{ms}");
        }
        assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn deadline_saturates_instead_of_overflowing() {
        let top = 18_446_744_073_709_551_000;
        assert_eq!(deadline_ms(u64::MAX, Duration::from_secs(900)), top);
        assert_eq!(deadline_ms(u64::MAX, Duration::ZERO), top);
        assert_eq!(deadline_ms(0, Duration::MAX), top);
        assert_eq!(deadline_ms(top - 1, Duration::ZERO), top);
    }
}
