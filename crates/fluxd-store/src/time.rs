//! Times as the database stores them: signed milliseconds since the Unix epoch, which every SQL
//! database compares and indexes natively.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch (negative before it), saturating far outside any real clock.
pub(crate) fn to_millis(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The inverse of [`to_millis`].
pub(crate) fn from_millis(ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// Now, in milliseconds since the epoch.
pub(crate) fn now_millis() -> i64 {
    to_millis(SystemTime::now())
}

/// A duration in milliseconds, saturating (a lease of a century is "forever").
pub(crate) fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip_both_sides_of_the_epoch() {
        for ms in [0, 1, -1, 1_764_000_000_123, -86_400_000] {
            assert_eq!(to_millis(from_millis(ms)), ms);
        }
        assert_eq!(duration_millis(Duration::from_secs(2)), 2000);
        assert_eq!(duration_millis(Duration::MAX), i64::MAX);
    }
}
