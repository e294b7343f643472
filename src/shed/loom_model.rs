//! Model checks of the shed limiter's permits and its first-come, first-served hand-off with
//! `loom`: every interleaving (up to a preemption bound) of a release, a new arrival, a waiter
//! joining or leaving the queue, and a raised limit.
//!
//! ```text
//! RUSTFLAGS="--cfg tower_5xx_loom" cargo test --lib shed::loom_model
//! ```
//!
//! The limiter's atomics and the wait queue's mutex are loom's under
//! `cfg(all(test, tower_5xx_loom))` (see `sync` in the module root). The one-shot channel a
//! permit travels through is tokio's, which loom cannot see into: it is sent to only under the
//! queue's mutex, and each send or receive runs as one step of the model.

use std::{
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use loom::thread;

use super::{
    limit::Limit,
    limiter::{Config, Permit, Shared, Ticket},
    Priority,
};
use crate::refuse::RefusalPolicy;

/// Runs `f` under loom with a preemption bound that keeps each model to seconds in a debug
/// build.
fn check(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

fn shared(limit: usize) -> Arc<Shared> {
    let config = Config {
        limit: Limit::from(limit),
        max_queue: 4,
        low_priority_queue: 2,
        max_wait: Duration::from_secs(1),
        standing_wait: Duration::from_secs(1),
    };
    Arc::new(Shared::new(
        config,
        RefusalPolicy::default(),
        crate::telemetry::Meter::default(),
    ))
}

fn take(shared: &Arc<Shared>) -> Permit {
    assert!(shared.try_acquire_fast().is_some());
    Permit::taken(Arc::clone(shared))
}

/// What a request gets on arrival: a permit at once, or a place in the queue.
enum Arrival {
    Running(Permit),
    Waiting(Ticket),
}

/// Arrives as the service does: the fast path, else the queue.
fn arrive(shared: &Arc<Shared>) -> Arrival {
    if shared.try_acquire_fast().is_some() {
        Arrival::Running(Permit::taken(Arc::clone(shared)))
    } else {
        Arrival::Waiting(shared.enqueue(Priority::Normal).expect("room in the queue"))
    }
}

fn poll(ticket: &mut Ticket) -> Poll<Option<Permit>> {
    ticket.poll_permit(&mut Context::from_waker(Waker::noop()))
}

/// The permit of a waiter that must have been handed one by now.
fn granted(mut ticket: Ticket) -> Permit {
    match poll(&mut ticket) {
        Poll::Ready(Some(permit)) => permit,
        other => panic!("a waiter was left without the free permit: {other:?}"),
    }
}

fn counts(shared: &Shared) -> (usize, usize) {
    (shared.in_flight(), shared.queued())
}

/// A permit given back while a request arrives and queues: the arrival runs, at once or by a
/// hand-off; the permit is never lost between the release and the queue.
#[test]
fn a_release_and_an_arrival_never_lose_the_permit() {
    check(|| {
        let shared = shared(1);
        let running = take(&shared);
        let releaser = thread::spawn(move || drop(running));
        let s = shared.clone();
        let arrival = thread::spawn(move || arrive(&s));
        releaser.join().unwrap();
        let permit = match arrival.join().unwrap() {
            Arrival::Running(permit) => permit,
            Arrival::Waiting(ticket) => granted(ticket),
        };
        assert_eq!(counts(&shared), (1, 0));
        drop(permit);
        assert_eq!(counts(&shared), (0, 0));
    });
}

/// First come, first served: a permit given back while a request waits goes to it; a new
/// arrival at that moment never takes it.
#[test]
fn a_new_arrival_never_takes_the_permit_of_a_waiter() {
    check(|| {
        let shared = shared(1);
        let running = take(&shared);
        let waiter = shared.enqueue(Priority::Normal).unwrap();
        let releaser = thread::spawn(move || drop(running));
        let s = shared.clone();
        let newcomer = thread::spawn(move || s.try_acquire_fast().is_some());
        releaser.join().unwrap();
        assert!(!newcomer.join().unwrap(), "the newcomer jumped the queue");
        let permit = granted(waiter);
        assert_eq!(counts(&shared), (1, 0));
        drop(permit);
        assert_eq!(counts(&shared), (0, 0));
    });
}

/// A limit raised while a request joins the queue: the new permit reaches that request (it
/// takes it while joining, or the raise hands it over). Fails without the full fences in
/// `store_limit` and `enqueue` (store buffering: each side misses the other's write).
#[test]
fn a_raised_limit_reaches_a_request_joining_the_queue() {
    check(|| {
        let shared = shared(1);
        let running = take(&shared);
        let s = shared.clone();
        let raiser = thread::spawn(move || s.set_limit(2));
        let s = shared.clone();
        let arrival = thread::spawn(move || arrive(&s));
        raiser.join().unwrap();
        let permit = match arrival.join().unwrap() {
            Arrival::Running(permit) => permit,
            Arrival::Waiting(ticket) => granted(ticket),
        };
        assert_eq!(counts(&shared), (2, 0));
        drop((permit, running));
        assert_eq!(counts(&shared), (0, 0));
    });
}

/// The oldest waiter gives up (its deadline) while the running request gives its permit back:
/// if the permit reached it first, it keeps it; either way the next waiter is served once the
/// permits are back, and nothing is counted twice.
#[test]
fn a_waiter_leaving_while_a_permit_is_released_passes_nothing_twice() {
    check(|| {
        let shared = shared(1);
        let running = take(&shared);
        let mut first = shared.enqueue(Priority::Normal).unwrap();
        let second = shared.enqueue(Priority::Normal).unwrap();
        let releaser = thread::spawn(move || drop(running));
        let leaver = thread::spawn(move || {
            let kept = first.leave();
            drop(first);
            kept
        });
        releaser.join().unwrap();
        let kept = leaver.join().unwrap();
        match kept {
            // The hand-off won: the first waiter runs, the second still waits.
            Some(permit) => {
                assert_eq!(counts(&shared), (1, 1));
                drop(permit);
            }
            // The first left in time: the released permit went to the second.
            None => assert_eq!(counts(&shared), (1, 0)),
        }
        let permit = granted(second);
        assert_eq!(counts(&shared), (1, 0));
        drop(permit);
        assert_eq!(counts(&shared), (0, 0));
    });
}
