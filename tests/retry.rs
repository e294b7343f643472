//! `RetryLayer` against real axum servers on 127.0.0.1, with hyper-util's client.
//!
//! Most tests run on tokio's paused clock: waits complete as soon as everything else is idle,
//! and the server stamps each arrival with the same (virtual) clock, so "no retry before the
//! `Retry-After` instant" is checked exactly, without real sleeps.
#![cfg(feature = "retry")]

mod common;

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
    time::{Duration, SystemTime},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use http::Request;
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_5xx::{
    retry::error::{AttemptTimedOut, DeadlineExceeded},
    retry::{
        Backoff, Decision, Failure, GiveUpReason, Jitter, Origin, ReplayBody, Retry, RetryBudget,
        RetryLayer, RetryPolicy, IDEMPOTENCY_KEY,
    },
};

/// What the test server answers, in order; once the script is empty it answers 200.
#[derive(Clone)]
enum Canned {
    Status(StatusCode, Vec<(&'static str, String)>),
    Sleep(Duration),
    /// 503 with `Date: now` and `Retry-After: now + secs` as HTTP-dates.
    DatedRetryAfter(u64),
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Canned>>,
    /// Every default reply for this many more requests is this one (for "the server is down").
    always: Mutex<Option<Canned>>,
    arrivals: Mutex<Vec<(Instant, Method, Bytes)>>,
}

impl Script {
    fn new(replies: impl IntoIterator<Item = Canned>) -> Arc<Self> {
        Arc::new(Self {
            replies: Mutex::new(replies.into_iter().collect()),
            ..Self::default()
        })
    }

    fn arrivals(&self) -> Vec<(Instant, Method, Bytes)> {
        self.arrivals.lock().unwrap().clone()
    }

    fn gaps(&self) -> Vec<Duration> {
        let a = self.arrivals();
        a.windows(2).map(|w| w[1].0 - w[0].0).collect()
    }
}

fn unavailable(retry_after: &str) -> Canned {
    Canned::Status(
        StatusCode::SERVICE_UNAVAILABLE,
        vec![("retry-after", retry_after.to_owned())],
    )
}

async fn handler(
    State(script): State<Arc<Script>>,
    method: Method,
    _headers: HeaderMap,
    body: Bytes,
) -> Response {
    script
        .arrivals
        .lock()
        .unwrap()
        .push((Instant::now(), method, body));
    let next = script.replies.lock().unwrap().pop_front();
    let next = next.or_else(|| script.always.lock().unwrap().clone());
    match next {
        None => (StatusCode::OK, "ok").into_response(),
        Some(Canned::Status(status, headers)) => {
            let mut res = (status, "canned").into_response();
            for (k, v) in headers {
                res.headers_mut().insert(k, v.parse().unwrap());
            }
            res
        }
        Some(Canned::Sleep(d)) => {
            tokio::time::sleep(d).await;
            (StatusCode::OK, "slept").into_response()
        }
        Some(Canned::DatedRetryAfter(secs)) => {
            let now = SystemTime::now();
            let mut res = (StatusCode::SERVICE_UNAVAILABLE, "later").into_response();
            res.headers_mut()
                .insert("date", httpdate::fmt_http_date(now).parse().unwrap());
            res.headers_mut().insert(
                "retry-after",
                httpdate::fmt_http_date(now + Duration::from_secs(secs))
                    .parse()
                    .unwrap(),
            );
            res
        }
    }
}

async fn server(script: Arc<Script>) -> SocketAddr {
    let app = Router::new().fallback(handler).with_state(script);
    common::serve_axum(app).await
}

type Body = Full<Bytes>;
type HyperClient = Client<hyper_util::client::legacy::connect::HttpConnector, ReplayBody<Body>>;

fn retrying(policy: RetryPolicy) -> Retry<HyperClient> {
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Body>>();
    ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(client)
}

/// A backoff without randomness, so expected waits are exact.
fn fixed_backoff(ms: u64) -> Backoff {
    Backoff::new(Duration::from_millis(ms), 1.0, Duration::from_millis(ms))
        .unwrap()
        .jitter(Jitter::None)
}

fn get(addr: SocketAddr) -> Request<Body> {
    Request::get(format!("http://{addr}/"))
        .body(Body::default())
        .unwrap()
}

async fn call(
    svc: &mut Retry<HyperClient>,
    req: Request<Body>,
) -> Result<(StatusCode, Bytes), tower_5xx::BoxError> {
    let res = svc.ready().await?.call(req).await?;
    let status = res.status();
    Ok((status, res.into_body().collect().await?.to_bytes()))
}

/// A request body as an upload stream gives it: its frames (data, then trailers if any), with
/// no size hint, the first one `delay` late on tokio's clock.
struct Upload {
    frames: VecDeque<Frame<Bytes>>,
    delay: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Upload {
    fn new(frames: Vec<Frame<Bytes>>, delay: Option<Duration>) -> Self {
        Self {
            frames: frames.into(),
            delay: delay.map(|d| Box::pin(tokio::time::sleep(d))),
        }
    }
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(delay) = self.delay.as_mut() {
            ready!(delay.as_mut().poll(cx));
            self.delay = None;
        }
        Poll::Ready(self.frames.pop_front().map(Ok))
    }
}

#[tokio::test(start_paused = true)]
async fn waits_what_retry_after_says_then_succeeds() {
    let script = Script::new([unavailable("1"), unavailable("1")]);
    let addr = server(script.clone()).await;
    let mut svc = retrying(RetryPolicy::builder().max_attempts(3).build().unwrap());

    let (status, body) = call(&mut svc, get(addr)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok");
    let gaps = script.gaps();
    assert_eq!(gaps.len(), 2);
    for gap in gaps {
        // Never before the instant the server named; the default backoff (<= 200 ms here) is
        // below it, so the wait is the header's.
        assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
        assert!(gap < Duration::from_millis(1100), "waited {gap:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_above_the_cap_returns_the_503_at_once() {
    let script = Script::new([unavailable("1"), unavailable("1")]);
    let addr = server(script.clone()).await;
    let start = Instant::now();
    let mut svc = retrying(
        RetryPolicy::builder()
            .retry_after_cap(Duration::from_millis(500))
            .build()
            .unwrap(),
    );
    let (status, _) = call(&mut svc, get(addr)).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(script.arrivals().len(), 1);
    assert!(start.elapsed() < Duration::from_millis(100), "no sleep");
}

#[tokio::test(start_paused = true)]
async fn huge_retry_after_is_capped_by_default() {
    let script = Script::new([unavailable("99999999999999999999")]);
    let addr = server(script.clone()).await;
    let start = Instant::now();
    let mut svc = retrying(RetryPolicy::default());
    let (status, _) = call(&mut svc, get(addr)).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(script.arrivals().len(), 1);
    assert!(start.elapsed() < Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn http_date_retry_after_is_read_against_the_date_header() {
    let script = Script::new([Canned::DatedRetryAfter(2)]);
    let addr = server(script.clone()).await;
    let mut svc = retrying(RetryPolicy::default());
    let (status, _) = call(&mut svc, get(addr)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let gaps = script.gaps();
    assert_eq!(gaps.len(), 1);
    assert!(gaps[0] >= Duration::from_secs(2), "{gaps:?}");
    assert!(gaps[0] < Duration::from_millis(2100), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn garbage_retry_after_falls_back_to_backoff() {
    let script = Script::new([unavailable("soon"), unavailable("-3")]);
    let addr = server(script.clone()).await;
    let mut svc = retrying(
        RetryPolicy::builder()
            .backoff(fixed_backoff(250))
            .build()
            .unwrap(),
    );
    let (status, _) = call(&mut svc, get(addr)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        script.gaps(),
        vec![Duration::from_millis(250), Duration::from_millis(250)]
    );
}

#[tokio::test(start_paused = true)]
async fn never_retries_501_or_4xx() {
    for status in [
        StatusCode::NOT_IMPLEMENTED,
        StatusCode::BAD_REQUEST,
        StatusCode::NOT_FOUND,
    ] {
        let script = Script::new([Canned::Status(status, vec![])]);
        let addr = server(script.clone()).await;
        let mut svc = retrying(RetryPolicy::default());
        assert_eq!(call(&mut svc, get(addr)).await.unwrap().0, status);
        assert_eq!(script.arrivals().len(), 1, "{status}");
    }
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_only_with_an_idempotency_key_and_identical_bytes() {
    let script = Script::new([unavailable("1")]);
    let addr = server(script.clone()).await;
    let mut svc = retrying(RetryPolicy::default());
    let post = |key: Option<&str>| {
        let mut b = Request::post(format!("http://{addr}/orders"));
        if let Some(key) = key {
            b = b.header(IDEMPOTENCY_KEY, key);
        }
        b.body(Body::new(Bytes::from_static(b"{\"item\":42}")))
            .unwrap()
    };
    // Without a key: the 503 comes back, the server saw it once.
    let (status, _) = call(&mut svc, post(None)).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(script.arrivals().len(), 1);

    // With a key: retried, and every attempt carried the same bytes.
    script
        .replies
        .lock()
        .unwrap()
        .extend([unavailable("1"), unavailable("1")]);
    let (status, _) = call(&mut svc, post(Some("order-7"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let arrivals = script.arrivals();
    assert_eq!(arrivals.len(), 4);
    for (_, method, body) in &arrivals[1..] {
        assert_eq!(method, Method::POST);
        assert_eq!(body, &Bytes::from_static(b"{\"item\":42}"));
    }
}

#[tokio::test(start_paused = true)]
async fn body_over_the_cap_is_sent_once_whole_and_not_retried() {
    let script = Script::new([unavailable("1")]);
    let addr = server(script.clone()).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Body>>();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::default()).max_replay_body(1024))
        .service(client);
    let big: Bytes = (0..10_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let req = Request::put(format!("http://{addr}/blob"))
        .body(Body::new(big.clone()))
        .unwrap();
    let (status, _) = call(&mut svc, req).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "not retried");
    let arrivals = script.arrivals();
    assert_eq!(arrivals.len(), 1);
    assert_eq!(arrivals[0].2, big, "the body arrived whole");

    // A small PUT through the same service is retried.
    script.replies.lock().unwrap().push_back(unavailable("1"));
    let small = Request::put(format!("http://{addr}/blob"))
        .body(Body::new(Bytes::from_static(b"small")))
        .unwrap();
    assert_eq!(call(&mut svc, small).await.unwrap().0, StatusCode::OK);
    assert_eq!(script.arrivals().len(), 3);
}

/// A body buffered for replay keeps its trailers on the wire: over HTTP/1.1 it goes out
/// chunked (an exact length would become `content-length`, and hyper would drop the trailers),
/// on the first attempt and on the retry alike.
#[tokio::test]
async fn request_trailers_reach_the_server_on_every_attempt_over_http1() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = common::serve_hyper(tower::service_fn(
        move |req: Request<hyper::body::Incoming>| {
            let (log, calls) = (log.clone(), calls.clone());
            async move {
                let collected = req.into_body().collect().await.unwrap();
                let checksum = collected
                    .trailers()
                    .and_then(|t| t.get("x-checksum"))
                    .map(|v| v.to_str().unwrap().to_owned());
                log.lock().unwrap().push((checksum, collected.to_bytes()));
                let status = if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                let mut res = http::Response::new(Full::new(Bytes::new()));
                *res.status_mut() = status;
                Ok::<_, Infallible>(res)
            }
        },
    ))
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Upload>>();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::builder()
                .backoff(fixed_backoff(10))
                .build()
                .unwrap(),
        ))
        .service(client);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    let req = Request::put(format!("http://{addr}/upload"))
        .header("trailer", "x-checksum")
        .body(Upload::new(
            vec![
                Frame::data(Bytes::from_static(b"payload")),
                Frame::trailers(trailers),
            ],
            None,
        ))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let expected = (Some("abc123".to_owned()), Bytes::from_static(b"payload"));
    assert_eq!(*seen.lock().unwrap(), [expected.clone(), expected]);
}

#[tokio::test(start_paused = true)]
async fn budget_bounds_attempts_while_the_server_is_down() {
    let script = Script::new([]);
    *script.always.lock().unwrap() = Some(Canned::Status(StatusCode::SERVICE_UNAVAILABLE, vec![]));
    let addr = server(script.clone()).await;
    let budget = Arc::new(RetryBudget::new(0.1, 3).unwrap());
    let policy = RetryPolicy::builder()
        .max_attempts(5)
        .backoff(fixed_backoff(10))
        .budget(budget)
        .build()
        .unwrap();
    let svc = retrying(policy);
    const N: usize = 100;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..N / 10 {
                let (status, _) = call(&mut svc, get(addr)).await.unwrap();
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let attempts = script.arrivals().len();
    // N * (1 + ratio) + floor = 100 + 10 + 3.
    assert!(attempts <= 113, "{attempts} attempts");
    assert!(attempts > N, "the budget allowed some retries");
}

#[tokio::test(start_paused = true)]
async fn connection_refused_is_retried_even_for_post() {
    // Bind and drop a listener: nothing listens on that port any more.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let decisions = Arc::new(Mutex::new(Vec::new()));
    let d = decisions.clone();
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .backoff(fixed_backoff(10))
        .on_attempt(move |e| d.lock().unwrap().push(e.decision.clone()))
        .build()
        .unwrap();
    let mut svc = retrying(policy);
    let req = Request::post(format!("http://{addr}/"))
        .body(Body::new(Bytes::from_static(b"x")))
        .unwrap();
    assert!(call(&mut svc, req).await.is_err());
    let decisions = decisions.lock().unwrap();
    assert_eq!(decisions.len(), 3, "{decisions:?}");
    assert!(matches!(decisions[0], Decision::Retry { .. }));
    assert!(matches!(
        decisions[2],
        Decision::GiveUp {
            why: GiveUpReason::Attempts,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn deadline_stops_waits_that_would_pass_it() {
    let script = Script::new([unavailable("8"), unavailable("8")]);
    let addr = server(script.clone()).await;
    let mut svc = retrying(
        RetryPolicy::builder()
            .max_attempts(5)
            .deadline(Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    let (status, _) = call(&mut svc, get(addr)).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        script.arrivals().len(),
        2,
        "8 s fits in 10 s, 16 s does not"
    );
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_an_attempt_in_flight() {
    let script = Script::new([Canned::Sleep(Duration::from_secs(60))]);
    let addr = server(script.clone()).await;
    let mut svc = retrying(
        RetryPolicy::builder()
            .deadline(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let err = call(&mut svc, get(addr)).await.unwrap_err();
    assert!(err.is::<DeadlineExceeded>(), "{err}");
}

/// A per-call retry client (with its own deadline) inside a per-operation one, both
/// `RetryLayer`s over one hyper client.
type Nested = Retry<
    Retry<Client<hyper_util::client::legacy::connect::HttpConnector, ReplayBody<ReplayBody<Body>>>>,
>;

/// `per_call` inside `per_operation`; `per_operation`'s decisions are recorded in the vector.
fn nested(
    per_call: RetryPolicy,
    per_operation: tower_5xx::retry::RetryPolicyBuilder,
) -> (Nested, Arc<Mutex<Vec<Decision>>>) {
    let decisions = Arc::new(Mutex::new(Vec::new()));
    let log = decisions.clone();
    let per_operation = per_operation
        .on_attempt(move |event| log.lock().unwrap().push(event.decision.clone()))
        .build()
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<ReplayBody<Body>>>();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(per_operation))
        .layer(RetryLayer::new(per_call))
        .service(client);
    (svc, decisions)
}

/// An inner client that gives up at its own deadline failed one attempt of the outer client:
/// the outer one retries it by its own rules (a GET, attempts and 30 s left), instead of taking
/// the inner `DeadlineExceeded` for its own deadline and giving up.
#[tokio::test(start_paused = true)]
async fn an_inner_clients_deadline_is_a_failed_attempt_for_the_outer_one() {
    let script = Script::new([Canned::Sleep(Duration::from_secs(60))]);
    let addr = server(script.clone()).await;
    let per_call = RetryPolicy::builder()
        .max_attempts(1)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let per_operation = RetryPolicy::builder()
        .max_attempts(3)
        .backoff(fixed_backoff(100))
        .deadline(Duration::from_secs(30));
    let (svc, decisions) = nested(per_call, per_operation);
    let res = svc.oneshot(get(addr)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(script.arrivals().len(), 2);
    assert_eq!(
        script.gaps(),
        [Duration::from_millis(2100)],
        "the inner deadline, then the outer backoff"
    );
    assert_eq!(
        *decisions.lock().unwrap(),
        [
            Decision::Retry {
                reason: tower_5xx::retry::RetryReason::Error,
                delay: Duration::from_millis(100),
                retry_after: None,
            },
            Decision::Done,
        ]
    );
}

/// Nested the same way, the outer client's own deadline is still its own: it cuts the second
/// attempt (sent after the inner client gave up on the first) and is a `deadline` give-up.
#[tokio::test(start_paused = true)]
async fn the_outer_clients_own_deadline_still_ends_a_nested_request() {
    let script = Script::new([]);
    *script.always.lock().unwrap() = Some(Canned::Sleep(Duration::from_secs(60)));
    let addr = server(script.clone()).await;
    let per_call = RetryPolicy::builder()
        .max_attempts(1)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let per_operation = RetryPolicy::builder()
        .max_attempts(3)
        .backoff(fixed_backoff(100))
        .deadline(Duration::from_secs(3));
    let (svc, decisions) = nested(per_call, per_operation);
    let start = Instant::now();
    let err = svc.oneshot(get(addr)).await.unwrap_err();
    assert!(err.is::<DeadlineExceeded>(), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(script.arrivals().len(), 2);
    let decisions = decisions.lock().unwrap();
    assert!(
        matches!(
            decisions[..],
            [
                Decision::Retry { .. },
                Decision::GiveUp {
                    why: GiveUpReason::Deadline,
                    ..
                }
            ]
        ),
        "{decisions:?}"
    );
}

/// The deadline counts from the call, for the policy as for the layer's timer: after 5 s spent
/// reading the request body, a 6 s `Retry-After` would end past the 10 s deadline, so the
/// policy does not start that wait and the 503 comes back as the answer (the wait, started,
/// would have been cut by the timer into a `DeadlineExceeded` error).
#[tokio::test(start_paused = true)]
async fn deadline_counts_the_time_spent_reading_the_request_body() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let inner = tower::service_fn(move |req: Request<ReplayBody<Upload>>| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = req.into_body().collect().await;
            let res = if n == 0 {
                http::Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .header("retry-after", "6")
                    .body(Body::default())
            } else {
                http::Response::builder().body(Body::from("ok"))
            };
            Ok::<_, Infallible>(res.unwrap())
        }
    });
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .backoff(fixed_backoff(10))
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(inner);
    let req = Request::put("http://api.test/")
        .body(Upload::new(
            vec![Frame::data(Bytes::from_static(b"x"))],
            Some(Duration::from_secs(5)),
        ))
        .unwrap();
    let start = Instant::now();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::from_secs(5), "no wait started");
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_is_retried_for_idempotent_requests() {
    let script = Script::new([Canned::Sleep(Duration::from_secs(60))]);
    let addr = server(script.clone()).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Body>>();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::builder()
                .attempt_timeout(Duration::from_secs(1))
                .build()
                .unwrap(),
        ))
        .service(client);
    let (status, body) = call(&mut svc, get(addr)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok");
    assert_eq!(script.arrivals().len(), 2);

    // A POST that timed out may have been processed: not retried.
    script
        .replies
        .lock()
        .unwrap()
        .push_back(Canned::Sleep(Duration::from_secs(60)));
    let post = Request::post(format!("http://{addr}/"))
        .body(Body::new(Bytes::from_static(b"x")))
        .unwrap();
    let err = call(&mut svc, post).await.unwrap_err();
    assert!(err.is::<AttemptTimedOut>(), "{err}");
    assert_eq!(script.arrivals().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn client_breaker_opens_for_the_servers_retry_after_and_fails_fast() {
    use tower_5xx::{
        breaker::error::CircuitOpen,
        breaker::{CircuitBreaker, KeyedBreakers, SlidingWindow},
    };

    let script = Script::new([]);
    *script.always.lock().unwrap() = Some(unavailable("7"));
    let addr = server(script.clone()).await;
    let breakers = Arc::new(
        KeyedBreakers::new(
            CircuitBreaker::builder()
                .sliding_window(SlidingWindow::Count(10))
                .minimum_calls(3)
                .failure_rate_threshold(0.5)
                .open_duration(Duration::from_secs(1))
                .half_open_probes(1),
        )
        .unwrap(),
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Body>>();
    let mut svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(RetryPolicy::builder().max_attempts(1).build().unwrap())
                .circuit_breakers(breakers.clone()),
        )
        .service(client);

    // Three 503s reach the server; the third trips the endpoint's breaker.
    for _ in 0..3 {
        assert_eq!(
            call(&mut svc, get(addr)).await.unwrap().0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(script.arrivals().len(), 3);

    // Now the client fails fast, without a request, and says when to try again: the server's
    // Retry-After (7 s), not the breaker's configured 1 s.
    let err = call(&mut svc, get(addr)).await.unwrap_err();
    let open = err
        .downcast_ref::<CircuitOpen>()
        .expect("a CircuitOpen error");
    assert_eq!(open.retry_after(), Duration::from_secs(7));
    assert_eq!(script.arrivals().len(), 3);

    // After the open time a probe goes through; the server has healed, the breaker closes.
    *script.always.lock().unwrap() = None;
    tokio::time::advance(Duration::from_secs(7)).await;
    assert_eq!(call(&mut svc, get(addr)).await.unwrap().0, StatusCode::OK);
    assert_eq!(call(&mut svc, get(addr)).await.unwrap().0, StatusCode::OK);
    assert_eq!(script.arrivals().len(), 5);
    let origin = Origin::from_uri(&format!("http://{addr}/").parse().unwrap()).unwrap();
    assert_eq!(origin.as_str(), format!("http://{addr}"));
    assert_eq!(breakers.len(), 1);
    assert_eq!(
        breakers.get(&origin).state(),
        tower_5xx::breaker::State::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn client_breaker_reads_a_date_retry_after_against_the_servers_date() {
    use tower_5xx::{
        breaker::error::CircuitOpen,
        breaker::{CircuitBreaker, KeyedBreakers, SlidingWindow},
    };
    // The server's clock runs 30 s ahead of ours; it says "come back in 5 s" as a date.
    let server_now = SystemTime::now() + Duration::from_secs(30);
    let script = Script::new([Canned::Status(
        StatusCode::SERVICE_UNAVAILABLE,
        vec![
            ("date", httpdate::fmt_http_date(server_now)),
            (
                "retry-after",
                httpdate::fmt_http_date(server_now + Duration::from_secs(5)),
            ),
        ],
    )]);
    let addr = server(script.clone()).await;
    let breakers = Arc::new(
        KeyedBreakers::new(
            CircuitBreaker::builder()
                .sliding_window(SlidingWindow::Count(2))
                .minimum_calls(1)
                .open_duration(Duration::from_secs(1)),
        )
        .unwrap(),
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Body>>();
    let mut svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(RetryPolicy::builder().max_attempts(1).build().unwrap())
                .circuit_breakers(breakers),
        )
        .service(client);
    assert_eq!(
        call(&mut svc, get(addr)).await.unwrap().0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let err = call(&mut svc, get(addr)).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("open");
    // 5 s, as the policy reads it; not 35 s against the local clock.
    assert!(
        open.retry_after() <= Duration::from_secs(5),
        "{:?}",
        open.retry_after()
    );
    assert!(
        open.retry_after() >= Duration::from_secs(4),
        "{:?}",
        open.retry_after()
    );
}

#[tokio::test(start_paused = true)]
async fn the_policy_works_with_stock_tower_retry() {
    let script = Script::new([unavailable("1")]);
    let addr = server(script.clone()).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Body>>();
    let mut svc = ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(RetryPolicy::default()))
        .map_err(tower_5xx::BoxError::from)
        .service(client);
    let req = Request::get(format!("http://{addr}/"))
        .body(ReplayBody::buffered(Bytes::new()))
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(script.arrivals().len(), 2);
    assert!(script.gaps()[0] >= Duration::from_secs(1));
}

/// An HTTP/2 server (the h2 crate, no hyper) that resets its first `refuse` streams with
/// `REFUSED_STREAM` and answers 200 to the rest; counts the streams it saw.
async fn refusing_h2_server(refuse: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(socket).await.unwrap();
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    if counter.fetch_add(1, Ordering::SeqCst) < refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    } else {
                        let mut send = respond
                            .send_response(http::Response::new(()), false)
                            .unwrap();
                        send.send_data(Bytes::from_static(b"ok"), true).unwrap();
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(start_paused = true)]
async fn post_refused_by_http2_is_retried_because_it_was_never_processed() {
    use std::sync::atomic::Ordering;
    let (addr, seen) = refusing_h2_server(1).await;
    let decisions = Arc::new(Mutex::new(Vec::new()));
    let d = decisions.clone();
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<ReplayBody<Body>>();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::builder()
                .backoff(fixed_backoff(10))
                .on_attempt(move |e| d.lock().unwrap().push(e.decision.clone()))
                .build()
                .unwrap(),
        ))
        .service(client);
    let post = Request::post(format!("http://{addr}/orders"))
        .body(Body::new(Bytes::from_static(b"{\"item\":1}")))
        .unwrap();
    let (status, body) = call(&mut svc, post).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok");
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    // The policy retried the POST itself, on the strength of the REFUSED_STREAM reset.
    let decisions = decisions.lock().unwrap();
    assert!(
        matches!(
            decisions[0],
            Decision::Retry {
                reason: tower_5xx::retry::RetryReason::Error,
                ..
            }
        ),
        "{decisions:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_when_non_idempotent_retries_are_enabled() {
    let script = Script::new([unavailable("1")]);
    let addr = server(script.clone()).await;
    let mut svc = retrying(
        RetryPolicy::builder()
            .retry_non_idempotent(true)
            .build()
            .unwrap(),
    );
    let post = Request::post(format!("http://{addr}/"))
        .body(Body::new(Bytes::from_static(b"x")))
        .unwrap();
    assert_eq!(call(&mut svc, post).await.unwrap().0, StatusCode::OK);
    assert_eq!(script.arrivals().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_jitter_spreads_clients_above_the_servers_instant() {
    let script = Script::new([]);
    let addr = server(script.clone()).await;
    let mut svc = retrying(
        RetryPolicy::builder()
            .retry_after_jitter(Duration::from_secs(3))
            .build()
            .unwrap(),
    );
    let mut waits = Vec::new();
    for _ in 0..10 {
        script.replies.lock().unwrap().push_back(unavailable("2"));
        let before = script.arrivals().len();
        assert_eq!(call(&mut svc, get(addr)).await.unwrap().0, StatusCode::OK);
        let arrivals = script.arrivals();
        waits.push(arrivals[before + 1].0 - arrivals[before].0);
    }
    for w in &waits {
        // Never before the server's instant, at most the jitter after it.
        assert!(*w >= Duration::from_secs(2), "{w:?}");
        assert!(
            *w <= Duration::from_secs(5) + Duration::from_millis(50),
            "{w:?}"
        );
    }
    let distinct: std::collections::BTreeSet<_> = waits.iter().map(|w| w.as_millis()).collect();
    assert!(distinct.len() > 5, "not spread: {waits:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_jitter_never_pushes_a_retry_past_the_deadline() {
    // Retry-After 5 s fits in a 10 s deadline; a 30 s spread must shrink to fit, not cancel.
    for _ in 0..10 {
        let script = Script::new([unavailable("5")]);
        let addr = server(script.clone()).await;
        let mut svc = retrying(
            RetryPolicy::builder()
                .deadline(Duration::from_secs(10))
                .retry_after_jitter(Duration::from_secs(30))
                .build()
                .unwrap(),
        );
        assert_eq!(call(&mut svc, get(addr)).await.unwrap().0, StatusCode::OK);
        let gap = script.gaps()[0];
        assert!(
            gap >= Duration::from_secs(5) && gap < Duration::from_secs(10),
            "{gap:?}"
        );
    }
}

/// The three outcomes a caller must tell apart, as `Failure` and the response show them: a
/// given-up 503 is a response (with the server's `Retry-After`), an open client breaker is
/// `Failure::CircuitOpen`, and a connection refused is `Failure::Transport`.
#[tokio::test(start_paused = true)]
async fn failure_tells_circuit_open_from_transport_errors_and_503_is_a_response() {
    use tower_5xx::breaker::{CircuitBreaker, KeyedBreakers};

    let script = Script::new([]);
    *script.always.lock().unwrap() = Some(unavailable("120"));
    let addr = server(script.clone()).await;
    let breakers =
        Arc::new(KeyedBreakers::new(CircuitBreaker::builder().minimum_calls(1)).unwrap());
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Body>>();
    let mut svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(
                RetryPolicy::builder()
                    .retry_after_cap(Duration::from_secs(30))
                    .backoff(fixed_backoff(10))
                    .build()
                    .unwrap(),
            )
            .circuit_breakers(breakers.clone()),
        )
        .service(client);

    // Retry-After 120 s is over the 30 s cap: the 503 comes back at once, as a response.
    let res = svc.ready().await.unwrap().call(get(addr)).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "120");
    assert_eq!(script.arrivals().len(), 1);

    // That 503 tripped the endpoint's breaker, for the server's 120 s (capped at 60 s).
    let err = call(&mut svc, get(addr)).await.unwrap_err();
    match Failure::from(err) {
        Failure::CircuitOpen(open) => assert_eq!(open.retry_after(), Duration::from_secs(60)),
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
    assert_eq!(script.arrivals().len(), 1);

    // Nothing listens on a port just released: connection refused, retried, then given up.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut plain = retrying(
        RetryPolicy::builder()
            .backoff(fixed_backoff(10))
            .build()
            .unwrap(),
    );
    let err = call(&mut plain, get(closed)).await.unwrap_err();
    let failure = Failure::from(err);
    assert!(matches!(failure, Failure::Transport(_)), "{failure:?}");
    assert_eq!(failure.retry_after(), None);

    // With the breaker, the first refusal opens the endpoint's breaker (minimum 1 call): the
    // retry is refused by the breaker, and that is the error the caller sees.
    let err = call(&mut svc, get(closed)).await.unwrap_err();
    assert!(matches!(Failure::from(err), Failure::CircuitOpen(_)));
    assert_eq!(breakers.len(), 2);
}

/// A breaker for one endpoint that opens on its second failure in a row, with one probe.
fn opens_on_the_second_failure() -> Arc<tower_5xx::breaker::KeyedBreakers<Origin>> {
    use tower_5xx::breaker::{CircuitBreaker, KeyedBreakers, SlidingWindow};
    Arc::new(
        KeyedBreakers::new(
            CircuitBreaker::builder()
                .sliding_window(SlidingWindow::Count(10))
                .minimum_calls(2)
                .failure_rate_threshold(0.5)
                .half_open_probes(1),
        )
        .unwrap(),
    )
}

/// Two `503` + `Retry-After: 1` open the endpoint's breaker for the server's 1 s; the policy
/// waits that 1 s, and the third attempt, the one the server invited, must get through the
/// breaker (it used to be refused with under a millisecond of open time left: the open end was
/// rounded up to the next millisecond of the breaker's clock, whose milliseconds need not line
/// up with the timer's).
#[tokio::test(start_paused = true)]
async fn the_retry_the_server_invited_gets_through_the_client_breaker() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // The breaker's clock starts 300 us into a millisecond of tokio's timer; the request starts
    // on a millisecond of the timer, so every wait ends exactly on the instant it aims at.
    tokio::time::advance(Duration::from_micros(300)).await;
    let breakers = opens_on_the_second_failure();
    tokio::time::advance(Duration::from_micros(700)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let inner = tower::service_fn(move |_req: Request<ReplayBody<Body>>| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let res = if n < 2 {
                http::Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .header("retry-after", "1")
                    .body(Body::default())
            } else {
                http::Response::builder().body(Body::from("ok"))
            };
            Ok::<_, std::convert::Infallible>(res.unwrap())
        }
    });
    let mut svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(RetryPolicy::builder().max_attempts(3).build().unwrap())
                .circuit_breakers(breakers.clone()),
        )
        .service(inner);
    let start = Instant::now();
    let req = Request::get("http://api.test/")
        .body(Body::default())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(start.elapsed() >= Duration::from_secs(2));
    assert!(start.elapsed() < Duration::from_millis(2_010));
    let origin = Origin::from_uri(&"http://api.test/".parse().unwrap()).unwrap();
    assert_eq!(
        breakers.get(&origin).state(),
        tower_5xx::breaker::State::Closed
    );
}

/// `Retry-After: 0` invites the retry now: the failure that trips the endpoint's breaker opens
/// it for no time (not for the breaker's configured 5 s), and the retry, sent after the 10 ms
/// backoff, goes through as its half-open probe and closes it.
#[tokio::test(start_paused = true)]
async fn retry_after_zero_lets_the_invited_retry_through_the_client_breaker() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_5xx::breaker::{CircuitBreaker, KeyedBreakers};
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let inner = tower::service_fn(move |_req: Request<ReplayBody<Body>>| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let res = if n == 0 {
                http::Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .header("retry-after", "0")
                    .body(Body::default())
            } else {
                http::Response::builder().body(Body::from("ok"))
            };
            Ok::<_, Infallible>(res.unwrap())
        }
    });
    // Opens on its first failure, for the configured 5 s (the default) unless told otherwise;
    // one successful probe closes it.
    let breakers = Arc::new(
        KeyedBreakers::new(
            CircuitBreaker::builder()
                .minimum_calls(1)
                .half_open_probes(1),
        )
        .unwrap(),
    );
    let mut svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(
                RetryPolicy::builder()
                    .backoff(fixed_backoff(10))
                    .build()
                    .unwrap(),
            )
            .circuit_breakers(breakers.clone()),
        )
        .service(inner);
    let start = Instant::now();
    let req = Request::get("http://api.test/")
        .body(Body::default())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(10));
    let origin = Origin::from_uri(&"http://api.test/".parse().unwrap()).unwrap();
    assert_eq!(
        breakers.get(&origin).state(),
        tower_5xx::breaker::State::Closed
    );
}

/// The same over 127.0.0.1 on the real clock, 50 clients at once, each with its own breakers:
/// every one gets its `200` on the third attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_all_get_the_retry_the_server_invited() {
    use std::collections::HashMap;
    const CLIENTS: usize = 50;
    // Each path answers 503 + Retry-After: 1 twice, then 200.
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let app = Router::new()
        .fallback(
            |State(seen): State<Arc<Mutex<HashMap<String, u32>>>>, uri: http::Uri| async move {
                let n = {
                    let mut seen = seen.lock().unwrap();
                    let n = seen.entry(uri.path().to_owned()).or_default();
                    *n += 1;
                    *n
                };
                if n <= 2 {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "1")],
                        "later",
                    )
                        .into_response()
                } else {
                    (StatusCode::OK, "ok").into_response()
                }
            },
        )
        .with_state(seen.clone());
    let addr = common::serve_axum(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Body>>();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut svc = ServiceBuilder::new()
                .layer(
                    RetryLayer::new(RetryPolicy::builder().max_attempts(3).build().unwrap())
                        .circuit_breakers(opens_on_the_second_failure()),
                )
                .service(client.clone());
            tokio::spawn(async move {
                let req = Request::get(format!("http://{addr}/client/{i}"))
                    .body(Body::default())
                    .unwrap();
                call(&mut svc, req).await.map(|(status, _)| status)
            })
        })
        .collect();
    let mut refused = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(status) => assert_eq!(status, StatusCode::OK, "client {i}"),
            Err(e) => refused.push(format!("client {i}: {e}")),
        }
    }
    assert!(
        refused.is_empty(),
        "{} of {CLIENTS}: {refused:?}",
        refused.len()
    );
    assert!(seen.lock().unwrap().values().all(|n| *n == 3));
}

fn canned(status: StatusCode, headers: &[(&'static str, &str)]) -> Canned {
    Canned::Status(
        status,
        headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_429_without_retry_after_is_retried_after_its_ratelimit_reset() {
    let script = Script::new([
        canned(
            StatusCode::TOO_MANY_REQUESTS,
            &[("ratelimit", r#""burst";r=0;t=3, "daily";r=90;t=600"#)],
        ),
        canned(
            StatusCode::SERVICE_UNAVAILABLE,
            &[("ratelimit", r#""burst";r=0;t=2"#)],
        ),
    ]);
    let addr = server(script.clone()).await;
    let mut svc = retrying(
        RetryPolicy::builder()
            .max_attempts(3)
            .backoff(fixed_backoff(100))
            .build()
            .unwrap(),
    );
    let (status, _) = call(&mut svc, get(addr)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let gaps = script.gaps();
    assert_eq!(gaps.len(), 2);
    // The exhausted policy's `t`, not the backoff and not the other policy's.
    assert!(gaps[0] >= Duration::from_secs(3), "{gaps:?}");
    assert!(gaps[0] < Duration::from_millis(3100), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_secs(2), "{gaps:?}");
    assert!(gaps[1] < Duration::from_millis(2100), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_wins_over_ratelimit_and_a_quota_left_is_no_wait() {
    let script = Script::new([
        canned(
            StatusCode::TOO_MANY_REQUESTS,
            &[("retry-after", "1"), ("ratelimit", r#""burst";r=0;t=30"#)],
        ),
        // A quota left (`r=1`): nothing to wait for but the backoff.
        canned(
            StatusCode::TOO_MANY_REQUESTS,
            &[("ratelimit", r#""burst";r=1;t=30"#)],
        ),
    ]);
    let addr = server(script.clone()).await;
    let mut svc = retrying(
        RetryPolicy::builder()
            .max_attempts(3)
            .backoff(fixed_backoff(100))
            .build()
            .unwrap(),
    );
    let (status, _) = call(&mut svc, get(addr)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let gaps = script.gaps();
    assert!(gaps[0] >= Duration::from_secs(1), "{gaps:?}");
    assert!(gaps[0] < Duration::from_millis(1100), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[1] < Duration::from_millis(200), "{gaps:?}");
}
