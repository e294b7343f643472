//! Model checks of the breaker's lock-free protocols with `loom`: every interleaving (up to a
//! preemption bound) of a few threads on the state word, the half-open probe counters and the
//! window's buckets.
//!
//! ```text
//! RUSTFLAGS="--cfg tower_5xx_loom" cargo test --lib breaker::loom_model
//! ```
//!
//! The breaker's atomics are loom's under `cfg(all(test, tower_5xx_loom))` (see `sync` in the
//! module root; not the customary `cfg(loom)`, which changes tokio and breaks the
//! dev-dependencies); the clock is a [`ManualClock`], moved only by the model's main thread.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use loom::thread;

use super::{
    config::WindowKind, window::Window, CircuitBreaker, ManualClock, SlidingWindow, State,
};

const SEC: u64 = 1_000_000_000;

/// Runs `f` under loom with a preemption bound that keeps each model well under a minute in a
/// release build.
fn check(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// Transitions seen by the callback, as (from, to).
type Seen = Arc<Mutex<Vec<(State, State)>>>;

/// A breaker (one-second time window, so that concurrent calls share a bucket) whose open time
/// is up: the next call makes it half-open. Trips on 50 % failures from `minimum_calls`.
fn breaker(probes: u32, minimum_calls: u32) -> (CircuitBreaker, ManualClock, Seen) {
    let clock = ManualClock::new();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Time(Duration::from_secs(2)))
        .buckets(2)
        .minimum_calls(minimum_calls)
        .failure_rate_threshold(0.5)
        .open_duration(Duration::from_secs(1))
        .half_open_probes(probes)
        .clock(clock.clone())
        .on_transition(move |t| log.lock().unwrap().push((t.from, t.to)))
        .build()
        .unwrap();
    (breaker, clock, seen)
}

fn open_and_expired(probes: u32) -> (CircuitBreaker, Seen) {
    let (breaker, clock, seen) = breaker(probes, 1);
    breaker.trip_for(Duration::from_secs(1));
    clock.advance(Duration::from_secs(1));
    seen.lock().unwrap().clear();
    (breaker, seen)
}

fn count(seen: &Seen, transition: (State, State)) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|t| **t == transition)
        .count()
}

/// Two callers find the open time up: one makes the breaker half-open (once), and exactly the
/// one configured probe is handed out.
#[test]
fn the_half_open_transition_and_its_probe_happen_once() {
    check(|| {
        let (breaker, seen) = open_and_expired(1);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let b = breaker.clone();
                thread::spawn(move || b.try_acquire().ok())
            })
            .collect();
        let probes: Vec<_> = threads
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(probes.len(), 1);
        assert!(probes[0].is_probe());
        assert_eq!(count(&seen, (State::Open, State::HalfOpen)), 1);
        for p in probes {
            p.success();
        }
        assert_eq!(breaker.state(), State::Closed);
    });
}

/// A probe given back (dropped unreported) frees exactly its own slot, whatever the
/// interleaving with another caller taking one.
#[test]
fn a_dropped_probe_frees_exactly_one_slot() {
    check(|| {
        let (breaker, _) = open_and_expired(2);
        let first = breaker.try_acquire().unwrap();
        let b = breaker.clone();
        let dropper = thread::spawn(move || {
            if let Ok(p) = b.try_acquire() {
                drop(p);
            }
        });
        let b = breaker.clone();
        let taker = thread::spawn(move || b.try_acquire().ok());
        dropper.join().unwrap();
        let taken = taker.join().unwrap();
        let mut held = vec![first];
        held.extend(taken);
        // Whatever happened, the slots left are the probes not held.
        let more: Vec<_> = (0..3).filter_map(|_| breaker.try_acquire().ok()).collect();
        assert_eq!(held.len() + more.len(), 2);
        assert_eq!(breaker.state(), State::HalfOpen);
        for p in held.into_iter().chain(more) {
            assert!(p.is_probe());
            p.success();
        }
        assert_eq!(breaker.state(), State::Closed);
    });
}

/// The two probes' outcomes, reported at once, are both counted and decide once: one failure
/// in two reaches the 50 % threshold, so the breaker opens again, exactly once.
#[test]
fn concurrent_probe_outcomes_decide_once() {
    check(|| {
        let (breaker, seen) = open_and_expired(2);
        let a = breaker.try_acquire().unwrap();
        let b = breaker.try_acquire().unwrap();
        let ok = thread::spawn(move || a.success());
        let failed = thread::spawn(move || b.failure());
        ok.join().unwrap();
        failed.join().unwrap();
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(count(&seen, (State::HalfOpen, State::Open)), 1);
        assert_eq!(seen.lock().unwrap().len(), 2, "half-open, then open");
    });
}

