//! A fleet of retrying clients against a server that fails for a while and then recovers, in
//! virtual time (tokio's paused clock: a 70-second scenario runs in well under a second, and
//! every run prints the same numbers).
//!
//! - **Fleet**: 200 clients, each sending a `GET` on average every 100 ms (Poisson arrivals, a
//!   random phase per client): 2,000 requests per second in all. Every client is the crate's
//!   real [`RetryLayer`] + [`RetryPolicy`] (4 attempts at most, backoff 100 ms doubling up to
//!   10 s, the jitter mode under test), over an in-process server: no sockets.
//! - **Server**: answers after 10 ms; admits at most 300 requests per 100 ms slot (3,000 per
//!   second, 1.5x the normal load) and sheds the rest with `503` + `Retry-After: 1`. From
//!   t = 10 s to t = 40 s it is down: every request gets either `503` + `Retry-After: 2`
//!   (a known outage), `500` without `Retry-After` (an unexpected failure), or `503` +
//!   `Retry-After` set to the time left until the outage ends (planned maintenance), with or
//!   without up to 1 s of server-side jitter, by scenario.
//! - **Budgets**: none; one [`RetryBudget`] (ratio 0.1, floor 10) shared by the fleet; or one
//!   such budget per client.
//!
//! Reported per scenario:
//!
//! - *amplification*: requests the server received during the outage / original requests sent
//!   during the outage;
//! - *over the whole run*: requests the server received / original requests, from start to end
//!   (retries told to wait past the outage land after it);
//! - *peak rps*: the most requests the server received in one second (aligned buckets) from the
//!   end of the outage to the end of the run, and that over the normal load;
//! - *time to recover*: from the end of the outage to the end of the last 100 ms bucket in which
//!   fewer than 99 % of the original requests that completed got a 2xx;
//! - *failed*: original requests whose final answer was not a 2xx.
//!
//! Run with `cargo run --release --example retry_simulation` (32 scenarios, about 20 s).
//!
//! For each kind of outage it also writes an SVG plot, `retry-<outage>.svg`, of the requests the
//! server received each second and of the original requests answered 2xx each second (by the
//! second they completed in, retries included), for the fleet without a budget, with the shared
//! budget, with a budget per client and with the client's `Retry-After` spread, against the
//! original requests sent (the load without any retry). They go to `$RETRY_SIM_OUT` (default
//! `docs`).

use std::{
    convert::Infallible,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use plotters::style::{
    colors::{BLACK, BLUE, GREEN, MAGENTA, RED},
    RGBColor,
};
use tokio::time::Instant;
use tower::{Layer, Service};
use tower_5xx::{
    retry::{Backoff, Jitter, ReplayBody, RetryBudget, RetryLayer, RetryPolicy},
    ErrorResponse, Reason, ResponseBody, RetryAfter,
};

const CLIENTS: u64 = 200;
const MEAN_INTERVAL: Duration = Duration::from_millis(100);
const OUTAGE_START: Duration = Duration::from_secs(10);
const OUTAGE_END: Duration = Duration::from_secs(40);
/// No new requests after this; the run ends when the last one completes.
const HORIZON: Duration = Duration::from_secs(70);
const LATENCY: Duration = Duration::from_millis(10);
const SLOT: Duration = Duration::from_millis(100);
const SLOTS_PER_SEC: usize = 10;
/// Requests the server admits per slot (3,000 per second).
const CAPACITY_PER_SLOT: u32 = 300;
const SEED: u64 = 0x5eed_6006;

#[path = "common/plot.rs"]
mod plot;

use plot::{Legend, Panel, Series};

/// What the server answers during the outage.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// `503` + `Retry-After: <secs>`.
    Unavailable { retry_after_secs: u64 },
    /// `500`, no `Retry-After`.
    Internal,
    /// `503` + `Retry-After`: the time left until the outage ends (as a server in planned
    /// maintenance knows it), plus a random extra of up to `jitter` (what the crate's
    /// maintenance and breaker layers add).
    UntilEnd { jitter: Duration },
}

impl Outage {
    fn describe(self) -> String {
        match self {
            Outage::Unavailable { retry_after_secs } => {
                format!("outage answers 503 + Retry-After: {retry_after_secs}")
            }
            Outage::Internal => "outage answers 500 (no Retry-After)".to_owned(),
            Outage::UntilEnd { jitter } if jitter.is_zero() => {
                "outage answers 503 + Retry-After: time left until its end".to_owned()
            }
            Outage::UntilEnd { jitter } => format!(
                "outage answers 503 + Retry-After: time left until its end + up to {} s of \
                 server-side jitter",
                jitter.as_secs_f64()
            ),
        }
    }

