//! `CatchLayer` over real sockets: hyper and axum servers on 127.0.0.1, hyper clients.
#![cfg(feature = "catch")]

mod common;

use std::{
    convert::Infallible,
    error::Error,
    fmt,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{routing, Router};
use bytes::Bytes;
use common::{client, get, h2_client, logs, quiet_panics, request, send, Reply, EXPECTED_PANIC};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_5xx::{
    catch::{Catch, CatchLayer, Classification},
    refuse::RefusalPolicy,
    ErrorId, Reason,
};

const SECRET: &str = "db-password-hunter2";

/// Checks the shape every generated 500 must have, and returns its error id.
fn assert_clean_500(reply: &Reply, must_not_contain: &str) -> String {
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let id = reply
        .header("x-error-id")
        .expect("x-error-id header")
        .to_owned();
    assert_eq!(id.len(), 16);
    assert!(
        reply.text().contains(&id),
        "body must carry the error id: {:?}",
        reply.text()
    );
    assert!(
        !reply.text().contains(must_not_contain),
        "body leaks internal detail: {:?}",
        reply.text()
    );
    id
}

/// The log line for `id` must exist, carry method and path, and never the query string.
fn assert_logged(id: &str, path: &str, expected: &str) {
    let lines = logs().lines_with(id);
    assert_eq!(
        lines.len(),
        1,
        "exactly one log line per error id: {lines:?}"
    );
    let line = &lines[0];
    assert!(line.contains("ERROR"), "{line}");
    // The OpenTelemetry attribute names.
    assert!(line.contains("http.request.method=\"GET\""), "{line}");
    assert!(line.contains(&format!("url.path=\"{path}\"")), "{line}");
    assert!(line.contains("http.response.status_code=500"), "{line}");
    assert!(line.contains("error.type="), "{line}");
    assert!(line.contains(expected), "{line} should contain {expected}");
    assert!(
        !line.contains("token="),
        "query string leaked into log: {line}"
    );
}

#[derive(Debug)]
struct Outer(std::io::Error);

impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("loading user failed")
    }
}

impl Error for Outer {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

/// Where a [`PanickingBody`] panics.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// In `poll_frame`, after one chunk; `Some(n)`: announces `n` bytes (content-length).
    SecondChunk(Option<u64>),
    /// In the first `poll_frame`, before any chunk.
    FirstPoll,
    /// In `is_end_stream`.
    EndStream,
    /// In `size_hint`.
    SizeHint,
}

const FIRST_CHUNK: &[u8] = b"first chunk";

/// A body that panics where its [`Fault`] says; otherwise it yields one chunk and ends. The
/// panic message ends with `tag` (the request's query string).
struct PanickingBody {
    sent: bool,
    fault: Fault,
    tag: String,
}

impl Body for PanickingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match (self.fault, self.sent) {
            (Fault::FirstPoll, _) | (Fault::SecondChunk(_), true) => {
                panic!("{EXPECTED_PANIC} body exploded with {SECRET} {}", self.tag)
            }
            (_, true) => Poll::Ready(None),
            (_, false) => {
                self.sent = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(FIRST_CHUNK)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if let Fault::EndStream = self.fault {
            panic!(
                "{EXPECTED_PANIC} is_end_stream exploded with {SECRET} {}",
                self.tag
            );
        }
        false
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.fault {
            Fault::SizeHint => {
                panic!(
                    "{EXPECTED_PANIC} size_hint exploded with {SECRET} {}",
                    self.tag
                )
            }
            Fault::SecondChunk(Some(n)) => http_body::SizeHint::with_exact(n),
            _ => http_body::SizeHint::default(),
        }
    }
}

type TestBody = http_body_util::Either<Full<Bytes>, PanickingBody>;

fn panicking(
    fault: Fault,
    req: &Request<hyper::body::Incoming>,
) -> Result<Response<TestBody>, Outer> {
    let tag = req.uri().query().unwrap_or_default().to_owned();
    Ok(Response::new(TestBody::Right(PanickingBody {
        sent: false,
        fault,
        tag,
    })))
}

/// A plain tower service (no axum) with one route per failure mode.
async fn handler(req: Request<hyper::body::Incoming>) -> Result<Response<TestBody>, Outer> {
    let ok = |s: &'static str| Ok(Response::new(TestBody::Left(Full::new(Bytes::from(s)))));
    match req.uri().path() {
        "/" => ok("hello"),
        "/error" => Err(Outer(std::io::Error::other(SECRET))),
        "/panic" => {
            tokio::task::yield_now().await;
            panic!("{EXPECTED_PANIC} handler saw {SECRET}")
        }
        "/body-panic" => panicking(Fault::SecondChunk(None), &req),
        "/body-panic-length" => panicking(Fault::SecondChunk(Some(100)), &req),
        "/body-panic-first" => panicking(Fault::FirstPoll, &req),
        "/end-stream-panic" => panicking(Fault::EndStream, &req),
        "/size-hint-panic" => panicking(Fault::SizeHint, &req),
        _ => ok("other"),
    }
}

