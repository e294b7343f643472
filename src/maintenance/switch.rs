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
    #[must_use]
    pub fn until(mut self, end: SystemTime) -> Self {
        self.end = Some(End::At(end));
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
    /// `clock`'s current time).
    pub fn ends_at(&self, clock: &dyn WallClock) -> Option<SystemTime> {
        match self.end? {
            End::At(t) => Some(t),
            End::Deadline(d) => {
                let left = d.saturating_duration_since(Instant::now());
                clock.now().checked_add(left)
            }
        }
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
/// While a window is open, clients get 503 with `Retry-After` equal to the time left until `end`.
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
    /// A window from `start` to `end`. Fails if `end` is not after `start`.
    pub fn new(start: SystemTime, end: SystemTime) -> Result<Self, InvalidWindow> {
        if end <= start {
            return Err(InvalidWindow::new());
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

/// Why maintenance is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// [`MaintenanceSwitch::enable`] (from code, an admin endpoint or a sentinel file).
    Manual,
    /// A scheduled [`Window`] is open.
    Scheduled,
}

/// A snapshot of the switch, from [`MaintenanceSwitch::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintenanceStatus {
    /// Whether new requests get 503 right now (bypass rules aside).
    pub enabled: bool,
    /// Why it is on, when it is.
    pub source: Option<Source>,
    /// The notice in force, when on.
    pub notice: Option<MaintenanceNotice>,
    /// The expected end as a wall-clock time, when known.
    pub ends_at: Option<SystemTime>,
    /// How many scheduled windows have not ended yet.
    pub pending_windows: usize,
}

/// Bit of the state word: switched on by hand.
const MANUAL: u8 = 1;
/// Bit of the state word: at least one scheduled window has not ended yet.
const SCHEDULED: u8 = 2;

struct Shared {
    /// `MANUAL | SCHEDULED`. Zero means "off, nothing scheduled": the layer's whole hot path is
    /// one load of this word.
    state: AtomicU8,
    inner: RwLock<Inner>,
    clock: Arc<dyn WallClock>,
}

#[derive(Default)]
struct Inner {
    manual: Option<MaintenanceNotice>,
    windows: Vec<Window>,
}

/// The handle that turns maintenance mode on and off: cheap to clone (one `Arc`), `Send + Sync`.
///
/// Give clones to a signal handler, an admin endpoint
/// ([`admin::router`](super::admin::router), feature `axum`), a
/// [`SentinelFile`](super::SentinelFile) poller, or your own code; every
/// [`MaintenanceLayer`](super::MaintenanceLayer) built with it sees the change on its next
/// request. Requests already in flight are not affected.
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
            }),
        }
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
        if inner.manual.is_some() {
            state |= MANUAL;
        }
        if !inner.windows.is_empty() {
            state |= SCHEDULED;
        }
        self.shared.state.store(state, Ordering::Release);
    }

    /// Turns maintenance on with an empty notice (the layer's default `Retry-After` and message).
    pub fn enable(&self) {
        self.enable_with(MaintenanceNotice::new());
    }

    /// Turns maintenance on (or replaces the notice while on).
    pub fn enable_with(&self, notice: MaintenanceNotice) {
        let mut inner = self.write();
        inner.manual = Some(notice);
        self.publish(&inner);
        drop(inner);
        tracing::info!("maintenance mode enabled");
    }

    /// Turns manual maintenance off. Scheduled windows still open and close by themselves.
    pub fn disable(&self) {
        let mut inner = self.write();
        let was_on = inner.manual.take().is_some();
        self.publish(&inner);
        drop(inner);
        if was_on {
            tracing::info!("maintenance mode disabled");
        }
    }

    /// Adds a scheduled window. Windows that have already ended are ignored.
    pub fn schedule(&self, window: Window) {
        if window.end <= self.shared.clock.now() {
            return;
        }
        let mut inner = self.write();
        inner.windows.push(window);
        self.publish(&inner);
    }

    /// Removes every scheduled window (an open one closes at once).
    pub fn clear_schedule(&self) {
        let mut inner = self.write();
        inner.windows.clear();
        self.publish(&inner);
    }

    /// Whether new requests get 503 right now (bypass rules aside).
    pub fn is_enabled(&self) -> bool {
        self.current().is_some()
    }

    /// A snapshot: on or off, why, the notice and the expected end.
    pub fn status(&self) -> MaintenanceStatus {
        let active = self.active();
        let pending_windows = self.read().windows.len();
        let ends_at = active
            .as_ref()
            .and_then(|(notice, _)| notice.ends_at(&*self.shared.clock));
        MaintenanceStatus {
            enabled: active.is_some(),
            source: active.as_ref().map(|(_, s)| *s),
            notice: active.map(|(n, _)| n),
            ends_at,
            pending_windows,
        }
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

    fn active(&self) -> Option<(MaintenanceNotice, Source)> {
        let inner = self.read();
        if let Some(notice) = &inner.manual {
            return Some((notice.clone(), Source::Manual));
        }
        if inner.windows.is_empty() {
            return None;
        }
        let now = self.shared.clock.now();
        if let Some(w) = inner.windows.iter().find(|w| w.is_open(now)) {
            return Some((w.notice(), Source::Scheduled));
        }
        let any_ended = inner.windows.iter().any(|w| w.end <= now);
        drop(inner);
        if any_ended {
            // Prune ended windows so that, once the last one is over, the hot path is one
            // atomic load again.
            let mut inner = self.write();
            inner.windows.retain(|w| w.end > now);
            self.publish(&inner);
        }
        None
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
    fn invalid_window() {
        let t = SystemTime::now();
        assert!(Window::new(t, t).is_err());
        assert!(Window::new(t + Duration::from_secs(1), t).is_err());
    }
}
