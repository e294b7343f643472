//! Overload harness: a real server on 127.0.0.1, driven at 4x the load it can handle.
//!
//! ```sh
//! cargo run --release --example overload            # about 40 s
//! ```
//!
//! The service behind the server has a fixed capacity: a pool of `WORKERS` workers, each request
//! holding one for `WORK` (a database connection pool, a CPU-bound thread pool). Requests that
//! find every worker busy wait for one, first come first served, without bound: that is what an
//! unprotected service does.
//!
//! 1. Capacity: `2 x WORKERS` closed-loop clients, no layer; the throughput is the capacity.
//! 2. Unloaded latency: one client at a time; its p99 is the reference.
//! 3. For each protection, an open-loop load of 4x the capacity for `RUN` (the first `WARM_UP`
//!    is not counted: the adaptive limit starts 4x too high and needs it to converge). Clients
//!    give up after `CLIENT_TIMEOUT`.
//!
//! Goodput is the number of 200 responses per second (within the client timeout) as a share of
//! the capacity; "p99 ok" is the 99th percentile latency of those 200s.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::{service_fn, BoxError, Service, ServiceBuilder};
use tower_5xx::{
    catch::CatchLayer,
    shed::{Gradient, ShedLayer},
};

const WORKERS: usize = 8;
const WORK: Duration = Duration::from_millis(40);
const LOAD_FACTOR: f64 = 4.0;
const RUN: Duration = Duration::from_secs(5);
const WARM_UP: Duration = Duration::from_secs(2);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

type Client_ = Client<HttpConnector, Full<Bytes>>;

/// The protected service: `WORKERS` workers, `WORK` per request, an unbounded FIFO wait.
fn backend() -> impl Service<
    Request<hyper::body::Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let pool = Arc::new(Semaphore::new(WORKERS));
    service_fn(move |_req: Request<hyper::body::Incoming>| {
        let pool = pool.clone();
        async move {
            let _worker = pool.acquire().await.expect("never closed");
            tokio::time::sleep(WORK).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    })
}

async fn serve<S, B>(svc: S) -> SocketAddr
where
    S: Service<Request<hyper::body::Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok(Duration),
    Shed(Duration),
    Other,
    TimedOut,
}

async fn one(client: &Client_, addr: SocketAddr) -> Outcome {
    let start = Instant::now();
    let req = Request::get(format!("http://{addr}/"))
        .body(Full::default())
        .unwrap();
    let result = tokio::time::timeout(CLIENT_TIMEOUT, async {
        let res = client.request(req).await?;
        let status = res.status();
        res.into_body().collect().await?;
        Ok::<_, BoxError>(status)
    })
    .await;
    match result {
        Ok(Ok(StatusCode::OK)) => Outcome::Ok(start.elapsed()),
        Ok(Ok(StatusCode::SERVICE_UNAVAILABLE)) => Outcome::Shed(start.elapsed()),
        Ok(_) => Outcome::Other,
        Err(_) => Outcome::TimedOut,
    }
}