/// A service that panics in `call` itself, before returning a future, for `/call-panic`.
#[derive(Clone)]
struct PanicsInCall;

impl Service<Request<hyper::body::Incoming>> for PanicsInCall {
    type Response = Response<TestBody>;
    type Error = Outer;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Outer>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Outer>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        if req.uri().path() == "/call-panic" {
            panic!("{EXPECTED_PANIC} call panicked with {SECRET}");
        }
        Box::pin(handler(req))
    }
}

async fn hyper_server() -> std::net::SocketAddr {
    common::serve_hyper(CatchLayer::new().layer(PanicsInCall)).await
}

#[tokio::test]
async fn hyper_server_answers_500_for_errors_and_panics() {
    quiet_panics();
    let _ = logs();
    let addr = hyper_server().await;
    for c in [client(), h2_client()] {
        assert_eq!(get(&c, addr, "/").await.text(), "hello");

        let reply = get(&c, addr, "/error?token=abc").await;
        let id = assert_clean_500(&reply, SECRET);
        // The full chain is logged: outer error and its source.
        assert_logged(&id, "/error", &format!("loading user failed: {SECRET}"));

        let reply = get(&c, addr, "/panic?token=abc").await;
        let id = assert_clean_500(&reply, SECRET);
        assert_logged(&id, "/panic", "handler saw");

        let reply = get(&c, addr, "/call-panic").await;
        let id = assert_clean_500(&reply, SECRET);
        assert_logged(&id, "/call-panic", "call panicked");
    }
}

#[tokio::test]
async fn body_format_follows_accept() {
    quiet_panics();
    let addr = hyper_server().await;
    let c = client();

    let json = send(
        &c,
        request(addr, "/error", Some("application/problem+json")),
    )
    .await
    .unwrap();
    let id = assert_clean_500(&json, SECRET);
    assert_eq!(
        json.header("content-type"),
        Some("application/problem+json")
    );
    let v: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(v["status"], 500);
    assert_eq!(v["error_id"], id);
    assert_eq!(v["title"], "Internal Server Error");

    let html = send(&c, request(addr, "/panic", Some("text/html")))
        .await
        .unwrap();
    assert_clean_500(&html, SECRET);
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(html.text().starts_with("<!DOCTYPE html>"));

    let text = get(&c, addr, "/error").await;
    assert_clean_500(&text, SECRET);
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
}

/// The body panic routes: path, what the head announces over HTTP/1.1, and whether the first
/// chunk was produced before the panic.
const BODY_PANICS: [(&str, &str, bool); 5] = [
    ("/body-panic", "transfer-encoding: chunked", true),
    ("/body-panic-length", "content-length: 100", true),
    ("/body-panic-first", "transfer-encoding: chunked", false),
    ("/end-stream-panic", "transfer-encoding: chunked", false),
    ("/size-hint-panic", "transfer-encoding: chunked", false),
];

/// HTTP/1.1: the client gets the head and what the body produced before the panic, then the
/// connection closes before the body is complete (no last chunk; fewer bytes than announced).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_panic_reaches_an_http1_client_as_a_cut_response() {
    quiet_panics();
    let _ = logs();
    let addr = hyper_server().await;
    for (path, framing, first_chunk) in BODY_PANICS {
        let received = common::raw_http1_get_until_closed(addr, path).await;
        let text = String::from_utf8_lossy(&received).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200 ok\r\n"), "{path}: {text:?}");
        let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
        assert!(head.contains(framing), "{path}: {head:?}");
        let chunk = std::str::from_utf8(FIRST_CHUNK).unwrap();
        match (framing.starts_with("transfer"), first_chunk) {
            (true, true) => assert_eq!(body, format!("b\r\n{chunk}\r\n"), "{path}"),
            (false, true) => assert_eq!(body, chunk, "{path}"),
            (_, false) => assert_eq!(body, "", "{path}"),
        }
        assert!(!text.contains(SECRET), "{path}: {text:?}");

        // A client library reports the status, then an error while reading the body.
        let res = client()
            .request(request(addr, path, None))
            .await
            .unwrap_or_else(|e| panic!("{path}: no head: {e}"));
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert!(res.into_body().collect().await.is_err(), "{path}");
    }
    // The server is alive and well.
    assert_eq!(get(&client(), addr, "/").await.text(), "hello");
}

