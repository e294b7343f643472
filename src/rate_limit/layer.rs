use std::{fmt, net::IpAddr, sync::Arc, time::SystemTime};

#[cfg(feature = "redis")]
use std::time::Duration;

use bytes::Bytes;
use http::{header::HeaderName, Extensions, HeaderValue, Request, Response, StatusCode};
use ipnet::IpNet;
use tokio::time::Instant;
use tower_layer::Layer;

use super::{
    key::{Key, KeyFn, KeySource, RateLimitKey, Seed},
    memory::MemoryStore,
    policy::{policy_header, Decision, Gcra, Policy, MAX_POLICIES},
    RateLimit, RATELIMIT, RATELIMIT_POLICY,
};
use crate::{
    client_ip::{ClientIpRules, ForwardedHeader},
    error::InvalidConfig,
    path_prefix::PathPrefixes,
    refuse::{OmitDefaultHeaders, RefusalPolicy, RequestView},
    telemetry::Meter,
    Reason, RetryAfter,
};

/// Layer that limits each client to its quotas and answers **429 Too Many Requests** with
/// `Retry-After` and the IETF `RateLimit-Policy` and `RateLimit` fields beyond them. See the
/// [module docs](super).
///
/// A plain value around one shared limiter, made by [`build`](RateLimitBuilder::build): every
/// service made by the layer and its clones counts against the same quotas.
#[derive(Clone)]
#[must_use]
pub struct RateLimitLayer {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl RateLimitLayer {
    /// A builder with no policy yet (add at least one) and the defaults of
    /// [`RateLimitBuilder`].
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder::default()
    }

    /// The policies this layer enforces, in the order they are advertised.
    pub fn policies(&self) -> &[Policy] {
        &self.shared.policies
    }

    /// How many keys the in-memory store holds now (the local fallback's, with Redis).
    pub fn tracked_keys(&self) -> usize {
        self.shared.memory.len()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_shared(inner, self.shared.clone())
    }
}

/// The settings of a [`RateLimitLayer`]; [`build`](Self::build) checks them.
///
/// | setting | default |
/// |---|---|
/// | [`policy`](Self::policy) | none: at least one is required, at most [`MAX_POLICIES`] |
/// | key | the [client IP](Self::key_client_ip) (the peer address; proxies trusted only with [`trusted_proxy`](Self::trusted_proxy)) |
/// | [`ipv6_prefix`](Self::ipv6_prefix) | **64**: an IPv6 client is its /64 |
/// | [`exempt_path`](Self::exempt_path) | none |
/// | [`headers_within_quota`](Self::headers_within_quota) | `true`: admitted responses carry `RateLimit-Policy` and `RateLimit` |
/// | [`capacity`](Self::capacity) | **100,000** keys in memory |
/// | [`refusal`](Self::refusal) | [`RefusalPolicy::default`] |
/// | [`redis`](Self::redis) (feature `redis`) | none: the quotas live in this process |
#[must_use]
pub struct RateLimitBuilder {
    policies: Vec<Policy>,
    key: KeySource,
    ip: ClientIpRules,
    ipv6_prefix: u8,
    exempt: PathPrefixes,
    headers_within_quota: bool,
    capacity: usize,
    refusal: RefusalPolicy,
    name: Option<Arc<str>>,
    #[cfg(feature = "redis")]
    redis: Option<super::RedisStore>,
    /// The first invalid setting given to a builder method, reported by `build`.
    invalid: Option<InvalidConfig>,
}

impl Default for RateLimitBuilder {
    fn default() -> Self {
        Self {
            policies: Vec::new(),
            key: KeySource::ClientIp,
            ip: ClientIpRules::default(),
            ipv6_prefix: 64,
            exempt: PathPrefixes::default(),
            headers_within_quota: true,
            capacity: 100_000,
            refusal: RefusalPolicy::default(),
            name: None,
            #[cfg(feature = "redis")]
            redis: None,
            invalid: None,
        }
    }
}

impl fmt::Debug for RateLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("policies", &self.policies)
            .field("key", &self.key)
            .field("exempt", &self.exempt)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The largest in-memory capacity: 100 million keys (about 10 GB: surely a mistake).
