//! `MaintenanceLayer` off (the hot path: one atomic load) against the bare service, and the cost
//! of generating the 503 while on, in one run.
//!
//! tower has no maintenance middleware; the nearest stock shape is a `tower::filter::Filter`
//! reading an `AtomicBool`, measured too. Each iteration does what a server does per request:
//! `poll_ready`, `call`, poll the response future, drain the body. Run with
//! `cargo bench --bench maintenance`.

use std::{
    convert::Infallible,
    future::Future,
    hint::black_box,
    pin::pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{header::ACCEPT, HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::Full;
use tower::{filter::Filter, service_fn, BoxError, Layer, Service};
use tower_5xx::maintenance::{MaintenanceLayer, MaintenanceNotice, MaintenanceSwitch};

/// A request like one hyper parsed: URI and header bytes are shared, so clones are cheap.
struct Template {
    uri: Uri,
    accept: HeaderValue,
}

impl Template {
    fn new(accept: &str) -> Self {
        let uri = Uri::from_maybe_shared(Bytes::from(String::from("/users/42?page=3"))).unwrap();
        let accept = HeaderValue::from_maybe_shared(Bytes::from(accept.to_owned())).unwrap();
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

fn handler() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone {
    service_fn(|req: Request<Full<Bytes>>| async move {
        black_box(&req);
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

fn off_path(c: &mut Criterion) {
    let template = Template::new("*/*");
    let mut group = c.benchmark_group("maintenance_off");
    let mut bare = handler();
    group.bench_function("bare", |b| b.iter(|| drive(&mut bare, template.request())));

    let flag = Arc::new(AtomicBool::new(false));
    let mut filter = Filter::new(handler(), move |req: Request<Full<Bytes>>| {
        if flag.load(Ordering::Acquire) {
            Err(BoxError::from("maintenance"))
        } else {
            Ok(req)
        }
    });
    group.bench_function("tower_filter_atomic_bool", |b| {
        b.iter(|| drive(&mut filter, template.request()))
    });

    let switch = MaintenanceSwitch::new();
    let mut layer = MaintenanceLayer::new(switch)
        .bypass_path("/healthz")
        .layer(handler());
    group.bench_function("tower_5xx_maintenance", |b| {
        b.iter(|| drive(&mut layer, template.request()))
    });
    group.finish();
}

fn on_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("maintenance_on");
    let switch = MaintenanceSwitch::new();
    switch.enable_with(MaintenanceNotice::new().retry_after(Duration::from_secs(120)));
    let layer = MaintenanceLayer::new(switch).bypass_path("/healthz");
    for (name, accept) in [
        ("text", "*/*"),
        ("problem_json", "application/json"),
        ("html", "text/html,*/*;q=0.8"),
    ] {
        let template = Template::new(accept);
        let mut svc = layer.clone().layer(handler());
        group.bench_function(format!("tower_5xx_503_{name}"), |b| {
            b.iter(|| drive(&mut svc, template.request()))
        });
    }
    group.finish();
}

criterion_group!(benches, off_path, on_path);
criterion_main!(benches);