/// Reads an h2 response body to its end: the data received, and the error it ended with.
async fn h2_body_until_error(
    path: &str,
    res: Response<hyper::body::Incoming>,
) -> (Vec<u8>, String) {
    let mut body = res.into_body();
    let mut data = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => data.extend_from_slice(frame.data_ref().unwrap()),
            Some(Err(e)) => return (data, format!("{e:?}")),
            None => panic!("{path}: the body ended cleanly"),
        }
    }
}

/// hyper's error wraps h2's `Reset(StreamId(..), INTERNAL_ERROR, Remote)`.
fn is_internal_error_reset(error: &str) -> bool {
    error.contains("INTERNAL_ERROR") && error.contains("Remote")
}

/// h2 on a current-thread runtime: the client gets HEADERS and the DATA produced before the
/// panic, then the stream is reset (`INTERNAL_ERROR`); the connection serves on.
#[tokio::test]
async fn a_body_panic_reaches_an_h2_client_as_a_reset_stream_after_its_head() {
    quiet_panics();
    let _ = logs();
    let addr = hyper_server().await;
    let c = h2_client();
    for (path, _, first_chunk) in BODY_PANICS {
        let res = c
            .request(request(addr, path, None))
            .await
            .unwrap_or_else(|e| panic!("{path}: no HEADERS: {e:?}"));
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let (data, error) = h2_body_until_error(path, res).await;
        let expected: &[u8] = if first_chunk { FIRST_CHUNK } else { b"" };
        assert_eq!(data, expected, "{path}");
        assert!(is_internal_error_reset(&error), "{path}: {error}");
        assert_eq!(get(&c, addr, "/").await.text(), "hello", "{path}");
    }
}

/// h2 on a multi-threaded runtime: the connection's task may not have written the HEADERS
/// when the stream is reset, and h2 drops what it has not written. Either way the stream ends
/// with `INTERNAL_ERROR`, never as a complete response, and the connection serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_panic_never_looks_complete_to_an_h2_client_on_a_multi_threaded_server() {
    quiet_panics();
    let _ = logs();
    let addr = hyper_server().await;
    let c = h2_client();
    for _ in 0..4 {
        for (path, _, _) in BODY_PANICS {
            let error = match c.request(request(addr, path, None)).await {
                Ok(res) => {
                    assert_eq!(res.status(), StatusCode::OK, "{path}");
                    h2_body_until_error(path, res).await.1
                }
                Err(e) => format!("{e:?}"),
            };
            assert!(is_internal_error_reset(&error), "{path}: {error}");
            assert_eq!(get(&c, addr, "/").await.text(), "hello", "{path}");
        }
    }
}

