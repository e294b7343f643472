//! The admin router's `PUT` body.
//!
//! Input: the body. It is read at two instants: in 2026, and ten days before the end of the
//! year 9999 (where an `until` is a few days from the last HTTP-date).
//!
//! Properties: no panic; an accepted notice asks for at most 30 days (its own `retry_after`,
//! its `until`, and the `Retry-After` the maintenance layer sends for it); an `until` is in the
//! future; its end can be written as an HTTP-date.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use tower_5xx::{__fuzz as f, maintenance::SystemClock};

const THIRTY_DAYS: Duration = Duration::from_secs(30 * 24 * 3600);

fn check(body: &[u8], now: SystemTime) {
    let Ok(notice) = f::admin_notice(body, now) else {
        return;
    };
    if let Some(d) = notice.get_retry_after() {
        assert!(d <= THIRTY_DAYS, "{d:?}");
    }
    if let Some(end) = notice.ends_at(&SystemClock) {
        assert!(end > now, "{end:?} not after {now:?}");
        assert!(end <= now + THIRTY_DAYS, "{end:?}");
        let _ = f::fmt_http_date_clamped(end);
    }
    let sent = f::maintenance_retry_after(&notice, now);
    assert!(sent.delay_from(now) <= f::MAX_RETRY_AFTER, "{sent:?}");
    let _ = sent.to_header_value();
}

fuzz_target!(|data: &[u8]| {
    check(data, UNIX_EPOCH + Duration::from_secs(1_780_000_000));
    check(
        data,
        f::latest_http_date() - Duration::from_secs(10 * 24 * 3600),
    );
});
