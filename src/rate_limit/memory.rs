//! The in-memory store: GCRA state per key in a sharded hash map of bounded size.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::{Mutex, PoisonError},
};

use super::policy::{Decision, Gcra, MAX_POLICIES};

/// The theoretical arrival time (nanoseconds on the layer's clock) of one key, per policy.
type Tats = [u64; MAX_POLICIES];

/// Keys are already hashed with the layer's secret seed: the map uses that hash as is.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are ever hashed; fold anything else for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, Tats, BuildHasherDefault<PassThrough>>;

/// Bytes of one entry: the key's hash and one timestamp per policy.
#[cfg(test)]
pub(crate) const ENTRY_BYTES: usize = std::mem::size_of::<(u64, Tats)>();

const SHARDS: usize = 64;

/// GCRA state for at most `capacity` keys, in [`SHARDS`] independently locked maps (a lock is
/// held for one decision, never across an `.await`).
///
/// A key whose every TAT has passed is in the same state as a key never seen, so dropping it
/// loses nothing: a full shard first drops those. If the shard is still full (more live keys
/// than the capacity allows), it drops the eighth of its keys closest to being fully
/// replenished: they are the clients that lose least by starting afresh. One such pass costs
/// a scan of the shard, paid once per eighth of a shard of new keys.
pub(crate) struct MemoryStore {
    shards: Box<[Mutex<Map>]>,
    shard_capacity: usize,
}

impl MemoryStore {
    pub(crate) fn new(capacity: usize) -> Self {
        let shard_capacity = capacity.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Map::default())).collect(),
            shard_capacity,
        }
    }

    /// The most keys held at once.
    pub(crate) fn capacity(&self) -> usize {
        self.shard_capacity * SHARDS
    }

    /// Keys held now.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    #[cfg(test)]
    /// The bytes the maps' tables take now (the entries' slots, not counting the hash table's
    /// control bytes, one per slot).
    pub(crate) fn table_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| lock(s).capacity() * (ENTRY_BYTES + 1))
            .sum()
    }

    /// Decides one request of the key hashed to `hash` at `now` (ns), and records it if
    /// admitted.
    pub(crate) fn decide(&self, hash: u64, gcras: &[Gcra], now: u64) -> Decision {
        // The high bits choose the shard; the map uses the whole hash.
        let shard = &self.shards[(hash >> 58) as usize % SHARDS];
        let mut map = lock(shard);
        // One lookup on the hot path (a key seen before): decide on its slot in place.
        if let Some(tats) = map.get_mut(&hash) {
            let (decision, new_tats) = decide(tats, gcras, now);
            if decision.admit {
                *tats = new_tats;
            }
            return decision;
        }
        let (decision, new_tats) = decide(&Tats::default(), gcras, now);
        if decision.admit {
            if map.len() >= self.shard_capacity {
                evict(&mut map, self.shard_capacity, now);
            }
            map.insert(hash, new_tats);
        }
        decision
    }
}

/// The decision for a key in state `tats`, and its state if the request is admitted.
#[inline]
fn decide(tats: &Tats, gcras: &[Gcra], now: u64) -> (Decision, Tats) {
    let mut debts = [0u64; MAX_POLICIES];
    let mut before = [0u64; MAX_POLICIES];
    let mut violated = [false; MAX_POLICIES];
    let mut new_tats = *tats;
    for (i, g) in gcras.iter().enumerate() {
        let v = g.check(tats[i], now);
        debts[i] = v.debt;
        before[i] = v.debt_before;
        violated[i] = !v.admit;
        new_tats[i] = v.new_tat;
    }
    let n = gcras.len();
    if violated[..n].iter().any(|v| *v) {
        // Refused: nothing is charged, so every policy reports its debt as it stands.
        debts = before;
    }
    (Decision::from_debts(&debts[..n], &violated[..n]), new_tats)
}