/// Each panic is logged once, with its error id, wherever in the body it happened.
#[tokio::test]
async fn a_body_panic_is_logged_once_with_an_error_id() {
    quiet_panics();
    let _ = logs();
    let addr = hyper_server().await;
    for (path, _, _) in BODY_PANICS {
        // Other tests log body panics too: this request's lines carry its tag.
        let tag = format!("logged-once{}", path.replace('/', "-"));
        let _ = common::raw_http1_get_until_closed(addr, &format!("{path}?{tag}")).await;
        let lines = logs().lines_with(&tag);
        assert_eq!(lines.len(), 1, "{path}: {lines:?}");
        let line = &lines[0];
        assert!(line.contains("response body panicked"), "{line}");
        assert!(
            line.contains("error_id=") && line.contains("exploded"),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_router_layer_answers_500_and_survives_1000_panics() {
    quiet_panics();
    let _ = logs();
    let fallible = service_fn(|_req: axum::extract::Request| async {
        Err::<axum::response::Response, _>(Outer(std::io::Error::other(SECRET)))
    });
    let app = Router::new()
        .route("/", routing::get(|| async { "hello" }))
        .route(
            "/panic",
            routing::get(|| async {
                if true {
                    panic!("{EXPECTED_PANIC} axum handler saw {SECRET}");
                }
                "unreachable"
            }),
        )
        .route_service("/boom", CatchLayer::new().layer(fallible))
        .layer(CatchLayer::new());
    let addr = common::serve_axum(app).await;
    let c = client();

    let reply = get(&c, addr, "/boom?token=1").await;
    let id = assert_clean_500(&reply, SECRET);
    assert_logged(&id, "/boom", SECRET);

    let reply = get(&c, addr, "/panic").await;
    let id = assert_clean_500(&reply, SECRET);
    assert_logged(&id, "/panic", "axum handler saw");

    // 1,000 panicking requests from 8 concurrent connections: each one gets exactly one
    // well-formed 500, no connection is dropped, and the server keeps serving.
    let ids = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..125 {
                let reply = send(&c, request(addr, "/panic", None))
                    .await
                    .expect("no connection dropped");
                let id = assert_clean_500(&reply, SECRET);
                assert!(ids.lock().unwrap().insert(id), "error ids must be unique");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ids.lock().unwrap().len(), 1000);
    assert_eq!(get(&c, addr, "/").await.text(), "hello");
    assert_eq!(get(&h2_client(), addr, "/").await.text(), "hello");
}

#[tokio::test]
async fn stock_load_shed_overloaded_becomes_503_with_retry_after() {
    // One slot; the first request holds it until released.
    let release = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(tokio::sync::Notify::new());
    let (r, e) = (release.clone(), entered.clone());
    let svc = ServiceBuilder::new()
        .layer(
            CatchLayer::new().refusal(
                RefusalPolicy::builder()
                    .min_retry_after(Duration::from_secs(3))
                    .retry_after_jitter(Duration::ZERO)
                    .build()
                    .unwrap(),
            ),
        )
        .load_shed()
        .concurrency_limit(1)
        .service(service_fn(move |_req: Request<hyper::body::Incoming>| {
            let (r, e) = (r.clone(), e.clone());
            async move {
                e.notify_one();
                r.notified().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done"))))
            }
        }));
    // hyper serves each connection with a clone; the limit is shared across clones.
    let addr = common::serve_hyper(svc).await;
    let c = client();
    let held = tokio::spawn({
        let c = c.clone();
        async move { get(&c, addr, "/").await }
    });
    entered.notified().await;

    let shed = get(&c, addr, "/").await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.header("retry-after"), Some("3"));
    assert_eq!(shed.header("cache-control"), Some("no-store"));
    assert!(shed.header("x-error-id").is_some());

    release.notify_one();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn stock_timeout_elapsed_becomes_503() {
    // Paused time: tokio jumps the clock to the timeout as soon as everything is idle.
    let svc = ServiceBuilder::new()
        .layer(CatchLayer::new())
        .timeout(Duration::from_secs(10))
        .service(service_fn(|_req: Request<hyper::body::Incoming>| async {
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("too late"))))
        }));
    let addr = common::serve_hyper(svc).await;
    let reply = get(&client(), addr, "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    // The default refusal policy: its minimum (1 s) plus up to 1 s of jitter.
    let retry_after = reply.header("retry-after");
    assert!(matches!(retry_after, Some("1" | "2")), "{retry_after:?}");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
}

#[derive(Debug)]
struct UpstreamTimedOut;

impl fmt::Display for UpstreamTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("upstream timed out")
    }
}

impl Error for UpstreamTimedOut {}

#[tokio::test]
async fn on_error_rules_map_own_errors() {
    let svc = CatchLayer::new()
        .on_error::<UpstreamTimedOut>(|_| Classification::gateway_timeout())
        .on_error::<std::io::Error>(|_| {
            Classification::bad_gateway().with_detail("The billing service failed.")
        })
        .layer(service_fn(
            |req: Request<hyper::body::Incoming>| async move {
                match req.uri().path() {
                    "/slow" => {
                        Err::<Response<Full<Bytes>>, tower::BoxError>(UpstreamTimedOut.into())
                    }
                    _ => Err(Outer(std::io::Error::other(SECRET)).into()),
                }
            },
        ));
    let addr = common::serve_hyper(svc).await;
    let c = client();
    let slow = get(&c, addr, "/slow").await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    // The io::Error is the *source* of `Outer`: the chain is walked.
    let bad = get(&c, addr, "/other").await;
    assert_eq!(bad.status, StatusCode::BAD_GATEWAY);
    assert!(bad.text().contains("The billing service failed."));
    assert!(!bad.text().contains(SECRET));
}

/// A service whose `poll_ready` fails (or panics) once.
#[derive(Clone)]
struct FlakyReady {
    calls: Arc<AtomicUsize>,
    panic: bool,
}

impl Service<Request<Full<Bytes>>> for FlakyReady {
    type Response = Response<Full<Bytes>>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            if self.panic {
                panic!("{EXPECTED_PANIC} poll_ready panicked");
            }
            return Poll::Ready(Err(std::io::Error::other("not ready")));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Full<Bytes>>) -> Self::Future {
        std::future::ready(Ok(Response::new(Full::new(Bytes::from("ok")))))
    }
}

