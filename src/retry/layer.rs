//! `RetryLayer`: body buffering + `tower::retry` with [`RetryPolicy`] + deadlines.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::{
    body::Buffering,
    error::{AttemptTimedOut, DeadlineCut, DeadlineExceeded},
    policy::{server_wait, Attempts},
    Origin, ReplayBody, RetryPolicy,
};
use crate::{
    breaker::{error::CircuitOpen, status_outcome, KeyedBreakers, Outcome, Permit},
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
/// 3. each attempt is cut after the policy's
///    [per-attempt timeout](super::RetryPolicyBuilder::attempt_timeout), if set (an
///    [`AttemptTimedOut`] error, which the policy may retry), and the whole exchange after the
///    policy's [deadline](super::RetryPolicyBuilder::deadline) (a [`DeadlineExceeded`] error),
///    counted from the call: buffering the body and waiting for the client are part of it, for
///    this timer and for the policy's choice of waits alike. In the metrics, an attempt the
///    deadline cuts is an attempt (it was sent) and a `deadline` give-up; a deadline that passes
///    with nothing in flight (the body still buffering, the client not ready) is a `deadline`
///    give-up only. No attempt is started once the deadline has passed.
///
/// The service's error type is [`BoxError`]; [`Failure::from`](super::Failure) tells its kinds
/// apart.
///
/// The inner service must take `Request<ReplayBody<B>>` (see [`RetryClient`]): a hyper-util
/// client is built as `Client::builder(..).build_http::<ReplayBody<Full<Bytes>>>()`, and is
/// then called with `Request<Full<Bytes>>`.
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
///     .attempt_timeout(Duration::from_secs(5))
///     .budget(budget)
///     .build()
///     .unwrap();
/// let client = hyper_util::client::legacy::Client::builder(
///     hyper_util::rt::TokioExecutor::new(),
/// )
/// .build_http::<tower_5xx::retry::ReplayBody<http_body_util::Full<bytes::Bytes>>>();
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(policy))
///     .service(client);
/// # let _ = svc;
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryLayer {
    policy: RetryPolicy,
    max_replay_body: usize,
    breakers: Option<Arc<KeyedBreakers<Origin>>>,
}

impl RetryLayer {
    /// A layer with this policy and a 64 KiB replay buffer.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            max_replay_body: 64 * 1024,
            breakers: None,
        }
    }

    /// Guards every attempt with a circuit breaker per endpoint (the request's [`Origin`]:
    /// scheme, host and port, the same key [`RetryMiddleware`](super::RetryMiddleware) uses),
    /// taken from `breakers` (default none). A request without a scheme and host, which
    /// hyper-util's client refuses anyway, is not guarded.
    ///
    /// An endpoint that keeps failing (errors, 5xx but 501 and 505) opens its breaker; while
    /// it is open, attempts to it fail at once with a [`CircuitOpen`] error that says when to
    /// try again, and the policy does not retry them. When the failure that trips the breaker
    /// carries a `Retry-After` (a 503's, typically), the breaker stays open that long (capped by
    /// the breaker's maximum open time), so the client honours the server's word across
    /// requests; the retry the server invited, sent once its `Retry-After` has passed, finds
    /// the breaker's open time over (it never ends after the instant the server named). A
    /// `Retry-After` of 0 (or a date already past) opens it for no time at all: the retry sent
    /// at once is its half-open probe. So a server answering every failure with `Retry-After:
    /// 0` keeps the breaker from ever staying open: each failed probe opens it again for no time
    /// (the server's wait replaces the growing open time), and only the calls made while a
    /// probe is in flight fail fast; the policy's backoff and budget are then what limit the
    /// load on it. A 429 is about this client's rate, not the endpoint's
    /// health: it does not count as a failure (its `Retry-After` is still honoured by the
    /// policy).
    pub fn circuit_breakers(mut self, breakers: Arc<KeyedBreakers<Origin>>) -> Self {
        self.breakers = Some(breakers);
        self
    }

    /// The largest request body buffered for replay (default 64 KiB). A larger body is sent
    /// once, streamed, and not retried; 0 buffers only empty bodies.
    pub fn max_replay_body(mut self, bytes: usize) -> Self {
        self.max_replay_body = bytes;
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
                    timeout: self.policy.attempt_timeout(),
                    deadline: self.policy.deadline(),
                    breakers: self.breakers.clone(),
                },
            ),
            max_replay_body: self.max_replay_body,
            policy: self.policy.clone(),
        }
    }
}

