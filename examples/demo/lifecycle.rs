//! Readiness, liveness and the SIGTERM drain: `/readyz`, `/livez`, and the phases printed as
//! they happen. `DEMO_DRAIN_DELAY_MS` and `DEMO_GRACE_MS` set the two durations, `DEMO_SERVE`
//! the server that drains: `lifecycle` (default, `Lifecycle::serve`), `axum`
//! (`axum::serve(..).with_graceful_shutdown(..)`) or `hyper-util` (hyper-util's
//! `GracefulShutdown`).

use std::{net::SocketAddr, pin::pin, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_5xx::lifecycle::Lifecycle;

fn millis(var: &str, default: u64) -> Duration {
    let ms = match std::env::var(var) {
        Ok(v) => v.trim().parse().unwrap_or_else(|e| {
            eprintln!("{var}={v:?} is not a number of milliseconds ({e}); using {default}");
            default
        }),
        Err(_) => default,
    };
    Duration::from_millis(ms)
}

/// The lifecycle of the demo process, its durations from the environment.
pub(crate) fn from_env() -> Lifecycle {
    Lifecycle::new(
        millis("DEMO_DRAIN_DELAY_MS", 3_000),
        millis("DEMO_GRACE_MS", 5_000),
    )
}

/// The server that runs the app and its drain, from `DEMO_SERVE`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Server {
    /// `Lifecycle::serve`: idle HTTP/1.1 connections stay open through the close.
    Lifecycle,
    /// `axum::serve(..).with_graceful_shutdown(..)`, the few lines of the crate's docs.
    Axum,
    /// hyper-util's `GracefulShutdown` around its auto (HTTP/1.1 + h2c) connections.
    HyperUtil,
}

impl Server {
    /// `DEMO_SERVE`: `lifecycle` (default), `axum` or `hyper-util`.
    pub(crate) fn from_env() -> Result<Server, String> {
        match std::env::var("DEMO_SERVE").as_deref() {
            Err(_) | Ok("lifecycle") => Ok(Server::Lifecycle),
            Ok("axum") => Ok(Server::Axum),
            Ok("hyper-util") => Ok(Server::HyperUtil),
            Ok(other) => Err(format!(
                "DEMO_SERVE={other:?}: expected lifecycle, axum or hyper-util"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Server::Lifecycle => "Lifecycle::serve",
            Server::Axum => "axum::serve",
            Server::HyperUtil => "hyper-util GracefulShutdown",
        }
    }
}

/// Serves `app` on `listener` with `server` until SIGTERM or Ctrl-C, drains, and prints how
/// it ended (`exit: ...`).
pub(crate) async fn serve(
    server: Server,
    lifecycle: Lifecycle,
    listener: TcpListener,
    app: Router,
) {
    println!("serving with {}", server.name());
    match server {
        // `with_state(())` turns the handlers into routes once, as `axum::serve` does. The
        // serve loop answers the closing phase's late requests itself (the drain layer on the
        // app's routes is there for the other two servers), except on these paths.
        Server::Lifecycle => match lifecycle
            .serve(listener, app.with_state(()))
            .exempt(["/readyz", "/livez", "/metrics"])
            .await
        {
            Ok(()) => println!("exit: every connection closed"),
            Err(expired) => println!("exit: {expired}"),
        },
        Server::Axum => {
            // The lines of the crate's docs (with the peer address for /limited's quota).
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let server =
                axum::serve(listener, app).with_graceful_shutdown(lifecycle.clone().on_signal());
            match lifecycle.finish(server).await {
                Ok(Ok(())) => println!("exit: every connection closed"),
                Ok(Err(e)) => println!("exit: server error: {e}"),
                Err(expired) => println!("exit: {expired}"),
            }
        }
        Server::HyperUtil => match lifecycle
            .finish(hyper_util_server(&lifecycle, listener, app))
            .await
        {
            Ok(()) => println!("exit: every connection closed"),
            Err(expired) => println!("exit: {expired}"),
        },
    }
}

/// hyper-util's accept loop with `GracefulShutdown`: when the lifecycle's shutdown future
/// resolves (the close), the listener is dropped and every connection is told to shut down
/// gracefully, as `axum::serve` does.
async fn hyper_util_server(lifecycle: &Lifecycle, listener: TcpListener, app: Router) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(lifecycle.clone().on_signal());
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // The peer address, where /limited's rate limiter looks for it.
        let app = app.clone().map_request(move |mut req: http::Request<_>| {
            req.extensions_mut().insert(peer);
            req
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(app))
            .into_owned();
        tokio::spawn(graceful.watch(conn));
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The two probes. Merged beside the app, outside its maintenance, shed and catch layers.
pub(crate) fn routes(lifecycle: &Lifecycle) -> Router {
    Router::new()
        .route_service("/readyz", lifecycle.readiness())
        .route_service("/livez", lifecycle.liveness())
}

/// Prints each phase of the shutdown as it begins.
pub(crate) fn print_phases(lifecycle: &Lifecycle) {
    let lifecycle = lifecycle.clone();
    tokio::spawn(async move {
        lifecycle.draining().await;
        println!(
            "draining: /readyz answers 503 now; every request is still served for {} ms",
            lifecycle.drain_delay().as_millis()
        );
        lifecycle.closed().await;
        println!(
            "closing: listener closed; requests on open connections get 503 + Retry-After + Connection: close; in-flight requests have {} ms",
            lifecycle.grace().as_millis()
        );
    });
}

pub(crate) fn print_help(addr: SocketAddr, lifecycle: &Lifecycle) {
    println!(
        "Readiness and drain (SIGTERM or Ctrl-C drains; DEMO_DRAIN_DELAY_MS={}, DEMO_GRACE_MS={}):",
        lifecycle.drain_delay().as_millis(),
        lifecycle.grace().as_millis()
    );
    println!("  curl -i http://{addr}/readyz   # 200 ready; 503 + Retry-After once draining");
    println!("  curl -i http://{addr}/livez    # 200 until the process exits");
    println!("  kill -TERM {}                  # drain: readiness 503, serve on, close, finish in-flight, exit 0; again a second or more later: at once", std::process::id());
}
