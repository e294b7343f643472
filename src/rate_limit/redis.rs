//! The Redis store: one quota for a fleet, one atomic GCRA decision per request.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, PoisonError, RwLock,
    },
    time::Duration,
};

use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    Client, RedisError, Script,
};

use super::{
    future::Deciding,
    key::Key,
    layer::Shared,
    policy::{Decision, MAX_POLICIES, NANOS_PER_SEC},
};
use crate::error::InvalidConfig;

/// The decision, atomically in Redis: for each policy (one key each, `KEYS[i]`, with its
/// emission interval and capacity in `ARGV[4i-3..4i]`, each as whole seconds and nanoseconds),
/// the GCRA check of the in-memory store ([`Gcra::check`](super::policy::Gcra::check)), in the
/// same nanoseconds, against Redis's own clock (`TIME`, so instances with skewed clocks
/// agree). Only if every policy admits the request are the new theoretical arrival times
/// stored, each expiring when it is no longer ahead of the clock. Returns
/// `{admitted, debt_s_1, debt_ns_1, violated_1, ...}`: each debt as seconds and nanoseconds
/// (after the request if it was admitted, as it stands if it was not).
///
/// Lua's numbers are doubles, exact for whole numbers up to 2^53 only: nanoseconds since the
/// epoch (about 2^61) do not fit, nor does a debt of more than 104 days in nanoseconds. So
/// every time is a pair `(s, ns)`, seconds and nanoseconds (`ns < 10^9`), and the arithmetic
/// is exact for any policy [`Policy`](super::Policy) accepts. A TAT is stored as microseconds
/// since the epoch with the nanoseconds as a three-digit fraction (`1700000000123456.789`):
/// what earlier versions stored, whole microseconds, reads the same, and they read this as
/// a number of microseconds, so a fleet in the middle of an upgrade shares its quotas.
const GCRA_LUA: &str = r"
local G = 1000000000
local function add(as, an, bs, bn)
  local s, n = as + bs, an + bn
  if n >= G then return s + 1, n - G end
  return s, n
end
local function sub(as, an, bs, bn)
  local s, n = as - bs, an - bn
  if n < 0 then return s - 1, n + G end
  return s, n
end
local function le(as, an, bs, bn)
  return as < bs or (as == bs and an <= bn)
end
local function parse(v)
  if not v then return nil end
  local us, frac = string.match(v, '^(%d+)%.?(%d*)$')
  if not us or #us < 7 or (#frac ~= 0 and #frac ~= 3) then return nil end
  return tonumber(string.sub(us, 1, -7)), tonumber(string.sub(us, -6)) * 1000 + (tonumber(frac) or 0)
end
local t = redis.call('TIME')
local now_s, now_n = tonumber(t[1]), tonumber(t[2]) * 1000
local out = {1}
local new = {}
local before = {}
for i = 1, #KEYS do
  local a = 4 * i - 3
  local is, inn = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local cs, cn = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local ts, tn = parse(redis.call('GET', KEYS[i]))
  if not ts or le(ts, tn, now_s, now_n) then ts, tn = now_s, now_n end
  local as, an = add(ts, tn, is, inn)
  local ds, dn = sub(as, an, now_s, now_n)
  local o = 3 * i - 1
  before[i] = {sub(ts, tn, now_s, now_n)}
  if le(ds, dn, cs, cn) then
    new[i] = {as, an, ds, dn}
    out[o], out[o + 1], out[o + 2] = ds, dn, 0
  else
    out[1] = 0
    out[o], out[o + 1], out[o + 2] = before[i][1], before[i][2], 1
  end
end
if out[1] == 0 then
  for i = 1, #KEYS do
    out[3 * i - 1], out[3 * i] = before[i][1], before[i][2]
  end