/// Middleware made by [`RetryLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Retry<S> {
    inner: tower::retry::Retry<RetryPolicy, Attempt<S>>,
    max_replay_body: usize,
    /// For the deadline, and to record a deadline that passes with no attempt in flight.
    policy: RetryPolicy,
}

type Inner<S> = tower::retry::Retry<RetryPolicy, Attempt<S>>;

impl<S> Retry<S> {
    /// Sends one request and returns its response future: what [`tower::ServiceExt::oneshot`]
    /// does (this inherent method is found first, so `svc.oneshot(req)` calls it), with an
    /// error that says what is wrong when the client under the layer does not take
    /// [`ReplayBody`]. Through the trait, rustc resolves the method before it knows the
    /// request's type and reports only that "the method `oneshot` exists for struct
    /// `Retry<..>`, but its trait bounds were not satisfied" (E0599); here the request is known,
    /// and the error is [`RetryClient`]'s (E0277), which names `ReplayBody` and the fix.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    /// use tower::ServiceBuilder;
    /// use tower_5xx::retry::{ReplayBody, RetryLayer, RetryPolicy};
    ///
    /// # async fn run() -> Result<(), tower_5xx::BoxError> {
    /// let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    /// let svc = ServiceBuilder::new()
    ///     .layer(RetryLayer::new(RetryPolicy::default()))
    ///     .service(client);
    /// let request = http::Request::get("http://127.0.0.1:8080/").body(Full::new(Bytes::new()))?;
    /// let response = svc.oneshot(request).await?;
    /// # drop(response); Ok(()) }
    /// ```
    ///
    /// A client of plain `Full<Bytes>` bodies fails with E0277, "the client under `RetryLayer`
    /// must take `Request<ReplayBody<Full<Bytes>>>`":
    ///
    /// ```compile_fail,E0277
    /// # use bytes::Bytes;
    /// # use http_body_util::Full;
    /// # use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    /// # use tower::{ServiceBuilder, ServiceExt};
    /// # use tower_5xx::retry::{RetryLayer, RetryPolicy};
    /// # async fn run() {
    /// let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    /// let svc = ServiceBuilder::new()
    ///     .layer(RetryLayer::new(RetryPolicy::default()))
    ///     .service(client);
    /// let request = http::Request::get("http://127.0.0.1:8080/").body(Full::new(Bytes::new())).unwrap();
    /// let _ = svc.oneshot(request).await;
    /// # }
    /// ```
    pub fn oneshot<B>(mut self, req: Request<B>) -> ResponseFuture<Inner<S>, B>
    where
        S: RetryClient<B>,
        B: Body + Unpin,
        B::Error: Into<BoxError>,
    {
        // `poll_ready` is always ready: readiness is checked per attempt, on a clone.
        Service::call(&mut self, req)
    }
}

