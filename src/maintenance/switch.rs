//! The shared on/off state: [`MaintenanceSwitch`], what it carries ([`MaintenanceNotice`]), its
//! scheduled [`Window`]s and the wall clock they are read against.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use super::error::InvalidWindow;
use crate::retry_after::latest_http_date;

/// Where wall-clock time comes from: scheduled [`Window`]s and `until` dates are read against it.
///
/// The default is [`SystemClock`]. Tests inject their own clock with
/// [`MaintenanceSwitch::with_clock`]. Deadlines given as a duration
/// ([`MaintenanceNotice::ends_in`]) use tokio's clock instead, so they follow
/// `tokio::time::pause()` and `advance()`.
pub trait WallClock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The real wall clock: [`SystemTime::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    #[inline]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// When maintenance is expected to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// A wall-clock time (an HTTP-date, a scheduled window's end).
    At(SystemTime),
    /// A deadline on tokio's clock.
    Deadline(Instant),
}

/// What clients are told while maintenance is on: when it ends, how long to wait, and a message.
///
/// All parts are optional. The `Retry-After` of a 503 is, in this order: the time left until the
/// known end ([`until`](Self::until) or [`ends_in`](Self::ends_in)); else this notice's
/// [`retry_after`](Self::retry_after); else the layer's
/// [default](super::MaintenanceLayer::default_retry_after). A known end does **not** switch
/// maintenance off by itself (an overrunning migration should not suddenly receive traffic): once
/// it has passed, clients get the fallback `Retry-After` until someone calls
/// [`MaintenanceSwitch::disable`]. Scheduled [`Window`]s, by contrast, do end by themselves.
///
/// ```
/// use std::time::Duration;
/// use tower_5xx::maintenance::MaintenanceNotice;
///
/// let notice = MaintenanceNotice::new()
///     .ends_in(Duration::from_secs(15 * 60))
///     .message("Upgrading the database; back in about 15 minutes.");
/// assert_eq!(notice.get_message(), Some("Upgrading the database; back in about 15 minutes."));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceNotice {
    pub(crate) end: Option<End>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) message: Option<Arc<str>>,
}

impl MaintenanceNotice {
    /// A notice with no known end, no `Retry-After` of its own and no message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maintenance is expected to end at this wall-clock time.
    ///
    /// An end after the latest time an HTTP-date can name (9999-12-31 23:59:59 UTC) is kept as
    /// that time, so it can always be written as one (in an HTTP-date `Retry-After`, in the
    /// [admin router](super::admin)'s status). Clients are never told to wait more than the
    /// [refusal policy's maximum](crate::refuse::MAX_RETRY_AFTER) anyway.
    #[must_use]
    pub fn until(mut self, end: SystemTime) -> Self {
        self.end = Some(End::At(end.min(latest_http_date())));
        self
    }

    /// Maintenance is expected to end this long from now, measured on tokio's clock.
    #[must_use]
    pub fn ends_in(mut self, duration: Duration) -> Self {
        let now = Instant::now();
        self.end = Some(End::Deadline(now.checked_add(duration).unwrap_or(
            // Far enough for any maintenance; avoids an overflow panic on absurd input.
            now + Duration::from_secs(100 * 365 * 24 * 3600),
        )));
        self
    }

    /// The `Retry-After` to send while the end is unknown (or has passed).
    #[must_use]
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// The client-facing message (the detail of the 503 body, the text of the HTML page). It is
    /// sent to every client: keep internal information out of it.
    #[must_use]
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(Arc::from(message.into()));
        self
    }

    /// The message, if one was set.
    pub fn get_message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The `Retry-After` hint, if one was set.
    pub fn get_retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The expected end as a wall-clock time, if known (a tokio deadline is converted with
    /// `clock`'s current time). Never after the latest HTTP-date, 9999-12-31 23:59:59 UTC.
    pub fn ends_at(&self, clock: &dyn WallClock) -> Option<SystemTime> {
        match self.end? {
            End::At(t) => Some(t),
            End::Deadline(d) => {
                let left = d.saturating_duration_since(Instant::now());
                let end = clock.now().checked_add(left).unwrap_or(latest_http_date());
                Some(end.min(latest_http_date()))
            }
        }
    }

    /// How long this notice tells clients to wait, when it says: the time left until its known
    /// end, else its `retry_after`. What ranks notices when several sources are on.
    fn stated_wait(&self, now: SystemTime) -> Option<Duration> {
        self.remaining(now).or(self.retry_after)
    }

    /// Time left until the known end, if there is one and it has not passed.
    pub(crate) fn remaining(&self, now: SystemTime) -> Option<Duration> {
        let left = match self.end? {
            End::At(t) => t.duration_since(now).ok()?,
            End::Deadline(d) => d.saturating_duration_since(Instant::now()),
        };
        (!left.is_zero()).then_some(left)
    }
}

