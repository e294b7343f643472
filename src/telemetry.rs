//! How the layers report their decisions: metrics through the `metrics` facade (feature
//! `metrics`; the names are in [`crate::metrics`]) and one `tracing` event per generated
//! response. Without the feature the metric calls compile to nothing.
//!
//! Handles are registered with the installed recorder on first use and kept by the layer
//! instance, so the request path costs an atomic load and the recorder's own update (an atomic
//! add for Prometheus), and never allocates.
// Without the feature the recording methods do nothing with `self`; they keep their signatures
// so that callers need no `cfg` of their own.
#![cfg_attr(not(feature = "metrics"), allow(clippy::unused_self))]

use std::{fmt, sync::Arc};

use http::StatusCode;

use crate::Reason;

#[cfg(feature = "metrics")]
use std::sync::OnceLock;

#[cfg(feature = "metrics")]
pub(crate) use ::metrics::{Counter, Gauge, Histogram};

/// The name label's key.
#[cfg(feature = "metrics")]
pub(crate) const NAME_LABEL: &str = "name";

/// One layer instance's view of the recorder: its name (a label on all its series and a field
/// of its events) and its cached handles. Cheap to clone (shared).
#[derive(Clone, Default)]
pub(crate) struct Meter {
    name: Option<Arc<str>>,
    #[cfg(feature = "metrics")]
    cache: Arc<Cache>,
}

#[cfg(feature = "metrics")]
#[derive(Default)]
struct Cache {
    /// The generated-responses counter per reason, at the reason's usual status.
    generated: [OnceLock<Counter>; Reason::COUNT],
}

impl fmt::Debug for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Meter").field(&self.name).finish()
    }
}

impl Meter {
    /// A meter whose series carry `name="<name>"` (none when `None`).
    pub(crate) fn new(name: Option<Arc<str>>) -> Self {
        Self {
            name,
            #[cfg(feature = "metrics")]
            cache: Arc::default(),
        }
    }

