use std::{net::IpAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header::HeaderName, Extensions, Request, Response, StatusCode};
use ipnet::IpNet;
use tower_layer::Layer;

use super::{
    bypass::{Bypass, ClientRequest, ForwardedHeader},
    Maintenance, MaintenanceNotice, MaintenanceSwitch,
};
use crate::{
    client_ip::canonical_net,
    refuse::{RefusalPolicy, RequestView},
    telemetry::{MaintenanceMetrics, Meter},
    Reason, RetryAfter,
};

/// Layer that answers **503 Service Unavailable** with `Retry-After` while its
/// [`MaintenanceSwitch`] is on. See the [module docs](super).
#[derive(Debug, Clone)]
#[must_use]
pub struct MaintenanceLayer {
    pub(crate) config: Arc<Config>,
}

/// Everything a [`Maintenance`] service needs, shared by its clones.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) switch: MaintenanceSwitch,
    default_retry_after: Duration,
    refusal: RefusalPolicy,
    bypass: Bypass,
    pub(crate) metrics: Arc<MaintenanceMetrics>,
}

impl MaintenanceLayer {
    /// A layer driven by `switch`, with the defaults:
    ///
    /// - `Retry-After: 60` when the end of maintenance is unknown
    ///   ([`default_retry_after`](Self::default_retry_after));
    /// - the default [`RefusalPolicy`]: `Retry-After` between 1 s and 30 days plus up to 1 s of
    ///   jitter, as delta-seconds; the body by the request's `Accept` (an HTML page for
    ///   browsers, problem+json for APIs, plain text otherwise); the message "The service is
    ///   down for maintenance." unless the notice carries one;
    /// - no bypass rules: every request gets the 503.
    pub fn new(switch: MaintenanceSwitch) -> Self {
        Self {
            config: Arc::new(Config {
                switch,
                default_retry_after: Duration::from_secs(60),
                refusal: RefusalPolicy::default(),
                bypass: Bypass::default(),
                metrics: Arc::default(),
            }),
        }
    }

    fn cfg(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Names this layer in its metrics (`name="<name>"` on every series, feature `metrics`) and
    /// in its log events.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.cfg().metrics = Arc::new(MaintenanceMetrics::new(Meter::new(Some(name.into()))));
        self
    }

    /// The switch this layer reads.
    pub fn switch(&self) -> &MaintenanceSwitch {
        &self.config.switch
    }

    /// `Retry-After` when neither the end of maintenance nor the notice's own `retry_after` is
    /// known: the base wait that the [refusal policy](Self::refusal) then bounds and jitters.
    /// Default: 60 seconds (long enough not to invite a retry storm, short enough that clients
    /// notice the end of a short maintenance soon).
    pub fn default_retry_after(mut self, retry_after: Duration) -> Self {
        self.cfg().default_retry_after = retry_after;
        self
    }

    /// How the 503 is made: `Retry-After` bounds, jitter and form, body formats, your own
    /// renderer. See [`RefusalPolicy`]; the default is [`RefusalPolicy::default`].
    pub fn refusal(mut self, policy: RefusalPolicy) -> Self {
        self.cfg().refusal = policy;
        self
    }

    /// Lets requests whose path is `prefix` or below it through (on a segment boundary:
    /// `/healthz` passes `/healthz` and `/healthz/live`, not `/healthzz`). Use it for health
    /// checks and for the admin endpoint.
    ///
    /// The prefix is matched against the path as the application will understand it:
    /// escapes of unreserved characters decoded (`%2e` is `.`) and dot-segments removed
    /// (RFC 3986 §5.2.4), so `/healthz/../admin` is `/admin` and does not pass. A path that
    /// servers read in different ways passes by no prefix: an encoded `/` or `\`
    /// (`/healthz/..%2fadmin`), a `\`, a bad escape, a `..;` segment. The query is not part
    /// of the path. ([`bypass_if`](Self::bypass_if) predicates see the URI as received.)
    ///
    /// A prefix that would let **every** path through adds **no** rule: an empty one (an unset
    /// environment variable, say), `/`, or one that normalises to `/` (`/healthz/..`). As with
    /// an empty [`bypass_header`](Self::bypass_header) secret, the layer logs a warning
    /// (`tracing`, at warn level) and keeps answering 503; to let everything through, switch
    /// maintenance off.
    pub fn bypass_path(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        if crate::path_prefix::matches_every_path(&prefix) {
            tracing::warn!(
                prefix = %prefix,
                "maintenance bypass path ignored: it would let every request through"
            );
            return self;
        }
        self.cfg().bypass.add_path(&prefix);
        self
    }