/// A scheduled maintenance window: on from `start` (inclusive) to `end` (exclusive), wall-clock.
///
/// While a window is open, clients get 503 with `Retry-After` equal to the time left until `end`,
/// or until the end of the last window of a run, when other pending windows open at or before
/// that end (back to back or overlapping: one maintenance).
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_5xx::maintenance::Window;
///
/// let start = SystemTime::now() + Duration::from_secs(3600);
/// let window = Window::new(start, start + Duration::from_secs(1800))
///     .unwrap()
///     .message("Planned maintenance, 30 minutes.");
/// assert!(Window::new(start, start).is_err());
/// # let _ = window;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    start: SystemTime,
    end: SystemTime,
    message: Option<Arc<str>>,
}

impl Window {
    /// A window from `start` to `end`. Fails if `end` is not after `start`, or is after the
    /// latest time an HTTP-date can name (9999-12-31 23:59:59 UTC).
    pub fn new(start: SystemTime, end: SystemTime) -> Result<Self, InvalidWindow> {
        if end <= start {
            return Err(InvalidWindow::ends_before_start());
        }
        if end > latest_http_date() {
            return Err(InvalidWindow::ends_too_late());
        }
        Ok(Self {
            start,
            end,
            message: None,
        })
    }

    /// The client-facing message while this window is open.
    #[must_use]
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(Arc::from(message.into()));
        self
    }

    /// When the window opens.
    pub fn start(&self) -> SystemTime {
        self.start
    }

    /// When the window closes.
    pub fn end(&self) -> SystemTime {
        self.end
    }

    fn is_open(&self, now: SystemTime) -> bool {
        self.start <= now && now < self.end
    }

    fn notice(&self) -> MaintenanceNotice {
        MaintenanceNotice {
            end: Some(End::At(self.end)),
            retry_after: None,
            message: self.message.clone(),
        }
    }
}

/// Where maintenance was switched on: each source is on or off by itself, with its own notice.
/// Maintenance is on while **any** source is; see the [precedence rule](super#sources).
///
/// Listed in the order that breaks ties between notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Source {
    /// [`MaintenanceSwitch::enable`] and [`disable`](MaintenanceSwitch::disable): your code, a
    /// signal handler, the [admin router](super::admin)'s `PUT` and `DELETE`.
    Manual,
    /// A [`SentinelFile`](super::SentinelFile) that exists.
    File,
    /// The fleet-wide state in Redis that the switch
    /// [follows](MaintenanceSwitch::follow_redis) (feature `redis`): its notice while it says
    /// on, and its own scheduled windows while one is open. The admin router writes here instead
    /// of the manual source when the switch follows Redis.
    Redis,
    /// An open scheduled [`Window`] (given with [`MaintenanceSwitch::schedule`]).
    Scheduled,
}

impl Source {
    /// Every source, in tie-breaking order.
    const ALL: [Source; 4] = [
        Source::Manual,
        Source::File,
        Source::Redis,
        Source::Scheduled,
    ];

