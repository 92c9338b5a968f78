//! The maps' boot-clock stamps as wall-clock time, for the operator who
//! compares them with a log or an abuse report.

use jiff::Timestamp;
use nix::time::{ClockId, clock_gettime};

use crate::datapath::tables::boot_ns;

/// Unix-epoch nanoseconds of boot-clock time `boot` (nanoseconds), by the
/// distance from the boot clock's now to the wall clock's now: a stamp
/// keeps its wall-clock time only until the wall clock is stepped.
pub fn wall_ns(boot: u64) -> i128 {
    let real = clock_gettime(ClockId::CLOCK_REALTIME).expect("CLOCK_REALTIME is always available");
    let real_ns = i128::from(real.tv_sec()) * 1_000_000_000 + i128::from(real.tv_nsec());
    real_ns - (i128::from(boot_ns()) - i128::from(boot))
}

/// `unix_ns` as RFC 3339 in UTC, to the second (`2026-12-07T14:03:12Z`).
pub fn rfc3339(unix_ns: i128) -> String {
    match Timestamp::from_nanosecond(unix_ns) {
        Ok(t) => format!("{t:.0}"),
        Err(_) => format!("{unix_ns} ns from the epoch"),
    }
}

/// `unix_ms` as RFC 3339 as RFC 5424 section 6.2.3 restricts it: UTC,
/// `T` and `Z` upper case, milliseconds (`2026-12-07T14:03:12.123Z`).
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let t = i64::try_from(unix_ms)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .unwrap_or(Timestamp::MAX);
    format!("{t:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_utc() {
        let s = |secs: i64| rfc3339(i128::from(secs) * 1_000_000_000 + 999_999_999);
        assert_eq!(s(0), "1970-01-01T00:00:00Z");
        assert_eq!(s(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(s(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(s(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(s(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn milliseconds_as_syslog_has_them() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339_ms(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_ms(4_102_444_800_000), "2100-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_stamp_of_now_is_now() {
        let real = clock_gettime(ClockId::CLOCK_REALTIME).unwrap();
        let got = wall_ns(boot_ns()) / 1_000_000_000;
        assert!((got - i128::from(real.tv_sec())).abs() <= 1);
    }
}
