use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;

use super::{OutcomeClassifier, Permit};

pin_project! {
    /// Response future of [`Breaker`](super::Breaker).
    ///
    /// When the inner future completes, its result is classified and recorded with the call's
    /// latency. Dropped before that (the client went away), nothing is recorded and a half-open
    /// probe slot is given back.
    pub struct ResponseFuture<F, C, B> {
        #[pin]
        state: State<F, B>,
        permit: Option<Permit>,
        classifier: C,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Running { #[pin] future: F },
        // Boxed: the 503 path is cold, and a small future is cheaper to move on the hot path.
        Rejected { response: Option<Box<Response<B>>> },
    }
}

impl<F, C, B> ResponseFuture<F, C, B> {
    #[inline]
    pub(crate) fn running(future: F, permit: Permit, classifier: C) -> Self {
        Self {
            state: State::Running { future },
            permit: Some(permit),
            classifier,
        }
    }

    pub(crate) fn rejected(response: Response<B>, classifier: C) -> Self {
        Self {
            state: State::Rejected {
                response: Some(Box::new(response)),
            },
            permit: None,
            classifier,
        }
    }
}

impl<F, C, B> fmt::Debug for ResponseFuture<F, C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Running { .. } => "Running",
            State::Rejected { .. } => "Rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("permit", &self.permit)
            .finish_non_exhaustive()
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    C: OutcomeClassifier<B, E>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Running { future } => {
                let result = std::task::ready!(future.poll(cx));
                if let Some(permit) = this.permit.take() {
                    permit.record(this.classifier.classify(result.as_ref()));
                }
                Poll::Ready(result)
            }
            StateProj::Rejected { response } => Poll::Ready(Ok(*response
                .take()
                .expect("`ResponseFuture` polled after completion"))),
        }
    }
}
