use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{layer::Shared, policy::Decision, RATELIMIT, RATELIMIT_POLICY};

/// The fields an admitted response gets: `RateLimit-Policy` and `RateLimit`.
pub(crate) type Fields = Option<[HeaderValue; 2]>;

/// A decision being made by a remote store: `None` when the store failed or was too slow.
pub(crate) type Deciding = Pin<Box<dyn Future<Output = Option<Decision>> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`](super::RateLimit): a decision from Redis being
    /// awaited, the inner service's future, or a ready 429.
    pub struct ResponseFuture<F, S, Req, B> {
        #[pin]
        kind: Kind<F, S, Req, B>,
    }
}

impl<F, S, Req, B> std::fmt::Debug for ResponseFuture<F, S, Req, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, S, Req, B> {
        Inner { #[pin] future: F, fields: Fields },
        // Boxed: the refusal path is cold, and a small future is cheaper to move.
        Refused { response: Option<Box<Response<B>>> },
        Deciding {
            decision: Deciding,
            service: Option<S>,
            request: Option<Req>,
            shared: Arc<Shared>,
        },
    }
}

impl<F, S, Req, B> ResponseFuture<F, S, Req, B> {
    #[inline]
    pub(crate) fn inner(future: F, fields: Fields) -> Self {
        Self {
            kind: Kind::Inner { future, fields },
        }
    }

    pub(crate) fn refused(response: Response<B>) -> Self {
        Self {
            kind: Kind::Refused {
                response: Some(Box::new(response)),
            },
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn deciding(
        decision: Deciding,
        service: S,
        request: Req,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            kind: Kind::Deciding {
                decision,
                service: Some(service),
                request: Some(request),
                shared,
            },
        }
    }
}

impl Shared {
    /// The fields of an admitted response, if the layer sends them.
    #[inline]
    pub(crate) fn within_quota_fields(&self, decision: &Decision) -> Fields {
        self.headers_within_quota.then(|| {
            [
                self.policy_header.clone(),
                decision.header(&self.policies, self.gcras()),
            ]
        })
    }
}

impl<S, ReqBody, B, E> Future for ResponseFuture<S::Future, S, Request<ReqBody>, B>
where
    S: Service<Request<ReqBody>, Response = Response<B>, Error = E>,
    B: From<Bytes>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let next = match kind.as_mut().project() {
                KindProj::Inner { future, fields } => {
                    let mut res = ready!(future.poll(cx))?;
                    if let Some([policy, status]) = fields.take() {
                        let headers = res.headers_mut();
                        headers.entry(RATELIMIT_POLICY).or_insert(policy);
                        headers.entry(RATELIMIT).or_insert(status);
                    }
                    return Poll::Ready(Ok(res));
                }
                KindProj::Refused { response } => {
                    return Poll::Ready(Ok(*response
                        .take()
                        .expect("ResponseFuture polled after completion")));
                }
                KindProj::Deciding {
                    decision,
                    service,
                    request,
                    shared,
                } => {
                    let outcome = ready!(decision.as_mut().poll(cx));
                    let req = request
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let mut service = service.take().expect("service taken once");
                    decide_after_store(shared, outcome, req, &mut service)
                }
            };
            kind.set(next);
        }
    }
}

/// What follows a remote store's answer (or its failure).
fn decide_after_store<S, ReqBody, B>(
    shared: &Shared,
    outcome: Option<Decision>,
    req: Request<ReqBody>,
    service: &mut S,
) -> Kind<S::Future, S, Request<ReqBody>, B>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: From<Bytes>,
{
    let decision = match outcome {
        Some(decision) => decision,
        None => match shared.on_store_failure(&req) {
            Ok(decision) => decision,
            Err(response) => {
                return Kind::Refused {
                    response: Some(Box::new(response)),
                }
            }
        },
    };
    if decision.admit {
        let fields = shared.within_quota_fields(&decision);
        Kind::Inner {
            future: service.call(req),
            fields,
        }
    } else {
        Kind::Refused {
            response: Some(Box::new(shared.too_many(&req, &decision))),
        }
    }
}
