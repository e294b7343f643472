//! A maintenance sentinel file's content.
//!
//! Input: the file's bytes (at most what the poller reads, 4 KiB).
//!
//! Properties: no panic; a notice read from a file never makes the maintenance layer send a
//! `Retry-After` over 30 days, read in 2026 or at the end of the year 9999; its end can be
//! written as an HTTP-date; its message has no surrounding whitespace; a notice with a
//! `Retry-After` and a message round-trips through the file format.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use tower_5xx::{
    __fuzz as f,
    maintenance::{FileState, SystemClock},
};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(f::SENTINEL_MAX_LEN as usize)];
    let FileState::Present(notice) = f::parse_sentinel(data) else {
        return;
    };
    for now in [
        UNIX_EPOCH + Duration::from_secs(1_780_000_000),
        f::latest_http_date() - Duration::from_secs(1),
    ] {
        let sent = f::maintenance_retry_after(&notice, now);
        assert!(sent.delay_from(now) <= f::MAX_RETRY_AFTER, "{sent:?}");
        let _ = sent.to_header_value();
    }
    if let Some(end) = notice.ends_at(&SystemClock) {
        let _ = f::fmt_http_date_clamped(end);
    }
    if let Some(message) = notice.get_message() {
        assert_eq!(message, message.trim());
        assert!(!message.is_empty());
        if let Some(d) = notice.get_retry_after() {
            let file = format!("{}\n{message}\n", d.as_secs());
            assert_eq!(
                f::parse_sentinel(file.as_bytes()),
                FileState::Present(notice.clone()),
                "{file:?}"
            );
        }
    }
});
