//! The client's IP address, the one way every layer of the crate reads it: the peer address of
//! the connection, or, when that peer is a trusted proxy, the address the proxy reports in the
//! one header it is configured to write. Used by the maintenance allow-list and by the rate
//! limiter's keys.

use std::net::{IpAddr, SocketAddr};

use http::{
    header::{HeaderName, FORWARDED},
    Extensions, HeaderMap, Method, Request, Uri,
};
use ipnet::{IpNet, Ipv4Net};

use crate::error::InvalidConfig;

/// `X-Forwarded-For`.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The header your trusted proxies write the client address into; the only one a layer reads.
///
/// It matters only for requests from a trusted proxy (`trusted_proxy` on
/// the maintenance and rate-limit layers).
///
/// Name the header your proxies **write**, and only that one. Most proxies (nginx's
/// `$proxy_add_x_forwarded_for`, AWS ALB, Envoy, HAProxy's `option forwardfor`) append to
/// `X-Forwarded-For` and pass any other header from the client through untouched: were a layer
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

/// A request as a user function sees it: a maintenance bypass predicate
/// (`MaintenanceLayer::bypass_if`) or a rate-limit key function (`RateLimitBuilder::key_fn`).
/// Borrowed parts of the request, and the client IP the layer would use.
#[derive(Debug)]
pub struct ClientRequest<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
    rules: &'a ClientIpRules,
}

impl<'a> ClientRequest<'a> {
    pub(crate) fn new<B>(req: &'a Request<B>, rules: &'a ClientIpRules) -> Self {
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

    /// The request extensions (where an authentication layer may have put the user).
    pub fn extensions(&self) -> &Extensions {
        self.extensions
    }

    /// The client's IP address as the layer determines it: the peer address, or, when the
    /// peer is one of the layer's trusted proxies (`trusted_proxy`), the address that proxy
    /// reports in its [`ForwardedHeader`]. `None` if unknown.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.rules.client_ip(self.headers, self.extensions)
    }
}

/// `net` truncated to its network, as the canonical addresses the layers compare with it: an
/// IPv4-mapped network (`::ffff:10.0.0.0/104`, as a dual-stack listener reports IPv4 peers) is
/// the IPv4 network it maps (`10.0.0.0/8`), since a peer or hop `::ffff:10.0.0.1` is read as
/// `10.0.0.1`. A mapped network shorter than /96 is no IPv4 network: an error naming `setting`.
pub(crate) fn canonical_net(net: IpNet, setting: &'static str) -> Result<IpNet, InvalidConfig> {
    if let IpNet::V6(v6) = net {
        // The address as written: truncating `::ffff:10.0.0.0/80` would drop what makes it mapped.
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            let len = v6.prefix_len().checked_sub(96).ok_or(InvalidConfig::new(
                setting,
                "an IPv4-mapped network (::ffff:a.b.c.d/n) must be /96 or longer",
            ))?;
            let v4 = Ipv4Net::new(v4, len).expect("a prefix of at most 128 - 96 bits");
            return Ok(IpNet::V4(v4.trunc()));
        }
    }
    Ok(net.trunc())
}

/// How a layer finds the peer (TCP) address of a request in its extensions.
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

/// The rules that find a request's client IP: trusted proxies, the header they write, and where
/// the peer address is.
#[derive(Debug, Clone)]
pub(crate) struct ClientIpRules {
    pub(crate) trusted: Vec<IpNet>,
    pub(crate) forwarded_header: ForwardedHeader,
    pub(crate) peer: PeerFn,
}

impl Default for ClientIpRules {
    fn default() -> Self {
        Self {
            trusted: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            peer: default_peer,
        }
    }
}

