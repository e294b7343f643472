//! The shared lifecycle state: the phase, the two durations, and the waits on them.

use std::{
    fmt,
    future::IntoFuture,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, AtomicUsize},
        Arc, OnceLock,
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_core::Stream;
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

use super::{
    error::GraceExpired,
    sync::{step, AtomicU8, Ordering},
    Liveness, Readiness,
};
use crate::panic_payload::{drop_payload, panic_message};

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
    /// When the shutdown was forced (a second shutdown request): the grace deadline then.
    forced_at: OnceLock<Instant>,
    /// Notified once, when the shutdown is forced (after `forced_at` is set).
    forced: Notify,
    /// The calls of `finish` and `serve` running: when the last one returns (or is dropped),
    /// the servers are done, and shutdown requests are listened for no longer. Not one flag
    /// for all: with two servers (the app and its metrics port), the first to finish must not
    /// stop the second request that forces the other.
    servers: AtomicUsize,
    /// Set when a call of `finish` or `serve` starts (after `servers` counts it).
    served: AtomicBool,
    /// Notified when `servers` drops to zero (after it does).
    finished: Notify,
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
                forced_at: OnceLock::new(),
                forced: Notify::new(),
                servers: AtomicUsize::new(0),
                served: AtomicBool::new(false),
                finished: Notify::new(),
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
    /// the listener is closed; the instant of the force, if a second shutdown request forced
    /// the shutdown (see [`on_signal`](Self::on_signal)).
    pub fn deadline(&self) -> Option<Instant> {
        let closed = self.inner.closed_at.get()?;
        let deadline = *closed + self.inner.grace;
        Some(match self.inner.forced_at.get() {
            Some(forced) => deadline.min(*forced),
            None => deadline,
        })
    }

    /// Ends the drain at once, as if its deadline had passed: the listener closes now if it is
    /// still open, and the grace deadline is now, so [`finish`](Self::finish) and
    /// [`serve`](Self::serve) return [`GraceExpired`] and the process can exit. Logged at warn
    /// level. Calling it again does nothing.
    fn force(&self) {
        let mut forced_now = false;
        self.inner.forced_at.get_or_init(|| {
            forced_now = true;
            Instant::now()
        });
        if !forced_now {
            return;
        }
        tracing::warn!(
            phase = %self.phase(),
            "second shutdown signal: ending the drain now (listener closed, grace period over)"
        );
        // The force first, then the close: whoever sees `Closing` and computes the deadline
        // finds it.
        self.advance(Phase::Closing);
        self.inner.forced.notify_waiters();
    }

    /// Counts a server running until the guard is dropped: once the last one running is
    /// done, the tasks that listen for a second shutdown request stop, and drop the requests.
    pub(crate) fn finished_on_drop(&self) -> FinishedOnDrop<'_> {
        self.inner.servers.fetch_add(1, Ordering::AcqRel);
        self.inner.served.store(true, Ordering::Release);
        FinishedOnDrop(self)
    }

    /// Resolves once the servers are done: one ran, and none runs now
    /// ([`finished_on_drop`](Self::finished_on_drop)).
    async fn finished(&self) {
        let mut finished = pin!(self.inner.finished.notified());
        // Registered before the check: the last server ending between the two is not missed.
        finished.as_mut().enable();
        if self.inner.served.load(Ordering::Acquire)
            && self.inner.servers.load(Ordering::Acquire) == 0
        {
            return;
        }
        finished.await;
    }

    /// The shutdown future for `axum::serve(..).with_graceful_shutdown(..)` (or hyper-util's
    /// `GracefulShutdown`): waits for SIGTERM or SIGINT (Ctrl-C) or a call to
    /// [`start_drain`](Self::start_drain), then drains: readiness 503 at once, requests served
    /// normally for the drain delay, then it marks the listener closed and resolves (the
    /// server stops accepting). Each phase is logged (`tracing`, info level).
    ///
    /// **A second signal forces the shutdown** ("press Ctrl-C again"): received while
    /// draining or in the grace period, it ends the drain at once, as if its deadline had
    /// passed: the listener closes now if it is still open, the grace deadline becomes now
    /// ([`deadline`](Self::deadline)), [`finish`](Self::finish) and [`serve`](Self::serve)
    /// return [`GraceExpired`], and it is logged at warn level. A signal is counted as the
    /// second only after one was received: SIGTERM during a drain your code started with
    /// [`start_drain`](Self::start_drain) starts nothing new, and the next one forces.
    ///
    /// **A signal less than a second after the last one counted is not counted**: it is taken
    /// for the same one delivered twice, and logged at info level. One Ctrl-C reaches a
    /// process started in a terminal by a wrapper that relays signals (a process manager, a
    /// shell script's `trap`, the launcher scripts of npm packages) twice: the terminal's
    /// SIGINT and, milliseconds later, the wrapper's SIGTERM or SIGINT; counted, the pair would
    /// cut the requests in flight. Press Ctrl-C again a second or more later to force the
    /// shutdown.
    ///
    /// After the first, the signals are listened for by a task this spawns (the future itself
    /// resolves at the close), until the grace deadline or until [`finish`](Self::finish) (or
    /// [`serve`](Self::serve)) returns, the last of them if several servers share the
    /// lifecycle. Dropped mid-drain, the future leaves the drain to run
    /// its course (see [`on_drain`](Self::on_drain)). The signals are a [`Stream`];
    /// [`on_shutdown_requests`](Self::on_shutdown_requests) takes another.
    ///
    /// Needs a tokio runtime with signals enabled (`enable_all`, or `#[tokio::main]`).
    ///
    /// # Panics
    ///
    /// If the signal handlers cannot be installed (no tokio runtime with the signal driver).
    pub async fn on_signal(self) {
        self.on_shutdown_requests(shutdown_signals()).await;
    }

    /// [`on_signal`](Self::on_signal) with `requests` in place of the signals: each item is a
    /// request to shut down, as SIGTERM or SIGINT is. The first (or
    /// [`start_drain`](Self::start_drain)) starts the drain; the next one after the first
    /// forces the shutdown at once (see [`on_signal`](Self::on_signal)); every item counts
    /// (the signals' one-second debounce is theirs). Resolves at the close; `requests` is
    /// kept, in a task of its own, until the grace deadline, or until [`finish`](Self::finish)
    /// (or [`serve`](Self::serve)) returns (the last of them). A stream that ends just stops counting. A stream
    /// that panics is dropped, and the panic logged at error level: before the first request
    /// it counts as one (the drain starts, since nothing else could start it now); after, as
    /// the stream's end (a panic never forces the shutdown). For a shutdown command of your
    /// own (an admin endpoint, a supervisor's pipe), and for tests on paused time.
    ///
    /// # Panics
    ///
    /// Polled outside a tokio runtime (it spawns the task that keeps `requests`), as
    /// [`on_signal`](Self::on_signal).
    ///
    /// ```
    /// use std::{pin::Pin, task::{Context, Poll}, time::Duration};
    /// use tokio::sync::mpsc;
    /// use tower_5xx::lifecycle::{Lifecycle, Phase};
    ///
    /// /// A channel's receiver as a stream of shutdown requests.
    /// struct Requests(mpsc::UnboundedReceiver<()>);
    /// impl futures_core::Stream for Requests {
    ///     type Item = ();
    ///     fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
    ///         self.0.poll_recv(cx)
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let lifecycle = Lifecycle::new(Duration::from_secs(10), Duration::from_secs(20));
    /// let (shutdown, requests) = mpsc::unbounded_channel();
    /// let closed = tokio::spawn(lifecycle.clone().on_shutdown_requests(Requests(requests)));
    ///
    /// shutdown.send(()).unwrap(); // the first: drain
    /// tokio::time::sleep(Duration::from_secs(1)).await;
    /// assert_eq!(lifecycle.phase(), Phase::Draining);
    ///
    /// shutdown.send(()).unwrap(); // the second: now
    /// closed.await.unwrap();
    /// assert_eq!(lifecycle.phase(), Phase::Closing);
    /// assert_eq!(lifecycle.deadline(), Some(tokio::time::Instant::now()));
    /// # }
    /// ```
    pub async fn on_shutdown_requests<R>(self, requests: R)
    where
        R: Stream<Item = ()> + Send + 'static,
    {
        let mut requests = Box::pin(requests);
        // A panic in `requests` is logged at error level and taken as its last item. Before
        // the first request, as a request: the stream stands in for the signals, so nothing
        // could start the drain any more, and the process would serve on until a SIGKILL cut
        // its requests; drained, it exits in order (a supervisor restarts it), and the log says
        // why. After the first, as the stream's end: the drain is under way already, and taking
        // the panic as a second request would cut the requests in flight, which no one asked.
        let first = tokio::select! {
            // (A stream that ends leaves only `start_drain`.)
            Some(request) = next(&mut requests) => {
                let first = match request {
                    Ok(()) => {
                        tracing::info!("shutdown signal received");
                        First::Request
                    }
                    Err(panic) => {
                        tracing::error!(
                            panic = %panic_message(&*panic),
                            "the stream of shutdown requests panicked: taken as a shutdown \
                             request, since no other can come"
                        );
                        drop_payload(panic);
                        First::Panicked
                    }
                };
                self.start_drain();
                first
            }
            () = self.draining() => First::ByCode,
        };
        // The second request may come after the close, when this future is done (or dropped):
        // it is awaited by a task of its own, until the grace deadline or until the server is
        // done (`finish` or `serve` returned), whichever comes first.
        if first == First::Panicked {
            // Its drop may panic too (the first panic may have broken what it checks): the
            // drain has started, and must still reach its close below.
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| drop(requests))) {
                tracing::error!(
                    panic = %panic_message(&*panic),
                    "the stream of shutdown requests panicked again when dropped"
                );
                drop_payload(panic);
            }
        } else {
            let lifecycle = self.clone();
            tokio::spawn(async move {
                let second = async {
                    if first == First::ByCode {
                        // Draining was started by code: the next request is the first.
                        match next(&mut requests).await? {
                            Ok(()) => tracing::info!("shutdown signal received; already draining"),
                            Err(panic) => return Some(Err(panic)),
                        }
                    }
                    next(&mut requests).await
                };
                tokio::select! {
                    second = second => match second {
                        Some(Ok(())) => lifecycle.force(),
                        Some(Err(panic)) => {
                            tracing::error!(
                                panic = %panic_message(&*panic),
                                "the stream of shutdown requests panicked: no second request \
                                 can force the shutdown now; the drain goes on"
                            );
                            drop_payload(panic);
                        }
                        None => {}
                    },
                    () = lifecycle.grace_over() => {}
                    () = lifecycle.finished() => {}
                }
            });
        }
        self.on_drain().await;
    }

    /// [`on_signal`](Self::on_signal) without the signals: waits for
    /// [`start_drain`](Self::start_drain), then the drain delay, then marks the listener closed
    /// and resolves (at once if the listener closed earlier, when a second signal forced the
    /// shutdown). For a shutdown triggered by your own code, and for tests on paused time.
    ///
    /// Dropped once the drain has started (a `select!` that gave up on it, a server future
    /// dropped with its shutdown future), it leaves a task in its place: the listener is still
    /// marked closed at the end of the drain delay, and the grace deadline still comes.
    pub async fn on_drain(self) {
        self.draining().await;
        tracing::info!(
            drain_delay = ?self.inner.drain_delay,
            "draining: readiness answers 503; serving normally until the drain delay is over"
        );
        let end = Instant::now() + self.inner.drain_delay;
        let mut unfinished = CloseOnDrop {
            lifecycle: Some(self.clone()),
            end,
        };
        self.close_at(end).await;
        unfinished.lifecycle = None;
    }

    /// Marks the listener closed at `end` (the end of the drain delay), unless it closed
    /// before.
    async fn close_at(self, end: Instant) {
        tokio::select! {
            () = tokio::time::sleep_until(end) => {}
            () = self.closed() => {}
        }
        if self.advance(Phase::Closing) {
            tracing::info!(
                grace = ?self.inner.grace,
                "closing: listener closed; late requests get 503 + Connection: close; \
                 in-flight requests have the grace period to finish"
            );
        }
    }

    /// Runs `server` (e.g. `axum::serve(..).with_graceful_shutdown(lifecycle.clone().on_signal())`)
    /// until it finishes, or until the grace deadline once the listener is closed (at once on a
    /// second signal, see [`on_signal`](Self::on_signal)), whichever comes first. At the
    /// deadline it logs a warning, drops the server future and returns
    /// [`GraceExpired`]. With `axum::serve` (and hyper-util, where you spawn the connections),
    /// each connection runs in a task of its own that dropping the server future does not
    /// stop: requests still running keep running until the runtime shuts down, so return from
    /// `main` then (exit status 0), and do not count on them being over in what follows.
    /// [`Lifecycle::serve`] closes what is left itself.
    ///
    /// Once it returns (or is dropped), and every other `finish` or [`serve`](Self::serve) of
    /// this lifecycle too (two servers, the app and its metrics port, share one), a second
    /// shutdown request is listened for no longer: the tasks of [`on_signal`](Self::on_signal)
    /// (or [`on_shutdown_requests`](Self::on_shutdown_requests)) that wait for it end, and
    /// drop the signals (or your streams). The servers are done: there is nothing left to
    /// force. While one is still running, the second request still forces it.
    ///
    /// # Errors
    ///
    /// [`GraceExpired`] when the grace period ran out before the server finished.
    pub async fn finish<F: IntoFuture>(&self, server: F) -> Result<F::Output, GraceExpired> {
        let _finished = self.finished_on_drop();
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

    /// Resolves at the grace deadline (never before the listener is closed), or at once when
    /// the shutdown is forced.
    pub(crate) async fn grace_over(&self) {
        let mut forced = pin!(self.inner.forced.notified());
        // Registered before the check: a force between the two is not missed.
        forced.as_mut().enable();
        if self.inner.forced_at.get().is_some() {
            return;
        }
        let deadline = async {
            self.closed().await;
            let deadline = self
                .deadline()
                .expect("set before the phase became Closing");
            tokio::time::sleep_until(deadline).await;
        };
        tokio::select! {
            () = deadline => {}
            () = forced => {}
        }
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

/// Marks the server done when dropped: see [`Lifecycle::finished_on_drop`].
pub(crate) struct FinishedOnDrop<'a>(&'a Lifecycle);

impl Drop for FinishedOnDrop<'_> {
    fn drop(&mut self) {
        let inner = &self.0.inner;
        if inner.servers.fetch_sub(1, Ordering::AcqRel) == 1 {
            inner.finished.notify_waiters();
        }
    }
}

