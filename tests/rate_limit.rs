//! `RateLimitLayer` in real axum servers on 127.0.0.1, with hyper-util's client; the Redis store
//! against a real `redis-server` per test (tests/common/redis.rs).
#![cfg(feature = "rate-limit")]

mod common;

use std::{net::SocketAddr, time::Duration};

use axum::{routing::get, Router};
use common::{client, h2_client, request, send, serve_axum, Reply, TestClient};
use http::StatusCode;
use tower_5xx::rate_limit::{Policy, RateLimitLayer};

fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/healthz", get(|| async { "ok" }))
        .layer(layer)
}

async fn fetch(client: &TestClient, addr: SocketAddr, accept: Option<&str>) -> Reply {
    send(client, request(addr, "/", accept)).await.unwrap()
}

/// A `RateLimit` or `RateLimit-Policy` value, read back: `(name, [(param, value)])` per item.
fn items(value: &str) -> Vec<(String, Vec<(String, u64)>)> {
    value
        .split(", ")
        .map(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap();
            assert!(name.starts_with('"') && name.ends_with('"'), "{item}");
            let params = parts
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_owned(), v.parse().unwrap())
                })
                .collect();
            (name.trim_matches('"').to_owned(), params)
        })
        .collect()
}

/// Checks that a response is an admitted one or a well-formed 429.
fn assert_well_formed(reply: &Reply) {
    match reply.status {
        StatusCode::OK => assert_eq!(reply.text(), "hello"),
        StatusCode::TOO_MANY_REQUESTS => {
            let ra: u64 = reply.header("retry-after").unwrap().parse().unwrap();
            assert!(ra >= 1);
            assert!(reply.header("x-error-id").is_some());
        }
        other => panic!("unexpected {other}: {}", reply.text()),
    }
    let status = items(reply.header("ratelimit").expect("RateLimit"));
    let policies = items(reply.header("ratelimit-policy").expect("RateLimit-Policy"));
    for (name, params) in &status {
        assert!(policies.iter().any(|(p, _)| p == name), "{name} not listed");
        assert!(params.iter().any(|(k, _)| k == "r") && params.iter().any(|(k, _)| k == "t"));
    }
}

#[tokio::test]
async fn over_quota_a_real_server_answers_429_with_the_ietf_fields() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("burst", 3, Duration::from_secs(60)))
        .exempt_path("/healthz")
        .build()
        .unwrap();
    let addr = serve_axum(app(layer)).await;
    let (h1, h2) = (client(), h2_client());
    for (i, c) in [&h1, &h2, &h1].into_iter().enumerate() {
        let reply = fetch(c, addr, None).await;
        assert_eq!(reply.status, 200);
        assert_well_formed(&reply);
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some(r#""burst";q=3;w=60"#)
        );
        assert_eq!(
            items(reply.header("ratelimit").unwrap())[0].1[0],
            ("r".to_owned(), 2 - i as u64)
        );
    }
    for c in [&h1, &h2] {
        let reply = fetch(c, addr, Some("application/problem+json")).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_well_formed(&reply);
        assert_eq!(reply.header("ratelimit"), Some(r#""burst";r=0;t=60"#));
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            json["type"],
            "https://iana.org/assignments/http-problem-types#quota-exceeded"
        );
        assert_eq!(json["violated-policies"], serde_json::json!(["burst"]));
    }
    // Health checks are exempt.
    let reply = send(&h1, request(addr, "/healthz", None)).await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.header("ratelimit").is_none());
}

#[cfg(feature = "redis")]
mod redis_store {
    use std::{
        sync::{
            atomic::{AtomicU64, Ordering},
            Arc, Mutex,
        },
        time::Instant,
    };

