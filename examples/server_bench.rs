//! A real axum server for `scripts/server-bench.sh`: one route (`GET /` answers `hello`) behind
//! the middleware stack named on the command line, served on a tokio `current_thread` runtime so
//! that instruction counts under callgrind are repeatable.
//!
//! ```sh
//! cargo run --release --example server_bench -- ours            # any free port
//! cargo run --release --example server_bench -- ours 127.0.0.1:3000
//! ```
//!
//! `SERVER_BENCH_METRICS=1` installs a Prometheus recorder first (the cost of the `metrics`
//! feature with an exporter). The first line on stdout is the bound address. The server stops cleanly (returning from
//! `main`, so that valgrind tools write their output) on SIGTERM or Ctrl-C.
//!
//! Heap allocations are not counted here: the crate forbids `unsafe` code, which rules out a
//! counting `#[global_allocator]` in the example, and a counting-allocator crate would add its
//! own instructions to every allocation the callgrind runs measure. The script counts them with
//! valgrind's memcheck instead, in separate runs.

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{error_handling::HandleErrorLayer, http::StatusCode, routing::get, BoxError, Router};
use tower::{
    limit::ConcurrencyLimitLayer, load_shed::LoadShedLayer, make::Shared, Layer, Service,
    ServiceBuilder,
};
use tower_5xx::{
    breaker::{BreakerLayer, CircuitBreaker, SlidingWindow},
    catch::CatchLayer,
    lifecycle::{DrainLayer, Lifecycle},
    maintenance::{MaintenanceLayer, MaintenanceSwitch},
    rate_limit::{Policy, RateLimitLayer, MAX_QUOTA},
    refuse::RefusalPolicy,
    shed::ShedLayer,
};
use tower_governor::{governor::GovernorConfigBuilder, GovernorLayer};
use tower_http::catch_panic::CatchPanicLayer;

const STACKS: &[&str] = &[
    "bare",
    "identity",
    "wrap",
    "catch-panic",
    "stock",
    "catch",
    "catch-plain",
    "maintenance",
    "shed",
    "breaker",
    "breaker-count",
    "drain",
    "bare-top",
    "identity-top",
    "drain-top",
    "lifecycle",
    "lifecycle-drain",
    "ours",
    "catch-shed",
    "bare-connect-info",
    "ratelimit",
    "ratelimit-plain",
    "governor",
    "governor-headers",
];

/// A layer that does nothing: the cost of one more service in the stack.
#[derive(Debug, Clone, Copy)]
struct IdentityLayer;

impl<S> Layer<S> for IdentityLayer {
    type Service = Identity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Identity(inner)
    }
}

#[derive(Debug, Clone)]
struct Identity<S>(S);

impl<S: Service<R>, R> Service<R> for Identity<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.0.call(req)
    }
}

/// A layer whose response future wraps the inner one and does nothing else, its `call` not
/// inlined as ours: the floor of any layer that sees the response (the breaker, catch).
#[derive(Debug, Clone, Copy)]
struct WrapLayer;

impl<S> Layer<S> for WrapLayer {
    type Service = Wrap<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Wrap(inner)
    }
}

#[derive(Debug, Clone)]
struct Wrap<S>(S);

