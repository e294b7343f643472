//! Entry points for the fuzz targets in `fuzz/`, compiled only under `--cfg fuzzing` (which
//! cargo-fuzz sets, and `fuzz/replay.sh` too). Not part of the API: it reaches private parsers
//! so that the public surface stays as it is.

#[cfg(feature = "maintenance")]
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

#[cfg(any(feature = "retry", feature = "maintenance"))]
use http::HeaderMap;

pub use crate::retry_after::RetryAfter;

/// The latest instant an HTTP-date can name: 9999-12-31 23:59:59 UTC.
pub fn latest_http_date() -> SystemTime {
    crate::retry_after::latest_http_date()
}

/// `t` as an IMF-fixdate, clamped into 1970..=9999.
pub fn fmt_http_date_clamped(t: SystemTime) -> String {
    crate::retry_after::fmt_http_date_clamped(t)
}

/// The retry client's reading of a 503's `Retry-After` (against its `Date`, if any).
#[cfg(feature = "retry")]
pub fn server_wait(headers: &HeaderMap) -> Option<Duration> {
    crate::retry::server_wait(http::StatusCode::SERVICE_UNAVAILABLE, headers)
}

/// The delay the retry policy (default backoff, `cap` as its `retry_after_cap`) waits after a
/// `GET` answered 503 with `headers`; `None` when it gives up.
#[cfg(feature = "retry")]
pub fn retry_delay(cap: Duration, headers: &HeaderMap) -> Option<Duration> {
    crate::retry::fuzz_retry_delay(cap, headers)
}

/// The path as bypass prefixes are matched against it; `None` for an ambiguous path.
#[cfg(feature = "maintenance")]
pub fn normalize_path(path: &str) -> Option<String> {
    crate::path_prefix::fuzz::normalize_path(path)
}

/// Whether `path` is `prefix` or below it, on a segment boundary.
#[cfg(feature = "maintenance")]
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    crate::path_prefix::fuzz::path_has_prefix(path, prefix)
}

/// The client address behind trusted proxies, from `Forwarded` (`forwarded`) or
/// `X-Forwarded-For`.
#[cfg(feature = "maintenance")]
pub fn forwarded_client(
    headers: &HeaderMap,
    forwarded: bool,
    peer: IpAddr,
    trusted: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    crate::client_ip::fuzz::forwarded_client(headers, forwarded, peer, trusted)
}

/// One node of a forwarding header as an address.
#[cfg(feature = "maintenance")]
pub fn parse_node(node: &str) -> Option<IpAddr> {
    crate::client_ip::fuzz::parse_node(node)
}

/// The most bytes of a sentinel file read.
#[cfg(feature = "maintenance")]
pub const SENTINEL_MAX_LEN: u64 = crate::maintenance::file_fuzz::MAX_LEN;

/// A sentinel file's content as the poller reads it.
#[cfg(feature = "maintenance")]
pub fn parse_sentinel(bytes: &[u8]) -> crate::maintenance::FileState {
    crate::maintenance::file_fuzz::parse(bytes)
}

/// The `Retry-After` a maintenance layer (refusal policy without jitter) sends for `notice` at
/// `now`.
#[cfg(feature = "maintenance")]
pub fn maintenance_retry_after(
    notice: &crate::maintenance::MaintenanceNotice,
    now: SystemTime,
) -> RetryAfter {
    let policy = crate::refuse::RefusalPolicy::builder()
        .retry_after_jitter(Duration::ZERO)
        .build()
        .expect("a policy without jitter is valid");
    let layer =
        crate::maintenance::MaintenanceLayer::new(crate::maintenance::MaintenanceSwitch::new())
            .refusal(policy);
    layer.config.retry_after(notice, now)
}

/// The longest `Retry-After` any refusing layer sends.
#[cfg(feature = "maintenance")]
pub const MAX_RETRY_AFTER: Duration = crate::refuse::MAX_RETRY_AFTER;

/// The notice the admin router's `PUT` makes of `body` at `now`, or the detail of its 400.
#[cfg(all(feature = "maintenance", feature = "axum"))]
pub fn admin_notice(
    body: &[u8],
    now: SystemTime,
) -> Result<crate::maintenance::MaintenanceNotice, String> {
    crate::maintenance::admin::notice_from_body(body, now)
}
