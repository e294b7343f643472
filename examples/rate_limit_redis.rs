//! The Redis store under load: decisions per second and the latency it adds, at 64 concurrent
//! requests over loopback, against the in-memory store in the same run.
//!
//! ```sh
//! cargo run --release --example rate_limit_redis                  # starts its own redis-server
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --release --example rate_limit_redis
//! RATE_LIMIT_BENCH_SECS=10 cargo run --release --example rate_limit_redis
//! ```
//!
//! 64 tasks on a multi-threaded tokio runtime each send requests one after another for a few
//! seconds through `RateLimitLayer` around a service that answers at once (no HTTP: the figure
//! is the limiter's). Every request is within quota. It prints requests per second and the
//! latency percentiles for the in-memory store and for Redis, how many of the Redis run's
//! decisions Redis made (`INFO commandstats`: the rest fell back to memory after the 5 ms
//! timeout), and the p99 Redis adds.

use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use tower::{service_fn, Layer, ServiceExt};
use tower_5xx::rate_limit::{Policy, RateLimitLayer, RedisStore, MAX_QUOTA};

const CONCURRENCY: usize = 64;

struct Run {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn percentile(&self, p: f64) -> Duration {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }

    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<8} {:>9.0} requests/s   p50 {:>8.1?}   p99 {:>8.1?}   p99.9 {:>8.1?}   max {:>8.1?}",
            self.per_second(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.percentile(0.999),
            self.latencies.last().copied().unwrap_or_default(),
        );
    }
}

async fn load(layer: RateLimitLayer, duration: Duration) -> Run {
    let svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Bytes::from_static(b"ok")))
    }));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for task in 0..CONCURRENCY {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            // Each task is one client.
            let client = SocketAddr::from(([10, 0, (task / 256) as u8, (task % 256) as u8], 1));
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let mut req = Request::new(());
                req.extensions_mut().insert(client);
                let sent = Instant::now();
                let res = svc.clone().oneshot(req).await.unwrap();
                latencies.push(sent.elapsed());
                assert_eq!(res.status(), 200);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Run {
        requests: latencies.len(),
        elapsed,
        latencies,
    }
}

fn layer() -> tower_5xx::rate_limit::RateLimitBuilder {
    RateLimitLayer::builder()
        .policy(Policy::new("bench", 1_000_000, Duration::from_secs(1)).burst(MAX_QUOTA))
}

/// A redis-server of our own on a free loopback port, killed on drop.
struct OwnRedis(Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (String, OwnRedis) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--loglevel", "warning"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server), or set REDIS_URL");
    (format!("redis://127.0.0.1:{port}/"), OwnRedis(child))
}

async fn script_calls(url: &str) -> u64 {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    // Successful runs of the script: `calls` less `failed_calls` (a first EVALSHA on a
    // connection fails with NOSCRIPT and is sent again).
    let field = |cmd: &str, name: &str| {
        info.lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split(&format!("{name}=")).nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ["evalsha", "eval"]
        .iter()
        .map(|cmd| field(cmd, ",calls").max(field(cmd, ":calls")) - field(cmd, "failed_calls"))
        .sum()
}

#[tokio::main]
async fn main() {
    let secs = std::env::var("RATE_LIMIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let duration = Duration::from_secs(secs);
    let (url, _own) = match std::env::var("REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let (url, own) = start_redis();
            // Wait until it accepts connections.
            let deadline = Instant::now() + Duration::from_secs(10);
            while RedisStore::connect(&url).await.is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (url, Some(own))
        }
    };
    println!("{CONCURRENCY} concurrent requests for {secs} s each run, {url}");

    let memory = load(layer().build().unwrap(), duration).await;
    memory.print("memory");

    let before = script_calls(&url).await;
    let store = RedisStore::connect(&url).await.expect("connect to Redis");
    let redis = load(layer().redis(store).build().unwrap(), duration).await;
    let in_redis = script_calls(&url).await - before;
    redis.print("redis");
    println!(
        "redis: {in_redis} of {} decisions made in Redis ({:.1}%; the rest fell back to memory after the 5 ms timeout)",
        redis.requests,
        100.0 * in_redis as f64 / redis.requests.max(1) as f64
    );
    println!(
        "redis adds {:.1?} at p50 and {:.1?} at p99",
        redis.percentile(0.5).saturating_sub(memory.percentile(0.5)),
        redis
            .percentile(0.99)
            .saturating_sub(memory.percentile(0.99)),
    );
}
