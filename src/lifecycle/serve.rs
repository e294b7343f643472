//! [`Lifecycle::serve`]: a small HTTP/1.1 + h2c serve loop that drains without cutting idle
//! keep-alive connections.

use std::{
    convert::Infallible,
    fmt,
    future::{poll_fn, Future, IntoFuture},
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_core::Stream;
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use pin_project_lite::pin_project;
use tokio::{net::TcpListener, task::JoinSet};
use tower_service::Service;

use super::{error::GraceExpired, in_flight::InFlight, DrainLayer, Lifecycle};
use crate::{refuse::RefusalPolicy, BoxError};

impl Lifecycle {
    /// Serves `service` on `listener` (HTTP/1.1 and h2c, hyper-util's auto builder) and runs
    /// the whole shutdown: on SIGTERM or SIGINT (or [`start_drain`](Self::start_drain)),
    /// readiness turns 503 at once and requests are served normally for the drain delay; then
    /// the listener closes and, until the grace deadline,
    ///
    /// - requests arriving on open connections get **503** + `Retry-After` (+ `Connection:
    ///   close` on HTTP/1.1) from the serve loop itself, the drain layer's answer, without
    ///   reaching `service`; except the [exempt paths](Serve::exempt), `/readyz` and `/livez`
    ///   by default, which are served (liveness answers 200 until the exit, on connections
    ///   already open: a new connection, as each kubelet probe is, is refused once the
    ///   listener is closed; see the [module docs](super#kubernetes) for the liveness probe's
    ///   `failureThreshold`). Every HTTP/1.1
    ///   response, the probes' included, says `Connection: close`, so each such connection
    ///   ends cleanly after its next answer. (A [`DrainLayer`](super::DrainLayer) is not
    ///   needed here; one that is there anyway answers the same way. These 503s do not pass
    ///   through the service's own middleware, access logs included: like the drain layer's,
    ///   they are counted in the crate's metrics with the reason `draining`.)
    /// - idle HTTP/1.1 keep-alive connections stay open (closing one under a client that has
    ///   just sent a request is the reset this avoids); they close after a response saying
    ///   `Connection: close`, when the client closes them, or at the deadline;
    /// - HTTP/2 connections get a GOAWAY at once (one that has not sent a request yet, after
    ///   its first, refused), and their open streams finish;
    /// - in-flight requests finish. A response whose head went out before the close (a
    ///   streamed body) cannot say `Connection: close` any more: its connection then stays
    ///   open like an idle one. A `101 Switching Protocols` keeps its `Connection: upgrade`;
    ///   an upgraded connection (a WebSocket) leaves this loop once upgraded, so close those
    ///   yourself when [`Lifecycle::closed`] resolves.
    ///
    /// Await the returned [`Serve`] (after its optional settings). It returns `Ok` once every
    /// connection is closed, or [`GraceExpired`] (with the number of requests still running,
    /// also logged) at the deadline, after dropping what is left; a second SIGTERM or SIGINT
    /// makes the deadline now (see [`on_signal`](Self::on_signal)). Either way, return from
    /// `main` with status 0.
    ///
    /// One `tower::Service` is cloned per connection. For an axum `Router`, pass
    /// `router.with_state(())`: it turns the handlers into routes once, as `axum::serve` does;
    /// a `Router` called as it is does that for every request (an allocation and about 160
    /// instructions each, `scripts/server-bench.sh`). Accept errors (too many open files) are
    /// logged and retried after 100 ms.
    ///
    /// While serving, the drain-aware path is one relaxed atomic load per request, and the
    /// loop costs fewer instructions per request than `axum::serve` with `ConnectInfo`
    /// (BENCHMARKS.md, `lifecycle` against `bare-connect-info`).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use axum::{routing::get, Router};
    /// use tower_5xx::lifecycle::Lifecycle;
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let lifecycle = Lifecycle::new(Duration::from_secs(10), Duration::from_secs(20));
    /// let app = Router::new()
    ///     .route("/", get(|| async { "hello" }))
    ///     .route_service("/readyz", lifecycle.readiness())
    ///     .route_service("/livez", lifecycle.liveness());
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
    /// if let Err(expired) = lifecycle
    ///     .serve(listener, app.with_state(()))
    ///     .retry_after(Duration::from_secs(2))
    ///     .await
    /// {
    ///     eprintln!("{expired}"); // still exit 0: the shutdown was orderly
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn serve<S>(&self, listener: TcpListener, service: S) -> Serve<S> {
        Serve {
            lifecycle: self.clone(),
            listener,
            service,
            drain: self.drain_layer(),
            exempt: vec!["/readyz".to_owned(), "/livez".to_owned()],
            requests: None,
        }
    }
}

/// The server of [`Lifecycle::serve`]: set what its late requests get, then `.await` it.
#[must_use = "a server does nothing until it is awaited"]
pub struct Serve<S> {
    lifecycle: Lifecycle,
    listener: TcpListener,
    service: S,
    drain: DrainLayer,
    exempt: Vec<String>,
    requests: Option<ShutdownRequests>,
}

/// A stream of shutdown requests, in place of the signals.
type ShutdownRequests = Pin<Box<dyn Stream<Item = ()> + Send>>;

impl<S> fmt::Debug for Serve<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("lifecycle", &self.lifecycle)
            .field("listener", &self.listener)
            .field("drain", &self.drain)
            .field("exempt", &self.exempt)
            .finish_non_exhaustive()
    }
}

