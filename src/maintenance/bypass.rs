//! Who gets through while maintenance is on: path prefixes, a secret header, client IPs (with
//! trusted proxies), and a user predicate.

use std::{
    borrow::Cow,
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::{
    header::{HeaderName, FORWARDED},
    Extensions, HeaderMap, Method, Request, Uri,
};
use ipnet::IpNet;

use crate::telemetry::BypassRule;
use subtle::ConstantTimeEq;

/// `X-Forwarded-For`.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The header your trusted proxies write the client address into; the only one the layer reads.
///
/// Set it with [`MaintenanceLayer::forwarded_header`](super::MaintenanceLayer::forwarded_header).
/// It matters only for requests from a [trusted proxy](super::MaintenanceLayer::trusted_proxy).
///
/// Name the header your proxies **write**, and only that one. Most proxies (nginx's
/// `$proxy_add_x_forwarded_for`, AWS ALB, Envoy, HAProxy's `option forwardfor`) append to
/// `X-Forwarded-For` and pass any other header from the client through untouched: were the layer
/// to read `Forwarded` too, a client could write its own `Forwarded: for=<allowed address>` and
/// be believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: <client>, <proxy1>, ...` (the default: what most proxies write).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=<client>, for=<proxy1>` (RFC 7239), for proxies configured to write it
    /// (and to remove or append to what the client sent).
    Forwarded,
}

/// How the layer finds the peer (TCP) address of a request in its extensions.
pub(crate) type PeerFn = fn(&Extensions) -> Option<IpAddr>;

/// The built-in peer lookup: a [`SocketAddr`] in the extensions (insert it yourself with plain
/// hyper) or, with the `axum` feature, axum's `ConnectInfo<SocketAddr>`.
pub(crate) fn default_peer(ext: &Extensions) -> Option<IpAddr> {
    if let Some(addr) = ext.get::<SocketAddr>() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(info) = ext.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    None
}

/// A request as a bypass [predicate](super::MaintenanceLayer::bypass_if) sees it.
#[derive(Debug)]
pub struct BypassRequest<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) extensions: &'a Extensions,
    pub(crate) rules: &'a Bypass,
}

impl<'a> BypassRequest<'a> {
    pub(crate) fn new<B>(req: &'a Request<B>, rules: &'a Bypass) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
            rules,
        }
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        self.method
    }

    /// The request URI.
    pub fn uri(&self) -> &Uri {
        self.uri
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        self.headers
    }

    /// The request extensions.
    pub fn extensions(&self) -> &Extensions {
        self.extensions
    }

    /// The client's IP address as the layer determines it: the peer address, or, when the peer is
    /// a [trusted proxy](super::MaintenanceLayer::trusted_proxy), the address that proxy reports
    /// in the [configured header](super::MaintenanceLayer::forwarded_header). `None` if unknown.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.rules.client_ip(self)
    }
}

/// A user predicate.
pub(crate) type Predicate = Arc<dyn Fn(&BypassRequest<'_>) -> bool + Send + Sync>;

/// The bypass rules of a layer.
#[derive(Clone)]
pub(crate) struct Bypass {
    pub(crate) paths: Vec<Box<str>>,
    pub(crate) headers: Vec<(HeaderName, Box<[u8]>)>,
    pub(crate) allow: Vec<IpNet>,
    pub(crate) trusted: Vec<IpNet>,
    pub(crate) forwarded_header: ForwardedHeader,
    pub(crate) peer: PeerFn,
    pub(crate) predicates: Vec<Predicate>,
}

impl Default for Bypass {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            headers: Vec::new(),
            allow: Vec::new(),
            trusted: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            peer: default_peer,
            predicates: Vec::new(),
        }
    }
}

impl fmt::Debug for Bypass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bypass")
            .field("paths", &self.paths)
            // Never print the secrets.
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("allow", &self.allow)
            .field("trusted", &self.trusted)
            .field("forwarded_header", &self.forwarded_header)
            .field("predicates", &self.predicates.len())
            .finish()
    }
}

