//! The limiter every service of one layer shares: a concurrency limit whose capacity can change
//! at runtime, a bounded wait queue, the latency statistics, the adaptive estimator, and how a
//! shed request is answered.
//!
//! The running and the waiting requests are counted in one atomic word ([`Load`]). The hot path
//! (a request under the limit with nobody queued) reads the limit, then loads and
//! compare-and-swaps that word; giving the permit back is one atomic subtraction.
//!
//! Waiting requests are served first come, first served: they line up in a [`WaitQueue`]
//! behind a mutex that only they touch. A new arrival never takes a permit while anyone waits
//! (it sees the waiters in the same word as the free permits, and joins the queue), so a
//! permit given back while requests wait can only go to them: the request that gives it back
//! sees the waiters in the same atomic step and hands the free permits to the oldest ones.

use std::{
    future::Future,
    sync::{Arc, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tokio::{sync::oneshot, time::Instant};

use super::{
    limit::{Estimator, Limit, WindowStats},
    queue::WaitQueue,
    sync::{fence, AtomicBool, AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering},
    Priority,
};
use crate::{
    refuse::{RefusalPolicy, RequestView},
    telemetry::{Meter, ShedCause, ShedMetrics},
    Reason, RetryAfter,
};

/// The settings of a built layer (checked by the builder).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) limit: Limit,
    pub(crate) max_queue: usize,
    pub(crate) low_priority_queue: usize,
    pub(crate) max_wait: Duration,
    /// The wait of a request that joins a standing queue (see [`STANDING_AFTER`]).
    pub(crate) standing_wait: Duration,
}

/// A queue that has not been empty for this long, or in which a waiter gave up at its deadline
/// this recently, is a standing queue: it no longer absorbs a burst, it only adds latency
/// (CoDel's interval; Facebook's servers use the same rule), and a request that joins it may
/// wait [`Config::standing_wait`] rather than the full `max_wait`. (A queue under sustained
/// overload still empties now and then, whenever several requests finish at once; its waiters
/// keep timing out.)
pub(crate) const STANDING_AFTER: Duration = Duration::from_millis(100);

/// The current window of samples, in atomics so that recording is lock-free.
#[derive(Debug)]
struct Window {
    /// Nanoseconds since `Shared::epoch` at which the window opened.
    start: AtomicU64,
    count: AtomicU64,
    sum_ns: AtomicU64,
    /// Squared latencies summed, in microseconds squared.
    sum_sq_us: AtomicU64,
    drops: AtomicU64,
    max_in_flight: AtomicUsize,
}

/// The running requests (low 32 bits) and the waiting ones (high 32 bits), one word.
///
/// With both in one word, every change of either is one atomic step in one total order: a new
/// arrival that sees a free permit also sees that nobody waits; a request that gives its
/// permit back learns in the same step whether anyone waits. (Two words would need `SeqCst`
/// on both sides of a store-buffering pattern, and still let an arrival take a permit between
/// a release and its hand-off.)
struct Load;

impl Load {
    /// One waiting request.
    const WAITER: u64 = 1 << 32;
    const RUNNING: u64 = Self::WAITER - 1;
    /// The highest limit: at most 2^32 - 1 requests run at once. A limit at or under it keeps
    /// the word at or over the limit whenever anyone waits, so that one comparison checks both.
    const MAX_LIMIT: usize = Self::RUNNING as usize;

    fn running(load: u64) -> usize {
        (load & Self::RUNNING) as usize
    }

    fn waiting(load: u64) -> usize {
        (load >> 32) as usize
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// See [`Load`].
    load: AtomicU64,
    /// At most [`Load::MAX_LIMIT`].
    limit: AtomicUsize,
    /// Locked only while requests wait (joining, leaving, a permit handed over), never across
    /// an `.await`, and never while a permit is dropped (dropping one may lock it again).
    waiters: Mutex<WaitQueue>,
    /// Exponential moving average of the inner service's latency, in nanoseconds (0 = none yet).
    latency_ns: AtomicU64,
    shed: AtomicU64,
    pub(crate) config: Config,
    refusal: RefusalPolicy,
    pub(crate) metrics: ShedMetrics,
    epoch: Instant,
    /// `Some` for adaptive limits.
    adaptive: Option<Adaptive>,
}

#[derive(Debug)]
struct Adaptive {
    window: Window,
    window_len: Duration,
    min_samples: u32,
    drop_latency: Option<Duration>,
    /// The estimator is judging a raise: the window closes at `min_samples` and one average
    /// latency, however short.
    quick: AtomicBool,
    /// Only taken with `try_lock` by the request that closes a window: never waited on.
    estimator: Mutex<Estimator>,
}

impl Shared {
    pub(crate) fn new(config: Config, refusal: RefusalPolicy, meter: Meter) -> Self {
        let epoch = Instant::now();
        let adaptive = config
            .limit
            .window()
            .map(|(window_len, min_samples)| Adaptive {
                window: Window {
                    start: AtomicU64::new(0),
                    count: AtomicU64::new(0),
                    sum_ns: AtomicU64::new(0),
                    sum_sq_us: AtomicU64::new(0),
                    drops: AtomicU64::new(0),
                    max_in_flight: AtomicUsize::new(0),
                },
                window_len,
                min_samples,
                drop_latency: config.limit.drop_latency(),
                quick: AtomicBool::new(false),
                estimator: Mutex::new(Estimator::new(config.limit)),
            });
        Self {
            load: AtomicU64::new(0),
            limit: AtomicUsize::new(config.limit.initial().min(Load::MAX_LIMIT)),
            waiters: Mutex::new(WaitQueue::default()),
            latency_ns: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            config,
            refusal,
            metrics: ShedMetrics::new(meter),
            epoch,
            adaptive,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub(crate) fn in_flight(&self) -> usize {
        Load::running(self.load.load(Ordering::Relaxed))
    }

    pub(crate) fn queued(&self) -> usize {
        Load::waiting(self.load.load(Ordering::Relaxed))
    }

    pub(crate) fn shed_count(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    pub(crate) fn latency(&self) -> Option<Duration> {
        match self.latency_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Sets the limit from outside; an adaptive algorithm continues from this value.
    pub(crate) fn set_limit(self: &Arc<Self>, limit: usize) {
        let limit = limit.max(1);
        // Off the hot path: waiting for the lock is fine. The limit is stored while it is
        // held, so that a window closing meanwhile stores its estimate before this one, not
        // after.
        let _estimator = self.adaptive.as_ref().map(|adaptive| {
            let mut estimator = adaptive.estimator.lock().unwrap_or_else(|e| e.into_inner());
            estimator.reset_to(limit);
            adaptive.quick.store(false, Ordering::Relaxed);
            estimator
        });
        self.store_limit(limit);
    }

    /// A lower limit lets the requests running finish (their permits retire instead of being
    /// handed over); a higher one hands the new permits to the waiters at once.
    ///
    /// Store of `limit`, full fence, then load of the load: a request that joins the queue
    /// does the reverse (its addition to the load, a full fence, then the load of `limit` in
    /// [`try_acquire`](Self::try_acquire)), so at least one of them sees the other: the new
    /// permit is taken by the joining request, or handed to it here. (The fences make the
    /// `SeqCst` argument one that loom checks: it treats `SeqCst` accesses as `AcqRel`.)
    fn store_limit(self: &Arc<Self>, limit: usize) {
        let limit = limit.min(Load::MAX_LIMIT);
        let old = self.limit.swap(limit, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if limit > old && Load::waiting(self.load.load(Ordering::SeqCst)) > 0 {
            self.dispatch();
        }
        self.show_limit(limit);
    }

    /// Sets the limit gauge to `limit`, just stored, and again to any limit stored meanwhile:
    /// of two limits stored at once, the gauge ends on the one that stays.
    fn show_limit(&self, mut limit: usize) {
        loop {
            self.metrics.limit(limit);
            let now = self.limit();
            if now == limit {
                return;
            }
            limit = now;
        }
    }

    /// Whether to measure the latency of a request that starts now; `busy`: it waited, or at
    /// least half of the permits were taken when it started.
    ///
    /// Adaptive limits measure every request. A fixed limit only needs the latency for its
    /// `Retry-After` estimate, that is under load, so it measures one busy request in 16 (and
    /// every request until it has a first value): a lightly loaded server reads no clock.
    #[inline]
    pub(crate) fn sample(&self, busy: bool) -> bool {
        thread_local! {
            static TICK: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
        }
        if self.adaptive.is_some() || self.latency_ns.load(Ordering::Relaxed) == 0 {
            return true;
        }
        busy && TICK.with(|tick| {
            let t = tick.get().wrapping_add(1);
            tick.set(t);
            t % 16 == 0
        })
    }

    /// Takes a permit if one is free and nobody waits (waiting requests go first): `Some` with
    /// whether at least half of the permits were taken before.
    #[inline]
    pub(crate) fn try_acquire_fast(&self) -> Option<bool> {
        let limit = self.limit.load(Ordering::SeqCst) as u64;
        let mut load = self.load.load(Ordering::SeqCst);
        loop {
            // Anyone waiting puts the word over any limit (see `Load::MAX_LIMIT`).
            if load >= limit {
                return None;
            }
            match self.load.compare_exchange_weak(
                load,
                load + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    self.metrics.started(1, || self.limit());
                    return Some(2 * load >= limit);
                }
                Err(actual) => load = actual,
            }
        }
    }

    /// Takes a permit if one is free, waiters or not: for the oldest waiter, under the lock.
    fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        let mut load = self.load.load(Ordering::SeqCst);
        loop {
            if Load::running(load) >= limit {
                return false;
            }
            match self.load.compare_exchange_weak(
                load,
                load + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                // Counted on the gauge by the caller once the lock is released.
                Ok(_) => {
                    return true;
                }
                Err(actual) => load = actual,
            }
        }
    }

    /// Gives a permit back. If anyone waits (seen in the same atomic step), the free permits go
    /// to the oldest waiters: a new arrival cannot take this one, since it sees them waiting.
    #[inline]
    fn release(self: &Arc<Self>) {
        let load = self.load.fetch_sub(1, Ordering::SeqCst);
        self.metrics.finished(|| self.limit());
        if load >= Load::WAITER {
            self.dispatch();
        }
    }

    /// Hands free permits to the waiters, oldest first, while there are both.
    #[cold]
    fn dispatch(self: &Arc<Self>) {
        let mut waiters = self.waiters();
        let dispatched = self.dispatch_locked(&mut waiters);
        drop(waiters);
        self.publish(&dispatched);
        drop(dispatched);
    }

    /// [`dispatch`](Self::dispatch) with the lock held. A permit that found nobody to take it
    /// is returned, to be dropped after the lock is released, with what the gauges are to
    /// show (see [`publish`](Self::publish)).
    fn dispatch_locked(self: &Arc<Self>, waiters: &mut WaitQueue) -> Dispatched {
        let mut dispatched = Dispatched {
            unsent: None,
            started: 0,
            left: 0,
        };
        let before = waiters.len();
        while !waiters.is_empty() && self.try_acquire() {
            dispatched.started += 1;
            if let Err(permit) = waiters.hand_over(Permit::taken(Arc::clone(self))) {
                dispatched.unsent = Some(permit);
                break;
            }
        }
        dispatched.left = before - waiters.len();
        self.left_queue(dispatched.left);
        dispatched
    }

    /// Moves the gauges by what a dispatch did, once the lock is released: the recorder is
    /// user code, and nothing that can panic runs under the lock (a panic between taking a
    /// permit and handing it over would lose the permit for good). The gauges move by steps,
    /// so the order of these writes does not matter.
    fn publish(&self, dispatched: &Dispatched) {
        if dispatched.started > 0 {
            self.metrics.started(dispatched.started, || self.limit());
        }
        if dispatched.left > 0 {
            self.metrics.left_queue(dispatched.left, || self.limit());
        }
    }

    /// Counts `n` waiters out of the load (under the lock; the gauge is moved by the caller
    /// once the lock is released).
    fn left_queue(&self, n: usize) {
        if n > 0 {
            self.load
                .fetch_sub(n as u64 * Load::WAITER, Ordering::SeqCst);
        }
    }

    /// The wait queue. Nothing that can panic runs while it is locked; were the lock poisoned
    /// anyway, the queue itself would still be consistent.
    fn waiters(&self) -> MutexGuard<'_, WaitQueue> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the wait queue if there is room for this priority (or `None`: shed the request).
    /// A permit free at that moment is handed to the oldest waiter, which may be this one.
    pub(crate) fn enqueue(self: &Arc<Self>, priority: Priority) -> Option<Ticket> {
        if self.config.max_wait.is_zero() {
            return None;
        }
        let cap = match priority {
            Priority::Low => self.config.low_priority_queue,
            _ => self.config.max_queue,
        };
        // Under overload most arrivals find the queue full: they learn it without the lock.
        if self.queued() >= cap {
            return None;
        }
        let mut waiters = self.waiters();
        if waiters.len() >= cap {
            return None;
        }
        let now = tokio::time::Instant::now();
        // `standing_wait <= max_wait`: the builder checks it.
        let wait = if waiters.is_standing(now, STANDING_AFTER) {
            self.config.standing_wait
        } else {
            self.config.max_wait
        };
        let (id, grant) = waiters.push(now);
        // From here, no new arrival takes a free permit; one released before this addition is
        // taken below (for the oldest waiter), one released after it is handed over by its
        // releaser, which waits for this lock.
        self.load.fetch_add(Load::WAITER, Ordering::SeqCst);
        // Against a limit raised at this moment: see `store_limit`.
        fence(Ordering::SeqCst);
        let dispatched = self.dispatch_locked(&mut waiters);
        drop(waiters);
        // The gauges once the lock is released (see `publish`).
        self.metrics.joined_queue(|| self.limit());
        self.publish(&dispatched);
        drop(dispatched);
        Some(Ticket {
            shared: Arc::clone(self),
            id,
            grant,
            wait,
            settled: false,
        })
    }

    pub(crate) fn count_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// The base wait for a shed request: the time the backlog needs to drain at the observed
    /// rate, `(queued + 1) * latency / limit`. The refusal policy bounds and jitters it.
    pub(crate) fn drain_time(&self) -> Duration {
        let latency = self.latency().unwrap_or(Duration::from_millis(100));
        let backlog = self.queued() as u32 + 1;
        let limit = self.limit().clamp(1, u32::MAX as usize) as u32;
        latency.saturating_mul(backlog) / limit
    }

    /// Counts, logs and answers a shed request: 503 with the drain time as the base wait.
    pub(crate) fn refuse<B, ResBody: From<Bytes>>(
        &self,
        req: &Request<B>,
        cause: ShedCause,
    ) -> Response<ResBody> {
        self.count_shed();
        self.metrics.rejected(cause, || self.limit());
        self.refusal.respond(
            &self.metrics.meter,
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Shed,
            Some(RetryAfter::Delay(self.drain_time())),
            None,
            Some(&cause.as_str()),
            RequestView::of(req),
            std::time::SystemTime::now,
        )
    }

    /// Records a finished request: its latency in the inner service and whether it failed.
    pub(crate) fn record(self: &Arc<Self>, start: Instant, failed: bool) {
        let now = Instant::now();
        let latency = now.saturating_duration_since(start);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        // EMA with weight 1/16; a lost update under a race only loses one sample.
        let old = self.latency_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            ns
        } else {
            old - old / 16 + ns / 16
        };
        self.latency_ns.store(new.max(1), Ordering::Relaxed);

        let Some(a) = &self.adaptive else { return };
        let w = &a.window;
        let dropped = failed || a.drop_latency.is_some_and(|max| latency > max);
        w.sum_ns.fetch_add(ns, Ordering::Relaxed);
        w.sum_sq_us.fetch_add(squared_us(ns), Ordering::Relaxed);
        // This request still holds its permit, so it is counted.
        w.max_in_flight
            .fetch_max(self.in_flight(), Ordering::Relaxed);
        if dropped {
            w.drops.fetch_add(1, Ordering::Relaxed);
        }
        let count = w.count.fetch_add(1, Ordering::AcqRel) + 1;
        if count < u64::from(a.min_samples) {
            return;
        }
        let now = self.nanos_since_epoch(now);
        let opened = w.start.load(Ordering::Relaxed);
        // A window judging a raise needs only one average latency (this request's is in it):
        // by then the requests admitted under the old limit have finished.
        let len = if a.quick.load(Ordering::Relaxed) {
            self.latency_ns.load(Ordering::Relaxed)
        } else {
            a.window_len.as_nanos() as u64
        };
        if now.saturating_sub(opened) < len {
            return;
        }
        // Close the window. Whoever holds the lock is already doing it.
        let Ok(mut estimator) = a.estimator.try_lock() else {
            return;
        };
        if w.count.load(Ordering::Acquire) < u64::from(a.min_samples) {
            return; // closed by someone else just now
        }
        let count = w.count.swap(0, Ordering::AcqRel);
        let sum = w.sum_ns.swap(0, Ordering::Relaxed);
        let stats = WindowStats {
            count,
            mean: Duration::from_nanos(sum / count.max(1)),
            sum_sq: w.sum_sq_us.swap(0, Ordering::Relaxed) as f64 * 1e-12,
            drops: w.drops.swap(0, Ordering::Relaxed),
            max_in_flight: w.max_in_flight.swap(0, Ordering::Relaxed),
        };
        w.start.store(now, Ordering::Relaxed);
        let next = estimator.update(&stats);
        a.quick.store(estimator.quick(), Ordering::Relaxed);
        // Stored under the lock, as `set_limit` stores: a limit set through the handle while
        // this window closed is not overwritten by the estimate it replaced.
        self.store_limit(next);
        drop(estimator);
        tracing::trace!(
            samples = stats.count,
            mean_us = stats.mean.as_micros() as u64,
            limit = next,
            "shed: adaptive limit window closed"
        );
    }

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One unit of the concurrency limit, given back (or handed to the oldest waiter) when dropped:
/// on success, error, panic (the future holding it is dropped while unwinding) and
/// cancellation alike.
#[derive(Debug)]
pub(crate) struct Permit {
    shared: Arc<Shared>,
}

impl Permit {
    /// Wraps a permit already taken with `try_acquire`.
    #[inline]
    pub(crate) fn taken(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.shared.release();
    }
}

/// A place in the wait queue. The permit arrives through `grant`. Dropped before that (the
/// request's future dropped because the client went away), it leaves the queue; dropped after a
/// permit was sent to it but before it was received, the permit is dropped with it and passed
/// on to the next waiter.
#[derive(Debug)]
pub(crate) struct Ticket {
    shared: Arc<Shared>,
    id: u64,
    grant: oneshot::Receiver<Permit>,
    /// How long this request may wait: `max_wait`, or the standing queue's wait.
    wait: Duration,
    /// Out of the queue: the permit was received, or the ticket left.
    settled: bool,
}

impl Ticket {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// How long this request may wait for its permit.
    pub(crate) fn wait(&self) -> Duration {
        self.wait
    }

    /// The permit, once a releasing request or a higher limit handed it over. `None` if the
    /// queue dropped this waiter without a permit, which it never does.
    pub(crate) fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<Option<Permit>> {
        let received = std::task::ready!(std::pin::Pin::new(&mut self.grant).poll(cx));
        self.settled = true;
        Poll::Ready(received.ok())
    }

    /// Gives up waiting (the deadline passed). If a permit was handed over meanwhile, here it
    /// is: the request runs after all rather than waste it.
    pub(crate) fn leave(&mut self) -> Option<Permit> {
        self.settled = true;
        let mut waiters = self.shared.waiters();
        if waiters.remove(self.id) {
            waiters.note_timeout(tokio::time::Instant::now());
            self.shared.left_queue(1);
            drop(waiters);
            self.shared.metrics.left_queue(1, || self.shared.limit());
            return None;
        }
        drop(waiters);
        // Not in the queue any more: the permit was sent under the lock, so it is here.
        self.grant.try_recv().ok()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut waiters = self.shared.waiters();
        // If not in the queue, a permit was sent: it is dropped with `grant`, after this lock
        // is released, and its drop hands it to the next waiter.
        if waiters.remove(self.id) {
            self.shared.left_queue(1);
            drop(waiters);
            self.shared.metrics.left_queue(1, || self.shared.limit());
        }
    }
}

/// What [`Shared::dispatch_locked`] did: the permit nobody took (dropped after the lock is
/// released), and the permits taken and the waiters out of the queue, for the gauges.
struct Dispatched {
    unsent: Option<Permit>,
    started: usize,
    left: usize,
}

/// A latency in microseconds, squared: at most 2^48 (latencies over 16.8 s count as 16.8 s),
/// so a window's sum overflows only past 65,536 samples of 16.8 s. (Only the gradient limit
/// reads it, for the spread of latencies.) Rounded to the nearest microsecond: cut off, each
/// square would lose about the latency in microseconds, and the spread of latencies around
/// 50 us would vanish.
fn squared_us(ns: u64) -> u64 {
    let us = (ns.saturating_add(500) / 1_000).min(1 << 24);
    us * us
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[test]
    fn squared_latencies_keep_the_spread_of_fast_requests() {
        // Latencies spread evenly from 45 to 55 us (variance 8.33 us^2): the variance from the
        // sum of squares and the exact mean is within a tenth of it (cut off to whole
        // microseconds it came out at 0: each square lost about 50 us^2).
        let ns: Vec<u64> = (0..10_000).map(|i| 45_000 + i).collect();
        let n = ns.len() as f64;
        let mean_us = ns.iter().sum::<u64>() as f64 / n / 1e3;
        let sum_sq: u64 = ns.iter().map(|&x| squared_us(x)).sum();
        let variance = sum_sq as f64 / n - mean_us * mean_us;
        assert!((variance - 8.33).abs() < 0.84, "variance {variance}");
        assert_eq!(squared_us(u64::MAX), 1 << 48, "clamped, no overflow");
    }

    fn shared(limit: usize) -> Arc<Shared> {
        let config = Config {
            limit: Limit::from(limit),
            max_queue: 8,
            low_priority_queue: 4,
            max_wait: Duration::from_secs(1),
            standing_wait: Duration::from_secs(1),
        };
        Arc::new(Shared::new(
            config,
            RefusalPolicy::default(),
            Meter::default(),
        ))
    }

    fn poll(ticket: &mut Ticket) -> Poll<Option<Permit>> {
        ticket.poll_permit(&mut Context::from_waker(Waker::noop()))
    }

    fn take(shared: &Arc<Shared>) -> Permit {
        assert!(shared.try_acquire_fast().is_some());
        Permit::taken(Arc::clone(shared))
    }

    #[tokio::test]
    async fn a_released_permit_goes_to_the_oldest_waiter_not_to_a_new_arrival() {
        let shared = shared(1);
        let running = take(&shared);
        let mut first = shared.enqueue(Priority::Normal).unwrap();
        let mut second = shared.enqueue(Priority::Normal).unwrap();
        assert!(poll(&mut first).is_pending());
        drop(running);
        // Handed over: still one in flight, and a new arrival finds nothing free.
        assert_eq!((shared.in_flight(), shared.queued()), (1, 1));
        assert!(shared.try_acquire_fast().is_none());
        assert!(poll(&mut second).is_pending());
        let Poll::Ready(Some(permit)) = poll(&mut first) else {
            panic!("the oldest waiter did not get the permit");
        };
        drop(permit);
        assert!(matches!(poll(&mut second), Poll::Ready(Some(_))));
        assert_eq!((shared.in_flight(), shared.queued()), (0, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_leaves_after_the_hand_over_keeps_the_permit() {
        let shared = shared(1);
        let running = take(&shared);
        let mut ticket = shared.enqueue(Priority::Normal).unwrap();
        drop(running);
        // Its deadline passes in the same instant: the permit is already its own.
        assert!(ticket.leave().is_some());
        drop(ticket);
        assert_eq!((shared.in_flight(), shared.queued()), (0, 0));

        let running = take(&shared);
        let mut ticket = shared.enqueue(Priority::Normal).unwrap();
        assert!(ticket.leave().is_none());
        assert_eq!((shared.in_flight(), shared.queued()), (1, 0));
        drop(running);
        assert_eq!(shared.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_waiter_dropped_with_an_unreceived_permit_passes_it_on() {
        let shared = shared(1);
        let running = take(&shared);
        let first = shared.enqueue(Priority::Normal).unwrap();
        let mut second = shared.enqueue(Priority::Normal).unwrap();
        drop(running);
        drop(first);
        assert_eq!((shared.in_flight(), shared.queued()), (1, 0));
        assert!(matches!(poll(&mut second), Poll::Ready(Some(_))));
        assert_eq!(shared.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_fixed_limit_samples_one_busy_request_in_16_and_no_idle_one() {
        let shared = shared(4);
        assert!(shared.sample(false), "no latency yet: measure");
        shared.record(Instant::now(), false);
        assert!((0..64).all(|_| !shared.sample(false)));
        let sampled = (0..64).filter(|_| shared.sample(true)).count();
        assert_eq!(sampled, 4);
    }

    #[tokio::test]
    async fn a_limit_over_the_word_means_the_most_the_word_counts() {
        let shared = shared(usize::MAX);
        assert_eq!(shared.limit(), Load::MAX_LIMIT);
        let permits: Vec<_> = (0..3).map(|_| take(&shared)).collect();
        assert_eq!(shared.in_flight(), 3);
        drop(permits);
        shared.set_limit(usize::MAX);
        assert_eq!(shared.limit(), Load::MAX_LIMIT);
        assert_eq!(shared.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_windows_judging_a_raise_close_after_min_samples_and_one_latency() {
        use crate::shed::Gradient;
        let config = Config {
            limit: Gradient::new()
                .initial(9)
                .tolerance(1.1)
                .probe_after(1)
                .window(Duration::from_millis(100), 10)
                .into(),
            max_queue: 8,
            low_priority_queue: 4,
            max_wait: Duration::from_secs(1),
            standing_wait: Duration::from_secs(1),
        };
        let shared = Arc::new(Shared::new(
            config,
            RefusalPolicy::default(),
            Meter::default(),
        ));
        // Ten requests, five of `first` ms and five of `rest` ms, finishing now.
        let window = |first: u64, rest: u64| {
            // Five in flight: the limit is used, so a calm window may probe.
            let _busy: Vec<_> = (0..4).map(|_| take(&shared)).collect();
            for i in 0..10 {
                let _permit = take(&shared);
                let ms = if i < 5 { first } else { rest };
                shared.record(Instant::now() - Duration::from_millis(ms), false);
            }
        };
        // Ten requests of `ms` ms, one at a time.
        let quiet = |ms: u64| {
            for _ in 0..10 {
                let _permit = take(&shared);
                shared.record(Instant::now() - Duration::from_millis(ms), false);
            }
        };
        let full = Duration::from_millis(100);
        // The first window starts a measurement of the baseline at a quarter of the limit:
        // one window lets the requests in flight finish, the next one's mean is the baseline.
        tokio::time::advance(full).await;
        window(40, 40);
        assert_eq!(shared.limit(), 2, "measuring");
        for _ in 0..2 {
            tokio::time::advance(full).await;
            quiet(40);
        }
        assert_eq!(shared.limit(), 9, "measured");
        // Back at 9, the next nine completions pass unjudged (those admitted at 2 first).
        tokio::time::advance(full).await;
        window(40, 40);
        assert_eq!(shared.limit(), 9);
        tokio::time::advance(full).await;
        window(45, 45);
        assert_eq!(
            shared.limit(),
            8,
            "a mean of 45 over the baseline of 40: 9 * 40 / 45"
        );
        tokio::time::advance(full).await;
        window(40, 40); // the transition
        tokio::time::advance(full).await;
        window(40, 40);
        assert_eq!(shared.limit(), 9, "a calm window: probe");
        // The two windows that judge the raise close at ten samples and one average latency
        // (about 40 ms here), not 100 ms.
        let latency = Duration::from_millis(50);
        tokio::time::advance(latency).await;
        window(42, 42);
        assert_eq!(shared.limit(), 9, "the transition, within tolerance");
        window(45, 45);
        assert_eq!(shared.limit(), 9, "ten samples, but not one latency yet");
        tokio::time::advance(latency).await;
        window(45, 45);
        assert_eq!(
            shared.limit(),
            8,
            "over tolerance at 9: back to 8 after half a full window"
        );
        // Back to full windows: more samples at once close nothing (closing, these three
        // would be the transition, a first strike and a shrink to 5).
        window(60, 60);
        window(60, 60);
        window(60, 60);
        assert_eq!(shared.limit(), 8, "a full window needs its 100 ms");
    }

    #[tokio::test]
    async fn low_priority_waiters_use_only_their_share_of_the_queue() {
        let shared = shared(1);
        let _running = take(&shared);
        let low: Vec<_> = (0..4)
            .map(|_| shared.enqueue(Priority::Low).unwrap())
            .collect();
        assert!(shared.enqueue(Priority::Low).is_none());
        let normal: Vec<_> = (0..4)
            .map(|_| shared.enqueue(Priority::Normal).unwrap())
            .collect();
        assert!(shared.enqueue(Priority::Normal).is_none());
        drop((low, normal));
        assert_eq!(shared.queued(), 0);
    }
}
