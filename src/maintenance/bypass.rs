//! Who gets through while maintenance is on: path prefixes, a secret header, client IPs (with
//! trusted proxies), and a user predicate.

use std::{fmt, sync::Arc};

use super::secret::Secret;
pub use crate::client_ip::{ClientRequest, ForwardedHeader};
use crate::{client_ip::ClientIpRules, path_prefix::PathPrefixes, telemetry::BypassRule};
use http::{header::HeaderName, Request};
use ipnet::IpNet;

/// A user predicate.
pub(crate) type Predicate = Arc<dyn Fn(&ClientRequest<'_>) -> bool + Send + Sync>;

/// The bypass rules of a layer.
#[derive(Clone, Default)]
pub(crate) struct Bypass {
    pub(crate) paths: PathPrefixes,
    pub(crate) headers: Vec<(HeaderName, Secret)>,
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
                .any(|v| secret.matches(v.as_bytes()))
        }) {
            return Some(BypassRule::Header);
        }
        if self.allow.is_empty() && self.predicates.is_empty() {
            return None;
        }
        let view = ClientRequest::new(req, &self.ip);
        if !self.allow.is_empty() {
            if let Some(ip) = view.client_ip() {
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
    fn a_bypass_header_matches_its_exact_value_only() {
        let name = HeaderName::from_static("x-maintenance-bypass");
        let mut rules = Bypass::default();
        rules
            .headers
            .push((name.clone(), Secret::new(b"0p3r4t0r").unwrap()));
        let passes = |value: &'static str| {
            let req = Request::get("/").header(&name, value).body(()).unwrap();
            rules.matches(&req).is_some()
        };
        assert!(passes("0p3r4t0r"));
        for other in ["", "0p3r4t0", "0p3r4t0r2", "0P3R4T0R", "x0p3r4t0r"] {
            assert!(!passes(other), "{other:?}");
        }
        assert!(rules
            .matches(&Request::get("/").body(()).unwrap())
            .is_none());
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