    /// The instance's name, if it has one.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Counts one response this layer generated.
    #[inline]
    pub(crate) fn generated(&self, status: StatusCode, reason: Reason) {
        #[cfg(feature = "metrics")]
        {
            if status == reason.status() {
                self.cache.generated[reason as usize]
                    .get_or_init(|| self.register_generated(status, reason))
                    .increment(1);
            } else {
                // A classifier's own status: rare, not cached.
                self.register_generated(status, reason).increment(1);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (status, reason);
    }

    #[cfg(feature = "metrics")]
    fn register_generated(&self, status: StatusCode, reason: Reason) -> Counter {
        let status = match status.as_u16() {
            429 => ::metrics::SharedString::const_str("429"),
            500 => ::metrics::SharedString::const_str("500"),
            502 => ::metrics::SharedString::const_str("502"),
            503 => ::metrics::SharedString::const_str("503"),
            504 => ::metrics::SharedString::const_str("504"),
            _ => ::metrics::SharedString::from(status.as_str().to_owned()),
        };
        self.counter(
            crate::metrics::RESPONSES_GENERATED,
            &[
                ("http.response.status_code", status),
                (
                    "error.type",
                    ::metrics::SharedString::const_str(reason.as_str()),
                ),
            ],
        )
    }

    /// The labels: `labels`, then the name.
    #[cfg(feature = "metrics")]
    fn labels(&self, labels: &[(&'static str, ::metrics::SharedString)]) -> Vec<::metrics::Label> {
        let mut out: Vec<::metrics::Label> = labels
            .iter()
            .map(|(k, v)| ::metrics::Label::new(*k, v.clone()))
            .collect();
        if let Some(name) = &self.name {
            out.push(::metrics::Label::new(
                NAME_LABEL,
                ::metrics::SharedString::from(Arc::clone(name)),
            ));
        }
        out
    }

    /// Registers a counter with this instance's name label.
    #[cfg(feature = "metrics")]
    pub(crate) fn counter(
        &self,
        key: &'static str,
        labels: &[(&'static str, ::metrics::SharedString)],
    ) -> Counter {
        ::metrics::counter!(key, self.labels(labels))
    }

    /// Registers a gauge with this instance's name label.
    #[cfg(feature = "metrics")]
    pub(crate) fn gauge(
        &self,
        key: &'static str,
        labels: &[(&'static str, ::metrics::SharedString)],
    ) -> Gauge {
        ::metrics::gauge!(key, self.labels(labels))
    }

    /// Registers a histogram with this instance's name label.
    #[cfg(feature = "metrics")]
    pub(crate) fn histogram(
        &self,
        key: &'static str,
        labels: &[(&'static str, ::metrics::SharedString)],
    ) -> Histogram {
        ::metrics::histogram!(key, self.labels(labels))
    }
}

/// A label value known at compile time.
#[cfg(feature = "metrics")]
pub(crate) const fn label(value: &'static str) -> ::metrics::SharedString {
    ::metrics::SharedString::const_str(value)
}

/// Handles registered on first use: `OnceLock` around a set of them, built by `init` with the
/// recorder installed at that moment.
#[cfg(feature = "metrics")]
pub(crate) struct Lazy<T> {
    cell: OnceLock<T>,
}

#[cfg(feature = "metrics")]
impl<T> Default for Lazy<T> {
    fn default() -> Self {
        Self {
            cell: OnceLock::new(),
        }
    }
}

#[cfg(feature = "metrics")]
impl<T> Lazy<T> {
    #[inline]
    pub(crate) fn get(&self, init: impl FnOnce() -> T) -> &T {
        self.cell.get_or_init(init)
    }
}

#[cfg(feature = "metrics")]
impl<T> fmt::Debug for Lazy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.cell.get().is_some() {
            "Lazy(registered)"
        } else {
            "Lazy(unregistered)"
        })
    }
}

/// What a generated-response event says about the request and the failure.
pub(crate) struct Event<'a> {
    pub(crate) status: StatusCode,
    pub(crate) reason: Reason,
    pub(crate) error_id: crate::ErrorId,
    pub(crate) method: Option<&'a http::Method>,
    pub(crate) path: &'a str,
    pub(crate) retry_after: Option<crate::RetryAfter>,
    /// The error chain or panic message (server-side only; never sent to the client).
    pub(crate) cause: Option<&'a dyn fmt::Display>,
}

/// Emits the one `tracing` event of a generated response, with the OpenTelemetry attribute
/// names. Failures (500, 502, 504, a classifier's 5xx other than 503) are errors; a 503 for a
/// known error of the service (a timeout) is a warning; deliberate refusals (maintenance,
/// shedding, an open breaker, draining, rate limiting) are debug events: under overload they
/// fire for every refused request, and the metrics count them.
pub(crate) fn event(meter: &Meter, e: &Event<'_>) {
    macro_rules! emit {
        ($level:expr, $message:literal) => {
            tracing::event!(
                target: "tower_5xx",
                $level,
                error.type = e.reason.as_str(),
                http.response.status_code = e.status.as_u16(),
                http.request.method = e.method.map(http::Method::as_str),
                url.path = e.path,
                error_id = %e.error_id,
                retry_after = e.retry_after.map(tracing::field::display),
                name = meter.name(),
                exception.message = e.cause.map(tracing::field::display),
                $message
            )
        };
    }
    match e.reason {
        Reason::Maintenance
        | Reason::Shed
        | Reason::CircuitOpen
        | Reason::Draining
        | Reason::RateLimited => emit!(tracing::Level::DEBUG, "request refused"),
        _ if e.status == StatusCode::SERVICE_UNAVAILABLE || e.status.is_client_error() => {
            emit!(tracing::Level::WARN, "request refused: a known error")
        }
        _ => emit!(tracing::Level::ERROR, "request failed"),
    }
}

/// Why the shed layer refused a request (the `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShedCause {
    /// No free permit and no room in the queue.
    QueueFull,
    /// Queued for the longest wait allowed.
    WaitedTooLong,
    /// No free permit and no room in the low-priority share of the queue.
    LowPriority,
}

impl ShedCause {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ShedCause::QueueFull => "queue_full",
            ShedCause::WaitedTooLong => "waited_too_long",
            ShedCause::LowPriority => "low_priority",
        }
    }
}

/// The shed layer's metrics.
#[derive(Debug, Default)]
pub(crate) struct ShedMetrics {
    pub(crate) meter: Meter,
    #[cfg(feature = "metrics")]
    handles: Lazy<ShedHandles>,
}

#[cfg(feature = "metrics")]
struct ShedHandles {
    limit: Gauge,
    in_flight: Gauge,
    queued: Gauge,
    rejected: [Counter; 3],
    wait: Histogram,
}

impl ShedMetrics {
    pub(crate) fn new(meter: Meter) -> Self {
        Self {
            meter,
            #[cfg(feature = "metrics")]
            handles: Lazy::default(),
        }
    }

    /// The handles; `limit` gives the limit gauge its first value when they are registered.
    #[cfg(feature = "metrics")]
    #[inline]
    fn handles(&self, limit: impl FnOnce() -> usize) -> &ShedHandles {
        use crate::metrics as m;
        self.handles.get(|| {
            let h = ShedHandles {
                limit: self.meter.gauge(m::SHED_LIMIT, &[]),
                in_flight: self.meter.gauge(m::SHED_IN_FLIGHT, &[]),
                queued: self.meter.gauge(m::SHED_QUEUED, &[]),
                rejected: [
                    ShedCause::QueueFull,
                    ShedCause::WaitedTooLong,
                    ShedCause::LowPriority,
                ]
                .map(|c| {
                    self.meter
                        .counter(m::SHED_REJECTED, &[("cause", label(c.as_str()))])
                }),
                wait: self.meter.histogram(m::SHED_QUEUE_WAIT, &[]),
            };
            h.limit.set(limit() as f64);
            h
        })
    }

    // The gauges of requests running and waiting move by one step per change of the
    // limiter's load, never to a count read before: two threads that wrote the counts each had
    // read could land in the wrong order and leave the gauge off until the next request. Steps
    // commute, so the gauges settle on the load whatever the order.

    /// The limit, just stored.
    pub(crate) fn limit(&self, limit: usize) {
        #[cfg(feature = "metrics")]
        self.handles(|| limit).limit.set(limit as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = limit;
    }

    /// `n` requests took a permit; `limit` is read only the first time.
    #[inline]
    pub(crate) fn started(&self, n: usize, limit: impl FnOnce() -> usize) {
        #[cfg(feature = "metrics")]
        self.handles(limit).in_flight.increment(n as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = (n, limit);
    }

    /// One permit was given back; `limit` is read only the first time.
    #[inline]
    pub(crate) fn finished(&self, limit: impl FnOnce() -> usize) {
        #[cfg(feature = "metrics")]
        self.handles(limit).in_flight.decrement(1.0);
        #[cfg(not(feature = "metrics"))]
        let _ = limit;
    }

    /// One request joined the queue; `limit` is read only the first time.
    pub(crate) fn joined_queue(&self, limit: impl FnOnce() -> usize) {
        #[cfg(feature = "metrics")]
        self.handles(limit).queued.increment(1.0);
        #[cfg(not(feature = "metrics"))]
        let _ = limit;
    }

    /// `n` requests left the queue (with a permit, or without); `limit` is read only the first
    /// time.
    pub(crate) fn left_queue(&self, n: usize, limit: impl FnOnce() -> usize) {
        #[cfg(feature = "metrics")]
        self.handles(limit).queued.decrement(n as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = (n, limit);
    }

    /// One request shed.
    pub(crate) fn rejected(&self, cause: ShedCause, limit: impl FnOnce() -> usize) {
        #[cfg(feature = "metrics")]
        self.handles(limit).rejected[cause as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = (cause, limit);
    }

    /// A queued request's wait (it got a permit or was shed).
    pub(crate) fn waited(&self, wait: std::time::Duration, limit: impl FnOnce() -> usize) {
        #[cfg(feature = "metrics")]
        self.handles(limit).wait.record(wait.as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = (wait, limit);
    }
}

/// The breaker's metrics.
#[derive(Debug, Default)]
pub(crate) struct BreakerMetrics {
    pub(crate) meter: Meter,
    #[cfg(feature = "metrics")]
    handles: Lazy<BreakerHandles>,
}

#[cfg(feature = "metrics")]
struct BreakerHandles {
    /// By `State as usize`.
    state: [Gauge; 5],
    transitions: [Counter; 5],
    /// success, failure, slow, rejected.
    calls: [Counter; 4],
}

/// A call's outcome as the breaker counts it (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Success,
    Failure,
    Slow,
    Rejected,
}

impl BreakerMetrics {
    pub(crate) fn new(meter: Meter) -> Self {
        Self {
            meter,
            #[cfg(feature = "metrics")]
            handles: Lazy::default(),
        }
    }

    #[cfg(feature = "metrics")]
    #[inline]
    fn handles(&self) -> &BreakerHandles {
        use crate::metrics as m;
        const STATES: [&str; 5] = ["closed", "open", "half_open", "forced_open", "disabled"];
        self.handles.get(|| {
            let h = BreakerHandles {
                state: STATES.map(|s| self.meter.gauge(m::BREAKER_STATE, &[("state", label(s))])),
                transitions: STATES.map(|s| {
                    self.meter
                        .counter(m::BREAKER_TRANSITIONS, &[("to", label(s))])
                }),
                calls: ["success", "failure", "slow", "rejected"].map(|o| {
                    self.meter
                        .counter(m::BREAKER_CALLS, &[("outcome", label(o))])
                }),
            };
            // A breaker starts closed.
            h.state[0].increment(1.0);
            h
        })
    }

    /// One call's outcome.
    #[inline]
    pub(crate) fn call(&self, outcome: CallOutcome) {
        #[cfg(feature = "metrics")]
        self.handles().calls[outcome as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = outcome;
    }

    /// A transition between states, given as indexes in the order closed, open, half-open,
    /// forced open, disabled.
    pub(crate) fn transition(&self, from: usize, to: usize) {
        #[cfg(feature = "metrics")]
        {
            let h = self.handles();
            h.state[from].decrement(1.0);
            h.state[to].increment(1.0);
            h.transitions[to].increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (from, to);
    }
}

impl BreakerMetrics {
    /// The breaker is gone (a keyed breaker evicted) in state `state` (an index as above).
    pub(crate) fn dropped(&self, state: usize) {
        #[cfg(feature = "metrics")]
        if let Some(h) = self.handles.cell.get() {
            h.state[state].decrement(1.0);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = state;
    }
}

/// Which bypass rule let a request through maintenance (the `rule` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BypassRule {
    Path,
    Header,
    Ip,
    Predicate,
}

/// The maintenance layer's metrics.
#[derive(Debug)]
pub(crate) struct MaintenanceMetrics {
    pub(crate) meter: Meter,
    /// What the gauge says: 0 off, 1 on, 2 not set yet. Read without a lock by every request;
    /// written, together with the gauge, only under `flip` and the switch's read lock.
    #[cfg(feature = "metrics")]
    shown: std::sync::atomic::AtomicU8,
    /// Makes writing `shown` and the gauge one step (see `show_active`).
    #[cfg(feature = "metrics")]
    flip: std::sync::Mutex<()>,
    #[cfg(feature = "metrics")]
    handles: Lazy<MaintenanceHandles>,
}

#[cfg(feature = "metrics")]
struct MaintenanceHandles {
    active: Gauge,
    end: Gauge,
    bypassed: [Counter; 4],
}

impl Default for MaintenanceMetrics {
    fn default() -> Self {
        Self::new(Meter::default())
    }
}

impl MaintenanceMetrics {
    pub(crate) fn new(meter: Meter) -> Self {
        Self {
            meter,
            #[cfg(feature = "metrics")]
            shown: std::sync::atomic::AtomicU8::new(2),
            #[cfg(feature = "metrics")]
            flip: std::sync::Mutex::new(()),
            #[cfg(feature = "metrics")]
            handles: Lazy::default(),
        }
    }

    #[cfg(feature = "metrics")]
    fn handles(&self) -> &MaintenanceHandles {
        use crate::metrics as m;
        self.handles.get(|| MaintenanceHandles {
            active: self.meter.gauge(m::MAINTENANCE_ACTIVE, &[]),
            end: self.meter.gauge(m::MAINTENANCE_ANNOUNCED_END, &[]),
            bypassed: ["path", "header", "ip", "predicate"].map(|r| {
                self.meter
                    .counter(m::MAINTENANCE_BYPASSED, &[("rule", label(r))])
            }),
        })
    }

    /// Whether the gauge shows `active` (what a request found) already; always `true` without
    /// the feature. When it does not, the caller asks the switch again, under its lock, with
    /// [`show_active`](Self::show_active).
    #[inline]
    pub(crate) fn shows_active(&self, active: bool) -> bool {
        #[cfg(feature = "metrics")]
        {
            self.shown.load(std::sync::atomic::Ordering::Relaxed) == u8::from(active)
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = active;
            true
        }
    }

    /// Shows on the gauge whether maintenance is on: `hold` reads the clock, holds the switch
    /// still (its read lock, so that no source is switched meanwhile), and calls the function
    /// it is given with whether maintenance is on, which writes the gauge. Out of line, and
    /// only when the state changes, not per request.
    ///
    /// Whatever a request found is only the hint that the gauge may be stale: the value shown
    /// is the switch's, read here. The hint itself may be stale by now: a request that found
    /// maintenance on, then updated the gauge after the switch went off and a later request
    /// had shown 0, set it back to 1, and it stayed there until the next request. Written under
    /// the switch's lock, the value shown is the switch's state when it is written, and a
    /// switch that changes after that is seen by the next request, which finds `shown` stale
    /// (the switch's lock orders the two).
    ///
    /// `shown` and the gauge change in one step, under `flip` (held switch locks are shared:
    /// two requests can be here at once), so the last writer of `shown` is the last writer of
    /// the gauge. Written separately, requests across a flip could interleave and leave `shown`
    /// at 1 with the gauge at 0; every later request would then see nothing to change, and the
    /// gauge would read 0 for the whole maintenance. `hold` reads the clock under `flip` too
    /// (before it locks the switch: the clock is user code): of two requests at a window's
    /// start or end, the one that writes last read the clock last. Lock order: `flip`, then
    /// the switch.
    #[cold]
    #[inline(never)]
    pub(crate) fn show_active(&self, hold: &dyn Fn(&mut dyn FnMut(bool))) {
        #[cfg(feature = "metrics")]
        {
            use std::sync::{atomic::Ordering, PoisonError};
            let _flip = self.flip.lock().unwrap_or_else(PoisonError::into_inner);
            hold(&mut |is_on| {
                let value = u8::from(is_on);
                if self.shown.load(Ordering::Relaxed) != value {
                    self.handles().active.set(f64::from(value));
                    self.shown.store(value, Ordering::Relaxed);
                }
            });
        }
        #[cfg(not(feature = "metrics"))]
        let _ = hold;
    }

    /// The announced end of the maintenance a request found on.
    #[inline]
    pub(crate) fn announced_end(&self, end: Option<std::time::SystemTime>) {
        #[cfg(feature = "metrics")]
        {
            let secs = end
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64().floor());
            self.handles().end.set(secs);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = end;
    }

    /// One request let through by `rule` during maintenance.
    pub(crate) fn bypassed(&self, rule: BypassRule) {
        #[cfg(feature = "metrics")]
        self.handles().bypassed[rule as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = rule;
    }
}

/// Why the retry client retried (the `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryCause {
    /// A retryable status.
    Status,
    /// An error before any response (connect, reset, ...).
    Connection,
    /// The attempt took longer than the per-attempt timeout.
    Timeout,
}

impl RetryCause {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RetryCause::Status => "status",
            RetryCause::Connection => "connection",
            RetryCause::Timeout => "timeout",
        }
    }
}

/// Why the retry client gave up on a retryable failure (the `cause` label), in the order of
/// `retry::GiveUpReason`'s variants.
pub(crate) const GIVE_UP_CAUSES: [&str; 7] = [
    "attempts_exhausted",
    "budget_exhausted",
    "retry_after_over_cap",
    "deadline",
    "not_idempotent",
    "body_not_replayable",
    "circuit_open",
];

/// The retry policy's metrics.
#[derive(Debug, Default)]
pub(crate) struct RetryMetrics {
    pub(crate) meter: Meter,
    #[cfg(feature = "metrics")]
    handles: Lazy<RetryHandles>,
}

#[cfg(feature = "metrics")]
struct RetryHandles {
    requests: Counter,
    attempts: Counter,
    retries: [Counter; 3],
    give_ups: [Counter; 7],
    /// retry_after, backoff.
    wait: [Histogram; 2],
    budget: Gauge,
}

impl RetryMetrics {
    pub(crate) fn new(meter: Meter) -> Self {
        Self {
            meter,
            #[cfg(feature = "metrics")]
            handles: Lazy::default(),
        }
    }

    #[cfg(feature = "metrics")]
    fn handles(&self) -> &RetryHandles {
        use crate::metrics as m;
        self.handles.get(|| RetryHandles {
            requests: self.meter.counter(m::RETRY_REQUESTS, &[]),
            attempts: self.meter.counter(m::RETRY_ATTEMPTS, &[]),
            retries: [
                RetryCause::Status,
                RetryCause::Connection,
                RetryCause::Timeout,
            ]
            .map(|c| {
                self.meter
                    .counter(m::RETRY_RETRIES, &[("cause", label(c.as_str()))])
            }),
            give_ups: GIVE_UP_CAUSES.map(|c| {
                self.meter
                    .counter(m::RETRY_GIVE_UPS, &[("cause", label(c))])
            }),
            wait: ["retry_after", "backoff"]
                .map(|s| self.meter.histogram(m::RETRY_WAIT, &[("source", label(s))])),
            budget: self.meter.gauge(m::RETRY_BUDGET_BALANCE, &[]),
        })
    }

    /// One request made through the client (counted once, before any attempt).
    pub(crate) fn request(&self) {
        #[cfg(feature = "metrics")]
        self.handles().requests.increment(1);
    }

    /// One attempt finished (and so was sent).
    pub(crate) fn attempt(&self) {
        #[cfg(feature = "metrics")]
        self.handles().attempts.increment(1);
    }

    /// A retry after `wait`, set by the server's `Retry-After` or by the backoff.
    pub(crate) fn retry(&self, cause: RetryCause, wait: std::time::Duration, retry_after: bool) {
        #[cfg(feature = "metrics")]
        {
            let h = self.handles();
            h.retries[cause as usize].increment(1);
            h.wait[usize::from(!retry_after)].record(wait.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (cause, wait, retry_after);
    }

    /// A give-up, by its index in [`GIVE_UP_CAUSES`].
    pub(crate) fn give_up(&self, cause: usize) {
        #[cfg(feature = "metrics")]
        self.handles().give_ups[cause].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = cause;
    }

    /// The budget's balance after a deposit or withdrawal.
    pub(crate) fn budget(&self, balance: f64) {
        #[cfg(feature = "metrics")]
        self.handles().budget.set(balance);
        #[cfg(not(feature = "metrics"))]
        let _ = balance;
    }
}
