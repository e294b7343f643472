//! The SIGTERM drain with a real process and a real signal: the demo binary is built and
//! spawned on 127.0.0.1:0, clients keep sending over HTTP/1.1 keep-alive and h2c while
//! `kill -TERM` hits it.

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
}

impl Demo {
    fn spawn() -> Demo {
        let mut child = Command::new(demo_binary())
            .env("DEMO_ADDR", "127.0.0.1:0")
            .env("DEMO_DRAIN_DELAY_MS", DRAIN_DELAY.as_millis().to_string())
            .env("DEMO_GRACE_MS", GRACE.as_millis().to_string())
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
        Demo { child, addr, lines }
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
    match client.request(req).await {
        Err(e) if e.is_connect() => Outcome::Refused,
        Err(e) => Outcome::Broken(format!("{e:?}")),
        Ok(res) => {
            let status = res.status();
            let retry_after = res.headers().contains_key(http::header::RETRY_AFTER);
            let close = res
                .headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v == "close");
            if let Err(e) = res.into_body().collect().await {
                return Outcome::Broken(format!("body: {e:?}"));
            }
            match status {
                StatusCode::OK => Outcome::Ok,
                StatusCode::SERVICE_UNAVAILABLE if retry_after => Outcome::Unavailable { close },
                other => Outcome::Broken(format!("{other} (Retry-After: {retry_after})")),
            }
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

/// One HTTP/1.1 connection of our own, kept idle through the signal.
async fn idle_connection(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
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
    let mut demo = Demo::spawn();
    let addr = demo.addr;
    let stop = Arc::new(AtomicBool::new(false));

    // Clients that never stop: two over HTTP/1.1 keep-alive, two over h2c, and a readiness
    // probe.
    let mut senders = Vec::new();
    for c in [client(), client(), h2_client(), h2_client()] {
        senders.push(tokio::spawn(keep_sending(c, addr, "/", stop.clone())));
    }
    let probe = tokio::spawn(keep_sending(client(), addr, "/readyz", stop.clone()));
    let live = tokio::spawn(keep_sending(client(), addr, "/livez", stop.clone()));

    // An HTTP/1.1 connection used once, then left idle across the signal.
    let mut idle = idle_connection(addr).await.unwrap();
    let res = idle
        .send_request(Request::get("/").body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

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