    /// The plot's file name.
    fn file_name(self) -> &'static str {
        match self {
            Outage::Unavailable { .. } => "retry-503-retry-after-2.svg",
            Outage::Internal => "retry-500.svg",
            Outage::UntilEnd { jitter } if jitter.is_zero() => "retry-503-until-end.svg",
            Outage::UntilEnd { .. } => "retry-503-until-end-jittered.svg",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    None,
    Shared,
    PerClient,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    budget: Budget,
    jitter: Jitter,
    /// The client's `retry_after_jitter`: spread above the server's `Retry-After`.
    spread: Duration,
}

impl Scenario {
    fn describe(self) -> String {
        let budget = match self.budget {
            Budget::None => "no budget",
            Budget::Shared => "shared budget (0.1, floor 10)",
            Budget::PerClient => "budget per client (0.1, floor 10 each)",
        };
        if self.spread.is_zero() {
            format!("{budget}, jitter {:?}", self.jitter)
        } else {
            format!(
                "{budget}, jitter {:?}, Retry-After spread {} s",
                self.jitter,
                self.spread.as_secs()
            )
        }
    }
}

/// Counters per 100 ms slot of virtual time.
#[derive(Debug, Default)]
struct Stats {
    /// Requests (attempts) the server received.
    arrivals: Vec<u32>,
    /// Requests the server admitted (for its capacity).
    admitted: Vec<u32>,
    /// Original requests sent, by start.
    originals: Vec<u32>,
    /// Original requests completed, by end, and how many of them got a 2xx.
    completed: Vec<u32>,
    succeeded: Vec<u32>,
}

fn bump(v: &mut Vec<u32>, slot: usize) {
    if v.len() <= slot {
        v.resize(slot + 1, 0);
    }
    v[slot] += 1;
}

fn at(v: &[u32], slot: usize) -> u32 {
    v.get(slot).copied().unwrap_or(0)
}

fn slot_of(elapsed: Duration) -> usize {
    (elapsed.as_millis() / SLOT.as_millis()) as usize
}

type Body = ReplayBody<Full<Bytes>>;
type Reply = Response<ResponseBody<Full<Bytes>>>;

/// The in-process server.
#[derive(Debug, Clone)]
struct Server {
    t0: Instant,
    outage: Outage,
    stats: Arc<Mutex<Stats>>,
}

impl Service<Request<Body>> for Server {
    type Response = Reply;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Body>) -> Self::Future {
        let now = self.t0.elapsed();
        let slot = slot_of(now);
        let reply = {
            let mut stats = self.stats.lock().unwrap();
            bump(&mut stats.arrivals, slot);
            if (OUTAGE_START..OUTAGE_END).contains(&now) {
                match self.outage {
                    Outage::Unavailable { retry_after_secs } => {
                        ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::Maintenance)
                            .retry_after(RetryAfter::Delay(Duration::from_secs(retry_after_secs)))
                            .into_response()
                    }
                    Outage::Internal => {
                        ErrorResponse::new(StatusCode::INTERNAL_SERVER_ERROR, Reason::Internal)
                            .into_response()
                    }
                    Outage::UntilEnd { jitter } => {
                        ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::Maintenance)
                            .retry_after(RetryAfter::Delay(OUTAGE_END - now).with_jitter(jitter))
                            .into_response()
                    }
                }
            } else if at(&stats.admitted, slot) >= CAPACITY_PER_SLOT {
                ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::Shed)
                    .retry_after(RetryAfter::Delay(Duration::from_secs(1)))
                    .into_response()
            } else {
                bump(&mut stats.admitted, slot);
                Response::new(ResponseBody::new(Full::new(Bytes::from_static(b"ok"))))
            }
        };
        Box::pin(async move {
            tokio::time::sleep(LATENCY).await;
            Ok(reply)
        })
    }
}

/// What one scenario measured.
#[derive(Debug)]
struct Outcome {
    baseline_rps: f64,
    amplification: f64,
    overall: f64,
    peak_rps: u32,
    recover: Duration,
    failed: u32,
    originals: u32,
    /// Per second: requests the server received, original requests sent, and original
    /// requests that completed with a 2xx in that second.
    load: Vec<f64>,
    sent: Vec<f64>,
    succeeded: Vec<f64>,
}

