use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    future::ResponseFuture,
    limiter::{Permit, Shared},
    AllNormal, Prioritize, Priority, ShedHandle, ShedLayer,
};
use crate::telemetry::ShedCause;

/// Middleware that sheds load with 503 + `Retry-After`. Made by [`ShedLayer`]; see the
/// [module docs](super).
#[must_use]
pub struct Shed<S, P = AllNormal> {
    inner: S,
    shared: Arc<Shared>,
    priority: P,
}

impl<S> Shed<S, AllNormal> {
    /// Wraps `inner` with the default settings of [`ShedLayer::new`] (and state of its own).
    pub fn new(inner: S) -> Self {
        ShedLayer::new().layer(inner)
    }
}

impl<S, P> Shed<S, P> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared>, priority: P) -> Self {
        Self {
            inner,
            shared,
            priority,
        }
    }

    /// A handle on the shared limit and queue.
    pub fn handle(&self) -> ShedHandle {
        ShedHandle {
            shared: self.shared.clone(),
        }
    }

    inner_service_accessors!();
}

impl<S: Clone, P: Clone> Clone for Shed<S, P> {
    fn clone(&self) -> Self {
        Self::from_parts(
            self.inner.clone(),
            self.shared.clone(),
            self.priority.clone(),
        )
    }
}

impl<S: fmt::Debug, P> fmt::Debug for Shed<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shed")
            .field("inner", &self.inner)
            .field("limit", &self.shared.limit())
            .field("in_flight", &self.shared.in_flight())
            .field("queued", &self.shared.queued())
            .finish_non_exhaustive()
    }
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for Shed<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    P: Prioritize<ReqBody>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, Request<ReqBody>, ResBody>;

    /// Waits for the inner service only. The shedding decision is made in `call`, so the layer
    /// works where readiness is not propagated (axum routes are always ready).
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Not inlined. Inlined into its caller (an axum route boxes the future it returns), the
    // two ways out (the running future built here, the waiting or shed one from the cold
    // path) kept LLVM from merging the future's stack slots, and every request paid one more
    // copy of the whole future: about 65 instructions with an axum route's 320-byte future,
    // more than the call costs (`scripts/server-bench.sh`).
    #[inline(never)]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let priority = self.priority.priority(&req);
        let (permit, start) = if priority == Priority::Exempt {
            (None, None)
        } else if let Some(busy) = self.shared.try_acquire_fast() {
            // Made before calling the inner service: if `call` panics, unwinding gives it back.
            let permit = Permit::taken(self.shared.clone());
            (Some(permit), self.shared.sample(busy).then(Instant::now))
        } else {
            return self.wait_or_shed(req, priority);
        };
        ResponseFuture::running(self.inner.call(req), permit, start)
    }
}

impl<S, P> Shed<S, P> {
    /// No free permit: the request joins the queue, or is shed if the queue is full.
    #[cold]
    #[inline(never)]
    fn wait_or_shed<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
        priority: Priority,
    ) -> ResponseFuture<S::Future, S, Request<ReqBody>, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
        ResBody: From<Bytes>,
    {
        if let Some(ticket) = self.shared.enqueue(priority) {
            // The ready service goes with the request; a clone takes its place here and is made
            // ready by the next `poll_ready` (as tower's `Buffer` and axum do).
            let clone = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, clone);
            return ResponseFuture::waiting(ticket, ready, req);
        }
        let cause = if priority == Priority::Low {
            ShedCause::LowPriority
        } else {
            ShedCause::QueueFull
        };
        ResponseFuture::shed(self.shared.refuse(&req, cause))
    }
}
