//! Overload harness: a real server on 127.0.0.1, driven at 4x and at 10x the load it can handle.
//!
//! ```sh
//! cargo run --release --example overload                        # about 7 minutes
//! OVERLOAD_OUT=/tmp/overload cargo run --release --example overload
//! ```
//!
//! The service behind the server has a fixed capacity: a pool of `WORKERS` workers, each request
//! holding one for `WORK` (a database connection pool, a CPU-bound thread pool). Requests that
//! find every worker busy wait for one, first come first served, without bound: that is what an
//! unprotected service does.
//!
//! 1. Capacity: `2 x WORKERS` closed-loop clients, no layer; the throughput is the capacity.
//! 2. Unloaded latency: one client at a time; its p99 is the reference.
//! 3. For each offered load (4x and 10x the capacity), an open-loop load for `RUN` against each
//!    protection: none, tower's `ConcurrencyLimit` + `LoadShed`, `ShedLayer` with a fixed limit
//!    of `WORKERS`, with a fixed limit of `WORKERS + 1` (for comparison: what a limit one over
//!    the workers costs), and with a gradient limit. The protections take turns for `ROUNDS`
//!    rounds (the unprotected server runs once), each round on a fresh server, and each row
//!    pools its rounds: a slow spell of the shared machine falls on all of them. The first
//!    `WARM_UP` of each round is not counted (the adaptive limit starts 4x too high and needs it
//!    to converge). Clients give up after `CLIENT_TIMEOUT`.
//!
//! Goodput is the number of 200 responses per second (within the client timeout) as a share of
//! the capacity; "p99 ok" is the 99th percentile latency of those 200s. The targets (issue 11),
//! checked and printed for the fixed (`WORKERS`) and the gradient `ShedLayer` at each load:
//! goodput at least 95 % of the capacity, and a p99 of the 200s no worse than tower's in the
//! same run plus the layer's configured max wait. For the gradient limit, the share of the
//! counted time it spent at each value is printed too.
//!
//! Each run also writes, per load, two SVG plots over a round's time (requests by the time they
//! were sent, in buckets of `BUCKET`, the rounds pooled): `overload-<n>x.svg` (goodput and p99
//! of the 200s, every protection) and `overload-<n>x-status.svg` (200s, 503s and client
//! timeouts per second, one panel per protection). They go to `$OVERLOAD_OUT` (default `docs`).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
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
use plotters::style::{
    colors::{BLACK, BLUE, CYAN, GREEN, MAGENTA, RED},
    RGBColor,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::{service_fn, BoxError, Service, ServiceBuilder};
use tower_5xx::{
    catch::CatchLayer,
    shed::{Gradient, Limit, ShedHandle, ShedLayer},
};

#[path = "common/plot.rs"]
mod plot;

use plot::{Panel, Series};

const WORKERS: usize = 8;
const WORK: Duration = Duration::from_millis(40);
const LOADS: [f64; 2] = [4.0, 10.0];
/// Long enough that the gradient limit, after settling, probes upward once or twice (it waits
/// 5 s after a shrink).
const RUN: Duration = Duration::from_secs(12);
/// Rounds of each protection: the p99s are taken over the rounds pooled.
const ROUNDS: usize = 3;
const WARM_UP: Duration = Duration::from_secs(2);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// The `ShedLayer`s' queue wait: a quarter of the work.
const MAX_WAIT: Duration = Duration::from_millis(10);
/// The plots' time step.
const BUCKET: Duration = Duration::from_millis(100);

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

/// What protects the backend.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Protection {
    None,
    /// tower's `ConcurrencyLimit(WORKERS)` + `LoadShed`, the 503 made by `CatchLayer`.
    Tower,
    /// `ShedLayer` with a fixed limit, a queue of `WORKERS / 2` and `MAX_WAIT` (half of it for
    /// a request that joins a standing queue: the default).
    Fixed(usize),
    /// The same at `WORKERS`, with the whole `MAX_WAIT` in a standing queue too (for
    /// comparison: the standing-queue rule off).
    FixedFullWait,
    /// `ShedLayer` with a gradient limit from 32, the same queue and wait.
    Gradient,
}

