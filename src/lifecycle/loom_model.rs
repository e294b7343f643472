//! Model checks of the lifecycle's phase word and in-flight count with `loom`: every
//! interleaving (up to a preemption bound) of the signal task starting the drain, the shutdown
//! future closing, probes reading the phase, and requests going through the serve loop's count
//! and the drain layer.
//!
//! ```text
//! RUSTFLAGS="--cfg tower_5xx_loom" cargo test --lib lifecycle::loom_model
//! ```
//!
//! The phase word and the in-flight count are loom's atomics under
//! `cfg(all(test, tower_5xx_loom))` (see `sync` in the module root). The watch channel the
//! waiters use and the close's instant (`OnceLock`) are tokio and std types, which loom cannot
//! see into: each of their calls runs within the loom step before it. `sync::step` splits the
//! phase word's move from the watch channel's, so that another move can come between them;
//! the close's instant is set before the phase moves, in the same step, and is not checked
//! here (`the_phases_follow_the_drain_delay_then_the_grace` in `state.rs` checks its value).
//!
//! What the request model does not cover: how the serve loop learns of the close (it stops
//! accepting through the watch channel, which loom does not model) and the drain layer's own
//! relaxed load racing a close on another thread without a synchronising flag in between. The
//! request model shows the layer refuses once it has seen the close, and that the count is
//! exact whichever thread gives a place back.

use std::{
    convert::Infallible,
    future::Future,
    pin::pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use loom::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
};
use tower_layer::Layer;
use tower_service::Service;

use super::{in_flight::InFlight, Lifecycle, Phase};

/// Runs `f` under loom with a preemption bound that keeps each model to seconds in a debug
/// build.
fn check(f: impl Fn() + Sync + Send + 'static) {
    check_bounded(3, f);
}

/// [`check`] with another default bound (`LOOM_MAX_PREEMPTIONS` overrides either).
fn check_bounded(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    builder.check(f);
}

fn lifecycle() -> Lifecycle {
    Lifecycle::new(Duration::ZERO, Duration::from_secs(1))
}

/// Two triggers of the drain (SIGTERM's task and a `start_drain` call) race the shutdown
/// future's close while a probe reads the phase: what the probe reads never goes back, neither
/// does the waiters' copy of the phase (the watch channel), both end at `Closing`, and each
/// move is reported once.
#[test]
fn phases_only_move_forward_and_each_move_happens_once() {
    check(|| {
        let lc = lifecycle();
        let drains: Vec<_> = (0..2)
            .map(|_| {
                let lc = lc.clone();
                thread::spawn(move || lc.advance(Phase::Draining))
            })
            .collect();
        let closer = {
            let lc = lc.clone();
            thread::spawn(move || lc.advance(Phase::Closing))
        };

        // The probe.
        let mut last = (Phase::Serving, Phase::Serving);
        for _ in 0..2 {
            let now = (lc.phase(), *lc.inner.changed.borrow());
            assert!(
                now.0 >= last.0,
                "the phase went from {} to {}",
                last.0,
                now.0
            );
            assert!(now.1 >= last.1, "the waiters' phase went back");
            last = now;
        }

        let drained = drains
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|moved| *moved)
            .count();
        assert!(closer.join().unwrap(), "the one close moves the phase");
        assert!(drained <= 1, "{drained} drains reported");
        assert_eq!(lc.phase(), Phase::Closing);
        assert_eq!(*lc.inner.changed.borrow(), Phase::Closing);
        assert!(!lc.advance(Phase::Draining));
    });
}

/// One request through the drain layer (over a service answering 200 at once): whether it was
/// served.
fn through_drain(lc: &Lifecycle) -> bool {
    let mut svc = lc
        .drain_layer()
        .layer(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Bytes::from_static(b"ok")))
        }));
    let future = pin!(svc.call(Request::get("/").body(()).unwrap()));
    let Poll::Ready(Ok(res)) = future.poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("the response is ready at once");
    };
    match res.status() {
        StatusCode::OK => true,
        StatusCode::SERVICE_UNAVAILABLE => false,
        other => panic!("{other}"),
    }
}

/// Two requests enter the serve loop's count and the drain layer while the shutdown future
/// closes: a request that starts after the close (it saw the closer's flag) is refused, never
/// admitted; the requests still holding their places are counted (never wrapped below zero),
/// also when a place is given back on another thread than the one that took it; and the count
/// is back at zero once they are done.
#[test]
fn requests_racing_the_close_are_refused_after_it_and_counted_while_they_run() {
    // Two preemptions: a lost update of the count needs one, a request starting after the
    // close none; three take half a minute in a debug build.
    check_bounded(2, || {
        let lc = lifecycle();
        lc.start_drain();
        let in_flight = InFlight::new();
        let closed = Arc::new(AtomicBool::new(false));

        let closer = {
            let (lc, closed) = (lc.clone(), closed.clone());
            thread::spawn(move || {
                lc.advance(Phase::Closing);
                closed.store(true, Ordering::Release);
            })
        };
        let requests: Vec<_> = (0..2)
            .map(|_| {
                let (lc, in_flight, closed) = (lc.clone(), in_flight.clone(), closed.clone());
                thread::spawn(move || {
                    let after_close = closed.load(Ordering::Acquire);
                    in_flight.enter();
                    let served = through_drain(&lc);
                    assert!(!(after_close && served), "admitted after the close");
                })
            })
            .collect();

        closer.join().unwrap();
        for r in requests {
            r.join().unwrap();
            assert!((1..=2).contains(&in_flight.count()));
            // The response future's end, on the thread that joins.
            in_flight.exit();
        }
        assert_eq!(in_flight.count(), 0);
        assert!(!through_drain(&lc), "refused once closed");
    });
}
