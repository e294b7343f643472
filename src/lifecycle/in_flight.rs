//! The count of requests in flight in [`Lifecycle::serve`](super::Lifecycle::serve), for the
//! grace deadline's report.

use std::sync::Arc;

use super::sync::{AtomicUsize, Ordering};

/// How many requests are running: each holds a [`Guard`] from [`enter`](Self::enter) until
/// its response future is done or dropped.
#[derive(Clone)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(crate) fn new() -> Self {
        Self(Arc::new(AtomicUsize::new(0)))
    }

    /// Counts one more request, until the guard is dropped. Relaxed: the count is only read
    /// for the report, after the grace period.
    pub(crate) fn enter(&self) -> Guard {
        self.0.fetch_add(1, Ordering::Relaxed);
        Guard(self.0.clone())
    }

    /// The requests running now.
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One request in flight; dropping it (on any thread) ends the count.
pub(crate) struct Guard(Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
