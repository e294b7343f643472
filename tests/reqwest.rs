//! `RetryMiddleware` with a real reqwest client against an axum server on 127.0.0.1.
#![cfg(feature = "reqwest-middleware")]

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{http::StatusCode, response::IntoResponse, Router};
use tokio::time::Instant;
use tower_5xx::retry::{RetryMiddleware, RetryPolicy, IDEMPOTENCY_KEY};

/// A server that answers 503 + `Retry-After: 1` to the first `fail` requests, then 200, and
/// records when each request arrived and what body it carried.
async fn server(fail: usize) -> (SocketAddr, Arc<Mutex<Vec<(Instant, Vec<u8>)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = Router::new().fallback(move |body: axum::body::Bytes| {
        let log = log.clone();
        async move {
            let n = {
                let mut log = log.lock().unwrap();
                log.push((Instant::now(), body.to_vec()));
                log.len()
            };
            if n <= fail {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "1")],
                    "later",
                )
                    .into_response()
            } else {
                (StatusCode::OK, "ok").into_response()
            }
        }
    });
    (common::serve_axum(app).await, seen)
}

fn client(policy: RetryPolicy) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RetryMiddleware::new(policy))
        .build()
}

#[tokio::test(start_paused = true)]
async fn retries_after_the_servers_retry_after() {
    let (addr, seen) = server(2).await;
    let res = client(RetryPolicy::default())
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for w in seen.windows(2) {
        assert!(w[1].0 - w[0].0 >= Duration::from_secs(1));
    }
}

#[tokio::test(start_paused = true)]
async fn post_needs_an_idempotency_key_and_replays_the_same_bytes() {
    let (addr, seen) = server(1).await;
    let c = client(RetryPolicy::default());
    let res = c
        .post(format!("http://{addr}/"))
        .body("payload-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (addr, seen) = server(1).await;
    let res = c
        .post(format!("http://{addr}/"))
        .header(IDEMPOTENCY_KEY, "k-1")
        .body("payload-2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(_, body)| body == b"payload-2"));
}

#[tokio::test(start_paused = true)]
async fn retry_after_over_the_cap_is_returned_at_once() {
    let (addr, seen) = server(5).await;
    let start = Instant::now();
    let res = client(
        RetryPolicy::builder()
            .retry_after_cap(Duration::from_millis(500))
            .build(),
    )
    .get(format!("http://{addr}/"))
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(start.elapsed() < Duration::from_millis(100));
}