#[tokio::test]
async fn poll_ready_errors_and_panics_become_one_500_each() {
    quiet_panics();
    for panic in [false, true] {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut svc = Catch::new(FlakyReady {
            calls: calls.clone(),
            panic,
        });
        let req = || Request::new(Full::<Bytes>::default());
        let res = svc.ready().await.unwrap().call(req()).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let reason = if panic {
            Reason::Panic
        } else {
            Reason::Internal
        };
        assert_eq!(res.extensions().get::<Reason>(), Some(&reason));
        assert!(res.extensions().get::<ErrorId>().is_some());
        // The failure is answered once; the next request reaches the inner service.
        let res = svc.ready().await.unwrap().call(req()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}

#[test]
fn public_types_are_send_and_sync_where_axum_needs_it() {
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    fn send<T: Send>() {}
    send_sync_clone::<CatchLayer>();
    send_sync_clone::<Catch<axum::routing::Route>>();
    send::<<Catch<axum::routing::Route> as Service<axum::extract::Request>>::Future>();
    send::<tower_5xx::ResponseBody<tower_5xx::catch::CatchBody<axum::body::Body>>>();
}

#[tokio::test]
async fn negotiation_can_be_turned_off() {
    let plain = RefusalPolicy::builder().negotiate(false).build().unwrap();
    let svc =
        CatchLayer::new()
            .refusal(plain)
            .layer(service_fn(|_req: Request<Full<Bytes>>| async {
                Err::<Response<Full<Bytes>>, _>(std::io::Error::other(SECRET))
            }));
    let req = Request::get("/")
        .header("accept", "application/problem+json")
        .body(Full::default())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.headers()["content-type"], "text/plain; charset=utf-8");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains(SECRET));
}

#[tokio::test]
async fn a_panicking_classifier_still_yields_one_500() {
    quiet_panics();
    let svc = CatchLayer::new()
        .classify(|_e: &(dyn Error + 'static)| -> Option<Classification> {
            panic!("{EXPECTED_PANIC} classifier bug")
        })
        .layer(service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::other(SECRET))
        }));
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains(SECRET));
}

// ---------------------------------------------------------------------------------------------
// Panic payloads and inner futures whose destructors panic, classified 503s, and `Accept`.
// ---------------------------------------------------------------------------------------------

/// A panic payload whose destructor panics (once): `panic_any(PanicOnDrop)`.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("{EXPECTED_PANIC} panic payload dropped");
    }
}

/// Routes that panic with a [`PanicOnDrop`] payload: in the response future, in `call`, in the
/// response body's first `poll_frame`.
#[derive(Clone)]
struct PayloadPanics;

struct PayloadPanicBody;

impl Body for PayloadPanicBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::panic::panic_any(PanicOnDrop)
    }
}

type PayloadBody = http_body_util::Either<Full<Bytes>, PayloadPanicBody>;

impl Service<Request<hyper::body::Incoming>> for PayloadPanics {
    type Response = Response<PayloadBody>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        match req.uri().path() {
            "/call" => std::panic::panic_any(PanicOnDrop),
            "/future" => Box::pin(async {
                tokio::task::yield_now().await;
                std::panic::panic_any(PanicOnDrop)
            }),
            "/body" => Box::pin(async { Ok(Response::new(PayloadBody::Right(PayloadPanicBody))) }),
            _ => Box::pin(async { Ok(Response::new(PayloadBody::Left(Full::from("ok")))) }),
        }
    }
}

/// A panic payload is user data: dropping it runs user code, which may panic again. The layer
/// must still answer one 500 (and, for the body, cut the response after its head) instead of
/// letting the second panic unwind hyper's connection task, which drops the connection with no
/// answer at all.
#[tokio::test]
async fn a_panic_payload_that_panics_when_dropped_still_gets_an_answer() {
    quiet_panics();
    let addr = common::serve_hyper(CatchLayer::new().layer(PayloadPanics)).await;
    let c = client();
    for path in ["/future", "/call"] {
        let reply = send(&c, request(addr, path, None)).await;
        let reply = reply.unwrap_or_else(|e| panic!("{path}: no answer at all: {e:?}"));
        assert_clean_500(&reply, EXPECTED_PANIC);
    }
    // The body panics before its first frame: the head must still reach the client, then the
    // response is cut (see the module docs' table).
    let res = c.request(request(addr, "/body", None)).await;
    let res = res.unwrap_or_else(|e| panic!("/body: not even the head arrived: {e:?}"));
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.into_body().collect().await.is_err());
}

/// A response future whose destructor panics, after it completed with a good response.
struct DropPanics;

impl std::future::Future for DropPanics {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(Response::new(Full::from("ok"))))
    }
}

impl Drop for DropPanics {
    fn drop(&mut self) {
        panic!("{EXPECTED_PANIC} inner future panicked in drop");
    }
}

/// The failure path catches a panic in the inner future's destructor ("its destructor may panic
/// too"); the success path drops the finished future unguarded, so the same panic unwinds the
/// connection task and the client gets no answer.
#[tokio::test]
async fn a_finished_inner_future_that_panics_when_dropped_still_answers() {
    quiet_panics();
    let svc = CatchLayer::new().layer(service_fn(|_req: Request<hyper::body::Incoming>| {
        DropPanics
    }));
    let addr = common::serve_hyper(svc).await;
    let reply = send(&client(), request(addr, "/", None)).await;
    let reply = reply.unwrap_or_else(|e| panic!("no answer at all: {e:?}"));
    assert_eq!(reply.status, StatusCode::OK);
}