    use super::*;
    use common::redis::RedisServer;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };
    use tower_5xx::rate_limit::RedisStore;

    async fn store(server: &RedisServer) -> RedisStore {
        RedisStore::connect(&server.url()).await.unwrap()
    }

    /// Sends requests (each admitted: decided in memory meanwhile, fail-open) until one is
    /// decided in `server`, where `key` appears; at most 10 s.
    async fn until_decided_in(server: &RedisServer, c: &TestClient, addr: SocketAddr, key: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut requests = 0;
        loop {
            assert_eq!(fetch(c, addr, None).await.status, 200);
            requests += 1;
            if server.command(&["EXISTS", key]).starts_with(":1") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not decided in that Redis after 10 s and {requests} requests"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn serve(store: RedisStore, quota: u64) -> SocketAddr {
        let layer = RateLimitLayer::builder()
            .policy(Policy::new("fleet", quota, Duration::from_secs(600)))
            .redis(store)
            .build()
            .unwrap();
        serve_axum(app(layer)).await
    }

    /// A failover behind one address: the primary the store is connected to is demoted (it
    /// answers every script with `READONLY`) and the address now leads to the new primary. The
    /// connection is not broken, so the connection manager never reconnects; the store must
    /// replace it (an error about the node, unlike one about the data, counts toward that).
    #[tokio::test]
    async fn a_demoted_primary_answering_readonly_is_replaced() {
        let old = RedisServer::start();
        let new = RedisServer::start();
        let target = Arc::new(Mutex::new(old.addr()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = listener.local_addr().unwrap();
        let t = target.clone();
        tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                let to = *t.lock().unwrap();
                tokio::spawn(async move {
                    let mut server = TcpStream::connect(to).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        let store = RedisStore::connect(&format!("redis://{relay_addr}/"))
            .await
            .unwrap()
            .timeout(Duration::from_secs(1));
        let addr = serve(store, 100_000).await;
        let c = client();
        let key = "tower-5xx:rl:{ip:127.0.0.1}:fleet";
        assert_eq!(fetch(&c, addr, None).await.status, 200);
        assert!(old.command(&["EXISTS", key]).starts_with(":1"));

        // The failover: the old primary follows the new one, the address moves.
        let new_port = new.addr().port().to_string();
        // (Both diskless, so the sync leaves no dump.rdb in the working directory.)
        new.command(&["CONFIG", "SET", "repl-diskless-sync", "yes"]);
        new.command(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);
        old.command(&["CONFIG", "SET", "repl-diskless-load", "swapdb"]);
        old.command(&["REPLICAOF", "127.0.0.1", &new_port]);
        *target.lock().unwrap() = new.addr();
        until_decided_in(&new, &c, addr, key).await;
    }

    /// An error Redis answers (here one client's key holds a hash, so the script fails with
    /// WRONGTYPE for that client only) proves the connection alive: the store keeps it, rather
    /// than replacing a healthy connection every third request.
    #[tokio::test]
    async fn error_replies_keep_the_connection() {
        let redis = RedisServer::start();
        let store = store(&redis).await.timeout(Duration::from_secs(2));
        let addr = serve(store, 100_000).await;
        let c = client();
        redis.command(&["HSET", "tower-5xx:rl:{ip:127.0.0.1}:fleet", "f", "v"]);
        let connections = |redis: &RedisServer| -> u64 {
            let info = redis.command(&["INFO", "stats"]);
            info.lines()
                .find_map(|l| l.strip_prefix("total_connections_received:"))
                .expect("INFO stats has total_connections_received")
                .trim()
                .parse()
                .unwrap()
        };
        let before = connections(&redis);
        for _ in 0..30 {
            // Decided in memory (fail-open): the reply was an error.
            assert_eq!(fetch(&c, addr, None).await.status, 200);
        }
        // A replacement would be under way by now (it starts at the third failure); give it
        // the time a local connect takes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // One more: the INFO command's own connection.
        assert_eq!(
            connections(&redis),
            before + 1,
            "the store made new connections"
        );
    }

    /// A key's theoretical arrival time as the Redis store keeps it, in nanoseconds: the value
    /// is microseconds since the epoch, with the nanoseconds as a fraction (`GET`'s raw reply).
    fn tat_nanos(reply: &str) -> u64 {
        let value = reply.lines().nth(1).expect("a bulk string");
        let (micros, nanos) = value.split_once('.').unwrap_or((value, "0"));
        micros.parse::<u64>().unwrap() * 1_000 + nanos.parse::<u64>().unwrap()
    }

    /// The Redis store decides in the in-memory store's nanoseconds. 7 requests a minute is an
    /// interval of 8,571,428,571 ns, no whole number of microseconds: the same requests get
    /// the same answers and fields from both stores, and each request Redis admits moves the
    /// key's theoretical arrival time by exactly that interval, as the in-memory store's does.
    /// (Rounded to 8,571,428 µs, Redis ran 571 ns a request ahead of the in-memory limiter:
    /// an extra request now and then at this rate, up to twice the quota at a rate near one
    /// request per microsecond.) The requests' answers alone cannot show the drift here:
    /// Redis's clock (`TIME`) cannot be paused, and each request takes longer than the drift.
    #[tokio::test]
    async fn redis_keeps_the_in_memory_stores_nanoseconds() {
        let redis = RedisServer::start();
        let policy = || Policy::new("fine", 7, Duration::from_secs(60)).burst(3);
        let in_memory = RateLimitLayer::builder().policy(policy()).build().unwrap();
        let in_redis = RateLimitLayer::builder()
            .policy(policy())
            .redis(store(&redis).await.timeout(Duration::from_secs(2)))
            .build()
            .unwrap();
        let (in_memory, in_redis) = (
            serve_axum(app(in_memory)).await,
            serve_axum(app(in_redis)).await,
        );
        let c = client();
        let key = "tower-5xx:rl:{ip:127.0.0.1}:fine";
        let mut statuses = Vec::new();
        let mut tats = Vec::new();
        for _ in 0..4 {
            let (m, r) = (
                fetch(&c, in_memory, None).await,
                fetch(&c, in_redis, None).await,
            );
            assert_eq!(m.status, r.status);
            assert_eq!(m.header("ratelimit"), r.header("ratelimit"));
            statuses.push(r.status.as_u16());
            tats.push(tat_nanos(&redis.command(&["GET", key])));
        }
        assert_eq!(statuses, [200, 200, 200, 429]);
        let steps: Vec<u64> = tats.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(steps, [8_571_428_571, 8_571_428_571, 0], "{tats:?}");
    }

    /// The longest policy accepted (a debt of 500 years: far past what Lua's doubles hold in
    /// nanoseconds, and past `i64` nanoseconds in the script's reply) gets the in-memory
    /// store's fields from Redis too.
    #[tokio::test]
    async fn redis_decides_the_longest_policies_as_the_in_memory_store_does() {
        let redis = RedisServer::start();
        let year = Duration::from_secs(366 * 24 * 60 * 60);
        let policy = || Policy::new("long", 1, year).burst(500);
        let in_memory = RateLimitLayer::builder().policy(policy()).build().unwrap();
        let in_redis = RateLimitLayer::builder()
            .policy(policy())
            .redis(store(&redis).await.timeout(Duration::from_secs(2)))
            .build()
            .unwrap();
        let (in_memory, in_redis) = (
            serve_axum(app(in_memory)).await,
            serve_axum(app(in_redis)).await,
        );
        let c = client();
        for expected in [r#""long";r=499;t=31622400"#, r#""long";r=498;t=63244800"#] {
            let (m, r) = (
                fetch(&c, in_memory, None).await,
                fetch(&c, in_redis, None).await,
            );
            assert_eq!((m.status, r.status), (StatusCode::OK, StatusCode::OK));
            assert_eq!(m.header("ratelimit"), Some(expected));
            assert_eq!(r.header("ratelimit"), Some(expected));
        }
    }

    #[tokio::test]
    async fn two_servers_sharing_one_redis_admit_the_quota_between_them() {
        let redis = RedisServer::start();
        // A generous timeout: this test is about exactness, and a debug build on a busy machine
        // can take more than the default 5 ms (past it, decisions are local, not exact).
        let a = serve(store(&redis).await.timeout(Duration::from_secs(2)), 10).await;
        let b = serve(store(&redis).await.timeout(Duration::from_secs(2)), 10).await;
        let c = client();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let (c, addr) = (c.clone(), if i % 2 == 0 { a } else { b });
            tasks.push(tokio::spawn(async move { fetch(&c, addr, None).await }));
        }
        let mut admitted = [0, 0];
        for (i, t) in tasks.into_iter().enumerate() {
            let reply = t.await.unwrap();
            assert_well_formed(&reply);
            if reply.status == 200 {
                admitted[i % 2] += 1;
            }
        }
        assert_eq!(admitted[0] + admitted[1], 10, "{admitted:?}");
        // The state is in Redis (one key: one client, one policy), not in either process.
        assert_eq!(redis.command(&["DBSIZE"]).trim(), ":1");
    }

    #[tokio::test]
    async fn redis_killed_mid_traffic_then_restarted() {
        let mut redis = RedisServer::start();
        let store = store(&redis).await.timeout(Duration::from_millis(50));
        let addr = serve(store, 100_000).await;
        let c = client();
        let key = "tower-5xx:rl:{ip:127.0.0.1}:fleet";
        let mut slowest = Duration::ZERO;
        let mut step = |reply: &Reply, took: Duration| {
            assert_well_formed(reply);
            slowest = slowest.max(took);
        };
        for _ in 0..50 {
            let start = Instant::now();
            let reply = fetch(&c, addr, None).await;
            step(&reply, start.elapsed());
            assert_eq!(reply.status, 200);
        }
        assert!(redis.command(&["EXISTS", key]).starts_with(":1"));

        redis.kill();
        // Every request still gets exactly one answer: decided in memory (fail-open).
        for _ in 0..100 {
            let start = Instant::now();
            let reply = fetch(&c, addr, None).await;
            step(&reply, start.elapsed());
            assert_eq!(reply.status, 200);
        }

        redis.restart();
        // Decisions go back to Redis once the connection manager has reconnected.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let start = Instant::now();
            let reply = fetch(&c, addr, None).await;
            step(&reply, start.elapsed());
            if redis.command(&["EXISTS", key]).starts_with(":1") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no decision in Redis after restart"
            );
        }
        // And they are Redis's: exhaust the quota there, and the server refuses.
        redis.command(&["SET", key, "99999999999999999", "EX", "600"]);
        let reply = fetch(&c, addr, None).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_well_formed(&reply);
        // Never a stall: the slowest request stayed near the 50 ms timeout, far from the
        // seconds a blocked connection would take.
        assert!(slowest < Duration::from_millis(1000), "{slowest:?}");
    }

    #[tokio::test]
    async fn a_paused_redis_costs_at_most_the_timeout() {
        let redis = RedisServer::start();
        let store = store(&redis).await.timeout(Duration::from_millis(20));
        let addr = serve(store, 100).await;
        let c = client();
        assert_eq!(fetch(&c, addr, None).await.status, 200);
        // Redis answers nobody for 3 s.
        redis.command(&["CLIENT", "PAUSE", "3000", "ALL"]);
        let start = Instant::now();
        let reply = fetch(&c, addr, None).await;
        let took = start.elapsed();
        assert_eq!(reply.status, 200);
        assert_well_formed(&reply);
        assert!(took < Duration::from_millis(1000), "{took:?}");
    }

    #[tokio::test]
    async fn fail_closed_answers_503_with_retry_after_never_500() {
        let mut redis = RedisServer::start();
        let store = store(&redis)
            .await
            .timeout(Duration::from_millis(50))
            .fail_closed(Duration::from_secs(5));
        let addr = serve(store, 100).await;
        let c = client();
        assert_eq!(fetch(&c, addr, None).await.status, 200);
        redis.kill();
        for _ in 0..5 {
            let reply = fetch(&c, addr, Some("application/json")).await;
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            let ra: u64 = reply.header("retry-after").unwrap().parse().unwrap();
            assert!((5..=6).contains(&ra), "{ra}");
            let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(json["status"], 503);
        }
    }

    /// A failover or a partition: the connection to Redis goes silent (no FIN, no RST, no
    /// answer) while Redis is reachable on a new connection. The connection manager never sees
    /// an error (the store's timeout gives up first), so the store replaces it.
    #[tokio::test]
    async fn a_silent_connection_is_replaced_and_decisions_go_back_to_redis() {
        let redis = RedisServer::start();
        let relay = Relay::start(redis.addr()).await;
        let store = RedisStore::connect(&format!("redis://{}/", relay.addr))
            .await
            .unwrap()
            .timeout(Duration::from_millis(50));
        let addr = serve(store, 100_000).await;
        let c = client();
        let key = "tower-5xx:rl:{ip:127.0.0.1}:fleet";
        assert_eq!(fetch(&c, addr, None).await.status, 200);
        assert!(redis.command(&["EXISTS", key]).starts_with(":1"));

        relay.freeze();
        redis.command(&["DEL", key]);
        until_decided_in(&redis, &c, addr, key).await;
    }

    /// A TCP relay to Redis. [`freeze`](Self::freeze) makes every connection it relays silent
    /// (kept open, no byte relayed either way); connections made after it are relayed.
    struct Relay {
        addr: SocketAddr,
        epoch: Arc<AtomicU64>,
    }

    impl Relay {
        async fn start(to: SocketAddr) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let epoch = Arc::new(AtomicU64::new(0));
            let frozen: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
            let e = epoch.clone();
            tokio::spawn(async move {
                loop {
                    let (client, _) = listener.accept().await.unwrap();
                    let server = TcpStream::connect(to).await.unwrap();
                    let (e, frozen) = (e.clone(), frozen.clone());
                    tokio::spawn(relay(client, server, e, frozen));
                }
            });
            Self { addr, epoch }
        }

        fn freeze(&self) {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Relays bytes both ways until the relay's epoch changes, then holds both streams open.
    async fn relay(
        mut client: TcpStream,
        mut server: TcpStream,
        epoch: Arc<AtomicU64>,
        frozen: Arc<Mutex<Vec<TcpStream>>>,
    ) {
        let mine = epoch.load(Ordering::SeqCst);
        let live = || epoch.load(Ordering::SeqCst) == mine;
        let (mut up, mut down) = ([0u8; 4096], [0u8; 4096]);
        while live() {
            tokio::select! {
                n = client.read(&mut up) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) if live() => _ = server.write_all(&up[..n]).await,
                    Ok(_) => {}
                },
                n = server.read(&mut down) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) if live() => _ = client.write_all(&down[..n]).await,
                    Ok(_) => {}
                },
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        frozen.lock().unwrap().extend([client, server]);
    }
}

