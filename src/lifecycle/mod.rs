//! Readiness, liveness and a SIGTERM drain that drops nothing: the order a load balancer needs.
//!
//! One [`Lifecycle`] per process moves through three [phases](Phase):
//!
//! | phase | starts | `/readyz` | `/livez` | a request on an open connection | new connections |
//! |---|---|---|---|---|---|
//! | [`Serving`](Phase::Serving) | at start | 200 (unless an [opt-in condition](Readiness) says 503) | 200 | served | accepted |
//! | [`Draining`](Phase::Draining) | SIGTERM / SIGINT, or [`start_drain`](Lifecycle::start_drain) | **503** + `Retry-After`, body "not ready: draining ..." | 200 | **served normally** (load balancers are still noticing) | accepted |
//! | [`Closing`](Phase::Closing) | `drain_delay` later: the shutdown future resolves, the listener closes | 503 | 200 | **503** + `Retry-After` + `Connection: close` (HTTP/1.1; HTTP/2 gets a GOAWAY), in-flight requests finish | refused |
//! | exit | every connection closed, or `grace` after the close | - | - | what is left is closed; the count still running is logged | - |
//!
//! **A second SIGTERM or SIGINT** ("press Ctrl-C again") during the drain or the grace period
//! ends them at once, as if the grace deadline had passed: the listener closes if it is still
//! open, [`Lifecycle::finish`] and [`Lifecycle::serve`] return [`GraceExpired`] with what is left
//! cut (`serve` returns `Ok` if no connection was left open), and the force is logged at warn
//! level. (A single SIGTERM, Kubernetes' way, never forces; nor does a signal less than a
//! second after the last one counted, taken for the same Ctrl-C delivered twice, by the
//! terminal and a wrapper that relays it: see [`Lifecycle::on_signal`]. [`Lifecycle::on_shutdown_requests`] takes
//! a stream of your own in place of the signals.)
//!
//! - [`Lifecycle::readiness`] and [`Lifecycle::liveness`] are the two probes, as tower
//!   services. Mount them **outside** the layers that shed, answer maintenance or drain: in
//!   axum, add them with `route_service` *after* those `.layer(..)` calls (a `Router::layer`
//!   wraps only the routes added before it), or merge them into the outer router.
//! - [`DrainLayer`] ([`Lifecycle::drain_layer`]) answers the late requests of the closing
//!   phase on `axum::serve` or hyper-util ([`Lifecycle::serve`] answers them itself). While
//!   serving, it costs one relaxed atomic load per request.
//! - [`Lifecycle::on_signal`] is the shutdown future: give it to `axum::serve(..)
//!   .with_graceful_shutdown(..)` and wrap the server in [`Lifecycle::finish`] for the grace
//!   deadline (and for a second signal, which ends the grace period at once).
//! - [`Lifecycle::serve`] (feature `lifecycle-serve`) does all of it with its own small serve
//!   loop: it answers the late requests itself (no drain layer needed; the probes' paths are
//!   [exempt](Serve::exempt)), and keeps idle HTTP/1.1 keep-alive connections open until a
//!   request on them gets `Connection: close` or the grace deadline comes, which
//!   `axum::serve` cannot (below). It costs fewer instructions per request than `axum::serve`
//!   with `ConnectInfo`.
//!
//! # Example: axum
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower_5xx::lifecycle::Lifecycle;
//!
//! # async fn run() -> std::io::Result<()> {
//! // On SIGTERM: /readyz 503 at once, serve normally 10 s, stop accepting, then in-flight
//! // requests have 20 s. Kubernetes: terminationGracePeriodSeconds above 30.
//! let lifecycle = Lifecycle::new(Duration::from_secs(10), Duration::from_secs(20));
//!
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(lifecycle.drain_layer())
//!     // After the layers: the probes are never shed, put into maintenance or drained.
//!     .route_service("/readyz", lifecycle.readiness())
//!     .route_service("/livez", lifecycle.liveness());
//!
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! let server = axum::serve(listener, app).with_graceful_shutdown(lifecycle.clone().on_signal());
//! match lifecycle.finish(server).await {
//!     Ok(result) => result?,
//!     Err(expired) => eprintln!("{expired}"), // still exit 0: the shutdown was orderly
//! }
//! # Ok(())
//! # }
//! ```
//!
//! With feature `lifecycle-serve`, the last lines become
//! `lifecycle.serve(listener, app.with_state(())).await` (`with_state(())` turns the handlers
//! into routes once, as `axum::serve` does; a `Router` called directly does it per request),
//! and the drain layer can go: the serve loop answers the late requests itself, except on
//! `/readyz` and `/livez` ([`Serve::exempt`] names other probe paths).
//!
//! ## What `axum::serve` does differently
//!
//! The serving and draining phases are the same. When its shutdown future resolves (the
//! close), `axum::serve` (like hyper-util's `GracefulShutdown`) calls `graceful_shutdown` on
//! every connection:
//!
//! | at the close | `axum::serve`, hyper-util's `GracefulShutdown` | [`Lifecycle::serve`] |
//! |---|---|---|
//! | idle HTTP/1.1 keep-alive connection | **closed at once**, unanswered: the client's next request opens a new connection and is refused | kept open: its next request gets the 503 + `Retry-After` + `Connection: close` |
//! | busy HTTP/1.1 connection | its response finishes (hyper adds `Connection: close`), then it closes | a response that starts after the close says `Connection: close`, and the connection closes after it; one whose head went out before the close (a streamed body) finishes, and the connection then stays open like an idle one |
//! | HTTP/2 connection | GOAWAY; open streams finish; streams the client opens before it sees the GOAWAY get the drain layer's 503 | the same (the serve loop's 503) |
//! | a request written on an HTTP/1.1 connection as it is closed | fails: a reset or an "incomplete message" error | cannot happen before the grace deadline |
//! | a connection the kernel completed but the server had not accepted yet (in the listener's backlog) | reset with the listener, its request perhaps already sent | accepted at the close and answered: 503 + `Retry-After` + `Connection: close` |
//! | requests still running at the grace deadline | keep running: each connection is a task of its own, which dropping the server future does not stop; they end when the runtime shuts down (return from `main`) | dropped with their connections |
//!
//! So with `axum::serve`, on HTTP/1.1 the drain layer's 503 is reached only by a request read
//! in the instant of the close; every later one is refused at connect, and one that races the
//! close may fail without an answer. [`Lifecycle::serve`] leaves idle HTTP/1.1 connections open
//! until the grace deadline, so every request that reaches the server is answered. With
//! `axum::serve`, keep `drain_delay` long enough that load balancers have stopped sending
//! before the close, and use clients that retry requests failed on a reused connection.
//! (`tests/lifecycle.rs` checks each column with the demo, `DEMO_SERVE=axum`, `hyper-util`
//! and `lifecycle`, and real SIGTERMs.)
//!
//! # Kubernetes
//!
//! - **`terminationGracePeriodSeconds` > `drain_delay + grace`** (plus the preStop hook's
//!   sleep, if any): SIGKILL comes that long after the pod starts terminating.
//! - **Readiness probe**: `httpGet: {path: /readyz}`; `drain_delay` should cover
//!   `periodSeconds * failureThreshold` (e.g. 2 s * 2) plus the time endpoints take to
//!   propagate to kube-proxy, ingress controllers and cloud load balancers (several seconds;
//!   10 s is a safe default). **Liveness probe**: `httpGet: {path: /livez}`; it stays 200 while
//!   draining so the kubelet does not restart a pod that is shutting down cleanly.
//! - **Liveness after the close**: the kubelet sends each HTTP probe on a new connection, and
//!   from the close to the exit (at most `grace`) the listener is closed, with every server
//!   here (`axum::serve`, hyper-util, [`Lifecycle::serve`]): `/livez` still answers 200 on
//!   connections already open, but a new connection is refused, so each probe in that time
//!   fails. The listener closes because that is what the close is: a server that kept
//!   accepting for its probes would keep accepting everyone else's requests too, and only a
//!   refused connection makes every client (and load balancer) still sending go elsewhere at
//!   once. **On a pod deletion** (rollout, scale-down, eviction, `kubectl delete`) this is
//!   harmless: the kubelet stops the liveness probe when it starts terminating the pod,
//!   before it sends SIGTERM (older kubelets, at the next probe, counted a success).
//!   **A drain without a pod deletion** ([`Lifecycle::start_drain`] from your code, a SIGTERM
//!   from a supervisor or `kubectl exec .. kill`) is still probed: the kubelet restarts the
//!   container after `failureThreshold` failures in a row, the earliest
//!   `(failureThreshold - 1) * periodSeconds` after the close, so keep that above `grace`
//!   (e.g. `periodSeconds: 10, failureThreshold: 4` for a 20 s grace). Otherwise the container
//!   is restarted mid-drain. The restart's kill is a SIGTERM: after a supervisor's SIGTERM it is
//!   a second signal and ends the drain at once (the requests in flight are cut, see
//!   [`Lifecycle::on_signal`]); after [`start_drain`](Lifecycle::start_drain) it is the first
//!   signal and the drain goes on, until SIGKILL the probe's `terminationGracePeriodSeconds`
//!   (or the pod's) later.
//! - **Without a preStop hook**: SIGTERM arrives when the pod starts terminating, at the same
//!   time as its removal from the endpoints; endpoint removal and the failing readiness probe
//!   race to take it out of rotation, and `drain_delay` is the time you give them.
//! - **With a preStop hook** (`exec: {command: ["sleep", "5"]}`): the endpoints are removed
//!   while the hook sleeps, and SIGTERM comes after it: `drain_delay` can be shorter, but the
//!   hook's sleep counts against `terminationGracePeriodSeconds` too.
//!
//! ```yaml
//! terminationGracePeriodSeconds: 40   # > drain_delay (10 s) + grace (20 s)
//! containers:
//!   - name: app
//!     readinessProbe: { httpGet: { path: /readyz, port: 8080 }, periodSeconds: 2, failureThreshold: 2 }
//!     # (failureThreshold - 1) * periodSeconds > grace (20 s): see "Liveness after the close"
//!     livenessProbe:  { httpGet: { path: /livez,  port: 8080 }, periodSeconds: 10, failureThreshold: 4 }
//! ```