impl Protection {
    fn name(self) -> String {
        match self {
            Protection::None => "no shedding".to_owned(),
            Protection::Tower => "tower ConcurrencyLimit(8) + LoadShed".to_owned(),
            Protection::Fixed(limit) if limit == WORKERS => {
                format!("ShedLayer fixed (limit {limit}, queue 4, max wait 10 ms)")
            }
            Protection::Fixed(limit) => format!(
                "ShedLayer fixed at {limit}, one over the workers (for comparison; queue 4, max wait 10 ms)"
            ),
            Protection::FixedFullWait => {
                "ShedLayer fixed 8, standing-queue rule off (for comparison: the whole 10 ms)"
                    .to_owned()
            }
            Protection::Gradient => {
                "ShedLayer gradient (initial 32, tolerance 1.1, queue 4, max wait 10 ms)".to_owned()
            }
        }
    }

    /// The name without the settings, for the plots.
    fn short(self) -> String {
        match self {
            Protection::None => "no shedding".to_owned(),
            Protection::Tower => "tower ConcurrencyLimit + LoadShed".to_owned(),
            Protection::Fixed(limit) => format!("ShedLayer fixed {limit}"),
            Protection::FixedFullWait => "ShedLayer fixed 8, full wait".to_owned(),
            Protection::Gradient => "ShedLayer gradient".to_owned(),
        }
    }

    /// A server with this protection around a new backend, and the shed layer's handle.
    async fn serve(self) -> (SocketAddr, Option<ShedHandle>) {
        let shed_waiting = |limit: Limit, standing: Duration| {
            ShedLayer::builder()
                .limit(limit)
                .max_queue(WORKERS / 2)
                .max_wait(MAX_WAIT)
                .standing_queue_wait(standing)
                .build()
                .unwrap()
        };
        let shed = |limit: Limit| shed_waiting(limit, MAX_WAIT / 2);
        let layer = match self {
            Protection::None => return (serve(backend()).await, None),
            Protection::Tower => {
                let stack = ServiceBuilder::new()
                    .layer(CatchLayer::new())
                    .load_shed()
                    .concurrency_limit(WORKERS)
                    .service(backend());
                return (serve(stack).await, None);
            }
            // A short queue with a short wait: enough to keep every worker busy between
            // arrivals, too short to add much latency.
            Protection::Fixed(limit) => shed(limit.into()),
            Protection::FixedFullWait => shed_waiting(WORKERS.into(), MAX_WAIT),
            // Starts 4x too high and must find the workers' count from latency alone.
            Protection::Gradient => shed(
                Gradient::new()
                    .initial(32)
                    .floor(1)
                    .ceiling(64)
                    .tolerance(1.1)
                    .into(),
            ),
        };
        let handle = layer.handle();
        let addr = serve(ServiceBuilder::new().layer(layer).service(backend())).await;
        (addr, Some(handle))
    }
}

/// One open-loop run: when each request was sent and how it ended, and the time spent at each
/// limit after the warm-up (sampled every millisecond).
struct Trace {
    requests: Vec<(Duration, Outcome)>,
    limits: BTreeMap<usize, u32>,
}

/// Open loop at `rate` requests per second for `RUN`.
async fn open_loop(addr: SocketAddr, rate: f64, handle: Option<ShedHandle>) -> Trace {
    let client = h2_client();
    // One warm connection before the clock starts.
    let _ = one(&client, addr).await;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tasks = Vec::new();
    let mut limits = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    // After a stall, go on at the same pace rather than catch up in a burst (which would count
    // the limit of that moment many times).
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while start.elapsed() < RUN {
        tick.tick().await;
        let now = start.elapsed();
        if let (Some(handle), true) = (&handle, now >= WARM_UP) {
            *limits.entry(handle.limit()).or_default() += 1;
        }
        let due = (now.as_secs_f64() * rate) as u64;
        while sent < due {
            sent += 1;
            let client = client.clone();
            let at = start.elapsed();
            tasks.push(tokio::spawn(async move { (at, one(&client, addr).await) }));
        }
    }
    let mut requests = Vec::with_capacity(tasks.len());
    for t in tasks {
        requests.push(t.await.unwrap());
    }
    Trace { requests, limits }
}