/// The clients [`RetryLayer`] can wrap, for requests of body `B`: a `Clone` service of
/// `Request<ReplayBody<B>>` that answers `http::Response<_>` and whose error converts into
/// [`BoxError`]. Every such service implements it; nothing else can.
///
/// [`Retry`] buffers each request body `B` into a [`ReplayBody<B>`](ReplayBody), so that every
/// attempt can send it again: the client under it must take that body type. The natural first
/// client, a hyper-util `Client<_, Full<Bytes>>`, takes `Request<Full<Bytes>>` instead; where
/// the request type is known (`Service::call(&mut svc, request)`, a function or router that
/// takes a `Service<Request<Full<Bytes>>>`), the compiler says so through this trait:
///
/// ```text
/// error[E0277]: the client under `RetryLayer` must take `Request<ReplayBody<Full<Bytes>>>`:
///               `Client<HttpConnector, Full<Bytes>>` does not
///    = help: the trait `RetryClient<Full<Bytes>>` is not implemented for
///            `Client<HttpConnector, Full<Bytes>>`
///    = note: `RetryLayer` buffers each request body into a `ReplayBody`, so that every attempt
///            can send it again
///    = note: build the hyper-util client as `Client::builder(TokioExecutor::new())
///            .build_http::<ReplayBody<Full<Bytes>>>()`, and call the layered service with
///            `Request<Full<Bytes>>`
/// ```
///
/// [`Retry::oneshot`] knows the request's type too, so `svc.oneshot(request)` gets the same
/// error. Other method calls of `tower::ServiceExt` (`svc.ready()`) are resolved before the
/// request's type is known, so rustc reports only that
/// `Retry<Client<HttpConnector, Full<Bytes>>>` is not a `Service<_>` (E0599): the cause is the
/// same.
///
/// The fix, a client of `ReplayBody` bodies, called with plain ones:
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
/// use tower::ServiceBuilder;
/// use tower_5xx::retry::{ReplayBody, RetryLayer, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryPolicy::default()))
///     .service(client);
/// // `svc` takes `http::Request<Full<Bytes>>`.
/// fn takes<S: tower::Service<http::Request<Full<Bytes>>>>(_: &S) {}
/// takes(&svc);
/// # }
/// ```
///
/// ```compile_fail
/// # use bytes::Bytes;
/// # use http_body_util::Full;
/// # use hyper_util::{client::legacy::Client, rt::TokioExecutor};
/// # use tower::ServiceBuilder;
/// # use tower_5xx::retry::{RetryLayer, RetryPolicy};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // A client of `Full<Bytes>` bodies cannot be retried: it does not take `ReplayBody`.
/// let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryPolicy::default()))
///     .service(client);
/// fn takes<S: tower::Service<http::Request<Full<Bytes>>>>(_: &S) {}
/// takes(&svc);
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "the client under `RetryLayer` must take `Request<ReplayBody<{B}>>`: `{Self}` does not",
    label = "a client of `ReplayBody<{B}>` request bodies is needed here",
    note = "`RetryLayer` buffers each request body into a `ReplayBody`, so that every attempt can send it again",
    note = "build the hyper-util client as `Client::builder(TokioExecutor::new()).build_http::<ReplayBody<{B}>>()`, and call the layered service with `Request<{B}>`",
    note = "the client must also be `Clone`, answer `http::Response<_>`, and have an error that converts into `BoxError`"
)]
pub trait RetryClient<B>:
    Service<Request<ReplayBody<B>>, Response = Response<Self::ResponseBody>, Error: Into<BoxError>>
    + Clone
{
    /// The body of the client's responses.
    type ResponseBody;
}

// `do_not_recommend`: an error names `RetryClient` (and its message above), not this impl's
// bounds.
#[diagnostic::do_not_recommend]
impl<S, B, ResB> RetryClient<B> for S
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
{
    type ResponseBody = ResB;
}