/// The rest of a drain whose shutdown future was dropped: dropped before the close with a
/// `lifecycle`, it spawns the wait for `end` (the end of the drain delay) and the close, so
/// that the phases do not depend on one future being polled to the end.
struct CloseOnDrop {
    lifecycle: Option<Lifecycle>,
    end: Instant,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let Some(lifecycle) = self.lifecycle.take() else {
            return;
        };
        if lifecycle.is_closed() {
            return;
        }
        // Outside a runtime (dropped after it), there is nothing left to drain.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(lifecycle.close_at(self.end));
        }
    }
}

/// How the drain began, for the task that listens for the second shutdown request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    /// With a shutdown request.
    Request,
    /// With a panic of the shutdown requests' stream, which is polled no more.
    Panicked,
    /// With [`Lifecycle::start_drain`]: the next request is the first.
    ByCode,
}

/// The next item of `requests`: `Some(Ok(()))`, `None` once it has ended, or `Some(Err(..))`
/// with the payload if polling it panicked (it must not be polled again).
async fn next<R: Stream<Item = ()> + ?Sized>(
    requests: &mut Pin<Box<R>>,
) -> Option<std::thread::Result<()>> {
    std::future::poll_fn(|cx| {
        match catch_unwind(AssertUnwindSafe(|| requests.as_mut().poll_next(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(item)) => Poll::Ready(item.map(Ok)),
            Err(panic) => Poll::Ready(Some(Err(panic))),
        }
    })
    .await
}

/// SIGTERM or SIGINT (Ctrl-C), each time one is received, but one less than
/// [`SAME_REQUEST`] after the last counted (see [`Debounced`]); Ctrl-C only where there is no
/// SIGTERM.
pub(crate) fn shutdown_signals() -> Debounced<Signals> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).expect("install the SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("install the SIGINT handler"),
        }
    };
    #[cfg(windows)]
    let signals = Signals {
        ctrl_c: tokio::signal::windows::ctrl_c().expect("install the Ctrl-C handler"),
    };
    Debounced::new(signals)
}

