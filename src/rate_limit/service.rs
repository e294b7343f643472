use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use super::{future::ResponseFuture, layer::Shared, RateLimitLayer};

/// Middleware that answers 429 beyond each client's quotas. Made by [`RateLimitLayer`]; see
/// the [module docs](super).
#[must_use]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RateLimit<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The layer this service was made by (a handle on its shared state).
    pub fn layer(&self) -> RateLimitLayer {
        RateLimitLayer {
            shared: self.shared.clone(),
        }
    }

    inner_service_accessors!();
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        Self::from_shared(self.inner.clone(), self.shared.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("layer", &self.shared)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, Request<ReqBody>, ResBody>;

    /// Waits for the inner service only: the decision is made in `call` (axum routes are
    /// always ready).
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(never)]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        if shared.is_exempt(&req) {
            return ResponseFuture::inner(self.inner.call(req), None);
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = &shared.redis {
            let deciding = redis.decide(&self.shared, &shared.key_of(&req).key());
            // The ready service goes with the request; a clone takes its place here and is
            // made ready by the next `poll_ready` (as tower's `Buffer` does).
            let clone = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, clone);
            return ResponseFuture::deciding(deciding, ready, req, self.shared.clone());
        }
        let decision = shared.decide_in_memory(&shared.key_of(&req).key());
        if decision.admit {
            let fields = shared.within_quota_fields(&decision);
            ResponseFuture::inner(self.inner.call(req), fields)
        } else {
            ResponseFuture::refused(shared.too_many(&req, &decision))
        }
    }
}
