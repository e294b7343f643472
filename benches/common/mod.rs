//! What every benchmark shares: a request like one hyper parsed, and the per-request driver that
//! `scripts/callgrind-bench.sh` counts instructions of.
#![allow(dead_code, unreachable_pub)]

use std::{
    future::Future,
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http::{header::ACCEPT, HeaderValue, Request, Response, Uri};
use http_body::Body;

/// A request like one hyper parsed: its URI and `Accept` bytes are shared buffers, so clones
/// are reference-count increments, as they are for a real server's requests.
pub struct Template {
    uri: Uri,
    accept: HeaderValue,
}

impl Template {
    /// `GET /users/42?page=3` with this `Accept`.
    pub fn new(accept: &str) -> Self {
        let uri = Uri::from_maybe_shared(Bytes::from(String::from("/users/42?page=3"))).unwrap();
        let accept = HeaderValue::from_maybe_shared(Bytes::from(accept.to_owned())).unwrap();
        // Promote the byte buffers to their shared form once, as hyper's are.
        let _ = (uri.clone(), accept.clone());
        Self { uri, accept }
    }

    /// A fresh request with `body`.
    pub fn request<B>(&self, body: B) -> Request<B> {
        let mut req = Request::new(body);
        *req.uri_mut() = self.uri.clone();
        req.headers_mut().insert(ACCEPT, self.accept.clone());
        req
    }
}

/// One request through `svc`: `poll_ready`, `call`, one poll of the response future (the bench
/// services always answer at once), and the body drained. Never inlined, so that callgrind can
/// count the instructions of one call.
#[inline(never)]
pub fn drive<S, ReqB, ResB>(svc: &mut S, req: Request<ReqB>)
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: std::fmt::Debug,
    ResB: Body<Data = Bytes>,
    ResB::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = pin!(svc.call(req));
    let Poll::Ready(Ok(res)) = fut.as_mut().poll(&mut cx) else {
        panic!("the bench service is always ready and answers at once");
    };
    let mut body = pin!(res.into_body());
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        black_box(frame.unwrap());
    }
}