/// How soon after a counted shutdown signal another is taken for the same request delivered
/// twice. One Ctrl-C reaches a process started by a wrapper that relays signals (a process
/// manager, a shell script's `trap`, an npm package's launcher script) twice, within
/// milliseconds, when the process is still in the terminal's process group: SIGINT from the
/// terminal to the whole group, and the wrapper's SIGTERM or SIGINT to its child. Counted,
/// the pair would force the shutdown and cut the requests in flight. A person pressing
/// Ctrl-C again to force it, or a supervisor's second SIGTERM, comes later than this.
pub(crate) const SAME_REQUEST: Duration = Duration::from_secs(1);

/// The requests of `S`, but one that comes less than [`SAME_REQUEST`] after the last one
/// counted, which is logged (info level) and not counted.
pub(crate) struct Debounced<S> {
    inner: S,
    /// When the last request counted came, on tokio's clock.
    last: Option<Instant>,
}

impl<S> Debounced<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner, last: None }
    }
}

impl<S: Stream<Item = ()> + Unpin> Stream for Debounced<S> {
    type Item = ();

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let this = self.get_mut();
        loop {
            if std::task::ready!(Pin::new(&mut this.inner).poll_next(cx)).is_none() {
                return Poll::Ready(None);
            }
            let now = Instant::now();
            match this.last {
                Some(last) if now.saturating_duration_since(last) < SAME_REQUEST => {
                    tracing::info!(
                        after = ?now.saturating_duration_since(last),
                        "shutdown signal received again: taken for the same one delivered \
                         twice (by a terminal and a wrapper relaying it), not counted; send \
                         another a second or more later to force the shutdown"
                    );
                }
                _ => {
                    this.last = Some(now);
                    return Poll::Ready(Some(()));
                }
            }
        }
    }
}

