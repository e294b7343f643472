//! Path normalisation for maintenance bypass prefixes.
//!
//! Input: a request path (tried as given, and as the path of a parsed request target).
//!
//! Properties: no panic; normalising is idempotent; a normalised absolute path is absolute and
//! has no dot-segment (`.` or `..`), no `\`, no encoded `/` or `\`, and only uppercase escapes
//! of reserved or non-ASCII bytes; a path under the `/healthz` prefix is `/healthz` or below
//! `/healthz/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_5xx::__fuzz as f;

fn check(path: &str) {
    let Some(normal) = f::normalize_path(path) else {
        return;
    };
    assert_eq!(
        f::normalize_path(&normal).as_deref(),
        Some(normal.as_str()),
        "not idempotent: {path:?} -> {normal:?}"
    );
    assert!(!normal.contains('\\'), "{path:?} -> {normal:?}");
    let bytes = normal.as_bytes();
    for (i, _) in normal.match_indices('%') {
        let hex = &bytes[i + 1..i + 3];
        assert!(
            hex.iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "{path:?} -> {normal:?}"
        );
        let byte = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(
            !(byte.is_ascii_alphanumeric() || b"-._~/\\".contains(&byte)),
            "an escape left undecoded, or an encoded separator: {path:?} -> {normal:?}"
        );
    }
    if path.starts_with('/') {
        assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
        assert!(
            normal.split('/').all(|s| s != "." && s != ".."),
            "a dot-segment left: {path:?} -> {normal:?}"
        );
    }
    if f::path_has_prefix(&normal, "/healthz") {
        assert!(
            normal == "/healthz" || normal.starts_with("/healthz/"),
            "{path:?} -> {normal:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        check(path);
    }
    if let Ok(uri) = http::Uri::try_from(data) {
        check(uri.path());
    }
});
