//! Time as gbuild records and shows it: unix seconds from one clock (`now`), and UTC calendar
//! dates computed without a time-zone database (H. Hinnant's civil-from-days, proleptic
//! Gregorian), once, so that every date in messages, manifests and the status page agrees.

/// Seconds since 1970-01-01 UTC (0 on a clock set before it).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Nanoseconds since 1970-01-01 UTC (0 on a clock set before it).
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 (negative before) to (year, month, day).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The (year, month, day, seconds into the day) of a unix time.
fn split(secs: i64) -> (i64, u32, u32, i64) {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    (y, m, d, secs.rem_euclid(86_400))
}

/// `YYYY-MM-DD` of a unix time.
pub fn utc_date(secs: u64) -> String {
    let (y, m, d, _) = split(secs as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a unix time.
pub fn utc(secs: u64) -> String {
    let (y, m, d, s) = split(secs as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `YYYY-MM-DD HH:MM UTC` of a unix time (the status page's precision).
pub fn utc_minutes(secs: i64) -> String {
    let (y, m, d, s) = split(secs);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(utc(1506665101), "2017-09-29 06:05:01 UTC");
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1786785301), "2026-08-15");
        assert_eq!(utc_date(951782400), "2000-02-29");
        assert_eq!(utc_minutes(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_minutes(1_767_225_600), "2026-01-01 00:00 UTC");
        assert_eq!(utc_minutes(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_minutes(-60), "1969-12-31 23:59 UTC");
        assert!(now() > 1_700_000_000 && now_nanos() / 1_000_000_000 >= now() - 1);
    }
}
