//! The key of a client circuit breaker: one canonical form of an origin for every client.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

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
/// - for the schemes the WHATWG URL standard calls special (`http`, `https`, `ws`, `wss`,
///   `ftp`, `file`), a host that is an IPv4 address in any of its numeric spellings (`127.1`,
///   `2130706433`, `0x7f.0.0.1`, `0177.0.0.1`) is written dotted (`127.0.0.1`), as reqwest's URL
///   parser writes it; a host that is not one (`1.2.3.4.5`, `example.123`) is left as it is;
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
        let v4 = match scheme.as_str() {
            "http" | "https" | "ws" | "wss" | "ftp" | "file" if v6.is_none() => whatwg_ipv4(host),
            _ => None,
        };
        let mut key = String::with_capacity(scheme.len() + host.len() + 9);
        key.push_str(&scheme);
        key.push_str("://");
        match (v6, v4) {
            (Some(addr), _) => {
                use fmt::Write;
                let _ = write!(key, "[{addr}]");
            }
            (None, Some(addr)) => {
                use fmt::Write;
                let _ = write!(key, "{addr}");
            }
            (None, None) => key.extend(host.chars().map(|c| c.to_ascii_lowercase())),
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

/// The WHATWG URL standard's IPv4 parser (section 3.5, "IPv4 parser"), which reqwest's `url`
/// applies to the host of a special URL: up to four parts split on `.` (one trailing `.`
/// ignored), each decimal, `0x` hexadecimal or `0` octal (an empty number after the prefix is
/// 0); every part but the last is one byte, the last fills the bytes left. `None` when `host` is
/// not such an address: `url` then rejects the URL whole if its last part is a number
/// (`1.2.3.4.5`, `example.123`, `256.0.0.1`), and keeps it as a domain otherwise.
fn whatwg_ipv4(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let mut numbers = [0u32; 4];
    let mut count = 0;
    for part in host.split('.') {
        *numbers.get_mut(count)? = whatwg_ipv4_number(part)?;
        count += 1;
    }
    let (last, leading) = numbers[..count].split_last()?;
    // The last part fills the `4 - leading.len()` bytes the others leave.
    if u64::from(*last) >= 1u64 << (8 * (4 - leading.len())) {
        return None;
    }
    let mut address = *last;
    for (i, n) in leading.iter().enumerate() {
        if *n > 255 {
            return None;
        }
        address += n << (8 * (3 - i));
    }
    Some(Ipv4Addr::from(address))
}

/// One part of an IPv4 host (WHATWG "IPv4 number parser"); `None` when it is not a number or
/// does not fit 32 bits (too large to be any part of an address).
fn whatwg_ipv4_number(part: &str) -> Option<u32> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        return Some(0);
    }
    // `from_str_radix` alone would take a leading `+`.
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
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
            ("http://127.1:3000", "http://127.0.0.1:3000"),
            ("http://2130706433/", "http://127.0.0.1:80"),
            ("http://0x7f.0.0.1/", "http://127.0.0.1:80"),
            ("http://0X7F.0.0.1/", "http://127.0.0.1:80"),
            ("http://0177.0.0.1/", "http://127.0.0.1:80"),
            ("http://127.0.0.1./", "http://127.0.0.1:80"),
            ("http://10.0x10203/", "http://10.1.2.3:80"),
            ("http://0x/", "http://0.0.0.0:80"),
            ("https://192.168.1/", "https://192.168.0.1:443"),
            // Not IPv4 addresses (reqwest's parser refuses these URLs): left as they are.
            ("http://1.2.3.4.5/", "http://1.2.3.4.5:80"),
            ("http://example.123/", "http://example.123:80"),
            ("http://256.0.0.1/", "http://256.0.0.1:80"),
            ("http://1.16777216/", "http://1.16777216:80"),
            ("http://4294967296/", "http://4294967296:80"),
            ("http://0x100000000/", "http://0x100000000:80"),
            ("http://08.0.0.1/", "http://08.0.0.1:80"),
            ("http://1..2/", "http://1..2:80"),
            // Only special schemes have IPv4 hosts; another scheme's host is opaque text.
            ("foo://127.1:9", "foo://127.1:9"),
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

    /// Numeric IPv4 spellings: `http::Uri` keeps them as text, reqwest's URL parser writes
    /// them dotted; both give the one dotted origin. The hosts that are not IPv4 addresses but
    /// end in a number are URLs reqwest refuses, so there is no second key to disagree with.
    #[cfg(feature = "reqwest-middleware")]
    #[test]
    fn numeric_ipv4_spellings_give_hyper_and_reqwest_one_origin() {
        for url in [
            "http://127.1:3000/",
            "http://2130706433:3000/",
            "http://0x7f.0.0.1:3000/",
            "http://0X7F.0.0.1:3000/",
            "http://0177.0.0.1:3000/",
            "http://0x7f000001:3000/",
            "http://127.0.0.1.:3000/",
            "http://127.0.1:3000/",
            "http://0x7f.1:3000/",
        ] {
            let hyper = Origin::from_uri(&url.parse().unwrap());
            let reqwest = Origin::from_url(&reqwest::Url::parse(url).unwrap());
            assert_eq!(
                hyper.as_ref().map(Origin::as_str),
                Some("http://127.0.0.1:3000"),
                "{url}"
            );
            assert_eq!(hyper, reqwest, "{url}: one endpoint, two breakers");
        }
        for url in [
            "http://1.2.3.4.5/",
            "http://example.123/",
            "http://256.0.0.1/",
            "http://1.16777216/",
            "http://4294967296/",
            "http://08.0.0.1/",
            "http://1..2/",
        ] {
            assert!(reqwest::Url::parse(url).is_err(), "{url}");
            assert!(url.parse::<Uri>().is_ok(), "{url}");
        }
        // Not a number at the end: a domain on both sides.
        let url = "http://123.example/";
        let hyper = Origin::from_uri(&url.parse().unwrap());
        let reqwest = Origin::from_url(&reqwest::Url::parse(url).unwrap());
        assert_eq!(
            hyper.as_ref().map(Origin::as_str),
            Some("http://123.example:80")
        );
        assert_eq!(hyper, reqwest);
    }
}
