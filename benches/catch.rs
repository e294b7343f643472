//! The success path of `CatchLayer`, in one run with the bare service and with tower-http's
//! `CatchPanicLayer` (0.6, the line axum 0.8 uses).
//!
//! Each iteration does what a server does per request: `poll_ready`, `call`, poll the response
//! future, and drain the response body. Run with `cargo bench --bench catch`.

use std::{
    convert::Infallible,
    future::Future,
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{header::ACCEPT, HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::Full;
use tower::{service_fn, Layer, Service};
use tower_5xx::catch::CatchLayer;
use tower_http::catch_panic::CatchPanicLayer;

/// A request like one hyper parsed: URI and header bytes are shared, so clones are cheap.
struct Template {
    uri: Uri,
    accept: HeaderValue,
}

impl Template {
    fn new() -> Self {
        let uri = Uri::from_maybe_shared(Bytes::from(String::from("/users/42?page=3"))).unwrap();
        let accept = HeaderValue::from_maybe_shared(Bytes::from(String::from("*/*"))).unwrap();
        // Promote the byte buffers to their shared form once, as hyper's are.
        let _ = (uri.clone(), accept.clone());
        Self { uri, accept }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::default());
        *req.uri_mut() = self.uri.clone();
        req.headers_mut().insert(ACCEPT, self.accept.clone());
        req
    }
}

fn drive<S, B>(svc: &mut S, req: Request<Full<Bytes>>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = pin!(svc.call(req));
    let Poll::Ready(Ok(res)) = fut.as_mut().poll(&mut cx) else {
        panic!("the bench service is always ready");
    };
    let mut body = pin!(res.into_body());
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        black_box(frame.unwrap());
    }
}

fn success_path(c: &mut Criterion) {
    let template = Template::new();
    let handler = service_fn(|req: Request<Full<Bytes>>| async move {
        black_box(&req);
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });

    let mut group = c.benchmark_group("catch_success");
    let mut bare = handler;
    group.bench_function("bare", |b| b.iter(|| drive(&mut bare, template.request())));
    let mut panic_layer = CatchPanicLayer::new().layer(handler);
    group.bench_function("tower_http_catch_panic", |b| {
        b.iter(|| drive(&mut panic_layer, template.request()))
    });
    let mut catch = CatchLayer::new().layer(handler);
    group.bench_function("tower_5xx_catch", |b| {
        b.iter(|| drive(&mut catch, template.request()))
    });
    let mut catch_negotiating = CatchLayer::new().negotiate(true).layer(handler);
    group.bench_function("tower_5xx_catch_negotiate", |b| {
        b.iter(|| drive(&mut catch_negotiating, template.request()))
    });
    group.finish();
}

fn error_path(c: &mut Criterion) {
    // Panics are the point here: keep the default hook from printing a message per iteration.
    std::panic::set_hook(Box::new(|_| {}));
    let template = Template::new();
    let failing = service_fn(|_req: Request<Full<Bytes>>| async move {
        Err::<Response<Full<Bytes>>, _>(std::io::Error::other("boom"))
    });
    let mut group = c.benchmark_group("catch_error");
    let mut catch = CatchLayer::new().layer(failing);
    group.bench_function("tower_5xx_catch_err_500", |b| {
        b.iter(|| drive(&mut catch, template.request()))
    });

    let panicking = service_fn(|_req: Request<Full<Bytes>>| async move {
        if black_box(true) {
            panic!("boom");
        }
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let mut panic_layer = CatchPanicLayer::new().layer(panicking);
    group.bench_function("tower_http_catch_panic_500", |b| {
        b.iter(|| drive(&mut panic_layer, template.request()))
    });
    let mut catch = CatchLayer::new().layer(panicking);
    group.bench_function("tower_5xx_catch_panic_500", |b| {
        b.iter(|| drive(&mut catch, template.request()))
    });
    group.finish();
}

criterion_group!(benches, success_path, error_path);
criterion_main!(benches);
