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
use tower_5xx::retry::{Failure, RetryMiddleware, RetryPolicy, IDEMPOTENCY_KEY};

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
            .build()
            .unwrap(),
    )
    .get(format!("http://{addr}/"))
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(start.elapsed() < Duration::from_millis(100));
}

/// One `KeyedBreakers` shared by the hyper client (`RetryLayer`) and the reqwest client
/// (`RetryMiddleware`) keeps one breaker per endpoint, however each spells the URL.
#[tokio::test(start_paused = true)]
async fn hyper_and_reqwest_share_one_breaker_per_origin() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    use tower::ServiceBuilder;
    use tower_5xx::{
        breaker::{CircuitBreaker, KeyedBreakers, SlidingWindow},
        retry::{Origin, ReplayBody, RetryLayer},
    };

    let (addr, seen) = server(usize::MAX).await;
    let breakers = Arc::new(
        KeyedBreakers::new(
            CircuitBreaker::builder()
                .sliding_window(SlidingWindow::Count(10))
                .minimum_calls(2),
        )
        .unwrap(),
    );
    let once = || RetryPolicy::builder().max_attempts(1).build().unwrap();
    let hyper = ServiceBuilder::new()
        .layer(RetryLayer::new(once()).circuit_breakers(breakers.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());
    let reqwest = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RetryMiddleware::new(once()).circuit_breakers(breakers.clone()))
        .build();

    let port = addr.port();
    let req = http::Request::get(format!("http://127.0.0.1:{port}/a"))
        .body(Full::default())
        .unwrap();
    let res = hyper.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let res = reqwest
        .get(format!("HTTP://127.0.0.1:{port}/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);

    let origin = Origin::from_uri(&format!("http://127.0.0.1:{port}").parse().unwrap()).unwrap();
    assert_eq!(breakers.len(), 1, "{:?}", breakers.snapshot());
    assert_eq!(breakers.get(&origin).window_counts().failures, 2);

    // Two failures out of two: open for both clients.
    let err = reqwest
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(Failure::from(err), Failure::CircuitOpen(_)));
    let req = http::Request::get(format!("http://127.0.0.1:{port}/"))
        .body(Full::default())
        .unwrap();
    let err = hyper.oneshot(req).await.unwrap_err();
    assert!(matches!(Failure::from(err), Failure::CircuitOpen(_)));
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// The policy's per-attempt timeout applies to reqwest too, and a timed-out POST (which may
/// have been processed) is not retried.
#[tokio::test(start_paused = true)]
async fn attempt_timeout_cuts_a_slow_attempt() {
    let slow = Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        "late"
    });
    let addr = common::serve_axum(slow).await;
    let c = client(
        RetryPolicy::builder()
            .attempt_timeout(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let start = Instant::now();
    let err = c
        .post(format!("http://{addr}/"))
        .body("x")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(Failure::from(err), Failure::AttemptTimedOut(_)));
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// reqwest's own errors are `Failure::Transport`.
#[tokio::test]
async fn connection_refused_is_a_transport_failure() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let c = client(
        RetryPolicy::builder()
            .backoff(
                tower_5xx::retry::Backoff::new(
                    Duration::from_millis(1),
                    1.0,
                    Duration::from_millis(1),
                )
                .unwrap(),
            )
            .build()
            .unwrap(),
    );
    let err = c.get(format!("http://{closed}/")).send().await.unwrap_err();
    assert!(matches!(Failure::from(err), Failure::Transport(_)));
}

/// Two `RetryMiddleware`s in one chain, a per-call one (with its own deadline) inside a
/// per-operation one: the inner one giving up at its deadline failed one attempt of the outer
/// one, which retries it by its own rules instead of taking it for its own deadline.
#[tokio::test(start_paused = true)]
async fn an_inner_middlewares_deadline_is_a_failed_attempt_for_the_outer_one() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = Router::new().fallback(move || {
        let log = log.clone();
        async move {
            let n = {
                let mut log = log.lock().unwrap();
                log.push(Instant::now());
                log.len()
            };
            if n == 1 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            "ok"
        }
    });
    let addr = common::serve_axum(app).await;
    let decisions = Arc::new(Mutex::new(Vec::new()));
    let decided = decisions.clone();
    let backoff =
        tower_5xx::retry::Backoff::new(Duration::from_millis(100), 1.0, Duration::from_millis(100))
            .unwrap()
            .jitter(tower_5xx::retry::Jitter::None);
    let per_operation = RetryPolicy::builder()
        .max_attempts(3)
        .backoff(backoff)
        .deadline(Duration::from_secs(30))
        .on_attempt(move |event| decided.lock().unwrap().push(event.decision.clone()))
        .build()
        .unwrap();
    let per_call = RetryPolicy::builder()
        .max_attempts(1)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let c = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RetryMiddleware::new(per_operation))
        .with(RetryMiddleware::new(per_call))
        .build();
    let res = c.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1] - seen[0], Duration::from_millis(2100));
    assert_eq!(
        *decisions.lock().unwrap(),
        [
            tower_5xx::retry::Decision::Retry {
                reason: tower_5xx::retry::RetryReason::Error,
                delay: Duration::from_millis(100),
                retry_after: None,
            },
            tower_5xx::retry::Decision::Done,
        ]
    );
}