const MAX_CAPACITY: usize = 100_000_000;

impl RateLimitBuilder {
    /// Adds a quota policy. A request is admitted only if every policy admits it, and only an
    /// admitted request is counted.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policies.push(policy);
        self
    }

    /// Counts requests per client IP (the default): the peer address of the connection
    /// (axum's `ConnectInfo<SocketAddr>` with the `axum` feature, or a `SocketAddr` in the
    /// request's extensions; see [`peer_addr_from`](Self::peer_addr_from)), or what a
    /// [trusted proxy](Self::trusted_proxy) reports. The same rules as the maintenance
    /// layer's allow-list. Requests whose client IP is unknown share one quota.
    pub fn key_client_ip(mut self) -> Self {
        self.key = KeySource::ClientIp;
        self
    }

    /// With the client IP as the key, counts an IPv6 client by the first `bits` bits of its
    /// address: default 64, the subnet of one end site (RFC 6177), so that a client does not get
    /// a fresh quota from each of the 2^64 addresses its network hands out (privacy addresses
    /// change by themselves). 128 counts each address. IPv4 clients are counted by address.
    /// [`build`](Self::build) rejects a value outside 32..=128. Instances sharing quotas on
    /// Redis should agree on it.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits;
        self
    }

    /// Counts requests per value of header `name` (an API key). Requests without it share one
    /// quota. Only the header's first value counts.
    pub fn key_header(mut self, name: HeaderName) -> Self {
        self.key = KeySource::Header(name);
        self
    }

    /// Counts requests per key your function returns (a user id an authentication layer put
    /// into the extensions, a tenant, a route and IP pair). `None`: the request shares one
    /// quota with every other request without a key.
    pub fn key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&super::ClientRequest<'_>) -> Option<RateLimitKey> + Send + Sync + 'static,
    {
        let f: KeyFn = Arc::new(f);
        self.key = KeySource::Fn(f);
        self
    }

    /// Trusts proxies in `net` to report the client address in the
    /// [forwarded header](Self::forwarded_header). The hops are read right to left, skipping
    /// trusted proxies; the first untrusted hop is the client. Default: none.
    ///
    /// An IPv4-mapped network (`::ffff:10.0.0.0/104`, as a dual-stack listener reports IPv4
    /// proxies) means the IPv4 network it maps (`10.0.0.0/8`); one shorter than /96 is no IPv4
    /// network, and an error at [`build`](Self::build).
    pub fn trusted_proxy(mut self, net: impl Into<IpNet>) -> Self {
        if let Err(e) = self.ip.trust(net.into()) {
            self.invalid.get_or_insert(e);
        }
        self
    }

    /// Which header the trusted proxies write (only that one is read). Default:
    /// [`ForwardedHeader::XForwardedFor`].
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.ip.forwarded_header = header;
        self
    }

    /// How to find the peer address in a request's extensions, when it is stored as something
    /// other than a `SocketAddr` (or axum's `ConnectInfo<SocketAddr>`).
    pub fn peer_addr_from(mut self, peer: fn(&Extensions) -> Option<IpAddr>) -> Self {
        self.ip.peer = peer;
        self
    }

    /// Never limits requests whose path is `prefix` or below it (health checks), matched as
    /// the maintenance layer matches its bypass paths: on a segment boundary, against the path
    /// with dot-segments removed; an ambiguous path (`/healthz/..%2fapi`) is never exempt. A
    /// prefix that would exempt every path (empty, as from an unset environment variable, `/`,
    /// `/x/..`) makes [`build`](Self::build) fail.
    pub fn exempt_path(mut self, prefix: impl AsRef<str>) -> Self {
        let prefix = prefix.as_ref();
        if crate::path_prefix::matches_every_path(prefix) {
            self.invalid.get_or_insert(InvalidConfig::new(
                "exempt_path",
                "would exempt every path (empty, \"/\" or a path that normalises to it)",
            ));
            return self;
        }
        self.exempt.add(prefix);
        self
    }

    /// Whether admitted responses carry `RateLimit-Policy` and `RateLimit` (default `true`).
    /// A 429 always does.
    pub fn headers_within_quota(mut self, on: bool) -> Self {
        self.headers_within_quota = on;
        self
    }

    /// The most keys the in-memory store holds at once. Default 100,000; 64 to 100 million.
    /// Each key takes about 41 bytes in a hash table that at most doubles that, so the store
    /// stays under `capacity * 82` bytes plus 64 small tables (8.2 MB for the default). Beyond
    /// it, keys whose quota has fully replenished go first, then those closest to it (they
    /// start afresh: a flood of distinct keys can make a few clients' counts restart, never
    /// grow the memory).
    pub fn capacity(mut self, keys: usize) -> Self {
        self.capacity = keys;
        self
    }

    /// How the 429 is made: `Retry-After` bounds, jitter and form, body formats, your own
    /// renderer (it sees the violated policies in
    /// [`Refusal::violated_policies`](crate::refuse::Refusal::violated_policies)). The base
    /// wait is the time until the request would be admitted.
    pub fn refusal(mut self, policy: RefusalPolicy) -> Self {
        self.refusal = policy;
        self
    }

    /// Names this layer in its metrics (`name="<name>"` on every series, feature `metrics`) and
    /// in its log events.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Keeps the quotas in Redis, shared by every instance that uses the same Redis and
    /// prefix; the in-memory store becomes the fallback while Redis is slow or down (see
    /// [`RedisStore`](super::RedisStore)).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, store: super::RedisStore) -> Self {
        self.redis = Some(store);
        self
    }

    /// Checks the settings and makes the layer.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] with no policy or more than [`MAX_POLICIES`], two policies of one
    /// name, a policy out of range (see [`Policy::new`]), a capacity out of range, a
    /// [trusted proxy](Self::trusted_proxy) network that is IPv4-mapped but shorter than /96,
    /// or an [exempt path](Self::exempt_path) that would exempt every path.
    pub fn build(self) -> Result<RateLimitLayer, InvalidConfig> {
        if let Some(e) = self.invalid {
            return Err(e);
        }
        if self.policies.is_empty() || self.policies.len() > MAX_POLICIES {
            return Err(InvalidConfig::new("policy", "must be given 1 to 4 times"));
        }
        let mut gcras = [Gcra::default(); MAX_POLICIES];
        for (i, p) in self.policies.iter().enumerate() {
            gcras[i] = p.gcra()?;
            if self.policies[..i].iter().any(|q| q.name == p.name) {
                return Err(InvalidConfig::new("policy name", "must be unique"));
            }
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            redis.validate()?;
        }
        if !(32..=128).contains(&self.ipv6_prefix) {
            return Err(InvalidConfig::new(
                "ipv6_prefix",
                "must be from 32 to 128 bits",
            ));
        }
        if !(64..=MAX_CAPACITY).contains(&self.capacity) {
            return Err(InvalidConfig::new(
                "capacity",
                "must be from 64 to 100,000,000 keys",
            ));
        }
        let shared = Shared {
            policy_header: policy_header(&self.policies),
            gcras,
            policies: self.policies.into(),
            key: self.key,
            ip: self.ip,
            ipv6_mask: u128::MAX << (128 - u32::from(self.ipv6_prefix)),
            exempt: self.exempt,
            headers_within_quota: self.headers_within_quota,
            refusal: self.refusal,
            meter: Meter::new(self.name),
            memory: MemoryStore::new(self.capacity),
            seed: Seed::random(),
            epoch: Instant::now(),
            #[cfg(feature = "redis")]
            redis: self.redis,
        };
        Ok(RateLimitLayer {
            shared: Arc::new(shared),
        })
    }
}