/// The last probe's success races an operator's `force_open` and a `trip_for`: the operator
/// wins in the end (forced open is left only by `reset`), and a probe recorded after a
/// transition away from its half-open state is ignored.
#[test]
fn the_last_probe_races_the_operator_and_a_trip() {
    check(|| {
        let (breaker, seen) = open_and_expired(1);
        let probe = breaker.try_acquire().unwrap();
        let prober = thread::spawn(move || probe.success());
        let b = breaker.clone();
        let operator = thread::spawn(move || b.force_open());
        let b = breaker.clone();
        let tripper = thread::spawn(move || b.trip_for(Duration::from_secs(5)));
        prober.join().unwrap();
        operator.join().unwrap();
        tripper.join().unwrap();
        assert_eq!(breaker.state(), State::ForcedOpen);
        let closed = count(&seen, (State::HalfOpen, State::Closed));
        assert!(closed <= 1);
        assert_eq!(
            breaker.try_acquire().unwrap_err().state(),
            State::ForcedOpen
        );
        breaker.reset();
        assert!(!breaker.try_acquire().unwrap().is_probe());
    });
}

/// Two failures recorded at once in a closed breaker that opens at two calls: both are counted,
/// and the breaker opens exactly once.
#[test]
fn concurrent_failures_trip_once() {
    check(|| {
        let (breaker, _, seen) = breaker(1, 2);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let b = breaker.clone();
                thread::spawn(move || b.try_acquire().unwrap().failure())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(*seen.lock().unwrap(), [(State::Closed, State::Open)]);
    });
}

fn two_buckets() -> Arc<Window> {
    Arc::new(Window::new(WindowKind::Time {
        bucket_nanos: SEC,
        buckets: 2,
    }))
}

/// A reader never sees more failures or slow calls than calls, while two outcomes are recorded
/// into the bucket it reads.
#[test]
fn a_bucket_never_reads_more_failures_than_calls() {
    check(|| {
        let window = two_buckets();
        let writers: Vec<_> = [(true, false), (true, true)]
            .into_iter()
            .map(|(failure, slow)| {
                let w = window.clone();
                thread::spawn(move || {
                    w.record(0, failure, slow, false);
                })
            })
            .collect();
        let c = window.counts(0);
        assert!(c.failures <= c.calls && c.slow_calls <= c.calls, "{c:?}");
        for t in writers {
            t.join().unwrap();
        }
        let c = window.counts(0);
        assert_eq!((c.calls, c.failures, c.slow_calls), (2, 2, 1));
    });
}

/// An outcome recorded into a bucket while a caller a whole window later takes the bucket over
/// either lands before the takeover (and is wiped by it) or is too old to count: it never
/// counts in the newer epoch (a caller delayed between reading a bucket's tag and adding to
/// it used to add its stale outcome to the new epoch).
#[test]
fn a_stale_outcome_never_counts_in_the_bucket_that_replaced_its_own() {
    check(|| {
        let window = two_buckets();
        let w = window.clone();
        let stale = thread::spawn(move || {
            w.record(0, true, false, false);
        });
        window.record(2 * SEC, false, false, false);
        stale.join().unwrap();
        let c = window.counts(2 * SEC);
        assert_eq!((c.calls, c.failures), (1, 0));
    });
}

/// Two failures recorded at once into adjacent buckets of a count window (one call a bucket):
/// whichever caller sums last sees both. Fails if a caller sums as of its own bucket when a
/// newer one exists, or without the full fence between adding and summing (store buffering:
/// each caller's sum misses the other's add).
#[test]
fn failures_into_adjacent_buckets_are_summed_together() {
    check(|| {
        let window = Arc::new(Window::new(WindowKind::Count {
            bucket_len: 1,
            buckets: 2,
        }));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let w = window.clone();
                thread::spawn(move || w.record(0, true, false, true).unwrap())
            })
            .collect();
        let sums: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(
            sums.iter().any(|c| (c.calls, c.failures) == (2, 2)),
            "{sums:?}"
        );
    });
}

/// The same through the breaker: a count window of two calls in two buckets that opens at two
/// failures opens when the second concurrent failure is recorded, exactly once.
#[test]
fn concurrent_failures_in_a_count_window_trip_at_once() {
    check(|| {
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let breaker = CircuitBreaker::builder()
            .sliding_window(SlidingWindow::Count(2))
            .buckets(2)
            .minimum_calls(2)
            .failure_rate_threshold(1.0)
            .clock(ManualClock::new())
            .on_transition(move |t| log.lock().unwrap().push((t.from, t.to)))
            .build()
            .unwrap();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let b = breaker.clone();
                thread::spawn(move || b.try_acquire().unwrap().failure())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(*seen.lock().unwrap(), [(State::Closed, State::Open)]);
    });
}