/// Makes room in a full shard: drops the keys whose state has fully expired, then, if fewer
/// than an eighth went, the keys closest to expiry until an eighth of the shard is free.
#[cold]
#[inline(never)]
fn evict(map: &mut Map, capacity: usize, now: u64) {
    map.retain(|_, tats| tats.iter().any(|&t| t > now));
    let low_water = capacity - (capacity / 8).max(1);
    if map.len() <= low_water {
        return;
    }
    let excess = map.len() - low_water;
    let mut by_expiry: Vec<(u64, u64)> = map
        .iter()
        .map(|(&k, tats)| (tats.iter().copied().max().unwrap_or(0), k))
        .collect();
    by_expiry.select_nth_unstable(excess - 1);
    for (_, key) in &by_expiry[..excess] {
        map.remove(key);
    }
}

fn lock(shard: &Mutex<Map>) -> std::sync::MutexGuard<'_, Map> {
    // A decision never panics while holding the lock; if one did, the map is still consistent.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rate_limit::Policy;

    fn gcra(q: u64, secs: u64) -> Gcra {
        Policy::new("p", q, Duration::from_secs(secs))
            .gcra()
            .unwrap()
    }

    #[test]
    fn keys_are_independent_and_all_policies_must_admit() {
        let store = MemoryStore::new(1000);
        let g = [gcra(3, 60), gcra(2, 1)];
        let now = 1_000_000_000_000;
        assert!(store.decide(1, &g, now).admit);
        assert!(store.decide(1, &g, now).admit);
        // The per-second policy is out; the per-minute one had room but is not charged.
        let d = store.decide(1, &g, now);
        assert!(!d.admit);
        let st: Vec<_> = d.statuses(&g).collect();
        assert!(!st[0].violated && st[1].violated);
        assert_eq!(st[0].remaining, 1);
        assert!(store.decide(2, &g, now).admit, "another key");
        // A second later the per-second policy has room again, the minute has one left.
        let later = now + 1_000_000_000;
        let d = store.decide(1, &g, later);
        assert!(d.admit);
        assert_eq!(d.statuses(&g).next().unwrap().remaining, 0);
        let d = store.decide(1, &g, later + 1_000_000_000);
        let st: Vec<_> = d.statuses(&g).collect();
        assert!(!d.admit && st[0].violated && !st[1].violated);
    }

    #[test]
    fn concurrent_requests_of_one_key_admit_exactly_the_burst() {
        let store = std::sync::Arc::new(MemoryStore::new(1000));
        let g = [gcra(100, 3600)];
        let now = 1_000_000_000_000;
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..50).filter(|_| store.decide(42, &g, now).admit).count()
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 100);
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_capacity() {
        let capacity = 6_400;
        let store = MemoryStore::new(capacity);
        assert_eq!(store.capacity(), capacity);
        // A long window: no key expires during the flood, so eviction must drop live keys.
        let g = [gcra(10, 3600)];
        let now = 1_000_000_000_000;
        let mut most_bytes = 0;
        for i in 0..500_000u64 {
            let hash = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert!(store.decide(hash, &g, now + i).admit);
            if i % 1000 == 0 {
                assert!(store.len() <= capacity, "{} keys", store.len());
                most_bytes = most_bytes.max(store.table_bytes());
            }
        }
        assert!(store.len() <= capacity);
        assert!(store.len() >= capacity * 3 / 4, "eviction keeps most keys");
        // The documented bound: at most 2 slots per key of capacity (the hash table grows
        // by doubling, and holds 7/8 of its slots at most).
        assert!(
            most_bytes <= 2 * capacity * (ENTRY_BYTES + 1) + SHARDS * 64 * (ENTRY_BYTES + 1),
            "{most_bytes} bytes"
        );
    }

    #[test]
    fn expired_keys_go_first_and_live_keys_keep_their_state() {
        let store = MemoryStore::new(64); // one key per shard
        let g = [gcra(1, 3600)];
        let now = 10_000_000_000_000;
        // Key A is exhausted for an hour.
        let a = 5u64 << 58;
        assert!(store.decide(a, &g, now).admit);
        assert!(!store.decide(a, &g, now).admit);
        // Another key of the same shard, while A's state is live: A is evicted (the only
        // way to stay within the bound), and starts afresh.
        let b = (5u64 << 58) | 1;
        assert!(store.decide(b, &g, now).admit);
        assert_eq!(store.len(), 1);
        assert!(store.decide(a, &g, now).admit, "A was evicted");
    }
}
