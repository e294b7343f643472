//! A circuit breaker in front of a flaky in-process dependency: `GET /flaky?fail=0.0..1.0`.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use axum::{
    extract::Request,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use tower::{service_fn, Layer};
use tower_5xx::breaker::{BreakerLayer, CircuitBreaker, SlidingWindow};

pub(crate) fn routes() -> Router {
    let breaker = CircuitBreaker::builder()
        .name("flaky-dependency")
        .failure_rate_threshold(0.5)
        .minimum_calls(10)
        .sliding_window(SlidingWindow::Time(Duration::from_secs(10)))
        .open_duration(Duration::from_secs(5))
        .open_duration_growth(2.0, Duration::from_secs(60))
        .half_open_probes(2)
        .on_transition(|t| {
            println!(
                "[breaker] {} -> {}{}",
                t.from,
                t.to,
                t.open_for
                    .map(|d| format!(" for {} s", d.as_secs()))
                    .unwrap_or_default()
            );
        })
        .build()
        .expect("valid breaker configuration");

    // The "dependency": fails (500) at the rate given by `?fail=`.
    let dependency = service_fn(|req: Request| async move {
        let fail = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("fail=")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            .clamp(0.0, 1.0);
        let response = if fastrand::f64() < fail {
            (StatusCode::INTERNAL_SERVER_ERROR, "dependency failed\n").into_response()
        } else {
            "dependency answered\n".into_response()
        };
        Ok::<Response, Infallible>(response)
    });

    let state = breaker.clone();
    Router::new()
        .route_service("/flaky", BreakerLayer::new(breaker).layer(dependency))
        .route(
            "/flaky/state",
            get(move || async move {
                let c = state.window_counts();
                format!(
                    "state={} calls={} failures={} slow={} open_for_ms={}\n",
                    state.state(),
                    c.calls,
                    c.failures,
                    c.slow_calls,
                    state.remaining_open().map_or(0, |d| d.as_millis())
                )
            }),
        )
}

pub(crate) fn print_help(addr: SocketAddr) {
    println!("Circuit breaker (opens at 50% failures over >= 10 calls in 10 s; open 5 s, doubling up to 60 s):");
    println!("  curl -i 'http://{addr}/flaky?fail=0.0'   # 200: the dependency answers");
    println!("  for i in $(seq 12); do curl -s -o /dev/null -w '%{{http_code}} ' 'http://{addr}/flaky?fail=1.0'; done; echo");
    println!(
        "                                            # 500s until the breaker opens, then 503s"
    );
    println!("  curl -i 'http://{addr}/flaky?fail=0.0'   # 503 + Retry-After while open (dependency not called)");
    println!("  curl -s 'http://{addr}/flaky/state'     # state and window counts");
}