mod drain;
pub mod error;
#[cfg(any(feature = "lifecycle-serve", all(test, tower_5xx_loom)))]
mod in_flight;
#[cfg(all(test, tower_5xx_loom))]
mod loom_model;
mod probe;
#[cfg(feature = "lifecycle-serve")]
mod serve;
mod state;

/// The phase word and the in-flight count: loom's atomics while model-checking them
/// (`RUSTFLAGS="--cfg tower_5xx_loom" cargo test --lib lifecycle::loom_model`), std's otherwise.
mod sync {
    #[cfg(all(test, tower_5xx_loom))]
    pub(crate) use loom::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    #[cfg(all(not(all(test, tower_5xx_loom)), feature = "lifecycle-serve"))]
    pub(crate) use std::sync::atomic::AtomicUsize;
    #[cfg(not(all(test, tower_5xx_loom)))]
    pub(crate) use std::sync::atomic::{AtomicU8, Ordering};

    /// A point where the model may switch threads, between two steps loom cannot see into (the
    /// phase word's move and the watch channel's); nothing outside the model.
    #[inline(always)]
    pub(crate) fn step() {
        #[cfg(all(test, tower_5xx_loom))]
        loom::thread::yield_now();
    }
}

pub use drain::{Drain, DrainLayer, ResponseFuture};
pub use error::GraceExpired;
pub use probe::{Liveness, Readiness};
#[cfg(feature = "lifecycle-serve")]
pub use serve::Serve;
pub use state::{Lifecycle, Phase};
