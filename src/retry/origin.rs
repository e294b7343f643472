//! The key of a client circuit breaker: one canonical form of an origin for every client.

use std::{fmt, net::Ipv6Addr};

use http::Uri;

/// The endpoint a client circuit breaker is kept for: scheme, host and port, written one way
/// only, `http://example.com:80`.
///
/// [`RetryLayer::circuit_breakers`](super::RetryLayer::circuit_breakers) and
/// [`RetryMiddleware::circuit_breakers`](super::RetryMiddleware::circuit_breakers) key their
/// [`KeyedBreakers`](crate::breaker::KeyedBreakers) by it, so a registry shared by a hyper client
/// and a reqwest client keeps one breaker per endpoint, however each URL spells it:
///
/// - the scheme and the host are lowercased;
/// - the port is always written, the scheme's default filled in when the URL has none (80 for
///   `http` and `ws`, 443 for `https` and `wss`; a URL of another scheme without a port has none);
/// - an IPv6 literal is written in its shortest form, in brackets (`[::1]`);
/// - user info and the path are not part of it: credentials are not a key.
///
/// ```
/// use tower_5xx::retry::Origin;
///
/// let uri: http::Uri = "HTTP://User:Secret@API.Example.com/v1/items".parse().unwrap();
/// let origin = Origin::from_uri(&uri).unwrap();
/// assert_eq!(origin.as_str(), "http://api.example.com:80");
///
/// let same: http::Uri = "http://api.example.com:80/health".parse().unwrap();
/// assert_eq!(Origin::from_uri(&same), Some(origin));
///
/// // A request without a scheme and host has no origin (and gets no breaker).
/// assert_eq!(Origin::from_uri(&"/relative".parse().unwrap()), None);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin(Box<str>);

impl Origin {
    /// The origin of an absolute URI; `None` if it has no scheme or no host.
    pub fn from_uri(uri: &Uri) -> Option<Self> {
        Self::from_parts(uri.scheme_str()?, uri.host()?, uri.port_u16())
    }

    /// The origin of a reqwest URL; `None` if it has no host. The same URL as an
    /// [`http::Uri`] gives the same origin through [`Origin::from_uri`].
    #[cfg(feature = "reqwest-middleware")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
    pub fn from_url(url: &reqwest::Url) -> Option<Self> {
        Self::from_parts(url.scheme(), url.host_str()?, url.port())
    }

    /// The one function every client's key goes through.
    fn from_parts(scheme: &str, host: &str, port: Option<u16>) -> Option<Self> {
        if scheme.is_empty() || host.is_empty() {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        let port = port.or(match scheme.as_str() {
            "http" | "ws" => Some(80),
            "https" | "wss" => Some(443),
            _ => None,
        });
        let v6 = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| h.parse::<Ipv6Addr>().ok());
        let mut key = String::with_capacity(scheme.len() + host.len() + 9);
        key.push_str(&scheme);
        key.push_str("://");
        match v6 {
            Some(addr) => {
                use fmt::Write;
                let _ = write!(key, "[{addr}]");
            }
            None => key.extend(host.chars().map(|c| c.to_ascii_lowercase())),
        }
        if let Some(port) = port {
            use fmt::Write;
            let _ = write!(key, ":{port}");
        }
        Some(Self(key.into_boxed_str()))
    }

    /// The canonical form, `scheme://host:port`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// As a quoted string, like `http::HeaderName`: it also names each keyed breaker
/// (`"http://example.com:80"`).
impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str) -> String {
        Origin::from_uri(&uri.parse().unwrap()).unwrap().to_string()
    }

    #[test]
    fn canonical_form() {
        for (uri, expected) in [
            ("http://example.com", "http://example.com:80"),
            ("http://example.com:80/a?b", "http://example.com:80"),
            ("HTTP://EXAMPLE.com/", "http://example.com:80"),
            ("https://example.com", "https://example.com:443"),
            ("https://example.com:8443", "https://example.com:8443"),
            ("http://user:pw@example.com", "http://example.com:80"),
            ("http://[::1]/", "http://[::1]:80"),
            ("http://[0:0:0:0:0:0:0:1]:80", "http://[::1]:80"),
            ("http://[FE80::AB]:8080", "http://[fe80::ab]:8080"),
            ("ws://example.com", "ws://example.com:80"),
            ("wss://example.com", "wss://example.com:443"),
            ("ftp://example.com", "ftp://example.com"),
            ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
        ] {
            assert_eq!(key(uri), expected, "{uri}");
        }
        assert_eq!(Origin::from_uri(&"/path".parse().unwrap()), None);
        assert_eq!(Origin::from_uri(&"example.com:80".parse().unwrap()), None);
        assert_eq!(
            format!(
                "{:?}",
                Origin::from_uri(&"http://a".parse().unwrap()).unwrap()
            ),
            "\"http://a:80\""
        );
    }

    /// The hyper client's path (`http::Uri`) and the reqwest client's path (`reqwest::Url`)
    /// give one key for one endpoint, however the URL spells it.
    #[cfg(feature = "reqwest-middleware")]
    #[test]
    fn hyper_and_reqwest_agree() {
        let spellings = [
            "http://example.com/",
            "http://example.com:80/",
            "http://EXAMPLE.com/",
            "HTTP://Example.COM:80/x",
            "http://user:pw@example.com/",
            "https://example.com/",
            "https://Example.com:443/",
            "https://example.com:8443/",
            "http://[::1]/",
            "http://[::1]:80/",
            "http://[0:0::1]:8080/",
            "http://[FE80::AB]/",
            "http://127.0.0.1:3000/",
        ];
        for url in spellings {
            let hyper = Origin::from_uri(&url.parse().unwrap());
            let reqwest = Origin::from_url(&reqwest::Url::parse(url).unwrap());
            assert!(hyper.is_some(), "{url}");
            assert_eq!(hyper, reqwest, "{url}");
        }
        let a = Origin::from_uri(&"http://example.com".parse().unwrap());
        let b = Origin::from_url(&reqwest::Url::parse("http://Example.com:80").unwrap());
        assert_eq!(a, b);
    }
}