    /// The source's name in lowercase, as the admin router shows it: `"manual"`, `"file"`,
    /// `"redis"`, `"scheduled"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Manual => "manual",
            Source::File => "file",
            Source::Redis => "redis",
            Source::Scheduled => "scheduled",
        }
    }

    /// The bit of the state word saying this source is on (scheduled: a window is pending).
    fn bit(self) -> u8 {
        match self {
            Source::Manual => 1,
            Source::File => 4,
            Source::Redis => 8,
            Source::Scheduled => 2,
        }
    }

    /// The slot of [`Inner::held`] holding this source's notice; windows have none.
    fn slot(self) -> Option<usize> {
        match self {
            Source::Manual => Some(0),
            Source::File => Some(1),
            Source::Redis => Some(2),
            Source::Scheduled => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of the switch, from [`MaintenanceSwitch::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintenanceStatus {
    /// Whether new requests get 503 right now (bypass rules aside).
    pub enabled: bool,
    /// Every source that is on right now, in [`Source`] order.
    pub sources: Vec<Source>,
    /// The source whose notice is in force, when on (see the
    /// [precedence rule](super#sources)).
    pub source: Option<Source>,
    /// The notice in force, when on.
    pub notice: Option<MaintenanceNotice>,
    /// The expected end as a wall-clock time, when known.
    pub ends_at: Option<SystemTime>,
    /// How many scheduled windows have not ended yet.
    pub pending_windows: usize,
}

pub(crate) struct Shared {
    /// One [bit](Source::bit) per source that is on (or that has a window pending).
    /// Zero means "off, nothing scheduled": the layer's whole hot path is one load of this word.
    state: AtomicU8,
    inner: RwLock<Inner>,
    clock: Arc<dyn WallClock>,
    /// The Redis state this switch follows, if any. Dropped with the last clone of the switch,
    /// which stops the follower task.
    #[cfg(feature = "redis")]
    pub(crate) redis: std::sync::Mutex<Option<super::redis::Following>>,
}

#[derive(Default)]
struct Inner {
    /// The notice of each source that is switched on and off ([`Source::slot`]), while on.
    held: [Option<MaintenanceNotice>; 3],
    /// Pending windows and the source that gave them ([`Source::Scheduled`] or
    /// [`Source::Redis`]).
    windows: Vec<(Source, Window)>,
}

/// A notice in the running: a held source's, or an open window's (with the end of the run of
/// windows it opens: see [`Inner::run_end`]).
#[derive(Clone, Copy)]
enum Candidate<'a> {
    Held(&'a MaintenanceNotice),
    Window(&'a Window, SystemTime),
}

impl Candidate<'_> {
    fn stated_wait(self, now: SystemTime) -> Option<Duration> {
        match self {
            Candidate::Held(notice) => notice.stated_wait(now),
            Candidate::Window(_, end) => end.duration_since(now).ok(),
        }
    }

    fn notice(self) -> MaintenanceNotice {
        match self {
            Candidate::Held(notice) => notice.clone(),
            Candidate::Window(window, end) => MaintenanceNotice {
                end: Some(End::At(end)),
                ..window.notice()
            },
        }
    }
}

impl Inner {
    /// Every source that is on at `now`, with its notice, in [`Source`] order (several open
    /// windows are all there).
    fn candidates(&self, now: SystemTime) -> impl Iterator<Item = (Source, Candidate<'_>)> {
        Source::ALL.into_iter().flat_map(move |source| {
            let held = source
                .slot()
                .and_then(|slot| self.held[slot].as_ref())
                .map(Candidate::Held);
            let windows = self
                .windows
                .iter()
                .filter(move |(s, w)| *s == source && w.is_open(now))
                .map(|(_, w)| Candidate::Window(w, self.run_end(w)));
            held.into_iter()
                .chain(windows)
                .map(move |candidate| (source, candidate))
        })
    }

    /// The end of the maintenance that `window` is part of: its end, extended through every
    /// pending window (of any source) that opens at or before the end reached so far. Back to
    /// back or overlapping windows are one maintenance, and clients are told to come back at
    /// its end, not into the next window.
    fn run_end(&self, window: &Window) -> SystemTime {
        let mut end = window.end;
        loop {
            let further = self
                .windows
                .iter()
                .filter(|(_, w)| w.start <= end && w.end > end)
                .map(|(_, w)| w.end)
                .max();
            match further {
                Some(further) => end = further,
                None => return end,
            }
        }
    }

    /// The notice in force at `now` and its source: the longest stated wait; a notice that states
    /// none yields to one that does; ties go to the first in [`Source`] order, except between
    /// two open windows of one run, where the one that stays open longer wins.
    fn winner(&self, now: SystemTime) -> Option<(Source, Candidate<'_>)> {
        let mut best: Option<(Source, Candidate<'_>, Option<Duration>)> = None;
        for (source, candidate) in self.candidates(now) {
            let wait = candidate.stated_wait(now);
            // Of two open windows in one run (the same wait), the one that stays open longer.
            let better = |(_, best, w): &(Source, Candidate<'_>, Option<Duration>)| match (
                candidate, best,
            ) {
                (Candidate::Window(a, _), Candidate::Window(b, _)) if wait == *w => a.end > b.end,
                _ => wait > *w,
            };
            if best.as_ref().is_none_or(better) {
                best = Some((source, candidate, wait));
            }
        }
        best.map(|(source, candidate, _)| (source, candidate))
    }
}

/// The handle that turns maintenance mode on and off: cheap to clone (one `Arc`), `Send + Sync`.
///
/// Give clones to a signal handler, an admin endpoint
/// ([`admin::router`](super::admin::router), feature `axum`), a
/// [`SentinelFile`](super::SentinelFile) poller, or your own code; every
/// [`MaintenanceLayer`](super::MaintenanceLayer) built with it sees the change on its next
/// request. Requests already in flight are not affected.
///
/// Each [`Source`] is switched on and off by itself: [`enable`](Self::enable) and
/// [`disable`](Self::disable) (your code, the admin router) drive the manual source, a
/// sentinel file its own, a followed Redis key its own (`follow_redis`, feature `redis`; the
/// admin router then writes there), [`schedule`](Self::schedule) the windows. Maintenance is on while
/// any of them is; [`disable`](Self::disable) does not switch off a sentinel file or a window.
/// See the [precedence rule](super#sources).
///
/// While off with nothing scheduled, a layer checks the switch with a single atomic load. The
/// notice and the windows sit behind a `RwLock` that is read only while maintenance is on or a
/// window is pending, and written only by the methods here.
///
/// ```
/// use std::time::Duration;
/// use tower_5xx::maintenance::{MaintenanceNotice, MaintenanceSwitch};
///
/// let switch = MaintenanceSwitch::new();
/// assert!(!switch.is_enabled());
/// switch.enable_with(MaintenanceNotice::new().retry_after(Duration::from_secs(120)));
/// assert!(switch.clone().is_enabled());
/// switch.disable();
/// assert!(!switch.is_enabled());
/// ```
#[derive(Clone)]
pub struct MaintenanceSwitch {
    shared: Arc<Shared>,
}

impl Default for MaintenanceSwitch {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MaintenanceSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaintenanceSwitch")
            .field("state", &self.shared.state.load(Ordering::Relaxed))
            .field("clock", &self.shared.clock)
            .finish_non_exhaustive()
    }
}

impl MaintenanceSwitch {
    /// A switch that is off, with nothing scheduled, reading the [`SystemClock`].
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// A switch that reads wall-clock time from `clock` (for tests, or a clock of your own).
    pub fn with_clock(clock: impl WallClock) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: AtomicU8::new(0),
                inner: RwLock::new(Inner::default()),
                clock: Arc::new(clock),
                #[cfg(feature = "redis")]
                redis: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The shared state, for a follower task that must not keep the switch alive.
    #[cfg(feature = "redis")]
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.shared)
    }

    /// The switch of `shared`, while any clone of it is alive.
    #[cfg(feature = "redis")]
    pub(crate) fn upgrade(shared: &std::sync::Weak<Shared>) -> Option<Self> {
        shared.upgrade().map(|shared| Self { shared })
    }

    /// The switch's shared state, for the Redis follower bookkeeping.
    #[cfg(feature = "redis")]
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The wall clock this switch reads.
    pub fn clock(&self) -> &dyn WallClock {
        &*self.shared.clock
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // The lock guards plain data that every writer leaves consistent: a poisoned lock is
        // still safe to use, and maintenance must never turn into a panic.
        self.shared
            .inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.shared
            .inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Updates the state word from `inner`; called with the write lock held.
    fn publish(&self, inner: &Inner) {
        let mut state = 0;
        for source in Source::ALL {
            let held = source.slot().is_some_and(|slot| inner.held[slot].is_some());
            if held || inner.windows.iter().any(|(s, _)| *s == source) {
                state |= source.bit();
            }
        }
        self.shared.state.store(state, Ordering::Release);
    }

    /// Turns the manual source on with an empty notice (the layer's default `Retry-After` and
    /// message).
    pub fn enable(&self) {
        self.enable_with(MaintenanceNotice::new());
    }

    /// Turns the manual source on (or replaces its notice while on).
    pub fn enable_with(&self, notice: MaintenanceNotice) {
        self.set(Source::Manual, Some(notice));
    }

    /// Turns the manual source off. Maintenance stays on while another source is on: a
    /// [`SentinelFile`](super::SentinelFile) that exists, an open window.
    pub fn disable(&self) {
        self.set(Source::Manual, None);
    }

    /// Switches `source` on with `notice`, or off with `None`, leaving the other sources alone.
    /// Windows come and go with [`schedule`](Self::schedule), not here.
    pub(crate) fn set(&self, source: Source, notice: Option<MaintenanceNotice>) {
        let Some(slot) = source.slot() else {
            debug_assert!(false, "{source} is not switched by hand");
            return;
        };
        let on = notice.is_some();
        let mut inner = self.write();
        let was_on = std::mem::replace(&mut inner.held[slot], notice).is_some();
        self.publish(&inner);
        drop(inner);
        match (was_on, on) {
            (false, true) => tracing::info!(%source, "maintenance source on"),
            (true, false) => tracing::info!(%source, "maintenance source off"),
            _ => {}
        }
    }

    /// Replaces what `source` holds, at once: its notice (`None`: off) and its windows. Windows
    /// that have already ended are dropped.
    #[cfg(feature = "redis")]
    pub(crate) fn replace(
        &self,
        source: Source,
        notice: Option<MaintenanceNotice>,
        windows: Vec<Window>,
    ) {
        let Some(slot) = source.slot() else {
            debug_assert!(false, "{source} is not switched by hand");
            return;
        };
        let now = self.shared.clock.now();
        let on = notice.is_some();
        let mut inner = self.write();
        let was_on = std::mem::replace(&mut inner.held[slot], notice).is_some();
        inner.windows.retain(|(s, _)| *s != source);
        inner.windows.extend(
            windows
                .into_iter()
                .filter(|w| w.end > now)
                .map(|w| (source, w)),
        );
        self.publish(&inner);
        drop(inner);
        match (was_on, on) {
            (false, true) => tracing::info!(%source, "maintenance source on"),
            (true, false) => tracing::info!(%source, "maintenance source off"),
            _ => {}
        }
    }

    /// Hands what `source` holds over to the sources of this instance, when it stops being
    /// followed: its notice to the manual source (unless the manual source is on with a notice
    /// that the precedence rule prefers), its windows to the scheduled ones.
    #[cfg(feature = "redis")]
    pub(crate) fn hand_over_to_manual(&self, source: Source) {
        let (Some(slot), Some(manual)) = (source.slot(), Source::Manual.slot()) else {
            debug_assert!(false, "{source} is not switched by hand");
            return;
        };
        let now = self.shared.clock.now();
        let mut inner = self.write();
        let held = inner.held[slot].take();
        let handed = held.is_some();
        if let Some(notice) = held {
            let keep_manual = inner.held[manual]
                .as_ref()
                .is_some_and(|m| m.stated_wait(now) >= notice.stated_wait(now));
            if !keep_manual {
                inner.held[manual] = Some(notice);
            }
        }
        for (s, _) in &mut inner.windows {
            if *s == source {
                *s = Source::Scheduled;
            }
        }
        self.publish(&inner);
        drop(inner);
        if handed {
            tracing::info!(%source, "maintenance source handed over to the manual source");
        }
    }

    /// Adds a scheduled window. Windows that have already ended are ignored.
    pub fn schedule(&self, window: Window) {
        if window.end <= self.shared.clock.now() {
            return;
        }
        let mut inner = self.write();
        inner.windows.push((Source::Scheduled, window));
        self.publish(&inner);
    }

    /// Removes every window given with [`schedule`](Self::schedule) (an open one closes at
    /// once). Windows held in Redis are not touched: they follow the Redis key.
    pub fn clear_schedule(&self) {
        let mut inner = self.write();
        inner.windows.retain(|(s, _)| *s != Source::Scheduled);
        self.publish(&inner);
    }

    /// Whether new requests get 503 right now (bypass rules aside): whether any source is on.
    pub fn is_enabled(&self) -> bool {
        self.current().is_some()
    }

    /// A snapshot: on or off, which sources are on, the notice in force and its expected end.
    pub fn status(&self) -> MaintenanceStatus {
        let active = self.active();
        let now = self.shared.clock.now();
        let inner = self.read();
        let mut sources: Vec<Source> = inner.candidates(now).map(|(s, _)| s).collect();
        sources.dedup();
        let pending_windows = inner.windows.len();
        drop(inner);
        let ends_at = active
            .as_ref()
            .and_then(|(notice, _)| notice.ends_at(&*self.shared.clock));
        MaintenanceStatus {
            enabled: active.is_some(),
            sources,
            source: active.as_ref().map(|(_, s)| *s),
            notice: active.map(|(n, _)| n),
            ends_at,
            pending_windows,
        }
    }

    /// Runs `f` with the switch held still (its read lock: no source is switched until `f`
    /// returns), giving it whether maintenance is on at `now`. For the layers' gauge, written
    /// in the order of the switch's changes. `f` must not call the switch. The caller reads
    /// `now` before: the clock is user code, and is never called with the switch locked (a
    /// clock that waits for a thread writing the switch would wait for itself).
    pub(crate) fn hold<R>(&self, now: SystemTime, f: impl FnOnce(bool) -> R) -> R {
        let inner = self.read();
        f(inner.winner(now).is_some())
    }

    /// `true` when off with nothing scheduled: the one atomic load of the layer's hot path.
    #[inline]
    pub(crate) fn is_idle(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == 0
    }

    /// The notice in force, if maintenance is on now.
    pub(crate) fn current(&self) -> Option<MaintenanceNotice> {
        if self.is_idle() {
            return None;
        }
        self.active().map(|(notice, _)| notice)
    }

    /// The notice in force and its source, by the precedence rule.
    fn active(&self) -> Option<(MaintenanceNotice, Source)> {
        let now = self.shared.clock.now();
        let inner = self.read();
        let active = inner
            .winner(now)
            .map(|(source, candidate)| (candidate.notice(), source));
        let any_ended = inner.windows.iter().any(|(_, w)| w.end <= now);
        drop(inner);
        if any_ended {
            // Prune ended windows so that, once the last one is over, the hot path is one
            // atomic load again.
            let mut inner = self.write();
            inner.windows.retain(|(_, w)| w.end > now);
            self.publish(&inner);
        }
        active
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug)]
    struct TestClock(Mutex<SystemTime>);
    impl WallClock for Arc<TestClock> {
        fn now(&self) -> SystemTime {
            *self.0.lock().unwrap()
        }
    }

    /// The latest instant an HTTP-date can name: 9999-12-31 23:59:59 UTC.
    fn end_of_9999() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799)
    }

    /// An end set from code past the year 9999 is kept at the latest HTTP-date, so a status can
    /// always be written as one (the admin router's `GET` used to panic formatting it).
    #[test]
    fn an_end_past_the_year_9999_is_kept_at_the_latest_http_date() {
        let switch = MaintenanceSwitch::new();
        let far = end_of_9999() + Duration::from_secs(400 * 24 * 3600);
        switch.enable_with(MaintenanceNotice::new().until(far));
        assert_eq!(switch.status().ends_at, Some(end_of_9999()));
        let formatted = httpdate::fmt_http_date(switch.status().ends_at.unwrap());
        assert_eq!(formatted, "Fri, 31 Dec 9999 23:59:59 GMT");
        // A deadline read against a clock near the end of 9999 too.
        let clock = Arc::new(TestClock(Mutex::new(end_of_9999())));
        let switch = MaintenanceSwitch::with_clock(clock);
        switch.enable_with(MaintenanceNotice::new().ends_in(Duration::from_secs(3600)));
        assert_eq!(switch.status().ends_at, Some(end_of_9999()));
    }

    /// A window ending past the year 9999 is refused when it is made, with a reason.
    #[test]
    fn a_window_ending_past_the_year_9999_is_refused() {
        let start = end_of_9999() - Duration::from_secs(10);
        let err = Window::new(start, end_of_9999() + Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "maintenance window ends after the latest HTTP-date (9999-12-31 23:59:59 UTC)"
        );
        assert!(Window::new(start, end_of_9999()).is_ok());
    }

    #[test]
    fn windows_open_close_and_are_pruned() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = Arc::new(TestClock(Mutex::new(t0)));
        let switch = MaintenanceSwitch::with_clock(clock.clone());
        let w = Window::new(t0 + Duration::from_secs(10), t0 + Duration::from_secs(20)).unwrap();
        switch.schedule(w);
        assert!(!switch.is_idle());
        assert!(!switch.is_enabled());
        *clock.0.lock().unwrap() = t0 + Duration::from_secs(10);
        let status = switch.status();
        assert!(status.enabled);
        assert_eq!(status.source, Some(Source::Scheduled));
        assert_eq!(status.ends_at, Some(t0 + Duration::from_secs(20)));
        *clock.0.lock().unwrap() = t0 + Duration::from_secs(20);
        assert!(!switch.is_enabled());
        assert!(switch.is_idle(), "an ended window is pruned");
    }

    #[test]
    fn manual_wins_and_past_windows_are_ignored() {
        let switch = MaintenanceSwitch::new();
        let past = SystemTime::now() - Duration::from_secs(100);
        switch.schedule(Window::new(past, past + Duration::from_secs(1)).unwrap());
        assert!(switch.is_idle());
        switch.enable_with(MaintenanceNotice::new().message("m"));
        assert_eq!(switch.status().source, Some(Source::Manual));
        assert_eq!(switch.current().unwrap().get_message(), Some("m"));
        switch.disable();
        assert!(switch.is_idle());
    }

    #[test]
    fn on_while_any_source_is_on() {
        let switch = MaintenanceSwitch::new();
        let file = || Some(MaintenanceNotice::new().message("from the file"));

        // File on, manual off: still on.
        switch.set(Source::File, file());
        switch.disable();
        assert!(switch.is_enabled());
        assert_eq!(switch.status().sources, [Source::File]);

        // Manual on, file off: still on.
        switch.enable();
        switch.set(Source::File, None);
        assert!(switch.is_enabled());
        assert_eq!(switch.status().sources, [Source::Manual]);

        // Both on, then both off.
        switch.set(Source::File, file());
        let status = switch.status();
        assert_eq!(status.sources, [Source::Manual, Source::File]);
        assert!(status.enabled);
        switch.disable();
        assert!(switch.is_enabled());
        switch.set(Source::File, None);
        assert!(!switch.is_enabled());
        assert!(switch.is_idle(), "back to the one-load hot path");
        let status = switch.status();
        assert!(status.sources.is_empty());
        assert_eq!(status.source, None);
        assert_eq!(status.notice, None);
    }

    #[test]
    fn the_longest_wait_wins() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = Arc::new(TestClock(Mutex::new(t0)));
        let switch = MaintenanceSwitch::with_clock(clock.clone());
        let secs = Duration::from_secs;
        let in_force = |switch: &MaintenanceSwitch| {
            let status = switch.status();
            (
                status.source,
                status.notice.unwrap().get_message().map(str::to_owned),
            )
        };
        let manual = |s: &str| Some(s.to_owned());

        // Neither states a wait: the first in order (manual).
        switch.enable_with(MaintenanceNotice::new().message("manual"));
        switch.set(Source::File, Some(MaintenanceNotice::new().message("file")));
        assert_eq!(in_force(&switch), (Some(Source::Manual), manual("manual")));

        // One that states a wait beats one that does not.
        switch.set(
            Source::File,
            Some(
                MaintenanceNotice::new()
                    .retry_after(secs(10))
                    .message("file"),
            ),
        );
        assert_eq!(in_force(&switch), (Some(Source::File), Some("file".into())));

        // The longer wait wins, whether an end or a hint; the notice wins whole.
        switch.enable_with(
            MaintenanceNotice::new()
                .until(t0 + secs(300))
                .message("manual"),
        );
        assert_eq!(in_force(&switch), (Some(Source::Manual), manual("manual")));
        assert_eq!(switch.status().ends_at, Some(t0 + secs(300)));
        switch.set(
            Source::File,
            Some(
                MaintenanceNotice::new()
                    .retry_after(secs(600))
                    .message("file"),
            ),
        );
        assert_eq!(in_force(&switch), (Some(Source::File), Some("file".into())));

        // An open window ending later wins; of two open windows, the later end.
        switch.schedule(Window::new(t0, t0 + secs(900)).unwrap().message("window 1"));
        switch.schedule(
            Window::new(t0, t0 + secs(1200))
                .unwrap()
                .message("window 2"),
        );
        assert_eq!(
            in_force(&switch),
            (Some(Source::Scheduled), Some("window 2".into()))
        );
        assert_eq!(
            switch.status().sources,
            [Source::Manual, Source::File, Source::Scheduled]
        );

        // Time passes: the manual end has passed and it states no other wait; the file's hint
        // (600 s) now beats the window's 200 s left.
        *clock.0.lock().unwrap() = t0 + secs(1000);
        assert_eq!(in_force(&switch), (Some(Source::File), Some("file".into())));

        // Ties go to the first in order.
        switch.enable_with(
            MaintenanceNotice::new()
                .retry_after(secs(600))
                .message("manual"),
        );
        assert_eq!(in_force(&switch), (Some(Source::Manual), manual("manual")));
    }

    /// Redis is a source like the others: its notice and its windows compete by the one rule,
    /// and replacing them leaves the local sources (and local windows) alone.
    #[cfg(feature = "redis")]
    #[test]
    fn redis_is_one_more_source() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = Arc::new(TestClock(Mutex::new(t0)));
        let switch = MaintenanceSwitch::with_clock(clock.clone());
        let secs = Duration::from_secs;
        switch.set(
            Source::File,
            Some(MaintenanceNotice::new().retry_after(secs(60))),
        );
        switch.schedule(Window::new(t0 + secs(10), t0 + secs(20)).unwrap());
        switch.replace(
            Source::Redis,
            Some(MaintenanceNotice::new().retry_after(secs(120))),
            vec![
                Window::new(t0, t0 + secs(300))
                    .unwrap()
                    .message("fleet window"),
                // Already over: dropped.
                Window::new(t0 - secs(20), t0 - secs(10)).unwrap(),
            ],
        );
        let status = switch.status();
        assert_eq!(status.sources, [Source::File, Source::Redis]);
        assert_eq!(status.source, Some(Source::Redis));
        assert_eq!(status.notice.unwrap().get_message(), Some("fleet window"));
        assert_eq!(status.pending_windows, 2);

        // Redis off but its window open: still on; a local clear_schedule leaves it.
        switch.replace(
            Source::Redis,
            None,
            vec![Window::new(t0, t0 + secs(300)).unwrap()],
        );
        switch.clear_schedule();
        assert_eq!(switch.status().pending_windows, 1);
        assert_eq!(switch.status().sources, [Source::File, Source::Redis]);

        // Redis off, no windows: only the file remains.
        switch.replace(Source::Redis, None, Vec::new());
        assert_eq!(switch.status().sources, [Source::File]);
        switch.set(Source::File, None);
        assert!(switch.is_idle());
    }

    #[test]
    fn invalid_window() {
        let t = SystemTime::now();
        assert!(Window::new(t, t).is_err());
        assert!(Window::new(t + Duration::from_secs(1), t).is_err());
    }
}
