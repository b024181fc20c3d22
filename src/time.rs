//! Time as the core sees it: a monotonic [`Instant`] and a wall-clock [`Timestamp`].
//!
//! The core never reads a clock. Drivers read theirs and pass the readings in: an [`Instant`]
//! for every decision (expiry, deadlines, renewals) and a [`Timestamp`] only to stamp the
//! `acquireTime` / `renewTime` fields that other clients display but never trust.

use std::fmt;
use std::ops::{Add, Sub};
use std::str::FromStr;
use std::time::Duration;

/// A reading of a monotonic clock: nanoseconds since an arbitrary origin chosen by the driver.
///
/// Unlike [`std::time::Instant`] it can be built from a number, so simulators, fuzzers and tests
/// construct it directly, and its `Debug` output is the same on every run. Arithmetic saturates
/// instead of panicking: an instant never wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The origin of the clock.
    pub const ZERO: Instant = Instant(0);
    /// The latest representable instant, about 584 years after the origin.
    pub const MAX: Instant = Instant(u64::MAX);

    /// The instant `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// The instant `millis` milliseconds after the origin (saturating).
    pub const fn from_millis(millis: u64) -> Self {
        Instant(millis.saturating_mul(1_000_000))
    }

    /// The instant `secs` seconds after the origin (saturating).
    pub const fn from_secs(secs: u64) -> Self {
        Instant(secs.saturating_mul(1_000_000_000))
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at [`Instant::MAX`].
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(duration_nanos(d)))
    }

    /// `self - d`, saturating at [`Instant::ZERO`].
    pub fn saturating_sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(duration_nanos(d)))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturating addition: never panics, never wraps.
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturating difference: zero when `rhs` is later.
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

impl fmt::Display for Instant {
    /// Seconds since the origin with millisecond precision, e.g. `12.345s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0 / 1_000_000;
        write!(f, "{}.{:03}s", millis / 1000, millis % 1000)
    }
}

/// A duration in whole nanoseconds, saturating at `u64::MAX` (about 584 years).
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A wall-clock time: microseconds since the Unix epoch, UTC, within years 0000 to 9999.
///
/// This is the precision of a Kubernetes `MicroTime`; a `metav1.Time` keeps whole seconds.
/// Parsing accepts any RFC 3339 time in that range (any number of fractional digits up to nine,
/// `Z` or a numeric offset) and rejects everything else with a [`TimestampError`] naming what was
/// wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    micros: i64,
}

/// Seconds from 0000-01-01T00:00:00Z to the Unix epoch.
const MIN_UNIX_SECS: i64 = -62_167_219_200;
/// Seconds from the Unix epoch to 9999-12-31T23:59:59Z.
const MAX_UNIX_SECS: i64 = 253_402_300_799;

impl Timestamp {
    /// The Unix epoch, 1970-01-01T00:00:00Z.
    pub const UNIX_EPOCH: Timestamp = Timestamp { micros: 0 };

    /// The time `micros` microseconds after the Unix epoch (negative: before it).
    ///
    /// # Errors
    /// When the time falls outside years 0000 to 9999, which RFC 3339 cannot write.
    pub fn from_unix_micros(micros: i64) -> Result<Self, TimestampError> {
        let secs = micros.div_euclid(1_000_000);
        if !(MIN_UNIX_SECS..=MAX_UNIX_SECS).contains(&secs) {
            return Err(TimestampError::new(
                &micros.to_string(),
                "outside the years 0000 to 9999",
            ));
        }
        Ok(Timestamp { micros })
    }

    /// Microseconds since the Unix epoch.
    pub const fn unix_micros(self) -> i64 {
        self.micros
    }

    /// This time truncated to whole seconds, as a `metav1.Time` stores it.
    pub fn truncated_to_seconds(self) -> Timestamp {
        Timestamp {
            micros: self.micros.div_euclid(1_000_000) * 1_000_000,
        }
    }

    /// This time truncated to a multiple of `precision` (at least one microsecond) since the
    /// epoch: what a lock that stores times at that precision keeps of it.
    pub fn truncated_to(self, precision: Duration) -> Timestamp {
        let unit = i64::try_from(precision.as_micros())
            .unwrap_or(i64::MAX)
            .max(1);
        Timestamp {
            micros: self.micros.div_euclid(unit) * unit,
        }
    }

