use std::{
    borrow::Cow,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use http::{header::HeaderName, Extensions, Request, Response, StatusCode};
use ipnet::IpNet;
use tower_layer::Layer;

use super::{
    bypass::{Bypass, BypassRequest},
    Maintenance, MaintenanceNotice, MaintenanceSwitch,
};
use crate::{ErrorResponse, Reason, ResponseBody, RetryAfter};

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
    jitter: Duration,
    http_date: bool,
    html: bool,
    message: Option<Cow<'static, str>>,
    bypass: Bypass,
}

impl MaintenanceLayer {
    /// A layer driven by `switch`, with the defaults:
    ///
    /// - `Retry-After: 60` when the end of maintenance is unknown
    ///   ([`default_retry_after`](Self::default_retry_after));
    /// - no jitter; delta-seconds rather than an HTTP-date;
    /// - an HTML page for clients whose `Accept` prefers `text/html`, problem+json or plain text
    ///   for the others;
    /// - the message "The service is down for maintenance.";
    /// - no bypass rules: every request gets the 503.
    pub fn new(switch: MaintenanceSwitch) -> Self {
        Self {
            config: Arc::new(Config {
                switch,
                default_retry_after: Duration::from_secs(60),
                jitter: Duration::ZERO,
                http_date: false,
                html: true,
                message: None,
                bypass: Bypass::default(),
            }),
        }
    }

    fn cfg(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The switch this layer reads.
    pub fn switch(&self) -> &MaintenanceSwitch {
        &self.config.switch
    }

    /// `Retry-After` when neither the end of maintenance nor the notice's own `retry_after` is
    /// known. Default: 60 seconds (long enough not to invite a retry storm, short enough that
    /// clients notice the end of a short maintenance soon).
    pub fn default_retry_after(mut self, retry_after: Duration) -> Self {
        self.cfg().default_retry_after = retry_after;
        self
    }

    /// Adds a random extra of up to `max_extra` (whole seconds, what the header can carry) to
    /// every `Retry-After`, so that a fleet of clients told to come back does not come back in
    /// one herd. Default: none.
    pub fn retry_after_jitter(mut self, max_extra: Duration) -> Self {
        self.cfg().jitter = max_extra;
        self
    }

    /// Sends `Retry-After` as an HTTP-date (the known end, or now plus the delay) instead of
    /// delta-seconds. Default: `false`; delta-seconds are immune to clock skew between server and
    /// client.
    pub fn http_date(mut self, enabled: bool) -> Self {
        self.cfg().http_date = enabled;
        self
    }

    /// Whether clients that prefer `text/html` get an HTML page (default `true`); when `false`
    /// they get plain text.
    pub fn html(mut self, enabled: bool) -> Self {
        self.cfg().html = enabled;
        self
    }

    /// The client-facing message when the notice carries none. Default: "The service is down for
    /// maintenance." It is sent to every client: keep internal information out of it.
    pub fn message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.cfg().message = Some(message.into());
        self
    }

    /// Lets requests whose path is `prefix` or below it through (on a segment boundary:
    /// `/healthz` passes `/healthz` and `/healthz/live`, not `/healthzz`). Use it for health
    /// checks and for the admin endpoint.
    pub fn bypass_path(mut self, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.starts_with('/') {
            prefix.insert(0, '/');
        }
        self.cfg().bypass.paths.push(prefix.into_boxed_str());
        self
    }

    /// Lets requests through that carry header `name` with exactly the value `secret`. The value
    /// is compared in constant time (its length is not treated as secret: use a long random
    /// value). Keep the header away from logs.
    pub fn bypass_header(mut self, name: HeaderName, secret: impl AsRef<[u8]>) -> Self {
        let secret: Box<[u8]> = secret.as_ref().into();
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
    pub fn allow_ip(mut self, net: impl Into<IpNet>) -> Self {
        self.cfg().bypass.allow.push(net.into().trunc());
        self
    }

    /// Trusts proxies in `net` to report the client address in `Forwarded` (RFC 7239) or, when
    /// that is absent, `X-Forwarded-For`. The hops are read right to left, skipping trusted
    /// proxies; the first untrusted hop is the client. A peer outside every trusted net is the
    /// client itself, whatever its headers say. Default: no trusted proxies.
    pub fn trusted_proxy(mut self, net: impl Into<IpNet>) -> Self {
        self.cfg().bypass.trusted.push(net.into().trunc());
        self
    }

    /// How to find the peer address in a request's extensions, when it is stored as something
    /// other than a `SocketAddr` (or axum's `ConnectInfo<SocketAddr>` with the `axum` feature).
    pub fn peer_addr_from(mut self, peer: fn(&Extensions) -> Option<IpAddr>) -> Self {
        self.cfg().bypass.peer = peer;
        self
    }

    /// Lets requests through for which `predicate` returns `true`. It runs only while
    /// maintenance is on, after the cheaper rules.
    pub fn bypass_if<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&BypassRequest<'_>) -> bool + Send + Sync + 'static,
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
    pub(crate) fn unavailable<B, ResBody>(
        &self,
        req: &Request<B>,
    ) -> Option<Response<ResponseBody<ResBody>>> {
        let notice = self.switch.current()?;
        if self.bypass.matches(req) {
            return None;
        }
        let retry_after = self.retry_after(&notice, self.switch.clock().now());
        let detail: Cow<'static, str> = match (&notice.message, &self.message) {
            (Some(m), _) => Cow::Owned(m.to_string()),
            (None, Some(m)) => m.clone(),
            (None, None) => Cow::Borrowed(Reason::Maintenance.default_detail()),
        };
        let res = ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::Maintenance)
            .retry_after(retry_after)
            .detail(detail)
            .negotiate(req.headers(), self.html);
        tracing::debug!(
            error_id = %res.error_id(),
            method = %req.method(),
            path = req.uri().path(),
            retry_after = %retry_after,
            "maintenance mode: answered 503"
        );
        Some(res.into_response())
    }

    /// The `Retry-After` for `notice` at wall-clock time `now`.
    pub(crate) fn retry_after(&self, notice: &MaintenanceNotice, now: SystemTime) -> RetryAfter {
        let remaining = notice.remaining(now);
        let delay = remaining
            .or(notice.retry_after)
            .unwrap_or(self.default_retry_after);
        let ra = if self.http_date {
            match (remaining, notice.end) {
                (Some(_), Some(super::switch::End::At(end))) => RetryAfter::Date(end),
                _ => RetryAfter::Date(now.checked_add(delay).unwrap_or(now)),
            }
        } else {
            RetryAfter::Delay(delay)
        };
        if self.jitter.is_zero() {
            ra
        } else {
            ra.with_jitter(self.jitter)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_precedence_and_forms() {
        let layer = MaintenanceLayer::new(MaintenanceSwitch::new());
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
        let dated = MaintenanceLayer::new(MaintenanceSwitch::new()).http_date(true);
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
    fn jitter_stays_in_bounds() {
        let layer = MaintenanceLayer::new(MaintenanceSwitch::new())
            .retry_after_jitter(Duration::from_secs(10));
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
