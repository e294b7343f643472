//! The shared lifecycle state: the phase, the two durations, and the waits on them.

use std::{
    fmt,
    future::IntoFuture,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

use super::{
    error::GraceExpired,
    sync::{step, AtomicU8, Ordering},
    Liveness, Readiness,
};

pub(crate) const SERVING: u8 = 0;
pub(crate) const DRAINING: u8 = 1;
pub(crate) const CLOSING: u8 = 2;

/// Where the process is in its life. Phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Ready: readiness answers 200 (unless another condition says otherwise).
    Serving,
    /// Shutting down, listener still open: readiness answers 503 so load balancers stop
    /// sending, while every request is still served normally for the drain delay.
    Draining,
    /// The listener is closed: requests arriving on open connections get 503 + `Retry-After`
    /// (+ `Connection: close` on HTTP/1.1); in-flight requests finish until the grace deadline.
    Closing,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            SERVING => Phase::Serving,
            DRAINING => Phase::Draining,
            _ => Phase::Closing,
        }
    }

    /// A short lowercase name: `serving`, `draining`, `closing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Closing => "closing",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The handle to a process's lifecycle: its [`Phase`], its drain delay and grace period.
///
/// Cheap to clone (one reference count); every clone sees the same state. Make one per process,
/// then take from it the [readiness](Self::readiness) and [liveness](Self::liveness) probes,
/// the [drain layer](Self::drain_layer), and the shutdown future ([`on_signal`](Self::on_signal)).
/// See the [module docs](super).
#[derive(Clone)]
pub struct Lifecycle {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The phase, read on every request by the drain layer (one relaxed load).
    phase: AtomicU8,
    drain_delay: Duration,
    grace: Duration,
    /// The phase again, for the tasks that wait on it.
    pub(super) changed: watch::Sender<Phase>,
    /// Notified once, when the phase becomes `Closing` (after the phase is stored): the
    /// per-connection wait of `Lifecycle::serve`, which costs one atomic load per wake-up
    /// where a watch receiver costs a lock.
    #[cfg_attr(not(feature = "lifecycle-serve"), allow(dead_code))]
    pub(super) closing: Notify,
    /// When the listener closed (the phase became `Closing`), on tokio's clock.
    closed_at: OnceLock<Instant>,
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("phase", &self.phase())
            .field("drain_delay", &self.inner.drain_delay)
            .field("grace", &self.inner.grace)
            .finish()
    }
}

impl Lifecycle {
    /// A lifecycle in [`Phase::Serving`].
    ///
    /// - `drain_delay`: how long, after the signal, readiness answers 503 while every request
    ///   is still served normally, so load balancers notice and stop sending. Set it above the
    ///   readiness probe's period times its failure threshold (Kubernetes: `periodSeconds *
    ///   failureThreshold`), plus the time your load balancer takes to drop an endpoint.
    /// - `grace`: how long, after the listener closed, in-flight requests may take to finish.
    ///
    /// Either may be zero. Kubernetes kills the pod `terminationGracePeriodSeconds` after
    /// SIGTERM: keep it above `drain_delay + grace` (see the [module docs](super#kubernetes)).
    pub fn new(drain_delay: Duration, grace: Duration) -> Self {
        let (changed, _) = watch::channel(Phase::Serving);
        Self {
            inner: Arc::new(Inner {
                phase: AtomicU8::new(SERVING),
                drain_delay,
                grace,
                changed,
                closing: Notify::new(),
                closed_at: OnceLock::new(),
            }),
        }
    }

    /// The drain delay given to [`new`](Self::new).
    pub fn drain_delay(&self) -> Duration {
        self.inner.drain_delay
    }