    /// `self + d`, saturating at 9999-12-31T23:59:59.999999Z.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        let max = MAX_UNIX_SECS * 1_000_000 + 999_999;
        let add = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Timestamp {
            micros: self.micros.saturating_add(add).min(max),
        }
    }

    /// Parses an RFC 3339 time such as `2017-10-10T00:08:42Z` or
    /// `2024-05-01T10:00:00.123456+02:00`. Digits beyond microseconds are truncated.
    ///
    /// # Errors
    /// A [`TimestampError`] that quotes the input and says what is wrong with it.
    pub fn parse_rfc3339(input: &str) -> Result<Self, TimestampError> {
        parse_rfc3339(input).map_err(|why| TimestampError::new(input, why))
    }

    /// Formats with whole seconds, as Kubernetes writes a `metav1.Time`:
    /// `2017-10-10T00:08:42Z`. Fractional seconds are truncated, as Go does.
    pub fn to_rfc3339_seconds(self) -> String {
        let (date, secs_of_day, _) = self.civil();
        format!("{date}T{}Z", hms(secs_of_day))
    }

    /// Formats with six fractional digits, as Kubernetes writes a `MicroTime`:
    /// `2017-10-10T00:08:42.000000Z`.
    pub fn to_rfc3339_micros(self) -> String {
        let (date, secs_of_day, micros) = self.civil();
        format!("{date}T{}.{micros:06}Z", hms(secs_of_day))
    }

    fn civil(self) -> (String, i64, i64) {
        let secs = self.micros.div_euclid(1_000_000);
        let micros = self.micros.rem_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        (
            format!("{y:04}-{m:02}-{d:02}"),
            secs.rem_euclid(86_400),
            micros,
        )
    }
}

impl fmt::Display for Timestamp {
    /// The `MicroTime` form, which loses nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339_micros())
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse_rfc3339(s)
    }
}

/// A string that is not an RFC 3339 time Kubernetes could have written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid time {input:?}: {reason}")]
pub struct TimestampError {
    /// The offending input, cut to 64 characters so a huge value cannot flood a log.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl TimestampError {
    fn new(input: &str, reason: &'static str) -> Self {
        TimestampError {
            input: input.chars().take(64).collect(),
            reason,
        }
    }
}