/// The demo binary with `DEMO_REDIS_URL`, on a free port; killed on drop.
#[cfg(feature = "redis")]
struct DemoProcess {
    child: std::process::Child,
    addr: SocketAddr,
}

#[cfg(feature = "redis")]
impl DemoProcess {
    fn spawn(redis_url: &str) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(common::demo_binary())
            .env("DEMO_ADDR", "127.0.0.1:0")
            .env("DEMO_REDIS_URL", redis_url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the demo");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout
            .read_line(&mut first)
            .expect("the demo prints its address");
        // Keep reading: a closed pipe would make the demo's next `println!` fail.
        std::thread::spawn(move || for _ in stdout.lines() {});
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        Self { child, addr }
    }
}

#[cfg(feature = "redis")]
impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn two_demos_on_one_redis_share_limited() {
    let redis = common::redis::RedisServer::start();
    let (a, b) = (
        DemoProcess::spawn(&redis.url()),
        DemoProcess::spawn(&redis.url()),
    );
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        let reply = send(&c, request(addr, "/limited", None)).await.unwrap();
        assert_eq!(reply.header("ratelimit-policy"), Some(r#""demo";q=5;w=10"#));
        assert_well_formed_limited(&reply);
        statuses.push(reply.status.as_u16());
    }
    // 5 per 10 s per client between the two demos: the quota lives in Redis.
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert!(redis
        .command(&["EXISTS", "tower-5xx-demo:{ip:127.0.0.1}:demo"])
        .starts_with(":1"));
}

#[cfg(feature = "redis")]
fn assert_well_formed_limited(reply: &Reply) {
    assert!(
        matches!(reply.status.as_u16(), 200 | 429),
        "{}",
        reply.status
    );
    let status = items(reply.header("ratelimit").expect("RateLimit"));
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].0, "demo");
}
