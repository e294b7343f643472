//! `MaintenanceLayer` off (the hot path: one atomic load) against the bare service, and the cost
//! of generating the 503 while on, in one run.
//!
//! tower has no maintenance middleware; the nearest stock shape is a `tower::filter::Filter`
//! reading an `AtomicBool`, measured too. Each iteration does what a server does per request:
//! `poll_ready`, `call`, poll the response future, drain the body. Run with
//! `cargo bench --bench maintenance`.

use std::{
    convert::Infallible,
    hint::black_box,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{filter::Filter, service_fn, BoxError, Layer, Service};
use tower_5xx::maintenance::{MaintenanceLayer, MaintenanceNotice, MaintenanceSwitch};

mod common;
use common::{drive, Template};

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
    group.bench_function("bare", |b| {
        b.iter(|| drive(&mut bare, template.request(Full::default())))
    });

    let flag = Arc::new(AtomicBool::new(false));
    let mut filter = Filter::new(handler(), move |req: Request<Full<Bytes>>| {
        if flag.load(Ordering::Acquire) {
            Err(BoxError::from("maintenance"))
        } else {
            Ok(req)
        }
    });
    group.bench_function("tower_filter_atomic_bool", |b| {
        b.iter(|| drive(&mut filter, template.request(Full::default())))
    });

    let switch = MaintenanceSwitch::new();
    let mut layer = MaintenanceLayer::new(switch)
        .bypass_path("/healthz")
        .layer(handler());
    group.bench_function("tower_5xx_maintenance", |b| {
        b.iter(|| drive(&mut layer, template.request(Full::default())))
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
            b.iter(|| drive(&mut svc, template.request(Full::default())))
        });
    }
    group.finish();
}

criterion_group!(benches, off_path, on_path);
criterion_main!(benches);