impl<S, B> Service<Request<B>> for Retry<S>
where
    S: RetryClient<B>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = Response<S::ResponseBody>;
    type Error = BoxError;
    type Future = ResponseFuture<Inner<S>, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is checked per attempt, on a clone, once the body is buffered.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.policy.request_made();
        let (parts, body) = req.into_parts();
        // The deadline counts from now, for the timer below and for the policy (which learns
        // it through the body): time spent buffering the body or waiting for the client to be
        // ready is the deadline's too, so the policy never starts a wait the timer would cut.
        let (started, deadline, policy) = match self.policy.deadline() {
            None => (None, None, None),
            Some(d) => {
                let now = Instant::now();
                let sleep = match now.checked_add(d) {
                    Some(end) => tokio::time::sleep_until(end),
                    // Too far to represent: tokio's own far future.
                    None => tokio::time::sleep(d),
                };
                (Some(now), Some(sleep), Some(self.policy.clone()))
            }
        };
        ResponseFuture {
            state: State::Buffering {
                buffering: Buffering::new(body, self.max_replay_body),
                parts: Some(parts),
                service: Some(self.inner.clone()),
                started,
            },
            deadline,
            policy,
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
        // Set with `deadline`: records the give-up when the deadline ends the request.
        policy: Option<RetryPolicy>,
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
            started: Option<Instant>,
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
        // The request first, then the deadline: an attempt in flight when the deadline passes
        // sees it first (by the clock, in `AttemptFuture`) and ends through the policy, which
        // records the attempt and the give-up. Pending past the deadline, nothing is in flight.
        if let Poll::Ready(result) = this.state.as_mut().poll_request(cx) {
            // An attempt the deadline cut is the policy's `DeadlineCut`; the caller sees the
            // public `DeadlineExceeded` (a zero-sized box: no allocation).
            return Poll::Ready(result.map_err(|e| {
                if e.is::<DeadlineCut>() {
                    Box::new(DeadlineExceeded::new())
                } else {
                    e
                }
            }));
        }
        if let Some(deadline) = this.deadline.as_pin_mut() {
            if deadline.poll(cx).is_ready() {
                if let Some(policy) = this.policy.as_ref() {
                    policy.deadline_passed_unsent();
                }
                return Poll::Ready(Err(Box::new(DeadlineExceeded::new())));
            }
        }
        Poll::Pending
    }
}

impl<S, B, ResB> State<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>, Error = BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    /// Buffers the body, waits for the client, then sends the request through `tower::retry`.
    fn poll_request(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<ResB>, BoxError>> {
        loop {
            match self.as_mut().project() {
                StateProj::Buffering {
                    buffering,
                    parts,
                    service,
                    started,
                } => {
                    let mut body = ready!(buffering.poll(cx))?;
                    if let Some(started) = *started {
                        body.set_attempts(Attempts::unsent(started));
                    }
                    let request =
                        Request::from_parts(parts.take().expect("polled after completion"), body);
                    let service = service.take();
                    self.set(State::Ready {
                        request: Some(request),
                        service,
                    });
                }
                StateProj::Ready { request, service } => {
                    let svc = service.as_mut().expect("polled after completion");
                    ready!(svc.poll_ready(cx))?;
                    let request = request.take().expect("polled after completion");
                    let future = svc.call(request);
                    self.set(State::Calling { future });
                }
                StateProj::Calling { future } => return future.poll(cx),
            }
        }
    }
}

/// One attempt: the inner service, its error boxed, cut after an optional timeout or at the
/// request's deadline, and guarded by the endpoint's circuit breaker when the layer has
/// [keyed breakers](RetryLayer::circuit_breakers).
///
/// The deadline is read by the clock, with no timer of its own: the attempt runs inside
/// [`Retry`]'s [`ResponseFuture`], whose deadline timer wakes the task at that instant and
/// polls the attempt before it looks at its own timer. An attempt in flight then ends with
/// [`DeadlineExceeded`], through the policy (an attempt and a `deadline` give-up); an attempt
/// due to start past the deadline is never started, and the response future's timer ends the
/// request (a `deadline` give-up only).
#[derive(Debug, Clone)]
pub struct Attempt<S> {
    inner: S,
    timeout: Option<Duration>,
    deadline: Option<Duration>,
    breakers: Option<Arc<KeyedBreakers<Origin>>>,
}

