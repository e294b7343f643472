//! The sliding window: a ring of buckets with atomic counters, no locks.
//!
//! Each bucket is three `AtomicU64`s, for calls, failures and slow calls, each holding a 16-bit
//! epoch tag and a 48-bit count. A bucket's epoch is the index of its time slice (time windows)
//! or of its run of `bucket_len` calls (count windows). Recording an outcome into a word whose
//! tag is older than the current epoch resets it with one compare-and-swap, so old outcomes
//! really fall out; recording into a word of the current epoch is one `fetch_add` (a success
//! touches the calls word only). Reading the window sums the buckets whose epoch lies in the
//! last `buckets` epochs.
//!
//! A call is counted before its failure and slowness, and a reader reads the failures and slow
//! calls before the calls, so no bucket reads with more failures than calls. A caller that
//! sums sums as of the newest bucket (not its own, which a slower caller's may be), after a
//! full fence: of two outcomes added at once to neighbouring buckets, the caller that sums last
//! sees both (see the loom models). A bucket saturates
//! at about 2^48 calls (count windows never get there; a time window would need 2.8e14 calls in
//! one bucket): from then on it counts neither calls nor failures nor slow calls, so its rates
//! stay what they were, never diluted by successes counted without their failures.
//!
//! Tags are compared modulo 2^16. Two things keep a stale bucket from passing for a fresh one:
//! whenever the newest epoch moves forward, the buckets of the epochs it skipped are reset; and
//! when nothing was recorded for a whole window, the window reads as empty without looking at
//! the buckets; after an idle time long enough for tags to alias, all buckets are cleared. The
//! remaining assumption is that no thread is delayed for more than 32,768 buckets between
//! reading the clock and recording.
//!
//! Epochs themselves are full `u64`s and only grow. A time window's is the index of the
//! clock's bucket plus an offset that each reset moves forward by about `buckets + 1`; it
//! is never multiplied back into nanoseconds, and the sums that make it saturate, so no number
//! of resets overflows it. A count window's is its call index over the bucket length, and a
//! reset moves the call index forward by about one window of calls (at most 2^31): 2^33
//! resets before it wraps. Both stay far below 2^63.

use super::{
    config::WindowKind,
    sync::{fence, AtomicU64, Ordering},
};

const TAG_SHIFT: u32 = 48;
const COUNT_MASK: u64 = (1 << TAG_SHIFT) - 1;
const TAG_MASK: u64 = 0xFFFF;
const HALF_RANGE: u64 = 0x8000;
/// A bucket stops counting calls here, leaving room below 2^48 for adders racing past the
/// check (failures and slow calls are only counted with a call, so they stay below).
const SATURATED: u64 = COUNT_MASK - (1 << 32);

/// Counts in the window at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowCounts {
    /// Calls recorded.
    pub calls: u64,
    /// Of those, failures.
    pub failures: u64,
    /// Of those, slow calls (successful or not).
    pub slow_calls: u64,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

#[derive(Debug, Default)]
#[repr(align(128))]
struct Bucket {
    /// tag | calls
    calls: AtomicU64,
    /// tag | failures
    failures: AtomicU64,
    /// tag | slow calls
    slow: AtomicU64,
}

impl Bucket {
    fn words(&self) -> [&AtomicU64; 3] {
        [&self.calls, &self.failures, &self.slow]
    }
}

#[derive(Debug)]
pub(crate) struct Window {
    kind: WindowKind,
    buckets: Box<[Bucket]>,
    /// Count windows: the index of the next call.
    seq: Padded<AtomicU64>,
    /// Time windows: nanoseconds, in `[0, bucket_nanos)`, added to the clock's reading so that
    /// the epoch a reset starts begins at the reset.
    phase: AtomicU64,
    /// Time windows: epochs added to the clock's bucket index, so a reset can start a fresh
    /// epoch. An epoch count, never multiplied by the bucket length: resets move it forward by
    /// about `buckets + 1` each, so no number of them overflows (the old nanosecond shift,
    /// `start * bucket_nanos`, did after some 500 resets of a one-year window).
    offset: AtomicU64,
    /// The newest epoch recorded into.
    head: Padded<AtomicU64>,
    /// One more than the newest epoch a failure or a slow call was recorded into (0: none
    /// yet). A success that moves the window forward sums it only if one may still be in the
    /// window: with none, its rates are zero whatever dropped out.
    last_bad: AtomicU64,
}

