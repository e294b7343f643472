//! The success path of a retrying client: what the retry machinery costs when the first attempt
//! succeeds, in one run with the bare service and with `tower::retry::Retry` around a trivial
//! policy (clone the request, never retry).
//!
//! The "server" is an in-process service that answers 200 at once, so each iteration is only
//! the client-side work: `poll_ready`, `call`, poll the response future (ready at the first
//! poll: no timers are created without a deadline or per-attempt timeout), drain the response
//! body. The request is a `GET` like a client builds one: a URI, two headers, an empty body.
//!
//! Variants:
//!
//! - `bare`: the service alone;
//! - `tower_retry_trivial`: `tower::retry::Retry` with a policy that clones the request and
//!   never retries;
//! - `tower_5xx_policy`: our [`RetryPolicy`] (defaults) under `tower::retry::Retry`, requests
//!   `Request<ReplayBody<Full<Bytes>>>`, errors boxed;
//! - `tower_5xx_policy_budget`: the same with a shared [`RetryBudget`] (one atomic deposit per
//!   request);
//! - `tower_5xx_layer`: our full [`RetryLayer`] (body buffering into a `ReplayBody`, then the
//!   policy under `tower::retry::Retry`), with a budget.
//!
//! Run with `cargo bench --bench retry`; instruction counts with
//! `scripts/callgrind-bench.sh retry retry_success bare tower_retry_trivial tower_5xx_policy
//! tower_5xx_policy_budget tower_5xx_layer`.

use std::{convert::Infallible, hint::black_box, sync::Arc};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{
    header::{ACCEPT, USER_AGENT},
    HeaderValue, Request, Response, Uri,
};
use http_body_util::Full;
use tower::{retry::Policy, service_fn, Layer, ServiceExt};
use tower_5xx::{
    retry::{ReplayBody, RetryBudget, RetryLayer, RetryPolicy},
    BoxError,
};

mod common;
use common::drive;

/// A client request: URI and header bytes are shared, so clones are cheap.
struct Template {
    uri: Uri,
    accept: HeaderValue,
    agent: HeaderValue,
}

impl Template {
    fn new() -> Self {
        Self {
            uri: Uri::from_static("http://api.internal:8080/users/42?page=3"),
            accept: HeaderValue::from_static("application/json"),
            agent: HeaderValue::from_static("tower-5xx-bench/0.1"),
        }
    }

    fn request<B>(&self, body: B) -> Request<B> {
        let mut req = Request::new(body);
        *req.uri_mut() = self.uri.clone();
        req.headers_mut().insert(ACCEPT, self.accept.clone());
        req.headers_mut().insert(USER_AGENT, self.agent.clone());
        req
    }
}

/// `tower::retry` with the least a policy can do: clone the request, never retry.
#[derive(Clone, Copy)]
struct NeverRetry;

impl<Res, E> Policy<Request<Full<Bytes>>, Res, E> for NeverRetry {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Request<Full<Bytes>>,
        _result: &mut Result<Res, E>,
    ) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

fn ok() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

fn success_path(c: &mut Criterion) {
    let template = Template::new();
    let handler = service_fn(|req: Request<Full<Bytes>>| async move {
        black_box(&req);
        Ok::<_, Infallible>(ok())
    });
    // The same server for the variants whose requests carry a `ReplayBody`.
    let replay_handler = service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
        black_box(&req);
        Ok::<_, Infallible>(ok())
    });
    let budget = || Arc::new(RetryBudget::new(0.1, 10).unwrap());

    let mut group = c.benchmark_group("retry_success");

    let mut bare = handler;
    group.bench_function("bare", |b| {
        b.iter(|| drive(&mut bare, template.request(Full::default())))
    });

    let mut trivial = tower::retry::Retry::new(NeverRetry, handler);
    group.bench_function("tower_retry_trivial", |b| {
        b.iter(|| drive(&mut trivial, template.request(Full::default())))
    });

    let boxed = replay_handler.map_err(BoxError::from);
    let mut policy = tower::retry::Retry::new(RetryPolicy::default(), boxed.clone());
    group.bench_function("tower_5xx_policy", |b| {
        b.iter(|| {
            drive(
                &mut policy,
                template.request(ReplayBody::buffered(Bytes::new())),
            )
        })
    });

    let with_budget = RetryPolicy::builder().budget(budget()).build().unwrap();
    let mut policy_budget = tower::retry::Retry::new(with_budget, boxed);
    group.bench_function("tower_5xx_policy_budget", |b| {
        b.iter(|| {
            drive(
                &mut policy_budget,
                template.request(ReplayBody::buffered(Bytes::new())),
            )
        })
    });

    let mut layer = RetryLayer::new(RetryPolicy::builder().budget(budget()).build().unwrap())
        .layer(replay_handler);
    group.bench_function("tower_5xx_layer", |b| {
        b.iter(|| drive(&mut layer, template.request(Full::default())))
    });

    group.finish();
}

criterion_group!(benches, success_path);
criterion_main!(benches);