/// Everything the services of one layer share.
pub(crate) struct Shared {
    pub(crate) policies: Box<[Policy]>,
    gcras: [Gcra; MAX_POLICIES],
    pub(crate) policy_header: HeaderValue,
    key: KeySource,
    ip: ClientIpRules,
    /// The bits of an IPv6 client address that make its key.
    ipv6_mask: u128,
    exempt: PathPrefixes,
    pub(crate) headers_within_quota: bool,
    refusal: RefusalPolicy,
    meter: Meter,
    pub(crate) memory: MemoryStore,
    /// The secret seed of the keys' hashes (a client cannot aim its keys at one shard).
    seed: Seed,
    /// The origin of the in-memory clock (tokio's, so tests can pause it).
    epoch: Instant,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<super::RedisStore>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RateLimitLayer");
        d.field("policies", &self.policies)
            .field("key", &self.key)
            .field("exempt", &self.exempt)
            .field("headers_within_quota", &self.headers_within_quota)
            .field("capacity", &self.memory.capacity());
        #[cfg(feature = "redis")]
        d.field("redis", &self.redis);
        d.finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn gcras(&self) -> &[Gcra] {
        &self.gcras[..self.policies.len()]
    }

    pub(crate) fn is_exempt<B>(&self, req: &Request<B>) -> bool {
        self.exempt.matches(req.uri().path())
    }

