//! A retry budget: retries limited to a share of recent requests, exact under contention.

use std::time::Duration;

use tokio::time::Instant;

use super::sync::{AtomicI64, AtomicU64, Ordering};
use crate::error::InvalidConfig;

/// Fixed-point unit: one retry costs `UNIT` milli-tokens.
const UNIT: i64 = 1000;

/// Limits retries to `ratio` of the requests sent, plus a small `floor`, across every clone of a
/// client that shares it (put it in an `Arc` and give it to each policy).
///
/// Each request deposits `ratio` tokens; each retry withdraws one whole token, and is refused
/// when less than one is left. So `N` requests can cause at most `floor + N * ratio` retries
/// within a window, whatever the concurrency: the balance is one atomic integer updated by
/// compare-and-swap, so two threads can never both spend the last token (tower's `TpsBudget`
/// takes a lock per call and can overdraw, tower issue #857).
///
/// - `floor` is a minimum allowance per `window` for clients whose traffic earns less: the
///   balance starts at `floor`, and at each window's turn, if the window's requests earned less
///   than `floor`, it is topped up to `floor`. A busy client's ratio already covers it, and the
///   floor then adds nothing (so a fleet's amplification stays at `1 + ratio`).
/// - Tokens are for *recent* requests: it never holds more than `floor + ratio * 100`, and at
///   each turn (checked when a retry asks, so turns are rare while nothing fails) the balance
///   is cut to what the requests since the last turn earned per window on average (or
///   `floor`, if more). A long healthy period does not bank a burst of retries for the next
///   outage; retries stay proportional to the traffic. The price of not reading the clock on
///   every request: after a long quiet spell, a busy last window is averaged with the quiet
///   ones, and the first turn may cut up to `ratio * 100` tokens it could have kept.
///
/// Time is tokio's clock (`tokio::time::pause()` works in tests).
///
/// ```
/// use tower_5xx::retry::RetryBudget;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let budget = RetryBudget::new(0.1, 0).unwrap();
/// for _ in 0..20 {
///     budget.deposit();
/// }
/// assert!(budget.withdraw());
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw(), "20 requests at 10% buy exactly 2 retries");
/// # }
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    balance: AtomicI64,
    per_request: i64,
    floor: i64,
    max: i64,
    window_ms: u64,
    start: Instant,
    /// Milliseconds after `start` of the last turn of the window.
    last_refill_ms: AtomicU64,
    /// Requests deposited since the last turn of the window.
    window_deposits: AtomicU64,
}

impl Default for RetryBudget {
    /// 20 % of the requests (Finagle's default retry budget) plus 10 retries per 10-second
    /// window.
    fn default() -> Self {
        Self::new(0.2, 10).expect("the default retry budget is valid")
    }
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per request (for example `0.1` for 10 %) plus `floor`
    /// retries per 10-second window. The ratio is kept in thousandths (`0.1234` counts as
    /// `0.123`).
    ///
    /// # Errors
    ///
    /// An [`InvalidConfig`] (setting `"retry budget ratio"`) unless `ratio` is `0`, or a finite
    /// number from `0.001` (the smallest step kept) to `1000`.
    pub fn new(ratio: f64, floor: u32) -> Result<Self, InvalidConfig> {
        Self::with_window(ratio, floor, Duration::from_secs(10))
    }

    /// [`RetryBudget::new`] with the window after which the balance is topped up to `floor`.
    ///
    /// # Errors
    ///
    /// As [`RetryBudget::new`], and an [`InvalidConfig`] (setting `"retry budget window"`)
    /// for a window shorter than 1 ms (the budget keeps time in milliseconds).
    pub fn with_window(ratio: f64, floor: u32, window: Duration) -> Result<Self, InvalidConfig> {
        if !ratio.is_finite() || !(0.0..=1000.0).contains(&ratio) {
            return Err(InvalidConfig::new(
                "retry budget ratio",
                "must be within 0..=1000",
            ));
        }
        if ratio != 0.0 && ratio < 0.001 {
            return Err(InvalidConfig::new(
                "retry budget ratio",
                "must be 0 or at least 0.001",
            ));
        }
        let per_request = (ratio * UNIT as f64).round() as i64;
        if window < Duration::from_millis(1) {
            return Err(InvalidConfig::new(
                "retry budget window",
                "must be at least 1 ms",
            ));
        }
        let floor = i64::from(floor) * UNIT;
        Ok(Self {
            balance: AtomicI64::new(floor),
            per_request,
            floor,
            max: floor + per_request * 100,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            start: Instant::now(),
            last_refill_ms: AtomicU64::new(0),
            window_deposits: AtomicU64::new(0),
        })
    }

