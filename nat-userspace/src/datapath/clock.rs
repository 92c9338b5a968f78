//! The maps' boot-clock stamps as wall-clock time, for the operator who
//! compares them with a log or an abuse report.

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
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of a day number counted from 1970-01-01
/// (H. Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
    fn a_stamp_of_now_is_now() {
        let real = clock_gettime(ClockId::CLOCK_REALTIME).unwrap();
        let got = wall_ns(boot_ns()) / 1_000_000_000;
        assert!((got - i128::from(real.tv_sec())).abs() <= 1);
    }
}
