use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::error::BodyPanicked;
use super::future::panic_message;
use crate::{BoxError, ErrorId};

pin_project! {
    /// The inner service's response body, guarded against panics.
    ///
    /// Frames and errors pass through unchanged (errors converted to [`BoxError`]). If polling
    /// the inner body panics, the panic is caught and logged at error level with a fresh
    /// [`ErrorId`] (inside the request's span, if a tracing layer made one), and the body ends
    /// with a [`BodyPanicked`] error; the inner body is not polled again.
    ///
    /// It carries no copy of the request: the body is moved with every response, and a small
    /// body keeps the success path cheap.
    #[derive(Debug)]
    pub struct CatchBody<B> {
        #[pin]
        inner: B,
        panicked: bool,
    }
}

impl<B> CatchBody<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            panicked: false,
        }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body, consuming the wrapper.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for CatchBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.panicked {
            return Poll::Ready(None);
        }
        let inner = this.inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx))) {
            Ok(Poll::Ready(Some(Err(e)))) => Poll::Ready(Some(Err(e.into()))),
            Ok(Poll::Ready(Some(Ok(frame)))) => Poll::Ready(Some(Ok(frame))),
            Ok(Poll::Ready(None)) => Poll::Ready(None),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => {
                *this.panicked = true;
                let error_id = ErrorId::new();
                tracing::error!(
                    error_id = %error_id,
                    panic = %panic_message(&*panic),
                    "response body panicked while streaming; ending the body with an error"
                );
                Poll::Ready(Some(Err(Box::new(BodyPanicked::new(error_id)))))
            }
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.panicked || self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        if self.panicked {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}
