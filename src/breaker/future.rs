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
    /// latency. Dropped before completion (the client went away), nothing is recorded and a
    /// half-open probe slot is given back; a panic of the inner future is a failure (recorded
    /// as the panic unwinds through this future, whether or not a layer outside catches it).
    pub struct ResponseFuture<F, C, B> {
        // `None` once it completed, or when the breaker refused the call. A plain `Option` beside
        // the refusal rather than an enum holding both: measured cheaper in a real axum server
        // (BENCHMARKS.md, "The breaker's closed path, again").
        #[pin]
        future: Option<F>,
        // The refusal (the cold path, boxed: a small future is cheaper to move).
        rejected: Option<Box<Response<B>>>,
        permit: Option<Permit>,
        classifier: C,
    }
}

impl<F, C, B> ResponseFuture<F, C, B> {
    #[inline]
    pub(crate) fn running(future: F, permit: Permit, classifier: C) -> Self {
        Self {
            future: Some(future),
            rejected: None,
            permit: Some(permit),
            classifier,
        }
    }

    pub(crate) fn rejected(response: Response<B>, classifier: C) -> Self {
        Self {
            future: None,
            rejected: Some(Box::new(response)),
            permit: None,
            classifier,
        }
    }
}

impl<F, C, B> fmt::Debug for ResponseFuture<F, C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match (&self.future, &self.rejected) {
            (Some(_), _) => "Running",
            (None, Some(_)) => "Rejected",
            (None, None) => "Done",
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
        let mut this = self.project();
        if let Some(future) = this.future.as_mut().as_pin_mut() {
            // The inner poll's output is returned as it is, written once where the caller
            // wants it, rather than taken out to record it and wrapped again (16 instructions
            // fewer per request in this poll, `scripts/server-bench.sh`).
            let mut guard = DropPermitOnUnwind {
                permit: this.permit,
                armed: true,
            };
            let poll = future.poll(cx);
            guard.armed = false;
            if let Poll::Ready(result) = &poll {
                record(guard.permit, this.classifier, result.as_ref());
                this.future.set(None);
            }
            return poll;
        }
        Poll::Ready(Ok(*this
            .rejected
            .take()
            .expect("`ResponseFuture` polled after completion")))
    }
}

/// Classifies the call's result and reports it through the permit. Out of line, so that the
/// poll around it stays small enough to be inlined into the future that polls it (the inner
/// poll's output is then written once, where that future wants it).
#[inline(never)]
fn record<C: OutcomeClassifier<B, E>, B, E>(
    permit: &mut Option<Permit>,
    classifier: &C,
    result: Result<&Response<B>, &E>,
) {
    // Reported in place (a permit moved out first costs a copy of it), then dropped.
    if let Some(p) = permit.as_mut() {
        p.report(classifier.classify(result));
        *permit = None;
    }
}

/// Records a failure if the inner poll unwinds, while it unwinds: the call itself panicked.
/// (Left to the future's own drop, the permit would be dropped only after a layer outside, or
/// the runtime, caught the panic, and a dropped permit counts nothing: a panic elsewhere says
/// nothing about the dependency.)
struct DropPermitOnUnwind<'a> {
    permit: &'a mut Option<Permit>,
    /// Cleared once the inner poll returned.
    armed: bool,
}

impl Drop for DropPermitOnUnwind<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.armed {
            if let Some(permit) = self.permit.take() {
                record_panic(permit);
            }
        }
    }
}

/// Reports `permit`'s call as failed while its panic unwinds. A second panic raised here (the
/// transition callback, the clock, a metrics recorder) would abort the process: it is caught,
/// and this one outcome lost at worst.
#[cold]
fn record_panic(permit: Permit) {
    if let Err(again) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || permit.failure()))
    {
        // Its payload's destructor may panic too: leaked.
        #[allow(clippy::mem_forget)]
        std::mem::forget(again);
    }
}