fn policy(jitter: Jitter, spread: Duration, budget: Option<Arc<RetryBudget>>) -> RetryPolicy {
    let backoff = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(10))
        .expect("valid backoff")
        .jitter(jitter);
    let builder = RetryPolicy::builder()
        .max_attempts(4)
        .backoff(backoff)
        .retry_after_jitter(spread);
    match budget {
        Some(budget) => builder.budget(budget),
        None => builder,
    }
    .build()
    .expect("valid policy")
}

fn new_budget() -> Arc<RetryBudget> {
    Arc::new(RetryBudget::new(0.1, 10).expect("valid budget"))
}

async fn run(outage: Outage, scenario: Scenario) -> Outcome {
    let t0 = Instant::now();
    let stats = Arc::new(Mutex::new(Stats::default()));
    let server = Server {
        t0,
        outage,
        stats: stats.clone(),
    };
    let shared = new_budget();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let budget = match scenario.budget {
            Budget::None => None,
            Budget::Shared => Some(shared.clone()),
            Budget::PerClient => Some(new_budget()),
        };
        let svc =
            RetryLayer::new(policy(scenario.jitter, scenario.spread, budget)).layer(server.clone());
        let (stats, in_flight) = (stats.clone(), in_flight.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(SEED ^ client.wrapping_mul(0x9e37_79b9));
            let mut next = t0 + MEAN_INTERVAL.mul_f64(rng.f64());
            while next - t0 < HORIZON {
                tokio::time::sleep_until(next).await;
                let (svc, stats, in_flight) = (svc.clone(), stats.clone(), in_flight.clone());
                in_flight.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let start = t0.elapsed();
                    bump(&mut stats.lock().unwrap().originals, slot_of(start));
                    let result = svc.oneshot(Request::new(Full::default())).await;
                    let ok = result.is_ok_and(|res| res.status().is_success());
                    let end = slot_of(t0.elapsed());
                    let mut stats = stats.lock().unwrap();
                    bump(&mut stats.completed, end);
                    if ok {
                        bump(&mut stats.succeeded, end);
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
                // Exponential inter-arrival times: a Poisson process per client.
                next += MEAN_INTERVAL.mul_f64(-(1.0 - rng.f64()).ln());
            }
        }));
    }
    for client in clients {
        client.await.expect("client task");
    }
    while in_flight.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(SLOT).await;
    }

    let stats = stats.lock().unwrap();
    let (start, end) = (slot_of(OUTAGE_START), slot_of(OUTAGE_END));
    let sum = |v: &[u32], range: std::ops::Range<usize>| -> u32 { range.map(|s| at(v, s)).sum() };
    let baseline_rps = f64::from(sum(&stats.originals, 0..start)) / OUTAGE_START.as_secs_f64();
    let amplification =
        f64::from(sum(&stats.arrivals, start..end)) / f64::from(sum(&stats.originals, start..end));
    let overall = f64::from(stats.arrivals.iter().sum::<u32>())
        / f64::from(stats.originals.iter().sum::<u32>());
    let last = stats.arrivals.len().max(stats.completed.len());
    let peak_rps = (end..last)
        .step_by(SLOTS_PER_SEC)
        .map(|s| sum(&stats.arrivals, s..s + SLOTS_PER_SEC))
        .max()
        .unwrap_or(0);
    let bad_slot = (end..last).rev().find(|&s| {
        let done = at(&stats.completed, s);
        done > 0 && f64::from(at(&stats.succeeded, s)) < 0.99 * f64::from(done)
    });
    let recover = bad_slot.map_or(Duration::ZERO, |s| SLOT * (s + 1 - end) as u32);
    let originals: u32 = stats.originals.iter().sum();
    let failed = originals - stats.succeeded.iter().sum::<u32>();
    let seconds = (0..last).step_by(SLOTS_PER_SEC);
    let per_second = |v: &[u32]| -> Vec<f64> {
        seconds
            .clone()
            .map(|s| f64::from(sum(v, s..s + SLOTS_PER_SEC)))
            .collect()
    };
    Outcome {
        baseline_rps,
        amplification,
        overall,
        peak_rps,
        recover,
        failed,
        originals,
        load: per_second(&stats.arrivals),
        sent: per_second(&stats.originals),
        succeeded: per_second(&stats.succeeded),
    }
}

fn simulate(outage: Outage, scenario: Scenario) -> Outcome {
    // The policy's jitter and the error ids draw from fastrand's thread-local generator; the
    // runtime runs every task on this thread, so seeding it makes the run deterministic.
    fastrand::seed(SEED);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(run(outage, scenario))
}

/// The scenarios drawn in the plots, and their colors.
const PLOTTED: [(usize, RGBColor); 4] = [(0, RED), (3, BLUE), (6, MAGENTA), (7, GREEN)];

