//! The tower-5xx demo: one axum app showing every capability of the crate.
//!
//! ```sh
//! cargo run --example demo   # serves on 127.0.0.1:3000
//! DEMO_ADDR=127.0.0.1:8080 cargo run --example demo
//! DEMO_DRAIN_DELAY_MS=1000 DEMO_GRACE_MS=2000 cargo run --example demo   # SIGTERM drain timings
//! DEMO_SERVE=axum cargo run --example demo   # drain with axum::serve (or hyper-util) instead of Lifecycle::serve
//! DEMO_REDIS_URL=redis://127.0.0.1:6379/ DEMO_ADMIN_TOKEN=s3cret cargo run --example demo   # fleet-wide maintenance
//! DEMO_REDIS_URL=redis://127.0.0.1:6379/ cargo run --example demo   # /limited's quota in Redis
//! ```
//!
//! It speaks HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on the same port. The routes are listed
//! in the README and printed at start-up.

mod errors;
mod flaky;
mod lifecycle;
mod limited;
mod maintenance;
mod metrics;
mod proxy;
mod shed;

use std::net::SocketAddr;

use axum::Router;
use tower_5xx::catch::CatchLayer;

/// The whole demo app. Each capability contributes its routes from its own module.
fn app(limited: Router) -> Router {
    let app = Router::new()
        .merge(errors::routes())
        .merge(limited)
        .merge(flaky::routes())
        .merge(proxy::routes())
        .merge(shed::routes());
    // Maintenance mode wraps the app; its admin router sits beside it.
    maintenance::wrap(app)
        // Outermost: a panic anywhere below becomes a 500 with an error id.
        .layer(CatchLayer::new())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_target(false).init();

    let addr: SocketAddr = match std::env::var("DEMO_ADDR") {
        Ok(addr) => addr.parse().unwrap_or_else(|e| {
            eprintln!(
                "DEMO_ADDR={addr:?} is not a socket address ({e}); expected e.g. 127.0.0.1:3000"
            );
            std::process::exit(2)
        }),
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 3000)),
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e} (set DEMO_ADDR to use another address)");
            std::process::exit(1)
        }
    };
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let lifecycle = lifecycle::from_env();
    let server = lifecycle::Server::from_env().unwrap_or_else(|message| {
        eprintln!("{message}");
        std::process::exit(2)
    });
    if let Err(message) = maintenance::check_env() {
        eprintln!("{message}");
        std::process::exit(2)
    }
    let prometheus = metrics::install();
    let (limited, store) = match limited::routes().await {
        Ok(routes) => routes,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    };

    println!("tower-5xx demo listening on http://{addr} (HTTP/1.1 and h2c)");
    println!();
    errors::print_help(addr);
    proxy::print_help(addr);
    println!();
    shed::print_help(addr);
    limited::print_help(addr, &store);
    println!();
    flaky::print_help(addr);
    println!();
    maintenance::print_help(addr);
    println!();
    lifecycle::print_help(addr, &lifecycle);
    println!();
    metrics::print_help(addr);
    println!();
    println!("Every generated 5xx carries Cache-Control: no-store and an x-error-id that is also logged.");
    println!("Ask for JSON with -H 'Accept: application/problem+json'; add --http2-prior-knowledge for HTTP/2.");

    // The probes and /metrics sit beside the app, outside its layers: never shed, in
    // maintenance or drained.
    let app = app(limited)
        .layer(lifecycle.drain_layer())
        .merge(lifecycle::routes(&lifecycle))
        .merge(metrics::routes(prometheus));
    lifecycle::print_phases(&lifecycle);
    // Serves until SIGTERM or Ctrl-C, then drains.
    lifecycle::serve(server, lifecycle, listener, app).await;
}