    /// The grace period given to [`new`](Self::new).
    pub fn grace(&self) -> Duration {
        self.inner.grace
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.inner.phase.load(Ordering::Acquire))
    }

    /// Whether the listener is closed, so that late requests are refused: the drain layer's
    /// check, one relaxed load. A request racing the close either way is fine: served
    /// normally, or refused with a response the client can act on.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.phase.load(Ordering::Relaxed) == CLOSING
    }

    /// Starts draining, as SIGTERM does: readiness answers 503 from now on. The shutdown
    /// future ([`on_signal`](Self::on_signal) or [`on_drain`](Self::on_drain)) then waits the
    /// drain delay and closes the listener. Calling it again does nothing.
    pub fn start_drain(&self) {
        self.advance(Phase::Draining);
    }

    /// Moves to `to` if that is forward; returns whether it moved.
    pub(crate) fn advance(&self, to: Phase) -> bool {
        let to_u8 = match to {
            Phase::Serving => SERVING,
            Phase::Draining => DRAINING,
            Phase::Closing => CLOSING,
        };
        if to == Phase::Closing {
            // Before the phase, so that whoever sees `Closing` finds the instant.
            self.inner.closed_at.get_or_init(Instant::now);
        }
        let before = self.inner.phase.fetch_max(to_u8, Ordering::AcqRel);
        if before >= to_u8 {
            return false;
        }
        // Another move may come between the two: the watch only moves forward too.
        step();
        self.inner.changed.send_if_modified(|phase| {
            let moved = *phase < to;
            if moved {
                *phase = to;
            }
            moved
        });
        if to == Phase::Closing {
            self.inner.closing.notify_waiters();
        }
        true
    }

    async fn reached(&self, phase: Phase) {
        let mut rx = self.inner.changed.subscribe();
        // The sender lives in `self.inner`: the channel cannot close while we wait.
        let _ = rx.wait_for(|p| *p >= phase).await;
    }

    /// Resolves once draining has started (by a signal or [`start_drain`](Self::start_drain)).
    pub async fn draining(&self) {
        self.reached(Phase::Draining).await;
    }

    /// Resolves once the listener is closed ([`Phase::Closing`]).
    pub async fn closed(&self) {
        self.reached(Phase::Closing).await;
    }

    /// The grace deadline (the listener's close plus the grace period, on tokio's clock), once
    /// the listener is closed.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.closed_at.get().map(|at| *at + self.inner.grace)
    }

    /// The shutdown future for `axum::serve(..).with_graceful_shutdown(..)` (or hyper-util's
    /// `GracefulShutdown`): waits for SIGTERM or SIGINT (Ctrl-C) or a call to
    /// [`start_drain`](Self::start_drain), then drains: readiness 503 at once, requests served
    /// normally for the drain delay, then it marks the listener closed and resolves (the
    /// server stops accepting). Each phase is logged (`tracing`, info level).
    ///
    /// Needs a tokio runtime with signals enabled (`enable_all`, or `#[tokio::main]`).
    ///
    /// # Panics
    ///
    /// If the signal handlers cannot be installed (no tokio runtime with the signal driver).
    pub async fn on_signal(self) {
        tokio::select! {
            () = shutdown_signal() => {
                tracing::info!("shutdown signal received");
                self.start_drain();
            }
            () = self.draining() => {}
        }
        self.on_drain().await;
    }

    /// [`on_signal`](Self::on_signal) without the signals: waits for
    /// [`start_drain`](Self::start_drain), then the drain delay, then marks the listener closed
    /// and resolves. For a shutdown triggered by your own code, and for tests on paused time.
    pub async fn on_drain(self) {
        self.draining().await;
        tracing::info!(
            drain_delay = ?self.inner.drain_delay,
            "draining: readiness answers 503; serving normally until the drain delay is over"
        );
        tokio::time::sleep(self.inner.drain_delay).await;
        if self.phase() < Phase::Closing {
            tracing::info!(
                grace = ?self.inner.grace,
                "closing: listener closed; late requests get 503 + Connection: close; \
                 in-flight requests have the grace period to finish"
            );
        }
        self.advance(Phase::Closing);
    }

    /// Runs `server` (e.g. `axum::serve(..).with_graceful_shutdown(lifecycle.clone().on_signal())`)
    /// until it finishes, or until the grace deadline once the listener is closed, whichever
    /// comes first. At the deadline it logs a warning, drops the server future and returns
    /// [`GraceExpired`]. With `axum::serve` (and hyper-util, where you spawn the connections),
    /// each connection runs in a task of its own that dropping the server future does not
    /// stop: requests still running keep running until the runtime shuts down, so return from
    /// `main` then (exit status 0), and do not count on them being over in what follows.
    /// [`Lifecycle::serve`] closes what is left itself.
    ///
    /// # Errors
    ///
    /// [`GraceExpired`] when the grace period ran out before the server finished.
    pub async fn finish<F: IntoFuture>(&self, server: F) -> Result<F::Output, GraceExpired> {
        let server = server.into_future();
        tokio::select! {
            out = server => Ok(out),
            () = self.grace_over() => {
                let expired = GraceExpired { in_flight: None };
                tracing::warn!("{expired}; closing what is left");
                Err(expired)
            }
        }
    }

    /// Resolves at the grace deadline (never before the listener is closed).
    pub(crate) async fn grace_over(&self) {
        self.closed().await;
        let deadline = self
            .deadline()
            .expect("set before the phase became Closing");
        tokio::time::sleep_until(deadline).await;
    }

    /// The readiness probe (`/readyz`): 200 while serving, 503 + `Retry-After` while draining,
    /// and, if you opt in, under the other conditions of [`Readiness`].
    pub fn readiness(&self) -> Readiness {
        Readiness::new(self.clone())
    }

    /// The liveness probe (`/livez`): 200 until the process exits.
    pub fn liveness(&self) -> Liveness {
        Liveness::new(self.clone())
    }

    /// The layer that answers 503 + `Retry-After` + `Connection: close` once the listener is
    /// closed: see [`DrainLayer`](super::DrainLayer).
    pub fn drain_layer(&self) -> super::DrainLayer {
        super::DrainLayer::new(self.clone())
    }
}

