//! Soak harness: a real server (catch + maintenance + shed + breaker) on 127.0.0.1 under 10x
//! overload, with panics, failures, maintenance flips and breaker trips, over HTTP/1.1 and h2c.
//!
//! ```sh
//! cargo run --release --example soak                 # 60 s
//! SOAK_SECS=600 cargo run --release --example soak   # longer
//! scripts/soak.sh                                    # the same, from anywhere in the repo
//! ```
//!
//! The service has a capacity of `LIMIT / WORK` = 200 requests a second (the shed limit of 4
//! concurrent requests, 20 ms of work each); clients offer 10 times that, open loop, half over
//! HTTP/1.1 and half over h2c (prior knowledge). Of the requests that run, 10 % panic and 10 %
//! fail with an error (both answered 500 by `catch`). Every 7 s the dependency is down for 1 s
//! (every call fails), which trips the breaker (503); every 5 s maintenance is on for 1 s (503).
//! `/healthz` bypasses maintenance and the shed limit, and is probed every 10 ms.
//!
//! Every request is checked: exactly one answer (no connection error, no timeout), a status in
//! {200, 500, 503}, `Cache-Control: no-store` on every generated answer, a `Retry-After` of at
//! least 1 s on every 503, a body read to its end. Each second, the process's RSS (server and
//! clients share the process) and the `/healthz` p99 are sampled. Results go to
//! `$SOAK_OUT/soak.csv` and three SVG plots (`soak-status.svg`, `soak-rss.svg`,
//! `soak-healthz.svg`; `SOAK_OUT` defaults to `docs`). The exit code is non-zero if any request
//! broke a rule.