/// A reset (two stores, phase then offset) racing a recorder that read its clock
/// at the reset's instant, in a time window whose buckets do not start at the reset. Whatever
/// the interleaving, the window never reads more failures than calls nor more than the two
/// outcomes; an outcome recorded after the reset counts for a full window from the reset and
/// then falls out; the stale outcome never outlives it.
#[test]
fn a_reset_racing_a_record_files_it_in_an_old_or_the_first_bucket() {
    check(|| {
        let window = two_buckets();
        let half = SEC / 2;
        window.record(0, false, false, false);
        let w = window.clone();
        let racer = thread::spawn(move || {
            w.record(half, true, false, false);
        });
        window.reset(half);
        racer.join().unwrap();
        window.record(half, false, false, false);
        let c = window.counts(half);
        assert!(
            c.calls >= 1 && c.calls <= 2 && c.failures <= c.calls,
            "{c:?}"
        );
        // A full window (two buckets) from the reset: the post-reset outcome still counts.
        let c = window.counts(half + 2 * SEC - 1);
        assert!(c.calls >= 1, "{c:?}");
        // Past it, nothing from then counts any more.
        let c = window.counts(half + 3 * SEC);
        assert_eq!(c.calls, 0, "{c:?}");
    });
}

/// A success that moves a time window on (dropping a bucket of two successes) races a failure
/// recorded into the bucket before it, the only failure in the window. The success skips
/// summing when it sees no failure in the window; then the failure's own sum must be the one
/// that sees the window moved on (its failure without the dropped successes). Fails without the
/// full fences between adding and reading on both sides: the success reads no failure, the
/// failure reads the old head, and no sum ever shows the raised rate.
#[test]
fn a_success_that_skips_summing_leaves_the_moved_window_to_a_racing_failure() {
    check(|| {
        let window = two_buckets();
        window.record(SEC / 2, false, false, false);
        window.record(SEC / 2, false, false, false);
        let w = window.clone();
        let failure = thread::spawn(move || w.record(SEC + SEC / 2, true, false, true).unwrap());
        let success = window.record(2 * SEC + SEC / 2, false, false, false);
        let failure = failure.join().unwrap();
        assert!(
            [Some(failure), success]
                .iter()
                .flatten()
                .any(|c| c.failures == 1 && c.calls <= 2),
            "failure's sum {failure:?}, success's {success:?}"
        );
    });
}

/// Two outcomes that both sum the window race to note whether a rate is at its threshold short
/// of the minimum number of calls ("armed"): a success whose sum (one failure in three calls,
/// under 40 %) is older than a failure's (two in four, over 40 %, short of five calls) must not
/// leave the breaker disarmed, or the success that makes the fifth call (two in five: 40 %)
/// skips summing and the trip waits for the next failure. Fails with a plain store of the flag
/// (the success's stale `false` stored last).
#[test]
fn an_older_sum_never_disarms_a_newer_one() {
    check(|| {
        let breaker = CircuitBreaker::builder()
            .sliding_window(SlidingWindow::Time(Duration::from_secs(2)))
            .buckets(2)
            .minimum_calls(5)
            .failure_rate_threshold(0.4)
            .clock(ManualClock::new())
            .build()
            .unwrap();
        // One failure in two calls: 50 %, short of five calls.
        breaker.try_acquire().unwrap().failure();
        breaker.try_acquire().unwrap().success();
        let b = breaker.clone();
        let failure = thread::spawn(move || b.try_acquire().unwrap().failure());
        breaker.try_acquire().unwrap().success();
        failure.join().unwrap();
        assert_eq!(breaker.window_counts().failures, 2);
        breaker.try_acquire().unwrap().success();
        assert_eq!(breaker.state(), State::Open);
    });
}

/// Two transitions made back to back on two threads (a trip, then an operator's `force_open`,
/// or the other way round) reach the callback in the order the state took them: each one
/// leaves the state the one before entered, and the last enters the state the breaker is in.
/// Fails when each thread calls the callback itself after its compare-and-swap: the second
/// transition's thread can get there first.
#[test]
fn transitions_reach_the_callback_in_the_order_they_were_made() {
    check(|| {
        let (breaker, _, seen) = breaker(1, 1);
        let b = breaker.clone();
        let tripper = thread::spawn(move || b.trip_for(Duration::from_secs(5)));
        let b = breaker.clone();
        let operator = thread::spawn(move || b.force_open());
        tripper.join().unwrap();
        operator.join().unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(breaker.state(), State::ForcedOpen);
        let mut state = State::Closed;
        for (from, to) in &seen {
            assert_eq!(*from, state, "{seen:?}");
            state = *to;
        }
        assert_eq!(state, State::ForcedOpen, "{seen:?}");
    });
}
