//! The `Retry-After` header value (RFC 9110 §10.2.3).

use std::{
    fmt,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::HeaderValue;

use crate::error::InvalidRetryAfter;

/// How long a client should wait before it tries again: the value of a `Retry-After` header.
///
/// RFC 9110 §10.2.3 allows two forms, and this type holds either:
///
/// - **delta-seconds**, a non-negative decimal integer (`Retry-After: 120`), held as
///   [`RetryAfter::Delay`];
/// - an **HTTP-date** (`Retry-After: Fri, 31 Dec 1999 23:59:59 GMT`), held as
///   [`RetryAfter::Date`]. Parsing accepts the preferred IMF-fixdate and the two obsolete forms
///   (RFC 850 and ANSI C `asctime`) that recipients must accept; formatting always writes
///   IMF-fixdate. Dates are handled by the [`httpdate`] crate.
///
/// # Parsing rules
///
/// | input | result |
/// |---|---|
/// | `120`, `007`, `" 120\t"` (optional whitespace around) | `Delay(120 s)`, `Delay(7 s)`, `Delay(120 s)` |
/// | digits beyond [`RetryAfter::MAX_DELAY`] (2^31 s, ~68 years), including values that overflow `u64` | `Delay(MAX_DELAY)`: saturates, as RFC 9111 §1.2.2 asks for delta-seconds |
/// | any of the three HTTP-date forms | `Date(..)`, even if the date is in the past |
/// | empty, `-5`, `+5`, `1.5`, `0x10`, `1 2`, `5s`, non-ASCII, a malformed date | an [`InvalidRetryAfter`] error |
///
/// A date in the past is valid and means "now": [`RetryAfter::delay_from`] returns zero for it.
///
/// # Formatting rules
///
/// A delay is written as whole seconds, **rounded up**: a 300 ms wait is `Retry-After: 1`,
/// never `0`, which would invite an immediate retry. A date is written as IMF-fixdate, clamped
/// into the range the format can express (1970 to 9999).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_5xx::RetryAfter;
///
/// let ra: RetryAfter = "120".parse().unwrap();
/// assert_eq!(ra, RetryAfter::Delay(Duration::from_secs(120)));
///
/// let date: RetryAfter = "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap();
/// let obsolete: RetryAfter = "Sunday, 06-Nov-94 08:49:37 GMT".parse().unwrap();
/// assert_eq!(date, obsolete);
///
/// // A date is read against a reference instant: the server's `Date` header or the local clock.
/// let server_now: SystemTime = httpdate::parse_http_date("Sun, 06 Nov 1994 08:47:37 GMT").unwrap();
/// assert_eq!(date.delay_from(server_now), Duration::from_secs(120));
///
/// // Sub-second delays round up on the wire.
/// assert_eq!(RetryAfter::Delay(Duration::from_millis(300)).to_string(), "1");
///
/// assert!("-5".parse::<RetryAfter>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryAfter {
    /// Wait this long (the delta-seconds form).
    Delay(Duration),
    /// Wait until this instant (the HTTP-date form).
    Date(SystemTime),
}

/// Seconds since the epoch of 9999-12-31T23:59:59Z, the last instant IMF-fixdate can express.
const MAX_HTTP_DATE_SECS: u64 = 253_402_300_799;

impl RetryAfter {
    /// The largest delay this type parses: 2^31 seconds (about 68 years).
    ///
    /// Larger delta-seconds, and numbers too large for any integer type, saturate to this
    /// value (RFC 9111 §1.2.2 gives the same rule for caches). It is small enough that adding it
    /// to any `Instant` or `SystemTime` a program will see does not overflow.
    pub const MAX_DELAY: Duration = Duration::from_secs(1 << 31);

    /// A `Retry-After` in the delta-seconds form.
    pub const fn delay(delay: Duration) -> Self {
        RetryAfter::Delay(delay)
    }

    /// A `Retry-After` in the HTTP-date form.
    pub const fn at(date: SystemTime) -> Self {
        RetryAfter::Date(date)
    }

