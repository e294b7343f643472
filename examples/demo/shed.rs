//! Overload shedding: `GET /slow?ms=N` behind a `ShedLayer`, so overload can be shown with a
//! load tool.

use std::{net::SocketAddr, time::Duration};

use axum::{extract::Query, routing::get, Json, Router};
use serde::Deserialize;
use tower_5xx::shed::{ShedHandle, ShedLayer};

/// How many `/slow` requests run at once. Fixed, because the demo's latency is whatever `ms`
/// the caller asks for: an adaptive limit would read a mix of `ms` values as load.
const LIMIT: usize = 8;

#[derive(Deserialize)]
struct Slow {
    ms: Option<u64>,
}

pub(crate) fn routes() -> Router {
    let layer = ShedLayer::builder()
        .limit(LIMIT)
        .max_queue(16)
        .max_wait(Duration::from_millis(200))
        .build()
        .unwrap();
    let handle = layer.handle();
    Router::new()
        .route("/slow", get(slow))
        // Only the routes above are limited; the stats route below is not.
        .route_layer(layer)
        .route("/shed/stats", get(move || stats(handle.clone())))
}

/// Sleeps `ms` milliseconds (default 100, at most 10 s): a stand-in for real work.
async fn slow(Query(q): Query<Slow>) -> String {
    let ms = q.ms.unwrap_or(100).min(10_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms\n")
}

async fn stats(handle: ShedHandle) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "limit": handle.limit(),
        "in_flight": handle.in_flight(),
        "queued": handle.queued(),
        "shed": handle.shed_count(),
        "latency_ms": handle.latency().map(|d| d.as_secs_f64() * 1000.0),
    }))
}

pub(crate) fn print_help(addr: SocketAddr) {
    println!("  curl -i 'http://{addr}/slow?ms=200'   # 200 after 200 ms; behind ShedLayer ({LIMIT} at once, 16 queued for up to 200 ms, the rest 503)");
    println!("  curl -s http://{addr}/shed/stats       # current limit, in flight, queued, shed count, latency");
    println!("  oha -z 10s -c 200 'http://{addr}/slow?ms=200'   # overload: many 503s with Retry-After, the rest stay fast");
    println!("  hey -z 10s -c 200 'http://{addr}/slow?ms=200'   # the same with hey");
}
