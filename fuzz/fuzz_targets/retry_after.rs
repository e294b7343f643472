//! `Retry-After` parsing, as the crate reads it and as the retry client acts on it.
//!
//! Input: one byte picking the client's `retry_after_cap` (0 to 1785 s), then a `Retry-After`
//! value, optionally followed by `\n` and a `Date` value.
//!
//! Properties: no panic; a delay parses to whole seconds within `RetryAfter::MAX_DELAY`; a date
//! within 1970..=9999; both forms round-trip through their formatting; the client's wait never
//! exceeds `RetryAfter::MAX_DELAY`; a retry is never scheduled later than the cap (or the
//! backoff's own 10 s maximum) allows, nor earlier than the server asked.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tower_5xx::__fuzz::{self as f, RetryAfter};

/// The default backoff's longest delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

fuzz_target!(|data: &[u8]| {
    let Some((&cap, rest)) = data.split_first() else {
        return;
    };
    let cap = Duration::from_secs(u64::from(cap) * 7);
    let (value, date) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };

    if let Ok(text) = std::str::from_utf8(value) {
        match text.parse::<RetryAfter>() {
            Ok(RetryAfter::Delay(d)) => {
                assert!(d <= RetryAfter::MAX_DELAY, "{text:?} -> {d:?}");
                assert_eq!(d.subsec_nanos(), 0);
                let again: RetryAfter = RetryAfter::Delay(d).to_string().parse().unwrap();
                assert_eq!(again, RetryAfter::Delay(d), "{text:?}");
            }
            Ok(RetryAfter::Date(t)) => {
                assert!(t >= UNIX_EPOCH && t <= f::latest_http_date(), "{text:?}");
                let written = RetryAfter::Date(t).to_string();
                let again: RetryAfter = written.parse().unwrap();
                assert_eq!(again, RetryAfter::Date(t), "{text:?} -> {written:?}");
                let _ = RetryAfter::Date(t).to_header_value();
            }
            Err(_) => {}
        }
    }

    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::RETRY_AFTER, value);
    let mut dated = false;
    if let Some(date) = date.and_then(|d| HeaderValue::from_bytes(d).ok()) {
        dated = date
            .to_str()
            .ok()
            .is_some_and(|d| httpdate::parse_http_date(d).is_ok());
        headers.insert(header::DATE, date);
    }
    let wait = f::server_wait(&headers);
    if let Some(wait) = wait {
        assert!(wait <= RetryAfter::MAX_DELAY, "{wait:?}");
    }
    if let Some(delay) = f::retry_delay(cap, &headers) {
        assert!(
            delay <= cap.max(BACKOFF_MAX),
            "{delay:?} over the cap {cap:?}"
        );
        // Without a `Date`, a date form is read against the clock, which moves between the
        // two readings; with one, or for delta-seconds, the wait is exact.
        let delta = headers[header::RETRY_AFTER]
            .to_str()
            .is_ok_and(|s| matches!(s.parse(), Ok(RetryAfter::Delay(_))));
        if let (Some(wait), true) = (wait, dated || delta) {
            assert!(
                delay >= wait,
                "{delay:?} earlier than the server's {wait:?}"
            );
        }
    }
});
