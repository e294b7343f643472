use std::{
    any::Any,
    convert::Infallible,
    error::Error,
    fmt,
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    task::{Context, Poll},
};

use http::{header::ACCEPT, uri::PathAndQuery, HeaderValue, Method, Request, Response};
use pin_project_lite::pin_project;

use super::{classify::classify_chain, CatchBody, Classification, Classify};
use crate::panic_payload::{drop_payload, panic_message};
use crate::{
    error_chain,
    refuse::{Refuser, RequestView},
    telemetry::{self, Meter},
    BoxError, ErrorId, Reason, ResponseBody,
};

/// What the request needs for logging and content negotiation once it has been moved into the
/// inner service. Cheap to capture: a standard `Method` is a plain enum, and the path and the
/// `Accept` value of a request hyper parsed are reference-counted slices of its read buffer.
#[derive(Debug)]
pub(crate) struct RequestParts {
    method: Method,
    path: Option<PathAndQuery>,
    accept: Option<HeaderValue>,
}

impl RequestParts {
    #[inline]
    pub(crate) fn new<B>(req: &Request<B>, negotiate: bool) -> Self {
        Self {
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            accept: if negotiate {
                let mut all = req.headers().get_all(&ACCEPT).iter();
                match (all.next(), all.next()) {
                    (Some(one), None) => Some(one.clone()),
                    (None, _) => None,
                    // Several field lines: one list (RFC 9110 §5.3), on this cold path only.
                    (Some(_), Some(_)) => {
                        let joined: Vec<u8> = req
                            .headers()
                            .get_all(&ACCEPT)
                            .iter()
                            .map(HeaderValue::as_bytes)
                            .collect::<Vec<_>>()
                            .join(&b", "[..]);
                        HeaderValue::from_bytes(&joined).ok()
                    }
                }
            } else {
                None
            },
        }
    }

    /// The path, without the query string (which often carries tokens).
    fn path(&self) -> &str {
        self.path.as_ref().map_or("", PathAndQuery::path)
    }
}

/// A failure caught before a response existed. A panic keeps only its message (a payload is
/// `Send` but not `Sync`, and the service that may hold a failure must be `Sync` for axum).
#[derive(Debug)]
pub(crate) enum Failure {
    Error(BoxError),
    Panic(String),
}

impl Failure {
    pub(crate) fn panic(payload: Box<dyn Any + Send>) -> Self {
        let message = panic_message(&*payload).to_owned();
        drop_payload(payload);
        Failure::Panic(message)
    }
}

/// A failure kept until a request is answered with it: a `poll_ready` failure held by the
/// service for its next call, then by the response future until its first poll (a panic of
/// `call` is held from there). If no request is answered with it, it is logged when dropped,
/// with the reason the layer's classifier gives it: one error event with an error id, as every
/// failure. Boxed, and made only on failure: it costs the success path nothing.
pub(crate) struct Pending<C> {
    failure: Option<Failure>,
    /// For the instance's name in the event.
    meter: Meter,
    classifier: C,
    /// `C::classify`: the destructors that log the failure cannot require `C: Classify` (the
    /// types they drop do not), so the classifier's method is kept with it.
    classify: fn(&C, &(dyn Error + 'static)) -> Option<Classification>,
}

impl<C> Pending<C> {
    #[cold]
    #[inline(never)]
    pub(crate) fn new(failure: Failure, refusal: &Refuser, classifier: &C) -> Box<Self>
    where
        C: Classify,
    {
        Box::new(Self {
            failure: Some(failure),
            meter: refusal.meter().clone(),
            classifier: classifier.clone(),
            classify: C::classify,
        })
    }

    /// The failure, for the request answered with it.
    fn take(&mut self) -> Failure {
        self.failure
            .take()
            .expect("a pending failure is taken once")
    }

    /// Logs the failure as never answered (`message`), unless a request took it.
    fn log_unanswered(&mut self, message: &'static str, parts: Option<&RequestParts>) {
        if let Some(failure) = self.failure.take() {
            let (classifier, classify) = (&self.classifier, self.classify);
            log_unanswered(failure, &self.meter, message, parts, &|e| {
                classify(classifier, e)
            });
        }
    }
}

impl<C> Drop for Pending<C> {
    fn drop(&mut self) {
        self.log_unanswered(
            "poll_ready failed, and the service was dropped before a request could be \
             answered with the failure",
            None,
        );
    }
}

pin_project! {
    /// Response future of [`Catch`](super::Catch).
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
        parts: Option<RequestParts>,
        classifier: C,
        refusal: Refuser,
    }

    // Dropped before it finished (the client hung up: hyper drops the response future), the
    // inner future is dropped here, where a panic in its destructor is caught and logged, not
    // left to unwind the connection task. A finished future is already `Done`: a check of the
    // state, nothing more.
    impl<F, C> PinnedDrop for ResponseFuture<F, C> {
        #[inline]
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !matches!(*this.state, State::Done) {
                drop_state(this.state, this.parts.as_ref());
            }
        }
    }
}

