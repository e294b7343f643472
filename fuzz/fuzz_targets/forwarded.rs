//! The client address behind trusted proxies (`X-Forwarded-For`, `Forwarded`), and the nodes
//! proxies write.
//!
//! Input: one flag byte (bit 0: `Forwarded` instead of `X-Forwarded-For`; bit 1: an IPv6
//! peer), then header values separated by `\n`. Trusted proxies: `10.0.0.0/8` and `fd00::/8`.
//!
//! Properties: no panic; every node read round-trips through its own formatting (bare, and in
//! the bracketed and port forms); an answer is a canonical address; for `X-Forwarded-For`, the
//! answer is exactly what walking the hops right to left gives (the first untrusted hop, `None`
//! at an unreadable one the walk reaches, the leftmost when all are trusted, the peer when there
//! are none); hops left of the first untrusted one are never read.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tower_5xx::__fuzz as f;

fn trusted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 10,
        IpAddr::V6(v6) => v6.octets()[0] == 0xfd,
    }
}

fn check_node(node: &str) {
    let Some(ip) = f::parse_node(node) else {
        return;
    };
    assert_eq!(ip, ip.to_canonical(), "{node:?}");
    assert_eq!(f::parse_node(&ip.to_string()), Some(ip), "{node:?}");
    let with_port = match ip {
        IpAddr::V4(v4) => format!("{v4}:8080"),
        IpAddr::V6(v6) => format!("[{v6}]:8080"),
    };
    assert_eq!(f::parse_node(&with_port), Some(ip), "{node:?}");
    if let IpAddr::V6(v6) = ip {
        assert_eq!(f::parse_node(&format!("[{v6}]")), Some(ip), "{node:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let forwarded = flags & 1 == 1;
    let peer = if flags & 2 == 2 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
    };
    let name = HeaderName::from_static(if forwarded {
        "forwarded"
    } else {
        "x-forwarded-for"
    });
    let mut headers = HeaderMap::new();
    for value in rest.split(|&b| b == b'\n') {
        if let Ok(text) = std::str::from_utf8(value) {
            check_node(text);
            for hop in text.split(',') {
                check_node(hop.trim());
            }
        }
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name.clone(), value);
        }
    }
    let client = f::forwarded_client(&headers, forwarded, peer, trusted);
    if let Some(ip) = client {
        assert_eq!(ip, ip.to_canonical());
    }
    if forwarded {
        return;
    }
    // The reference walk for X-Forwarded-For: every hop in order, then right to left, each read
    // only when reached.
    let expected = (|| {
        let mut hops: Vec<&[u8]> = Vec::new();
        for value in headers.get_all(&name) {
            hops.extend(value.as_bytes().split(|&b| b == b','));
        }
        if hops.is_empty() {
            return Some(peer);
        }
        let mut leftmost = None;
        for hop in hops.iter().rev() {
            let ip = f::parse_node(std::str::from_utf8(hop).ok()?.trim())?;
            if !trusted(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
        leftmost
    })();
    assert_eq!(client, expected, "{headers:?}");
});