impl<S> Serve<S> {
    /// The base wait of the closing phase's 503 (the refusal policy bounds and jitters it), as
    /// [`DrainLayer::retry_after`]. Default 1 s: the client should retry soon, elsewhere.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.drain = self.drain.retry_after(retry_after);
        self
    }

    /// How the closing phase's 503 is made, as [`DrainLayer::refusal`]. Default
    /// [`RefusalPolicy::default`].
    pub fn refusal(mut self, policy: RefusalPolicy) -> Self {
        self.drain = self.drain.refusal(policy);
        self
    }

    /// The request paths served as usual in the closing phase, in place of the default
    /// `/readyz` and `/livez`: the probes' paths. A path matches exactly (`Uri::path`, no
    /// query); an empty list refuses everything.
    pub fn exempt<I, P>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.exempt = paths.into_iter().map(Into::into).collect();
        self
    }

    /// Shuts down on the items of `requests` in place of SIGTERM and SIGINT, as
    /// [`Lifecycle::on_shutdown_requests`] does: the first starts the drain, the next one
    /// forces the shutdown (the listener closes, and the serve loop closes what is left and
    /// returns [`GraceExpired`] at once; `Ok` if no connection was left open). A panic of the
    /// stream is logged at error level and, before the first request, starts the drain (see
    /// [`Lifecycle::on_shutdown_requests`]). For a shutdown command of your own, and for tests.
    pub fn shutdown_requests<R>(mut self, requests: R) -> Self
    where
        R: Stream<Item = ()> + Send + 'static,
    {
        self.requests = Some(Box::pin(requests));
        self
    }
}

/// The most connections accepted from the listener's backlog at the close.
const BACKLOG_AT_THE_CLOSE: usize = 4096;