/// SIGTERM or SIGINT (Ctrl-C); Ctrl-C only where there is no SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .expect("install the Ctrl-C handler");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[tokio::test(start_paused = true)]
    async fn the_phases_follow_the_drain_delay_then_the_grace() {
        let lc = Lifecycle::new(MS(5_000), MS(10_000));
        assert_eq!(lc.phase(), Phase::Serving);
        assert_eq!(lc.deadline(), None);
        let shutdown = tokio::spawn(lc.clone().on_drain());

        tokio::time::sleep(MS(60_000)).await;
        assert_eq!(
            lc.phase(),
            Phase::Serving,
            "nothing moves without a trigger"
        );
        assert!(!shutdown.is_finished());

        let start = Instant::now();
        lc.start_drain();
        assert_eq!(lc.phase(), Phase::Draining, "readiness turns at once");
        tokio::time::sleep(MS(4_999)).await;
        assert_eq!(lc.phase(), Phase::Draining);
        assert!(!shutdown.is_finished());
        tokio::time::sleep(MS(2)).await;
        assert_eq!(lc.phase(), Phase::Closing);
        assert!(
            shutdown.is_finished(),
            "the shutdown future resolves at the close"
        );
        assert_eq!(lc.deadline(), Some(start + MS(15_000)));

        // Phases never move back, and a second trigger does nothing.
        lc.start_drain();
        assert!(!lc.advance(Phase::Serving));
        assert_eq!(lc.phase(), Phase::Closing);
    }

    #[tokio::test(start_paused = true)]
    async fn finish_returns_the_server_output_or_expires_at_the_deadline() {
        let lc = Lifecycle::new(MS(1_000), MS(3_000));
        // A server that finishes 2 s after the close: in time.
        let server = {
            let lc = lc.clone();
            async move {
                lc.clone().on_drain().await;
                tokio::time::sleep(MS(2_000)).await;
                7
            }
        };
        lc.start_drain();
        assert_eq!(lc.finish(server).await, Ok(7));

        // A server that never finishes: cut at close + grace.
        let lc = Lifecycle::new(MS(1_000), MS(3_000));
        let start = Instant::now();
        tokio::spawn(lc.clone().on_drain());
        lc.start_drain();
        let out = lc.finish(std::future::pending::<()>()).await;
        assert_eq!(out, Err(GraceExpired { in_flight: None }));
        assert_eq!(Instant::now() - start, MS(4_000));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_wake_on_each_phase() {
        let lc = Lifecycle::new(MS(100), MS(100));
        let draining = tokio::spawn({
            let lc = lc.clone();
            async move { lc.draining().await }
        });
        let closed = tokio::spawn({
            let lc = lc.clone();
            async move { lc.closed().await }
        });
        tokio::task::yield_now().await;
        tokio::spawn(lc.clone().on_drain());
        lc.start_drain();
        tokio::time::sleep(MS(1)).await;
        assert!(draining.is_finished());
        assert!(!closed.is_finished());
        tokio::time::sleep(MS(100)).await;
        assert!(closed.is_finished());
    }
}