fn plot_outage(
    out: &Path,
    outage: Outage,
    scenarios: &[Scenario],
    outcomes: &[Outcome],
) -> Result<(), Box<dyn std::error::Error>> {
    let lines = |value: fn(&Outcome) -> &Vec<f64>| -> Vec<Series> {
        PLOTTED
            .iter()
            .map(|&(i, color)| {
                Series::every(&scenarios[i].describe(), color, 1.0, value(&outcomes[i]))
            })
            .collect()
    };
    // The original requests alone: the load without retries, and the success of a server
    // that never failed.
    let sent = || Series::every("original requests sent", BLACK, 1.0, &outcomes[0].sent);
    let mut load = lines(|o| &o.load);
    load.push(sent());
    let mut succeeded = lines(|o| &o.succeeded);
    succeeded.push(sent());
    plot::write(
        &out.join(outage.file_name()),
        &format!(
            "{} (outage {} s to {} s)",
            outage.describe(),
            OUTAGE_START.as_secs(),
            OUTAGE_END.as_secs()
        ),
        "seconds (virtual time)",
        (900, 720),
        1,
        &[
            Panel::new(
                "Load on the server (attempts received)",
                "requests / s",
                load,
            )
            .legend(Legend::UpperLeft)
            .y_room(1.6),
            Panel::new(
                "Original requests answered 2xx (after their retries), by completion",
                "requests / s",
                succeeded,
            )
            .legend(Legend::LowerRight),
        ],
    )
}

fn main() -> std::process::ExitCode {
    let out = PathBuf::from(std::env::var("RETRY_SIM_OUT").unwrap_or_else(|_| "docs".to_owned()));
    let mut failed = false;
    let scenarios = [
        (Budget::None, Jitter::Full),
        (Budget::None, Jitter::None),
        (Budget::Shared, Jitter::None),
        (Budget::Shared, Jitter::Full),
        (Budget::Shared, Jitter::Equal),
        (Budget::Shared, Jitter::Decorrelated),
        (Budget::PerClient, Jitter::Full),
    ]
    .map(|(budget, jitter)| Scenario {
        budget,
        jitter,
        spread: Duration::ZERO,
    });
    // One more: the shared budget with the client spreading its retries over 2 s above the
    // server's Retry-After.
    let spread = Scenario {
        budget: Budget::Shared,
        jitter: Jitter::Full,
        spread: Duration::from_secs(2),
    };
    let scenarios: Vec<Scenario> = scenarios.into_iter().chain([spread]).collect();
    let outages = [
        Outage::Unavailable {
            retry_after_secs: 2,
        },
        Outage::Internal,
        Outage::UntilEnd {
            jitter: Duration::ZERO,
        },
        Outage::UntilEnd {
            jitter: Duration::from_secs(1),
        },
    ];

    println!(
        "{CLIENTS} clients, ~{:.0} requests/s in all (Poisson), server capacity {} requests/s, \
         latency {} ms, outage from {} s to {} s, run to {} s; 4 attempts at most, backoff \
         100 ms x2 up to 10 s.\n",
        CLIENTS as f64 / MEAN_INTERVAL.as_secs_f64(),
        u64::from(CAPACITY_PER_SLOT) * SLOTS_PER_SEC as u64,
        LATENCY.as_millis(),
        OUTAGE_START.as_secs(),
        OUTAGE_END.as_secs(),
        HORIZON.as_secs(),
    );
    for outage in outages {
        println!("#### {}\n", outage.describe());
        println!(
            "| clients | amplification during the outage | over the whole run | peak rps \
             after the outage (x normal) | time to recover | failed originals |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        let mut outcomes = Vec::new();
        for &scenario in &scenarios {
            let o = simulate(outage, scenario);
            println!(
                "| {} | {:.3}x | {:.3}x | {} ({:.2}x) | {:.1} s | {} of {} ({:.1} %) |",
                scenario.describe(),
                o.amplification,
                o.overall,
                o.peak_rps,
                f64::from(o.peak_rps) / o.baseline_rps,
                o.recover.as_secs_f64(),
                o.failed,
                o.originals,
                100.0 * f64::from(o.failed) / f64::from(o.originals),
            );
            outcomes.push(o);
        }
        println!();
        let written = std::fs::create_dir_all(&out)
            .map_err(Into::into)
            .and_then(|()| plot_outage(&out, outage, &scenarios, &outcomes));
        if let Err(e) = written {
            println!(
                "cannot write {}: {e}",
                out.join(outage.file_name()).display()
            );
            failed = true;
        }
    }
    println!("plots written to {}", out.display());
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