    /// Lets requests through that carry header `name` with exactly the value `secret`. The value
    /// is compared in constant time, its length included: the time of a comparison depends on
    /// the length of the value the request carries, never on the secret's bytes or length (all
    /// 256 bytes of a zero-padded buffer are compared, and the lengths). Use a long random value
    /// (32 bytes or more), and keep the header away from logs.
    ///
    /// Surrounding whitespace is trimmed from `secret` (a header value cannot carry it, so
    /// `"s3cret\n"` read from a file means `s3cret`). An **empty** secret (an unset environment
    /// variable, say) adds **no** rule: it would let through anyone who sends the header empty.
    /// The layer logs a warning (`tracing`, at warn level) and keeps answering 503. So does a
    /// secret longer than 256 bytes: it adds no rule.
    pub fn bypass_header(mut self, name: HeaderName, secret: impl AsRef<[u8]>) -> Self {
        let secret = secret.as_ref().trim_ascii();
        if secret.is_empty() {
            tracing::warn!(
                header = %name,
                "maintenance bypass header with an empty secret ignored: it would let anyone in"
            );
            return self;
        }
        let Some(secret) = super::secret::Secret::new(secret) else {
            tracing::warn!(
                header = %name,
                "maintenance bypass header with a secret over 256 bytes ignored"
            );
            return self;
        };
        self.cfg().bypass.headers.push((name, secret));
        self
    }

    /// Lets requests through whose client IP is in `net` (CIDR, e.g.
    /// `"10.1.0.0/16".parse()?`; a single address converts with `IpNet::from(ip)`).
    ///
    /// The client IP is the peer address of the connection, found in the request's extensions:
    /// a [`SocketAddr`](std::net::SocketAddr) (with plain hyper, insert the address `accept`
    /// returned), or axum's `ConnectInfo<SocketAddr>` (with the `axum` feature, and
    /// `into_make_service_with_connect_info::<SocketAddr>()`); see
    /// [`peer_addr_from`](Self::peer_addr_from) for anything else. Headers such as
    /// `X-Forwarded-For` are believed only from a [trusted proxy](Self::trusted_proxy). Without
    /// a peer address, no request passes by IP.
    ///
    /// An IPv4-mapped network (`::ffff:10.1.0.0/112`) means the IPv4 network it maps
    /// (`10.1.0.0/16`): client addresses are compared in their IPv4 form. A mapped network
    /// shorter than /96 is no IPv4 network: it adds **no** rule, and the layer logs a warning.
    pub fn allow_ip(mut self, net: impl Into<IpNet>) -> Self {
        let net = net.into();
        match canonical_net(net, "allow_ip") {
            Ok(net) => self.cfg().bypass.allow.push(net),
            Err(error) => tracing::warn!(%net, %error, "maintenance bypass network ignored"),
        }
        self
    }

    /// Trusts proxies in `net` to report the client address in the
    /// [forwarded header](Self::forwarded_header) (`X-Forwarded-For` unless set otherwise). The
    /// hops are read right to left, skipping trusted proxies; the first untrusted hop is the
    /// client. A peer outside every trusted net is the client itself, whatever its headers say.
    /// Default: no trusted proxies.
    ///
    /// An IPv4-mapped network (`::ffff:10.0.0.0/104`, as a dual-stack listener reports IPv4
    /// proxies) means the IPv4 network it maps (`10.0.0.0/8`). A mapped network shorter than /96
    /// is no IPv4 network: it trusts **no** proxy, and the layer logs a warning.
    pub fn trusted_proxy(mut self, net: impl Into<IpNet>) -> Self {
        let net = net.into();
        if let Err(error) = self.cfg().bypass.ip.trust(net) {
            tracing::warn!(%net, %error, "maintenance trusted proxy ignored");
        }
        self
    }

