//! A retrying client driving the demo server, printing every attempt, its wait, and why.
//!
//! ```sh
//! DEMO_ADMIN_TOKEN=secret cargo run --example demo     # in one terminal
//! DEMO_ADMIN_TOKEN=secret cargo run --example client   # in another
//! ```
//!
//! `DEMO_ADDR` points both at another address (default `127.0.0.1:3000`). Without
//! `DEMO_ADMIN_TOKEN` the maintenance scenario is skipped.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_5xx::{
    breaker::{CircuitBreaker, KeyedBreakers, SlidingWindow},
    retry::{
        AttemptEvent, Backoff, Decision, Failure, Jitter, ReplayBody, RetryBudget, RetryLayer,
        RetryPolicy,
    },
};

type Body = Full<Bytes>;

fn describe(start: Instant, event: &AttemptEvent) {
    let at = start.elapsed().as_secs_f64();
    let status = event
        .status
        .map_or_else(|| "error".to_owned(), |s| s.as_u16().to_string());
    let what = match &event.decision {
        Decision::Done => "final".to_owned(),
        Decision::Retry {
            reason,
            delay,
            retry_after: Some(_),
        } => format!(
            "retry in {:.1} s: the server said Retry-After ({reason})",
            delay.as_secs_f64()
        ),
        Decision::Retry { reason, delay, .. } => format!(
            "retry in {:.2} s: exponential backoff with full jitter ({reason})",
            delay.as_secs_f64()
        ),
        Decision::GiveUp { reason, why } => format!("give up ({reason}): {why}"),
        other => format!("{other:?}"),
    };
    println!(
        "    [{at:6.2} s] attempt {}: {status} -> {what}",
        event.attempt
    );
}

#[tokio::main]
async fn main() {
    let addr: SocketAddr = std::env::var("DEMO_ADDR")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3000)));
    let start = Instant::now();

    let policy = RetryPolicy::builder()
        .max_attempts(4)
        .backoff(
            Backoff::new(Duration::from_millis(200), 2.0, Duration::from_secs(2))
                .expect("valid backoff")
                .jitter(Jitter::Full),
        )
        .retry_after_cap(Duration::from_secs(10))
        .attempt_timeout(Duration::from_secs(5))
        .budget(Arc::new(RetryBudget::new(0.2, 10).expect("valid budget")))
        .on_attempt(move |event| describe(start, event))
        .build()
        .expect("valid policy");
    // The client under `RetryLayer` takes `ReplayBody` bodies; the layered service takes `Body`.
    let hyper = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Body>>();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(hyper);

    let url = |path: &str| format!("http://{addr}{path}");
    let mut get = |path: String| {
        let req = Request::get(path)
            .body(Body::default())
            .expect("valid request");
        let mut svc = client.clone();
        async move {
            let res = svc.ready().await?.call(req).await?;
            let status = res.status();
            let retry_after = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let _ = res.into_body().collect().await;
            Ok::<_, tower_5xx::BoxError>((status, retry_after))
        }
    };

    println!("tower-5xx retry client against http://{addr}");
    if let Err(e) = get(url("/healthz")).await {
        eprintln!("cannot reach the demo at {addr}: {e}\nstart it first: cargo run --example demo");
        std::process::exit(1);
    }

    // An earlier run (or hand testing) may have left the demo's breaker open: wait it out, so
    // that scenario 1 shows retries rather than an open breaker.
    wait_for_closed_breaker(addr).await;

    println!("\n1. A flaky dependency (50% failures, each a 500): retried with backoff.");
    for i in 1..=3 {
        println!("  request {i}:");
        match get(url("/flaky?fail=0.5")).await {
            Ok((status, _)) => println!("  -> {status}"),
            Err(e) => println!("  -> error: {e}"),
        }
    }

    match std::env::var("DEMO_ADMIN_TOKEN") {
        Ok(token) => maintenance(addr, &token, &mut get, &url).await,
        Err(_) => println!(
            "\n2. Maintenance: skipped (set DEMO_ADMIN_TOKEN, the same as the demo's, to run it)."
        ),
    }

    println!("\n3. A dead dependency (100% failures): the demo's breaker opens and answers 503 +");
    println!("   Retry-After; the client waits what it says when that fits under its 10 s cap.");
    for i in 1..=4 {
        println!("  request {i}:");
        match get(url("/flaky?fail=1.0")).await {
            Ok((status, ra)) => println!(
                "  -> {status}{}",
                ra.map(|r| format!(" (Retry-After: {r})"))
                    .unwrap_or_default()
            ),
            Err(e) => println!("  -> error: {e}"),
        }
    }
    println!(
        "\n4. The client's own breaker for this endpoint: after repeated 5xx it stops calling"
    );
    println!("   and fails fast, for as long as the server's last Retry-After said.");
    let breakers = Arc::new(
        KeyedBreakers::new(
            CircuitBreaker::builder()
                .sliding_window(SlidingWindow::Count(6))
                .minimum_calls(3)
                .failure_rate_threshold(0.5),
        )
        .expect("valid breaker"),
    );
    let guarded = ServiceBuilder::new()
        .layer(
            RetryLayer::new(
                RetryPolicy::builder()
                    .max_attempts(1)
                    .build()
                    .expect("valid policy"),
            )
            .circuit_breakers(breakers),
        )
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Body>>());
    for i in 1..=5 {
        let req = Request::get(url("/flaky?fail=1.0"))
            .body(Body::default())
            .expect("valid request");
        match guarded.clone().oneshot(req).await {
            Ok(res) => println!("  request {i}: {} (sent)", res.status()),
            Err(e) => match Failure::from(e) {
                Failure::CircuitOpen(open) => println!(
                    "  request {i}: not sent: {open}; try again in {:.1} s",
                    open.retry_after().as_secs_f64()
                ),
                Failure::Transport(e) => println!("  request {i}: transport error: {e}"),
                other => println!("  request {i}: error: {other}"),
            },
        }
    }
    println!("\ndone in {:.1} s", start.elapsed().as_secs_f64());
}

