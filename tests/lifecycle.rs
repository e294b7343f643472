//! The SIGTERM drain with a real process and a real signal: the demo binary is built and
//! spawned on 127.0.0.1:0, clients keep sending over HTTP/1.1 keep-alive and h2c while
//! `kill -TERM` hits it. Once with `Lifecycle::serve`, once with each of the documented few
//! lines around `axum::serve(..).with_graceful_shutdown(..)` and hyper-util's
//! `GracefulShutdown` (`DEMO_SERVE`), which treat the close phase differently.

mod common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{client, demo_binary, h2_client, request, BoxError, TestClient};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const DRAIN_DELAY: Duration = Duration::from_millis(1_500);
const GRACE: Duration = Duration::from_millis(3_000);

/// The demo process, its address, and its stdout lines with the instant each was read.
struct Demo {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<(Instant, String)>,
    /// One demo at a time: each test's timing bounds assume the machine is not also running
    /// another demo and its seven busy clients.
    _turn: std::sync::MutexGuard<'static, ()>,
}

static ONE_DEMO_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Demo {
    /// The demo serving with `server` (`DEMO_SERVE`: lifecycle, axum or hyper-util).
    fn spawn(server: &str) -> Demo {
        Demo::spawn_with(server, DRAIN_DELAY, GRACE)
    }

    /// The demo serving with `server`, `drain_delay` and `grace`.
    fn spawn_with(server: &str, drain_delay: Duration, grace: Duration) -> Demo {
        // A test that failed while it held the turn poisons the lock; the next one still runs.
        let turn = ONE_DEMO_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut child = Command::new(demo_binary())
            .env("DEMO_SERVE", server)
            .env("DEMO_ADDR", "127.0.0.1:0")
            .env("DEMO_DRAIN_DELAY_MS", drain_delay.as_millis().to_string())
            .env("DEMO_GRACE_MS", grace.as_millis().to_string())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the demo");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send((Instant::now(), line));
            }
        });
        let (_, first) = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the demo prints its address");
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        Demo {
            child,
            addr,
            lines,
            _turn: turn,
        }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one request got.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok,
    /// 503 with a `Retry-After`; whether it said `Connection: close`.
    Unavailable {
        close: bool,
    },
    /// The connection was refused: the listener is closed, the client is done.
    Refused,
    /// Anything else: a reset, an incomplete message, a 503 without `Retry-After`.
    Broken(String),
}

async fn outcome(client: &TestClient, req: Request<Full<Bytes>>) -> Outcome {
    outcome_and_close(client, req).await.0
}

/// The outcome, and whether the response said `Connection: close`.
async fn outcome_and_close(client: &TestClient, req: Request<Full<Bytes>>) -> (Outcome, bool) {
    match client.request(req).await {
        Err(e) if e.is_connect() => (Outcome::Refused, false),
        Err(e) => (Outcome::Broken(format!("{e:?}")), false),
        Ok(res) => {
            let status = res.status();
            let retry_after = res.headers().contains_key(http::header::RETRY_AFTER);
            let close = res
                .headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v == "close");
            if let Err(e) = res.into_body().collect().await {
                return (Outcome::Broken(format!("body: {e:?}")), close);
            }
            let outcome = match status {
                StatusCode::OK => Outcome::Ok,
                StatusCode::SERVICE_UNAVAILABLE if retry_after => Outcome::Unavailable { close },
                other => Outcome::Broken(format!("{other} (Retry-After: {retry_after})")),
            };
            (outcome, close)
        }
    }
}

