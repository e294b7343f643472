//! The wait queue: the requests waiting for a permit, oldest first.
//!
//! A plain `VecDeque` behind the limiter's mutex, touched only when requests wait: joining,
//! leaving, and handing a released permit to the oldest waiter. Each waiter gets a one-shot
//! channel through which the permit is handed to it, so a permit never goes back to the pool
//! while someone waits, and a new arrival cannot take it first.

use std::{collections::VecDeque, time::Duration};

use tokio::{sync::oneshot, time::Instant};

use super::limiter::Permit;

/// One waiting request: its number in the line and the channel its permit is sent through.
#[derive(Debug)]
struct Waiter {
    id: u64,
    grant: oneshot::Sender<Permit>,
}

/// The waiting requests in arrival order. Ids grow with every arrival, so the queue is sorted
/// by id and a waiter that leaves is found by binary search.
#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    waiters: VecDeque<Waiter>,
    next_id: u64,
    /// Since when the queue has held a waiter without a break (`None` while empty).
    nonempty_since: Option<Instant>,
    /// When a waiter last gave up at its deadline without a permit.
    timed_out_at: Option<Instant>,
}

impl WaitQueue {
    pub(crate) fn len(&self) -> usize {
        self.waiters.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// How long the queue has held a waiter without a break, as of `now` (zero while empty).
    fn nonempty_for(&self, now: Instant) -> Duration {
        self.nonempty_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Whether the queue is standing as of `now`: it has held a waiter without a break for
    /// `after`, or a waiter gave up at its deadline within `after` (the queue did not drain
    /// in time: under sustained overload it can still empty now and then, when several
    /// requests finish at once).
    pub(crate) fn is_standing(&self, now: Instant, after: Duration) -> bool {
        self.nonempty_for(now) >= after
            || self
                .timed_out_at
                .is_some_and(|at| now.saturating_duration_since(at) < after)
    }

    /// Notes that a waiter gave up at its deadline, at `now`.
    pub(crate) fn note_timeout(&mut self, now: Instant) {
        self.timed_out_at = Some(now);
    }

    /// Joins at the back (at `now`): the waiter's id, and where its permit will arrive.
    pub(crate) fn push(&mut self, now: Instant) -> (u64, oneshot::Receiver<Permit>) {
        if self.waiters.is_empty() {
            self.nonempty_since = Some(now);
        }
        let id = self.next_id;
        self.next_id += 1;
        let (grant, receiver) = oneshot::channel();
        self.waiters.push_back(Waiter { id, grant });
        (id, receiver)
    }

    /// Removes a waiter that gives up (timed out, or its request was dropped). `false` if it is
    /// no longer in the queue: a permit was sent to it.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        match self.waiters.binary_search_by_key(&id, |w| w.id) {
            Ok(index) => {
                self.waiters.remove(index);
                self.note_if_empty();
                true
            }
            Err(_) => false,
        }
    }

    /// Sends `permit` to the oldest waiter, which leaves the queue. Gives the permit back if
    /// nobody waits.
    pub(crate) fn hand_over(&mut self, mut permit: Permit) -> Result<(), Permit> {
        while let Some(waiter) = self.waiters.pop_front() {
            // A waiter removes itself before it drops its receiver, so this only fails if
            // that promise is broken; the next waiter gets the permit then.
            match waiter.grant.send(permit) {
                Ok(()) => {
                    self.note_if_empty();
                    return Ok(());
                }
                Err(unsent) => permit = unsent,
            }
        }
        self.note_if_empty();
        Err(permit)
    }

    fn note_if_empty(&mut self) {
        if self.waiters.is_empty() {
            self.nonempty_since = None;
        }
    }
}