impl<S: Service<R>, R> Service<R> for Wrap<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = WrapFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    #[inline(never)]
    fn call(&mut self, req: R) -> Self::Future {
        WrapFuture {
            inner: self.0.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    struct WrapFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F: std::future::Future> std::future::Future for WrapFuture<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

// One function per layer of ours, so that an API change touches one place.

fn catch_layer() -> CatchLayer {
    CatchLayer::new()
}

/// `CatchLayer` whose policy does not negotiate the body's format: nothing of the request is
/// kept but its method and path.
fn catch_plain_layer() -> CatchLayer {
    CatchLayer::new().refusal(
        RefusalPolicy::builder()
            .negotiate(false)
            .build()
            .expect("valid policy"),
    )
}

fn maintenance_layer() -> MaintenanceLayer {
    // The switch stays off: every request goes through.
    MaintenanceLayer::new(MaintenanceSwitch::new())
}

fn shed_layer() -> ShedLayer {
    // Defaults: a limit of 100 concurrent requests; one client never reaches it.
    ShedLayer::new()
}

fn breaker_layer() -> BreakerLayer {
    // Default breaker: stays closed, every request succeeds.
    BreakerLayer::new(CircuitBreaker::builder().build().expect("default breaker"))
}

/// A breaker with a count window of 100 calls (resilience4j's default), closed: it records
/// outcomes without reading its clock.
fn breaker_count_layer() -> BreakerLayer {
    BreakerLayer::new(
        CircuitBreaker::builder()
            .sliding_window(SlidingWindow::Count(100))
            .build()
            .expect("count-window breaker"),
    )
}

fn drain_layer() -> DrainLayer {
    // Never signalled: the lifecycle stays in its serving phase, every request goes through.
    Lifecycle::new(Duration::from_secs(5), Duration::from_secs(10)).drain_layer()
}

/// One client, within quota: a million a second with bursts of a billion.
fn rate_limit_layer(fields: bool) -> RateLimitLayer {
    RateLimitLayer::builder()
        .policy(Policy::new("bench", 1_000_000, Duration::from_secs(1)).burst(MAX_QUOTA))
        .headers_within_quota(fields)
        .build()
        .expect("valid rate limit")
}

/// tower_governor keyed by the peer address, with a quota no run exhausts; with its
/// `x-ratelimit-*` headers or without.
fn governor_layer(headers: bool) -> Option<Router> {
    let router = Router::new().route("/", get(|| async { "hello" }));
    let mut builder = GovernorConfigBuilder::default();
    builder.per_nanosecond(1).burst_size(u32::MAX);
    Some(if headers {
        router.layer(GovernorLayer::new(Arc::new(
            builder.use_headers().finish()?,
        )))
    } else {
        router.layer(GovernorLayer::new(Arc::new(builder.finish()?)))
    })
}

/// The stacks that key on the client's address: served with axum's `ConnectInfo`, which adds
/// its own cost per request (compare them with `bare-connect-info`).
fn needs_connect_info(stack: &str) -> bool {
    stack.starts_with("ratelimit") || stack.starts_with("governor") || stack == "bare-connect-info"
}

fn app(stack: &str) -> Option<Router> {
    let router = Router::new().route("/", get(|| async { "hello" }));
    Some(match stack {
        "bare" => router,
        "identity" => router.layer(IdentityLayer),
        "wrap" => router.layer(WrapLayer),
        "catch-panic" => router.layer(CatchPanicLayer::new()),
        "stock" => router.layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::new())
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    StatusCode::SERVICE_UNAVAILABLE
                }))
                .layer(LoadShedLayer::new())
                .layer(ConcurrencyLimitLayer::new(1000)),
        ),
        "catch" => router.layer(catch_layer()),
        "catch-plain" => router.layer(catch_plain_layer()),
        "maintenance" => router.layer(maintenance_layer()),
        "shed" => router.layer(shed_layer()),
        "breaker" => router.layer(breaker_layer()),
        "breaker-count" => router.layer(breaker_count_layer()),
        "drain" => router.layer(drain_layer()),
        "ours" => router.layer(
            ServiceBuilder::new()
                .layer(catch_layer())
                .layer(maintenance_layer())
                .layer(shed_layer())
                .layer(breaker_layer()),
        ),
        // The two of ours that replace the stock stack's parts (catch-panic, load-shed and
        // concurrency-limit): the like-for-like comparison with "stock".
        "catch-shed" => router.layer(
            ServiceBuilder::new()
                .layer(catch_layer())
                .layer(shed_layer()),
        ),
        "ratelimit" => router.layer(rate_limit_layer(true)),
        "ratelimit-plain" => router.layer(rate_limit_layer(false)),
        "bare-connect-info" | "bare-top" | "identity-top" | "drain-top" | "lifecycle"
        | "lifecycle-drain" => router,
        "governor" => return governor_layer(false),
        "governor-headers" => return governor_layer(true),
        _ => return None,
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let stack = args.next().unwrap_or_default();
    // With SERVER_BENCH_METRICS=1, a Prometheus recorder is installed before the app is built:
    // the layers record into it (the cost of the `metrics` feature with an exporter).
    // Not `install_recorder`: it starts an upkeep thread whose periodic work callgrind would
    // count into the requests (a real server renders on scrape; this one is never scraped).
    let _prometheus = std::env::var_os("SERVER_BENCH_METRICS").map(|_| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("the only recorder");
        handle
    });
    let Some(app) = app(&stack) else {
        eprintln!(
            "usage: server_bench STACK [ADDR]\n  STACK: {}\n  ADDR: default 127.0.0.1:0",
            STACKS.join(", ")
        );
        return ExitCode::from(2);
    };
    let addr: SocketAddr = match args.next().as_deref().unwrap_or("127.0.0.1:0").parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("not a socket address: {e}");
            return ExitCode::from(2);
        }
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().expect("bound listener's address");
        // The script reads this line; print it only once the socket accepts connections.
        println!("{addr}");
        // The `-top` stacks wrap the whole router once, around `Router`'s own service (not
        // each route, as `Router::layer` does): where a layer that only needs to see every
        // request can sit.
        let served = if stack.starts_with("lifecycle") {
            // `Lifecycle::serve`: its own serve loop, which answers the closing phase itself;
            // with `-drain`, a drain layer left on the routes as well (not needed there: what
            // it costs). Compare with `bare-connect-info` (both put the peer's address into
            // every request).
            let lifecycle = Lifecycle::new(Duration::ZERO, Duration::ZERO);
            let app = if stack == "lifecycle-drain" {
                app.layer(lifecycle.drain_layer())
            } else {
                app
            };
            // `with_state(())` turns the handlers into routes once, as `axum::serve` does.
            let _ = lifecycle.serve(listener, app.with_state(())).await;
            Ok(())
        } else if stack.ends_with("-top") {
            let shutdown = shutdown_signal();
            match stack.as_str() {
                "identity-top" => {
                    axum::serve(listener, Shared::new(IdentityLayer.layer(app)))
                        .with_graceful_shutdown(shutdown)
                        .await
                }
                "drain-top" => {
                    axum::serve(listener, Shared::new(drain_layer().layer(app)))
                        .with_graceful_shutdown(shutdown)
                        .await
                }
                _ => {
                    axum::serve(listener, Shared::new(app))
                        .with_graceful_shutdown(shutdown)
                        .await
                }
            }
        } else if needs_connect_info(&stack) {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown_signal())
            .await
        } else {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
        };
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("server error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
