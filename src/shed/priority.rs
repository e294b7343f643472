//! Which requests may be shed, and which first.

use http::Request;

/// How a request is treated by [`ShedLayer`](super::ShedLayer) when the service is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Priority {
    /// Never shed, never queued, not counted against the limit: health checks, readiness
    /// probes, admin endpoints. A load balancer that sees its health check shed takes a busy
    /// instance out of rotation and makes the overload worse.
    Exempt,
    /// The default: takes a free permit, or waits in the queue while it has room.
    #[default]
    Normal,
    /// Shed first: may only use the low-priority share of the queue
    /// ([`ShedBuilder::low_priority_queue`](super::ShedBuilder::low_priority_queue)), so under
    /// pressure it is refused while normal requests still wait for a permit.
    Low,
}

/// Decides the [`Priority`] of each request.
///
/// Implemented for every `Fn(&Request<B>) -> Priority` closure, and by [`AllNormal`], the
/// default. See [`ShedLayer::priority`](super::ShedLayer::priority).
pub trait Prioritize<B> {
    /// The priority of this request.
    fn priority(&self, request: &Request<B>) -> Priority;
}

impl<B, F> Prioritize<B> for F
where
    F: Fn(&Request<B>) -> Priority,
{
    #[inline]
    fn priority(&self, request: &Request<B>) -> Priority {
        self(request)
    }
}

/// The default [`Prioritize`]: every request is [`Priority::Normal`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AllNormal;

impl<B> Prioritize<B> for AllNormal {
    #[inline]
    fn priority(&self, _request: &Request<B>) -> Priority {
        Priority::Normal
    }
}

/// A [`Prioritize`] that exempts requests whose path is one of a fixed list (exact match), such
/// as `/healthz` and `/readyz`, and treats the rest as [`Priority::Normal`].
///
/// ```
/// use tower_5xx::shed::{ExemptPaths, ShedLayer};
///
/// let layer = ShedLayer::new().priority(ExemptPaths::new(["/healthz", "/readyz"]));
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct ExemptPaths {
    paths: std::sync::Arc<[Box<str>]>,
}

impl ExemptPaths {
    /// Exempts these exact paths.
    pub fn new<I, P>(paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        Self {
            paths: paths
                .into_iter()
                .map(|p| p.into().into_boxed_str())
                .collect(),
        }
    }
}

impl<B> Prioritize<B> for ExemptPaths {
    fn priority(&self, request: &Request<B>) -> Priority {
        let path = request.uri().path();
        if self.paths.iter().any(|p| &**p == path) {
            Priority::Exempt
        } else {
            Priority::Normal
        }
    }
}
