use std::{
    convert::Infallible,
    fmt,
    panic::{catch_unwind, AssertUnwindSafe},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::{
    future::{Failure, Pending, RequestParts, ResponseFuture},
    layer::Config,
    CatchBody, CatchLayer, Classify, DefaultClassifier,
};
use crate::{refuse::Refuser, BoxError, ResponseBody};

/// Middleware that turns its inner service's errors and panics into responses. Made by
/// [`CatchLayer`]; see the [module docs](super).
#[must_use]
pub struct Catch<S, C = DefaultClassifier> {
    inner: S,
    classifier: C,
    config: Config,
    refusal: Refuser,
    /// An error or panic from `poll_ready`, answered by the next `call`, or logged when the
    /// service is dropped first.
    pending: Option<Box<Pending<C>>>,
}

impl<S> Catch<S, DefaultClassifier> {
    /// Wraps `inner` with the default settings of [`CatchLayer::new`].
    pub fn new(inner: S) -> Self {
        let layer = CatchLayer::new();
        Self::from_parts(inner, layer.classifier, layer.refusal)
    }
}

impl<S, C> Catch<S, C> {
    pub(crate) fn from_parts(inner: S, classifier: C, refusal: Refuser) -> Self {
        Self {
            inner,
            classifier,
            config: Config {
                negotiate: refusal.policy().negotiates(),
            },
            refusal,
            pending: None,
        }
    }

    inner_service_accessors!();
}

// A clone starts without the failure its original may be holding for its next call.
impl<S: Clone, C: Clone> Clone for Catch<S, C> {
    fn clone(&self) -> Self {
        Self::from_parts(
            self.inner.clone(),
            self.classifier.clone(),
            self.refusal.clone(),
        )
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for Catch<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catch")
            .field("inner", &self.inner)
            .field("classifier", &self.classifier)
            .field("refusal", &self.refusal)
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for Catch<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
    C: Classify,
{
    type Response = Response<ResponseBody<CatchBody<ResBody>>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.pending.is_some() {
            return Poll::Ready(Ok(()));
        }
        // An error or panic here cannot be returned (the error type is Infallible): keep it and
        // answer the next request with it, without calling the inner service.
        match catch_unwind(AssertUnwindSafe(|| self.inner.poll_ready(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            Ok(Poll::Ready(Err(e))) => {
                self.pending = Some(Pending::new(
                    Failure::Error(e.into()),
                    &self.refusal,
                    &self.classifier,
                ));
                Poll::Ready(Ok(()))
            }
            Err(panic) => {
                self.pending = Some(Pending::new(
                    Failure::panic(panic),
                    &self.refusal,
                    &self.classifier,
                ));
                Poll::Ready(Ok(()))
            }
        }
    }

    // Not inlined: inlined into axum's wrappers, the call costs a copy of the whole response
    // future more (about 70 instructions per request in `scripts/server-bench.sh`).
    #[inline(never)]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let parts = RequestParts::new(&req, self.config.negotiate);
        if let Some(pending) = self.pending.take() {
            return ResponseFuture::failed(
                pending,
                parts,
                self.classifier.clone(),
                self.refusal.clone(),
            );
        }
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => ResponseFuture::running(
                future,
                parts,
                self.classifier.clone(),
                self.refusal.clone(),
            ),
            Err(panic) => ResponseFuture::failed(
                Pending::new(Failure::panic(panic), &self.refusal, &self.classifier),
                parts,
                self.classifier.clone(),
                self.refusal.clone(),
            ),
        }
    }
}