    /// Parses a header value. See the [type docs](RetryAfter) for the rules.
    pub fn from_header_value(value: &HeaderValue) -> Result<Self, InvalidRetryAfter> {
        let s = value.to_str().map_err(|_| InvalidRetryAfter::NON_ASCII)?;
        s.parse()
    }

    /// Formats the value as a header value. See the [type docs](RetryAfter) for the rules.
    pub fn to_header_value(&self) -> HeaderValue {
        match *self {
            RetryAfter::Delay(d) => HeaderValue::from(delay_secs_rounded_up(d)),
            RetryAfter::Date(t) => {
                // An HTTP-date is ASCII, so this conversion cannot fail.
                HeaderValue::from_str(&httpdate::fmt_http_date(clamp_date(t)))
                    .expect("an HTTP-date is a valid header value")
            }
        }
    }

    /// How long to wait, counted from `now`.
    ///
    /// For a delay this is the delay itself. For a date it is `date - now`, or zero if the date
    /// is not after `now`. To cancel clock skew between client and server, pass the response's
    /// `Date` header as `now` when it has one.
    pub fn delay_from(&self, now: SystemTime) -> Duration {
        match *self {
            RetryAfter::Delay(d) => d,
            RetryAfter::Date(t) => t.duration_since(now).unwrap_or(Duration::ZERO),
        }
    }

    /// The same wait, capped at `max` (a date is read against `now` to compare it).
    ///
    /// The form is kept: a delay stays a delay, a date stays a date (moved earlier if needed).
    #[must_use]
    pub fn clamp(self, max: Duration, now: SystemTime) -> Self {
        match self {
            RetryAfter::Delay(d) => RetryAfter::Delay(d.min(max)),
            RetryAfter::Date(t) => {
                if self.delay_from(now) > max {
                    RetryAfter::Date(now.checked_add(max).unwrap_or(t))
                } else {
                    RetryAfter::Date(t)
                }
            }
        }
    }

    /// The same wait, plus a random whole number of seconds in `0..=max_extra` (rounded up).
    ///
    /// Used when emitting `Retry-After`, so that a fleet of clients told to come back does not
    /// come back in one herd. `Retry-After` carries whole seconds, so the wait is first rounded
    /// up to a whole second and the extra is drawn in whole seconds: jitter finer than that
    /// would vanish on the wire. Delays saturate at [`RetryAfter::MAX_DELAY`].
    #[must_use]
    pub fn with_jitter(self, max_extra: Duration) -> Self {
        self.with_jitter_from(max_extra, fastrand::f64())
    }

    /// [`RetryAfter::with_jitter`] with the random draw supplied: `unit` in `[0, 1]` picks the
    /// extra as `floor(unit * (max + 1))` whole seconds, at most `max` (values outside the range
    /// are clamped into it).
    #[must_use]
    pub fn with_jitter_from(self, max_extra: Duration, unit: f64) -> Self {
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let max_secs = delay_secs_rounded_up(max_extra);
        let extra_secs = ((unit * (max_secs as f64 + 1.0)) as u64).min(max_secs);
        let extra = Duration::from_secs(extra_secs);
        match self {
            RetryAfter::Delay(d) => {
                let whole = Duration::from_secs(delay_secs_rounded_up(d));
                // Never let jitter push a delay past the largest one we parse.
                RetryAfter::Delay(whole.saturating_add(extra).min(Self::MAX_DELAY.max(whole)))
            }
            RetryAfter::Date(t) => {
                let t = round_up_to_second(t);
                RetryAfter::Date(t.checked_add(extra).unwrap_or(t))
            }
        }
    }

