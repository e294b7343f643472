//! The success path of `CatchLayer`, in one run with the bare service and with tower-http's
//! `CatchPanicLayer` (0.6, the line axum 0.8 uses).
//!
//! Each iteration does what a server does per request: `poll_ready`, `call`, poll the response
//! future, and drain the response body. Run with `cargo bench --bench catch`.

use std::{convert::Infallible, hint::black_box};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer};
use tower_5xx::{catch::CatchLayer, refuse::RefusalPolicy};
use tower_http::catch_panic::CatchPanicLayer;

mod common;
use common::{drive, Template};

fn success_path(c: &mut Criterion) {
    let template = Template::new("*/*");
    let handler = service_fn(|req: Request<Full<Bytes>>| async move {
        black_box(&req);
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });

    let mut group = c.benchmark_group("catch_success");
    let mut bare = handler;
    group.bench_function("bare", |b| {
        b.iter(|| drive(&mut bare, template.request(Full::default())))
    });
    let mut panic_layer = CatchPanicLayer::new().layer(handler);
    group.bench_function("tower_http_catch_panic", |b| {
        b.iter(|| drive(&mut panic_layer, template.request(Full::default())))
    });
    let plain = RefusalPolicy::builder().negotiate(false).build().unwrap();
    let mut catch = CatchLayer::new().refusal(plain).layer(handler);
    group.bench_function("tower_5xx_catch", |b| {
        b.iter(|| drive(&mut catch, template.request(Full::default())))
    });
    let mut catch_negotiating = CatchLayer::new().layer(handler);
    group.bench_function("tower_5xx_catch_negotiate", |b| {
        b.iter(|| drive(&mut catch_negotiating, template.request(Full::default())))
    });
    group.finish();
}

fn error_path(c: &mut Criterion) {
    // Panics are the point here: keep the default hook from printing a message per iteration.
    std::panic::set_hook(Box::new(|_| {}));
    let template = Template::new("*/*");
    let failing = service_fn(|_req: Request<Full<Bytes>>| async move {
        Err::<Response<Full<Bytes>>, _>(std::io::Error::other("boom"))
    });
    let mut group = c.benchmark_group("catch_error");
    let mut catch = CatchLayer::new().layer(failing);
    group.bench_function("tower_5xx_catch_err_500", |b| {
        b.iter(|| drive(&mut catch, template.request(Full::default())))
    });

    let panicking = service_fn(|_req: Request<Full<Bytes>>| async move {
        if black_box(true) {
            panic!("boom");
        }
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let mut panic_layer = CatchPanicLayer::new().layer(panicking);
    group.bench_function("tower_http_catch_panic_500", |b| {
        b.iter(|| drive(&mut panic_layer, template.request(Full::default())))
    });
    let mut catch = CatchLayer::new().layer(panicking);
    group.bench_function("tower_5xx_catch_panic_500", |b| {
        b.iter(|| drive(&mut catch, template.request(Full::default())))
    });
    group.finish();
}

criterion_group!(benches, success_path, error_path);
criterion_main!(benches);