/// Drops the inner future of a response future that did not finish, catching a panic of its
/// destructor; a failure caught before the first poll (never answered) is logged.
#[cold]
#[inline(never)]
fn drop_state<F, C>(mut state: Pin<&mut State<F, C>>, parts: Option<&RequestParts>) {
    if let StateProj::Failed { pending } = state.as_mut().project() {
        pending.log_unanswered(
            "request failed, and its response future was dropped before it was polled: the \
             failure was never answered",
            parts,
        );
    }
    set_done(state, parts);
}

/// Drops the inner future (or what is left of a failure) in place, catching and logging a
/// panic of its destructor.
#[inline]
fn set_done<F, C>(mut state: Pin<&mut State<F, C>>, parts: Option<&RequestParts>) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| state.set(State::Done))) {
        log_drop_panic(&*panic, parts);
        drop_payload(panic);
    }
}

/// Logs a failure that no request was answered with (a `poll_ready` failure kept by a service
/// dropped before a call took it, or the failure of a response future dropped before it was
/// polled), as `message`, with the request's method and path if known, and the reason that
/// `classify` (the layer's classifier) and the built-in rules give it, as if it had been
/// answered. The classifier, the error's `Display` and its destructor are user code: a panic
/// in any of them is caught (this runs in a destructor); a panicking classifier leaves the
/// error internal, and its panic is logged with it.
#[cold]
#[inline(never)]
pub(crate) fn log_unanswered(
    failure: Failure,
    meter: &Meter,
    message: &'static str,
    parts: Option<&RequestParts>,
    classify: &dyn Fn(&(dyn Error + 'static)) -> Option<Classification>,
) {
    let error_id = ErrorId::new();
    let chain;
    let mut classify_panic = None;
    let (reason, cause): (Reason, &dyn fmt::Display) = match &failure {
        Failure::Error(error) => {
            chain = Chain(&**error);
            let reason = catch_unwind(AssertUnwindSafe(|| {
                classify_chain(&classify, &**error, std::time::Duration::ZERO).reason
            }))
            .unwrap_or_else(|panic| {
                classify_panic = Some(panic_message(&*panic).to_owned());
                drop_payload(panic);
                Reason::Internal
            });
            (reason, &chain)
        }
        Failure::Panic(message) => (Reason::Panic, message),
    };
    let event = |cause: &dyn fmt::Display| {
        tracing::event!(
            target: "tower_5xx",
            tracing::Level::ERROR,
            error.type = reason.as_str(),
            error_id = %error_id,
            name = meter.name(),
            http.request.method = parts.map(|p| p.method.as_str()),
            url.path = parts.map(RequestParts::path),
            exception.message = %cause,
            classifier_panic = classify_panic.as_deref(),
            "{message}"
        );
    };
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| event(cause))) {
        event(&format_args!(
            "logging the error panicked: {}",
            panic_message(&*panic)
        ));
        drop_payload(panic);
    }
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| drop(failure))) {
        drop_payload(panic);
    }
}