    /// The `Retry-After` a layer emits for a wait of `base`: rounded up to whole seconds,
    /// clamped into `[min, max]` (and never below 1 s: `Retry-After: 0` would invite an
    /// immediate retry), then jittered by up to `jitter` whole seconds, which may take it past
    /// `max` by at most `jitter` so that a fleet spreads out even when the wait is at its cap.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_5xx::RetryAfter;
    ///
    /// let s = Duration::from_secs;
    /// let ra = RetryAfter::for_emission(Duration::from_millis(300), s(1), s(30), Duration::ZERO);
    /// assert_eq!(ra, RetryAfter::Delay(s(1)));
    /// for _ in 0..100 {
    ///     let RetryAfter::Delay(d) = RetryAfter::for_emission(s(90), s(1), s(30), s(5)) else {
    ///         unreachable!()
    ///     };
    ///     assert!(d >= s(30) && d <= s(35));
    /// }
    /// ```
    pub fn for_emission(base: Duration, min: Duration, max: Duration, jitter: Duration) -> Self {
        let one = Duration::from_secs(1);
        let min = Duration::from_secs(delay_secs_rounded_up(min)).max(one);
        let max = Duration::from_secs(delay_secs_rounded_up(max)).max(min);
        let base = Duration::from_secs(delay_secs_rounded_up(base)).clamp(min, max);
        let ra = RetryAfter::Delay(base);
        if jitter.is_zero() {
            ra
        } else {
            ra.with_jitter(jitter)
        }
    }

    /// The same value, with a delay of less than one second raised to one second (a date is
    /// unchanged). `Retry-After: 0` would invite an immediate retry.
    #[must_use]
    pub fn at_least_one_second(self) -> Self {
        match self {
            RetryAfter::Delay(d) => RetryAfter::Delay(d.max(Duration::from_secs(1))),
            date @ RetryAfter::Date(_) => date,
        }
    }
}

/// A date rounded up to the next whole second: HTTP-dates carry whole seconds, and announcing an
/// end earlier than it is would invite retries before it.
fn round_up_to_second(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(since) if since.subsec_nanos() > 0 => {
            UNIX_EPOCH + Duration::from_secs(since.as_secs().saturating_add(1))
        }
        _ => t,
    }
}

/// Whole seconds, rounded up, for the wire.
pub(crate) fn delay_secs_rounded_up(d: Duration) -> u64 {
    let secs = d.as_secs();
    if d.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

/// The latest instant an HTTP-date can name: 9999-12-31 23:59:59 UTC.
#[cfg(any(feature = "maintenance", fuzzing))]
pub(crate) fn latest_http_date() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(MAX_HTTP_DATE_SECS)
}

/// `t` written as IMF-fixdate, clamped into the range the format can express (1970 to 9999),
/// so formatting never panics. Sub-seconds are dropped, as [`httpdate`] does.
#[cfg(any(all(feature = "maintenance", feature = "axum"), fuzzing))]
pub(crate) fn fmt_http_date_clamped(t: SystemTime) -> String {
    httpdate::fmt_http_date(t.clamp(UNIX_EPOCH, latest_http_date()))
}

/// `t` written as IMF-fixdate for an announced end: rounded up to the next whole second (never
/// announcing an end earlier than it is) and clamped into the range the format can express.
#[cfg(all(feature = "maintenance", feature = "redis"))]
pub(crate) fn fmt_end_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(clamp_date(t))
}

/// Clamps a date into the range IMF-fixdate can express, so formatting never panics.
fn clamp_date(t: SystemTime) -> SystemTime {
    let t = round_up_to_second(t);
    match t.duration_since(UNIX_EPOCH) {
        Ok(since) if since.as_secs() > MAX_HTTP_DATE_SECS => {
            UNIX_EPOCH + Duration::from_secs(MAX_HTTP_DATE_SECS)
        }
        Ok(_) => t,
        Err(_) => UNIX_EPOCH,
    }
}

/// Optional whitespace (RFC 9110 §5.6.3): space and horizontal tab only.
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

