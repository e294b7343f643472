//! The closed-state path of the circuit breaker (permit + record), single-threaded and with
//! every core calling through one shared breaker, in one run with the bare service and with
//! tower-resilience's circuit breaker (0.14, one breaker shared by all clones).
//!
//! Each call is what a server does per request: `ready`, `call`, await the response. Every
//! variant runs inside a current-thread tokio runtime per thread (tower-resilience's future
//! may need one). Contended variants report the time per call of the whole group of threads
//! (wall time / total calls). Run with `cargo bench --bench breaker`.

use std::{
    convert::Infallible,
    hint::black_box,
    sync::Barrier,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_5xx::breaker::{BreakerLayer, CircuitBreaker, SlidingWindow};
use tower_resilience_circuitbreaker::CircuitBreakerLayer as ResilienceLayer;

type Req = Request<Full<Bytes>>;

fn handler() -> impl Service<
    Req,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    service_fn(|req: Req| async move {
        black_box(&req);
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Runs `iters` calls split over `threads` threads, each with its own clone of `svc`; returns
/// the wall time from the moment all threads are ready.
fn run<S>(svc: &S, threads: usize, iters: u64) -> Duration
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    let barrier = Barrier::new(threads + 1);
    let per_thread = iters.div_ceil(threads as u64);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let mut svc = svc.clone();
            let barrier = &barrier;
            s.spawn(move || {
                let rt = runtime();
                barrier.wait();
                rt.block_on(async {
                    for _ in 0..per_thread {
                        let res = svc
                            .ready()
                            .await
                            .unwrap()
                            .call(Request::new(Full::default()))
                            .await
                            .unwrap();
                        black_box(res);
                    }
                });
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn ours() -> impl Service<Req, Response = impl Send, Error = Infallible, Future = impl Send>
       + Clone
       + Send
       + 'static {
    // A window every call lands in, thresholds never reached: the closed-state path.
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Time(Duration::from_secs(30)))
        .build()
        .unwrap();
    BreakerLayer::new(breaker).layer(handler())
}

fn theirs(
) -> impl Service<Req, Response = impl Send, Error = impl std::fmt::Debug, Future = impl Send>
       + Clone
       + Send
       + 'static {
    let (layer, _handle) = ResilienceLayer::builder()
        .failure_rate_threshold(0.5)
        .build_with_handle()
        .unwrap();
    layer.layer(handler())
}

fn permit_only(c: &mut Criterion) {
    let breaker = CircuitBreaker::builder().build().unwrap();
    c.bench_function("breaker_permit_record/tower_5xx", |b| {
        b.iter(|| black_box(breaker.try_acquire().unwrap()).success())
    });
    // The same with a clock that costs nothing to read, to see what tokio's clock costs.
    let manual = CircuitBreaker::builder()
        .clock(tower_5xx::breaker::ManualClock::new())
        .build()
        .unwrap();
    c.bench_function("breaker_permit_record/tower_5xx_manual_clock", |b| {
        b.iter(|| black_box(manual.try_acquire().unwrap()).success())
    });
    let instant = std::time::Instant::now();
    c.bench_function("breaker_permit_record/tokio_instant_now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    black_box(instant);
}

fn closed_path(c: &mut Criterion) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    for (group, threads) in [
        ("breaker_closed_1_thread", 1),
        ("breaker_closed_all_cores", cores),
    ] {
        let mut g = c.benchmark_group(group);
        let bare = handler();
        g.bench_function("bare", |b| {
            b.iter_custom(|iters| run(&bare, threads, iters))
        });
        let resilience = theirs();
        g.bench_function("tower_resilience", |b| {
            b.iter_custom(|iters| run(&resilience, threads, iters))
        });
        let tower_5xx = ours();
        g.bench_function("tower_5xx", |b| {
            b.iter_custom(|iters| run(&tower_5xx, threads, iters))
        });
        g.finish();
    }
}

criterion_group!(benches, permit_only, closed_path);
criterion_main!(benches);