#[derive(Debug)]
struct Unavailable;

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dependency unavailable")
    }
}

impl Error for Unavailable {}

/// A 503 always carries `Retry-After` (design: "always with Retry-After"; the policy's
/// `min_retry_after` is "the shortest Retry-After sent"). A classifier that picks 503 without a
/// wait of its own gets no header at all.
#[tokio::test]
async fn a_classified_503_carries_retry_after() {
    for (name, rule) in [
        (
            "new(503)",
            Classification::new(StatusCode::SERVICE_UNAVAILABLE),
        ),
        (
            "service_unavailable(.., None)",
            Classification::service_unavailable(Reason::CircuitOpen, None),
        ),
    ] {
        let svc = CatchLayer::new()
            .on_error::<Unavailable>(move |_| rule.clone())
            .layer(service_fn(|_req: Request<hyper::body::Incoming>| async {
                Err::<Response<Full<Bytes>>, _>(Unavailable)
            }));
        let addr = common::serve_hyper(svc).await;
        let reply = get(&client(), addr, "/").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert!(
            reply.header("retry-after").is_some(),
            "{name}: a 503 without Retry-After: {reply:?}"
        );
    }
}

/// `q=0` means "not acceptable" (RFC 9110 §12.4.2). A client that takes JSON but explicitly
/// refuses `application/problem+json` must not get `application/problem+json`; one that refuses
/// plain `application/json` but asks for `application/problem+json` should get it.
#[tokio::test]
async fn accept_q0_on_problem_json_is_honoured() {
    quiet_panics();
    let addr = hyper_server().await;
    let c = client();
    let refused = send(
        &c,
        request(
            addr,
            "/error",
            Some("application/json, application/problem+json;q=0"),
        ),
    )
    .await
    .unwrap();
    assert_ne!(
        refused.header("content-type"),
        Some("application/problem+json"),
        "served a media type the client refused with q=0"
    );
    let wanted = send(
        &c,
        request(
            addr,
            "/error",
            Some("application/json;q=0, application/problem+json"),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        wanted.header("content-type"),
        Some("application/problem+json"),
        "the client asked for problem+json by name"
    );
}

/// Every other layer negotiates over all `Accept` field lines; `CatchLayer` keeps only the
/// first one, so a request split over two lines gets a format it ranked last.
#[tokio::test]
async fn catch_negotiates_over_every_accept_line() {
    quiet_panics();
    let addr = hyper_server().await;
    let mut req = request(addr, "/error", Some("text/html;q=0.1"));
    req.headers_mut().append(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/problem+json"),
    );
    let headers = req.headers().clone();
    let reply = send(&client(), req).await.unwrap();
    assert_eq!(
        tower_5xx::Format::negotiate(&headers, true),
        tower_5xx::Format::ProblemJson
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{reply:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Failures nobody is answered with: an inner future dropped unfinished, a `poll_ready` failure
// no request takes.
// ---------------------------------------------------------------------------------------------

/// A response future that never finishes and panics when dropped; it tells the test when it is
/// first polled (the service runs the request).
struct PendingDropPanics(Option<tokio::sync::oneshot::Sender<()>>);

impl std::future::Future for PendingDropPanics {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(started) = self.0.take() {
            let _ = started.send(());
        }
        Poll::Pending
    }
}

impl Drop for PendingDropPanics {
    fn drop(&mut self) {
        panic!("{EXPECTED_PANIC} unfinished inner future panicked in drop");
    }
}

/// The client hangs up while the inner future runs: hyper drops the response future, and with
/// it the inner one, whose destructor panics. The layer catches and logs that panic (with an
/// error id, the method and the path); before, it unwound hyper's connection task.
#[tokio::test]
async fn an_unfinished_inner_future_that_panics_when_dropped_does_not_unwind_the_connection() {
    quiet_panics();
    let _ = logs();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let started = Arc::new(std::sync::Mutex::new(Some(started_tx)));
    let svc = CatchLayer::new().layer(service_fn(move |_req: Request<hyper::body::Incoming>| {
        PendingDropPanics(started.lock().unwrap().take())
    }));
    // One connection, served by hyper in a task whose outcome the test reads.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        hyper::server::conn::http1::Builder::new()
            .serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(svc),
            )
            .await
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let client_conn = tokio::spawn(conn);
    let tag = "unfinished-inner-future-drop-panic";
    let req = Request::get(format!("/{tag}?token=secret"))
        .header(http::header::HOST, addr.to_string())
        .body(Full::<Bytes>::default())
        .unwrap();
    tokio::select! {
        biased;
        _ = started_rx => {}
        res = sender.send_request(req) => panic!("the request was answered: {res:?}"),
    }
    // Hang up: the client's connection (and its socket) goes.
    drop(sender);
    client_conn.abort();
    let _ = client_conn.await;
    // Not `{served:?}`: the panic's message would hide the assertion's (see `quiet_panics`).
    let served = server.await;
    assert!(
        served.is_ok(),
        "the destructor's panic unwound the connection task (panic: {})",
        served.as_ref().is_err_and(tokio::task::JoinError::is_panic)
    );
    let lines = logs().lines_with(tag);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("inner response future panicked while being dropped"),
        "{line}"
    );
    assert!(
        line.contains("unfinished inner future panicked in drop"),
        "{line}"
    );
    assert!(line.contains("error_id="), "{line}");
    assert!(line.contains("http.request.method=\"GET\""), "{line}");
    assert!(
        !line.contains("token="),
        "query string leaked into log: {line}"
    );
}

/// A service whose `poll_ready` fails (or panics) with `message`: the failure is kept for the
/// next call.
struct FailingReady {
    message: &'static str,
    panic: bool,
}

impl Service<Request<Full<Bytes>>> for FailingReady {
    type Response = Response<Full<Bytes>>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.panic {
            panic!("{EXPECTED_PANIC} {}", self.message);
        }
        Poll::Ready(Err(std::io::Error::other(self.message)))
    }

    fn call(&mut self, _req: Request<Full<Bytes>>) -> Self::Future {
        std::future::ready(Ok(Response::new(Full::from("ok"))))
    }
}

