//! What a request is counted against: its client IP, a header's value, or what your function
//! says.

use std::{fmt, net::IpAddr, sync::Arc};

use http::{header::HeaderName, Request};

use crate::client_ip::{ClientIpRules, ClientRequest};

/// A key of your own, returned by a [`key_fn`](super::RateLimitBuilder::key_fn): a string,
/// bytes, a number or an IP address. Keys of different kinds never collide (`"1"` and `1`
/// are different keys).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateLimitKey(pub(crate) Repr);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Repr {
    Ip(IpAddr),
    Bytes(Box<[u8]>),
    Number(u64),
}

impl From<IpAddr> for RateLimitKey {
    fn from(ip: IpAddr) -> Self {
        Self(Repr::Ip(ip.to_canonical()))
    }
}

impl From<u64> for RateLimitKey {
    fn from(n: u64) -> Self {
        Self(Repr::Number(n))
    }
}

impl From<String> for RateLimitKey {
    fn from(s: String) -> Self {
        Self(Repr::Bytes(s.into_bytes().into_boxed_slice()))
    }
}

impl From<&str> for RateLimitKey {
    fn from(s: &str) -> Self {
        Self(Repr::Bytes(s.as_bytes().into()))
    }
}

impl From<Vec<u8>> for RateLimitKey {
    fn from(b: Vec<u8>) -> Self {
        Self(Repr::Bytes(b.into_boxed_slice()))
    }
}

impl From<&[u8]> for RateLimitKey {
    fn from(b: &[u8]) -> Self {
        Self(Repr::Bytes(b.into()))
    }
}

/// A user key function.
pub(crate) type KeyFn = Arc<dyn Fn(&ClientRequest<'_>) -> Option<RateLimitKey> + Send + Sync>;

/// Where the layer takes a request's key from.
#[derive(Clone, Default)]
pub(crate) enum KeySource {
    #[default]
    ClientIp,
    Header(HeaderName),
    Fn(KeyFn),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::ClientIp => f.write_str("ClientIp"),
            KeySource::Header(name) => f.debug_tuple("Header").field(name).finish(),
            KeySource::Fn(_) => f.write_str("Fn"),
        }
    }
}

/// A request's key, borrowed where it can be (no allocation for an IP or a header's value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key<'a> {
    Ip(IpAddr),
    Bytes(&'a [u8]),
    Number(u64),
    /// No key could be found (no peer address, an unreadable forwarded header, a missing API
    /// key header, a key function that said `None`): such requests share one quota.
    Missing,
}

impl<'a> Key<'a> {
    /// The key of `req`; a client IP is an IPv6 address's bits under `ipv6_mask`.
    pub(crate) fn of<B>(
        source: &KeySource,
        rules: &ClientIpRules,
        ipv6_mask: u128,
        req: &'a Request<B>,
    ) -> Owned<'a> {
        match source {
            KeySource::ClientIp => {
                Owned::Borrowed(match rules.client_ip(req.headers(), req.extensions()) {
                    Some(IpAddr::V6(ip)) => {
                        Key::Ip(IpAddr::V6((u128::from(ip) & ipv6_mask).into()))
                    }
                    Some(ip) => Key::Ip(ip),
                    None => Key::Missing,
                })
            }
            KeySource::Header(name) => Owned::Borrowed(match req.headers().get(name) {
                Some(v) => Key::Bytes(v.as_bytes()),
                None => Key::Missing,
            }),
            KeySource::Fn(f) => match f(&ClientRequest::new(req, rules)) {
                Some(key) => Owned::Owned(key),
                None => Owned::Borrowed(Key::Missing),
            },
        }
    }

    /// The key's 64-bit hash under the layer's secret seed.
    #[inline]
    pub(crate) fn hash_with(&self, seed: &Seed) -> u64 {
        match self {
            Key::Ip(IpAddr::V4(ip)) => seed.mix(0, u64::from(u32::from(*ip))),
            Key::Ip(IpAddr::V6(ip)) => {
                let n = u128::from(*ip);
                seed.mix(seed.mix(1, (n >> 64) as u64), n as u64)
            }
            Key::Bytes(b) => {
                let mut h = seed.mix(2, b.len() as u64);
                let mut chunks = b.chunks_exact(8);
                for chunk in &mut chunks {
                    h = seed.mix(h, u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
                }
                let mut last = [0u8; 8];
                last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
                seed.mix(h, u64::from_le_bytes(last))
            }
            Key::Number(n) => seed.mix(3, *n),
            Key::Missing => seed.mix(4, 0),
        }
    }

    /// The key as part of a Redis key: readable for IPs and numbers, the raw bytes otherwise
    /// (Redis keys are binary-safe).
    #[cfg(feature = "redis")]
    pub(crate) fn write_redis(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        match self {
            Key::Ip(ip) => {
                let _ = write!(out, "ip:{ip}");
            }
            Key::Bytes(b) => {
                out.extend_from_slice(b"k:");
                out.extend_from_slice(b);
            }
            Key::Number(n) => {
                let _ = write!(out, "n:{n}");
            }
            Key::Missing => out.extend_from_slice(b"missing"),
        }
    }
}

