//! 500 for errors and panics, 503 for tower's overload and timeout errors.

use std::{net::SocketAddr, time::Duration};

use axum::{extract::Request, response::Response, routing::get, Router};
use tower::{service_fn, BoxError, ServiceBuilder};
use tower_5xx::catch::CatchLayer;

pub(crate) fn routes() -> Router {
    // An inner service that fails: its error becomes a 500, its message stays in the log.
    let boom = ServiceBuilder::new()
        .layer(CatchLayer::new())
        .service(service_fn(|_req: Request| async {
            Err::<Response, _>(std::io::Error::other(
                "connection to db-7.internal:5432 refused (this text is logged, never sent)",
            ))
        }));

    // tower's Timeout inside the stack: its `Elapsed` error becomes a 503.
    let timeout = ServiceBuilder::new()
        .layer(CatchLayer::new())
        .timeout(Duration::from_millis(100))
        .service(service_fn(|_req: Request| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<Response, BoxError>(Response::new("too late".into()))
        }));

    Router::new()
        .route("/", get(|| async { "hello from tower-5xx\n" }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/panic", get(panics))
        .route_service("/boom", boom)
        .route_service("/timeout", timeout)
}

async fn panics() -> &'static str {
    panic!("handler panicked with a secret: the payload is logged, never sent")
}

pub(crate) fn print_help(addr: SocketAddr) {
    println!("  curl -i http://{addr}/            # 200");
    println!("  curl -i http://{addr}/healthz     # 200");
    println!("  curl -i http://{addr}/boom        # 500: the service returned Err, logged with an error id");
    println!(
        "  curl -i http://{addr}/panic       # 500: the handler panicked, logged with an error id"
    );
    println!(
        "  curl -i http://{addr}/timeout     # 503 + Retry-After: tower's Timeout fired (Elapsed)"
    );
}
