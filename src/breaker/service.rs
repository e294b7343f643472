use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower_service::Service;

use super::{
    error::CircuitOpen, future::ResponseFuture, BreakerLayer, CircuitBreaker,
    DefaultOutcomeClassifier, OutcomeClassifier,
};
use crate::{
    refuse::{RefusalPolicy, RequestView},
    Reason, RetryAfter,
};

/// Middleware that guards its inner service with a circuit breaker. Made by
/// [`BreakerLayer`](super::BreakerLayer); see the [module docs](super).
///
/// The breaker decides in `call`, not in `poll_ready`, so the layer works on a single axum
/// route too (axum routes are always ready).
#[derive(Debug)]
#[must_use]
pub struct Breaker<S, C = DefaultOutcomeClassifier> {
    pub(crate) inner: S,
    // One `Arc` for everything but the inner service: axum clones the service for every
    // request, and each `Arc` costs a count up and down.
    pub(crate) shared: Arc<Shared<C>>,
}

/// What the services of one [`BreakerLayer`] share.
#[derive(Debug)]
pub(crate) struct Shared<C> {
    pub(crate) breaker: CircuitBreaker,
    pub(crate) classifier: C,
    pub(crate) refusal: RefusalPolicy,
}

impl<S: Clone, C> Clone for Breaker<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> Breaker<S, DefaultOutcomeClassifier> {
    /// Wraps `inner` with `breaker` and the default settings of [`BreakerLayer::new`].
    pub fn new(inner: S, breaker: CircuitBreaker) -> Self {
        tower_layer::Layer::layer(&BreakerLayer::new(breaker), inner)
    }
}

impl<S, C> Breaker<S, C> {
    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.shared.breaker
    }

    inner_service_accessors!();
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for Breaker<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    C: OutcomeClassifier<ResBody, S::Error>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Not inlined: inlined into axum's wrappers, the call costs a copy of the whole response
    // future more (about 70 instructions per request in `scripts/server-bench.sh`).
    #[inline(never)]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        // The closed breaker's permit without the general acquire's `Result`, which is moved
        // around whole (about 30 instructions per request).
        let permit = match shared.breaker.try_acquire_closed() {
            Some(permit) => permit,
            None => match shared.breaker.try_acquire() {
                Ok(permit) => permit,
                Err(open) => return refuse(shared, &open, &req),
            },
        };
        ResponseFuture::running(self.inner.call(req), permit, shared.classifier.clone())
    }
}

/// The refusal of an open breaker. The base wait is its remaining open time; the policy bounds
/// and jitters it.
#[cold]
#[inline(never)]
fn refuse<F, C: Clone, B: From<Bytes>, ReqBody>(
    shared: &Shared<C>,
    open: &CircuitOpen,
    req: &Request<ReqBody>,
) -> ResponseFuture<F, C, B> {
    let response: Response<B> = shared.refusal.respond(
        &shared.breaker.inner.metrics.meter,
        StatusCode::SERVICE_UNAVAILABLE,
        Reason::CircuitOpen,
        Some(RetryAfter::Delay(open.retry_after())),
        None,
        Some(&open.state()),
        RequestView::of(req),
        std::time::SystemTime::now,
    );
    ResponseFuture::rejected(response, shared.classifier.clone())
}
