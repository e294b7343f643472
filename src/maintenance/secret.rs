//! Secrets (the admin token, a bypass header's value) compared in constant time, their length
//! included.

use std::fmt;

use subtle::ConstantTimeEq;

/// The longest secret accepted, in bytes. Every comparison covers this many bytes, whatever the
/// secret's length: a random token needs 32 to 64.
pub(crate) const MAX_SECRET_LEN: usize = 256;

/// A secret, kept zero-padded to [`MAX_SECRET_LEN`] bytes with its length beside.
///
/// [`matches`](Self::matches) takes a time that depends only on the length of the value it is
/// given (the caller's own), never on the secret: neither its bytes nor its length. A plain
/// `ct_eq` of the two slices (`subtle`'s, as before) returns at once when the lengths differ,
/// so a caller could time the secret's length.
#[derive(Clone)]
pub(crate) struct Secret {
    padded: Box<[u8; MAX_SECRET_LEN]>,
    len: u64,
}

impl Secret {
    /// The secret `bytes`; `None` if they are longer than [`MAX_SECRET_LEN`].
    pub(crate) fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_SECRET_LEN {
            return None;
        }
        let mut padded = Box::new([0; MAX_SECRET_LEN]);
        padded[..bytes.len()].copy_from_slice(bytes);
        Some(Self {
            padded,
            len: bytes.len() as u64,
        })
    }

    /// Whether `presented` is the secret, byte for byte.
    ///
    /// What the time taken depends on: a value up to [`MAX_SECRET_LEN`] bytes is copied into a
    /// zeroed buffer of that size (time: its own length), then all [`MAX_SECRET_LEN`] bytes of
    /// both buffers and the two lengths are compared with `subtle`, with no branch or early
    /// exit on either. A longer value is refused without comparing: that tells its sender only
    /// that the secret is not that long, which the limit says anyway. The padding cannot make
    /// two values equal: the lengths are compared too (`"ab"` is not `"ab\0"`). As with any
    /// use of `subtle`, this is best effort against the optimizer, not a proof.
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        if presented.len() > MAX_SECRET_LEN {
            return false;
        }
        let mut buf = [0; MAX_SECRET_LEN];
        buf[..presented.len()].copy_from_slice(presented);
        let same_bytes = buf[..].ct_eq(&self.padded[..]);
        let same_len = (presented.len() as u64).ct_eq(&self.len);
        bool::from(same_bytes & same_len)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret, nor its length.
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_matches_itself_only() {
        let secret = Secret::new(b"s3cret").unwrap();
        assert!(secret.matches(b"s3cret"));
        for other in [
            &b"s3crex"[..],
            b"S3CRET",
            b"",
            b"s3cre",
            b"s",
            b"s3cret2",
            b"s3cret\0",
            b"s3cret\0\0",
            b"\0s3cret",
            b"xs3cret",
        ] {
            assert!(!secret.matches(other), "{other:?}");
        }
        assert!(!secret.matches(&[b'a'; MAX_SECRET_LEN + 1]));
    }

    #[test]
    fn a_secret_of_the_largest_size_matches_and_a_larger_one_is_refused() {
        let longest = [b'k'; MAX_SECRET_LEN];
        let secret = Secret::new(&longest).unwrap();
        assert!(secret.matches(&longest));
        assert!(!secret.matches(&longest[..MAX_SECRET_LEN - 1]));
        let mut last_differs = longest;
        last_differs[MAX_SECRET_LEN - 1] = b'j';
        assert!(!secret.matches(&last_differs));
        let mut longer = longest.to_vec();
        longer.push(b'k');
        assert!(!secret.matches(&longer));
        assert!(Secret::new(&longer).is_none());
        // A secret of zero bytes is refused by the callers; as a value it matches only "".
        let empty = Secret::new(b"").unwrap();
        assert!(empty.matches(b""));
        assert!(!empty.matches(b"\0"));
    }

    #[test]
    fn debug_shows_nothing_of_the_secret() {
        assert_eq!(
            format!("{:?}", Secret::new(b"s3cret").unwrap()),
            "Secret(..)"
        );
    }
}