use std::{
    fmt::Write as _,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use plotters::style::{
    colors::{BLACK, BLUE, GREEN, MAGENTA, RED},
    RGBColor,
};
use tokio::net::TcpListener;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_5xx::{
    breaker::{BreakerLayer, CircuitBreaker, SlidingWindow},
    catch::CatchLayer,
    maintenance::{MaintenanceLayer, MaintenanceSwitch},
    shed::{ExemptPaths, ShedLayer},
};

#[path = "common/plot.rs"]
mod plot;

use plot::{Panel, Series};

const LIMIT: usize = 4;
const WORK: Duration = Duration::from_millis(20);
const OVERLOAD: u64 = 10;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const PLANNED_PANIC: &str = "soak: planned panic";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The router's future, boxed: this is an example, and it names the error type once.
type Routed = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, SoakError>> + Send>>;

/// The backend's failures (answered 500 by `catch`).
#[derive(Debug)]
struct SoakError(&'static str);

impl std::fmt::Display for SoakError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for SoakError {}

/// Per-second counters.
#[derive(Default)]
struct Second {
    ok: AtomicU64,
    internal: AtomicU64,
    unavailable: AtomicU64,
    broken: AtomicU64,
}

struct Stats {
    seconds: Vec<Second>,
    healthz_ms: Mutex<Vec<Vec<f64>>>,
    rss_kib: Mutex<Vec<u64>>,
    first_broken: Mutex<Option<String>>,
    start: Instant,
}

impl Stats {
    fn second(&self) -> &Second {
        let i = (self.start.elapsed().as_secs() as usize).min(self.seconds.len() - 1);
        &self.seconds[i]
    }

    fn broken(&self, why: String) {
        self.second().broken.fetch_add(1, Ordering::Relaxed);
        self.first_broken.lock().unwrap().get_or_insert(why);
    }
}

/// The protected service: `WORK` per request; 10 % panic, 10 % fail; all fail during a storm.
async fn backend(storm: Arc<AtomicBool>) -> Result<Response<Full<Bytes>>, SoakError> {
    tokio::time::sleep(WORK).await;
    if storm.load(Ordering::Relaxed) {
        return Err(SoakError("soak: the dependency is down"));
    }
    match fastrand::u32(0..10) {
        0 => panic!("{PLANNED_PANIC}"),
        1 => Err(SoakError("soak: planned failure")),
        _ => Ok(Response::new(Full::new(Bytes::from_static(b"ok")))),
    }
}

async fn serve(switch: MaintenanceSwitch, storm: Arc<AtomicBool>) -> SocketAddr {
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Time(Duration::from_secs(1)))
        .minimum_calls(20)
        .failure_rate_threshold(0.6)
        .open_duration(Duration::from_millis(500))
        .build()
        .expect("valid breaker");
    let work = ServiceBuilder::new()
        .layer(BreakerLayer::new(breaker))
        .service(service_fn(move |_req: Request<hyper::body::Incoming>| {
            backend(storm.clone())
        }));
    let router = service_fn(move |req: Request<hyper::body::Incoming>| -> Routed {
        let work = work.clone();
        Box::pin(async move {
            if req.uri().path() == "/healthz" {
                return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
            }
            work.oneshot(req).await
        })
    });
    let shed = ShedLayer::builder()
        .limit(LIMIT)
        .max_queue(16)
        .max_wait(Duration::from_millis(20))
        .build()
        .expect("valid shed settings")
        .priority(ExemptPaths::new(["/healthz"]));
    let app = ServiceBuilder::new()
        .layer(CatchLayer::new())
        .layer(MaintenanceLayer::new(switch).bypass_path("/healthz"))
        .layer(shed)
        .service(router);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// One request, checked against the rules; `Err` says which rule it broke.
async fn one(client: &HttpClient, addr: SocketAddr, path: &str) -> Result<StatusCode, String> {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap();
    let answer = tokio::time::timeout(CLIENT_TIMEOUT, async {
        let res = client
            .request(req)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let (parts, body) = res.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("{} body cut: {e}", parts.status))?;
        Ok::<_, String>((parts, body.to_bytes()))
    })
    .await
    .map_err(|_| format!("no answer within {CLIENT_TIMEOUT:?}"))??;
    let (parts, body) = answer;
    let no_store = parts
        .headers
        .get(header::CACHE_CONTROL)
        .is_some_and(|v| v.as_bytes() == b"no-store");
    match parts.status {
        StatusCode::OK if &body[..] == b"ok" => {}
        StatusCode::INTERNAL_SERVER_ERROR if no_store => {}
        StatusCode::SERVICE_UNAVAILABLE if no_store => {
            let retry_after = parts
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if retry_after.is_none_or(|s| s < 1) {
                return Err(format!("503 with Retry-After {retry_after:?}"));
            }
        }
        status => return Err(format!("{status} (no-store: {no_store}, body {body:?})")),
    }
    Ok(parts.status)
}

fn rss_kib() -> u64 {
    // Resident pages, the second field of statm; pages of 4 KiB on the machines we run on.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

fn p99(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    samples[(samples.len() * 99).div_ceil(100) - 1]
}

fn plot(
    path: &std::path::Path,
    title: &str,
    y_label: &str,
    series: &[(&str, RGBColor, Vec<f64>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let series = series
        .iter()
        .map(|(name, color, values)| Series::every(name, *color, 1.0, values))
        .collect();
    plot::write(
        path,
        title,
        "seconds",
        (800, 360),
        1,
        &[Panel::new(title, y_label, series)],
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
        .max(2);
    let out = PathBuf::from(std::env::var("SOAK_OUT").unwrap_or_else(|_| "docs".to_owned()));
    // Planned panics are counted, not printed; any other panic is.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let planned = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|s| s == PLANNED_PANIC);
        if !planned {
            default_hook(info);
        }
    }));

    let switch = MaintenanceSwitch::new();
    let storm = Arc::new(AtomicBool::new(false));
    let addr = serve(switch.clone(), storm.clone()).await;
    let h1: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let stats = Arc::new(Stats {
        seconds: (0..=secs).map(|_| Second::default()).collect(),
        healthz_ms: Mutex::new(vec![Vec::new(); secs as usize + 1]),
        rss_kib: Mutex::new(Vec::new()),
        first_broken: Mutex::new(None),
        start: Instant::now(),
    });
    let capacity = (LIMIT as u64) * 1000 / WORK.as_millis() as u64;
    let rate = capacity * OVERLOAD;
    println!(
        "soak: {secs} s against http://{addr}: capacity {capacity}/s, offered {rate}/s \
         (HTTP/1.1 and h2c), 20 % panics and failures, maintenance 1 s in 5, a 1 s outage in 7"
    );
    let end = stats.start + Duration::from_secs(secs);

    // Maintenance flips and dependency outages, by the second.
    let chaos = {
        let (switch, storm) = (switch.clone(), storm.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for s in 0.. {
                tick.tick().await;
                if Instant::now() >= end {
                    break;
                }
                if s % 5 == 3 {
                    switch.enable();
                } else {
                    switch.disable();
                }
                storm.store(s % 7 == 5, Ordering::Relaxed);
            }
            switch.disable();
        })
    };

    // Samples: RSS each second.
    let sampler = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while Instant::now() < end {
                tick.tick().await;
                stats.rss_kib.lock().unwrap().push(rss_kib());
            }
        })
    };

    // The /healthz probe, every 10 ms, over its own connection.
    let prober = {
        let stats = stats.clone();
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while Instant::now() < end {
                tick.tick().await;
                let started = Instant::now();
                match one(&client, addr, "/healthz").await {
                    Ok(StatusCode::OK) => {
                        let i = stats.start.elapsed().as_secs() as usize;
                        let ms = started.elapsed().as_secs_f64() * 1e3;
                        if let Some(v) = stats.healthz_ms.lock().unwrap().get_mut(i) {
                            v.push(ms);
                        }
                    }
                    Ok(status) => stats.broken(format!("/healthz answered {status}")),
                    Err(why) => stats.broken(format!("/healthz: {why}")),
                }
            }
        })
    };

    // The open-loop load: `rate` requests a second, alternating HTTP/1.1 and h2c.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let per_tick = rate / 1000;
    let mut sent = 0u64;
    let mut inflight = tokio::task::JoinSet::new();
    while Instant::now() < end {
        tick.tick().await;
        for _ in 0..per_tick {
            let client = if sent % 2 == 0 {
                h1.clone()
            } else {
                h2.clone()
            };
            let stats = stats.clone();
            sent += 1;
            inflight.spawn(async move {
                let result = one(&client, addr, "/work").await;
                let second = stats.second();
                match result {
                    Ok(StatusCode::OK) => second.ok.fetch_add(1, Ordering::Relaxed),
                    Ok(StatusCode::INTERNAL_SERVER_ERROR) => {
                        second.internal.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(_) => second.unavailable.fetch_add(1, Ordering::Relaxed),
                    Err(why) => {
                        stats.broken(why);
                        0
                    }
                };
            });
        }
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    let _ = tokio::join!(chaos, sampler, prober);

    // Report.
    // Every second of the run, and the one in which the last answers arrived.
    let seconds = secs as usize + 1;
    let col = |f: fn(&Second) -> &AtomicU64| -> Vec<f64> {
        stats
            .seconds
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed) as f64)
            .collect()
    };
    let (ok, internal, unavailable, broken) = (
        col(|s| &s.ok),
        col(|s| &s.internal),
        col(|s| &s.unavailable),
        col(|s| &s.broken),
    );
    let healthz: Vec<f64> = stats
        .healthz_ms
        .lock()
        .unwrap()
        .iter()
        .map(|v| p99(&mut v.clone()))
        .collect();
    let rss: Vec<f64> = stats
        .rss_kib
        .lock()
        .unwrap()
        .iter()
        .map(|k| *k as f64 / 1024.0)
        .collect();
    let mut csv =
        String::from("second,ok_200,internal_500,unavailable_503,broken,healthz_p99_ms,rss_mib\n");
    for i in 0..seconds {
        let _ = writeln!(
            csv,
            "{i},{},{},{},{},{:.3},{:.1}",
            ok[i],
            internal[i],
            unavailable[i],
            broken[i],
            healthz[i],
            rss.get(i).copied().unwrap_or(0.0)
        );
    }
    let total = |v: &[f64]| v.iter().sum::<f64>() as u64;
    let mut all_healthz: Vec<f64> = stats.healthz_ms.lock().unwrap().concat();
    let rss_growth = match (rss.get(rss.len() / 4), rss.last()) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    println!(
        "sent {sent}: 200 {}, 500 {}, 503 {}, broken rules {}; /healthz p99 {:.2} ms over {} probes; \
         RSS {:.1} MiB at the end, {rss_growth:+.1} MiB since the first quarter",
        total(&ok),
        total(&internal),
        total(&unavailable),
        total(&broken),
        p99(&mut all_healthz),
        all_healthz.len(),
        rss.last().copied().unwrap_or(0.0),
    );
    let answered = total(&ok) + total(&internal) + total(&unavailable) + total(&broken);
    let mut failed = answered != sent || total(&broken) > 0;
    if answered != sent {
        println!("counted {answered} outcomes for {sent} requests");
    }
    if let Some(why) = stats.first_broken.lock().unwrap().as_ref() {
        println!("first broken rule: {why}");
    }

    if let Err(e) = std::fs::create_dir_all(&out) {
        println!("cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    let written = std::fs::write(out.join("soak.csv"), csv)
        .map_err(Into::into)
        .and_then(|()| {
            plot(
                &out.join("soak-status.svg"),
                "Answers per second at 10x the capacity",
                "answers / s",
                &[
                    ("200", GREEN, ok.clone()),
                    ("500 (panic, error)", RED, internal.clone()),
                    (
                        "503 (shed, maintenance, breaker)",
                        BLUE,
                        unavailable.clone(),
                    ),
                    ("broken rules", BLACK, broken.clone()),
                ],
            )?;
            plot(
                &out.join("soak-rss.svg"),
                "Resident memory (server and clients, one process)",
                "MiB",
                &[("RSS", BLUE, rss.clone())],
            )?;
            plot(
                &out.join("soak-healthz.svg"),
                "/healthz p99 under load, each second",
                "ms",
                &[("p99", MAGENTA, healthz.clone())],
            )
        });
    match written {
        Ok(()) => println!(
            "wrote {}/soak.csv, soak-status.svg, soak-rss.svg, soak-healthz.svg",
            out.display()
        ),
        Err(e) => {
            println!("cannot write the results: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