impl FromStr for RetryAfter {
    type Err = InvalidRetryAfter;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim_matches(is_ows);
        if s.is_empty() {
            return Err(InvalidRetryAfter::EMPTY);
        }
        if !s.is_ascii() {
            return Err(InvalidRetryAfter::NON_ASCII);
        }
        let bytes = s.as_bytes();
        if bytes.iter().all(u8::is_ascii_digit) {
            let max = Self::MAX_DELAY.as_secs();
            let mut secs: u64 = 0;
            for &b in bytes {
                secs = secs
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .map_or(max, |v| v.min(max));
            }
            return Ok(RetryAfter::Delay(Duration::from_secs(secs)));
        }
        if bytes[0] == b'-' && bytes.len() > 1 && bytes[1..].iter().all(u8::is_ascii_digit) {
            return Err(InvalidRetryAfter::NEGATIVE);
        }
        httpdate::parse_http_date(s)
            .map(RetryAfter::Date)
            .map_err(|_| InvalidRetryAfter::MALFORMED)
    }
}

impl TryFrom<&HeaderValue> for RetryAfter {
    type Error = InvalidRetryAfter;

    fn try_from(value: &HeaderValue) -> Result<Self, Self::Error> {
        RetryAfter::from_header_value(value)
    }
}

impl From<RetryAfter> for HeaderValue {
    fn from(value: RetryAfter) -> Self {
        value.to_header_value()
    }
}

impl From<Duration> for RetryAfter {
    fn from(value: Duration) -> Self {
        RetryAfter::Delay(value)
    }
}

