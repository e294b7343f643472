//! Who gets through while maintenance is on: path prefixes, a secret header, client IPs (with
//! trusted proxies), and a user predicate.

use std::{fmt, net::IpAddr, sync::Arc};

use http::{header::HeaderName, Extensions, HeaderMap, Method, Request, Uri};
use ipnet::IpNet;
use subtle::ConstantTimeEq;

pub use crate::client_ip::ForwardedHeader;
use crate::{client_ip::ClientIpRules, path_prefix::PathPrefixes, telemetry::BypassRule};

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
#[derive(Clone, Default)]
pub(crate) struct Bypass {
    pub(crate) paths: PathPrefixes,
    pub(crate) headers: Vec<(HeaderName, Box<[u8]>)>,
    pub(crate) allow: Vec<IpNet>,
    pub(crate) ip: ClientIpRules,
    pub(crate) predicates: Vec<Predicate>,
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
            .field("trusted", &self.ip.trusted)
            .field("forwarded_header", &self.ip.forwarded_header)
            .field("predicates", &self.predicates.len())
            .finish()
    }
}

impl Bypass {
    /// Adds a path prefix, normalised as request paths are.
    pub(crate) fn add_path(&mut self, prefix: &str) {
        self.paths.add(prefix);
    }

    /// Whether the request may pass while maintenance is on.
    /// The rule that lets `req` through, if one does.
    pub(crate) fn matches<B>(&self, req: &Request<B>) -> Option<BypassRule> {
        // An ambiguous path passes by no prefix.
        if self.paths.matches(req.uri().path()) {
            return Some(BypassRule::Path);
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

    fn client_ip(&self, req: &BypassRequest<'_>) -> Option<IpAddr> {
        self.ip.client_ip(req.headers, req.extensions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