/// One protection at one load, over its rounds: the counted requests' summary and the timeline.
struct Row {
    protection: Protection,
    goodput: f64,
    p99_ok: Duration,
    /// The p99 of the 200s of each round on its own: a miss in one round only is the
    /// machine's noise (a stall of a few hundred ms is 1 % of a round's answers), one in
    /// every round is the protection's.
    p99_rounds: Vec<Duration>,
    shed: f64,
    timed_out: f64,
    p99_shed: Duration,
    timeline: Timeline,
    /// The share of the counted time spent at each limit (gradient only).
    limits: Vec<(usize, f64)>,
}

/// Per `BUCKET` of a run, by the time requests were sent, the rounds pooled.
#[derive(Default)]
struct Timeline {
    /// 200s, as a share of the capacity (%).
    goodput: Vec<f64>,
    /// Answers per second.
    ok: Vec<f64>,
    shed: Vec<f64>,
    timed_out: Vec<f64>,
    /// p99 of the 200s, in ms (0: none).
    p99_ms: Vec<f64>,
}

impl Row {
    /// Pools the rounds: the requests sent after `WARM_UP` are counted.
    fn new(protection: Protection, traces: &[Trace], capacity: f64) -> Self {
        let buckets = RUN.as_millis().div_ceil(BUCKET.as_millis()) as usize;
        let mut by_bucket: Vec<(Vec<Duration>, u32, u32)> = vec![(Vec::new(), 0, 0); buckets];
        let (mut ok, mut shed_lat, mut n, mut shed, mut timed_out) =
            (Vec::new(), Vec::new(), 0, 0, 0);
        let mut limits = BTreeMap::<usize, u32>::new();
        let mut p99_rounds = Vec::new();
        for trace in traces {
            let mut round = Vec::new();
            for (limit, count) in &trace.limits {
                *limits.entry(*limit).or_default() += count;
            }
            for &(at, outcome) in &trace.requests {
                let i = (at.as_millis() / BUCKET.as_millis()) as usize;
                let bucket = &mut by_bucket[i.min(buckets - 1)];
                match outcome {
                    Outcome::Ok(d) => bucket.0.push(d),
                    Outcome::Shed(_) => bucket.1 += 1,
                    Outcome::TimedOut => bucket.2 += 1,
                    Outcome::Other => {}
                }
                if at < WARM_UP {
                    continue;
                }
                n += 1;
                match outcome {
                    Outcome::Ok(d) => {
                        ok.push(d);
                        round.push(d);
                    }
                    Outcome::Shed(d) => {
                        shed += 1;
                        shed_lat.push(d);
                    }
                    Outcome::TimedOut => timed_out += 1,
                    Outcome::Other => {}
                }
            }
            p99_rounds.push(p99(round));
        }
        let rounds = traces.len() as f64;
        let per_sec = 1.0 / BUCKET.as_secs_f64() / rounds;
        let mut timeline = Timeline::default();
        for (lat, shed, timed_out) in by_bucket {
            let ok = lat.len() as f64 * per_sec;
            timeline.goodput.push(ok / capacity * 100.0);
            timeline.ok.push(ok);
            timeline.shed.push(f64::from(shed) * per_sec);
            timeline.timed_out.push(f64::from(timed_out) * per_sec);
            timeline.p99_ms.push(p99(lat).as_secs_f64() * 1e3);
        }
        let samples = f64::from(limits.values().sum::<u32>().max(1));
        let measured = (RUN - WARM_UP).as_secs_f64() * rounds;
        Row {
            protection,
            goodput: ok.len() as f64 / measured / capacity,
            p99_ok: p99(ok),
            p99_rounds,
            shed: f64::from(shed) / f64::from(n.max(1)),
            timed_out: f64::from(timed_out) / f64::from(n.max(1)),
            p99_shed: p99(shed_lat),
            timeline,
            limits: if protection == Protection::Gradient {
                limits
                    .into_iter()
                    .map(|(limit, count)| (limit, f64::from(count) / samples))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// Every protection at `factor` times the capacity. The protections take turns, `ROUNDS`
/// times (no shedding once: it collapses every time), so that a slow spell of the machine
/// falls on all of them.
async fn at_load(factor: f64, capacity: f64) -> Vec<Row> {
    let rate = capacity * factor;
    let protected = [
        Protection::Tower,
        Protection::Fixed(WORKERS),
        Protection::FixedFullWait,
        Protection::Fixed(WORKERS + 1),
        Protection::Gradient,
    ];
    let (addr, _) = Protection::None.serve().await;
    let unprotected = vec![open_loop(addr, rate, None).await];
    let mut traces: Vec<Vec<Trace>> = protected.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (protection, traces) in protected.iter().zip(&mut traces) {
            let (addr, handle) = protection.serve().await;
            traces.push(open_loop(addr, rate, handle).await);
        }
    }
    let mut rows = vec![Row::new(Protection::None, &unprotected, capacity)];
    for (protection, traces) in protected.into_iter().zip(traces) {
        rows.push(Row::new(protection, &traces, capacity));
    }
    rows
}

/// A row's p99 of each round, as "a / b / c".
fn by_round(r: &Row) -> String {
    let rounds: Vec<String> = r.p99_rounds.iter().map(|d| format!("{d:.1?}")).collect();
    rounds.join(" / ")
}

/// Prints the table and the targets; `true` if every target is met.
fn report(factor: f64, rate: f64, rows: &[Row], unloaded_p99: Duration) -> bool {
    println!("#### {factor}x: {rate:.0} req/s offered");
    println!();
    println!("| protection | goodput (share of capacity) | p99 of 200s | p99 / unloaded p99 | shed (503) | client timeouts | p99 of 503s |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.1}% | {:.1?} | {:.2}x | {:.1}% | {:.1}% | {:.1?} |",
            r.protection.name(),
            r.goodput * 100.0,
            r.p99_ok,
            r.p99_ok.as_secs_f64() / unloaded_p99.as_secs_f64(),
            r.shed * 100.0,
            r.timed_out * 100.0,
            r.p99_shed,
        );
    }
    println!();
    let tower = rows[1].p99_ok;
    let bound = tower + MAX_WAIT;
    let mut all_met = true;
    let targets = [Protection::Fixed(WORKERS), Protection::Gradient];
    for r in rows.iter().filter(|r| targets.contains(&r.protection)) {
        let goodput_met = r.goodput >= 0.95;
        let p99_met = r.p99_ok <= bound;
        all_met &= goodput_met && p99_met;
        println!(
            "- {}: goodput {:.1}% {} 95%: {}; p99 {:.1?} {} tower's {:.1?} + max wait {:?} = {:.1?}: {} (by round: {}; tower's {})",
            r.protection.short(),
            r.goodput * 100.0,
            if goodput_met { ">=" } else { "<" },
            if goodput_met { "met" } else { "MISSED" },
            r.p99_ok,
            if p99_met { "<=" } else { ">" },
            tower,
            MAX_WAIT,
            bound,
            if p99_met { "met" } else { "MISSED" },
            by_round(r),
            by_round(&rows[1]),
        );
    }
    for r in rows.iter().filter(|r| !r.limits.is_empty()) {
        let shares: Vec<String> = r
            .limits
            .iter()
            .map(|(limit, share)| format!("{limit}: {:.0}%", share * 100.0))
            .collect();
        println!(
            "- gradient limit over the counted time (workers: {WORKERS}): {}",
            shares.join(", ")
        );
    }
    println!();
    all_met
}

/// One colour per protection (six rows: none, tower, fixed, fixed with the whole wait, fixed at
/// 9, gradient); cycled, so that a row added later is drawn rather than silently dropped.
const COLORS: [RGBColor; 6] = [RED, BLACK, BLUE, CYAN, MAGENTA, RGBColor(0, 150, 0)];

fn plots(out: &Path, factor: f64, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    let step = BUCKET.as_secs_f64();
    let each = |value: fn(&Timeline) -> &Vec<f64>| -> Vec<Series> {
        rows.iter()
            .zip(COLORS.into_iter().cycle())
            .map(|(r, color)| Series::every(&r.protection.short(), color, step, value(&r.timeline)))
            .collect()
    };
    plot::write(
        &out.join(format!("overload-{factor}x.svg")),
        &format!(
            "{factor}x the capacity, open loop, {ROUNDS} rounds pooled (by time sent; the \
             first {WARM_UP:?} not counted in the tables)"
        ),
        "seconds",
        (800, 640),
        1,
        &[
            Panel::new(
                "Goodput: requests answered 200 within 1 s, by time sent",
                "% of capacity",
                each(|t| &t.goodput),
            ),
            Panel::new("p99 of those 200s", "ms", each(|t| &t.p99_ms)).log_y(),
        ],
    )?;
    let panels: Vec<Panel> = rows
        .iter()
        .filter(|r| {
            r.protection != Protection::Fixed(WORKERS + 1)
                && r.protection != Protection::FixedFullWait
        })
        .map(|r| {
            let t = &r.timeline;
            Panel::new(
                &r.protection.short(),
                "answers / s",
                vec![
                    Series::every("200", GREEN, step, &t.ok),
                    Series::every("503", BLUE, step, &t.shed),
                    Series::every("client timeout", RED, step, &t.timed_out),
                ],
            )
        })
        .collect();
    plot::write(
        &out.join(format!("overload-{factor}x-status.svg")),
        &format!("Status mix at {factor}x the capacity, {ROUNDS} rounds pooled (by time sent)"),
        "seconds",
        (1000, 640),
        2,
        &panels,
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let out = PathBuf::from(std::env::var("OVERLOAD_OUT").unwrap_or_else(|_| "docs".to_owned()));
    let bare = serve(backend()).await;
    let (capacity, _) = closed_loop(bare, 2 * WORKERS, Duration::from_secs(2)).await;
    let (_, unloaded) = closed_loop(serve(backend()).await, 1, Duration::from_secs(2)).await;
    let unloaded_p99 = p99(unloaded);
    println!(
        "backend: {WORKERS} workers x {WORK:?}; capacity {capacity:.0} req/s; unloaded p99 {unloaded_p99:.1?}"
    );
    println!(
        "offered load: {LOADS:?} x capacity, open loop, for {RUN:?} each, first {WARM_UP:?} not \
         counted; {ROUNDS} rounds of the protections in turn (no shedding: one); client timeout \
         {CLIENT_TIMEOUT:?}"
    );
    println!();

    let mut all_met = true;
    let (mut written, mut failed) = (Vec::new(), false);
    for factor in LOADS {
        let rows = at_load(factor, capacity).await;
        all_met &= report(factor, capacity * factor, &rows, unloaded_p99);
        let result = std::fs::create_dir_all(&out)
            .map_err(Into::into)
            .and_then(|()| plots(&out, factor, &rows));
        match result {
            Ok(()) => written.push(format!(
                "overload-{factor}x.svg, overload-{factor}x-status.svg"
            )),
            Err(e) => {
                println!("cannot write the plots to {}: {e}", out.display());
                failed = true;
            }
        }
    }
    println!(
        "targets: {}",
        if all_met {
            "all met"
        } else {
            "some MISSED (see above)"
        }
    );
    println!("wrote {}: {}", out.display(), written.join(", "));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
