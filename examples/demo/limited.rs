//! Per-client rate limiting: `GET /limited`, 5 requests per 10 s per client IP, advertised as
//! `RateLimit-Policy: "demo";q=5;w=10`. With `DEMO_REDIS_URL=redis://...` the quota lives in
//! Redis, so demos on several ports share it.

use std::{net::SocketAddr, time::Duration};

use axum::{routing::get, Router};
use tower_5xx::rate_limit::{Policy, RateLimitLayer};

/// The quota: 5 requests per 10 s per client.
fn policy() -> Policy {
    Policy::new("demo", 5, Duration::from_secs(10))
}

/// Where the quota lives, for the start-up banner.
pub(crate) enum Store {
    Memory,
    #[allow(dead_code)] // Only read when the `redis` feature is on.
    Redis(String),
}

/// The `/limited` route behind its rate limit. Connects to Redis first when `DEMO_REDIS_URL`
/// is set, so the first request is already decided there; an error if it cannot.
pub(crate) async fn routes() -> Result<(Router, Store), String> {
    let builder = RateLimitLayer::builder().policy(policy());
    let (builder, store) = match std::env::var("DEMO_REDIS_URL") {
        Ok(url) if !url.is_empty() => with_redis(builder, url).await?,
        _ => (builder, Store::Memory),
    };
    let layer = builder.build().expect("a valid rate limit");
    let router = Router::new()
        .route("/limited", get(|| async { "within quota\n" }))
        .route_layer(layer);
    Ok((router, store))
}

type Builder = tower_5xx::rate_limit::RateLimitBuilder;

#[cfg(feature = "redis")]
async fn with_redis(builder: Builder, url: String) -> Result<(Builder, Store), String> {
    match tower_5xx::rate_limit::RedisStore::connect(&url).await {
        Ok(store) => Ok((
            builder.redis(store.prefix("tower-5xx-demo:")),
            Store::Redis(url),
        )),
        Err(e) => Err(format!(
            "DEMO_REDIS_URL={url:?}: cannot connect to Redis: {e}"
        )),
    }
}

#[cfg(not(feature = "redis"))]
async fn with_redis(_builder: Builder, url: String) -> Result<(Builder, Store), String> {
    Err(format!(
        "DEMO_REDIS_URL={url:?} is set but the demo was built without the `redis` feature"
    ))
}

pub(crate) fn print_help(addr: SocketAddr, store: &Store) {
    let place = match store {
        Store::Memory => "in this process".to_owned(),
        Store::Redis(url) => format!("in Redis at {url}, shared with every demo using it"),
    };
    println!("  curl -i http://{addr}/limited   # 5 per 10 s per client ({place}): RateLimit fields, then 429 + Retry-After");
    println!("  for i in $(seq 7); do curl -s -o /dev/null -w '%{{http_code}} ' http://{addr}/limited; done; echo");
}