impl<S, B, ResB> Service<Request<ReplayBody<B>>> for Attempt<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReplayBody<B>>) -> Self::Future {
        // The request's deadline: from when `Retry` took it (the policy's bookkeeping, in the
        // body, has that instant whenever a deadline is set).
        let deadline = self
            .deadline
            .and_then(|d| req.body().attempts()?.started?.checked_add(d));
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return AttemptFuture {
                kind: AttemptKind::Expired,
            };
        }
        let origin = self
            .breakers
            .as_ref()
            .and_then(|breakers| Some((breakers, Origin::from_uri(req.uri())?)));
        let permit = match origin {
            None => None,
            Some((breakers, origin)) => match breakers.get(&origin).try_acquire() {
                Ok(permit) => Some(permit),
                Err(open) => {
                    return AttemptFuture {
                        kind: AttemptKind::Rejected { open: Some(open) },
                    }
                }
            },
        };
        AttemptFuture {
            kind: AttemptKind::Running {
                future: self.inner.call(req),
                timeout: self.timeout.map(tokio::time::sleep),
                deadline,
                permit,
            },
        }
    }
}

pin_project! {
    /// Response future of [`Attempt`].
    #[derive(Debug)]
    pub struct AttemptFuture<F> {
        #[pin]
        kind: AttemptKind<F>,
    }
}

pin_project! {
    #[project = AttemptProj]
    #[derive(Debug)]
    enum AttemptKind<F> {
        Rejected { open: Option<CircuitOpen> },
        // Due to start past the request's deadline: not started, and pending until the
        // response future's deadline timer (due too) ends the request.
        Expired,
        Running {
            #[pin]
            future: F,
            #[pin]
            timeout: Option<Sleep>,
            deadline: Option<Instant>,
            permit: Option<Permit>,
        },
    }
}

impl<F, ResB, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            AttemptProj::Rejected { open } => {
                Poll::Ready(Err(Box::new(open.take().expect("polled after completion"))))
            }
            AttemptProj::Expired => Poll::Pending,
            AttemptProj::Running {
                future,
                timeout,
                deadline,
                permit,
            } => {
                let result = match future.poll(cx) {
                    Poll::Ready(result) => result.map_err(Into::into),
                    Poll::Pending if deadline.is_some_and(|d| Instant::now() >= d) => {
                        // The client's own deadline, not the endpoint's failure: the breaker is
                        // not told (the permit goes unused, as for a cancelled call).
                        drop(permit.take());
                        // Marked as this layer's own, for its policy: an inner client's
                        // `DeadlineExceeded` is an ordinary error of the attempt.
                        return Poll::Ready(Err(Box::new(DeadlineCut)));
                    }
                    Poll::Pending => match timeout.as_pin_mut() {
                        Some(timeout) => {
                            ready!(timeout.poll(cx));
                            Err(Box::new(AttemptTimedOut::new()) as BoxError)
                        }
                        None => return Poll::Pending,
                    },
                };
                if let Some(permit) = permit.take() {
                    match &result {
                        Ok(res) => record_outcome(permit, Some((res.status(), res.headers()))),
                        Err(_) => record_outcome(permit, None),
                    }
                }
                Poll::Ready(result)
            }
        }
    }
}

/// Reports an attempt's outcome to the endpoint's breaker: errors (`None`) and 5xx (but 501 and
/// 505) are failures; a failure's `Retry-After` (read exactly as the policy reads it: a date
/// against the response's `Date`) becomes the open time if this failure trips the breaker.
/// `Retry-After: 0` (or a date already past) is an open time of zero: the server invites the
/// retry now, so the next call is a half-open probe rather than a refusal for the breaker's
/// whole configured open time.
pub(crate) fn record_outcome(
    permit: Permit,
    response: Option<(http::StatusCode, &http::HeaderMap)>,
) {
    match response {
        None => permit.failure(),
        Some((status, headers)) => match status_outcome(status) {
            Outcome::Failure => match server_wait(status, headers) {
                Some(wait) => permit.failure_with_retry_after(wait),
                None => permit.failure(),
            },
            outcome => permit.record(outcome),
        },
    }
}
