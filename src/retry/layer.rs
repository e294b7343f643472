//! `RetryLayer`: body buffering + `tower::retry` with [`RetryPolicy`] + deadlines.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use super::{body::Buffering, ReplayBody, RetryPolicy};
use crate::{
    error::{AttemptTimedOut, DeadlineExceeded},
    BoxError,
};

/// Layer that retries HTTP requests with a [`RetryPolicy`].
///
/// Around the inner service (a hyper-util `Client`, or any `Service<Request<_>>`), per request:
///
/// 1. the request body is buffered, up to [`max_replay_body`](RetryLayer::max_replay_body)
///    bytes (default 64 KiB), so that every attempt sends it byte for byte; a larger body is
///    streamed through once, never retried and never lost;
/// 2. `tower::retry::Retry` sends attempts as the policy decides;
/// 3. each attempt is cut after the [per-attempt timeout](RetryLayer::attempt_timeout), if set
///    (an [`AttemptTimedOut`] error, which the policy may retry), and the whole exchange after
///    the policy's [deadline](super::RetryPolicyBuilder::deadline) (a [`DeadlineExceeded`]
///    error).
///
/// The service's error type is [`BoxError`].
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use tower::ServiceBuilder;
/// use tower_5xx::retry::{RetryBudget, RetryLayer, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let budget = Arc::new(RetryBudget::new(0.1, 10).unwrap());
/// let policy = RetryPolicy::builder()
///     .max_attempts(4)
///     .retry_after_cap(Duration::from_secs(60))
///     .deadline(Duration::from_secs(30))
///     .budget(budget)
///     .build();
/// let client = hyper_util::client::legacy::Client::builder(
///     hyper_util::rt::TokioExecutor::new(),
/// )
/// .build_http::<tower_5xx::retry::ReplayBody<http_body_util::Full<bytes::Bytes>>>();
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(policy).attempt_timeout(Duration::from_secs(5)))
///     .service(client);
/// # let _ = svc;
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryLayer {
    policy: RetryPolicy,
    max_replay_body: usize,
    attempt_timeout: Option<Duration>,
}

impl RetryLayer {
    /// A layer with this policy, a 64 KiB replay buffer and no per-attempt timeout.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            max_replay_body: 64 * 1024,
            attempt_timeout: None,
        }
    }

    /// The largest request body buffered for replay (default 64 KiB). A larger body is sent
    /// once, streamed, and not retried.
    pub fn max_replay_body(mut self, bytes: usize) -> Self {
        self.max_replay_body = bytes;
        self
    }

    /// Cuts each attempt after `timeout` (default none).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner: tower::retry::Retry::new(
                self.policy.clone(),
                Attempt {
                    inner,
                    timeout: self.attempt_timeout,
                },
            ),
            max_replay_body: self.max_replay_body,
            deadline: self.policy.deadline(),
        }
    }
}

/// Middleware made by [`RetryLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Retry<S> {
    inner: tower::retry::Retry<RetryPolicy, Attempt<S>>,
    max_replay_body: usize,
    deadline: Option<Duration>,
}

type Inner<S> = tower::retry::Retry<RetryPolicy, Attempt<S>>;

impl<S, B, ResB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<Inner<S>, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is checked per attempt, on a clone, once the body is buffered.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        ResponseFuture {
            state: State::Buffering {
                buffering: Buffering::new(body, self.max_replay_body),
                parts: Some(parts),
                service: Some(self.inner.clone()),
            },
            deadline: self.deadline.map(tokio::time::sleep),
        }
    }
}

pin_project! {
    /// Response future of [`Retry`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S, B>,
        #[pin]
        deadline: Option<Sleep>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        Buffering {
            #[pin]
            buffering: Buffering<B>,
            parts: Option<http::request::Parts>,
            service: Option<S>,
        },
        Ready {
            request: Option<Request<ReplayBody<B>>>,
            service: Option<S>,
        },
        Calling { #[pin] future: S::Future },
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>, Error = BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(deadline) = this.deadline.as_mut().as_pin_mut() {
            if deadline.poll(cx).is_ready() {
                return Poll::Ready(Err(Box::new(DeadlineExceeded::new())));
            }
        }
        loop {
            match this.state.as_mut().project() {
                StateProj::Buffering {
                    buffering,
                    parts,
                    service,
                } => {
                    let body = ready!(buffering.poll(cx))?;
                    let request =
                        Request::from_parts(parts.take().expect("polled after completion"), body);
                    let service = service.take();
                    this.state.set(State::Ready {
                        request: Some(request),
                        service,
                    });
                }
                StateProj::Ready { request, service } => {
                    let svc = service.as_mut().expect("polled after completion");
                    ready!(svc.poll_ready(cx))?;
                    let request = request.take().expect("polled after completion");
                    let future = svc.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => return future.poll(cx),
            }
        }
    }
}

/// One attempt: the inner service, its error boxed, cut after an optional timeout.
#[derive(Debug, Clone)]
pub struct Attempt<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S, Req, Res> Service<Req> for Attempt<S>
where
    S: Service<Req, Response = Res>,
    S::Error: Into<BoxError>,
{
    type Response = Res;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        AttemptFuture {
            future: self.inner.call(req),
            timeout: self.timeout.map(tokio::time::sleep),
        }
    }
}

pin_project! {
    /// Response future of [`Attempt`].
    #[derive(Debug)]
    pub struct AttemptFuture<F> {
        #[pin]
        future: F,
        #[pin]
        timeout: Option<Sleep>,
    }
}

impl<F, T, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.future.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        if let Some(timeout) = this.timeout.as_pin_mut() {
            ready!(timeout.poll(cx));
            return Poll::Ready(Err(Box::new(AttemptTimedOut::new())));
        }
        Poll::Pending
    }
}