    /// Which header the [trusted proxies](Self::trusted_proxy) write the client address into.
    /// **Only that header is read**; the other is ignored, since proxies pass it from the client
    /// untouched. Default: [`ForwardedHeader::XForwardedFor`], what nginx, AWS ALB, Envoy and
    /// HAProxy write. Choose [`ForwardedHeader::Forwarded`] only if every trusted proxy writes
    /// RFC 7239 `Forwarded`.
    ///
    /// ```
    /// use tower_5xx::maintenance::{ForwardedHeader, IpNet, MaintenanceLayer, MaintenanceSwitch};
    ///
    /// let layer = MaintenanceLayer::new(MaintenanceSwitch::new())
    ///     .allow_ip("203.0.113.0/24".parse::<IpNet>().unwrap())
    ///     .trusted_proxy("10.0.0.0/8".parse::<IpNet>().unwrap())
    ///     .forwarded_header(ForwardedHeader::Forwarded);
    /// # let _ = layer;
    /// ```
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.cfg().bypass.ip.forwarded_header = header;
        self
    }

    /// How to find the peer address in a request's extensions, when it is stored as something
    /// other than a `SocketAddr` (or axum's `ConnectInfo<SocketAddr>` with the `axum` feature).
    pub fn peer_addr_from(mut self, peer: fn(&Extensions) -> Option<IpAddr>) -> Self {
        self.cfg().bypass.ip.peer = peer;
        self
    }

    /// Lets requests through for which `predicate` returns `true`. It runs only while
    /// maintenance is on, after the cheaper rules.
    pub fn bypass_if<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&ClientRequest<'_>) -> bool + Send + Sync + 'static,
    {
        self.cfg().bypass.predicates.push(Arc::new(predicate));
        self
    }
}

impl<S> Layer<S> for MaintenanceLayer {
    type Service = Maintenance<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Maintenance::from_config(inner, self.config.clone())
    }
}

impl Config {
    /// The 503 for `req`, or `None` if it may pass. Only called when the switch is not idle.
    pub(crate) fn unavailable<B, ResBody>(&self, req: &Request<B>) -> Option<Response<ResBody>>
    where
        ResBody: From<Bytes>,
    {
        let clock = self.switch.clock();
        let Some(notice) = self.switch.current() else {
            self.show_active(false);
            return None;
        };
        let end = notice.ends_at(clock);
        self.show_active(true);
        self.metrics.announced_end(end);
        if let Some(rule) = self.bypass.matches(req) {
            self.metrics.bypassed(rule);
            return None;
        }
        let base = self.base_wait(&notice, clock.now());
        let detail = notice.message.as_ref().map(|m| m.to_string().into());
        Some(self.refusal.respond(
            &self.metrics.meter,
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Maintenance,
            Some(base),
            detail,
            None,
            RequestView::of(req),
            || clock.now(),
        ))
    }

    /// Shows on the gauge whether maintenance is on, if it does not show `active` (what the
    /// request found). The value shown is read again from the switch, held still: see
    /// [`MaintenanceMetrics::show_active`].
    #[inline]
    pub(crate) fn show_active(&self, active: bool) {
        if !self.metrics.shows_active(active) {
            self.metrics.show_active(&|show| {
                // Read under `flip` (of two updates, the last read the clock last), but not
                // with the switch locked: the clock is user code.
                let now = self.switch.clock().now();
                self.switch.hold(now, show);
            });
        }
    }

