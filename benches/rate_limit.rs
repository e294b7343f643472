//! `RateLimitLayer` (in memory) against the bare service, `governor`'s keyed limiter in a
//! `tower::filter::Filter`, and `tower_governor`'s `Governor`, in one run.
//!
//! Every request comes from one client (a `SocketAddr` and axum's `ConnectInfo` in its
//! extensions, for every variant, the bare one too) and stays within quota: the hot path of a
//! rate limiter. Each iteration does what a server does per request: `poll_ready`, `call`,
//! poll the response future, drain the body. `over_quota` measures the refusal: our 429 with
//! the fields and a problem+json body, against tower_governor's 429. Run with
//! `cargo bench --bench rate_limit`.

use std::{
    convert::Infallible,
    hint::black_box,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use axum::{body::Body, extract::ConnectInfo};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use governor::{Quota, RateLimiter};
use http::{Request, Response};
use http_body_util::Full;
use tower::{filter::Filter, service_fn, BoxError, Layer, Service};
use tower_5xx::rate_limit::{Policy, RateLimitLayer, MAX_QUOTA};
use tower_governor::{governor::GovernorConfigBuilder, GovernorLayer};

mod common;
use common::{drive, Template};

fn handler(
) -> impl Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone {
    service_fn(|req: Request<Full<Bytes>>| async move {
        black_box(&req);
        Ok::<_, Infallible>(Response::new(Body::from(Bytes::from_static(b"ok"))))
    })
}

const CLIENT: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)), 50_000);

fn request(template: &Template) -> Request<Full<Bytes>> {
    let mut req = template.request(Full::default());
    req.extensions_mut().insert(CLIENT);
    req.extensions_mut().insert(ConnectInfo(CLIENT));
    req
}

/// A quota no benchmark run exhausts: a million a second, with bursts of a billion.
fn ours(fields: bool) -> RateLimitLayer {
    RateLimitLayer::builder()
        .policy(Policy::new("bench", 1_000_000, Duration::from_secs(1)).burst(MAX_QUOTA))
        .headers_within_quota(fields)
        .build()
        .unwrap()
}

fn within_quota(c: &mut Criterion) {
    let template = Template::new("*/*");
    let mut group = c.benchmark_group("rate_limit_within_quota");

    let mut bare = handler();
    group.bench_function("bare", |b| b.iter(|| drive(&mut bare, request(&template))));

    let limiter = Arc::new(RateLimiter::keyed(Quota::per_second(NonZeroU32::MAX)));
    let mut filter = Filter::new(handler(), move |req: Request<Full<Bytes>>| {
        let ip = req.extensions().get::<SocketAddr>().map(SocketAddr::ip);
        match ip.map(|ip| limiter.check_key(&ip)) {
            Some(Ok(())) => Ok(req),
            _ => Err(BoxError::from("rate limited")),
        }
    });
    group.bench_function("governor_keyed_filter", |b| {
        b.iter(|| drive(&mut filter, request(&template)))
    });

    let config = Arc::new(
        GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(u32::MAX)
            .finish()
            .unwrap(),
    );
    let mut tower_governor = GovernorLayer::new(config).layer(handler());
    group.bench_function("tower_governor", |b| {
        b.iter(|| drive(&mut tower_governor, request(&template)))
    });

    // With its `x-ratelimit-*` headers, the counterpart of our fields.
    let config = Arc::new(
        GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(u32::MAX)
            .use_headers()
            .finish()
            .unwrap(),
    );
    let mut tower_governor_headers = GovernorLayer::new(config).layer(handler());
    group.bench_function("tower_governor_headers", |b| {
        b.iter(|| drive(&mut tower_governor_headers, request(&template)))
    });

    let mut ours_fields = ours(true).layer(handler());
    group.bench_function("tower_5xx_rate_limit", |b| {
        b.iter(|| drive(&mut ours_fields, request(&template)))
    });
    let mut ours_plain = ours(false).layer(handler());
    group.bench_function("tower_5xx_rate_limit_no_fields", |b| {
        b.iter(|| drive(&mut ours_plain, request(&template)))
    });
    group.finish();
}

fn over_quota(c: &mut Criterion) {
    let template = Template::new("application/json");
    let mut group = c.benchmark_group("rate_limit_over_quota");
    let config = Arc::new(
        GovernorConfigBuilder::default()
            .per_second(3600)
            .burst_size(1)
            .finish()
            .unwrap(),
    );
    let mut tower_governor = GovernorLayer::new(config).layer(handler());
    drive(&mut tower_governor, request(&template));
    group.bench_function("tower_governor_429", |b| {
        b.iter(|| drive(&mut tower_governor, request(&template)))
    });
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("bench", 1, Duration::from_secs(3600)))
        .build()
        .unwrap();
    let mut ours = layer.layer(handler());
    drive(&mut ours, request(&template));
    group.bench_function("tower_5xx_429_problem_json", |b| {
        b.iter(|| drive(&mut ours, request(&template)))
    });
    group.finish();
}

criterion_group!(benches, within_quota, over_quota);
criterion_main!(benches);