    /// Records a request (call once per original request, not per retry).
    pub fn deposit(&self) {
        if self.per_request == 0 {
            return;
        }
        self.window_deposits.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b < self.max).then(|| (b + self.per_request).min(self.max))
            });
    }

    /// Takes one retry from the budget; `false` if the budget is spent.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(self.now_ms())
    }

    /// [`withdraw`](Self::withdraw) at `now_ms` milliseconds after the budget was made.
    pub(crate) fn withdraw_at(&self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= UNIT).then_some(b - UNIT)
            })
            .is_ok()
    }

    /// Milliseconds since the budget was made, on tokio's clock.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The retries the budget would allow now (whole and fractional).
    pub fn remaining(&self) -> f64 {
        self.balance.load(Ordering::Acquire) as f64 / UNIT as f64
    }

    /// Turns the window when it is due (checked on withdrawals only, which are rare): cuts the
    /// balance to what the recent requests earned (or `floor`), then, if they earned less than
    /// `floor`, tops it up to `floor`.
    fn refill(&self, now_ms: u64) {
        let last = self.last_refill_ms.load(Ordering::Acquire);
        let elapsed = now_ms.saturating_sub(last);
        if elapsed < self.window_ms {
            return;
        }
        // One thread wins the turn; the others see the balance it leaves.
        if self
            .last_refill_ms
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let deposits = self.window_deposits.swap(0, Ordering::AcqRel);
        // Requests per window since the last turn, however many windows that spanned.
        let windows = (elapsed / self.window_ms).max(1);
        let recent = i64::try_from(deposits / windows).unwrap_or(i64::MAX);
        let earned = recent.saturating_mul(self.per_request);
        let allowance = earned.max(self.floor).min(self.max);
        self.balance.fetch_min(allowance, Ordering::AcqRel);
        if earned < self.floor {
            self.balance.fetch_max(self.floor, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{atomic::AtomicUsize, Arc};

    #[tokio::test(start_paused = true)]
    async fn floor_refills_once_per_window() {
        let budget = RetryBudget::with_window(0.0, 2, Duration::from_secs(10)).unwrap();
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!budget.withdraw());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn old_deposits_expire() {
        let budget = RetryBudget::with_window(0.1, 1, Duration::from_secs(10)).unwrap();
        // A healthy burst long ago: 1,000 requests would earn 100 retries, but the bank holds at
        // most 100 requests' worth (10) plus the floor (1).
        for _ in 0..1000 {
            budget.deposit();
        }
        assert_eq!(budget.remaining(), 11.0);
        // An hour later, with 10 requests in the last window, the outage begins.
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..10 {
            budget.deposit();
        }
        // Recent traffic averages 2 requests per 10 s window over the hour: the bank is cut to
        // what recent requests earned (0.2, so the floor of 1), not what was banked an hour ago.
        let mut granted = 0;
        while budget.withdraw() {
            granted += 1;
        }
        assert_eq!(granted, 1, "balance after the cut: {}", budget.remaining());
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_client_gets_no_floor_on_top_of_its_ratio() {
        let budget = RetryBudget::with_window(0.1, 5, Duration::from_secs(10)).unwrap();
        // Spend the initial floor.
        while budget.withdraw() {}
        // A busy window: 100 requests earn 10 retries, more than the floor of 5.
        for _ in 0..100 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let mut granted = 0;
        while budget.withdraw() {
            granted += 1;
        }
        assert_eq!(granted, 10, "the ratio covers the floor: nothing is added");
        // A quiet window: 20 requests earn 2; the floor tops that up to 5.
        for _ in 0..20 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let mut granted = 0;
        while budget.withdraw() {
            granted += 1;
        }
        assert_eq!(granted, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn recent_deposits_survive_the_turn() {
        let budget = RetryBudget::with_window(0.1, 0, Duration::from_secs(10)).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..100 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let mut granted = 0;
        while budget.withdraw() {
            granted += 1;
        }
        assert_eq!(granted, 10);
    }

    #[tokio::test]
    async fn deposits_are_capped() {
        let budget = RetryBudget::new(0.5, 0).unwrap();
        for _ in 0..10_000 {
            budget.deposit();
        }
        // 100 requests' worth at 0.5.
        assert_eq!(budget.remaining(), 50.0);
    }

    #[test]
    fn rejects_bad_ratios() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _g = rt.enter();
        for ratio in [-0.1, f64::NAN, f64::INFINITY, 1000.5, 0.0004, 0.0009] {
            let err = RetryBudget::new(ratio, 0).unwrap_err();
            assert_eq!(err.setting(), "retry budget ratio", "{ratio}");
        }
        for window in [Duration::ZERO, Duration::from_micros(999)] {
            let err = RetryBudget::with_window(0.1, 0, window).unwrap_err();
            assert_eq!(err.setting(), "retry budget window", "{window:?}");
        }
        assert!(RetryBudget::new(0.0, 0).is_ok());
        assert!(RetryBudget::new(0.001, 0).is_ok());
        assert!(RetryBudget::new(1000.0, 0).is_ok());
        assert!(RetryBudget::with_window(0.1, 0, Duration::from_millis(1)).is_ok());
    }

    #[tokio::test]
    async fn the_default_allows_a_fifth_plus_ten() {
        let budget = RetryBudget::default();
        assert_eq!(budget.remaining(), 10.0);
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(budget.remaining(), 12.0);
    }

    /// Many threads withdrawing at once never get more than the balance held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exact_under_contention() {
        let budget = Arc::new(RetryBudget::new(0.1, 5).unwrap());
        for _ in 0..1000 {
            budget.deposit();
        }
        // 5 floor + 100 (the most the bank holds) * 0.1 = 15 retries, no more.
        let granted = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (budget, granted) = (budget.clone(), granted.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..100 {
                    if budget.withdraw() {
                        granted.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(granted.load(Ordering::Relaxed), 15);
    }
}
