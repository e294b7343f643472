//! Path prefixes matched against the path as the application will understand it: the one
//! implementation behind the maintenance bypass paths and the rate limiter's exempt paths.

use std::borrow::Cow;

/// A set of path prefixes, each normalised as request paths are.
#[derive(Debug, Clone, Default)]
pub(crate) struct PathPrefixes {
    prefixes: Vec<Box<str>>,
}

impl PathPrefixes {
    /// Adds a prefix (a leading `/` is added when missing), normalised as request paths are (a
    /// prefix that cannot be normalised is kept as given: no normalised path contains what made
    /// it ambiguous).
    pub(crate) fn add(&mut self, prefix: &str) {
        self.prefixes
            .push(normalize_prefix(prefix).into_boxed_str());
    }

    /// Whether `path` (as received) is one of the prefixes or below one. An ambiguous path
    /// matches no prefix.
    pub(crate) fn matches(&self, path: &str) -> bool {
        if self.prefixes.is_empty() {
            return false;
        }
        match normalize_path(path) {
            Some(path) => self.prefixes.iter().any(|p| path_has_prefix(&path, p)),
            None => false,
        }
    }
}

/// Whether `prefix`, added to a [`PathPrefixes`], would match every path: it is empty or
/// normalises to `/` (`"/"`, `"/x/.."`).
pub(crate) fn matches_every_path(prefix: &str) -> bool {
    normalize_prefix(prefix) == "/"
}

/// `prefix` with a leading `/` (added when missing), normalised as request paths are (a prefix
/// that cannot be normalised is kept as given: no normalised path contains what made it
/// ambiguous).
fn normalize_prefix(prefix: &str) -> String {
    let owned;
    let prefix = if prefix.starts_with('/') {
        prefix
    } else {
        owned = format!("/{prefix}");
        &owned
    };
    match normalize_path(prefix) {
        Some(normal) => normal.into_owned(),
        None => prefix.to_owned(),
    }
}

