//! Model checks of the retry budget with `loom`: every interleaving (up to a preemption bound)
//! of concurrent withdrawals, deposits and the window's turn.
//!
//! ```text
//! RUSTFLAGS="--cfg tower_5xx_loom" cargo test --lib retry::loom_model
//! ```
//!
//! The budget's atomics are loom's under `cfg(all(test, tower_5xx_loom))` (see `sync` in the
//! module root). Time is passed in (`withdraw_at`), as the budget reads tokio's clock otherwise.

use std::{sync::Arc, time::Duration};

use loom::thread;

use super::RetryBudget;

/// Runs `f` under loom with a preemption bound that keeps each model to seconds in a debug
/// build.
fn check(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

const WINDOW_MS: u64 = 10;

fn budget(ratio: f64, floor: u32) -> Arc<RetryBudget> {
    Arc::new(RetryBudget::with_window(ratio, floor, Duration::from_millis(WINDOW_MS)).unwrap())
}

/// Withdrawals by `threads` threads at once, at `now_ms`: how many were granted.
fn withdraw_at_once(budget: &Arc<RetryBudget>, threads: usize, now_ms: u64) -> usize {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let b = budget.clone();
            thread::spawn(move || b.withdraw_at(now_ms))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|granted| *granted)
        .count()
}

/// The last token is spent once: of two withdrawals at once, exactly one is granted.
#[test]
fn two_withdrawals_never_spend_one_token_twice() {
    check(|| {
        let budget = budget(0.0, 1);
        assert_eq!(withdraw_at_once(&budget, 2, 0), 1);
        assert_eq!(budget.remaining(), 0.0);
    });
}

/// Deposits and withdrawals at once: every token deposited is either granted or still there,
/// none is lost or made up.
#[test]
fn deposits_and_withdrawals_at_once_lose_and_make_up_nothing() {
    check(|| {
        // 0.5 retries a request: two requests buy one retry.
        let budget = budget(0.5, 0);
        budget.deposit();
        budget.deposit();
        let b = budget.clone();
        let depositor = thread::spawn(move || {
            b.deposit();
            b.deposit();
        });
        let b = budget.clone();
        let withdrawer =
            thread::spawn(move || usize::from(b.withdraw_at(0)) + usize::from(b.withdraw_at(0)));
        depositor.join().unwrap();
        let granted = withdrawer.join().unwrap();
        assert!(granted >= 1, "one retry was paid for before");
        assert_eq!(granted as f64 + budget.remaining(), 2.0);
    });
}

/// The window turns once however many withdrawals find it due: a spent floor of one retry is
/// topped up once, so two withdrawals at the turn get exactly one retry between them.
#[test]
fn the_window_turns_once_for_concurrent_withdrawals() {
    check(|| {
        let budget = budget(0.0, 1);
        assert!(budget.withdraw_at(0));
        assert!(!budget.withdraw_at(0));
        assert_eq!(withdraw_at_once(&budget, 2, WINDOW_MS), 1);
        assert_eq!(budget.remaining(), 0.0);
    });
}
