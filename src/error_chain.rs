//! Walking an error's `source()` chain: the one walker the crate uses to classify, log and
//! inspect errors.

use std::error::Error;

/// How many errors of a chain are looked at (and logged), the error itself included. Real
/// chains are a handful of errors deep; the bound keeps a buggy, cyclic `source()` from hanging a
/// request.
pub(crate) const MAX_DEPTH: usize = 32;

/// `error`, then its source, its source's source, and so on: outermost first, at most
/// [`MAX_DEPTH`] errors.
pub(crate) fn sources<'a>(
    error: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |&e| e.source()).take(MAX_DEPTH)
}

/// An error whose source is itself: the cycle a buggy `source()` can build (for tests).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Cyclic;

#[cfg(test)]
impl std::fmt::Display for Cyclic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cyclic")
    }
}

#[cfg(test)]
impl Error for Cyclic {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&Cyclic)
    }
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    #[derive(Debug)]
    struct Wrap(std::io::Error);

    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrap")
        }
    }

    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cyclic_chain_stops_at_the_bound() {
        assert_eq!(sources(&Cyclic).count(), MAX_DEPTH);
        assert!(sources(&Cyclic).all(|e| e.is::<Cyclic>()));
    }

    #[test]
    fn yields_the_error_then_its_sources_outermost_first() {
        let e = Wrap(std::io::Error::other("root"));
        let chain: Vec<String> = sources(&e).map(ToString::to_string).collect();
        assert_eq!(chain, ["wrap", "root"]);
        let plain = std::io::Error::other("alone");
        assert_eq!(sources(&plain).count(), 1);
    }
}
