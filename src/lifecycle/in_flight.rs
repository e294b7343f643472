//! The count of requests in flight in [`Lifecycle::serve`](super::Lifecycle::serve), for the
//! grace deadline's report.

use std::sync::Arc;

use super::sync::{AtomicUsize, Ordering};

/// How many requests are running: each counts from [`enter`](Self::enter) until
/// [`exit`](Self::exit), when its response future is done or dropped.
#[derive(Clone)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(crate) fn new() -> Self {
        Self(Arc::new(AtomicUsize::new(0)))
    }

    /// Counts one more request, until [`exit`](Self::exit). Relaxed: the count is only read
    /// for the report, after the grace period.
    pub(crate) fn enter(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request less.
    pub(crate) fn exit(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The requests running now.
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}
