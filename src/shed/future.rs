use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use bytes::Bytes;

use super::limiter::{Permit, Ticket};
use crate::telemetry::ShedCause;

pin_project! {
    /// Response future of [`Shed`](super::Shed).
    ///
    /// It holds the request's permit, given back (or handed to the oldest waiter) when this
    /// future is dropped: once it is ready, as servers drop a finished future at once, or
    /// earlier, panics and cancellation included (as tower's `ConcurrencyLimit` does). Or it
    /// holds its place in the queue, left when it gets a permit, times out, or is dropped
    /// because the client went away.
    pub struct ResponseFuture<F, S, R, B> {
        #[pin]
        state: State<F, S, R, B>,
    }
}

pin_project! {
    #[project = WaiterProj]
    struct Waiter<S, R> {
        ticket: Ticket,
        #[pin]
        deadline: Sleep,
        service: Option<S>,
        request: Option<R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, R, B> {
        Running {
            #[pin]
            future: F,
            // `None` for exempt requests.
            permit: Option<Permit>,
            // When the inner service was called, if this request's latency is sampled.
            start: Option<Instant>,
        },
        Waiting {
            // Boxed: only queued requests pay for the timer and the waiter, and the future of
            // a request on the fast path stays small.
            waiter: Pin<Box<Waiter<S, R>>>,
        },
        // Boxed: the 503 path is cold, and a small future is cheaper to move on the hot path.
        Shed {
            response: Option<Box<Response<B>>>,
        },
    }
}

impl<F, S, R, B> ResponseFuture<F, S, R, B> {
    #[inline]
    pub(crate) fn running(future: F, permit: Option<Permit>, start: Option<Instant>) -> Self {
        Self {
            state: State::Running {
                future,
                permit,
                start,
            },
        }
    }

    pub(crate) fn waiting(ticket: Ticket, service: S, request: R) -> Self {
        let max_wait = ticket.wait();
        Self {
            state: State::Waiting {
                waiter: Box::pin(Waiter {
                    ticket,
                    deadline: tokio::time::sleep(max_wait),
                    service: Some(service),
                    request: Some(request),
                }),
            },
        }
    }

    pub(crate) fn shed(response: Response<B>) -> Self {
        Self {
            state: State::Shed {
                response: Some(Box::new(response)),
            },
        }
    }
}

impl<F, S, R, B> fmt::Debug for ResponseFuture<F, S, R, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Running { .. } => "Running",
            State::Waiting { .. } => "Waiting",
            State::Shed { .. } => "Shed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S::Future, S, Request<ReqBody>, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        match state.as_mut().project() {
            StateProj::Running {
                future,
                permit,
                start,
            } => {
                // The permit is given back when this future is dropped, as tower's
                // `ConcurrencyLimit` does: the poll of a request that is not sampled is the
                // inner poll alone, its output written where our caller wants it.
                if start.is_none() {
                    return future.poll(cx);
                }
                poll_sampled(future, permit, start, cx)
            }
            _ => poll_not_running(state, cx),
        }
    }
}

/// Polls a running request whose latency is sampled, and records it when it is ready.
#[cold]
#[inline(never)]
fn poll_sampled<F, B, E>(
    future: Pin<&mut F>,
    permit: &Option<Permit>,
    start: &mut Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<B>, E>>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    let poll = future.poll(cx);
    if let Poll::Ready(result) = &poll {
        if let (Some(permit), Some(start)) = (permit, start.take()) {
            let failed = match result {
                Ok(res) => res.status().is_server_error(),
                Err(_) => true,
            };
            permit.shared().record(start, failed);
        }
    }
    poll
}

/// Polls a request that is not running: a shed one answers; a waiting one gets its permit
/// and runs, waits on, or is shed at its deadline. Out of line, so that the poll of a running
/// request stays small.
#[cold]
#[inline(never)]
fn poll_not_running<S, ReqBody, ResBody>(
    mut state: Pin<&mut State<S::Future, S, Request<ReqBody>, ResBody>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResBody>, S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    let next = match state.as_mut().project() {
        StateProj::Running {
            future,
            permit,
            start,
        } => return poll_sampled(future, permit, start, cx),
        StateProj::Shed { response } => {
            let response = response.take().expect("polled after completion");
            return Poll::Ready(Ok(*response));
        }
        StateProj::Waiting { waiter } => {
            let WaiterProj {
                ticket,
                mut deadline,
                service,
                request,
            } = waiter.as_mut().project();
            // The permit is handed over by the request that releases it, oldest waiter
            // first; at the deadline, the waiter leaves (or takes a permit handed over
            // meanwhile).
            let permit = match ticket.poll_permit(cx) {
                Poll::Ready(permit) => permit,
                Poll::Pending => {
                    ready!(deadline.as_mut().poll(cx));
                    ticket.leave()
                }
            };
            let shared = ticket.shared();
            let left = deadline
                .deadline()
                .saturating_duration_since(tokio::time::Instant::now());
            shared
                .metrics
                .waited(ticket.wait().saturating_sub(left), || shared.limit());
            let request = request.take().expect("polled after completion");
            match permit {
                Some(permit) => {
                    let start = permit.shared().sample(true).then(Instant::now);
                    let mut service = service.take().expect("polled after completion");
                    // If `call` panics, unwinding drops the permit: it is passed on.
                    let future = service.call(request);
                    State::Running {
                        future,
                        permit: Some(permit),
                        start,
                    }
                }
                None => State::Shed {
                    response: Some(Box::new(
                        ticket.shared().refuse(&request, ShedCause::WaitedTooLong),
                    )),
                },
            }
        }
    };
    state.set(next);
    // Running now (or shed): poll it.
    poll_not_running(state, cx)
}
