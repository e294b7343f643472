use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;

pin_project! {
    /// Response future of [`Maintenance`](super::Maintenance): the inner service's future, or a
    /// ready 503.
    #[derive(Debug)]
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, B> {
        Inner { #[pin] future: F },
        // Boxed: the 503 path is cold, and a small future is cheaper to move on the hot path.
        Unavailable { response: Option<Box<Response<B>>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    #[inline]
    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    pub(crate) fn unavailable(response: Response<B>) -> Self {
        Self {
            kind: Kind::Unavailable {
                response: Some(Box::new(response)),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Unavailable { response } => Poll::Ready(Ok(*response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}
