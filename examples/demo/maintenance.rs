//! Maintenance mode: 503 + Retry-After while a switch is on, `/healthz` always passes, an admin
//! router to flip the switch (token from `DEMO_ADMIN_TOKEN`), an optional sentinel file
//! (`DEMO_MAINTENANCE_FILE`), and an optional Redis that every demo on it follows
//! (`DEMO_REDIS_URL`): one `PUT` on any of them flips them all.

use std::{net::SocketAddr, time::Duration};

use axum::Router;
use tower_5xx::{
    maintenance::{MaintenanceLayer, MaintenanceSwitch, SentinelFile},
    refuse::RefusalPolicy,
};

const ADMIN_PATH: &str = "/admin/maintenance";

fn admin_token() -> Option<String> {
    std::env::var("DEMO_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
}

/// Wraps the demo app in the maintenance layer and mounts the admin router beside it (outside
/// the layer, so it stays reachable while maintenance is on). Call inside the tokio runtime.
pub(crate) fn wrap(app: Router) -> Router {
    let switch = MaintenanceSwitch::new();
    let layer = MaintenanceLayer::new(switch.clone())
        .bypass_path("/healthz")
        .default_retry_after(Duration::from_secs(60))
        .refusal(
            RefusalPolicy::builder()
                .retry_after_jitter(Duration::from_secs(5))
                .detail("The tower-5xx demo is down for maintenance.")
                .build()
                .expect("valid refusal policy"),
        );
    let app = app.layer(layer);

    // The follower runs as long as the switch; the admin router below writes to Redis.
    #[cfg(feature = "redis")]
    if let Some(source) = redis_source().expect("checked by `check_env` at start-up") {
        drop(switch.follow_redis(source));
    }

    if let Ok(path) = std::env::var("DEMO_MAINTENANCE_FILE") {
        SentinelFile::new(path, switch.clone())
            .interval(Duration::from_secs(1))
            .spawn();
    }

    #[cfg(feature = "axum")]
    if let Some(token) = admin_token() {
        let admin = tower_5xx::maintenance::admin::router(switch, token)
            .expect("the token was checked to be non-empty");
        return app.nest(ADMIN_PATH, admin);
    }
    let _ = switch;
    app
}

/// The Redis source named by `DEMO_REDIS_URL`, if set; an error if it does not parse.
#[cfg(feature = "redis")]
fn redis_source() -> Result<
    Option<tower_5xx::maintenance::redis::RedisSource>,
    tower_5xx::maintenance::error::InvalidRedisConfig,
> {
    redis_url()
        .map(|url| tower_5xx::maintenance::redis::RedisSource::builder(url).build())
        .transpose()
}

/// Checks the maintenance settings from the environment: a message to print if one is wrong.
pub(crate) fn check_env() -> Result<(), String> {
    #[cfg(feature = "redis")]
    if let Err(e) = redis_source() {
        return Err(format!(
            "DEMO_REDIS_URL={:?}: {e}; expected e.g. redis://127.0.0.1:6379/",
            redis_url().unwrap_or_default()
        ));
    }
    Ok(())
}

fn redis_url() -> Option<String> {
    std::env::var("DEMO_REDIS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
}

pub(crate) fn print_help(addr: SocketAddr) {
    println!("Maintenance mode (503 + Retry-After; /healthz bypasses it):");
    let mounted = cfg!(feature = "axum") && admin_token().is_some();
    if mounted {
        let auth = "-H \"Authorization: Bearer $DEMO_ADMIN_TOKEN\"";
        println!("  curl -i {auth} http://{addr}{ADMIN_PATH}   # status");
        println!(
            "  curl -i -X PUT {auth} -d '{{\"retry_after\": 120, \"message\": \"Back soon.\"}}' http://{addr}{ADMIN_PATH}"
        );
        println!(
            "  curl -i http://{addr}/                       # 503, Retry-After: 120..125 (jitter)"
        );
        println!("  curl -i -H 'Accept: text/html' http://{addr}/ # the HTML maintenance page");
        println!("  curl -i http://{addr}/healthz                # 200: bypassed");
        println!("  curl -i -X DELETE {auth} http://{addr}{ADMIN_PATH}   # off again");
        println!(
            "  curl -i -X PUT -H 'Authorization: Bearer wrong' http://{addr}{ADMIN_PATH}   # 401"
        );
    } else if cfg!(feature = "axum") {
        println!(
            "  admin router NOT mounted: set DEMO_ADMIN_TOKEN=<secret> to mount it at {ADMIN_PATH}"
        );
    } else {
        println!("  admin router NOT mounted: build with --features axum and set DEMO_ADMIN_TOKEN");
    }
    match redis_url() {
        Some(url) if cfg!(feature = "redis") => {
            println!(
                "  following Redis at {url} (key tower-5xx:maintenance): the admin router writes there, so a"
            );
            println!(
                "  PUT or DELETE on any demo on this Redis flips them all within a second; while Redis is down,"
            );
            println!("  the last state stays and admin writes answer 503 + Retry-After");
        }
        Some(_) => println!("  DEMO_REDIS_URL is set but ignored: build with --features redis"),
        None => println!(
            "  set DEMO_REDIS_URL=redis://127.0.0.1:6379/ to follow one fleet-wide switch in Redis"
        ),
    }
    match std::env::var("DEMO_MAINTENANCE_FILE") {
        Ok(path) => {
            println!("  touch {path}    # on (within 1 s); `echo 300 > {path}` sets Retry-After: 300");
            println!("  rm {path}       # off, unless the admin router turned it on too");
        }
        Err(_) => println!(
            "  set DEMO_MAINTENANCE_FILE=/tmp/maintenance to switch maintenance with a sentinel file"
        ),
    }
}