    /// The base wait for `notice` at wall-clock time `now`: the announced end (a date, so that
    /// a policy sending HTTP-dates sends that very date), else the notice's hint, else the
    /// layer's default. The refusal policy bounds and jitters it.
    pub(crate) fn base_wait(
        &self,
        notice: &MaintenanceNotice,
        now: std::time::SystemTime,
    ) -> RetryAfter {
        match (notice.remaining(now), notice.end) {
            (Some(_), Some(super::switch::End::At(end))) => RetryAfter::Date(end),
            (Some(remaining), _) => RetryAfter::Delay(remaining),
            (None, _) => RetryAfter::Delay(notice.retry_after.unwrap_or(self.default_retry_after)),
        }
    }

    /// The `Retry-After` for `notice` at wall-clock time `now`, as the policy sends it.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn retry_after(
        &self,
        notice: &MaintenanceNotice,
        now: std::time::SystemTime,
    ) -> RetryAfter {
        self.refusal
            .retry_after(self.base_wait(notice, now), || now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::refuse::MAX_RETRY_AFTER;

    fn exact() -> RefusalPolicy {
        RefusalPolicy::builder()
            .retry_after_jitter(Duration::ZERO)
            .build()
            .unwrap()
    }

    #[test]
    fn retry_after_precedence_and_forms() {
        let layer = MaintenanceLayer::new(MaintenanceSwitch::new()).refusal(exact());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = now + Duration::from_secs(90);
        let cfg = &layer.config;
        assert_eq!(
            cfg.retry_after(&MaintenanceNotice::new(), now),
            RetryAfter::Delay(Duration::from_secs(60))
        );
        let hinted = MaintenanceNotice::new().retry_after(Duration::from_secs(5));
        assert_eq!(
            cfg.retry_after(&hinted, now),
            RetryAfter::Delay(Duration::from_secs(5))
        );
        let ending = hinted.clone().until(end);
        assert_eq!(
            cfg.retry_after(&ending, now),
            RetryAfter::Delay(Duration::from_secs(90))
        );
        // Past the end: back to the hint.
        assert_eq!(
            cfg.retry_after(&ending, end),
            RetryAfter::Delay(Duration::from_secs(5))
        );
        let dated = MaintenanceLayer::new(MaintenanceSwitch::new())
            .refusal(exact().to_builder().http_date(true).build().unwrap());
        assert_eq!(
            dated.config.retry_after(&ending, now),
            RetryAfter::Date(end)
        );
        assert_eq!(
            dated.config.retry_after(&MaintenanceNotice::new(), now),
            RetryAfter::Date(now + Duration::from_secs(60))
        );
    }

    #[test]
    fn an_end_far_ahead_is_cut_to_the_maximum() {
        let layer = MaintenanceLayer::new(MaintenanceSwitch::new()).refusal(exact());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let year_9999 = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
        let notice = MaintenanceNotice::new().until(year_9999);
        assert_eq!(
            layer.config.retry_after(&notice, now),
            RetryAfter::Delay(MAX_RETRY_AFTER)
        );
        let hinted = MaintenanceNotice::new().retry_after(Duration::from_secs(1 << 40));
        assert_eq!(
            layer.config.retry_after(&hinted, now),
            RetryAfter::Delay(MAX_RETRY_AFTER)
        );
        // As a date too: not the year 9999, but 30 days from now.
        let dated = MaintenanceLayer::new(MaintenanceSwitch::new())
            .refusal(exact().to_builder().http_date(true).build().unwrap());
        assert_eq!(
            dated.config.retry_after(&notice, now),
            RetryAfter::Date(now + MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let layer = MaintenanceLayer::new(MaintenanceSwitch::new()).refusal(
            RefusalPolicy::builder()
                .retry_after_jitter(Duration::from_secs(10))
                .build()
                .unwrap(),
        );
        let now = SystemTime::now();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let RetryAfter::Delay(d) = layer.config.retry_after(&MaintenanceNotice::new(), now)
            else {
                panic!("delta-seconds by default");
            };
            assert!(d >= Duration::from_secs(60) && d <= Duration::from_secs(70));
            seen.insert(d.as_secs());
        }
        assert!(seen.len() > 1, "jitter varies");
    }
}