fn hms(secs_of_day: i64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

fn parse_rfc3339(s: &str) -> Result<Timestamp, &'static str> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err("too short for YYYY-MM-DDTHH:MM:SSZ");
    }
    let num = |from: usize, len: usize| -> Result<i64, &'static str> {
        let digits = b.get(from..from + len).ok_or("truncated")?;
        digits.iter().try_fold(0i64, |acc, &c| {
            if c.is_ascii_digit() {
                Ok(acc * 10 + i64::from(c - b'0'))
            } else {
                Err("expected a digit")
            }
        })
    };
    let expect = |at: usize, want: u8, why: &'static str| {
        if b.get(at) == Some(&want) {
            Ok(())
        } else {
            Err(why)
        }
    };
    let year = num(0, 4)?;
    expect(4, b'-', "expected '-' after the year")?;
    let month = num(5, 2)?;
    expect(7, b'-', "expected '-' after the month")?;
    let day = num(8, 2)?;
    expect(10, b'T', "expected 'T' between date and time")?;
    let hour = num(11, 2)?;
    expect(13, b':', "expected ':' after the hour")?;
    let minute = num(14, 2)?;
    expect(16, b':', "expected ':' after the minute")?;
    let second = num(17, 2)?;
    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("day out of range");
    }
    if hour > 23 {
        return Err("hour out of range");
    }
    if minute > 59 {
        return Err("minute out of range");
    }
    if second > 59 {
        return Err("second out of range");
    }

    let mut at = 19;
    let mut micros = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while at < b.len() && b[at].is_ascii_digit() {
            if at - start < 6 {
                micros = micros * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        let digits = at - start;
        if digits == 0 {
            return Err("expected digits after '.'");
        }
        if digits > 9 {
            return Err("more than nine fractional digits");
        }
        for _ in digits..6 {
            micros *= 10;
        }
    }
    let offset_secs = match b.get(at) {
        Some(b'Z') => {
            at += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = num(at + 1, 2)?;
            expect(at + 3, b':', "expected ':' in the UTC offset")?;
            let om = num(at + 4, 2)?;
            if oh > 23 || om > 59 {
                return Err("UTC offset out of range");
            }
            at += 6;
            let off = oh * 3600 + om * 60;
            if sign == b'+' { off } else { -off }
        }
        _ => return Err("expected 'Z' or a UTC offset such as +02:00"),
    };
    if at != b.len() {
        return Err("unexpected characters after the time");
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    if !(MIN_UNIX_SECS..=MAX_UNIX_SECS).contains(&secs) {
        return Err("outside the years 0000 to 9999 once the offset is applied");
    }
    Ok(Timestamp {
        micros: secs * 1_000_000 + micros,
    })
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_and_formats_both_kubernetes_forms() {
        let t = ts("2017-10-10T00:08:42Z");
        assert_eq!(t.unix_micros(), 1_507_594_122_000_000);
        assert_eq!(t.to_rfc3339_seconds(), "2017-10-10T00:08:42Z");
        assert_eq!(t.to_rfc3339_micros(), "2017-10-10T00:08:42.000000Z");
        let m = ts("2024-02-29T23:59:59.123456Z");
        assert_eq!(m.to_rfc3339_micros(), "2024-02-29T23:59:59.123456Z");
        assert_eq!(m.to_rfc3339_seconds(), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn offsets_and_fraction_lengths() {
        assert_eq!(ts("2018-03-14T05:01:42+02:00"), ts("2018-03-14T03:01:42Z"));
        assert_eq!(ts("2018-03-14T00:31:42-02:30"), ts("2018-03-14T03:01:42Z"));
        assert_eq!(
            ts("2018-03-14T03:01:42.5Z").unix_micros() % 1_000_000,
            500_000
        );
        assert_eq!(
            ts("2018-03-14T03:01:42.123456789Z").unix_micros() % 1_000_000,
            123_456
        );
    }

    #[test]
    fn before_the_epoch_truncates_toward_earlier_seconds() {
        let t = ts("1969-12-31T23:59:59.250000Z");
        assert_eq!(t.unix_micros(), -750_000);
        assert_eq!(t.to_rfc3339_seconds(), "1969-12-31T23:59:59Z");
        assert_eq!(t.truncated_to_seconds().unix_micros(), -1_000_000);
        assert_eq!(
            ts("0000-01-01T00:00:00Z").to_rfc3339_seconds(),
            "0000-01-01T00:00:00Z"
        );
        assert_eq!(
            ts("9999-12-31T23:59:59Z").to_rfc3339_seconds(),
            "9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let cases = [
            ("", "too short"),
            ("yesterday", "too short"),
            ("2017-10-10 00:08:42Z", "'T'"),
            ("2017-13-10T00:08:42Z", "month"),
            ("2017-02-29T00:08:42Z", "day"),
            ("2017-10-10T24:00:00Z", "hour"),
            ("2017-10-10T00:60:00Z", "minute"),
            ("2017-10-10T00:00:60Z", "second"),
            ("2017-10-10T00:08:42", "too short"),
            ("2017-10-10T00:08:42.Z", "digits after"),
            ("2017-10-10T00:08:42.1234567890Z", "nine"),
            ("2017-10-10T00:08:42+2:00", "digit"),
            ("2017-10-10T00:08:42+25:00", "offset"),
            ("2017-10-10T00:08:42Zjunk", "after the time"),
            ("2017-10-10T00:08:42z", "'Z'"),
            ("0000-01-01T00:00:00+00:01", "0000"),
            ("２０17-10-10T00:08:42Z", "digit"),
        ];
        for (input, needle) in cases {
            let err = Timestamp::parse_rfc3339(input).expect_err(input);
            assert!(
                err.to_string().contains(needle),
                "{input:?}: {err} should mention {needle:?}"
            );
        }
        let huge = "9".repeat(10_000);
        let err = Timestamp::parse_rfc3339(&huge).expect_err("huge");
        assert!(err.to_string().len() < 200, "error text stays bounded");
    }

    #[test]
    fn unix_micros_range_is_checked() {
        assert!(Timestamp::from_unix_micros(i64::MAX).is_err());
        assert!(Timestamp::from_unix_micros(i64::MIN).is_err());
        assert!(Timestamp::from_unix_micros(0).is_ok());
        let max = Timestamp::from_unix_micros(MAX_UNIX_SECS * 1_000_000 + 999_999);
        assert!(max.is_ok());
        let late = max
            .clone()
            .map(|t| t.saturating_add(Duration::from_secs(10)));
        assert_eq!(late, max, "saturates at the end of year 9999");
    }

    #[test]
    fn instant_arithmetic_saturates() {
        assert_eq!(Instant::MAX + Duration::from_secs(1), Instant::MAX);
        assert_eq!(Instant::ZERO - Instant::from_secs(3), Duration::ZERO);
        assert_eq!(
            Instant::ZERO.saturating_sub(Duration::from_secs(1)),
            Instant::ZERO
        );
        assert_eq!(Instant::from_millis(1500).to_string(), "1.500s");
        assert_eq!(Instant::from_secs(u64::MAX), Instant::MAX);
        assert_eq!(Instant::ZERO + Duration::MAX, Instant::MAX);
    }

    proptest! {
        #[test]
        fn micros_round_trip(micros in MIN_UNIX_SECS * 1_000_000..=MAX_UNIX_SECS * 1_000_000 + 999_999) {
            let t = Timestamp::from_unix_micros(micros).expect("in range");
            prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339_micros()), Ok(t));
            prop_assert_eq!(
                Timestamp::parse_rfc3339(&t.to_rfc3339_seconds()),
                Ok(t.truncated_to_seconds())
            );
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Timestamp::parse_rfc3339(&s);
        }

        #[test]
        fn civil_round_trip(days in -800_000i64..3_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