/// The process's shutdown signals as a stream of shutdown requests.
pub(crate) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
}

impl Stream for Signals {
    type Item = ();

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let this = self.get_mut();
        #[cfg(unix)]
        {
            // One at a time: a signal of each kind at once is two items, which `Debounced`
            // counts as one request. Neither stream ends (tokio keeps its handlers installed).
            if let Poll::Ready(Some(())) = this.term.poll_recv(cx) {
                return Poll::Ready(Some(()));
            }
            if let Poll::Ready(Some(())) = this.int.poll_recv(cx) {
                return Poll::Ready(Some(()));
            }
            Poll::Pending
        }
        #[cfg(windows)]
        {
            this.ctrl_c.poll_recv(cx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// A channel's receiver as a stream of shutdown requests: the signals, driven by the test.
    struct Requests(tokio::sync::mpsc::UnboundedReceiver<()>);

    impl Stream for Requests {
        type Item = ();

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
            self.0.poll_recv(cx)
        }
    }

    fn requests() -> (tokio::sync::mpsc::UnboundedSender<()>, Requests) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (tx, Requests(rx))
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_shutdown_request_while_draining_ends_the_drain_at_once() {
        let lc = Lifecycle::new(MS(10_000), MS(20_000));
        let (signal, rx) = requests();
        let shutdown = tokio::spawn(lc.clone().on_shutdown_requests(rx));
        let finish = tokio::spawn({
            let lc = lc.clone();
            async move { lc.finish(std::future::pending::<()>()).await }
        });

        signal.send(()).unwrap();
        tokio::time::sleep(MS(1_000)).await;
        assert_eq!(lc.phase(), Phase::Draining, "the first request drains");
        assert!(!shutdown.is_finished());

        let forced_at = Instant::now();
        signal.send(()).unwrap();
        // No time passes: everything the force wakes runs now.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(lc.phase(), Phase::Closing, "the second closes at once");
        assert_eq!(
            lc.deadline(),
            Some(forced_at),
            "and the grace deadline is now"
        );
        assert!(
            shutdown.is_finished(),
            "the shutdown future resolved at the close"
        );
        let out = finish.await.unwrap();
        assert_eq!(out, Err(GraceExpired { in_flight: None }));
        assert_eq!(Instant::now(), forced_at, "finish returned at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_shutdown_request_in_the_grace_period_ends_it_at_once() {
        let lc = Lifecycle::new(MS(1_000), MS(20_000));
        let (signal, rx) = requests();
        tokio::spawn(lc.clone().on_shutdown_requests(rx));
        signal.send(()).unwrap();
        tokio::time::sleep(MS(1_500)).await;
        assert_eq!(lc.phase(), Phase::Closing);
        let closed_at = Instant::now() - MS(500);
        assert_eq!(lc.deadline(), Some(closed_at + MS(20_000)));

        // The shutdown future is done; the second request is still heard.
        let finish = tokio::spawn({
            let lc = lc.clone();
            async move { lc.finish(std::future::pending::<()>()).await }
        });
        tokio::time::sleep(MS(1_000)).await;
        assert!(!finish.is_finished());
        let forced_at = Instant::now();
        signal.send(()).unwrap();
        let out = finish.await.unwrap();
        assert_eq!(out, Err(GraceExpired { in_flight: None }));
        assert_eq!(
            Instant::now(),
            forced_at,
            "the grace period ended at the second request"
        );
        assert_eq!(lc.deadline(), Some(forced_at));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_request_during_a_drain_started_by_code_is_the_first() {
        let lc = Lifecycle::new(MS(10_000), MS(20_000));
        let (signal, rx) = requests();
        let shutdown = tokio::spawn(lc.clone().on_shutdown_requests(rx));
        lc.start_drain();
        tokio::time::sleep(MS(1_000)).await;

        // One request (say the kubelet's SIGTERM during a drain the app started): no force.
        signal.send(()).unwrap();
        tokio::time::sleep(MS(1_000)).await;
        assert_eq!(lc.phase(), Phase::Draining);
        assert!(!shutdown.is_finished());

        // The next one forces.
        let forced_at = Instant::now();
        signal.send(()).unwrap();
        shutdown.await.unwrap();
        assert_eq!(Instant::now(), forced_at);
        assert_eq!(lc.phase(), Phase::Closing);
        assert_eq!(lc.deadline(), Some(forced_at));
    }

    /// The signals are debounced: a request less than `SAME_REQUEST` (1 s) after the last one
    /// counted is that one delivered twice (a terminal's SIGINT and a wrapper's SIGTERM), and
    /// does not force; one a second after it does.
    #[tokio::test(start_paused = true)]
    async fn a_signal_less_than_a_second_after_the_last_counted_is_the_same_request() {
        let lc = Lifecycle::new(MS(10_000), MS(20_000));
        let (signal, rx) = requests();
        let shutdown = tokio::spawn(lc.clone().on_shutdown_requests(Debounced::new(rx)));
        let start = Instant::now();
        signal.send(()).unwrap();
        signal.send(()).unwrap();
        tokio::time::sleep(MS(999)).await;
        signal.send(()).unwrap();
        tokio::time::sleep(MS(1)).await;
        assert_eq!(lc.phase(), Phase::Draining, "one request so far");
        assert!(!shutdown.is_finished());

        signal.send(()).unwrap();
        shutdown.await.unwrap();
        assert_eq!(Instant::now() - start, SAME_REQUEST);
        assert_eq!(lc.deadline(), Some(start + SAME_REQUEST), "forced");
    }

    #[tokio::test(start_paused = true)]
    async fn one_shutdown_request_drains_for_the_whole_delay_and_grace() {
        let lc = Lifecycle::new(MS(10_000), MS(20_000));
        let (signal, rx) = requests();
        tokio::spawn(lc.clone().on_shutdown_requests(rx));
        let start = Instant::now();
        signal.send(()).unwrap();
        let out = lc.finish(std::future::pending::<()>()).await;
        assert_eq!(out, Err(GraceExpired { in_flight: None }));
        assert_eq!(Instant::now() - start, MS(30_000));
        drop(signal);
    }

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