/// A `poll_ready` failure is answered by the next call; a service dropped before any call (a
/// balancer removing an endpoint it had readied, a shutdown) must still report it: one error
/// event with an error id and the cause. Before, it was dropped unlogged.
#[tokio::test]
async fn a_poll_ready_failure_no_request_takes_is_logged_when_the_service_is_dropped() {
    quiet_panics();
    let _ = logs();
    for (panic, message, reason) in [
        (false, "ready-failed-unanswered-error", "internal"),
        (true, "ready-failed-unanswered-panic", "panic"),
    ] {
        let mut svc = CatchLayer::new()
            .name("unanswered")
            .layer(FailingReady { message, panic });
        // Ready (the failure is kept for the next call), then dropped without a call.
        svc.ready().await.unwrap();
        assert!(logs().lines_with(message).is_empty(), "logged too early");
        drop(svc);
        let lines = logs().lines_with(message);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("error_id="), "{line}");
        assert!(line.contains(&format!("error.type=\"{reason}\"")), "{line}");
        assert!(line.contains("name=\"unanswered\""), "{line}");
        assert!(
            line.contains("the service was dropped before a request could be answered"),
            "{line}"
        );
    }
    // Answered by a call, it is logged once, by the answer, and not again on drop.
    let mut svc = CatchLayer::new().layer(FailingReady {
        message: "ready-failed-answered",
        panic: false,
    });
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(Full::default()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    drop(svc);
    assert_eq!(logs().lines_with("ready-failed-answered").len(), 1);
}

/// A failure caught before a response existed (a `poll_ready` failure taken by the call, or a
/// panic of the inner service's `call`) is answered when the response future is first polled.
/// A response future dropped before that (a `select!` whose other branch was ready first, a
/// caller giving up) must still report it: one error event with an error id, the cause, the
/// method and the path. Before, the failure was dropped unlogged: a panic vanished without a
/// trace. Polled, it is logged once, by the answer, and not again on drop.
#[tokio::test]
async fn a_failure_whose_response_future_is_dropped_unpolled_is_logged() {
    quiet_panics();
    let _ = logs();
    for (panic, message, reason) in [
        (false, "unpolled-ready-error", "internal"),
        (true, "unpolled-ready-panic", "panic"),
    ] {
        let mut svc = CatchLayer::new()
            .name("unpolled")
            .layer(FailingReady { message, panic });
        let future = svc.ready().await.unwrap().call(
            Request::get("/unpolled?token=x")
                .body(Full::default())
                .unwrap(),
        );
        drop(svc);
        assert!(logs().lines_with(message).is_empty(), "logged too early");
        drop(future);
        let lines = logs().lines_with(message);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("error_id="), "{line}");
        assert!(line.contains(&format!("error.type=\"{reason}\"")), "{line}");
        assert!(line.contains("name=\"unpolled\""), "{line}");
        assert!(line.contains("/unpolled"), "{line}");
        assert!(
            !line.contains("token=x"),
            "query string leaked into log: {line}"
        );
    }
    // A panic of `call` itself.
    let mut svc = CatchLayer::new().layer(service_fn(|_req: Request<Full<Bytes>>| {
        if true {
            panic!("{EXPECTED_PANIC} unpolled-call-panic");
        }
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())))
    }));
    let future = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(Full::default()));
    drop(future);
    let lines = logs().lines_with("unpolled-call-panic");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("error_id="), "{}", lines[0]);
    // Polled to its answer, then dropped: logged once.
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(
            Request::get("/polled-call-panic")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(logs().lines_with("/polled-call-panic").len(), 1);
}