    pub(crate) fn key_of<'a, B>(&self, req: &'a Request<B>) -> super::key::Owned<'a> {
        Key::of(&self.key, &self.ip, self.ipv6_mask, req)
    }

    /// The in-memory decision for `key`, now.
    pub(crate) fn decide_in_memory(&self, key: &Key<'_>) -> Decision {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.memory
            .decide(key.hash_with(&self.seed), self.gcras(), now)
    }

    /// The `RateLimit-Policy` and `RateLimit` fields of a decision, added to `headers` where
    /// absent.
    pub(crate) fn add_fields(&self, headers: &mut http::HeaderMap, decision: &Decision) {
        headers
            .entry(RATELIMIT_POLICY)
            .or_insert_with(|| self.policy_header.clone());
        headers
            .entry(RATELIMIT)
            .or_insert_with(|| decision.header(&self.policies, self.gcras()));
    }

    /// The 429 for a request over quota.
    pub(crate) fn too_many<B, ResBody>(
        &self,
        req: &Request<B>,
        decision: &Decision,
    ) -> Response<ResBody>
    where
        ResBody: From<Bytes>,
    {
        let violated = decision
            .statuses(self.gcras())
            .zip(self.policies.iter())
            .filter(|(s, _)| s.violated)
            .map(|(_, p)| p.name.clone())
            .collect();
        let mut res: Response<ResBody> = self.refusal.respond_with(
            &self.meter,
            StatusCode::TOO_MANY_REQUESTS,
            Reason::RateLimited,
            Some(RetryAfter::Delay(decision.wait(self.gcras()))),
            None,
            None,
            RequestView::of(req),
            SystemTime::now,
            violated,
        );
        if res.extensions().get::<OmitDefaultHeaders>().is_none() {
            self.add_fields(res.headers_mut(), decision);
        }
        res
    }

    /// The remote store could not decide in time: the in-memory decision (fail-open), or the
    /// 503 of a layer that fails closed.
    pub(crate) fn on_store_failure<B, ResBody>(
        &self,
        req: &Request<B>,
    ) -> Result<Decision, Response<ResBody>>
    where
        ResBody: From<Bytes>,
    {
        #[cfg(feature = "redis")]
        if let Some(retry_after) = self.redis.as_ref().and_then(|r| r.fail_closed) {
            return Err(self.unavailable(req, retry_after));
        }
        Ok(self.decide_in_memory(&self.key_of(req).key()))
    }

    /// The 503 when the quota store cannot decide and the layer fails closed: the server
    /// cannot tell whether the client is within its quota, which is the server's problem, not
    /// the client's (so not 429), and no failure of code (so not 500). Its reason is
    /// [`Reason::CircuitOpen`]: a service the request depends on is unavailable.
    #[cfg(feature = "redis")]
    fn unavailable<B, ResBody>(&self, req: &Request<B>, retry_after: Duration) -> Response<ResBody>
    where
        ResBody: From<Bytes>,
    {
        self.refusal.respond(
            &self.meter,
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::CircuitOpen,
            Some(RetryAfter::Delay(retry_after)),
            None,
            Some(&"rate limit: the quota store is unavailable, failing closed"),
            RequestView::of(req),
            SystemTime::now,
        )
    }
}