impl From<SystemTime> for RetryAfter {
    fn from(value: SystemTime) -> Self {
        RetryAfter::Date(value)
    }
}

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RetryAfter::Delay(d) => write!(f, "{}", delay_secs_rounded_up(d)),
            RetryAfter::Date(t) => f.write_str(&httpdate::fmt_http_date(clamp_date(t))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(n: u64) -> RetryAfter {
        RetryAfter::Delay(Duration::from_secs(n))
    }

    fn date(s: &str) -> SystemTime {
        httpdate::parse_http_date(s).unwrap()
    }

    #[test]
    fn parses_delta_seconds() {
        assert_eq!("0".parse::<RetryAfter>().unwrap(), secs(0));
        assert_eq!("120".parse::<RetryAfter>().unwrap(), secs(120));
        assert_eq!("007".parse::<RetryAfter>().unwrap(), secs(7));
    }

    #[test]
    fn trims_optional_whitespace_only() {
        assert_eq!(" 5".parse::<RetryAfter>().unwrap(), secs(5));
        assert_eq!("5 \t".parse::<RetryAfter>().unwrap(), secs(5));
        // Whitespace inside the value, or other whitespace characters, are errors.
        assert_eq!(
            "1 2".parse::<RetryAfter>(),
            Err(InvalidRetryAfter::MALFORMED)
        );
        assert_eq!(
            "\n5".parse::<RetryAfter>(),
            Err(InvalidRetryAfter::MALFORMED)
        );
        assert_eq!(
            "5\u{a0}".parse::<RetryAfter>(),
            Err(InvalidRetryAfter::NON_ASCII)
        );
        assert_eq!(" \t ".parse::<RetryAfter>(), Err(InvalidRetryAfter::EMPTY));
    }

    #[test]
    fn rejects_signs_fractions_and_junk() {
        assert_eq!("".parse::<RetryAfter>(), Err(InvalidRetryAfter::EMPTY));
        assert_eq!("-5".parse::<RetryAfter>(), Err(InvalidRetryAfter::NEGATIVE));
        for bad in ["+5", "1.5", "0x10", "5s", "1e3", "-", "five", "--5", "5-"] {
            assert_eq!(
                bad.parse::<RetryAfter>(),
                Err(InvalidRetryAfter::MALFORMED),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn huge_values_saturate() {
        let max = RetryAfter::Delay(RetryAfter::MAX_DELAY);
        assert_eq!("2147483648".parse::<RetryAfter>().unwrap(), max);
        assert_eq!("2147483649".parse::<RetryAfter>().unwrap(), max);
        assert_eq!("18446744073709551615".parse::<RetryAfter>().unwrap(), max);
        assert_eq!(
            "99999999999999999999999999999999999999"
                .parse::<RetryAfter>()
                .unwrap(),
            max
        );
        assert_eq!(
            "2147483647".parse::<RetryAfter>().unwrap(),
            secs((1 << 31) - 1)
        );
    }

    #[test]
    fn parses_all_three_date_forms() {
        let expected = date("Sun, 06 Nov 1994 08:49:37 GMT");
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "  Sun, 06 Nov 1994 08:49:37 GMT ",
        ] {
            assert_eq!(
                form.parse::<RetryAfter>().unwrap(),
                RetryAfter::Date(expected),
                "{form:?}"
            );
        }
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "2024-01-01T00:00:00Z",
            "Sun, 06 Nov 1994",
        ] {
            assert_eq!(
                bad.parse::<RetryAfter>(),
                Err(InvalidRetryAfter::MALFORMED),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn past_dates_mean_now() {
        let ra: RetryAfter = "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap();
        assert_eq!(ra.delay_from(SystemTime::now()), Duration::ZERO);
        let later = date("Sun, 06 Nov 1994 08:50:37 GMT");
        assert_eq!(
            RetryAfter::Date(later).delay_from(date("Sun, 06 Nov 1994 08:49:37 GMT")),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn header_value_round_trip_and_non_ascii() {
        let v = HeaderValue::from_static("30");
        assert_eq!(RetryAfter::from_header_value(&v).unwrap(), secs(30));
        assert_eq!(HeaderValue::from(secs(30)), v);
        let non_ascii = HeaderValue::from_bytes(b"3\xff").unwrap();
        assert_eq!(
            RetryAfter::from_header_value(&non_ascii),
            Err(InvalidRetryAfter::NON_ASCII)
        );
    }

    #[test]
    fn formats_rounding_up() {
        assert_eq!(RetryAfter::Delay(Duration::ZERO).to_string(), "0");
        assert_eq!(RetryAfter::Delay(Duration::from_millis(1)).to_string(), "1");
        assert_eq!(
            RetryAfter::Delay(Duration::from_millis(1000)).to_string(),
            "1"
        );
        assert_eq!(
            RetryAfter::Delay(Duration::from_millis(1001)).to_string(),
            "2"
        );
        assert_eq!(
            RetryAfter::Delay(Duration::MAX).to_string(),
            u64::MAX.to_string()
        );
    }

    #[test]
    fn formats_out_of_range_dates_without_panicking() {
        let far = UNIX_EPOCH + Duration::from_secs(MAX_HTTP_DATE_SECS * 4);
        assert_eq!(
            RetryAfter::Date(far).to_string(),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
        if let Some(before) = UNIX_EPOCH.checked_sub(Duration::from_secs(10)) {
            assert_eq!(
                RetryAfter::Date(before).to_string(),
                "Thu, 01 Jan 1970 00:00:00 GMT"
            );
        }
    }

    #[test]
    fn clamp_keeps_the_form() {
        let now = date("Sun, 06 Nov 1994 08:49:37 GMT");
        let max = Duration::from_secs(60);
        assert_eq!(secs(600).clamp(max, now), secs(60));
        assert_eq!(secs(6).clamp(max, now), secs(6));
        let far = RetryAfter::Date(now + Duration::from_secs(3600));
        assert_eq!(far.clamp(max, now), RetryAfter::Date(now + max));
        let near = RetryAfter::Date(now + Duration::from_secs(30));
        assert_eq!(near.clamp(max, now), near);
    }

    #[test]
    fn sub_second_jitter_still_spreads_whole_seconds() {
        let seen: std::collections::HashSet<_> = (0..200)
            .map(|_| secs(1).with_jitter(Duration::from_millis(400)).to_string())
            .collect();
        assert_eq!(seen, ["1", "2"].iter().map(|s| s.to_string()).collect());
        let spread: std::collections::HashSet<_> = (0..500)
            .map(|_| secs(1).with_jitter(Duration::from_secs(3)).to_string())
            .collect();
        assert_eq!(spread.len(), 4, "{spread:?}");
    }

    #[test]
    fn dates_round_up_to_the_next_second() {
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(
            RetryAfter::Date(t).to_string(),
            "Thu, 01 Jan 1970 00:00:02 GMT"
        );
    }

    #[test]
    fn jitter_is_bounded() {
        let base = secs(30);
        let max = Duration::from_secs(5);
        assert_eq!(base.with_jitter_from(max, 0.0), secs(30));
        assert_eq!(base.with_jitter_from(max, 1.0), secs(35));
        assert_eq!(base.with_jitter_from(max, 7.0), secs(35));
        assert_eq!(base.with_jitter_from(max, -1.0), secs(30));
        assert_eq!(base.with_jitter_from(max, f64::NAN), secs(30));
        let top = RetryAfter::Delay(RetryAfter::MAX_DELAY);
        assert_eq!(top.with_jitter_from(max, 1.0), top);
    }

    proptest! {
        #[test]
        fn no_string_panics(s in ".*") {
            let _ = s.parse::<RetryAfter>();
        }

        #[test]
        fn no_header_bytes_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                if let Ok(ra) = RetryAfter::from_header_value(&v) {
                    // Whatever parses also formats.
                    let _ = ra.to_header_value();
                }
            }
        }

        #[test]
        fn delay_round_trips(n in 0u64..=(1u64 << 31)) {
            let ra = secs(n);
            prop_assert_eq!(ra.to_string().parse::<RetryAfter>().unwrap(), ra);
            prop_assert_eq!(RetryAfter::from_header_value(&ra.to_header_value()).unwrap(), ra);
        }

        #[test]
        fn date_round_trips(s in 0u64..=MAX_HTTP_DATE_SECS) {
            let ra = RetryAfter::Date(UNIX_EPOCH + Duration::from_secs(s));
            prop_assert_eq!(ra.to_string().parse::<RetryAfter>().unwrap(), ra);
        }

        #[test]
        fn jitter_stays_in_bounds(ms in 0u64..1_000_000_000, extra_ms in 0u64..100_000) {
            let max = Duration::from_millis(extra_ms);
            let base = Duration::from_millis(ms);
            let whole = Duration::from_secs(delay_secs_rounded_up(base));
            let whole_max = Duration::from_secs(delay_secs_rounded_up(max));
            match RetryAfter::Delay(base).with_jitter(max) {
                RetryAfter::Delay(d) => {
                    prop_assert!(d >= whole && d <= whole + whole_max);
                    prop_assert_eq!(d.subsec_nanos(), 0, "whole seconds, as on the wire");
                }
                RetryAfter::Date(_) => prop_assert!(false, "jitter changed the form"),
            }
        }

        #[test]
        fn emission_is_at_least_one_second_and_bounded(
            base_ms in 0u64..10_000_000, min_ms in 0u64..5_000, extra in 0u64..100_000,
            jitter_ms in 0u64..10_000,
        ) {
            let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(min_ms + extra));
            let jitter = Duration::from_millis(jitter_ms);
            let RetryAfter::Delay(d) =
                RetryAfter::for_emission(Duration::from_millis(base_ms), min, max, jitter)
            else {
                unreachable!()
            };
            prop_assert!(d >= Duration::from_secs(1));
            let top = Duration::from_secs(delay_secs_rounded_up(max)).max(Duration::from_secs(1))
                .max(Duration::from_secs(delay_secs_rounded_up(min)))
                + Duration::from_secs(delay_secs_rounded_up(jitter));
            prop_assert!(d <= top, "{d:?} > {top:?}");
        }

        #[test]
        fn digits_never_exceed_max(s in "[0-9]{1,60}") {
            match s.parse::<RetryAfter>().unwrap() {
                RetryAfter::Delay(d) => prop_assert!(d <= RetryAfter::MAX_DELAY),
                RetryAfter::Date(_) => prop_assert!(false, "digits parsed as a date"),
            }
        }
    }
}