async fn maintenance<F, Fut>(
    addr: SocketAddr,
    token: &str,
    get: &mut F,
    url: &impl Fn(&str) -> String,
) where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(StatusCode, Option<String>), tower_5xx::BoxError>>,
{
    println!(
        "\n2. Maintenance: switched on with Retry-After 2 s (the demo adds up to 5 s of jitter),"
    );
    println!("   off again after 3 s.");
    let admin = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let admin_call = |method: Method, body: &'static str| {
        Request::builder()
            .method(method)
            .uri(format!("http://{addr}/admin/maintenance"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::new(Bytes::from_static(body.as_bytes())))
            .expect("valid request")
    };
    match admin
        .request(admin_call(
            Method::PUT,
            r#"{"retry_after": 2, "message": "Back soon."}"#,
        ))
        .await
    {
        Ok(res) if res.status() == StatusCode::OK => {}
        Ok(res) => {
            println!(
                "  the admin router answered {}: is DEMO_ADMIN_TOKEN the demo's?",
                res.status()
            );
            return;
        }
        Err(e) => {
            println!("  admin call failed: {e}");
            return;
        }
    }
    let off = {
        let admin = admin.clone();
        let req = admin_call(Method::DELETE, "");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = admin.request(req).await;
            println!("    (maintenance switched off)");
        })
    };
    println!("  GET /:");
    match get(url("/")).await {
        Ok((status, _)) => println!("  -> {status}"),
        Err(e) => println!("  -> error: {e}"),
    }
    let _ = off.await;
}

/// Reads the demo's `/flaky/state` and, while its breaker is open, waits out the open time.
async fn wait_for_closed_breaker(addr: SocketAddr) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    for _ in 0..3 {
        let uri = format!("http://{addr}/flaky/state");
        let Ok(res) = client.get(uri.parse().expect("valid uri")).await else {
            return;
        };
        let Ok(body) = res.into_body().collect().await else {
            return;
        };
        let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
        if !text.contains("state=open") {
            return;
        }
        let ms: u64 = text
            .split("open_for_ms=")
            .nth(1)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        println!(
            "(the demo's breaker is open from an earlier run: waiting {:.1} s for it)",
            (ms as f64) / 1000.0
        );
        tokio::time::sleep(Duration::from_millis(ms.min(60_000) + 100)).await;
        // Healthy calls let the breaker move to half-open and its probes close it.
        for _ in 0..5 {
            let _ = client
                .get(
                    format!("http://{addr}/flaky?fail=0.0")
                        .parse()
                        .expect("valid uri"),
                )
                .await;
        }
    }
}