impl ClientIpRules {
    /// Trusts proxies in `net` (truncated to its network; an IPv4-mapped network as the IPv4
    /// network it maps, see [`canonical_net`]).
    pub(crate) fn trust(&mut self, net: IpNet) -> Result<(), InvalidConfig> {
        self.trusted.push(canonical_net(net, "trusted_proxy")?);
        Ok(())
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client IP of a request: the peer address, or what a trusted peer reports. `None`
    /// when there is no peer address or a trusted proxy's report cannot be read.
    pub(crate) fn client_ip(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<IpAddr> {
        let peer = (self.peer)(extensions)?.to_canonical();
        if !self.is_trusted(peer) {
            // Headers from an untrusted peer are whatever the client wants them to be.
            return Some(peer);
        }
        forwarded_client(headers, self.forwarded_header, peer, |ip| {
            self.is_trusted(ip)
        })
    }
}

/// [`forwarded_client`] and [`parse_node`] for the fuzz targets (`crate::__fuzz`).
#[cfg(fuzzing)]
pub(crate) mod fuzz {
    use std::net::IpAddr;

    use http::HeaderMap;

    use super::ForwardedHeader;

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

/// The client address reported by a chain of trusted proxies.
///
/// Reads `which` header only (the other one is whatever the client sent: proxies pass it through)
/// and walks the hops right to left (nearest proxy first: the last field line, then each line's
/// comma-separated hops from its end), skipping trusted proxies: the first untrusted hop is the
/// client. A hop is read only when the walk reaches it, so what the client itself wrote left of
/// its own address (junk, non-ASCII bytes, a `Forwarded` element without `for=`) is never looked
/// at. Returns `peer` when there is no such header (the proxy itself is the client), `None` when
/// a hop reached cannot be read (obfuscated, `unknown`, garbage, no `for=`: the client is
/// unknown), and the leftmost hop when every hop is trusted. Allocates nothing.
fn forwarded_client(
    headers: &HeaderMap,
    which: ForwardedHeader,
    peer: IpAddr,
    trusted: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    let name = match which {
        ForwardedHeader::XForwardedFor => &X_FORWARDED_FOR,
        ForwardedHeader::Forwarded => &FORWARDED,
    };
    let mut leftmost = None;
    for value in headers.get_all(name).iter().rev() {
        for hop in value.as_bytes().rsplit(|&b| b == b',') {
            // An unreadable hop: the client is unknown.
            let hop = std::str::from_utf8(hop).ok()?;
            let node = match which {
                ForwardedHeader::XForwardedFor => hop.trim(),
                ForwardedHeader::Forwarded => forwarded_for(hop)?,
            };
            let ip = parse_node(node)?;
            if !trusted(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
    }
    Some(leftmost.unwrap_or(peer))
}

/// The node of one `Forwarded` element's `for=` parameter (`for=192.0.2.60;proto=http`,
/// `For="[2001:db8::17]:4711"`), unquoted; `None` without one.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
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
    fn rules_believe_only_trusted_peers() {
        let mut rules = ClientIpRules::default();
        rules.trust("10.0.0.0/8".parse().unwrap()).unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        let mut ext = Extensions::new();
        assert_eq!(rules.client_ip(&h, &ext), None, "no peer address");
        ext.insert(SocketAddr::from(([10, 0, 0, 1], 1234)));
        assert_eq!(rules.client_ip(&h, &ext), Some(ip("203.0.113.9")));
        ext.insert(SocketAddr::from(([192, 0, 2, 7], 1234)));
        assert_eq!(rules.client_ip(&h, &ext), Some(ip("192.0.2.7")));
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

    #[test]
    fn only_the_hops_the_walk_reaches_are_read() {
        let junk = |name: &'static str, value: &[u8], more: &'static str| {
            let mut h = HeaderMap::new();
            h.append(name, HeaderValue::from_bytes(value).unwrap());
            h.append(name, HeaderValue::from_static(more));
            h
        };
        // What the client wrote left of its own address, in the same line or an earlier one.
        let h = junk(
            "x-forwarded-for",
            b"\xff, nonsense, 203.0.113.9",
            "10.0.0.5",
        );
        assert_eq!(
            forwarded_client(&h, XFF, ip("10.0.0.1"), trusted_10),
            Some(ip("203.0.113.9"))
        );
        let h = junk("x-forwarded-for", b"\xff", "203.0.113.9, 10.0.0.5");
        assert_eq!(
            forwarded_client(&h, XFF, ip("10.0.0.1"), trusted_10),
            Some(ip("203.0.113.9"))
        );
        let h = junk(
            "forwarded",
            b"proto=https, for=\xff",
            "for=203.0.113.9;proto=http",
        );
        assert_eq!(
            forwarded_client(&h, FWD, ip("10.0.0.1"), trusted_10),
            Some(ip("203.0.113.9"))
        );
        // Reached through trusted hops: unknown.
        let h = junk("x-forwarded-for", b"\xff", "10.0.0.7, 10.0.0.5");
        assert_eq!(forwarded_client(&h, XFF, ip("10.0.0.1"), trusted_10), None);
        let h = junk("forwarded", b"proto=https", "for=10.0.0.5");
        assert_eq!(forwarded_client(&h, FWD, ip("10.0.0.1"), trusted_10), None);
        // An empty line is a hop that cannot be read.
        let h = headers(&[("x-forwarded-for", "")]);
        assert_eq!(forwarded_client(&h, XFF, ip("10.0.0.1"), trusted_10), None);
    }

    #[test]
    fn ipv4_mapped_networks_are_their_ipv4_networks() {
        let net = |s: &str| canonical_net(s.parse().unwrap(), "trusted_proxy");
        assert_eq!(
            net("::ffff:10.1.2.3/104"),
            Ok("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            net("::ffff:10.1.2.3/128"),
            Ok("10.1.2.3/32".parse().unwrap())
        );
        assert_eq!(net("::ffff:0.0.0.0/96"), Ok("0.0.0.0/0".parse().unwrap()));
        assert_eq!(net("10.1.2.3/8"), Ok("10.0.0.0/8".parse().unwrap()));
        assert_eq!(net("2001:db8::1/32"), Ok("2001:db8::/32".parse().unwrap()));
        for short in [
            "::ffff:10.0.0.0/95",
            "::ffff:10.0.0.0/80",
            "::ffff:0.0.0.0/0",
        ] {
            assert_eq!(
                net(short).unwrap_err().setting(),
                "trusted_proxy",
                "{short}"
            );
        }
        let mut rules = ClientIpRules::default();
        rules.trust("::ffff:10.0.0.0/104".parse().unwrap()).unwrap();
        let mut ext = Extensions::new();
        ext.insert(SocketAddr::from((
            "::ffff:10.0.0.1".parse::<std::net::Ipv6Addr>().unwrap(),
            1234,
        )));
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(rules.client_ip(&h, &ext), Some(ip("203.0.113.9")));
    }
}