/// The path as the application will understand it, for matching bypass prefixes: escapes of
/// unreserved characters decoded (`%2e` is `.`, RFC 3986 §2.3), other escapes kept with
/// uppercase hex (§6.2.2.1), dot-segments removed (§5.2.4), so that `/healthz/../admin` is
/// `/admin`.
///
/// `None` for a path that servers and frameworks read in different ways, which must not pass
/// by any prefix: an encoded `/` or `\` (`..%2fadmin` is one segment to some, two to others), a
/// raw `\` (a separator to some), a bad escape, a dot-segment with parameters (`..;`, which
/// some servers read as `..`).
fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    let bytes = path.as_bytes();
    if !bytes.contains(&b'%') && !bytes.contains(&b'\\') && !path.contains("/.") {
        // Nothing to decode, no dot-segment: the common case, without allocating.
        return Some(Cow::Borrowed(path));
    }
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return None,
            b'%' => {
                let (hi, lo) = match bytes.get(i + 1..i + 3)? {
                    &[hi, lo] if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => (hi, lo),
                    _ => return None,
                };
                let value = |digit: u8| (digit as char).to_digit(16).unwrap_or(0) as u8;
                match value(hi) << 4 | value(lo) {
                    b'/' | b'\\' => return None,
                    b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                        decoded.push(char::from(b));
                    }
                    _ => {
                        decoded.push('%');
                        decoded.push(char::from(hi.to_ascii_uppercase()));
                        decoded.push(char::from(lo.to_ascii_uppercase()));
                    }
                }
                i += 3;
            }
            _ => {
                // Copy the run up to the next byte of interest (keeps UTF-8 whole).
                let end = bytes[i..]
                    .iter()
                    .position(|&b| b == b'%' || b == b'\\')
                    .map_or(bytes.len(), |n| i + n);
                decoded.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    let Some(rest) = decoded.strip_prefix('/') else {
        // Not an absolute path (`*`, empty): no prefix matches it anyway.
        return Some(Cow::Owned(decoded));
    };
    let mut out: Vec<&str> = Vec::new();
    let mut ends_in_dots = false;
    for segment in rest.split('/') {
        ends_in_dots = false;
        match segment {
            "." => ends_in_dots = true,
            ".." => {
                out.pop();
                ends_in_dots = true;
            }
            s if s.starts_with(".;") || s.starts_with("..;") => return None,
            s => out.push(s),
        }
    }
    if ends_in_dots {
        // `/a/b/..` is `/a/`, `/a/.` is `/a/`.
        out.push("");
    }
    let mut normal = String::with_capacity(decoded.len());
    for segment in out {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    Some(Cow::Owned(normal))
}

/// [`normalize_path`] and [`path_has_prefix`] for the fuzz targets (`crate::__fuzz`).
#[cfg(fuzzing)]
pub(crate) mod fuzz {
    pub(crate) fn normalize_path(path: &str) -> Option<String> {
        super::normalize_path(path).map(std::borrow::Cow::into_owned)
    }

    pub(crate) fn path_has_prefix(path: &str, prefix: &str) -> bool {
        super::path_has_prefix(path, prefix)
    }
}

/// `path` is `prefix` or below it, on a segment boundary (`/healthz` matches `/healthz` and
/// `/healthz/ready`, not `/healthzz`).
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(path_has_prefix("/healthz", "/healthz"));
        assert!(path_has_prefix("/healthz/ready", "/healthz"));
        assert!(!path_has_prefix("/healthzz", "/healthz"));
        assert!(!path_has_prefix("/", "/healthz"));
        assert!(path_has_prefix("/static/app.js", "/static/"));
        assert!(path_has_prefix("/anything", "/"));
    }

    #[test]
    fn prefixes_that_match_every_path_are_recognised() {
        for every in ["", "/", "/x/..", "x/..", "/./", "/%2e%2e", "/a/%2E%2E/"] {
            assert!(matches_every_path(every), "{every:?}");
        }
        for some in ["/healthz", "healthz", "/static/", "//", "/x/../y"] {
            assert!(!matches_every_path(some), "{some:?}");
        }
    }

    #[test]
    fn paths_are_normalised() {
        let n = |p: &str| normalize_path(p).map(Cow::into_owned);
        let some = |p: &str| Some(p.to_owned());
        // Untouched (and not copied).
        assert!(matches!(
            normalize_path("/healthz/live"),
            Some(Cow::Borrowed(_))
        ));
        assert_eq!(n("/"), some("/"));
        // Dot-segments (RFC 3986 §5.2.4 examples, made absolute).
        assert_eq!(n("/a/b/c/./../../g"), some("/a/g"));
        assert_eq!(n("/mid/content=5/../6"), some("/mid/6"));
        assert_eq!(n("/healthz/.."), some("/"));
        assert_eq!(n("/healthz/../admin"), some("/admin"));
        assert_eq!(n("/a/b/.."), some("/a/"));
        assert_eq!(n("/a/."), some("/a/"));
        assert_eq!(n("/.."), some("/"));
        assert_eq!(n("/../../x"), some("/x"));
        assert_eq!(
            n("/static/../../admin/maintenance"),
            some("/admin/maintenance")
        );
        assert_eq!(n("/.well-known/x"), some("/.well-known/x"));
        assert_eq!(n("/a/...b/..c"), some("/a/...b/..c"));
        // Escapes of unreserved characters are decoded, then dot-segments removed.
        assert_eq!(n("/healthz/%2e%2e/admin"), some("/admin"));
        assert_eq!(n("/healthz/%2E./admin"), some("/admin"));
        assert_eq!(n("/%68ealth%7A"), some("/healthz"));
        // Other escapes stay, in uppercase.
        assert_eq!(n("/a%20b/%c3%a9"), some("/a%20b/%C3%A9"));
        // Ambiguous: never normalised, never bypassed.
        for ambiguous in [
            "/healthz/..%2fadmin",
            "/healthz%2F..%2Fadmin",
            "/healthz/..%5cadmin",
            "/healthz/..\\admin",
            "/healthz/..;/admin",
            "/healthz/.;x/admin",
            "/healthz/%2e%2e;/admin",
            "/healthz/%zz",
            "/healthz/%2",
            "/healthz/%+1",
        ] {
            assert_eq!(n(ambiguous), None, "{ambiguous}");
        }
    }

    #[test]
    fn prefixes_are_normalised_and_get_their_slash() {
        let mut set = PathPrefixes::default();
        assert!(!set.matches("/healthz"));
        set.add("healthz");
        set.add("/static/./x/../");
        assert!(set.matches("/healthz/live"));
        assert!(set.matches("/static/app.js"));
        assert!(!set.matches("/healthz/../admin"));
        assert!(!set.matches("/healthz/..%2fadmin"));
    }
}