impl Window {
    pub(crate) fn new(kind: WindowKind) -> Self {
        let n = kind.buckets() as usize;
        Self {
            kind,
            buckets: (0..n).map(|_| Bucket::default()).collect(),
            seq: Padded(AtomicU64::new(0)),
            phase: AtomicU64::new(0),
            offset: AtomicU64::new(0),
            head: Padded(AtomicU64::new(0)),
            last_bad: AtomicU64::new(0),
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn bucket(&self, epoch: u64) -> &Bucket {
        &self.buckets[(epoch % self.len()) as usize]
    }

    /// The current epoch of a time window (count windows: the newest recorded).
    #[inline]
    fn epoch_at(&self, now_nanos: u64) -> u64 {
        match self.kind {
            WindowKind::Time { bucket_nanos, .. } => {
                // The two words are stored one after the other by a reset: a reader that sees
                // one new and one old lands one epoch off at most (see `reset`).
                let offset = self.offset.load(Ordering::Acquire);
                let phase = self.phase.load(Ordering::Acquire);
                (now_nanos.saturating_add(phase) / bucket_nanos).saturating_add(offset)
            }
            WindowKind::Count { .. } => self.head.0.load(Ordering::Acquire),
        }
    }

    /// Records one outcome and returns the window's counts right after it, or `None` when the
    /// caller said it does not need them (`need_counts` false) and no bucket dropped out of the
    /// window on the way (summing the buckets is most of a record's cost).
    #[inline]
    pub(crate) fn record(
        &self,
        now_nanos: u64,
        failure: bool,
        slow: bool,
        need_counts: bool,
    ) -> Option<WindowCounts> {
        let epoch = self.epoch_of_next(now_nanos);
        self.record_in(epoch, failure, slow, need_counts)
    }

    /// The epoch the next outcome goes into: the clock's for a time window; for a count
    /// window, that of the next index in the run of calls (taking the index).
    #[inline]
    fn epoch_of_next(&self, now_nanos: u64) -> u64 {
        match self.kind {
            WindowKind::Time { .. } => self.epoch_at(now_nanos),
            WindowKind::Count { bucket_len, .. } => {
                self.seq.0.fetch_add(1, Ordering::AcqRel) / bucket_len
            }
        }
    }

    /// Records one outcome into `epoch`'s bucket; see [`record`](Self::record).
    #[inline]
    fn record_in(
        &self,
        epoch: u64,
        failure: bool,
        slow: bool,
        need_counts: bool,
    ) -> Option<WindowCounts> {
        let advanced = self.advance_head(epoch);
        let bucket = self.bucket(epoch);
        // The call first, then what kind of call it was (see the module's doc).
        if add(&bucket.calls, epoch) {
            if failure {
                add(&bucket.failures, epoch);
            }
            if slow {
                add(&bucket.slow, epoch);
            }
        }
        if failure || slow {
            self.last_bad
                .fetch_max(epoch.saturating_add(1), Ordering::AcqRel);
        }
        if !(need_counts || advanced) {
            return None;
        }
        // Another caller may be adding to a neighbouring bucket right now (a count window's
        // next index, a time window's next slice). Each adds, then sums: without a full fence
        // between the two, both could miss the other's add (store buffering) and neither would
        // see both outcomes. With it, whichever fences last sees both.
        fence(Ordering::SeqCst);
        // Sum as of the newest bucket, not this caller's own: a caller that took an earlier
        // index (or read the clock earlier) but adds last must count the newer buckets too.
        let newest = self.head.0.load(Ordering::Acquire).max(epoch);
        // A success that only moved the window on: with no failure or slow call left in the
        // window its rates are zero, and summing would show nothing. (A failure or slow call
        // recorded at this moment sums itself after its own fence: of the two callers, the one
        // that fences last sees the other's bucket and the window moved on.)
        let last_bad = self.last_bad.load(Ordering::Acquire);
        if !need_counts
            && (last_bad == 0 || last_bad.saturating_add(self.len()) <= newest.saturating_add(1))
        {
            return None;
        }
        Some(self.counts_at(newest))
    }

    /// Moves the newest epoch forward; resets the buckets of the epochs skipped on the way, so
    /// that no bucket keeps a tag far behind the newest epoch. Whether it moved.
    #[inline]
    fn advance_head(&self, epoch: u64) -> bool {
        self.head.0.load(Ordering::Acquire) < epoch && self.move_head(epoch)
    }

    /// [`advance_head`](Self::advance_head) once the newest epoch was seen older than `epoch`.
    #[inline(never)]
    fn move_head(&self, epoch: u64) -> bool {
        let head = &self.head.0;
        let prev = head.fetch_max(epoch, Ordering::AcqRel);
        if prev >= epoch {
            return false;
        }
        let n = self.len();
        if epoch - prev >= TAG_MASK + 1 - n {
            // Idle for so long that 16-bit tags may alias: clear every bucket outright. (A
            // caller recording at this very moment may lose its outcome; nothing else can.)
            let out_of_window = ((epoch - n) & TAG_MASK) << TAG_SHIFT;
            for word in self.buckets.iter().flat_map(Bucket::words) {
                word.store(out_of_window, Ordering::Release);
            }
            return true;
        }
        let from = (prev + 1).max(epoch.saturating_sub(n - 1));
        for skipped in from..epoch {
            for word in self.bucket(skipped).words() {
                clear_if_older(word, skipped);
            }
        }
        true
    }

    /// The counts of the window as of now.
    pub(crate) fn counts(&self, now_nanos: u64) -> WindowCounts {
        self.counts_at(self.epoch_at(now_nanos))
    }

    fn counts_at(&self, epoch: u64) -> WindowCounts {
        let mut counts = WindowCounts::default();
        // Nothing recorded for a whole window: stale tags must not be looked at.
        if self
            .head
            .0
            .load(Ordering::Acquire)
            .saturating_add(self.len())
            <= epoch
        {
            return counts;
        }
        for bucket in self.buckets.iter() {
            // Failures and slow calls first: each was counted after its call (module doc).
            let f = bucket.failures.load(Ordering::Acquire);
            let s = bucket.slow.load(Ordering::Acquire);
            let c = bucket.calls.load(Ordering::Acquire);
            if age(c, epoch) >= self.len() {
                continue;
            }
            let calls = c & COUNT_MASK;
            counts.calls += calls;
            // A word of another epoch than the calls' holds no outcome of this bucket's calls.
            if f >> TAG_SHIFT == c >> TAG_SHIFT {
                counts.failures += (f & COUNT_MASK).min(calls);
            }
            if s >> TAG_SHIFT == c >> TAG_SHIFT {
                counts.slow_calls += (s & COUNT_MASK).min(calls);
            }
        }
        counts
    }

    /// Empties the window: the next outcome starts a fresh first bucket (in a time window, a
    /// full bucket starting now). Called before the breaker (re)enters the closed state;
    /// outcomes recorded concurrently by calls of an older state are not meant to count, and
    /// whatever of them lands here is negligible.
    pub(crate) fn reset(&self, now_nanos: u64) {
        let n = self.len();
        let current = self
            .epoch_at(now_nanos)
            .max(self.head.0.load(Ordering::Acquire));
        let start = current.saturating_add(n + 1);
        match self.kind {
            WindowKind::Time { bucket_nanos, .. } => {
                // (now + phase) / bucket_nanos + offset == start, with the bucket starting right
                // now: the phase takes `now` to the next bucket boundary, whose index
                // `ceil(now / bucket_nanos)` is at most `current + 1` (the offset only ever
                // adds), so the offset is not negative. A concurrent caller that reads the new
                // offset with the old phase (or the other way round) places its outcome one
                // epoch early or late, or drops it as too old, as the module doc allows of
                // outcomes recorded across a reset.
                let phase = (bucket_nanos - now_nanos % bucket_nanos) % bucket_nanos;
                let index = now_nanos.saturating_add(phase) / bucket_nanos;
                self.phase.store(phase, Ordering::Release);
                self.offset
                    .store(start.saturating_sub(index), Ordering::Release);
            }
            WindowKind::Count { bucket_len, .. } => {
                self.seq.0.store(start * bucket_len, Ordering::Release);
            }
        }
        let out_of_window = ((start - n) & TAG_MASK) << TAG_SHIFT;
        for word in self.buckets.iter().flat_map(Bucket::words) {
            word.store(out_of_window, Ordering::Release);
        }
        self.head.0.store(start - 1, Ordering::Release);
    }
}

/// How many epochs `epoch` is ahead of the word's tag; `>= HALF_RANGE` means the tag is newer.
#[inline]
fn age(word: u64, epoch: u64) -> u64 {
    (epoch.wrapping_sub(word >> TAG_SHIFT)) & TAG_MASK
}

/// Adds one to the count of `word` for `epoch`; whether it counted (not when the word is
/// saturated or already belongs to a newer epoch).
#[inline]
fn add(word: &AtomicU64, epoch: u64) -> bool {
    let tag = (epoch & TAG_MASK) << TAG_SHIFT;
    let mut w = word.load(Ordering::Acquire);
    loop {
        match age(w, epoch) {
            0 => {
                if w & COUNT_MASK >= SATURATED {
                    return false;
                }
                let prev = word.fetch_add(1, Ordering::AcqRel);
                if prev >> TAG_SHIFT == w >> TAG_SHIFT {
                    return true;
                }
                // Between the load and the add, the word moved on to another epoch (this caller
                // was delayed for a whole window): take the add back, unless a later reset
                // already wiped it, and count nothing.
                let moved = prev >> TAG_SHIFT;
                let _ = word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |x| {
                    (x >> TAG_SHIFT == moved && x & COUNT_MASK > 0).then(|| x - 1)
                });
                return false;
            }
            // The bucket already belongs to a newer epoch: this outcome is too old to count.
            a if a >= HALF_RANGE => return false,
            _ => {
                match word.compare_exchange_weak(w, tag | 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return true,
                    Err(actual) => w = actual,
                }
            }
        }
    }
}

fn clear_if_older(word: &AtomicU64, epoch: u64) {
    let tag = (epoch & TAG_MASK) << TAG_SHIFT;
    let mut w = word.load(Ordering::Acquire);
    loop {
        let a = age(w, epoch);
        if a == 0 || a >= HALF_RANGE {
            return;
        }
        match word.compare_exchange_weak(w, tag, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(actual) => w = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    impl Window {
        /// Test helper: the bucket of `epoch` holds these counts, and `epoch` is the newest.
        fn fill(&self, epoch: u64, calls: u64, failures: u64, slow: u64) {
            let tag = (epoch & TAG_MASK) << TAG_SHIFT;
            let bucket = self.bucket(epoch);
            bucket.calls.store(tag | calls, Ordering::Release);
            bucket.failures.store(tag | failures, Ordering::Release);
            bucket.slow.store(tag | slow, Ordering::Release);
            self.head.0.store(epoch, Ordering::Release);
        }
    }

    fn one_second_buckets() -> Window {
        Window::new(WindowKind::Time {
            bucket_nanos: SEC,
            buckets: 10,
        })
    }

    /// A bucket used to stop counting at 16,711,679 calls, failures included: a failure storm
    /// after that was invisible.
    #[test]
    fn a_bucket_past_sixteen_million_calls_still_counts_failures() {
        let w = one_second_buckets();
        w.fill(0, 16_711_679, 0, 0);
        for _ in 0..1_000 {
            w.record(SEC / 2, true, true, false);
        }
        let c = w.counts(SEC / 2);
        assert_eq!(
            (c.calls, c.failures, c.slow_calls),
            (16_712_679, 1_000, 1_000)
        );
    }

    /// At the real limit a bucket stops counting calls, failures and slow calls together: its
    /// rates stay what they were, never lowered by successes counted without their failures.
    #[test]
    fn a_saturated_bucket_keeps_its_rates() {
        let w = one_second_buckets();
        let full = SATURATED - 3;
        w.fill(0, full, full / 2, full / 4);
        for i in 0..10_000 {
            let c = w.record(SEC / 2, i % 2 == 0, i % 4 == 0, true).unwrap();
            assert!(c.calls <= SATURATED + 1, "{c:?}");
            // The failure rate stays at 1/2, the slow-call rate at 1/4.
            assert!(c.failures.abs_diff(c.calls / 2) <= 2, "{i}: {c:?}");
            assert!(c.slow_calls.abs_diff(c.calls / 4) <= 2, "{i}: {c:?}");
        }
        // The next bucket counts afresh.
        let frozen = w.counts(SEC / 2);
        let c = w.record(SEC + 1, true, true, true).unwrap();
        assert_eq!(
            (c.calls, c.failures, c.slow_calls),
            (frozen.calls + 1, frozen.failures + 1, frozen.slow_calls + 1)
        );
    }

    /// Two failures recorded at once into adjacent buckets of a count window: the caller that
    /// took the earlier index but adds last must see both (it used to sum the window as of its
    /// own, older bucket, leaving out the newer one, so neither caller saw both failures and the
    /// breaker tripped one outcome late).
    #[test]
    fn the_last_of_two_failures_into_adjacent_buckets_sees_both() {
        let w = Window::new(WindowKind::Count {
            bucket_len: 1,
            buckets: 2,
        });
        // The first caller takes index 0 (bucket 0) and is delayed before it adds.
        let first = w.epoch_of_next(0);
        assert_eq!(first, 0);
        // The second takes index 1 (bucket 1) and sums the window before the first has added.
        let c = w.record(0, true, false, true).unwrap();
        assert_eq!((c.calls, c.failures), (1, 1));
        let c = w.record_in(first, true, false, true).unwrap();
        assert_eq!((c.calls, c.failures), (2, 2));
    }

    /// The same in a time window: a caller that read the clock just before a bucket boundary
    /// and adds after another caller recorded past it sums the window as of the newest bucket.
    #[test]
    fn a_late_adder_in_a_time_window_sums_up_to_the_newest_bucket() {
        let w = one_second_buckets();
        let c = w.record(SEC, true, false, true).unwrap();
        assert_eq!((c.calls, c.failures), (1, 1));
        let c = w.record(SEC - 1, true, false, true).unwrap();
        assert_eq!((c.calls, c.failures), (2, 2));
    }

    #[test]
    fn time_window_slides() {
        let w = Window::new(WindowKind::Time {
            bucket_nanos: SEC,
            buckets: 10,
        });
        w.record(0, true, false, true).unwrap();
        w.record(SEC / 2, false, true, true).unwrap();
        let c = w.record(5 * SEC, false, false, true).unwrap();
        assert_eq!((c.calls, c.failures, c.slow_calls), (3, 1, 1));
        // At 10 s the first bucket (0..1 s) is out.
        assert_eq!(w.counts(10 * SEC).calls, 1);
        assert_eq!(w.counts(15 * SEC).calls, 0);
        // Far in the future, with tags that wrapped around: still empty.
        assert_eq!(w.counts((65_536 + 5) * SEC).calls, 0);
        let c = w.record((65_536 + 5) * SEC, true, false, true).unwrap();
        assert_eq!((c.calls, c.failures), (1, 1));
    }

    /// A success that moves the window on sums it only while a failure or a slow call may
    /// still be in it: with none, the rates are zero whatever dropped out.
    #[test]
    fn a_success_moving_on_sums_only_while_a_bad_outcome_is_in_the_window() {
        let w = Window::new(WindowKind::Count {
            bucket_len: 1,
            buckets: 3,
        });
        for _ in 0..10 {
            assert_eq!(w.record(0, false, false, false), None);
        }
        // A slow call (epoch 10) sums itself; the successes moving on after it sum while it is
        // in the window (epochs 11 and 12), not once it dropped out.
        assert!(w.record(0, false, true, true).is_some());
        for _ in 0..2 {
            let c = w.record(0, false, false, false).unwrap();
            assert_eq!((c.calls, c.slow_calls), (3, 1));
        }
        assert_eq!(w.record(0, false, false, false), None);
        // A failure, in a time window: the success in the next bucket sums, then none.
        let w = one_second_buckets();
        assert!(w.record(SEC, true, false, true).is_some());
        let c = w.record(2 * SEC, false, false, false).unwrap();
        assert_eq!((c.calls, c.failures), (2, 1));
        assert_eq!(w.record(11 * SEC, false, false, false), None);
        assert_eq!(w.counts(11 * SEC).failures, 0);
    }

    #[test]
    fn count_window_slides_by_buckets() {
        let w = Window::new(WindowKind::Count {
            bucket_len: 2,
            buckets: 3,
        });
        for _ in 0..6 {
            w.record(0, true, false, true).unwrap();
        }
        assert_eq!(w.counts(0).calls, 6);
        // The 7th call starts bucket 3; bucket 0 (calls 0 and 1) drops out.
        let c = w.record(0, false, false, true).unwrap();
        assert_eq!((c.calls, c.failures), (5, 4));
    }

    #[test]
    fn reset_empties() {
        let w = Window::new(WindowKind::Time {
            bucket_nanos: SEC,
            buckets: 4,
        });
        w.record(SEC, true, true, true).unwrap();
        w.reset(SEC + 1);
        assert_eq!(w.counts(SEC + 1), WindowCounts::default());
        let c = w.record(SEC + 2, false, false, true).unwrap();
        assert_eq!((c.calls, c.failures, c.slow_calls), (1, 0, 0));
    }
}