/// Logs a panic of the inner future's destructor, with an error id of its own: the client got
/// (or gets) its answer, or is gone; nothing else reports it.
#[cold]
#[inline(never)]
fn log_drop_panic(panic: &(dyn Any + Send), parts: Option<&RequestParts>) {
    tracing::event!(
        target: "tower_5xx",
        tracing::Level::ERROR,
        error_id = %crate::ErrorId::new(),
        http.request.method = parts.map(|p| p.method.as_str()),
        url.path = parts.map(RequestParts::path),
        panic = %panic_message(panic),
        "inner response future panicked while being dropped"
    );
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Running { #[pin] future: F },
        // Boxed: the variant costs a response future no more than a pointer.
        Failed { pending: Box<Pending<C>> },
        Done,
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn running(future: F, parts: RequestParts, classifier: C, refusal: Refuser) -> Self {
        Self {
            state: State::Running { future },
            parts: Some(parts),
            classifier,
            refusal,
        }
    }

    pub(crate) fn failed(
        pending: Box<Pending<C>>,
        parts: RequestParts,
        classifier: C,
        refusal: Refuser,
    ) -> Self {
        Self {
            state: State::Failed { pending },
            parts: Some(parts),
            classifier,
            refusal,
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Running { .. } => "Running",
            State::Failed { .. } => "Failed",
            State::Done => "Done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    C: Classify,
{
    type Output = Result<Response<ResponseBody<CatchBody<B>>>, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let failure = match this.state.as_mut().project() {
            StateProj::Running { future } => {
                match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(Ok(res))) => {
                        set_done(this.state.as_mut(), this.parts.as_ref());
                        *this.parts = None;
                        return Poll::Ready(Ok(
                            res.map(|body| ResponseBody::new(CatchBody::new(body)))
                        ));
                    }
                    Ok(Poll::Ready(Err(e))) => Failure::Error(e.into()),
                    Err(panic) => Failure::panic(panic),
                }
            }
            StateProj::Failed { pending } => pending.take(),
            StateProj::Done => panic!("`ResponseFuture` polled after completion"),
        };
        // Drop the failed inner future now; its destructor may panic too.
        set_done(this.state.as_mut(), this.parts.as_ref());
        let parts = this.parts.take().expect("polled after completion");
        let classifier = &*this.classifier;
        let refusal = &*this.refusal;
        // The classifier and the error's `Display` are user code: a panic there must still end
        // in exactly one response, not an unwinding connection task.
        let response = catch_unwind(AssertUnwindSafe(|| {
            respond(failure, &parts, classifier, refusal)
        }))
        .unwrap_or_else(|panic| {
            // Not through the policy: its renderer is user code too, and may be what panicked.
            // The policy counts a response only after its event, the last user code it runs:
            // nothing was counted for this request yet, and this is its one count.
            let response = crate::ErrorResponse::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                crate::Reason::Internal,
            );
            let meter = refusal.meter();
            meter.generated(response.status(), response.reason());
            telemetry::event(
                meter,
                &telemetry::Event {
                    status: response.status(),
                    reason: response.reason(),
                    error_id: response.error_id(),
                    method: Some(&parts.method),
                    path: parts.path(),
                    retry_after: None,
                    cause: Some(&format_args!(
                        "request failed, and classifying or logging its error panicked: {}",
                        panic_message(&*panic)
                    )),
                },
            );
            drop_payload(panic);
            response.into_response()
        });
        Poll::Ready(Ok(response))
    }
}

/// Classifies and logs a failure, and builds the response the client gets.
fn respond<B, C: Classify>(
    failure: Failure,
    parts: &RequestParts,
    classifier: &C,
    refusal: &Refuser,
) -> Response<ResponseBody<B>> {
    let method = &parts.method;
    let path = parts.path();
    let view = RequestView {
        method: Some(method),
        path,
        headers: None,
        accept: parts.accept.as_ref(),
    };
    match failure {
        Failure::Error(error) => {
            // The built-in 503s get no base wait of their own: the policy raises it to its
            // minimum `Retry-After`.
            let classification = classify_chain(classifier, &*error, std::time::Duration::ZERO);
            refusal.policy().respond(
                refusal.meter(),
                classification.status,
                classification.reason,
                classification.retry_after,
                classification.detail,
                Some(&Chain(&*error)),
                view,
                std::time::SystemTime::now,
            )
        }
        Failure::Panic(panic) => refusal.policy().respond(
            refusal.meter(),
            http::StatusCode::INTERNAL_SERVER_ERROR,
            crate::Reason::Panic,
            None,
            None,
            Some(&format_args!("service panicked: {panic}")),
            view,
            std::time::SystemTime::now,
        ),
    }
}

/// Displays an error and its `source()` chain: `outer: cause: root cause`.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0;
        for (i, e) in error_chain::sources(self.0).enumerate() {
            if i > 0 {
                f.write_str(": ")?;
            }
            write!(f, "{e}")?;
            last = e;
        }
        if last.source().is_some() {
            // The walk stopped at its bound: say that the chain goes on.
            f.write_str(": ...")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::error_chain::Cyclic;

    #[test]
    fn chain_shows_every_cause_and_marks_a_cut() {
        let e = std::io::Error::other("root");
        assert_eq!(Chain(&e).to_string(), "root");
        let logged = Chain(&Cyclic).to_string();
        assert_eq!(logged.matches("cyclic").count(), error_chain::MAX_DEPTH);
        assert!(logged.ends_with("cyclic: ..."), "{logged}");
    }
}