fn h2_client() -> Client_ {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

/// Closed loop, `clients` at a time, for `duration`: completed requests per second.
async fn closed_loop(addr: SocketAddr, clients: usize, duration: Duration) -> (f64, Vec<Duration>) {
    let client = h2_client();
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while start.elapsed() < duration {
                    if let Outcome::Ok(d) = one(&client, addr).await {
                        lat.push(d);
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all.len() as f64 / start.elapsed().as_secs_f64(), all)
}

struct Row {
    name: &'static str,
    goodput: f64,
    p99_ok: Duration,
    shed: f64,
    timed_out: f64,
    p99_shed: Duration,
}

/// Open loop at `rate` requests per second for `RUN`; counts what was issued after `WARM_UP`.
async fn open_loop(name: &'static str, addr: SocketAddr, rate: f64, capacity: f64) -> Row {
    let client = h2_client();
    // One warm connection before the clock starts.
    let _ = one(&client, addr).await;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while start.elapsed() < RUN {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            sent += 1;
            let client = client.clone();
            let counted = start.elapsed() >= WARM_UP;
            tasks.push(tokio::spawn(
                async move { (counted, one(&client, addr).await) },
            ));
        }
    }
    let (mut ok, mut shed_lat, mut n, mut shed, mut timed_out) = (Vec::new(), Vec::new(), 0, 0, 0);
    for t in tasks {
        let (counted, outcome) = t.await.unwrap();
        if !counted {
            continue;
        }
        n += 1;
        match outcome {
            Outcome::Ok(d) => ok.push(d),
            Outcome::Shed(d) => {
                shed += 1;
                shed_lat.push(d);
            }
            Outcome::TimedOut => timed_out += 1,
            Outcome::Other => {}
        }
    }
    let measured = (RUN - WARM_UP).as_secs_f64();
    Row {
        name,
        goodput: ok.len() as f64 / measured / capacity,
        p99_ok: p99(ok),
        shed: f64::from(shed) / f64::from(n.max(1)),
        timed_out: f64::from(timed_out) / f64::from(n.max(1)),
        p99_shed: p99(shed_lat),
    }
}

#[tokio::main]
async fn main() {
    let bare = serve(backend()).await;
    let (capacity, _) = closed_loop(bare, 2 * WORKERS, Duration::from_secs(2)).await;
    let (_, unloaded) = closed_loop(serve(backend()).await, 1, Duration::from_secs(2)).await;
    let unloaded_p99 = p99(unloaded);
    let rate = capacity * LOAD_FACTOR;
    println!(
        "backend: {WORKERS} workers x {WORK:?}; capacity {capacity:.0} req/s; unloaded p99 {unloaded_p99:.1?}"
    );
    println!("offered load: {rate:.0} req/s (x{LOAD_FACTOR}) for {RUN:?}, first {WARM_UP:?} not counted; client timeout {CLIENT_TIMEOUT:?}");
    println!();

    let mut rows = Vec::new();
    rows.push(open_loop("no shedding", serve(backend()).await, rate, capacity).await);

    let tower_stack = ServiceBuilder::new()
        .layer(CatchLayer::new())
        .load_shed()
        .concurrency_limit(WORKERS)
        .service(backend());
    rows.push(
        open_loop(
            "tower ConcurrencyLimit + LoadShed",
            serve(tower_stack).await,
            rate,
            capacity,
        )
        .await,
    );

    // A short queue with a short wait: enough to keep every worker busy between arrivals,
    // too short to add much latency.
    let fixed = ShedLayer::builder()
        .limit(WORKERS)
        .max_queue(WORKERS / 2)
        .max_wait(WORK / 4)
        .build()
        .unwrap();
    rows.push(
        open_loop(
            "ShedLayer fixed (limit 8, queue 4, max wait 10 ms)",
            serve(ServiceBuilder::new().layer(fixed).service(backend())).await,
            rate,
            capacity,
        )
        .await,
    );

    // Starts 4x too high and must find the workers' count from latency alone.
    let adaptive = ShedLayer::builder()
        .limit(
            Gradient::new()
                .initial(32)
                .floor(1)
                .ceiling(64)
                .tolerance(1.1),
        )
        .max_queue(WORKERS / 2)
        .max_wait(WORK / 4)
        .build()
        .unwrap();
    let handle = adaptive.handle();
    rows.push(
        open_loop(
            "ShedLayer gradient (initial 32, tolerance 1.1, queue 4, max wait 10 ms)",
            serve(ServiceBuilder::new().layer(adaptive).service(backend())).await,
            rate,
            capacity,
        )
        .await,
    );

    println!("| protection | goodput (share of capacity) | p99 of 200s | p99 / unloaded p99 | shed (503) | client timeouts | p99 of 503s |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1}% | {:.1?} | {:.2}x | {:.1}% | {:.1}% | {:.1?} |",
            r.name,
            r.goodput * 100.0,
            r.p99_ok,
            r.p99_ok.as_secs_f64() / unloaded_p99.as_secs_f64(),
            r.shed * 100.0,
            r.timed_out * 100.0,
            r.p99_shed,
        );
    }
    println!();
    println!(
        "gradient limit at the end: {} (workers: {WORKERS})",
        handle.limit()
    );
}
