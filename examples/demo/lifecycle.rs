//! Readiness, liveness and the SIGTERM drain: `/readyz`, `/livez`, and the phases printed as
//! they happen. `DEMO_DRAIN_DELAY_MS` and `DEMO_GRACE_MS` set the two durations.

use std::{net::SocketAddr, time::Duration};

use axum::Router;
use tower_5xx::lifecycle::Lifecycle;

fn millis(var: &str, default: u64) -> Duration {
    let ms = match std::env::var(var) {
        Ok(v) => v.trim().parse().unwrap_or_else(|e| {
            eprintln!("{var}={v:?} is not a number of milliseconds ({e}); using {default}");
            default
        }),
        Err(_) => default,
    };
    Duration::from_millis(ms)
}

/// The lifecycle of the demo process, its durations from the environment.
pub(crate) fn from_env() -> Lifecycle {
    Lifecycle::new(
        millis("DEMO_DRAIN_DELAY_MS", 3_000),
        millis("DEMO_GRACE_MS", 5_000),
    )
}

/// The two probes. Merged beside the app, outside its maintenance, shed and catch layers.
pub(crate) fn routes(lifecycle: &Lifecycle) -> Router {
    Router::new()
        .route_service("/readyz", lifecycle.readiness())
        .route_service("/livez", lifecycle.liveness())
}

/// Prints each phase of the shutdown as it begins.
pub(crate) fn print_phases(lifecycle: &Lifecycle) {
    let lifecycle = lifecycle.clone();
    tokio::spawn(async move {
        lifecycle.draining().await;
        println!(
            "draining: /readyz answers 503 now; every request is still served for {} ms",
            lifecycle.drain_delay().as_millis()
        );
        lifecycle.closed().await;
        println!(
            "closing: listener closed; requests on open connections get 503 + Retry-After + Connection: close; in-flight requests have {} ms",
            lifecycle.grace().as_millis()
        );
    });
}

pub(crate) fn print_help(addr: SocketAddr, lifecycle: &Lifecycle) {
    println!(
        "Readiness and drain (SIGTERM or Ctrl-C drains; DEMO_DRAIN_DELAY_MS={}, DEMO_GRACE_MS={}):",
        lifecycle.drain_delay().as_millis(),
        lifecycle.grace().as_millis()
    );
    println!("  curl -i http://{addr}/readyz   # 200 ready; 503 + Retry-After once draining");
    println!("  curl -i http://{addr}/livez    # 200 until the process exits");
    println!("  kill -TERM {}                  # drain: readiness 503, serve on, close, finish in-flight, exit 0", std::process::id());
}
