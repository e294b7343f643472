//! [`DrainLayer`]: 503 + `Retry-After` + `Connection: close` once the listener is closed.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{header::CONNECTION, HeaderValue, Request, Response, StatusCode, Version};
use tower_layer::Layer;
use tower_service::Service;

use super::Lifecycle;
use crate::{
    refuse::{RefusalPolicy, RequestView},
    telemetry::Meter,
    Reason, RetryAfter,
};

/// Layer that lets every request through until the listener closes, then answers the requests
/// still arriving on open connections with **503**, `Retry-After` and, on HTTP/1.x,
/// `Connection: close`, so the client retries elsewhere on a fresh connection instead of
/// meeting a reset. Made by [`Lifecycle::drain_layer`]; see the [module docs](super).
///
/// While serving (and draining) the check is one relaxed atomic load per request.
#[derive(Debug, Clone)]
#[must_use]
pub struct DrainLayer {
    config: Arc<Config>,
}

/// Everything a [`Drain`] needs, behind one reference count: axum clones a route's service for
/// every request, so one `Arc` here is one atomic increment per request, not three.
#[derive(Debug, Clone)]
struct Config {
    lifecycle: Lifecycle,
    refusal: RefusalPolicy,
    meter: Meter,
    retry_after: Duration,
}

impl DrainLayer {
    /// A layer following `lifecycle`, with the defaults: the base `Retry-After` of 1 s (another
    /// instance is ready now) and the default [`RefusalPolicy`].
    pub fn new(lifecycle: Lifecycle) -> Self {
        Self {
            config: Arc::new(Config {
                lifecycle,
                refusal: RefusalPolicy::default(),
                meter: Meter::new(None),
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// The base wait of the 503 (the [refusal policy](Self::refusal) bounds and jitters it).
    /// Default 1 s: the client should retry soon, on another instance.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        Arc::make_mut(&mut self.config).retry_after = retry_after;
        self
    }

    /// How the 503 is made. Default [`RefusalPolicy::default`].
    pub fn refusal(mut self, policy: RefusalPolicy) -> Self {
        Arc::make_mut(&mut self.config).refusal = policy;
        self
    }
}

impl DrainLayer {
    /// The 503 for `req` (what [`Drain`] answers in the closing phase); `Lifecycle::serve`
    /// answers with it too.
    #[cfg(feature = "lifecycle-serve")]
    pub(crate) fn refuse<B: From<Bytes>, ReqBody>(&self, req: &Request<ReqBody>) -> Response<B> {
        self.config.refuse(req)
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = Drain<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Drain {
            inner,
            config: self.config.clone(),
        }
    }
}

/// Middleware made by [`DrainLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Drain<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Drain<S> {
    inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Drain<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Not inlined, as the other layers' `call`: inlined into axum's wrappers it costs one more
    // copy of the whole response future.
    #[inline(never)]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Hot path: one relaxed load.
        if !self.config.lifecycle.is_closed() {
            return ResponseFuture::inner(self.inner.call(req));
        }
        ResponseFuture::refused(self.config.refuse(&req))
    }
}

impl Config {
    fn refuse<B, ReqBody>(&self, req: &Request<ReqBody>) -> Response<B>
    where
        B: From<Bytes>,
    {
        let mut res = self.refusal.respond(
            &self.meter,
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Draining,
            Some(RetryAfter::Delay(self.retry_after)),
            None,
            None,
            RequestView::of(req),
            SystemTime::now,
        );
        // HTTP/2 has no `Connection` field (RFC 9113 §8.2.2): there the server's GOAWAY
        // tells the client to move on.
        if req.version() <= Version::HTTP_11 {
            res.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

/// Response future of [`Drain`]: the inner service's future, or a ready 503.
pub type ResponseFuture<F, B> = crate::refuse::InnerOrRefused<F, B>;

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::header::RETRY_AFTER;
    use tower::{service_fn, ServiceExt};

    use super::*;
    use crate::lifecycle::Phase;

    fn svc(
        lc: &Lifecycle,
    ) -> impl Service<Request<()>, Response = Response<Bytes>, Error = Infallible> {
        lc.drain_layer()
            .layer(service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Bytes::from("ok")))
            }))
    }

    fn get(version: Version) -> Request<()> {
        Request::get("/x").version(version).body(()).unwrap()
    }

    #[tokio::test]
    async fn serves_until_closing_then_refuses_with_connection_close_on_http1() {
        let lc = Lifecycle::new(Duration::ZERO, Duration::ZERO);
        let res = svc(&lc).oneshot(get(Version::HTTP_11)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        lc.start_drain();
        let res = svc(&lc).oneshot(get(Version::HTTP_11)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "draining still serves");

        lc.advance(Phase::Closing);
        let res = svc(&lc).oneshot(get(Version::HTTP_11)).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[CONNECTION], "close");
        assert!(res.headers().contains_key(RETRY_AFTER));
        assert_eq!(res.extensions().get::<Reason>(), Some(&Reason::Draining));

        let res = svc(&lc).oneshot(get(Version::HTTP_2)).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().get(CONNECTION).is_none(), "not on HTTP/2");
        assert!(res.headers().contains_key(RETRY_AFTER));
    }
}
