//! The cost of `ShedLayer` under low load (a permit is always free), in one run with the bare
//! service and with tower's stock `ConcurrencyLimit` + `LoadShed`.
//!
//! Each iteration does what a server does per request: `poll_ready`, `call`, poll the response
//! future, and drain the response body. Run with `cargo bench --bench shed`. The overload
//! behaviour is measured by `cargo run --release --example overload`.

use std::{convert::Infallible, hint::black_box};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, ServiceBuilder};
use tower_5xx::shed::{Aimd, Gradient, ShedLayer};

mod common;
use common::drive;

/// A request like one hyper parsed: the URI's bytes are shared, so a clone is cheap and the
/// measurement is about the layers, not about building requests.
fn request() -> Request<Full<Bytes>> {
    static URI: std::sync::OnceLock<http::Uri> = std::sync::OnceLock::new();
    let uri = URI.get_or_init(|| {
        http::Uri::from_maybe_shared(Bytes::from(String::from("/users/42"))).unwrap()
    });
    let mut req = Request::new(Full::default());
    *req.uri_mut() = uri.clone();
    req
}

fn low_load(c: &mut Criterion) {
    let handler = service_fn(|req: Request<Full<Bytes>>| async move {
        black_box(&req);
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });

    let mut group = c.benchmark_group("shed_low_load");
    let mut bare = handler;
    group.bench_function("bare", |b| b.iter(|| drive(&mut bare, request())));

    let mut tower_stack = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(1000)
        .service(handler);
    group.bench_function("tower_concurrency_limit_load_shed", |b| {
        b.iter(|| drive(&mut tower_stack, request()))
    });

    let mut fixed = ShedLayer::builder()
        .limit(1000)
        .build()
        .unwrap()
        .layer(handler);
    group.bench_function("tower_5xx_shed_fixed", |b| {
        b.iter(|| drive(&mut fixed, request()))
    });

    let mut gradient = ShedLayer::builder()
        .limit(Gradient::new().initial(1000).ceiling(1000))
        .build()
        .unwrap()
        .layer(handler);
    group.bench_function("tower_5xx_shed_gradient", |b| {
        b.iter(|| drive(&mut gradient, request()))
    });

    let mut aimd = ShedLayer::builder()
        .limit(Aimd::new().initial(1000).ceiling(1000))
        .build()
        .unwrap()
        .layer(handler);
    group.bench_function("tower_5xx_shed_aimd", |b| {
        b.iter(|| drive(&mut aimd, request()))
    });
    group.finish();
}

criterion_group!(benches, low_load);
criterion_main!(benches);
