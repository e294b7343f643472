//! One switch for a whole fleet: the maintenance state in one Redis key, followed by every
//! instance.
//!
//! A [`RedisSource`] names the key (and the pub/sub channel that announces its changes);
//! [`MaintenanceSwitch::follow_redis`] starts a task that keeps the switch's
//! [`Source::Redis`] in step with it. Every write ([`RedisSource::enable_with`],
//! [`RedisSource::disable`], the [admin router](super::admin)'s `PUT` and `DELETE` on **any**
//! instance) sets the key and publishes on the channel in one transaction, so each instance
//! re-reads the key within a network round trip; a re-read every
//! [`resync_interval`](RedisSourceBuilder::resync_interval) (5 s) is the safety net for a missed
//! message or a key written by hand without `PUBLISH`.
//!
//! | what the follower sees | effect on [`Source::Redis`] |
//! |---|---|
//! | `{"enabled": true, ...}` | on, with that notice (`until`, `retry_after`, `message`) |
//! | `{"enabled": false}` (what a `DELETE` writes) | off |
//! | `"windows": [...]` in either | those windows open and close by themselves, as [`Window`]s do |
//! | no key (Redis restarted empty, never written) | **no information**: the last known state stays; a fresh instance starts off |
//! | anything else: not JSON, an unknown field, a bad date, a window that ends before it starts, over 64 KiB, a key of another type (a hash: `GET` answers `WRONGTYPE`) | **on**, the layer's default `Retry-After`, logged at warn level once per new content (as a [sentinel file](super::SentinelFile)'s bad content) |
//! | Redis down, unreachable, slower than the [`timeout`](RedisSourceBuilder::timeout), or answering another error (`LOADING`, `NOPERM`) | **the last known state stays** (fail-static); logged once per outage; reconnects with a backoff from 50 ms doubling to at most 1 s, then re-reads the key. A subscription that is cut again and again is one outage: the backoff is reset only once a subscription has held for 1 s |
//!
//! The key holds JSON; every field but `enabled` is optional, and no other field is allowed:
//!
//! ```json
//! {
//!   "enabled": true,
//!   "until": "Sun, 06 Nov 2033 08:49:37 GMT",
//!   "retry_after": 120,
//!   "message": "Upgrading the database.",
//!   "windows": [
//!     {"start": "Sun, 06 Nov 2033 02:00:00 GMT", "end": "Sun, 06 Nov 2033 03:00:00 GMT",
//!      "message": "Planned maintenance."}
//!   ]
//! }
//! ```
//!
//! `until` and the windows' ends are HTTP-dates; `retry_after` is in seconds. The refusal
//! policy's bounds apply as to every source: a `Retry-After` is cut to at most 30 days.
//!
//! While a switch follows Redis, its admin router writes **there only**: a `PUT` on one instance
//! turns the whole fleet on, a `DELETE` on any instance turns it off (it writes
//! `"enabled": false` and keeps the key's windows), and there is no local admin state that a
//! `DELETE` elsewhere could not clear. While Redis is unreachable an admin write answers `503`
//! with `Retry-After: 1` (problem+json) and changes nothing; if the transaction was sent but its
//! answer was lost, the `503` says that it may or may not have been applied (see the
//! [admin router](super::admin)). The other sources
//! ([`enable`](MaintenanceSwitch::enable) in code, a sentinel file, [`schedule`d](MaintenanceSwitch::schedule)
//! windows) stay local to the instance and combine with Redis by the one
//! [precedence rule](super#sources).
//!
//! The follower task stops when the last clone of the switch is dropped (or on
//! [`RedisFollower::stop`]); every Redis call it makes is bounded by the timeout.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_5xx::maintenance::{redis::RedisSource, MaintenanceLayer, MaintenanceNotice, MaintenanceSwitch};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisSource::builder("redis://127.0.0.1:6379/")
//!     .key("myapp:maintenance")
//!     .build()?;
//! let switch = MaintenanceSwitch::new();
//! switch.follow_redis(redis.clone());
//! let layer = MaintenanceLayer::new(switch.clone());
//! // ... serve with `layer`, and mount `admin::router(switch, token)` (feature `axum`) ...
//!
//! // Any instance (or a deploy script) flips the whole fleet:
//! redis
//!     .enable_with(MaintenanceNotice::new().retry_after(Duration::from_secs(300)))
//!     .await?;
//! # let _ = layer;
//! redis.disable().await?;
//! # Ok(())
//! # }
//! ```

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, SystemTime},
};

use futures_core::Stream;
use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Client, RedisError};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{oneshot, Mutex as AsyncMutex},
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};

use super::error::{InvalidRedisConfig, RedisUnavailable};
use super::switch::Shared;
use super::{MaintenanceNotice, MaintenanceSwitch, Source, SystemClock, WallClock, Window};

/// The key used unless [`RedisSourceBuilder::key`] names another.
pub const DEFAULT_KEY: &str = "tower-5xx:maintenance";

/// The largest value read from the key: the JSON needs a few hundred bytes.
const MAX_LEN: usize = 64 * 1024;

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// The longest wait between reconnection attempts: a fleet resyncs within a second of Redis
/// coming back.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Writes retried when another writer changed the key between our read and our write.
const WRITE_ATTEMPTS: usize = 3;