impl<S, B> IntoFuture for Serve<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<(), GraceExpired>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let Self {
                lifecycle,
                listener,
                service,
                drain,
                exempt,
                requests,
            } = self;
            let refusal = Arc::new(Refusal {
                drain,
                exempt: exempt.into_boxed_slice(),
            });
            let this = &lifecycle;
            // Dropped when this future ends (returns, or is dropped): once no other server of
            // the lifecycle runs either, the shutdown requests are listened for no longer,
            // rather than until the grace deadline.
            let finished = this.finished_on_drop();
            let signal = tokio::spawn({
                let lifecycle = this.clone();
                async move {
                    let requests = match requests {
                        Some(requests) => requests,
                        None => Box::pin(super::state::shutdown_signals()),
                    };
                    lifecycle.on_shutdown_requests(requests).await;
                }
            });
            let in_flight = InFlight::new();
            let builder = auto::Builder::new(TokioExecutor::new());
            let mut connections = JoinSet::new();
            // Serves one accepted connection in its own task of `connections`.
            // (`service` is an argument, not captured: `S` need not be `Sync`, and the closure
            // lives across awaits of this `Send` future.)
            let spawn_connection = |connections: &mut JoinSet<()>,
                                    service: &S,
                                    stream: tokio::net::TcpStream,
                                    peer: std::net::SocketAddr| {
                let shared = Arc::new(Connection {
                    peer,
                    http2: AtomicBool::new(false),
                    in_flight: in_flight.clone(),
                    lifecycle: this.clone(),
                    refusal: refusal.clone(),
                });
                let svc = Counted {
                    inner: service.clone(),
                    conn: shared.clone(),
                };
                let builder = builder.clone();
                connections.spawn(async move {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    let mut conn = pin!(conn);
                    // Polled on every wake-up of the connection, so kept cheap: once the
                    // close is registered (the first poll), one atomic load.
                    let mut closing = pin!(shared.lifecycle.inner.closing.notified());
                    let mut registered = false;
                    let served = poll_fn(|cx| {
                        if conn.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(true);
                        }
                        if !registered {
                            // Registers this task's waker, which never changes (the future
                            // stays in this task). `notify_waiters` comes after the phase is
                            // stored, so the load below cannot miss the close.
                            registered = true;
                            if closing.as_mut().poll(cx).is_ready() {
                                return Poll::Ready(false);
                            }
                        }
                        if shared.lifecycle.is_closed() {
                            Poll::Ready(false)
                        } else {
                            Poll::Pending
                        }
                    })
                    .await;
                    if served {
                        return;
                    }
                    // HTTP/2: GOAWAY, open streams finish; a connection not yet known to
                    // speak it (no request so far) gets its GOAWAY after the first one,
                    // which is refused. HTTP/1.1: nothing, the `Connection: close` of its
                    // next response ends it.
                    let mut goaway = false;
                    let _ = poll_fn(|cx| loop {
                        if !goaway && shared.http2.load(Ordering::Relaxed) {
                            goaway = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        let polled = conn.as_mut().poll(cx);
                        // Poll again if this poll's request told us it is HTTP/2.
                        if polled.is_ready() || goaway || !shared.http2.load(Ordering::Relaxed) {
                            return polled;
                        }
                    })
                    .await;
                });
            };
            {
                let mut closed = pin!(this.closed());
                loop {
                    let (stream, peer) = tokio::select! {
                        () = &mut closed => break,
                        accepted = listener.accept() => match accepted {
                            Ok(accepted) => accepted,
                            Err(e) => {
                                tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        },
                        // Reap finished connections so the set stays small.
                        Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                    };
                    spawn_connection(&mut connections, &service, stream, peer);
                }
            }
            // Connections the kernel completed before the close and the loop has not accepted
            // yet would be reset with the listener, their requests perhaps already sent: each is
            // accepted now (a real `accept` call each, not tokio's cached readiness) and served
            // as a late arrival, with the closing phase's 503 and `Connection: close`. At most a
            // full backlog's worth (Linux's default `somaxconn`): clients connecting faster than
            // this loop accepts must not keep it from ever closing the listener.
            if let Ok(listener) = listener.into_std() {
                for _ in 0..BACKLOG_AT_THE_CLOSE {
                    let (stream, peer) = match listener.accept() {
                        Ok(accepted) => accepted,
                        // That one connection went away before it was accepted.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
                        Err(e) => {
                            if e.kind() != std::io::ErrorKind::WouldBlock {
                                tracing::warn!(error = %e, "accepting at the close failed");
                            }
                            break;
                        }
                    };
                    match stream
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpStream::from_std(stream))
                    {
                        Ok(stream) => spawn_connection(&mut connections, &service, stream, peer),
                        Err(e) => {
                            tracing::warn!(error = %e, "a connection accepted at the close failed")
                        }
                    }
                }
            }
            let open = connections.len();
            tracing::info!(open, "listener closed; waiting for open connections");
            let mut grace_over = pin!(this.grace_over());
            let outcome = loop {
                tokio::select! {
                    // The connections first: with none left (a forced shutdown with nothing
                    // open), nothing is cut, and the answer is `Ok`, not a coin toss.
                    biased;
                    next = connections.join_next() => if next.is_none() { break Ok(()) },
                    () = &mut grace_over => {
                        let expired = GraceExpired {
                            in_flight: Some(in_flight.count()),
                        };
                        tracing::warn!(
                            connections = connections.len(),
                            "{expired}; closing what is left"
                        );
                        connections.abort_all();
                        break Err(expired);
                    }
                }
            };
            signal.abort();
            drop(finished);
            if outcome.is_ok() {
                tracing::info!("every connection closed; shutdown complete");
            }
            outcome
        })
    }
}