else
  for i = 1, #KEYS do
    local n = new[i]
    local tat = string.format('%d%06d.%03d', n[1], math.floor(n[2] / 1000), n[2] % 1000)
    local ttl = n[3] * 1000 + math.ceil(n[4] / 1000000) + 1
    redis.call('SET', KEYS[i], tat, 'PX', ttl)
  end
end
return out
";

/// Quotas kept in Redis, shared by every instance that uses the same server and
/// [prefix](Self::prefix). Give it to [`RateLimitBuilder::redis`](super::RateLimitBuilder::redis).
///
/// | setting | default |
/// |---|---|
/// | [`timeout`](Self::timeout) | **5 ms** per decision, connection included (on loopback or in one zone a decision takes well under 1 ms) |
/// | on failure | **fail open**: the layer decides with its in-memory store, per instance ([`fail_closed`](Self::fail_closed) to answer 503 instead) |
/// | [`prefix`](Self::prefix) | `tower-5xx:rl:` |
///
/// **One round trip per request**: a Lua script run with `EVALSHA` (loaded again by itself
/// after a Redis restart) makes the whole decision atomically, so two instances sharing a
/// quota admit at most that quota between them. It reads Redis's clock, not the instances'.
/// Requests share one multiplexed connection ([`ConnectionManager`], which reconnects by
/// itself in the background when the connection breaks). A connection that goes **silent**
/// instead (a failover or a partition: no error, no close, just no answer) is one the manager
/// never sees fail, since the store gives up on the decision first: after
/// 3 decisions in a row that ran out of time, lost the connection or reached a node that
/// cannot decide (`READONLY` from a demoted primary; an error about the data, such as
/// WRONGTYPE, proves the connection alive and does not count), a store made by
/// [`connect`](Self::connect) makes a new connection manager in the background (one at a
/// time, at most one attempt a second; requests meanwhile go on with the old one) and switches
/// to it once connected.
///
/// **A slow or dead Redis never stalls a request beyond the timeout and never causes a 500**:
/// past it, the request is decided by the layer's in-memory store (the same policies, counted
/// per instance, so a fleet of N admits up to N times the quota while Redis is away), or, with
/// [`fail_closed`](Self::fail_closed), answered **503 + `Retry-After`** (the server cannot
/// tell whether the client is within quota: that is not the client's fault, so not a 429).
/// When Redis is back, decisions go back to it; a restarted Redis without persistence starts
/// every client afresh.
///
/// Keys are `{prefix}{<client key>}:<policy name>`, with a hash tag so that one client's keys
/// share a slot in a Redis Cluster. Each expires once its client is back to a full quota.
#[derive(Clone)]
pub struct RedisStore {
    conn: Arc<Connection>,
    script: Arc<Script>,
    prefix: Arc<[u8]>,
    timeout: Duration,
    pub(crate) fail_closed: Option<Duration>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("timeout", &self.timeout)
            .field("fail_closed", &self.fail_closed)
            .finish_non_exhaustive()
    }
}

/// How many decisions in a row may fail or run out of time before the store replaces its
/// connection manager.
const REPLACE_AFTER: u32 = 3;

/// The least time between two attempts to replace the connection manager.
const REPLACE_INTERVAL: Duration = Duration::from_secs(1);

/// The connection manager in use, and what replaces it when its connection goes silent.
struct Connection {
    /// Read for a moment by each decision (to clone it); written only when replaced.
    ///
    /// A lock on the hot path, kept on purpose: the slot must be swappable (the manager cannot
    /// be told to reconnect, so a silent connection is replaced by a new manager), std has no
    /// atomic `Arc` swap (and `arc-swap` is no dependency of ours), and the safe alternatives
    /// (a manager cached per thread or per service behind a generation counter) keep replaced
    /// managers, and their connections, alive in caches nobody polls. The read is two
    /// uncontended atomic operations on the cache line that the decision's `Arc<Connection>`
    /// clone touches anyway: about 5 ns on one thread and up to 20 ns with two threads
    /// deciding at once (against about 10 and 40 ns for the clones of the `Arc` and the
    /// manager that each decision makes regardless), for a decision that waits on a round
    /// trip to Redis (1.2 ms at p50 in `BENCHMARKS.md`). A writer holds it for one
    /// `mem::replace`, at most once a second.
    manager: RwLock<ConnectionManager>,
    /// What makes a new manager; `None` for a manager the user made.
    client: Option<(Client, ConnectionManagerConfig)>,
    /// Decisions in a row that failed or ran out of time.
    failures: AtomicU32,
    /// A replacement is under way (or waiting out [`REPLACE_INTERVAL`] after a failed one).
    replacing: AtomicBool,
}

