use std::{
    any::Any,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::atomic::{AtomicU64, AtomicU8, Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::error::BodyPanicked;
use crate::panic_payload::{drop_payload, panic_message};
use crate::{BoxError, ErrorId};

pin_project! {
    /// The inner service's response body, guarded against panics.
    ///
    /// Frames and errors pass through unchanged (errors converted to [`BoxError`]). Every
    /// method of [`Body`] is guarded: a panic in `poll_frame`, `is_end_stream` or `size_hint` is
    /// caught and logged at error level with a fresh [`ErrorId`] (inside the request's span, if
    /// a tracing layer made one), and the inner body is not called again.
    ///
    /// - In `poll_frame`: the body ends with a [`BodyPanicked`] error.
    /// - In `is_end_stream`: it answers "not ended", and the next `poll_frame` ends the body
    ///   with the error.
    /// - In `size_hint`: it answers the default hint (no length known), and the next
    ///   `poll_frame` ends the body with the error.
    ///
    /// Before it reports the error, the body answers `Pending` once (and wakes its task), so
    /// that the server sends what it holds (the head, the chunks produced so far) before the
    /// error cuts the response: see [what the client gets](super#a-panic-while-the-body-streams).
    ///
    /// It carries no copy of the request: the body is moved with every response, and a small
    /// body keeps the success path cheap.
    #[derive(Debug)]
    pub struct CatchBody<B> {
        #[pin]
        inner: B,
        // Written through `&self` by `is_end_stream` and `size_hint`, hence atomics; `poll_frame`
        // has `&mut` access and reads them plainly.
        stage: AtomicU8,
        error_id: AtomicU64,
    }
}

/// Streaming; the inner body is called.
const STREAMING: u8 = 0;
/// A panic was caught and logged under `error_id`; the next `poll_frame` yields once.
const CAUGHT: u8 = 1;
/// `poll_frame` answered `Pending` once so that the server sends what it holds; the next call
/// reports the error.
const FLUSHING: u8 = 2;
/// The error was reported: the body is over.
const ENDED: u8 = 3;

impl<B> CatchBody<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            stage: AtomicU8::new(STREAMING),
            error_id: AtomicU64::new(0),
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

    /// Logs a panic caught in `is_end_stream` or `size_hint`; the next `poll_frame` reports it.
    #[cold]
    fn caught(&self, panic: &(dyn Any + Send), panicked_in: &'static str) {
        // Only the first panic is logged: the inner body is not called after it.
        if self.stage.load(Ordering::Relaxed) != STREAMING {
            return;
        }
        let error_id = log_panic(panic, panicked_in);
        self.error_id.store(error_id.as_u64(), Ordering::Relaxed);
        self.stage.store(CAUGHT, Ordering::Relaxed);
    }
}

/// Logs a panic of the response body, and returns the id it was logged under.
#[cold]
fn log_panic(panic: &(dyn Any + Send), panicked_in: &'static str) -> ErrorId {
    let error_id = ErrorId::new();
    tracing::error!(
        error_id = %error_id,
        panic = %panic_message(panic),
        panicked_in,
        "response body panicked while streaming; ending the body with an error"
    );
    error_id
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
        let stage = this.stage.get_mut();
        if *stage == STREAMING {
            let inner = this.inner;
            match catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx))) {
                Ok(Poll::Ready(Some(Ok(frame)))) => return Poll::Ready(Some(Ok(frame))),
                Ok(Poll::Ready(Some(Err(e)))) => return Poll::Ready(Some(Err(e.into()))),
                Ok(Poll::Ready(None)) => return Poll::Ready(None),
                Ok(Poll::Pending) => return Poll::Pending,
                Err(panic) => {
                    let error_id = log_panic(&*panic, "poll_frame");
                    drop_payload(panic);
                    *this.error_id.get_mut() = error_id.as_u64();
                    *stage = CAUGHT;
                }
            }
        }
        match *stage {
            CAUGHT => {
                // Let the server send the head and the frames it holds before the error cuts
                // the response: an HTTP/1.1 connection flushes when its body is pending; an
                // h2 stream is written by the connection's task, which may run meanwhile.
                *stage = FLUSHING;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            FLUSHING => {
                *stage = ENDED;
                let error_id = ErrorId::from(*this.error_id.get_mut());
                Poll::Ready(Some(Err(Box::new(BodyPanicked::new(error_id)))))
            }
            _ => Poll::Ready(None),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self.stage.load(Ordering::Relaxed) {
            STREAMING => {}
            ENDED => return true,
            // Not before the error is reported.
            _ => return false,
        }
        catch_unwind(AssertUnwindSafe(|| self.inner.is_end_stream())).unwrap_or_else(|panic| {
            self.caught(&*panic, "is_end_stream");
            drop_payload(panic);
            false
        })
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self.stage.load(Ordering::Relaxed) {
            STREAMING => {}
            ENDED => return SizeHint::with_exact(0),
            _ => return SizeHint::default(),
        }
        catch_unwind(AssertUnwindSafe(|| self.inner.size_hint())).unwrap_or_else(|panic| {
            self.caught(&*panic, "size_hint");
            drop_payload(panic);
            SizeHint::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        task::{Wake, Waker},
    };

    use super::*;

    /// A body whose `size_hint` or `is_end_stream` panics; its frames would be one chunk.
    struct Faulty {
        in_size_hint: bool,
    }

    impl Body for Faulty {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"never sent")))))
        }

        fn is_end_stream(&self) -> bool {
            assert!(self.in_size_hint, "{EXPECTED} is_end_stream exploded");
            false
        }

        fn size_hint(&self) -> SizeHint {
            assert!(!self.in_size_hint, "{EXPECTED} size_hint exploded");
            SizeHint::with_exact(10)
        }
    }

    const EXPECTED: &str = "[expected panic]";

    /// Keeps the panics this test causes out of the output; others print as usual.
    fn quiet_expected_panics() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let message = panic_message(info.payload());
                if !message.contains(EXPECTED) {
                    default(info);
                }
            }));
        });
    }

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_panic_in_size_hint_or_is_end_stream_ends_the_body_with_the_error() {
        quiet_expected_panics();
        for in_size_hint in [true, false] {
            let mut body = Box::pin(CatchBody::new(Faulty { in_size_hint }));
            if in_size_hint {
                assert_eq!(body.size_hint().exact(), None, "the default hint");
                assert_eq!(body.size_hint().exact(), None);
            }
            assert!(!body.is_end_stream(), "not ended before the error");
            assert_eq!(body.size_hint().exact(), None);
            let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
            let waker = Waker::from(wakes.clone());
            let mut cx = Context::from_waker(&waker);
            // Pending once, woken, so the server sends what it holds first.
            assert!(body.as_mut().poll_frame(&mut cx).is_pending());
            assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
            let Poll::Ready(Some(Err(error))) = body.as_mut().poll_frame(&mut cx) else {
                panic!("the body must end with the error");
            };
            assert!(error.downcast_ref::<BodyPanicked>().is_some(), "{error}");
            assert!(body.as_mut().poll_frame(&mut cx).is_ready());
            assert!(body.is_end_stream());
            assert_eq!(body.size_hint().exact(), Some(0));
        }
    }
}