/// A connection's service: counts the requests in flight, notes whether the connection
/// speaks HTTP/2, and puts the peer's address into each request's extensions (as a
/// `SocketAddr`, where the maintenance allow-list and the rate limiter look for it).
///
/// Once the listener has closed, it answers 503 itself but on the exempt paths, and every
/// HTTP/1.1 response it sends says `Connection: close`, the exempt paths' too: a client that
/// keeps a connection busy with probes gets its answer and a clean close, rather than a reset
/// at the grace deadline.
///
/// A `hyper` service (called through `&self`), so the only per-request clones are the inner
/// service's (a `tower::Service` needs `&mut self`) and the one reference count the request's
/// guard holds.
struct Counted<S> {
    inner: S,
    conn: Arc<Connection>,
}

/// What a connection's requests share.
struct Connection {
    peer: std::net::SocketAddr,
    http2: AtomicBool,
    in_flight: InFlight,
    lifecycle: Lifecycle,
    refusal: Arc<Refusal>,
}

/// The closing phase's answer, shared by every connection.
struct Refusal {
    drain: DrainLayer,
    exempt: Box<[String]>,
}

impl Refusal {
    /// The 503 for `req`, or `None` for an exempt path.
    fn refuse<B: From<Bytes>>(&self, req: &Request<Incoming>) -> Option<Response<B>> {
        let path = req.uri().path();
        if self.exempt.iter().any(|exempt| exempt == path) {
            return None;
        }
        Some(self.drain.refuse(req))
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Counted<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone,
    B: From<Bytes>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = CountedFuture<S, B>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() <= Version::HTTP_11;
        if req.version() == Version::HTTP_2 {
            self.conn.http2.store(true, Ordering::Relaxed);
        }
        // The drain-aware path while serving: one relaxed load.
        let refused = if self.conn.lifecycle.is_closed() {
            self.conn.refusal.refuse(&req)
        } else {
            None
        };
        let state = match refused {
            None => {
                req.extensions_mut().insert(self.conn.peer);
                State::NotReady {
                    service: self.inner.clone(),
                    req: Some(req),
                }
            }
            Some(res) => State::Refused { res: Some(res) },
        };
        CountedFuture {
            state,
            guard: Guard::enter(&self.conn),
            http1,
        }
    }
}

/// One request in flight, counted until the guard is dropped (when its response future is
/// done or dropped, on any thread).
struct Guard(Arc<Connection>);

impl Guard {
    fn enter(conn: &Arc<Connection>) -> Self {
        conn.in_flight.enter();
        Self(conn.clone())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.in_flight.exit();
    }
}

pin_project! {
    /// The inner service's readiness, then its call (as `tower::util::Oneshot`), counted; or
    /// the closing phase's 503.
    struct CountedFuture<S: Service<Request<Incoming>>, B> {
        #[pin]
        state: State<S, S::Future, B>,
        guard: Guard,
        http1: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, B> {
        NotReady { service: S, req: Option<Request<Incoming>> },
        Called { #[pin] future: F },
        Refused { res: Option<Response<B>> },
    }
}

impl<S, B> Future for CountedFuture<S, B>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut res = loop {
            match this.state.as_mut().project() {
                StateProj::NotReady { service, req } => {
                    let Ok(()) = std::task::ready!(service.poll_ready(cx));
                    let req = req.take().expect("polled after the call");
                    let future = service.call(req);
                    this.state.set(State::Called { future });
                }
                StateProj::Called { future } => break std::task::ready!(future.poll(cx)),
                StateProj::Refused { res } => {
                    // Its `Connection: close` is set already (HTTP/1.1).
                    return Poll::Ready(Ok(res.take().expect("polled after completion")));
                }
            }
        };
        if *this.http1 && this.guard.0.lifecycle.is_closed() {
            // Not on a 101: its `Connection: upgrade` is what switches the protocol, and the
            // connection leaves hyper (and this loop) once it is upgraded.
            if let Ok(res) = &mut res {
                if res.status() != StatusCode::SWITCHING_PROTOCOLS {
                    res.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
            }
        }
        Poll::Ready(res)
    }
}