impl Connection {
    fn manager(&self) -> ConnectionManager {
        self.manager
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn succeeded(&self) {
        // Read first: a write on every decision would bounce the cache line between cores.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failed decision; the [`REPLACE_AFTER`]th in a row starts a replacement, unless
    /// one is under way. Called inside a runtime (from the decision's future).
    fn failed(self: &Arc<Self>) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures < REPLACE_AFTER
            || self.client.is_none()
            || self.replacing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let Some((client, config)) = &this.client else {
                return;
            };
            tracing::info!(failures, "rate limit: replacing the Redis connection");
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(manager) => {
                    let old = std::mem::replace(
                        &mut *this.manager.write().unwrap_or_else(PoisonError::into_inner),
                        manager,
                    );
                    // Decisions still waiting on the old one keep it until they end.
                    drop(old);
                    this.failures.store(0, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::debug!(%error, "rate limit: Redis still unreachable");
                }
            }
            // At most one attempt a second, whether it worked or not: a Redis slower than the
            // timeout but alive must not have its connection replaced on every third request.
            tokio::time::sleep(REPLACE_INTERVAL).await;
            this.replacing.store(false, Ordering::Release);
        });
    }
}

/// Whether `error` says the connection is of no use: it failed, or the node behind it cannot
/// take the decision (a primary demoted to a replica by a failover answers `READONLY` to every
/// script: only a new connection reaches the new primary). An error about the data (a key of
/// another type, OOM, NOPERM) proves the connection alive.
fn connection_failed(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.code(),
            Some("READONLY" | "MASTERDOWN" | "LOADING" | "TRYAGAIN" | "CLUSTERDOWN")
        )
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://host:port/db`) and keeps reconnecting when the
    /// connection breaks or goes silent. Connecting at start means the first request is
    /// already decided in Redis.
    ///
    /// # Errors
    ///
    /// The URL is invalid or Redis cannot be reached within 1 s.
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            // Reconnect soon after an outage: 10 ms, 20 ms, ... up to 1 s between attempts.
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        Ok(Self::new(conn, Some((client, config))))
    }

    /// A store on a connection manager you configured yourself.
    ///
    /// The manager reconnects when its connection breaks, but a connection that goes silent
    /// is never replaced (neither the store's timeout nor the manager's own response timeout
    /// makes it reconnect, and the store lacks the client to make a new manager): decisions
    /// stay in memory (or 503) until the operating system gives up on the connection, which
    /// takes minutes. Prefer [`connect`](Self::connect), which replaces it.
    pub fn with_connection_manager(conn: ConnectionManager) -> Self {
        Self::new(conn, None)
    }

    fn new(conn: ConnectionManager, client: Option<(Client, ConnectionManagerConfig)>) -> Self {
        Self {
            conn: Arc::new(Connection {
                manager: RwLock::new(conn),
                client,
                failures: AtomicU32::new(0),
                replacing: AtomicBool::new(false),
            }),
            script: Arc::new(Script::new(GCRA_LUA)),
            prefix: Arc::from(&b"tower-5xx:rl:"[..]),
            timeout: Duration::from_millis(5),
            fail_closed: None,
        }
    }

    /// The prefix of every key (default `tower-5xx:rl:`): instances with the same prefix share
    /// quotas; use one per service or per layer.
    pub fn prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.prefix = Arc::from(prefix.as_ref());
        self
    }

    /// The longest a decision may take, connecting included. Default 5 ms; 100 µs to 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Answers **503 + `Retry-After`** (`retry_after` as the base wait, bounded and jittered by
    /// the layer's refusal policy) when Redis cannot decide in time, instead of deciding in
    /// memory. For quotas that protect something costly, where admitting N times the quota
    /// during an outage is worse than refusing.
    pub fn fail_closed(mut self, retry_after: Duration) -> Self {
        self.fail_closed = Some(retry_after);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        if !(Duration::from_micros(100)..=Duration::from_secs(10)).contains(&self.timeout) {
            return Err(InvalidConfig::new(
                "redis timeout",
                "must be from 100 µs to 10 s",
            ));
        }
        Ok(())
    }

    /// Starts one decision for `key`: `None` at the end if Redis failed or was too slow.
    pub(crate) fn decide(&self, shared: &Shared, key: &Key<'_>) -> Deciding {
        let gcras = shared.gcras();
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(gcras.len());
        let mut base = Vec::with_capacity(self.prefix.len() + 48);
        base.extend_from_slice(&self.prefix);
        base.push(b'{');
        key.write_redis(&mut base);
        base.extend_from_slice(b"}:");
        for p in shared.policies.iter() {
            let mut k = base.clone();
            k.extend_from_slice(p.name.as_bytes());
            keys.push(k);
        }
        // Seconds and nanoseconds: the script keeps every number below 2^53 (see GCRA_LUA).
        let mut args = [0u64; 4 * MAX_POLICIES];
        for (i, g) in gcras.iter().enumerate() {
            args[4 * i] = g.interval / NANOS_PER_SEC;
            args[4 * i + 1] = g.interval % NANOS_PER_SEC;
            args[4 * i + 2] = g.capacity / NANOS_PER_SEC;
            args[4 * i + 3] = g.capacity % NANOS_PER_SEC;
        }
        let n = gcras.len();
        let conn = self.conn.clone();
        let script = self.script.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let mut invocation = script.prepare_invoke();
            for k in &keys {
                invocation.key(k.as_slice());
            }
            for a in &args[..4 * n] {
                invocation.arg(*a);
            }
            let mut manager = conn.manager();
            let reply =
                tokio::time::timeout(timeout, invocation.invoke_async::<Vec<i64>>(&mut manager))
                    .await;
            // The manager sees a broken connection, not a silent one (our timeout drops its
            // future first): past a few failures in a row, the store replaces it. An error
            // Redis answered (a key of another type, OOM, NOPERM) proves the connection alive.
            match &reply {
                Err(_) => conn.failed(),
                Ok(Err(e)) if connection_failed(e) => conn.failed(),
                Ok(_) => conn.succeeded(),
            }
            match reply {
                Ok(Ok(reply)) if reply.len() == 1 + 3 * n => {
                    let mut debts = [0u64; MAX_POLICIES];
                    let mut violated = [false; MAX_POLICIES];
                    for i in 0..n {
                        let secs = u64::try_from(reply[1 + 3 * i]).unwrap_or(0);
                        let nanos = u64::try_from(reply[2 + 3 * i]).unwrap_or(0);
                        debts[i] = secs.saturating_mul(NANOS_PER_SEC).saturating_add(nanos);
                        violated[i] = reply[3 + 3 * i] != 0;
                    }
                    Some(Decision::from_debts(&debts[..n], &violated[..n]))
                }
                Ok(Ok(reply)) => {
                    tracing::warn!(len = reply.len(), "rate limit: unexpected reply from Redis");
                    None
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "rate limit: Redis failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(?timeout, "rate limit: Redis too slow");
                    None
                }
            }
        })
    }
}
