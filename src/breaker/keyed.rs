//! One breaker per key, with a bounded number of keys and idle eviction.

use std::{
    borrow::Borrow,
    collections::HashMap,
    fmt,
    hash::{BuildHasher, Hash, RandomState},
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, PoisonError, RwLock,
    },
    time::Duration,
};

use super::error::BreakerConfigError;
use super::{config::Config, BreakerBuilder, CircuitBreaker};

const MAX_SHARDS: usize = 16;
/// `last_used` is refreshed at most this often per key, so hot keys do not bounce its cache
/// line between cores.
const TOUCH_GRANULARITY_NANOS: u64 = 1_000_000;

struct Entry {
    breaker: CircuitBreaker,
    last_used: AtomicU64,
}

/// A registry of circuit breakers, one per key (an upstream's authority, a route, a tenant),
/// all built from one configuration.
///
/// Memory is bounded: at most [`max_keys`](Self::max_keys) breakers are kept (rounded up to a
/// multiple of the shard count, at most 16 shards). When a new key arrives at a full shard,
/// breakers idle for longer than the [idle timeout](Self::idle_timeout) are dropped first,
/// then the least recently used one. An attacker-chosen key therefore costs bounded memory;
/// it can push out other keys' breakers, so pick keys that clients do not control when that
/// matters (e.g. the configured upstream, not the request's `Host`).
///
/// The map is split into shards, each behind a `RwLock`. Looking up an existing key takes its
/// shard's read lock for a hash lookup and an `Arc` clone; only a new key takes a write lock.
/// The breaker's own permit and record path takes no lock at all.
///
/// ```
/// use tower_5xx::breaker::{CircuitBreaker, KeyedBreakers};
///
/// let breakers = KeyedBreakers::<String>::new(CircuitBreaker::builder().minimum_calls(5))
///     .unwrap();
/// let permit = breakers.get("api.example.com").try_acquire().unwrap();
/// permit.failure();
/// assert_eq!(breakers.get("api.example.com").window_counts().failures, 1);
/// assert_eq!(breakers.len(), 1);
/// ```
pub struct KeyedBreakers<K> {
    shards: Box<[RwLock<HashMap<K, Entry>>]>,
    hasher: RandomState,
    config: Arc<Config>,
    max_per_shard: usize,
    idle_nanos: u64,
}

impl<K> fmt::Debug for KeyedBreakers<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakers")
            .field("shards", &self.shards.len())
            .field("max_per_shard", &self.max_per_shard)
            .field("idle_nanos", &self.idle_nanos)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone + fmt::Debug> KeyedBreakers<K> {
    /// A registry whose breakers are built like `builder` would build them (each named
    /// `"<name>/<key:?>"`, or `"<key:?>"` without a name). Defaults: at most 1024 keys, idle
    /// timeout 10 minutes.
    pub fn new(builder: BreakerBuilder) -> Result<Self, BreakerConfigError> {
        let config = Arc::new(builder.validate()?);
        Ok(Self::from_parts(
            config,
            NonZeroUsize::new(1024).expect("non-zero"),
            Duration::from_secs(600),
        ))
    }

    fn from_parts(config: Arc<Config>, max_keys: NonZeroUsize, idle: Duration) -> Self {
        let shards = max_keys.get().min(MAX_SHARDS);
        Self {
            shards: (0..shards).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            config,
            max_per_shard: max_keys.get().div_ceil(shards),
            idle_nanos: u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// At most this many breakers are kept (rounded up to a multiple of the shard count).
    /// Default 1024. The breakers already handed out stay in the registry (the least
    /// recently used are dropped if they no longer fit), so a breaker taken before this call
    /// is still the one [`get`](Self::get) returns for its key.
    pub fn max_keys(self, max: NonZeroUsize) -> Self {
        let now = self.now();
        let mut next = Self::from_parts(self.config.clone(), max, Duration::ZERO);
        next.idle_nanos = self.idle_nanos;
        let mut entries: Vec<(K, Entry)> = Vec::from(self.shards)
            .into_iter()
            .flat_map(|shard| shard.into_inner().unwrap_or_else(PoisonError::into_inner))
            .collect();
        // Least recently used first, so that if room runs out, those are the ones dropped.
        entries.sort_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed));
        for (key, entry) in entries {
            let map = next.shard(&key);
            let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
            if map.len() >= next.max_per_shard {
                next.make_room(&mut map, now);
            }
            map.insert(key, entry);
        }
        next
    }

    /// A breaker not used for this long may be dropped ([`evict_idle`](Self::evict_idle), and
    /// when a new key needs room). Default 10 minutes. A dropped breaker's state is lost: a
    /// later call with its key starts closed.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_nanos = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        self
    }

    fn now(&self) -> u64 {
        self.config.clock.nanos()
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &RwLock<HashMap<K, Entry>> {
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[i]
    }

    /// The breaker for `key`, created (closed) if there is none.
    pub fn get<Q>(&self, key: &Q) -> CircuitBreaker
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let shard = self.shard(key);
        let now = self.now();
        {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = map.get(key) {
                touch(entry, now);
                return entry.breaker.clone();
            }
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get(key) {
            touch(entry, now);
            return entry.breaker.clone();
        }
        if map.len() >= self.max_per_shard {
            self.make_room(&mut map, now);
        }
        let key = key.to_owned();
        let name: Arc<str> = match &self.config.name {
            Some(prefix) => format!("{prefix}/{key:?}").into(),
            None => format!("{key:?}").into(),
        };
        let breaker = CircuitBreaker::with_name(self.config.clone(), Some(name));
        map.insert(
            key,
            Entry {
                breaker: breaker.clone(),
                last_used: AtomicU64::new(now),
            },
        );
        breaker
    }

    /// The breaker for `key` if there is one; does not create it.
    pub fn existing<Q>(&self, key: &Q) -> Option<CircuitBreaker>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self
            .shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(key).map(|entry| {
            touch(entry, self.now());
            entry.breaker.clone()
        })
    }

    fn make_room(&self, map: &mut HashMap<K, Entry>, now: u64) {
        let idle = self.idle_nanos;
        map.retain(|_, e| now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < idle);
        if map.len() < self.max_per_shard {
            return;
        }
        // Still full: drop the least recently used.
        let oldest = map
            .iter()
            .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
            .map(|(k, _)| k.clone());
        if let Some(oldest) = oldest {
            map.remove(&oldest);
        }
    }

    /// Drops every breaker idle for longer than the idle timeout; returns how many. Call it
    /// from a periodic task if keys come and go; it is also done when a full shard needs room.
    pub fn evict_idle(&self) -> usize {
        let now = self.now();
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
            let before = map.len();
            map.retain(|_, e| {
                now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < self.idle_nanos
            });
            evicted += before - map.len();
        }
        evicted
    }

    /// Removes the breaker for `key`; returns whether there was one.
    pub fn remove<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut map = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(key).is_some()
    }

    /// How many breakers are kept.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no breaker is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys with their breakers, for observability (a snapshot; takes each shard's read
    /// lock in turn).
    pub fn snapshot(&self) -> Vec<(K, CircuitBreaker)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            out.extend(map.iter().map(|(k, e)| (k.clone(), e.breaker.clone())));
        }
        out
    }
}

