use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::{
    sync::futures::OwnedNotified,
    time::{Instant, Sleep},
};
use tower_service::Service;

use bytes::Bytes;

use super::limiter::{Permit, QueueSlot};

pin_project! {
    /// Response future of [`Shed`](super::Shed).
    ///
    /// It holds the request's permit (given back when the inner future completes or when this
    /// future is dropped, panics included) or its place in the queue (given back when it gets a
    /// permit, times out, or is dropped because the client went away).
    pub struct ResponseFuture<F, S, R, B> {
        #[pin]
        state: State<F, S, R, B>,
    }
}

pin_project! {
    #[project = WaiterProj]
    struct Waiter<S, R> {
        #[pin]
        notified: OwnedNotified,
        #[pin]
        deadline: Sleep,
        armed: bool,
        slot: Option<QueueSlot>,
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

    pub(crate) fn waiting(slot: QueueSlot, service: S, request: R) -> Self {
        let shared = slot.shared();
        Self {
            state: State::Waiting {
                waiter: Box::pin(Waiter {
                    notified: shared.notify().notified_owned(),
                    deadline: tokio::time::sleep(shared.config.max_wait),
                    armed: false,
                    slot: Some(slot),
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
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Running {
                    future,
                    permit,
                    start,
                } => {
                    let result = ready!(future.poll(cx));
                    if let (Some(permit), Some(start)) = (permit.take(), *start) {
                        let failed = match &result {
                            Ok(res) => res.status().is_server_error(),
                            Err(_) => true,
                        };
                        permit.shared().record(start, failed);
                    }
                    return Poll::Ready(result);
                }
                StateProj::Shed { response } => {
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok(*response));
                }
                StateProj::Waiting { waiter } => {
                    let WaiterProj {
                        mut notified,
                        deadline,
                        armed,
                        slot,
                        service,
                        request,
                    } = waiter.as_mut().project();
                    let shared = slot.as_ref().expect("polled after completion").shared();
                    if !*armed {
                        // Register before trying, so a permit released in between wakes us.
                        notified.as_mut().enable();
                        *armed = true;
                    }
                    if shared.try_acquire() {
                        let start = shared.sample().then(Instant::now);
                        let permit = Permit::taken(Arc::clone(shared));
                        drop(slot.take());
                        let mut service = service.take().expect("polled after completion");
                        let request = request.take().expect("polled after completion");
                        State::Running {
                            future: service.call(request),
                            permit: Some(permit),
                            start,
                        }
                    } else if notified.as_mut().poll(cx).is_ready() {
                        // Woken, but another request took the permit: wait again.
                        let fresh = shared.notify().notified_owned();
                        notified.set(fresh);
                        *armed = false;
                        continue;
                    } else if deadline.poll(cx).is_ready() {
                        let request = request.take().expect("polled after completion");
                        let slot = slot.take().expect("polled after completion");
                        let response = slot.shared().refuse(&request, "max wait");
                        drop(slot);
                        State::Shed {
                            response: Some(Box::new(response)),
                        }
                    } else {
                        return Poll::Pending;
                    }
                }
            };
            this.state.set(next);
        }
    }
}