/// An error tagged with a message of its own (to find its log line), over `source`.
#[derive(Debug)]
struct Tagged {
    tag: &'static str,
    source: tower::BoxError,
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag)
    }
}

impl Error for Tagged {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// A service whose `poll_ready` fails with the error it holds (then is ready).
struct ReadyFailsWith(Option<tower::BoxError>);

impl Service<Request<Full<Bytes>>> for ReadyFailsWith {
    type Response = Response<Full<Bytes>>;
    type Error = tower::BoxError;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.0.take() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, _req: Request<Full<Bytes>>) -> Self::Future {
        std::future::ready(Ok(Response::new(Full::from("ok"))))
    }
}

/// A failure that no request was answered with is logged with the reason the layer's
/// classifier gives it, as an answered one would be: tower's `Elapsed` as a timeout, an
/// `Overloaded` as shed, an error a rule maps to 502 as a bad gateway. Before, every such error
/// was logged as `error.type="internal"`, whatever the classifier said. A classifier that
/// panics still leaves one event (the error as internal, and the panic), and no unwinding.
#[tokio::test]
async fn an_unanswered_failure_is_logged_with_the_classifiers_reason() {
    quiet_panics();
    let _ = logs();
    let tagged = |tag: &'static str, source: tower::BoxError| -> tower::BoxError {
        Box::new(Tagged { tag, source })
    };
    let layer = CatchLayer::new()
        .name("unanswered-classified")
        .on_error::<std::io::Error>(|_| Classification::bad_gateway());
    // A `poll_ready` failure kept by a service dropped before a call took it.
    for (tag, source, reason) in [
        (
            "unanswered-ready-elapsed",
            tagged("x", Box::new(tower::timeout::error::Elapsed::new())),
            "timeout",
        ),
        (
            "unanswered-ready-io",
            Box::new(std::io::Error::other("upstream")) as tower::BoxError,
            "bad_gateway",
        ),
    ] {
        let mut svc = layer.layer(ReadyFailsWith(Some(tagged(tag, source))));
        svc.ready().await.unwrap();
        drop(svc);
        let lines = logs().lines_with(tag);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(line.contains(&format!("error.type=\"{reason}\"")), "{line}");
        assert!(line.contains("name=\"unanswered-classified\""), "{line}");
        assert!(
            line.contains("the service was dropped before a request could be answered"),
            "{line}"
        );
    }
    // The failure of a response future dropped before it was polled.
    let mut svc = layer.layer(ReadyFailsWith(Some(tagged(
        "unanswered-future-overloaded",
        Box::new(tower::load_shed::error::Overloaded::new()),
    ))));
    let future = svc.ready().await.unwrap().call(
        Request::get("/unanswered-overloaded")
            .body(Full::default())
            .unwrap(),
    );
    drop(future);
    let lines = logs().lines_with("unanswered-future-overloaded");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("error.type=\"shed\""), "{}", lines[0]);
    assert!(lines[0].contains("/unanswered-overloaded"), "{}", lines[0]);

    // A classifier that panics: one event, the error as internal, and the classifier's panic.
    let panicking =
        CatchLayer::new().classify(|_e: &(dyn Error + 'static)| -> Option<Classification> {
            panic!("{EXPECTED_PANIC} unanswered classifier bug")
        });
    let mut svc = panicking.layer(ReadyFailsWith(Some(tagged(
        "unanswered-panicking-classifier",
        Box::new(tower::timeout::error::Elapsed::new()),
    ))));
    svc.ready().await.unwrap();
    drop(svc);
    let lines = logs().lines_with("unanswered-panicking-classifier");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("error.type=\"internal\""), "{}", lines[0]);
    assert!(
        lines[0].contains("unanswered classifier bug"),
        "{}",
        lines[0]
    );
    let future = panicking
        .layer(ReadyFailsWith(Some(tagged(
            "unanswered-future-panicking-classifier",
            Box::new(tower::timeout::error::Elapsed::new()),
        ))))
        .ready()
        .await
        .unwrap()
        .call(Request::new(Full::default()));
    drop(future);
    let lines = logs().lines_with("unanswered-future-panicking-classifier");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("error.type=\"internal\""), "{}", lines[0]);
}