/// The secret seed of a layer's key hashes: random per layer, so that a client cannot choose
/// keys that collide in the in-memory map or land in one shard.
///
/// The hash folds each 64-bit word into the state with a full 64 x 64 -> 128-bit multiply by
/// secret constants (the "folded multiply" of foldhash and aHash's fallback): a few
/// instructions per word, against about 250 for `std`'s SipHash of an IP address, which was a
/// fifth of the layer's cost per request (see BENCHMARKS.md).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seed([u64; 2]);

impl Seed {
    /// A fresh random seed.
    pub(crate) fn random() -> Self {
        Self([fastrand::u64(..) | 1, fastrand::u64(..) | 1])
    }

    /// Folds `word` into `state`.
    #[inline]
    fn mix(&self, state: u64, word: u64) -> u64 {
        let x = u128::from(state ^ self.0[0]) * u128::from(word ^ self.0[1]);
        let folded = (x as u64) ^ ((x >> 64) as u64);
        // A final multiply so that the high bits (which pick the shard) depend on every bit.
        folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (folded >> 29)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_kinds_and_values_hash_apart() {
        let seed = Seed::random();
        let keys = [
            Key::Ip("192.0.2.1".parse().unwrap()),
            Key::Ip("192.0.2.2".parse().unwrap()),
            Key::Ip("2001:db8::1".parse().unwrap()),
            Key::Ip("2001:db8::2".parse().unwrap()),
            Key::Bytes(b""),
            Key::Bytes(b"a"),
            Key::Bytes(b"a\0"),
            Key::Bytes(b"abcdefgh"),
            Key::Bytes(b"abcdefghi"),
            Key::Number(0),
            Key::Number(1),
            Key::Missing,
        ];
        let hashes: std::collections::HashSet<u64> =
            keys.iter().map(|k| k.hash_with(&seed)).collect();
        assert_eq!(hashes.len(), keys.len());
        // Stable for one seed, different for another.
        assert_eq!(keys[0].hash_with(&seed), keys[0].hash_with(&seed));
        assert_ne!(keys[0].hash_with(&seed), keys[0].hash_with(&Seed::random()));
        // The shard bits (the top 6) spread over sequential addresses.
        let shards: std::collections::HashSet<u64> = (0..256u32)
            .map(|i| {
                Key::Ip(IpAddr::from((0xC000_0200u32 + i).to_be_bytes())).hash_with(&seed) >> 58
            })
            .collect();
        assert!(shards.len() > 48, "{}", shards.len());
    }
}

/// A key borrowed from the request, or one a key function made.
#[derive(Debug)]
pub(crate) enum Owned<'a> {
    Borrowed(Key<'a>),
    Owned(RateLimitKey),
}

impl Owned<'_> {
    pub(crate) fn key(&self) -> Key<'_> {
        match self {
            Owned::Borrowed(k) => k.clone(),
            Owned::Owned(RateLimitKey(Repr::Ip(ip))) => Key::Ip(*ip),
            Owned::Owned(RateLimitKey(Repr::Bytes(b))) => Key::Bytes(b),
            Owned::Owned(RateLimitKey(Repr::Number(n))) => Key::Number(*n),
        }
    }
}