/// The maintenance state of a fleet, in one Redis key: what [`MaintenanceSwitch::follow_redis`]
/// follows and what [`enable_with`](Self::enable_with) and [`disable`](Self::disable) write.
///
/// Cheap to clone (one `Arc`); clones share one connection for writes, and each switch that
/// follows a clone has a connection (and a subscription) of its own. Built by
/// [`RedisSource::builder`]; see the [module docs](self) for the format and the behaviour.
#[derive(Clone)]
pub struct RedisSource {
    store: Arc<Store>,
}

impl fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSource")
            .field("key", &self.store.key)
            .field("channel", &self.store.channel)
            .field("resync_interval", &self.store.resync)
            .field("timeout", &self.store.timeout)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`RedisSource`], from [`RedisSource::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisSourceBuilder {
    url: String,
    key: String,
    channel: Option<String>,
    resync: Duration,
    timeout: Duration,
}

impl RedisSource {
    /// Settings for the Redis at `url` (`redis://host:port/db`, `rediss://` with a TLS feature
    /// of the `redis` crate, `redis+unix:///path`), with the defaults: key [`DEFAULT_KEY`], the
    /// channel named as the key, a re-read every 5 s, a 1 s timeout.
    pub fn builder(url: impl Into<String>) -> RedisSourceBuilder {
        RedisSourceBuilder {
            url: url.into(),
            key: DEFAULT_KEY.to_owned(),
            channel: None,
            resync: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    }

    /// The key holding the state.
    pub fn key(&self) -> &str {
        &self.store.key
    }

    /// The channel on which every write is announced.
    pub fn channel(&self) -> &str {
        &self.store.channel
    }

    /// Writes "on, with `notice`" to the key (keeping its windows) and announces it: every
    /// switch that follows the key applies it within a round trip.
    ///
    /// A deadline given with [`MaintenanceNotice::ends_in`] is written as the wall-clock time
    /// it falls on (`until`), so every instance counts down to the same end.
    pub async fn enable_with(&self, notice: MaintenanceNotice) -> Result<(), RedisUnavailable> {
        self.store.write(Some(notice), None).await
    }

    /// Writes an explicit "off" to the key (keeping its windows) and announces it.
    pub async fn disable(&self) -> Result<(), RedisUnavailable> {
        self.store.write(None, None).await
    }
}

impl RedisSourceBuilder {
    /// The key that holds the state (default [`DEFAULT_KEY`]). The channel is named as the key
    /// unless [`channel`](Self::channel) says otherwise.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// The pub/sub channel on which writes are announced (default: the key's name).
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// How often a follower re-reads the key whatever it was told (default 5 s): the safety net
    /// for a lost message or a key set by hand without `PUBLISH`. It also notices a connection
    /// that died silently.
    pub fn resync_interval(mut self, interval: Duration) -> Self {
        self.resync = interval;
        self
    }

    /// The longest any one Redis call may take: connecting, subscribing, a read, a write
    /// (default 1 s). A call that takes longer counts as Redis being unreachable.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the settings: [`InvalidRedisConfig`] for a URL that does not parse, an empty key
    /// or channel, or a zero interval or timeout. Connects to nothing.
    pub fn build(self) -> Result<RedisSource, InvalidRedisConfig> {
        let client = Client::open(self.url.as_str())
            .map_err(|e| InvalidRedisConfig::new("the URL does not parse", Some(Box::new(e))))?;
        if self.key.is_empty() {
            return Err(InvalidRedisConfig::new("the key is empty", None));
        }
        let channel = self.channel.unwrap_or_else(|| self.key.clone());
        if channel.is_empty() {
            return Err(InvalidRedisConfig::new("the channel is empty", None));
        }
        if self.resync.is_zero() {
            return Err(InvalidRedisConfig::new("the resync interval is zero", None));
        }
        if self.timeout.is_zero() {
            return Err(InvalidRedisConfig::new("the timeout is zero", None));
        }
        Ok(RedisSource {
            store: Arc::new(Store {
                client,
                key: self.key,
                channel,
                resync: self.resync,
                timeout: self.timeout,
                link: AsyncMutex::new(Link::default()),
                #[cfg(test)]
                attempts: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }
}

/// The key, its connection and the switch that follows it.
pub(crate) struct Store {
    client: Client,
    key: String,
    channel: String,
    resync: Duration,
    timeout: Duration,
    /// Held across each read-and-apply and each write-and-apply, so that what a switch applies
    /// last is what was read or written last.
    link: AsyncMutex<Link>,
    /// Subscription attempts, for the tests.
    #[cfg(test)]
    attempts: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Link {
    /// The connection for reads and writes; dropped on any error, made again on the next call.
    conn: Option<MultiplexedConnection>,
    /// What was applied last: unchanged content is not applied (or logged) again.
    last: Option<Content>,
}

/// What a read of the key found, when there is a key.
#[derive(Debug, PartialEq, Eq)]
enum Content {
    /// A string: the raw value.
    String(Vec<u8>),
    /// A key of another type (a hash, a list): Redis answered `WRONGTYPE`.
    OtherType,
}

/// Whether `error` says the key holds something other than a string: the key's content, not a
/// failure of Redis. (Other server errors, `LOADING` or `NOPERM`, are about the server, and are
/// treated as an outage.)
fn is_wrong_type(error: &RedisError) -> bool {
    error.code() == Some("WRONGTYPE")
}

/// What the follower task of a switch holds on to: dropping it (the switch's last clone going, or
/// [`RedisFollower::stop`]) stops the task.
pub(crate) struct Following {
    pub(crate) store: Arc<Store>,
    /// The stores this switch followed before `store` (replaced by
    /// [`follow_redis`](MaintenanceSwitch::follow_redis)), newest first, whose reads and writes
    /// in flight have not been waited for yet: what they read or write meanwhile is still
    /// applied here, as it would have been had they finished first. `store` waits for them
    /// before its first read or write ([`Store::take_over`]), and empties this.
    replaced: Vec<Arc<Store>>,
    _stop: oneshot::Sender<()>,
}

/// The handle of a follower task, from [`MaintenanceSwitch::follow_redis`].
///
/// Dropping the handle does not stop the task: it runs as long as the switch (the task keeps no
/// clone of it), or until [`stop`](Self::stop).
#[derive(Debug)]
pub struct RedisFollower {
    task: JoinHandle<()>,
    switch: Weak<Shared>,
    store: Arc<Store>,
}

impl Store {
    /// The same settings with a connection and a memory of their own.
    fn fork(&self) -> Self {
        Self {
            client: self.client.clone(),
            key: self.key.clone(),
            channel: self.channel.clone(),
            resync: self.resync,
            timeout: self.timeout,
            link: AsyncMutex::new(Link::default()),
            #[cfg(test)]
            attempts: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RedisFollower {
    /// Whether the task has ended (the switch was dropped, or [`stop`](Self::stop)).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops following: the switch keeps the Redis state it last applied, handed over to the
    /// sources of this instance so that they can clear it, and its admin router writes to its
    /// manual source again. Returns once the task has ended.
    ///
    /// The handover: the Redis notice, while on, becomes the [manual](Source::Manual) one (if
    /// the manual source is on too, the notice the [precedence rule](super#sources) puts in
    /// force is kept), so that [`disable`](MaintenanceSwitch::disable) or the admin router's
    /// `DELETE` switches it off; the key's windows become [scheduled](Source::Scheduled) ones,
    /// which still close by themselves and go with
    /// [`clear_schedule`](MaintenanceSwitch::clear_schedule). Nothing read or written through
    /// the stopped follower is applied afterwards.
    ///
    /// An admin router write in flight when `stop` is called (on its way to Redis, or there
    /// already) is waited for: it is applied to this switch before the handover, so the manual
    /// source carries it, as Redis does. A write that reaches the store after the handover
    /// writes nothing (its answer is `503`, "nothing was changed; retry"; the retry writes to
    /// the manual source). So a `200` from the router means the change is in force here, before
    /// and after `stop`. Replacing the follower with another
    /// [`follow_redis`](MaintenanceSwitch::follow_redis) waits for such a write the same way.
    ///
    /// How long it waits: for the reads and writes in flight, each of whose Redis calls is
    /// bounded by the [`timeout`](RedisSourceBuilder::timeout) (a write on an unreachable
    /// Redis gives up within a few timeouts). A `stop` given up on (its future dropped by a
    /// `timeout` or a `select!`) still happens, in a task of its own, once those are done.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub async fn stop(self) {
        let Self {
            task,
            switch,
            store,
        } = self;
        // In a task of its own: a stop given up on while it waits for a write in flight (its
        // future dropped: a `timeout`, a `select!`) still happens once the write is done. It
        // consumed the only handle, so a stop that did nothing would leave the switch
        // following this store for good.
        let stopping = tokio::spawn(async move {
            if let Some(switch) = MaintenanceSwitch::upgrade(&switch) {
                // Stop following under the link: a read or write in flight (it holds the
                // link) is applied first, and the handover includes it; those that come after
                // see that the switch no longer follows this store, and neither write nor
                // apply anything.
                let link = store.link.lock().await;
                store.take_over(&switch).await;
                let following = {
                    let mut redis = lock(&switch.shared().redis);
                    if redis
                        .as_ref()
                        .is_some_and(|f| Arc::ptr_eq(&f.store, &store))
                    {
                        redis.take()
                    } else {
                        None
                    }
                };
                if let Some(following) = following {
                    switch.hand_over_to_manual(Source::Redis);
                    drop(following);
                }
                drop(link);
            }
            let _ = task.await;
        });
        if let Err(e) = stopping.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
impl MaintenanceSwitch {
    /// Follows the fleet-wide state in `redis` as the [`Source::Redis`] of this switch, and
    /// sends this switch's [admin router](super::admin) writes there: see the
    /// [module docs](super::redis). Starts a task on the current tokio runtime that subscribes
    /// to the channel, reads the key at once and on every message, re-reads it every resync
    /// interval, and reconnects (backoff capped at 1 s) whenever Redis is unreachable, keeping
    /// the last known state meanwhile.
    ///
    /// The task ends when the last clone of this switch is dropped, or with
    /// [`RedisFollower::stop`]. Following another source replaces (and stops) the previous one:
    /// the admin router writes to the new source from now on. A read or an admin write of the
    /// previous source in flight (on its way to Redis, or there already) is still applied to
    /// this switch, and the new source's first read or write waits for it, so the new source's
    /// state is applied after it: a `200` from the router for such a write means its change was
    /// applied here, until the new source's state (its key in the new Redis) replaces it. (A
    /// [`RedisFollower::stop`] keeps it instead: the manual source carries it on.) A write of
    /// the previous source that comes after that writes nothing (`503`, "nothing was changed;
    /// retry"; the retry writes to the new source).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn follow_redis(&self, redis: RedisSource) -> RedisFollower {
        // A store (connection, last value seen) of its own: clones of one source may be followed
        // by several switches, and each must apply every change.
        let store = Arc::new(redis.store.fork());
        let (stop, stopped) = oneshot::channel();
        let mut redis = lock(&self.shared().redis);
        let previous = redis.take();
        // The previous store, and those it had not taken over from yet: until the new store
        // has waited for what they have in flight, that is still applied here.
        let replaced = previous
            .as_ref()
            .map(|p| {
                std::iter::once(p.store.clone())
                    .chain(p.replaced.iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        *redis = Some(Following {
            store: store.clone(),
            replaced,
            _stop: stop,
        });
        drop(redis);
        // Stops the previous task.
        drop(previous);
        let task = tokio::spawn(follow(store.clone(), self.downgrade(), stopped));
        RedisFollower {
            task,
            switch: self.downgrade(),
            store,
        }
    }

    /// The Redis source this switch follows, if any: where the admin router writes.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))] // only the admin router writes
    pub(crate) fn redis_store(&self) -> Option<Arc<Store>> {
        lock(&self.shared().redis).as_ref().map(|f| f.store.clone())
    }
}

/// The follower: subscribe, read, then re-read on every message and every resync tick; on any
/// failure keep the state, log once per outage, and reconnect with a capped backoff.
///
/// A subscription that is cut again and again (`CLIENT KILL TYPE pubsub`, an output buffer
/// limit, a proxy) is one outage: the wait before each new attempt keeps doubling, and the
/// outage ends (backoff reset, "reachable again" logged) only once a subscription has held for
/// [`MAX_BACKOFF`].
async fn follow(store: Arc<Store>, switch: Weak<Shared>, mut stop: oneshot::Receiver<()>) {
    // Replacing another source: what it has in flight first, whether Redis is reachable or not.
    tokio::select! {
        _ = &mut stop => return,
        () = store.take_over_weak(&switch) => {}
    }
    let mut backoff = MIN_BACKOFF;
    // When the current outage began; `None` while connected (or before the first attempt).
    let mut down_since: Option<Instant> = None;
    loop {
        let connected = tokio::select! {
            _ = &mut stop => return,
            connected = store.subscribe(&switch) => connected,
        };
        let failure = match connected {
            Ok(Some(messages)) => {
                match store
                    .listen(&switch, messages, &mut stop, &mut backoff, &mut down_since)
                    .await
                {
                    Some(failure) => failure,
                    None => return, // stopped, or the switch is gone
                }
            }
            Ok(None) => return, // the switch is gone
            Err(e) => e,
        };
        store.outage(&mut down_since, &failure);
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

impl Store {
    /// Re-reads the key on every message of a fresh subscription and on every resync tick,
    /// until something fails (the failure) or the follower must end (`None`). Once the
    /// subscription has held for [`MAX_BACKOFF`], the outage is over: `backoff` starts again
    /// from its minimum and `down_since` is cleared.
    async fn listen(
        &self,
        switch: &Weak<Shared>,
        mut messages: redis::aio::PubSubStream,
        stop: &mut oneshot::Receiver<()>,
        backoff: &mut Duration,
        down_since: &mut Option<Instant>,
    ) -> Option<RedisError> {
        let settled = tokio::time::sleep(MAX_BACKOFF);
        tokio::pin!(settled);
        let mut is_settled = false;
        let mut ticks = tokio::time::interval_at(Instant::now() + self.resync, self.resync);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                _ = &mut *stop => return None,
                () = &mut settled, if !is_settled => {
                    is_settled = true;
                    *backoff = MIN_BACKOFF;
                    if let Some(since) = down_since.take() {
                        tracing::info!(
                            key = %self.key,
                            outage = ?since.elapsed(),
                            "maintenance: Redis reachable again; the key was re-read"
                        );
                    }
                    continue;
                }
                message = next(&mut messages) => {
                    if message.is_none() {
                        return Some(RedisError::from((
                            redis::ErrorKind::Io,
                            "the subscription connection closed",
                        )));
                    }
                    "message"
                }
                _ = ticks.tick() => "resync",
            };
            match self.refresh(switch).await {
                Ok(true) => tracing::trace!(key = %self.key, wake, "maintenance: Redis key read"),
                Ok(false) => return None, // the switch is gone
                Err(e) => return Some(e),
            }
        }
    }
}

/// The next message of the subscription; `None` once its connection has closed.
async fn next(messages: &mut redis::aio::PubSubStream) -> Option<redis::Msg> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *messages).poll_next(cx)).await
}

impl Store {
    /// Logs the first failure of an outage at warn level, later ones at debug level.
    fn outage(&self, down_since: &mut Option<Instant>, error: &RedisError) {
        if down_since.is_none() {
            *down_since = Some(Instant::now());
            tracing::warn!(
                key = %self.key,
                error = %error,
                "maintenance: Redis unreachable; keeping the last known state and reconnecting \
                 (backoff up to 1 s); logged once per outage"
            );
        } else {
            tracing::debug!(key = %self.key, error = %error, "maintenance: Redis still unreachable");
        }
    }

    /// Opens a subscription to the channel, then reads the key and applies it (after
    /// subscribing, so that no write falls between the read and the first message). `None` when
    /// the switch is gone.
    async fn subscribe(
        &self,
        switch: &Weak<Shared>,
    ) -> Result<Option<redis::aio::PubSubStream>, RedisError> {
        #[cfg(test)]
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut pubsub = self.bounded(self.client.get_async_pubsub()).await?;
        self.bounded(pubsub.subscribe(&self.channel)).await?;
        if !self.refresh(switch).await? {
            return Ok(None);
        }
        Ok(Some(pubsub.into_on_message()))
    }

    /// `call`, failing with a timeout error after [`Self::timeout`].
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from((
                redis::ErrorKind::Io,
                "timed out",
                format!("no answer within {:?}", self.timeout),
            ))),
        }
    }

    /// The connection for reads and writes, made if there is none.
    async fn connection(&self, link: &mut Link) -> Result<MultiplexedConnection, RedisError> {
        if let Some(conn) = &link.conn {
            return Ok(conn.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = self
            .bounded(
                self.client
                    .get_multiplexed_async_connection_with_config(&config),
            )
            .await?;
        link.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Reads the key and applies it to the switch. `Ok(false)` when the switch is gone.
    async fn refresh(&self, switch: &Weak<Shared>) -> Result<bool, RedisError> {
        let mut link = self.link.lock().await;
        let Some(switch) = MaintenanceSwitch::upgrade(switch) else {
            return Ok(false);
        };
        self.take_over(&switch).await;
        // A connection cached from before an outage is broken even if Redis is back: one more
        // try on a fresh connection before reporting Redis unreachable.
        let mut read = Err(RedisError::from((redis::ErrorKind::Io, "not tried")));
        for _ in 0..2 {
            let cached = link.conn.is_some();
            read = match self.connection(&mut link).await {
                Ok(mut conn) => {
                    self.bounded(
                        redis::cmd("GET")
                            .arg(&self.key)
                            .query_async::<Option<Vec<u8>>>(&mut conn),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match &read {
                Ok(_) => break,
                // Redis answered: the connection is fine, the key is of another type.
                Err(e) if is_wrong_type(e) => break,
                Err(_) => {}
            }
            link.conn = None;
            if !cached {
                break;
            }
        }
        let content = match read {
            Ok(value) => value.map(Content::String),
            Err(e) if is_wrong_type(&e) => Some(Content::OtherType),
            Err(e) => return Err(e),
        };
        self.apply(&mut link, &switch, content);
        Ok(true)
    }

    /// Whether `switch` follows this store (not stopped; not replaced, or replaced by a store
    /// that has not yet waited for what this one has in flight).
    fn is_followed_by(&self, switch: &MaintenanceSwitch) -> bool {
        lock(&switch.shared().redis).as_ref().is_some_and(|f| {
            std::ptr::eq(&*f.store, self) || f.replaced.iter().any(|r| std::ptr::eq(&**r, self))
        })
    }

    /// Called with this store's link held, before a read or write applied to `switch`: if this
    /// store replaced others that have not been waited for, waits for their reads and writes
    /// in flight (each holds its store's link; they are applied to the switch first), then
    /// stops applying theirs. Links are taken newest store first, as every holder of several
    /// does, so no two wait for each other. Nothing to do (one lock, one check) otherwise.
    async fn take_over(&self, switch: &MaintenanceSwitch) {
        let replaced = match lock(&switch.shared().redis).as_ref() {
            Some(f) if std::ptr::eq(&*f.store, self) && !f.replaced.is_empty() => {
                f.replaced.clone()
            }
            _ => return,
        };
        let mut held = Vec::with_capacity(replaced.len());
        for store in &replaced {
            held.push(store.link.lock().await);
        }
        if let Some(f) = lock(&switch.shared().redis).as_mut() {
            if std::ptr::eq(&*f.store, self) {
                f.replaced
                    .retain(|r| !replaced.iter().any(|done| Arc::ptr_eq(done, r)));
            }
        }
        drop(held);
    }

    /// [`take_over`](Self::take_over) under this store's link, while the switch is alive.
    async fn take_over_weak(&self, switch: &Weak<Shared>) {
        let _link = self.link.lock().await;
        if let Some(switch) = MaintenanceSwitch::upgrade(switch) {
            self.take_over(&switch).await;
        }
    }

    /// Applies what was read from (or written to) the key, if it changed.
    fn apply(&self, link: &mut Link, switch: &MaintenanceSwitch, content: Option<Content>) {
        // No key: no information. Keep what is known (a fresh instance stays off).
        let Some(content) = content else { return };
        // A follower stopped or replaced has handed its state over: it applies nothing more.
        if !self.is_followed_by(switch) {
            return;
        }
        if link.last.as_ref() == Some(&content) {
            return;
        }
        let parsed = match &content {
            Content::String(value) => parse(value),
            Content::OtherType => Err("not a string (Redis answered WRONGTYPE)".to_owned()),
        };
        match parsed {
            Ok((notice, windows)) => switch.replace(Source::Redis, notice, windows),
            Err(why) => {
                tracing::warn!(
                    key = %self.key,
                    error = %why,
                    "maintenance Redis key: bad content; maintenance on with the default \
                     Retry-After"
                );
                switch.replace(Source::Redis, Some(MaintenanceNotice::new()), Vec::new());
            }
        }
        link.last = Some(content);
    }

    /// Writes on (`Some`) or off (`None`), keeping the key's windows, and applies it to
    /// `switch` (the admin router's, which follows this store). Nothing is applied if Redis
    /// fails; nothing is written either, unless the failure was a lost reply to the transaction
    /// ([`RedisUnavailable::may_have_been_applied`]).
    pub(crate) async fn write(
        &self,
        notice: Option<MaintenanceNotice>,
        switch: Option<&MaintenanceSwitch>,
    ) -> Result<(), RedisUnavailable> {
        let mut link = self.link.lock().await;
        if let Some(switch) = switch {
            self.take_over(switch).await;
        }
        // The switch stopped following this store while the write waited for the link
        // (`RedisFollower::stop`, or another source followed and done waiting for this one):
        // what it wrote would reach Redis and not the switch.
        if switch.is_some_and(|switch| !self.is_followed_by(switch)) {
            return Err(RedisUnavailable::new(
                "the switch stopped following this Redis source; nothing was written",
            ));
        }
        let clock: &dyn WallClock = match switch {
            Some(switch) => switch.clock(),
            None => &SystemClock,
        };
        let mut stored = match &notice {
            Some(notice) => Stored::on(notice, clock),
            None => Stored::default(),
        };
        // A connection cached from before an outage is broken even if Redis is back: one more
        // try on a fresh connection before answering that Redis is unavailable.
        let mut written = Err(RedisError::from((redis::ErrorKind::Io, "not tried")));
        // Whether a transaction was sent whose outcome is unknown (its reply was lost).
        let mut maybe_applied = false;
        for _ in 0..2 {
            let cached = link.conn.is_some();
            written = match self.connection(&mut link).await {
                Ok(mut conn) => self.write_once(&mut conn, &mut stored).await.map_err(|f| {
                    maybe_applied |= f.maybe_applied;
                    f.error
                }),
                Err(e) => Err(e),
            };
            if written.is_ok() {
                break;
            }
            link.conn = None;
            if !cached {
                break;
            }
        }
        match written {
            Ok(json) => {
                if let Some(switch) = switch {
                    self.apply(&mut link, switch, Some(Content::String(json)));
                }
                Ok(())
            }
            Err(e) if maybe_applied => {
                tracing::warn!(
                    key = %self.key,
                    error = %e,
                    "maintenance: Redis did not confirm the write; it may or may not have been \
                     applied"
                );
                Err(RedisUnavailable::unconfirmed(e))
            }
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "maintenance: Redis write failed; nothing changed");
                Err(RedisUnavailable::new(e))
            }
        }
    }
}

/// A failed write attempt.
struct WriteFailure {
    error: RedisError,
    /// The transaction was sent and no answer came back (an I/O error, a timeout): Redis may
    /// have applied it. `false` when it failed before it was sent, or Redis refused it.
    maybe_applied: bool,
}

impl From<RedisError> for WriteFailure {
    fn from(error: RedisError) -> Self {
        Self {
            error,
            maybe_applied: false,
        }
    }
}

impl Store {
    /// Sets the key to `stored` (with the windows the key holds now) and publishes it, in one
    /// transaction; retried when another writer changed the key meanwhile. Returns the JSON.
    async fn write_once(
        &self,
        conn: &mut MultiplexedConnection,
        stored: &mut Stored,
    ) -> Result<Vec<u8>, WriteFailure> {
        for _ in 0..WRITE_ATTEMPTS {
            // Keep the windows already in the key; a concurrent writer aborts this attempt.
            self.bounded(redis::cmd("WATCH").arg(&self.key).exec_async(&mut *conn))
                .await?;
            let old: Option<Vec<u8>> = match self
                .bounded(redis::cmd("GET").arg(&self.key).query_async(&mut *conn))
                .await
            {
                Ok(old) => old,
                // A key of another type has no windows to keep; `SET` replaces it.
                Err(e) if is_wrong_type(&e) => None,
                Err(e) => return Err(e.into()),
            };
            stored.windows = old
                .and_then(|old| serde_json::from_slice::<Stored>(&old).ok())
                .map(|old| old.windows)
                .unwrap_or_default();
            let json = serde_json::to_vec(&stored).expect("the state always serializes");
            let done: Option<(redis::Value, redis::Value)> = self
                .bounded(
                    redis::pipe()
                        .atomic()
                        .set(&self.key, &json)
                        .publish(&self.channel, &json)
                        .query_async(&mut *conn),
                )
                .await
                // An error answered by Redis (a code such as `EXECABORT`) means it refused the
                // transaction; without an answer, `EXEC` may have run.
                .map_err(|error| WriteFailure {
                    maybe_applied: error.code().is_none(),
                    error,
                })?;
            if done.is_some() {
                return Ok(json);
            }
        }
        Err(RedisError::from((
            redis::ErrorKind::Io,
            "the key kept changing under the write",
        ))
        .into())
    }
}

/// The JSON in the key.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    windows: Vec<StoredWindow>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredWindow {
    start: String,
    end: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl Stored {
    fn on(notice: &MaintenanceNotice, clock: &dyn WallClock) -> Self {
        Self {
            enabled: true,
            // Rounded up to a whole second, as the retry delay below: the fleet is never told
            // that maintenance ends before it does.
            until: notice.ends_at(clock).map(crate::retry_after::fmt_end_date),
            // Whole seconds, rounded up: a client is never told to come back early.
            retry_after: notice
                .get_retry_after()
                .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
            message: notice.get_message().map(str::to_owned),
            windows: Vec::new(),
        }
    }
}

/// What a value of the key says: the notice (`None`: off) and the windows, or why it is bad.
fn parse(value: &[u8]) -> Result<(Option<MaintenanceNotice>, Vec<Window>), String> {
    if value.len() > MAX_LEN {
        return Err(format!("longer than {MAX_LEN} bytes"));
    }
    let stored: Stored = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    let date = |what: &str, s: &str| -> Result<SystemTime, String> {
        httpdate::parse_http_date(s).map_err(|_| format!("{what} is not an HTTP-date: {s:?}"))
    };
    let mut windows = Vec::with_capacity(stored.windows.len());
    for w in &stored.windows {
        let window = Window::new(
            date("a window's start", &w.start)?,
            date("a window's end", &w.end)?,
        )
        .map_err(|e| e.to_string())?;
        windows.push(match &w.message {
            Some(m) => window.message(m.clone()),
            None => window,
        });
    }
    if !stored.enabled {
        return Ok((None, windows));
    }
    let mut notice = MaintenanceNotice::new();
    if let Some(until) = &stored.until {
        notice = notice.until(date("`until`", until)?);
    }
    if let Some(secs) = stored.retry_after {
        notice = notice.retry_after(Duration::from_secs(secs));
    }
    if let Some(message) = stored.message {
        notice = notice.message(message);
    }
    Ok((Some(notice), windows))
}

/// A real `redis-server` for the tests below (the integration tests' helper).
#[cfg(test)]
#[path = "../../tests/common/redis.rs"]
mod test_server;

#[cfg(test)]
mod tests {
    use super::*;

    /// An admin write that took the store before `stop` and reaches it after the handover (it
    /// waited for the link meanwhile) writes nothing: in Redis it would not be in force here.
    /// Before, it was written to Redis, not applied, and answered as a success.
    #[tokio::test]
    async fn a_write_that_reaches_a_stopped_store_writes_nothing() {
        let server = test_server::RedisServer::start();
        let key = "tower-5xx-unit:write-after-stop";
        let switch = MaintenanceSwitch::new();
        let follower =
            switch.follow_redis(RedisSource::builder(server.url()).key(key).build().unwrap());
        // What the admin router holds while its write waits.
        let store = switch.redis_store().expect("the switch follows Redis");
        follower.stop().await;
        let written = store
            .write(
                Some(MaintenanceNotice::new().message("late")),
                Some(&switch),
            )
            .await;
        let error = written.expect_err("a write to a store no longer followed");
        assert!(!error.may_have_been_applied());
        assert_eq!(
            server.command(&["EXISTS", key]),
            ":0\r\n",
            "written to Redis"
        );
        assert!(!switch.status().enabled);
        // Written from code (no switch), the store still writes.
        store.write(None, None).await.unwrap();
        assert_eq!(server.command(&["EXISTS", key]), ":1\r\n");
    }

    #[test]
    fn parsing() {
        let secs = Duration::from_secs;
        assert_eq!(parse(br#"{"enabled": false}"#), Ok((None, vec![])));
        assert_eq!(
            parse(br#"{"enabled": true}"#),
            Ok((Some(MaintenanceNotice::new()), vec![]))
        );
        let t = httpdate::parse_http_date("Sun, 06 Nov 2033 08:49:37 GMT").unwrap();
        assert_eq!(
            parse(
                br#"{"enabled": true, "until": "Sun, 06 Nov 2033 08:49:37 GMT",
                     "retry_after": 120, "message": "Back soon.",
                     "windows": [{"start": "Sun, 06 Nov 2033 08:49:37 GMT",
                                  "end": "Sun, 06 Nov 2033 09:49:37 GMT", "message": "w"}]}"#
            ),
            Ok((
                Some(
                    MaintenanceNotice::new()
                        .until(t)
                        .retry_after(secs(120))
                        .message("Back soon.")
                ),
                vec![Window::new(t, t + secs(3600)).unwrap().message("w")]
            ))
        );
        // Off, but with a window: the window still counts.
        assert_eq!(
            parse(
                br#"{"enabled": false, "windows": [{"start": "Sun, 06 Nov 2033 08:49:37 GMT",
                     "end": "Sun, 06 Nov 2033 09:49:37 GMT"}]}"#
            )
            .unwrap()
            .1
            .len(),
            1
        );
        for bad in [
            &b""[..],
            b"on",
            b"{}",
            b"{\"enabled\": \"yes\"}",
            b"{\"enabled\": true, \"retry_afterr\": 5}",
            b"{\"enabled\": true, \"until\": \"tomorrow\"}",
            b"{\"enabled\": true, \"retry_after\": -1}",
            br#"{"enabled": false, "windows": [{"start": "Sun, 06 Nov 2033 09:49:37 GMT",
                 "end": "Sun, 06 Nov 2033 08:49:37 GMT"}]}"#,
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = br#"{"enabled": true, "message": ""#.to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LEN));
        long.extend(br#""}"#);
        assert!(parse(&long).is_err());
    }

    /// Reconnection attempts back off from 50 ms, doubling, to at most 1 s apart (tokio's clock,
    /// paused; the Redis address is a closed loopback port, so each attempt fails at once).
    #[tokio::test(start_paused = true)]
    async fn reconnection_backs_off_to_at_most_a_second() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let source = RedisSource::builder(format!("redis://127.0.0.1:{port}/"))
            .build()
            .unwrap();
        let switch = MaintenanceSwitch::new();
        switch.enable_with(MaintenanceNotice::new().message("kept"));
        let follower = switch.follow_redis(source);
        let store = follower.store.clone();
        let attempts = || store.attempts.load(std::sync::atomic::Ordering::Relaxed);
        // Attempts at 0, 50, 150, 350, 750, 1550 ms (waits of 50, 100, 200, 400, 800 ms), then
        // 1 s apart: the doubling stops at the cap.
        let mut at = Vec::new();
        let start = Instant::now();
        let mut seen = 0;
        while start.elapsed() < Duration::from_secs(6) {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if attempts() > seen {
                seen = attempts();
                at.push(start.elapsed().as_millis() / 10 * 10);
            }
        }
        assert_eq!(at[..6], [0, 50, 150, 350, 750, 1550], "{at:?}");
        let gaps: Vec<_> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[5..].iter().all(|&gap| gap == 1000), "{at:?}");
        // Fail-static: the other sources are untouched, Redis says nothing.
        assert_eq!(switch.status().sources, [Source::Manual]);
        drop(switch);
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert!(follower.is_finished());
    }

    #[test]
    fn invalid_settings_are_errors_at_build() {
        let ok = || RedisSource::builder("redis://127.0.0.1:6379/");
        assert!(ok().build().is_ok());
        let err = |b: RedisSourceBuilder| b.build().unwrap_err().to_string();
        assert!(err(RedisSource::builder("http://example.com/")).contains("URL"));
        assert!(err(RedisSource::builder("not a url")).contains("URL"));
        assert!(err(ok().key("")).contains("key is empty"));
        assert!(err(ok().channel("")).contains("channel is empty"));
        assert!(err(ok().resync_interval(Duration::ZERO)).contains("resync interval"));
        assert!(err(ok().timeout(Duration::ZERO)).contains("timeout"));
        let source = ok().key("k").build().unwrap();
        assert_eq!((source.key(), source.channel()), ("k", "k"));
        let source = ok().key("k").channel("c").build().unwrap();
        assert_eq!((source.key(), source.channel()), ("k", "c"));
    }

    #[test]
    fn public_types_are_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RedisSource>();
        assert_send_sync::<RedisSourceBuilder>();
        assert_send_sync::<RedisFollower>();
        assert_send_sync::<InvalidRedisConfig>();
        assert_send_sync::<RedisUnavailable>();
    }

    #[test]
    fn what_is_written_reads_back() {
        let t = httpdate::parse_http_date("Sun, 06 Nov 2033 08:49:37 GMT").unwrap();
        let notice = MaintenanceNotice::new()
            .until(t)
            .retry_after(Duration::from_millis(1500))
            .message("m");
        let json = serde_json::to_vec(&Stored::on(&notice, &SystemClock)).unwrap();
        let (read, windows) = parse(&json).unwrap();
        // 1.5 s is written as 2 s: never earlier than asked.
        assert_eq!(
            read,
            Some(
                MaintenanceNotice::new()
                    .until(t)
                    .retry_after(Duration::from_secs(2))
                    .message("m")
            )
        );
        assert!(windows.is_empty());
        let off = serde_json::to_vec(&Stored::default()).unwrap();
        assert_eq!(off, br#"{"enabled":false}"#);
    }

    /// An end with sub-seconds is written rounded up (an HTTP-date carries whole seconds): the
    /// fleet is never told that maintenance ends before it does.
    #[test]
    fn an_end_between_seconds_is_written_rounded_up() {
        let t = httpdate::parse_http_date("Sun, 06 Nov 2033 08:49:37 GMT").unwrap();
        let notice = MaintenanceNotice::new().until(t + Duration::from_millis(300));
        let json = serde_json::to_vec(&Stored::on(&notice, &SystemClock)).unwrap();
        let (read, _) = parse(&json).unwrap();
        assert_eq!(
            read,
            Some(MaintenanceNotice::new().until(t + Duration::from_secs(1)))
        );
        // And one past what an HTTP-date can say is written as the last date it can.
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        let json = serde_json::to_vec(&Stored::on(
            &MaintenanceNotice::new().until(far),
            &SystemClock,
        ))
        .unwrap();
        assert!(parse(&json).is_ok(), "{}", String::from_utf8_lossy(&json));
    }
}
