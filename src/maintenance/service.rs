use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use super::{layer::Config, MaintenanceLayer, MaintenanceSwitch, ResponseFuture};

/// Middleware that answers 503 with `Retry-After` while maintenance is on. Made by
/// [`MaintenanceLayer`]; see the [module docs](super).
#[derive(Clone)]
#[must_use]
pub struct Maintenance<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Maintenance<S> {
    /// Wraps `inner` with the defaults of [`MaintenanceLayer::new`].
    pub fn new(inner: S, switch: MaintenanceSwitch) -> Self {
        Self::from_config(inner, MaintenanceLayer::new(switch).config)
    }

    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The switch this service reads.
    pub fn switch(&self) -> &MaintenanceSwitch {
        &self.config.switch
    }

    inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for Maintenance<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maintenance")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Maintenance<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The decision is made in `call` (axum routes are always ready, and the switch may flip
        // between the two calls). A request answered with 503 leaves the inner service's
        // readiness unused, which tower allows.
        self.inner.poll_ready(cx)
    }

    // Not inlined: inlined into axum's wrappers, the call costs a copy of the whole response
    // future more (about 70 instructions per request in `scripts/server-bench.sh`).
    #[inline(never)]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Hot path: off with nothing scheduled is one atomic load.
        if self.config.switch.is_idle() {
            self.config.show_active(false);
            return ResponseFuture::inner(self.inner.call(req));
        }
        match self.config.unavailable(&req) {
            None => ResponseFuture::inner(self.inner.call(req)),
            Some(res) => ResponseFuture::refused(res),
        }
    }
}