impl Bypass {
    /// Adds a path prefix, normalised as request paths are (a prefix that cannot be normalised
    /// is kept as given: no normalised path contains what made it ambiguous).
    pub(crate) fn add_path(&mut self, prefix: &str) {
        let prefix = match normalize_path(prefix) {
            Some(normal) => normal.into_owned(),
            None => prefix.to_owned(),
        };
        self.paths.push(prefix.into_boxed_str());
    }

    /// Whether the request may pass while maintenance is on.
    /// The rule that lets `req` through, if one does.
    pub(crate) fn matches<B>(&self, req: &Request<B>) -> Option<BypassRule> {
        if !self.paths.is_empty() {
            // An ambiguous path passes by no prefix.
            if let Some(path) = normalize_path(req.uri().path()) {
                if self.paths.iter().any(|p| path_has_prefix(&path, p)) {
                    return Some(BypassRule::Path);
                }
            }
        }
        if self.headers.iter().any(|(name, secret)| {
            req.headers()
                .get_all(name)
                .iter()
                .any(|v| bool::from(v.as_bytes().ct_eq(secret)))
        }) {
            return Some(BypassRule::Header);
        }
        if self.allow.is_empty() && self.predicates.is_empty() {
            return None;
        }
        let view = BypassRequest::new(req, self);
        if !self.allow.is_empty() {
            if let Some(ip) = self.client_ip(&view) {
                if self.allow.iter().any(|net| net.contains(&ip)) {
                    return Some(BypassRule::Ip);
                }
            }
        }
        self.predicates
            .iter()
            .any(|p| p(&view))
            .then_some(BypassRule::Predicate)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    fn client_ip(&self, req: &BypassRequest<'_>) -> Option<IpAddr> {
        let peer = (self.peer)(req.extensions)?.to_canonical();
        if !self.is_trusted(peer) {
            // Headers from an untrusted peer are whatever the client wants them to be.
            return Some(peer);
        }
        forwarded_client(req.headers, self.forwarded_header, peer, |ip| {
            self.is_trusted(ip)
        })
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

/// [`normalize_path`] and [`forwarded_client`] for the fuzz targets (`crate::__fuzz`).
#[cfg(fuzzing)]
pub(crate) mod fuzz {
    use super::*;

    pub(crate) fn normalize_path(path: &str) -> Option<String> {
        super::normalize_path(path).map(Cow::into_owned)
    }

    pub(crate) fn path_has_prefix(path: &str, prefix: &str) -> bool {
        super::path_has_prefix(path, prefix)
    }

    pub(crate) fn forwarded_client(
        headers: &HeaderMap,
        forwarded: bool,
        peer: IpAddr,
        trusted: impl Fn(IpAddr) -> bool,
    ) -> Option<IpAddr> {
        let which = if forwarded {
            ForwardedHeader::Forwarded
        } else {
            ForwardedHeader::XForwardedFor
        };
        super::forwarded_client(headers, which, peer, trusted)
    }

    pub(crate) fn parse_node(node: &str) -> Option<IpAddr> {
        super::parse_node(node)
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

/// The client address reported by a chain of trusted proxies.
///
/// Reads `which` header only (the other one is whatever the client sent: proxies pass it through)
/// and walks the hops right to left (nearest proxy first), skipping trusted proxies: the first
/// untrusted hop is the client. Returns `peer` when there is no such header (the proxy itself is
/// the client), `None` when a hop cannot be read (obfuscated, `unknown`, garbage: the client is
/// unknown), and the leftmost hop when every hop is trusted.
fn forwarded_client(
    headers: &HeaderMap,
    which: ForwardedHeader,
    peer: IpAddr,
    trusted: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    let mut hops: Vec<&str> = Vec::new();
    if which == ForwardedHeader::Forwarded {
        for value in headers.get_all(FORWARDED) {
            let Ok(value) = value.to_str() else {
                return None;
            };
            for element in value.split(',') {
                let node = element.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| value.trim().trim_matches('"'))
                });
                match node {
                    Some(node) => hops.push(node),
                    // An element without `for=` says nothing about the client: unknown.
                    None => return None,
                }
            }
        }
    } else {
        for value in headers.get_all(X_FORWARDED_FOR) {
            let Ok(value) = value.to_str() else {
                return None;
            };
            hops.extend(value.split(',').map(str::trim));
        }
    }
    if hops.is_empty() {
        return Some(peer);
    }
    let mut leftmost = None;
    for hop in hops.iter().rev() {
        // An unreadable hop: the client is unknown.
        let ip = parse_node(hop)?;
        if !trusted(ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:8080`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    node.strip_prefix('[')?
        .strip_suffix(']')?
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;
    const FWD: ForwardedHeader = ForwardedHeader::Forwarded;

    fn trusted_10(ip: IpAddr) -> bool {
        "10.0.0.0/8".parse::<IpNet>().unwrap().contains(&ip)
    }

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

    fn bypasses(uri: &str) -> bool {
        let mut rules = Bypass::default();
        rules.add_path("/healthz");
        rules.add_path("/static/");
        rules
            .matches(&Request::get(uri).body(()).unwrap())
            .is_some()
    }

    #[test]
    fn bypass_paths_match_the_normalised_path() {
        for legit in [
            "/healthz",
            "/healthz/live",
            "/healthz?x=1",
            "/healthz/./live",
            "/static/app.js",
            "/static/css/../app.js",
            "http://host/healthz",
        ] {
            assert!(bypasses(legit), "{legit}");
        }
        for attack in [
            "/healthz/..",
            "/healthz/../admin",
            "/healthz/%2e%2e/admin",
            "/healthz/..%2fadmin",
            "/healthz/..;/admin",
            "/static/../../admin/maintenance",
            "/static/..",
            "http://host/healthz/../admin",
            "/healthzz",
            "/",
        ] {
            assert!(!bypasses(attack), "{attack}");
        }
    }

    #[test]
    fn nodes() {
        assert_eq!(parse_node("192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("192.0.2.1:80"), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("::ffff:192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("unknown"), None);
        assert_eq!(parse_node("_hidden"), None);
        assert_eq!(parse_node(""), None);
    }

    #[test]
    fn xff_right_to_left_skipping_trusted() {
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.2, 10.0.0.5")]);
        assert_eq!(
            forwarded_client(&h, XFF, ip("10.0.0.1"), trusted_10),
            Some(ip("198.51.100.2"))
        );
        // Split over two fields, in order.
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.7, 10.0.0.5"),
        ]);
        assert_eq!(
            forwarded_client(&h, XFF, ip("10.0.0.1"), trusted_10),
            Some(ip("203.0.113.9"))
        );
        // All trusted: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2")]);
        assert_eq!(
            forwarded_client(&h, XFF, ip("10.0.0.1"), trusted_10),
            Some(ip("10.0.0.1"))
        );
        // Garbage nearest to us: unknown.
        let h = headers(&[("x-forwarded-for", "203.0.113.9, nonsense")]);
        assert_eq!(forwarded_client(&h, XFF, ip("10.0.0.1"), trusted_10), None);
        assert_eq!(
            forwarded_client(&HeaderMap::new(), XFF, ip("10.9.9.9"), trusted_10),
            Some(ip("10.9.9.9"))
        );
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let h = headers(&[
            ("x-forwarded-for", "192.0.2.200"),
            (
                "forwarded",
                "for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\"",
            ),
        ]);
        assert_eq!(
            forwarded_client(&h, FWD, ip("10.0.0.1"), trusted_10),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(
            forwarded_client(&h, XFF, ip("10.0.0.1"), trusted_10),
            Some(ip("192.0.2.200"))
        );
        // The header that is not configured is ignored even when it is the only one.
        let h = headers(&[("forwarded", "for=192.0.2.60")]);
        assert_eq!(
            forwarded_client(&h, XFF, ip("10.0.0.1"), trusted_10),
            Some(ip("10.0.0.1"))
        );
        let h = headers(&[("x-forwarded-for", "192.0.2.60")]);
        assert_eq!(
            forwarded_client(&h, FWD, ip("10.0.0.1"), trusted_10),
            Some(ip("10.0.0.1"))
        );
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(forwarded_client(&h, FWD, ip("10.0.0.1"), trusted_10), None);
        let h = headers(&[("forwarded", "proto=https")]);
        assert_eq!(forwarded_client(&h, FWD, ip("10.0.0.1"), trusted_10), None);
    }
}
