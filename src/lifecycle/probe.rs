//! The probes: [`Readiness`] (`/readyz`) and [`Liveness`] (`/livez`).

use std::{
    borrow::Cow,
    convert::Infallible,
    fmt,
    future::{ready, Ready},
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{header::CONTENT_TYPE, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tower_service::Service;

#[cfg(feature = "breaker")]
use crate::breaker::CircuitBreaker;
#[cfg(feature = "maintenance")]
use crate::maintenance::MaintenanceSwitch;
#[cfg(feature = "shed")]
use crate::shed::ShedHandle;
use crate::{
    refuse::{RefusalPolicy, RequestView},
    telemetry::Meter,
    Reason, RetryAfter,
};

use super::{Lifecycle, Phase};

/// The readiness probe: **200** `ready` while the instance should get traffic; **503** with
/// `Retry-After` and a body saying why while it should not.
///
/// Not ready while the [lifecycle](Lifecycle) is draining or closing, always. And, if you opt
/// in:
///
/// - [`unready_when_queued`](Self::unready_when_queued) (feature `shed`): while a shed layer's
///   queue holds more than a threshold;
/// - [`critical_breaker`](Self::critical_breaker) (feature `breaker`): while a breaker guarding
///   a dependency this instance cannot work without is open;
/// - [`follow_maintenance`](Self::follow_maintenance) (feature `maintenance`): while this
///   instance's maintenance switch is on. Opt-in because it is usually wrong for a fleet-wide
///   maintenance: instances that stay ready serve the maintenance page with its `Retry-After`,
///   while a fleet of unready instances leaves users the load balancer's bare 503. Use it when
///   one instance is in maintenance and the others can take its traffic.
///
/// A `tower::Service` for any request body, answering `Response<Full<Bytes>>`; mount it with
/// axum's `route_service("/readyz", lifecycle.readiness())` **after** the layers that shed or
/// answer maintenance, so they do not wrap it (axum's `Router::layer` wraps only the routes
/// added before it). Cheap to clone.
#[derive(Clone)]
#[must_use]
pub struct Readiness {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    lifecycle: Lifecycle,
    refusal: RefusalPolicy,
    meter: Meter,
    #[cfg(feature = "shed")]
    queued: Vec<(ShedHandle, usize)>,
    #[cfg(feature = "breaker")]
    breakers: Vec<CircuitBreaker>,
    #[cfg(feature = "maintenance")]
    maintenance: Option<MaintenanceSwitch>,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Readiness");
        d.field("lifecycle", &self.config.lifecycle);
        #[cfg(feature = "shed")]
        d.field("queued", &self.config.queued);
        #[cfg(feature = "breaker")]
        d.field(
            "breakers",
            &self
                .config
                .breakers
                .iter()
                .map(|b| b.name().unwrap_or("unnamed"))
                .collect::<Vec<_>>(),
        );
        #[cfg(feature = "maintenance")]
        d.field("maintenance", &self.config.maintenance.is_some());
        d.finish_non_exhaustive()
    }
}

/// Why an instance is not ready: reason, base wait, and the body's text.
pub(crate) struct NotReady {
    reason: Reason,
    wait: Duration,
    detail: Cow<'static, str>,
}

impl Readiness {
    pub(crate) fn new(lifecycle: Lifecycle) -> Self {
        Self {
            config: Arc::new(Config {
                lifecycle,
                refusal: RefusalPolicy::default(),
                meter: Meter::new(Some(Arc::from("readiness"))),
                #[cfg(feature = "shed")]
                queued: Vec::new(),
                #[cfg(feature = "breaker")]
                breakers: Vec::new(),
                #[cfg(feature = "maintenance")]
                maintenance: None,
            }),
        }
    }

    fn cfg(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// How the 503 is made. Default [`RefusalPolicy::default`] (its body negotiated by
    /// `Accept`: probes send none and get plain text).
    pub fn refusal(mut self, policy: RefusalPolicy) -> Self {
        self.cfg().refusal = policy;
        self
    }

    /// Not ready while `shed`'s queue holds more than `above` requests: the load balancer
    /// sends the next requests elsewhere before this instance has to shed them.
    #[cfg(feature = "shed")]
    #[cfg_attr(docsrs, doc(cfg(feature = "shed")))]
    pub fn unready_when_queued(mut self, shed: ShedHandle, above: usize) -> Self {
        self.cfg().queued.push((shed, above));
        self
    }

    /// Not ready while `breaker` is open (or forced open): name it (`CircuitBreaker::builder()
    /// .name("db")`) so the body says which. Only for a dependency without which the instance
    /// is useless: if every instance shares the dependency, they all turn unready together.
    #[cfg(feature = "breaker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
    pub fn critical_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.cfg().breakers.push(breaker);
        self
    }

    /// Not ready while `switch` is on. See the [type docs](Self) for why it is opt-in.
    #[cfg(feature = "maintenance")]
    #[cfg_attr(docsrs, doc(cfg(feature = "maintenance")))]
    pub fn follow_maintenance(mut self, switch: MaintenanceSwitch) -> Self {
        self.cfg().maintenance = Some(switch);
        self
    }

    /// Whether the instance is ready now.
    pub fn is_ready(&self) -> bool {
        self.check().is_none()
    }

    pub(crate) fn check(&self) -> Option<NotReady> {
        let c = &*self.config;
        let lc = &c.lifecycle;
        match lc.phase() {
            Phase::Serving => {}
            phase => {
                let left = match lc.deadline() {
                    Some(deadline) => {
                        deadline.saturating_duration_since(tokio::time::Instant::now())
                    }
                    None => lc.drain_delay() + lc.grace(),
                };
                return Some(NotReady {
                    reason: Reason::Draining,
                    wait: left,
                    detail: format!("not ready: {phase}, the server is shutting down").into(),
                });
            }
        }
        #[cfg(feature = "maintenance")]
        if let Some(switch) = &c.maintenance {
            if switch.is_enabled() {
                return Some(NotReady {
                    reason: Reason::Maintenance,
                    wait: Duration::from_secs(60),
                    detail: "not ready: maintenance is on".into(),
                });
            }
        }
        #[cfg(feature = "breaker")]
        for breaker in &c.breakers {
            use crate::breaker::State;
            let state = breaker.state();
            if matches!(state, State::Open | State::ForcedOpen) {
                return Some(NotReady {
                    reason: Reason::CircuitOpen,
                    wait: breaker.remaining_open().unwrap_or(Duration::from_secs(60)),
                    detail: format!(
                        "not ready: circuit breaker {} is {}",
                        breaker.name().unwrap_or("(unnamed)"),
                        state.as_str()
                    )
                    .into(),
                });
            }
        }
        #[cfg(feature = "shed")]
        for (shed, above) in &c.queued {
            let queued = shed.queued();
            if queued > *above {
                return Some(NotReady {
                    reason: Reason::Shed,
                    wait: Duration::from_secs(1),
                    detail: format!(
                        "not ready: overloaded, {queued} requests queued (more than {above})"
                    )
                    .into(),
                });
            }
        }
        None
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

impl<B> Service<Request<B>> for Readiness {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let res = match self.check() {
            None => text(StatusCode::OK, "ready\n"),
            Some(not) => self.config.refusal.respond(
                &self.config.meter,
                StatusCode::SERVICE_UNAVAILABLE,
                not.reason,
                Some(RetryAfter::Delay(not.wait)),
                Some(not.detail),
                None,
                RequestView::of(&req),
                SystemTime::now,
            ),
        };
        ready(Ok(res))
    }
}

/// The liveness probe: **200** until the process exits, draining or not (restarting a process
/// that is shutting down cleanly would cut its drain short). The body names the phase.
///
/// **Unreachable on new connections once the listener is closed**, from the close to the exit
/// (at most the grace period): the kubelet opens a new connection for each probe, so from the
/// close its liveness probes fail, though this service still answers 200 on open connections.
/// Harmless on a pod deletion (the kubelet stops liveness probes when it starts terminating
/// the pod, before its SIGTERM); for a drain started otherwise ([`start_drain`](Lifecycle::start_drain), a
/// SIGTERM not from the kubelet), keep the probe's `(failureThreshold - 1) * periodSeconds`
/// above the grace period, or its restart comes mid-drain. See the
/// [module docs](super#kubernetes) for why the listener closes.
///
/// A `tower::Service` for any request body; mount it like [`Readiness`], outside the layers
/// that shed, answer maintenance or drain.
#[derive(Debug, Clone)]
#[must_use]
pub struct Liveness {
    lifecycle: Lifecycle,
}

impl Liveness {
    pub(crate) fn new(lifecycle: Lifecycle) -> Self {
        Self { lifecycle }
    }
}

impl<B> Service<Request<B>> for Liveness {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let body = match self.lifecycle.phase() {
            Phase::Serving => "alive: serving\n",
            Phase::Draining => "alive: draining\n",
            Phase::Closing => "alive: closing\n",
        };
        ready(Ok(text(StatusCode::OK, body)))
    }
}

#[cfg(test)]
mod tests {
    use http::header::RETRY_AFTER;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn probe<S>(svc: S) -> (StatusCode, Option<String>, String)
    where
        S: Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible>,
    {
        let res = svc
            .oneshot(Request::get("/readyz").body(()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let ra = res
            .headers()
            .get(RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, ra, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_turns_503_with_retry_after_while_draining_liveness_stays_200() {
        let lc = Lifecycle::new(Duration::from_secs(5), Duration::from_secs(10));
        let policy = RefusalPolicy::builder()
            .retry_after_jitter(Duration::ZERO)
            .build()
            .unwrap();
        let ready = lc.readiness().refusal(policy);
        assert_eq!(probe(ready.clone()).await.0, StatusCode::OK);
        assert_eq!(probe(lc.liveness()).await.2, "alive: serving\n");

        lc.start_drain();
        let (status, ra, body) = probe(ready.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ra.as_deref(), Some("15"), "drain delay + grace");
        assert!(body.contains("draining"), "{body}");
        let (status, _, body) = probe(lc.liveness()).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "alive: draining\n")
        );
    }

    #[cfg(all(feature = "maintenance", feature = "breaker"))]
    #[tokio::test]
    async fn the_opt_in_conditions_say_why() {
        let lc = Lifecycle::new(Duration::ZERO, Duration::ZERO);
        let switch = MaintenanceSwitch::new();
        let breaker = CircuitBreaker::builder().name("db").build().unwrap();
        let ready = lc
            .readiness()
            .follow_maintenance(switch.clone())
            .critical_breaker(breaker.clone());
        assert!(ready.is_ready());
        breaker.force_open();
        let (status, ra, body) = probe(ready.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(ra.is_some());
        assert!(body.contains("circuit breaker db is forced_open"), "{body}");
        breaker.reset();
        switch.enable();
        let (_, _, body) = probe(ready.clone()).await;
        assert!(body.contains("maintenance"), "{body}");
        switch.disable();
        assert!(ready.is_ready());
        // Without the opt-in, maintenance does not touch readiness.
        switch.enable();
        assert!(lc.readiness().is_ready());
    }
}
