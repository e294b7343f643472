//! [`Lifecycle::serve`]: a small HTTP/1.1 + h2c serve loop that drains without cutting idle
//! keep-alive connections.

use std::{
    convert::Infallible,
    future::Future,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use pin_project_lite::pin_project;
use tokio::{net::TcpListener, task::JoinSet};
use tower_service::Service;

use super::{error::GraceExpired, in_flight::InFlight, Lifecycle};
use crate::BoxError;

impl Lifecycle {
    /// Serves `service` on `listener` (HTTP/1.1 and h2c, hyper-util's auto builder) and runs
    /// the whole shutdown: on SIGTERM or SIGINT (or [`start_drain`](Self::start_drain)),
    /// readiness turns 503 at once and requests are served normally for the drain delay; then
    /// the listener closes and, until the grace deadline,
    ///
    /// - requests arriving on open HTTP/1.1 connections get 503 + `Retry-After` + `Connection:
    ///   close` from the [drain layer](super::DrainLayer), **which you add** around your routes
    ///   (not around `/readyz` and `/livez`: liveness answers 200 until the exit); every
    ///   HTTP/1.1 response, the probes' included, says `Connection: close`, so each such
    ///   connection ends cleanly after its next answer;
    /// - idle HTTP/1.1 keep-alive connections stay open (closing one under a client that has
    ///   just sent a request is the reset this avoids); they close after a response saying
    ///   `Connection: close` (the drain layer's 503), when the client closes them, or at the
    ///   deadline;
    /// - HTTP/2 connections get a GOAWAY at once, and their open streams finish;
    /// - in-flight requests finish.
    ///
    /// It returns `Ok` once every connection is closed, or [`GraceExpired`] (with the number of
    /// requests still running, also logged) at the deadline, after dropping what is left.
    /// Either way, return from `main` with status 0.
    ///
    /// One `tower::Service` is cloned per connection. For an axum `Router`, pass
    /// `router.with_state(())`: it turns the handlers into routes once, as `axum::serve` does;
    /// a `Router` called as it is does that for every request (an allocation and about 160
    /// instructions each, `scripts/server-bench.sh`). Accept errors (too many open files) are
    /// logged and retried after 100 ms.
    ///
    /// # Errors
    ///
    /// [`GraceExpired`] when the grace period ran out with connections still open.
    pub async fn serve<S, B>(&self, listener: TcpListener, service: S) -> Result<(), GraceExpired>
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let signal = tokio::spawn(self.clone().on_signal());
        let in_flight = InFlight::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        let mut connections = JoinSet::new();
        {
            let mut closed = pin!(self.closed());
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
                let shared = Arc::new(Connection {
                    peer,
                    http2: AtomicBool::new(false),
                    in_flight: in_flight.clone(),
                    lifecycle: self.clone(),
                });
                let svc = Counted {
                    inner: service.clone(),
                    conn: shared.clone(),
                };
                let builder = builder.clone();
                connections.spawn(async move {
                    let conn = builder.serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        TowerToHyperService::new(svc),
                    );
                    let mut conn = pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        () = shared.lifecycle.closed() => {}
                    }
                    // HTTP/2: GOAWAY now, open streams finish. HTTP/1.1: nothing, the drain
                    // layer's `Connection: close` ends a connection on its next request.
                    if shared.http2.load(Ordering::Relaxed) {
                        conn.as_mut().graceful_shutdown();
                    }
                    let _ = conn.await;
                });
            }
        }
        drop(listener);
        let open = connections.len();
        tracing::info!(open, "listener closed; waiting for open connections");
        let mut grace_over = pin!(self.grace_over());
        let outcome = loop {
            tokio::select! {
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
        if outcome.is_ok() {
            tracing::info!("every connection closed; shutdown complete");
        }
        outcome
    }
}

/// A connection's service: counts the requests in flight, notes whether the connection
/// speaks HTTP/2, and puts the peer's address into each request's extensions (as a
/// `SocketAddr`, where the maintenance allow-list and the rate limiter look for it).
///
/// Once the listener has closed, every HTTP/1.1 response it sends says `Connection: close`,
/// the ones of routes outside the drain layer too (`/readyz`, `/livez`): a client that keeps a
/// connection busy with probes gets its answer and a clean close, rather than a reset at the
/// grace deadline.
///
/// hyper-util clones it for every request: what it shares is behind one `Arc`, so a clone is
/// the inner service's clone and one reference count.
#[derive(Clone)]
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
}

impl<S, B> Service<Request<Incoming>> for Counted<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.conn.peer);
        let http1 = req.version() <= Version::HTTP_11;
        if req.version() == Version::HTTP_2 {
            self.conn.http2.store(true, Ordering::Relaxed);
        }
        let guard = Guard::enter(&self.conn);
        CountedFuture {
            future: self.inner.call(req),
            guard,
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
    struct CountedFuture<F> {
        #[pin]
        future: F,
        guard: Guard,
        http1: bool,
    }
}

impl<F, B> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.future.poll(cx));
        if *this.http1 && this.guard.0.lifecycle.is_closed() {
            if let Ok(res) = &mut res {
                res.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
        }
        Poll::Ready(res)
    }
}