#[inline]
fn touch(entry: &Entry, now: u64) {
    if now.saturating_sub(entry.last_used.load(Ordering::Relaxed)) >= TOUCH_GRANULARITY_NANOS {
        entry.last_used.store(now, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::ManualClock;

    #[test]
    fn bounded_and_idle_eviction() {
        let clock = ManualClock::new();
        let keyed = KeyedBreakers::<u32>::new(CircuitBreaker::builder().clock(clock.clone()))
            .unwrap()
            .max_keys(NonZeroUsize::new(4).unwrap())
            .idle_timeout(Duration::from_secs(60));
        for k in 0..100 {
            let _ = keyed.get(&k);
            clock.advance(Duration::from_millis(10));
        }
        assert!(keyed.len() <= 4, "{} keys kept", keyed.len());
        clock.advance(Duration::from_secs(61));
        let _ = keyed.get(&1000);
        assert!(keyed.evict_idle() >= 1);
        assert_eq!(keyed.len(), 1);
        assert!(keyed.existing(&1000).is_some());
        assert!(keyed.remove(&1000));
        assert!(keyed.is_empty());
    }

    #[test]
    fn max_keys_keeps_the_breakers_handed_out() {
        let clock = ManualClock::new();
        let keyed =
            KeyedBreakers::<u32>::new(CircuitBreaker::builder().clock(clock.clone())).unwrap();
        let early = keyed.get(&1);
        for k in 2..=8 {
            let _ = keyed.get(&k);
            clock.advance(Duration::from_millis(10));
        }
        let _ = keyed.get(&1); // now the most recently used
        let keyed = keyed.max_keys(NonZeroUsize::new(2).unwrap());
        assert!(keyed.len() <= 2, "{} keys kept", keyed.len());
        // The breaker taken before `max_keys` is still the registry's breaker for its key.
        early.force_open();
        assert_eq!(keyed.get(&1).state(), crate::breaker::State::ForcedOpen);
    }

    #[test]
    fn same_key_same_breaker() {
        let keyed = KeyedBreakers::<String>::new(CircuitBreaker::builder().name("up")).unwrap();
        let a = keyed.get("a");
        a.force_open();
        assert_eq!(keyed.get("a").state(), crate::breaker::State::ForcedOpen);
        assert_eq!(keyed.get("b").state(), crate::breaker::State::Closed);
        assert_eq!(keyed.get("a").name(), Some("up/\"a\""));
    }
}