/// Sends `path` in a loop until refused; returns every outcome with its instant.
async fn keep_sending(
    client: TestClient,
    addr: SocketAddr,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> Vec<(Instant, Outcome)> {
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let o = outcome(&client, request(addr, path, None)).await;
        let done = o == Outcome::Refused;
        seen.push((Instant::now(), o));
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

/// The clients that keep sending through a drain: two over HTTP/1.1 keep-alive and two over
/// h2c asking for `/`, one asking for `/readyz`, one for `/livez`.
struct Traffic {
    senders: Vec<tokio::task::JoinHandle<Vec<(Instant, Outcome)>>>,
    probe: tokio::task::JoinHandle<Vec<(Instant, Outcome)>>,
    live: tokio::task::JoinHandle<Vec<(Instant, Outcome)>>,
}

fn start_traffic(addr: SocketAddr, stop: &Arc<AtomicBool>) -> Traffic {
    let senders = [client(), client(), h2_client(), h2_client()]
        .into_iter()
        .map(|c| tokio::spawn(keep_sending(c, addr, "/", stop.clone())))
        .collect();
    Traffic {
        senders,
        probe: tokio::spawn(keep_sending(client(), addr, "/readyz", stop.clone())),
        live: tokio::spawn(keep_sending(client(), addr, "/livez", stop.clone())),
    }
}

/// One HTTP/1.1 connection of our own, used for one request (answered 200), then kept idle
/// through the signal.
async fn idle_connection(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let res = sender
        .send_request(Request::get("/").body(Full::default())?)
        .await?;
    assert_eq!(res.status(), StatusCode::OK);
    res.into_body().collect().await?;
    Ok(sender)
}

fn broken(all: &[(Instant, Outcome)]) -> Vec<&Outcome> {
    all.iter()
        .map(|(_, o)| o)
        .filter(|o| matches!(o, Outcome::Broken(_)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_without_dropping_a_request() {
    let mut demo = Demo::spawn("lifecycle");
    let addr = demo.addr;
    let stop = Arc::new(AtomicBool::new(false));

    // Clients that never stop, and the probes.
    let Traffic {
        senders,
        probe,
        live,
    } = start_traffic(addr, &stop);

    // An HTTP/1.1 connection used once, then left idle across the signal.
    let mut idle = idle_connection(addr).await.unwrap();

    // Slow requests started before the signal, on both protocols.
    let mut slow = Vec::new();
    for c in [client(), client(), h2_client()] {
        slow.push(tokio::spawn(async move {
            outcome(&c, request(addr, "/slow?ms=2500", None)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    demo.sigterm();

    // Past the drain delay, the idle connection is still open and its next request is
    // answered: 503 + Retry-After + Connection: close.
    tokio::time::sleep(DRAIN_DELAY + Duration::from_millis(500)).await;
    let res = idle
        .send_request(Request::get("/").body(Full::default()).unwrap())
        .await
        .expect("the idle keep-alive connection was not closed under us");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key(http::header::RETRY_AFTER));
    assert_eq!(res.headers()[http::header::CONNECTION], "close");

    // The process exits 0 within drain_delay + grace + 1 s.
    let limit = DRAIN_DELAY + GRACE + Duration::from_secs(1);
    let status = loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < limit, "still running after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exited = Instant::now();
    assert!(status.success(), "exit status {status}");
    stop.store(true, Ordering::Relaxed);

    for s in slow {
        assert_eq!(
            s.await.unwrap(),
            Outcome::Ok,
            "a slow request started before the signal"
        );
    }
    let mut all = Vec::new();
    for (i, s) in senders.into_iter().enumerate() {
        let seen = s.await.unwrap();
        assert!(broken(&seen).is_empty(), "client {i}: {:?}", broken(&seen));
        assert!(
            seen.iter()
                .any(|(at, o)| *at > signalled && *o == Outcome::Ok),
            "client {i} was served after the signal, during the drain delay"
        );
        all.extend(seen);
    }
    assert!(
        all.iter()
            .any(|(_, o)| *o == Outcome::Unavailable { close: true }),
        "an HTTP/1.1 request after the close got 503 + Connection: close"
    );

    // Readiness turned 503 (with Retry-After) before the listener closed: after its first 503,
    // requests were still served with 200.
    let probe = probe.await.unwrap();
    assert!(broken(&probe).is_empty(), "{:?}", broken(&probe));
    let unready = probe
        .iter()
        .find(|(_, o)| matches!(o, Outcome::Unavailable { .. }))
        .map(|(at, _)| *at)
        .expect("readiness answered 503 while draining");
    assert!(unready > signalled);
    assert!(unready - signalled < Duration::from_millis(500), "at once");
    assert!(all.iter().any(|(at, o)| *at > unready && *o == Outcome::Ok));
    // Liveness stayed 200 until the end.
    let live = live.await.unwrap();
    assert!(live
        .iter()
        .all(|(_, o)| matches!(o, Outcome::Ok | Outcome::Refused)));

    // The demo printed each phase, in order.
    let lines: Vec<String> = demo.lines.try_iter().map(|(_, l)| l).collect();
    let pos = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:#?}"))
    };
    assert!(pos("draining:") < pos("closing:"));
    assert!(pos("closing:") < pos("exit:"));
    let _ = exited;
}

/// Waits for the demo's stdout line starting with `prefix`; every line read is kept in `seen`.
fn wait_line(demo: &Demo, prefix: &str, seen: &mut Vec<String>) -> Instant {
    loop {
        let (at, line) = demo
            .lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no {prefix:?} line in {seen:#?}"));
        let found = line.starts_with(prefix);
        seen.push(line);
        if found {
            return at;
        }
    }
}

/// The close phase under `axum::serve(..).with_graceful_shutdown(..)` or hyper-util's
/// `GracefulShutdown`, as the module docs describe it ("What `axum::serve` does differently"):
/// the drain delay is the same as with `Lifecycle::serve` (readiness 503 at once, every request
/// served with 200), but at the close every connection is told to shut down gracefully:
///
/// - an idle HTTP/1.1 keep-alive connection is closed by the server at once, unanswered
///   (`Lifecycle::serve` keeps it open and answers its next request with the drain layer's 503);
/// - a busy one finishes its response, which says `Connection: close`, then closes;
/// - HTTP/2 connections get a GOAWAY and their open streams finish;
/// - so a client's next request opens a new connection and is refused. The drain layer's 503
///   is reached only by a request read in the instant of the close, and a request written in
///   that instant on a connection being closed fails (a reset, an incomplete message): at
///   most one request per client, at the close.
async fn graceful_shutdown_closes_idle_connections_at_the_close(server: &str) {
    let mut demo = Demo::spawn(server);
    let addr = demo.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let mut lines = Vec::new();
    wait_line(&demo, "serving with", &mut lines);

    let Traffic {
        senders,
        probe,
        live,
    } = start_traffic(addr, &stop);

    let mut idle = idle_connection(addr).await.unwrap();

    // Slow requests started before the signal: HTTP/1.1, HTTP/1.1, h2c.
    let mut slow = Vec::new();
    for c in [client(), client(), h2_client()] {
        slow.push(tokio::spawn(async move {
            outcome_and_close(&c, request(addr, "/slow?ms=2500", None)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    demo.sigterm();

    // Still open half a second before the close.
    tokio::time::sleep(DRAIN_DELAY - Duration::from_millis(500)).await;
    assert!(
        !idle.is_closed(),
        "the idle connection closed while draining"
    );

    // At the close the server closes the idle connection, without a request on it.
    let closed = wait_line(&demo, "closing:", &mut lines);
    let drain_started = signalled + DRAIN_DELAY;
    assert!(closed > drain_started, "closed after the drain delay");
    while !idle.is_closed() {
        assert!(
            closed.elapsed() < Duration::from_secs(1),
            "the idle connection is still open 1 s after the close"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(idle
        .send_request(Request::get("/").body(Full::default()).unwrap())
        .await
        .is_err());

    // The process exits 0 within drain_delay + grace + 1 s.
    let limit = DRAIN_DELAY + GRACE + Duration::from_secs(1);
    let status = loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < limit, "still running after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    wait_line(&demo, "exit:", &mut lines);
    stop.store(true, Ordering::Relaxed);

    // Slow requests finish with 200; on HTTP/1.1 hyper's graceful shutdown adds
    // `Connection: close` (HTTP/2 has no such field).
    let mut slow_seen = Vec::new();
    for s in slow {
        slow_seen.push(s.await.unwrap());
    }
    assert_eq!(
        slow_seen,
        [
            (Outcome::Ok, true),
            (Outcome::Ok, true),
            (Outcome::Ok, false)
        ],
        "slow requests started before the signal (HTTP/1.1, HTTP/1.1, h2c)"
    );

    // Every request answered before the close is a 200 (or readiness' 503); each client
    // ends refused; in between, within 250 ms of the close, come the requests that raced it.
    let racing_until = closed + Duration::from_millis(250);
    let check_client = |name: &str,
                        seen: &[(Instant, Outcome)],
                        during_drain: &dyn Fn(&Outcome) -> bool,
                        at_close: &dyn Fn(&Outcome) -> bool| {
        let (last_at, last) = seen.last().expect("at least one request");
        assert_eq!(*last, Outcome::Refused, "{name}: ends refused");
        assert!(*last_at > drain_started, "{name}: refused before the close");
        let mut cut = 0;
        for (at, o) in &seen[..seen.len() - 1] {
            if *at <= drain_started {
                assert!(during_drain(o), "{name}: {o:?} during the drain delay");
            } else if *o != Outcome::Ok {
                assert!(at_close(o), "{name}: {o:?} at the close");
                assert!(*at < racing_until, "{name}: {o:?} long after the close");
                // The last answer on an HTTP/1.1 connection, or the failure of its last request.
                if matches!(o, Outcome::Unavailable { close: true } | Outcome::Broken(_)) {
                    cut += 1;
                }
            }
        }
        assert!(
            cut <= 1,
            "{name}: {cut} requests cut at the close: {seen:?}"
        );
    };
    let ok = |o: &Outcome| *o == Outcome::Ok;
    // HTTP/1.1: the drain layer's 503 + Connection: close, or the failure of a request written
    // as its connection closed.
    let http1_at_close =
        |o: &Outcome| matches!(o, Outcome::Unavailable { close: true } | Outcome::Broken(_));
    // h2c: until the client has the server's GOAWAY, its new streams are still served, with the
    // drain layer's 503 (no `Connection` field in HTTP/2).
    let http2_at_close = |o: &Outcome| {
        matches!(
            o,
            Outcome::Unavailable { close: false } | Outcome::Broken(_)
        )
    };
    let mut all = Vec::new();
    for (i, s) in senders.into_iter().enumerate() {
        let seen = s.await.unwrap();
        let at_close: &dyn Fn(&Outcome) -> bool = if i < 2 {
            &http1_at_close
        } else {
            &http2_at_close
        };
        check_client(&format!("client {i}"), &seen, &ok, at_close);
        assert!(
            seen.iter()
                .any(|(at, o)| *at > signalled && *at < drain_started && *o == Outcome::Ok),
            "client {i} was served after the signal, during the drain delay"
        );
        all.extend(seen);
    }
    let live = live.await.unwrap();
    check_client("liveness", &live, &ok, &|o| matches!(o, Outcome::Broken(_)));

    // Readiness turned 503 (with Retry-After) at once, while requests were still served.
    let probe = probe.await.unwrap();
    check_client(
        "readiness",
        &probe,
        &|o| matches!(o, Outcome::Ok | Outcome::Unavailable { close: false }),
        &|o| matches!(o, Outcome::Unavailable { .. } | Outcome::Broken(_)),
    );
    let unready = probe
        .iter()
        .find(|(_, o)| matches!(o, Outcome::Unavailable { .. }))
        .map(|(at, _)| *at)
        .expect("readiness answered 503 while draining");
    assert!(unready > signalled);
    assert!(unready - signalled < Duration::from_millis(500), "at once");
    assert!(all
        .iter()
        .any(|(at, o)| *at > unready && *at < drain_started && *o == Outcome::Ok));

    let pos = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix)).unwrap();
    assert!(pos("draining:") < pos("closing:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_axum_serve_closes_idle_connections_at_the_close() {
    graceful_shutdown_closes_idle_connections_at_the_close("axum").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_hyper_util_graceful_shutdown_closes_idle_connections_at_the_close() {
    graceful_shutdown_closes_idle_connections_at_the_close("hyper-util").await;
}

/// `Lifecycle::serve` answers the closing phase's late requests itself, with no drain layer
/// on the routes: 503 + `Retry-After` + `Connection: close` without calling the handler,
/// except on the exempt paths (the probes by default), which are served.
#[tokio::test]
async fn lifecycle_serve_refuses_late_requests_itself_except_on_exempt_paths() {
    use std::{future::IntoFuture, sync::atomic::AtomicUsize};

    use axum::{routing::get, Router};
    use tower_5xx::lifecycle::{Lifecycle, Phase};

    async fn send(
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        path: &str,
    ) -> (StatusCode, Option<u64>, bool) {
        let res = sender
            .send_request(Request::get(path).body(Full::default()).unwrap())
            .await
            .expect("an answer, not a reset");
        let status = res.status();
        let headers = res.headers().clone();
        res.into_body().collect().await.expect("a whole body");
        (
            status,
            headers
                .get(http::header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap()),
            headers
                .get(http::header::CONNECTION)
                .is_some_and(|v| v == "close"),
        )
    }

    for (exempt, served) in [
        (None, ["/livez", "/readyz"].as_slice()),
        (Some(vec!["/status"]), ["/status"].as_slice()),
    ] {
        let lifecycle = Lifecycle::new(Duration::ZERO, Duration::from_secs(30));
        let handled = Arc::new(AtomicUsize::new(0));
        let ok = |handled: Arc<AtomicUsize>| {
            get(move || {
                handled.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            })
        };
        let app = Router::new()
            .route("/", ok(handled.clone()))
            .route("/livez", ok(handled.clone()))
            .route("/readyz", ok(handled.clone()))
            .route("/status", ok(handled.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = lifecycle.serve(listener, app.with_state(()));
        let server = match &exempt {
            Some(paths) => server.exempt(paths.clone()),
            None => server,
        };
        let server = tokio::spawn(server.retry_after(Duration::from_secs(7)).into_future());

        // One kept-alive connection per path, opened while serving.
        let mut senders = Vec::new();
        for path in ["/", "/livez", "/readyz", "/status"] {
            let mut sender = idle_connection(addr).await.unwrap();
            assert_eq!(send(&mut sender, path).await, (StatusCode::OK, None, false));
            senders.push((path, sender));
        }
        // And an h2c connection that has not sent a request yet.
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut h2, h2_conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        let h2_conn = tokio::spawn(h2_conn);
        let before = handled.load(Ordering::SeqCst);

        lifecycle.start_drain();
        lifecycle.closed().await;
        assert_eq!(lifecycle.phase(), Phase::Closing);
        let mut refused = 0;
        for (path, sender) in &mut senders {
            let (status, retry_after, close) = send(sender, path).await;
            assert!(
                close,
                "{path}: every HTTP/1.1 answer closes once the listener is"
            );
            if served.contains(path) {
                assert_eq!((status, retry_after), (StatusCode::OK, None), "{path}");
            } else {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
                // The base of 7 s plus the default policy's jitter of up to 1 s.
                assert!(
                    retry_after.is_some_and(|s| (7..=8).contains(&s)),
                    "{path}: Retry-After {retry_after:?}"
                );
                refused += 1;
            }
        }
        assert_eq!(refused, 4 - served.len());
        // The h2c connection's first request is refused (no `Connection` field on HTTP/2),
        // then its GOAWAY ends it, long before the 30 s deadline.
        let res = h2
            .send_request(Request::get("/").body(Full::default()).unwrap())
            .await
            .expect("an h2 answer, not a reset");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().contains_key(http::header::RETRY_AFTER));
        assert!(res.headers().get(http::header::CONNECTION).is_none());
        tokio::time::timeout(Duration::from_secs(10), h2_conn)
            .await
            .expect("the GOAWAY closes the h2c connection")
            .unwrap()
            .expect("a clean close");
        assert_eq!(
            handled.load(Ordering::SeqCst) - before,
            served.len(),
            "a refused request never reaches its handler"
        );
        // Each connection was told to close: the server is done before the grace deadline.
        drop(senders);
        let done = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server returns once its connections are closed");
        assert!(done.unwrap().is_ok());
    }
}

/// An upgrade (a WebSocket handshake) read before the close and answered after it keeps its
/// `Connection: upgrade`: the serve loop's `Connection: close` is for the other answers.
#[tokio::test]
async fn lifecycle_serve_leaves_a_101_answered_after_the_close_alone() {
    use std::{convert::Infallible, future::IntoFuture};

    use axum::body::Body;
    use http::Response;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower_5xx::lifecycle::Lifecycle;

    let lifecycle = Lifecycle::new(Duration::ZERO, Duration::from_secs(30));
    let handler_lifecycle = lifecycle.clone();
    let (called, mut handler_called) = tokio::sync::mpsc::unbounded_channel();
    let app = tower::service_fn(move |_req: Request<hyper::body::Incoming>| {
        let lifecycle = handler_lifecycle.clone();
        let _ = called.send(());
        async move {
            lifecycle.closed().await;
            let res = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(http::header::CONNECTION, "upgrade")
                .header(http::header::UPGRADE, "websocket")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(Body::empty())
                .unwrap();
            Ok::<_, Infallible>(res)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = tokio::spawn(lifecycle.serve(listener, app).into_future());

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    // The handler holds the request until the listener is closed.
    handler_called.recv().await.unwrap();
    lifecycle.start_drain();
    let mut head = Vec::new();
    let mut chunk = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the 101 in time")
            .unwrap();
        assert!(n > 0, "closed before the head: {head:?}");
        head.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(!head.contains("close"), "{head}");
}

/// A client that connected and wrote its request in the instant before the close (its
/// connection waiting in the listener's backlog, not yet accepted) gets an answer, not a reset.
#[tokio::test]
async fn lifecycle_serve_answers_a_connection_still_in_the_backlog_at_the_close() {
    use std::{convert::Infallible, future::IntoFuture, io::Write};

    use http::Response;
    use tokio::io::AsyncReadExt;
    use tower_5xx::lifecycle::{Lifecycle, Phase};

    let lifecycle = Lifecycle::new(Duration::ZERO, Duration::from_secs(30));
    let app = tower::service_fn(|_req: Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = tokio::spawn(lifecycle.serve(listener, app).into_future());
    // The serve loop starts and waits in `accept`.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    lifecycle.start_drain();
    // The close, run in this task: the serve loop is woken but has not run yet.
    lifecycle.clone().on_drain().await;
    assert_eq!(lifecycle.phase(), Phase::Closing);
    // A client whose handshake the kernel completes now, and which writes its request.
    let mut std_stream = std::net::TcpStream::connect(addr).unwrap();
    std_stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    std_stream.set_nonblocking(true).unwrap();
    let mut stream = tokio::net::TcpStream::from_std(std_stream).unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(
        text.starts_with("http/1.1 503"),
        "a request that reached the server is answered: read {read:?}, got {text:?}"
    );
    assert!(text.contains("\r\nretry-after: "), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
}

/// "Press Ctrl-C again to force": a second SIGTERM during the drain ends it at once, with each
/// server the demo can drain with. The drain delay and the grace period are ten minutes each,
/// so the demo exits within the test's minute only if the second signal ended them; a request
/// in flight (10 s) is cut, not waited for, and the force is logged at warn level.
async fn a_second_sigterm_ends_the_drain_at_once(server: &str) {
    const LONG: Duration = Duration::from_secs(600);
    let mut demo = Demo::spawn_with(server, LONG, LONG);
    let addr = demo.addr;
    let slow =
        tokio::spawn(
            async move { outcome(&client(), request(addr, "/slow?ms=10000", None)).await },
        );
    // The slow request in the handler before the signals (the shed layer's stats count it).
    let c = client();
    let limit = Instant::now() + Duration::from_secs(60);
    loop {
        let res = c
            .request(request(addr, "/shed/stats", None))
            .await
            .expect("stats");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        if String::from_utf8_lossy(&body).contains("\"in_flight\":1") {
            break;
        }
        assert!(Instant::now() < limit, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut seen = Vec::new();
    let next_line_with = |demo: &Demo, needle: &str, seen: &mut Vec<String>| loop {
        let (_, line) = demo
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no line with {needle:?} in {seen:#?}"));
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return;
        }
    };
    demo.sigterm();
    next_line_with(&demo, "draining:", &mut seen);
    // A second SIGTERM less than a second after the first would be taken for the same one
    // delivered twice (`one_ctrl_c_as_sigint_and_sigterm_together_is_one_shutdown_request`).
    tokio::time::sleep(Duration::from_secs(1)).await;
    demo.sigterm();
    next_line_with(&demo, "exit:", &mut seen);
    let exit = seen.last().unwrap().clone();
    assert!(exit.contains("grace period over"), "{exit}");
    let limit = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < limit, "still running after its exit line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    seen.extend(demo.lines.try_iter().map(|(_, l)| l));
    assert!(
        seen.iter()
            .any(|l| l.contains("WARN") && l.contains("second shutdown signal")),
        "the force is logged at warn level: {seen:#?}"
    );
    assert!(
        matches!(slow.await.unwrap(), Outcome::Broken(_)),
        "the request in flight was cut at the force, not waited for"
    );
}

#[tokio::test]
async fn a_second_sigterm_ends_the_drain_of_lifecycle_serve_at_once() {
    a_second_sigterm_ends_the_drain_at_once("lifecycle").await;
}

#[tokio::test]
async fn a_second_sigterm_ends_the_drain_of_axum_serve_at_once() {
    a_second_sigterm_ends_the_drain_at_once("axum").await;
}

#[tokio::test]
async fn a_second_sigterm_ends_the_drain_of_hyper_util_at_once() {
    a_second_sigterm_ends_the_drain_at_once("hyper-util").await;
}

/// One Ctrl-C in a terminal reaches a process started by a wrapper that relays signals (a
/// process manager, a script's `trap`) twice: SIGINT from the terminal, SIGTERM from the
/// wrapper. That is one request to shut down, not "Ctrl-C again": the demo drains and does not
/// force. A signal a second or more
/// later (a real second Ctrl-C) still forces. Before, the pair forced the shutdown at once and
/// cut the requests in flight.
#[tokio::test]
async fn one_ctrl_c_as_sigint_and_sigterm_together_is_one_shutdown_request() {
    const LONG: Duration = Duration::from_secs(600);
    let mut demo = Demo::spawn_with("axum", LONG, LONG);
    // One request served first: the server is polling its shutdown future, so the signal
    // handlers are installed (a signal before that would end the process by default).
    let ready = outcome(&client(), request(demo.addr, "/readyz", None)).await;
    assert!(matches!(ready, Outcome::Ok), "{ready:?}");
    let pid = demo.child.id().to_string();
    let status = Command::new("sh")
        .args(["-c", "kill -INT $0; kill -TERM $0", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());

    let mut seen = Vec::new();
    let mut next_line_with = |demo: &Demo, needle: &str| loop {
        let (_, line) = demo
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no line with {needle:?} in {seen:#?}"));
        let found = line.contains(needle);
        seen.push(line.clone());
        if found {
            return line;
        }
        assert!(
            !line.contains("second shutdown signal") && !line.starts_with("exit:"),
            "forced by one Ctrl-C: {seen:#?}"
        );
    };
    next_line_with(&demo, "delivered twice");
    let readyz = outcome(&client(), request(demo.addr, "/readyz", None)).await;
    assert!(matches!(readyz, Outcome::Unavailable { .. }), "{readyz:?}");
    assert!(demo.child.try_wait().unwrap().is_none(), "still draining");

    // A second Ctrl-C, once the window of a signal delivered twice (1 s) is over: now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());
    next_line_with(&demo, "second shutdown signal");
    // Forced: the exit comes now, not after the 600 s drain delay. (With nothing in flight,
    // the server may finish before the forced grace deadline is seen: either exit line.)
    next_line_with(&demo, "exit:");
    assert!(demo.child.wait().unwrap().success());
}

/// A channel's receiver as a stream of shutdown requests: the signals, driven by the test.
struct Requests(tokio::sync::mpsc::UnboundedReceiver<()>);

impl futures_core::Stream for Requests {
    type Item = ();

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<()>> {
        self.0.poll_recv(cx)
    }
}

/// `Serve::shutdown_requests` in place of the signals, on a real server and client: the first
/// request drains (readiness 503, the listener still open), the second ends the drain at once:
/// the serve loop closes what is left (a request in flight) and returns `GraceExpired`
/// although the drain delay and the grace period are an hour each; logged at warn level.
#[tokio::test]
async fn a_second_shutdown_request_ends_lifecycle_serve_at_once() {
    use std::future::IntoFuture;

    use axum::{routing::get, Router};
    use tower_5xx::lifecycle::{Lifecycle, Phase};

    let logs = common::logs();
    const HOUR: Duration = Duration::from_secs(3600);
    let lifecycle = Lifecycle::new(HOUR, HOUR);
    let entered = Arc::new(tokio::sync::Notify::new());
    let app = Router::new()
        .route(
            "/slow",
            get({
                let entered = entered.clone();
                move || async move {
                    entered.notify_one();
                    tokio::time::sleep(HOUR).await;
                    "late"
                }
            }),
        )
        .route_service("/readyz", lifecycle.readiness())
        .route_service("/livez", lifecycle.liveness());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (signal, requests) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(
        lifecycle
            .serve(listener, app.with_state(()))
            .shutdown_requests(Requests(requests))
            .into_future(),
    );
    let c = client();
    let slow = tokio::spawn({
        let c = c.clone();
        async move { outcome(&c, request(addr, "/slow", None)).await }
    });
    entered.notified().await;

    signal.send(()).unwrap();
    let readyz = outcome(&c, request(addr, "/readyz", None)).await;
    assert!(matches!(readyz, Outcome::Unavailable { .. }), "{readyz:?}");
    assert_eq!(lifecycle.phase(), Phase::Draining);
    assert_eq!(
        outcome(&c, request(addr, "/livez", None)).await,
        Outcome::Ok
    );

    signal.send(()).unwrap();
    let expired = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the serve loop returns at the second request, not after the hour")
        .unwrap()
        .expect_err("the grace period was ended");
    assert_eq!(expired.in_flight(), Some(1), "{expired}");
    assert_eq!(lifecycle.phase(), Phase::Closing);
    assert!(
        matches!(slow.await.unwrap(), Outcome::Broken(_)),
        "the request in flight was cut"
    );
    assert!(
        logs.lines_with("second shutdown signal")
            .iter()
            .any(|l| l.contains("WARN")),
        "{}",
        logs.contents()
    );
}

/// Forced with no connection open, the serve loop has cut nothing: it returns `Ok`, every
/// time. (Both branches of its final wait were ready at once, and `select!` picked one at
/// random: `Ok` or a `GraceExpired` with nothing in flight, by the toss of a coin.)
#[tokio::test]
async fn a_forced_serve_with_nothing_open_returns_ok_every_time() {
    use std::future::IntoFuture;

    use axum::{routing::get, Router};
    use tower_5xx::lifecycle::{Lifecycle, Phase};

    const HOUR: Duration = Duration::from_secs(3600);
    for round in 0..24 {
        let lifecycle = Lifecycle::new(HOUR, HOUR);
        let app = Router::new().route("/", get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (signal, requests) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(
            lifecycle
                .serve(listener, app.with_state(()))
                .shutdown_requests(Requests(requests))
                .into_future(),
        );
        signal.send(()).unwrap();
        lifecycle.draining().await;
        signal.send(()).unwrap();
        let out = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the serve loop returns at the second request")
            .unwrap();
        assert_eq!(
            out,
            Ok(()),
            "round {round}: nothing was open, nothing was cut"
        );
        assert_eq!(lifecycle.phase(), Phase::Closing);
    }
}

/// Once `Lifecycle::serve` has returned, it no longer listens for shutdown requests: the
/// stream is dropped then, not at the grace deadline (an hour here). Before, a task kept it
/// (with a clone of the lifecycle) until the deadline, and a request meanwhile was logged as a
/// "second shutdown signal: ending the drain now" for a shutdown already complete.
#[tokio::test]
async fn lifecycle_serve_drops_the_shutdown_requests_when_it_returns() {
    use std::future::IntoFuture;

    use axum::{routing::get, Router};
    use tower_5xx::lifecycle::Lifecycle;

    const HOUR: Duration = Duration::from_secs(3600);
    let lifecycle = Lifecycle::new(Duration::ZERO, HOUR);
    let app = Router::new().route("/", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (signal, requests) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(
        lifecycle
            .serve(listener, app.with_state(()))
            .shutdown_requests(Requests(requests))
            .into_future(),
    );
    signal.send(()).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("nothing open: the serve loop returns at the close")
        .unwrap();
    assert_eq!(out, Ok(()));
    tokio::time::timeout(Duration::from_secs(30), signal.closed())
        .await
        .expect("the shutdown requests are still listened for after serve returned");
}

/// What a [`Scripted`] stream of shutdown requests does next.
enum Next {
    /// Yields a shutdown request.
    Request,
    /// Panics, with this message.
    Panic(&'static str),
}

/// A stream of shutdown requests the test scripts item by item, which reports its drop.
struct Scripted {
    next: tokio::sync::mpsc::UnboundedReceiver<Next>,
    dropped: Option<tokio::sync::oneshot::Sender<()>>,
}

impl futures_core::Stream for Scripted {
    type Item = ();

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<()>> {
        match std::task::ready!(self.next.poll_recv(cx)) {
            Some(Next::Request) => std::task::Poll::Ready(Some(())),
            Some(Next::Panic(message)) => panic!("{message}"),
            None => std::task::Poll::Ready(None),
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        if let Some(dropped) = self.dropped.take() {
            let _ = dropped.send(());
        }
    }
}

/// A scripted stream, its script, and the news of its drop.
fn scripted() -> (
    tokio::sync::mpsc::UnboundedSender<Next>,
    Scripted,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (script, next) = tokio::sync::mpsc::unbounded_channel();
    let (dropped, was_dropped) = tokio::sync::oneshot::channel();
    let stream = Scripted {
        next,
        dropped: Some(dropped),
    };
    (script, stream, was_dropped)
}

/// Whether an error-level event was logged with `needle` in it.
fn logged_error(logs: &common::Logs, needle: &str) -> bool {
    logs.lines_with(needle).iter().any(|l| l.contains("ERROR"))
}

/// A shutdown-request stream that panics before its first request can no longer ask for a
/// shutdown: the panic is logged at error level and taken as the request, so the process
/// drains and exits in order. Before, the panic went through the shutdown future (or, in
/// `Lifecycle::serve`, was lost in its task): no drain, and nothing left to start one.
#[tokio::test(start_paused = true)]
async fn a_panic_in_the_shutdown_requests_before_the_first_starts_the_drain() {
    use tokio::time::Instant;
    use tower_5xx::lifecycle::{Lifecycle, Phase};

    let logs = common::logs();
    let lc = Lifecycle::new(Duration::from_secs(10), Duration::from_secs(20));
    let (script, requests, dropped) = scripted();
    let shutdown = tokio::spawn(lc.clone().on_shutdown_requests(requests));
    let start = Instant::now();
    script
        .send(Next::Panic("bug in the first-request stream"))
        .unwrap();
    assert!(dropped.await.is_ok(), "a stream that panicked is dropped");
    assert_eq!(Instant::now(), start, "at once");
    assert_eq!(lc.phase(), Phase::Draining);
    shutdown
        .await
        .expect("the stream's panic does not reach the shutdown future");
    assert_eq!(Instant::now() - start, Duration::from_secs(10), "drained");
    assert_eq!(lc.phase(), Phase::Closing);
    assert_eq!(
        lc.deadline(),
        Some(start + Duration::from_secs(30)),
        "not forced"
    );
    assert!(
        logged_error(&logs, "bug in the first-request stream"),
        "{}",
        logs.contents()
    );
}

/// A shutdown-request stream that panics during the drain ends: the drain goes on to its
/// deadline (a panic is not a second request: it never cuts the requests in flight), and the
/// panic is logged at error level. Before, the task that listens for the second request died
/// with it, silently.
#[tokio::test(start_paused = true)]
async fn a_panic_in_the_shutdown_requests_after_the_first_ends_them_without_forcing() {
    use tokio::time::Instant;
    use tower_5xx::lifecycle::{Lifecycle, Phase};

    let logs = common::logs();
    let lc = Lifecycle::new(Duration::from_secs(10), Duration::from_secs(20));
    let (script, requests, dropped) = scripted();
    tokio::spawn(lc.clone().on_shutdown_requests(requests));
    let start = Instant::now();
    script.send(Next::Request).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lc.phase(), Phase::Draining);

    script
        .send(Next::Panic("bug in the second-request stream"))
        .unwrap();
    assert!(dropped.await.is_ok(), "a stream that panicked is dropped");
    assert_eq!(lc.phase(), Phase::Draining, "not forced");
    assert!(
        logged_error(&logs, "bug in the second-request stream"),
        "{}",
        logs.contents()
    );
    let out = lc.finish(std::future::pending::<()>()).await;
    assert_eq!(out.map_err(|e| e.in_flight()), Err(None), "expired");
    assert_eq!(
        Instant::now() - start,
        Duration::from_secs(30),
        "a full drain"
    );
}

/// `Serve::shutdown_requests` whose stream panics, on a real server: the serve loop drains
/// (readiness answers 503) and logs the panic at error level. Before, the panic was lost in the
/// serve loop's signal task: no drain, and the stream that replaced the signals was gone.
#[tokio::test]
async fn a_panic_in_the_shutdown_requests_of_lifecycle_serve_starts_the_drain() {
    use std::future::IntoFuture;

    use axum::{routing::get, Router};
    use tower_5xx::lifecycle::{Lifecycle, Phase};

    let logs = common::logs();
    const HOUR: Duration = Duration::from_secs(3600);
    let lifecycle = Lifecycle::new(HOUR, HOUR);
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route_service("/readyz", lifecycle.readiness());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (script, requests, _dropped) = scripted();
    let server = tokio::spawn(
        lifecycle
            .serve(listener, app.with_state(()))
            .shutdown_requests(requests)
            .into_future(),
    );
    let c = client();
    assert_eq!(
        outcome(&c, request(addr, "/readyz", None)).await,
        Outcome::Ok
    );

    script
        .send(Next::Panic("bug in serve's request stream"))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), lifecycle.draining())
        .await
        .expect("the panic starts the drain");
    assert_eq!(lifecycle.phase(), Phase::Draining);
    let readyz = outcome(&c, request(addr, "/readyz", None)).await;
    assert!(matches!(readyz, Outcome::Unavailable { .. }), "{readyz:?}");
    assert_eq!(outcome(&c, request(addr, "/", None)).await, Outcome::Ok);
    assert!(
        logged_error(&logs, "bug in serve's request stream"),
        "{}",
        logs.contents()
    );
    server.abort();
}

/// With `on_shutdown_requests` (or `on_signal`) and `finish`, the shutdown requests are
/// listened for until `finish` returns, not until the grace deadline: once the server is done,
/// the stream is dropped at once. Before, a task kept it (and a clone of the lifecycle) for
/// the whole grace period, 20 s here.
#[tokio::test(start_paused = true)]
async fn finish_stops_listening_for_shutdown_requests_when_it_returns() {
    use tokio::time::Instant;
    use tower_5xx::lifecycle::Lifecycle;

    let lc = Lifecycle::new(Duration::from_secs(1), Duration::from_secs(20));
    let (script, requests, dropped) = scripted();
    tokio::spawn(lc.clone().on_shutdown_requests(requests));
    script.send(Next::Request).unwrap();
    // A server that finishes at the close, with nothing in flight.
    let server = {
        let lc = lc.clone();
        async move { lc.closed().await }
    };
    assert_eq!(lc.finish(server).await, Ok(()));
    let returned = Instant::now();
    tokio::time::timeout(Duration::from_millis(1), dropped)
        .await
        .expect("the stream is dropped once finish has returned")
        .unwrap();
    assert_eq!(Instant::now(), returned);
}

/// The shutdown future dropped mid-drain (a `select!` that gave up on it, a server future
/// dropped with its graceful-shutdown future): the drain still ends at the drain delay, the
/// listener is marked closed and the grace deadline runs. Before, the delay was the future's
/// own: the phase stayed `Draining` for good and `finish` never expired.
#[tokio::test(start_paused = true)]
async fn a_shutdown_future_dropped_mid_drain_still_closes_the_listener() {
    use tokio::time::Instant;
    use tower_5xx::lifecycle::{Lifecycle, Phase};

    let lc = Lifecycle::new(Duration::from_secs(10), Duration::from_secs(20));
    let (script, requests, _dropped) = scripted();
    let shutdown = tokio::spawn(lc.clone().on_shutdown_requests(requests));
    let start = Instant::now();
    script.send(Next::Request).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lc.phase(), Phase::Draining);
    shutdown.abort();
    assert!(shutdown.await.unwrap_err().is_cancelled());

    tokio::time::timeout(Duration::from_secs(3600), lc.closed())
        .await
        .expect("the listener is marked closed at the end of the drain delay");
    assert_eq!(Instant::now() - start, Duration::from_secs(10));
    assert_eq!(lc.deadline(), Some(start + Duration::from_secs(30)));
    let out = lc.finish(std::future::pending::<()>()).await;
    assert_eq!(out.map_err(|e| e.in_flight()), Err(None), "expired");
    assert_eq!(Instant::now() - start, Duration::from_secs(30));
}

/// The same with `on_drain` and a drain started by code.
#[tokio::test(start_paused = true)]
async fn on_drain_dropped_mid_drain_still_closes_the_listener() {
    use tokio::time::Instant;
    use tower_5xx::lifecycle::{Lifecycle, Phase};

    let lc = Lifecycle::new(Duration::from_secs(10), Duration::from_secs(20));
    let shutdown = tokio::spawn(lc.clone().on_drain());
    let start = Instant::now();
    lc.start_drain();
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.abort();
    assert!(shutdown.await.unwrap_err().is_cancelled());
    assert_eq!(lc.phase(), Phase::Draining);

    tokio::time::timeout(Duration::from_secs(3600), lc.closed())
        .await
        .expect("the listener is marked closed at the end of the drain delay");
    assert_eq!(Instant::now() - start, Duration::from_secs(10));
}

/// One lifecycle (no drain delay, an hour of grace) for two servers, the app and its metrics
/// port, say: the app's `/slow` runs for the hour (it notifies `entered` first), the metrics
/// server stays idle. Each server's stream of shutdown requests gets every request
/// [`signal`](Self::signal) sends, as each `on_signal` gets every signal.
struct TwoServers {
    lifecycle: tower_5xx::lifecycle::Lifecycle,
    entered: Arc<tokio::sync::Notify>,
    app: axum::Router,
    metrics: axum::Router,
    app_requests: Requests,
    metrics_requests: Requests,
    senders: [tokio::sync::mpsc::UnboundedSender<()>; 2],
}

impl TwoServers {
    const HOUR: Duration = Duration::from_secs(3600);

    fn new() -> Self {
        use axum::routing::get;

        let entered = Arc::new(tokio::sync::Notify::new());
        let app = axum::Router::new().route(
            "/slow",
            get({
                let entered = entered.clone();
                move || async move {
                    entered.notify_one();
                    tokio::time::sleep(Self::HOUR).await;
                    "late"
                }
            }),
        );
        let metrics = axum::Router::new().route("/metrics", get(|| async { "" }));
        let (app_signal, app_requests) = tokio::sync::mpsc::unbounded_channel();
        let (metrics_signal, metrics_requests) = tokio::sync::mpsc::unbounded_channel();
        Self {
            lifecycle: tower_5xx::lifecycle::Lifecycle::new(Duration::ZERO, Self::HOUR),
            entered,
            app,
            metrics,
            app_requests: Requests(app_requests),
            metrics_requests: Requests(metrics_requests),
            senders: [app_signal, metrics_signal],
        }
    }

    /// A shutdown request to both servers. (A stream already dropped is a listener gone: the
    /// request reaches the others.)
    fn signal(senders: &[tokio::sync::mpsc::UnboundedSender<()>; 2]) {
        for sender in senders {
            let _ = sender.send(());
        }
    }
}

/// Two servers on one lifecycle ([`TwoServers`]), each run by `finish`: the metrics server
/// finishes at the close, the app still has a request in flight, and a second shutdown request
/// must still force it. The first `finish` to return marked the whole lifecycle finished, which
/// stopped every task listening for the second request: the app then ran its whole grace
/// period (an hour here), with Ctrl-C ignored.
#[tokio::test]
async fn a_second_shutdown_request_forces_the_server_left_when_another_finished() {
    use tower_5xx::lifecycle::Phase;

    let TwoServers {
        lifecycle,
        entered,
        app,
        metrics,
        app_requests,
        metrics_requests,
        senders,
    } = TwoServers::new();
    let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = app_listener.local_addr().unwrap();
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_server = tokio::spawn({
        let lc = lifecycle.clone();
        async move {
            let server = axum::serve(app_listener, app)
                .with_graceful_shutdown(lc.clone().on_shutdown_requests(app_requests));
            lc.finish(server).await
        }
    });
    let metrics_server = tokio::spawn({
        let lc = lifecycle.clone();
        async move {
            let server = axum::serve(metrics_listener, metrics)
                .with_graceful_shutdown(lc.clone().on_shutdown_requests(metrics_requests));
            lc.finish(server).await
        }
    });
    let slow = tokio::spawn(async move { outcome(&client(), request(addr, "/slow", None)).await });
    entered.notified().await;

    TwoServers::signal(&senders);
    let metrics_out = tokio::time::timeout(Duration::from_secs(30), metrics_server)
        .await
        .expect("nothing open on the metrics server: it finishes at the close")
        .unwrap();
    assert!(matches!(metrics_out, Ok(Ok(()))), "{metrics_out:?}");
    assert_eq!(lifecycle.phase(), Phase::Closing);

    TwoServers::signal(&senders);
    let app_out = tokio::time::timeout(Duration::from_secs(30), app_server)
        .await
        .expect("the second request forces the app's shutdown, not after the hour")
        .unwrap();
    assert!(app_out.is_err(), "the grace period was ended: {app_out:?}");
    slow.abort();
}

/// The same with two `Lifecycle::serve` loops on one lifecycle.
#[tokio::test]
async fn a_second_shutdown_request_forces_the_serve_loop_left_when_another_returned() {
    use std::future::IntoFuture;

    let TwoServers {
        lifecycle,
        entered,
        app,
        metrics,
        app_requests,
        metrics_requests,
        senders,
    } = TwoServers::new();
    let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = app_listener.local_addr().unwrap();
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_server = tokio::spawn(
        lifecycle
            .serve(app_listener, app.with_state(()))
            .shutdown_requests(app_requests)
            .into_future(),
    );
    let metrics_server = tokio::spawn(
        lifecycle
            .serve(metrics_listener, metrics.with_state(()))
            .shutdown_requests(metrics_requests)
            .into_future(),
    );
    let slow = tokio::spawn(async move { outcome(&client(), request(addr, "/slow", None)).await });
    entered.notified().await;

    TwoServers::signal(&senders);
    let metrics_out = tokio::time::timeout(Duration::from_secs(30), metrics_server)
        .await
        .expect("nothing open on the metrics server: it returns at the close")
        .unwrap();
    assert_eq!(metrics_out, Ok(()));

    TwoServers::signal(&senders);
    let expired = tokio::time::timeout(Duration::from_secs(30), app_server)
        .await
        .expect("the second request forces the app's serve loop, not after the hour")
        .unwrap()
        .expect_err("the grace period was ended");
    assert_eq!(expired.in_flight(), Some(1), "{expired}");
    assert!(matches!(slow.await.unwrap(), Outcome::Broken(_)));
}

/// A stream of shutdown requests that panics when polled and again when dropped (a `Drop`
/// that checks an invariant the first panic broke).
struct PanicsTwice;

impl futures_core::Stream for PanicsTwice {
    type Item = ();

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<()>> {
        panic!("bug in the shutdown-request stream")
    }
}

impl Drop for PanicsTwice {
    fn drop(&mut self) {
        panic!("bug in the shutdown-request stream's drop");
    }
}

/// The panic of the stream before the first request starts the drain; the stream's drop
/// panicking too must not leave that drain without its close. Before, the second panic (at
/// the drop, after the drain had started) ended the shutdown future before its drain delay:
/// the phase stayed `Draining` for good, the listener was never marked closed, and `finish`
/// (or `Lifecycle::serve`) never returned.
#[tokio::test(start_paused = true)]
async fn a_shutdown_request_stream_whose_drop_panics_still_closes_the_listener() {
    use tokio::time::Instant;
    use tower_5xx::lifecycle::{Lifecycle, Phase};

    let lc = Lifecycle::new(Duration::from_secs(10), Duration::from_secs(20));
    let start = Instant::now();
    let shutdown = tokio::spawn(lc.clone().on_shutdown_requests(PanicsTwice));
    tokio::time::timeout(Duration::from_secs(3600), lc.closed())
        .await
        .expect("the listener is marked closed at the end of the drain delay");
    assert_eq!(Instant::now() - start, Duration::from_secs(10));
    assert_eq!(lc.phase(), Phase::Closing);
    shutdown
        .await
        .expect("the panics do not reach the shutdown future");
}
