//! The metrics, scraped as Prometheus text from a real server's `/metrics` (the
//! `metrics-exporter-prometheus` recorder, installed once for this test binary): a known mix of
//! requests must show up exactly, by reason, and each generated response once. Each test uses
//! its own layer names, so the tests of this file can share the one recorder.
#![cfg(all(
    feature = "metrics",
    feature = "catch",
    feature = "maintenance",
    feature = "shed",
    feature = "breaker",
    feature = "retry",
    feature = "rate-limit"
))]

mod common;

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_5xx::{
    breaker::{error::CircuitOpen, BreakerLayer, CircuitBreaker, KeyedBreakers, SlidingWindow},
    catch::CatchLayer,
    maintenance::{MaintenanceLayer, MaintenanceNotice, MaintenanceSwitch, WallClock},
    rate_limit::{Policy, RateLimitLayer},
    retry::{Backoff, Failure, Jitter, Origin, ReplayBody, RetryLayer, RetryPolicy},
    shed::ShedLayer,
};

use common::{client, get as fetch, quiet_panics};

fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder of this test binary");
        tower_5xx::metrics::describe();
        handle
    })
}

/// The value of the one series of `metric` whose labels include all of `labels` (0 if none).
fn value(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let mut found = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (series, number) = rest.rsplit_once(' ').unwrap();
        if !(series.is_empty() || series.starts_with('{')) {
            continue; // a longer metric name with this prefix
        }
        if labels
            .iter()
            .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        {
            found.push(number.parse::<f64>().unwrap());
        }
    }
    assert!(found.len() <= 1, "{metric} {labels:?} matches {found:?}");
    found.first().copied().unwrap_or(0.0)
}

/// Every `tower_5xx_responses_generated_total` series of layer `name`, as (status, reason,
/// count).
fn generated(text: &str, name: &str) -> Vec<(String, String, u64)> {
    let mut out: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("tower_5xx_responses_generated_total{"))
        .filter(|l| l.contains(&format!("name=\"{name}\"")))
        .map(|l| {
            let label = |k: &str| {
                let start = l.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
                l[start..start + l[start..].find('"').unwrap()].to_owned()
            };
            let count = l.rsplit_once(' ').unwrap().1.parse().unwrap();
            (
                label("http_response_status_code"),
                label("error_type"),
                count,
            )
        })
        .collect();
    out.sort();
    out
}

async fn scrape(addr: SocketAddr) -> String {
    let reply = fetch(&client(), addr, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.text().to_owned()
}

#[derive(Debug)]
struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom (secret detail)")
    }
}

impl std::error::Error for Boom {}

#[tokio::test]
async fn a_known_mix_of_requests_is_counted_exactly_by_reason() {
    quiet_panics();
    let logs = common::logs();
    let prometheus = recorder().clone();
    let switch = MaintenanceSwitch::new();
    let breaker = CircuitBreaker::builder().name("mix").build().unwrap();
    let shed = ShedLayer::builder()
        .name("mix")
        .limit(1)
        .max_queue(0)
        .build()
        .unwrap();
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());

    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/slow",
            get({
                let (entered, release) = (entered.clone(), release.clone());
                move || {
                    let (entered, release) = (entered.clone(), release.clone());
                    async move {
                        entered.notify_one();
                        release.notified().await;
                        "done"
                    }
                }
            }),
        )
        .route_layer(shed.clone())
        .route_layer(BreakerLayer::new(breaker.clone()))
        // axum routes cannot fail: this one's error is caught by a `CatchLayer` of its own,
        // with the same name.
        .route_service(
            "/error",
            CatchLayer::new().name("mix").layer(tower::service_fn(
                |_req: axum::extract::Request| async { Err::<axum::response::Response, _>(Boom) },
            )),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("kaboom");
                }
                "unreachable"
            }),
        )
        .route(
            "/limited",
            get(|| async { "ok" }).layer(
                RateLimitLayer::builder()
                    .name("mix")
                    .policy(Policy::new("two", 2, Duration::from_secs(60)))
                    .build()
                    .unwrap(),
            ),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
        .layer(
            MaintenanceLayer::new(switch.clone())
                .name("mix")
                .bypass_path("/metrics"),
        )
        .layer(CatchLayer::new().name("mix"));
    let addr = common::serve_axum(app).await;
    let c = client();

    for _ in 0..5 {
        assert_eq!(fetch(&c, addr, "/ok").await.status, StatusCode::OK);
    }
    for _ in 0..3 {
        let reply = fetch(&c, addr, "/error").await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!reply.text().contains("secret"));
    }
    for _ in 0..2 {
        let reply = fetch(&c, addr, "/panic").await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    // Rate limited: two per minute per client, so the third of three is a 429.
    for expected in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        assert_eq!(fetch(&c, addr, "/limited").await.status, expected);
    }
    // Shed: hold the one permit, then four requests find no room.
    let held = tokio::spawn({
        let c = c.clone();
        async move { fetch(&c, addr, "/slow").await }
    });
    entered.notified().await;
    for _ in 0..4 {
        assert_eq!(
            fetch(&c, addr, "/ok").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    release.notify_one();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    // An open breaker: six refused.
    breaker.force_open();
    for _ in 0..6 {
        let reply = fetch(&c, addr, "/ok").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(reply.header("retry-after").is_some());
    }
    breaker.reset();
    // Maintenance: seven refused, and the bypassed routes pass.
    switch.enable();
    let mut ids = Vec::new();
    for _ in 0..7 {
        let reply = fetch(&c, addr, "/ok").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        ids.push(reply.header("x-error-id").unwrap().to_owned());
    }
    // One event per generated response, with the OpenTelemetry names, the reason and the id.
    for id in &ids {
        let lines = logs.lines_with(id);
        assert_eq!(lines.len(), 1, "{lines:?}");
        for field in [
            "error.type=\"maintenance\"",
            "http.response.status_code=503",
            "http.request.method=\"GET\"",
            "url.path=\"/ok\"",
            "name=\"mix\"",
        ] {
            assert!(lines[0].contains(field), "{field} in {}", lines[0]);
        }
    }
    let panics = logs.lines_with("error.type=\"panic\"");
    assert_eq!(panics.len(), 2, "{panics:?}");
    assert!(panics
        .iter()
        .all(|l| l.contains("ERROR") && l.contains("kaboom")));
    let text = scrape(addr).await; // bypassed: monitoring works during maintenance
    switch.disable();

    assert_eq!(
        generated(&text, "mix"),
        vec![
            ("429".to_owned(), "rate_limited".to_owned(), 1),
            ("500".to_owned(), "internal".to_owned(), 3),
            ("500".to_owned(), "panic".to_owned(), 2),
            ("503".to_owned(), "circuit_open".to_owned(), 6),
            ("503".to_owned(), "maintenance".to_owned(), 7),
            ("503".to_owned(), "shed".to_owned(), 4),
        ],
        "{text}"
    );
    let name = ("name", "mix");
    assert_eq!(
        value(
            &text,
            "tower_5xx_shed_rejected_total",
            &[name, ("cause", "queue_full")]
        ),
        4.0
    );
    assert_eq!(value(&text, "tower_5xx_shed_limit", &[name]), 1.0);
    assert_eq!(value(&text, "tower_5xx_shed_in_flight", &[name]), 0.0);
    // Through the breaker: 5 + 1 successes; the 4 shed 503s came back through it, and are
    // ignored (the shed layer's deliberate refusals are not the dependency failing).
    assert_eq!(
        value(
            &text,
            "tower_5xx_breaker_calls_total",
            &[name, ("outcome", "success")]
        ),
        6.0
    );
    assert_eq!(
        value(
            &text,
            "tower_5xx_breaker_calls_total",
            &[name, ("outcome", "failure")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "tower_5xx_breaker_calls_total",
            &[name, ("outcome", "rejected")]
        ),
        6.0
    );
    assert_eq!(
        value(
            &text,
            "tower_5xx_breaker_transitions_total",
            &[name, ("to", "forced_open")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "tower_5xx_breaker_transitions_total",
            &[name, ("to", "closed")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "tower_5xx_breaker_state",
            &[name, ("state", "closed")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "tower_5xx_breaker_state",
            &[name, ("state", "forced_open")]
        ),
        0.0
    );
    assert_eq!(value(&text, "tower_5xx_maintenance_active", &[name]), 1.0);
    assert_eq!(
        value(
            &text,
            "tower_5xx_maintenance_bypassed_total",
            &[name, ("rule", "path")]
        ),
        1.0, // the scrape itself
    );

    // After maintenance ends, the next request shows it.
    assert_eq!(fetch(&c, addr, "/ok").await.status, StatusCode::OK);
    let text = scrape(addr).await;
    assert_eq!(value(&text, "tower_5xx_maintenance_active", &[name]), 0.0);
}

/// A wall clock that runs a hook (once) on its `n`th reading after [`HookClock::arm`].
#[derive(Clone, Default)]
struct HookClock(Arc<Hook>);

#[derive(Default)]
struct Hook {
    countdown: AtomicUsize,
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for HookClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookClock").finish_non_exhaustive()
    }
}

impl HookClock {
    fn arm(&self, n: usize, hook: impl FnOnce() + Send + 'static) {
        *self.0.hook.lock().unwrap() = Some(Box::new(hook));
        self.0.countdown.store(n, Ordering::SeqCst);
    }
}

impl WallClock for HookClock {
    fn now(&self) -> std::time::SystemTime {
        let nth = self
            .0
            .countdown
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            == Ok(1);
        if nth {
            let hook = self.0.hook.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
            }
        }
        std::time::SystemTime::now()
    }
}

/// `tower_5xx_maintenance_active` ends at the switch's final state, even when a request that
/// found maintenance on updates the gauge after the switch went off and another request has
/// shown that. The interleaving is forced: the switch's clock, read by request A between
/// finding maintenance on and updating the gauge, switches it off and sends request B (over the
/// same server) meanwhile. Before, A's late update set the gauge back to 1 and it stayed there,
/// with maintenance off, until the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_gauge_ends_at_the_switchs_final_state() {
    let prometheus = recorder().clone();
    let clock = HookClock::default();
    let switch = MaintenanceSwitch::with_clock(clock.clone());
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(MaintenanceLayer::new(switch.clone()).name("gauge-race"));
    let addr = common::serve_axum(app).await;
    let c = client();
    let name = ("name", "gauge-race");
    let gauge = || {
        value(
            &prometheus.render(),
            "tower_5xx_maintenance_active",
            &[name],
        )
    };

    // A deadline given as a duration: reading the notice's end reads the clock, after the
    // switch was found on and before the gauge is updated.
    switch.enable_with(MaintenanceNotice::new().ends_in(Duration::from_secs(600)));
    assert_eq!(
        fetch(&c, addr, "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(gauge(), 1.0);

    // Request A reads the clock once to find the notice in force, once for its end: there,
    // maintenance goes off and request B passes (and shows 0) before A goes on.
    let b_status = Arc::new(Mutex::new(None));
    clock.arm(2, {
        let (switch, c, b_status) = (switch.clone(), c.clone(), b_status.clone());
        move || {
            switch.disable();
            let reply = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(fetch(&c, addr, "/"))
            });
            *b_status.lock().unwrap() = Some(reply.status);
        }
    });
    let a = fetch(&c, addr, "/").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "A found it on");
    assert_eq!(
        *b_status.lock().unwrap(),
        Some(StatusCode::OK),
        "B ran inside A, after the switch went off"
    );
    assert!(!switch.is_enabled());
    assert_eq!(
        gauge(),
        0.0,
        "maintenance is off, and the gauge says on (A's update landed after B's)"
    );
}

/// The switch's clock is user code, and the gauge's update must not call it with the switch
/// locked: a clock that waits for a thread switching maintenance (a test harness that moves
/// its clock and flips the switch together, a clock behind a lock its owner holds while
/// calling `disable`) deadlocked the request. The hook runs on the reading of the clock that
/// the gauge's update makes (the second of the request: the first finds the notice in force)
/// and waits, at most 5 s, for `disable` on another thread. Before, that reading was made
/// under the switch's read lock, and `disable` waited for the request that waited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_gauge_does_not_read_the_clock_with_the_switch_locked() {
    let _prometheus = recorder().clone();
    let clock = HookClock::default();
    let switch = MaintenanceSwitch::with_clock(clock.clone());
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(MaintenanceLayer::new(switch.clone()).name("gauge-clock-lock"));
    let addr = common::serve_axum(app).await;
    let c = client();

    // A notice without an end: the request reads the clock to find it in force, then for the
    // gauge (not shown yet), then for the `Retry-After`.
    switch.enable();
    let disabled_in_time = Arc::new(Mutex::new(None));
    clock.arm(2, {
        let (switch, disabled_in_time) = (switch.clone(), disabled_in_time.clone());
        move || {
            let (done, finished) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                switch.disable();
                let _ = done.send(());
            });
            *disabled_in_time.lock().unwrap() =
                Some(finished.recv_timeout(Duration::from_secs(5)).is_ok());
        }
    });
    let reply = fetch(&c, addr, "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "found on");
    assert_eq!(
        *disabled_in_time.lock().unwrap(),
        Some(true),
        "the clock was read with the switch locked: a switch write from the clock's thread \
         waited for the request, which waited for it"
    );
    assert!(!switch.is_enabled());
    assert_eq!(fetch(&c, addr, "/").await.status, StatusCode::OK);
}

/// What the scripted origin answers, in order; then 200.
#[derive(Clone, Default)]
struct Script(Arc<Mutex<VecDeque<(StatusCode, Option<&'static str>)>>>);

async fn origin(State(script): State<Script>) -> axum::response::Response {
    match script.0.lock().unwrap().pop_front() {
        None => "ok".into_response(),
        Some((status, retry_after)) => {
            let mut res = (status, "canned").into_response();
            if let Some(ra) = retry_after {
                res.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            res
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_retry_client_counts_attempts_retries_and_give_ups() {
    let prometheus = recorder().clone();
    let script = Script::default();
    script.0.lock().unwrap().extend([
        // Request 1: a 503 with Retry-After, then 200 (one retry, waited by Retry-After).
        (StatusCode::SERVICE_UNAVAILABLE, Some("1")),
        (StatusCode::OK, None),
        // Request 2: three 500s: two retries by backoff, then out of attempts.
        (StatusCode::INTERNAL_SERVER_ERROR, None),
        (StatusCode::INTERNAL_SERVER_ERROR, None),
        (StatusCode::INTERNAL_SERVER_ERROR, None),
        // Request 3: a Retry-After over the cap: given up at once.
        (StatusCode::SERVICE_UNAVAILABLE, Some("3600")),
        // Request 4: a POST that fails is not retried (not idempotent).
        (StatusCode::BAD_GATEWAY, None),
    ]);
    let addr = common::serve_axum(Router::new().fallback(origin).with_state(script)).await;
    let policy = RetryPolicy::builder()
        .name("scripted")
        .max_attempts(3)
        .retry_after_cap(Duration::from_secs(60))
        .backoff(
            Backoff::new(Duration::from_millis(10), 1.0, Duration::from_millis(10))
                .unwrap()
                .jitter(Jitter::None),
        )
        .build()
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(client);
    let mut send = async |method: http::Method| {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}/"))
            .body(Full::<Bytes>::default())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        let status = res.status();
        res.into_body().collect().await.unwrap();
        status
    };
    assert_eq!(send(http::Method::GET).await, StatusCode::OK);
    assert_eq!(
        send(http::Method::GET).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        send(http::Method::GET).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(send(http::Method::POST).await, StatusCode::BAD_GATEWAY);

    let text = prometheus.render();
    let name = ("name", "scripted");
    // Four requests made, 2 + 3 + 1 + 1 attempts.
    assert_eq!(
        value(&text, "tower_5xx_retry_requests_total", &[name]),
        4.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "tower_5xx_retry_attempts_total", &[name]),
        7.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "tower_5xx_retry_retries_total",
            &[name, ("cause", "status")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "tower_5xx_retry_retries_total",
            &[name, ("cause", "connection")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "tower_5xx_retry_give_ups_total",
            &[name, ("cause", "attempts_exhausted")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "tower_5xx_retry_give_ups_total",
            &[name, ("cause", "retry_after_over_cap")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "tower_5xx_retry_give_ups_total",
            &[name, ("cause", "not_idempotent")]
        ),
        1.0
    );
    // The waits: one set by Retry-After, two by the backoff.
    assert_eq!(
        value(
            &text,
            "tower_5xx_retry_wait_seconds_count",
            &[name, ("source", "retry_after")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "tower_5xx_retry_wait_seconds_count",
            &[name, ("source", "backoff")]
        ),
        2.0
    );
}

#[test]
fn an_operator_call_that_changes_nothing_counts_no_transition() {
    let prometheus = recorder().clone();
    let breaker = CircuitBreaker::builder()
        .name("noop-reset")
        .build()
        .unwrap();
    breaker.force_open();
    breaker.reset(); // forced_open -> closed: one real change
    breaker.reset(); // closed -> closed: none
    let text = prometheus.render();
    assert_eq!(
        value(
            &text,
            "tower_5xx_breaker_transitions_total",
            &[("name", "noop-reset"), ("to", "closed")]
        ),
        1.0,
        "{text}"
    );
}

/// An origin whose every answer is `status`, and how many requests it received.
async fn always(status: StatusCode) -> (SocketAddr, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            (status, "canned")
        }
    });
    (common::serve_axum(app).await, seen)
}

/// Client breakers that open on one failure (100 % failures, minimum one call).
fn one_failure_opens() -> Arc<KeyedBreakers<Origin>> {
    Arc::new(
        KeyedBreakers::new(
            CircuitBreaker::builder()
                .sliding_window(SlidingWindow::Count(10))
                .minimum_calls(1),
        )
        .unwrap(),
    )
}

/// Three attempts, 10 ms apart.
fn three_quick_attempts(name: &str) -> RetryPolicy {
    RetryPolicy::builder()
        .name(name)
        .max_attempts(3)
        .backoff(
            Backoff::new(Duration::from_millis(10), 1.0, Duration::from_millis(10))
                .unwrap()
                .jitter(Jitter::None),
        )
        .build()
        .unwrap()
}

/// What both clients record when the first attempt's 500 opens the endpoint's breaker and the
/// breaker refuses the retry: one attempt sent, one retry decided, one `circuit_open` give-up.
fn assert_one_sent_and_one_refused(text: &str, name: &str) {
    let name = ("name", name);
    assert_eq!(
        value(text, "tower_5xx_retry_requests_total", &[name]),
        1.0,
        "one request was made\n{text}"
    );
    assert_eq!(
        value(text, "tower_5xx_retry_attempts_total", &[name]),
        1.0,
        "one request was sent; the refused one was not\n{text}"
    );
    assert_eq!(
        value(
            text,
            "tower_5xx_retry_retries_total",
            &[name, ("cause", "status")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            text,
            "tower_5xx_retry_give_ups_total",
            &[name, ("cause", "circuit_open")]
        ),
        1.0,
        "{text}"
    );
}

/// `RetryLayer` with client breakers: the retry the breaker refuses was never sent, so it is a
/// `circuit_open` give-up and not an attempt.
#[tokio::test(start_paused = true)]
async fn the_tower_client_counts_a_breaker_refused_retry_as_a_give_up_not_an_attempt() {
    let prometheus = recorder().clone();
    let (addr, seen) = always(StatusCode::INTERNAL_SERVER_ERROR).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(three_quick_attempts("tower-breaker-refuses"))
                .circuit_breakers(one_failure_opens()),
        )
        .service(client);
    let req = Request::get(format!("http://{addr}/"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    assert!(err.is::<CircuitOpen>(), "{err}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_one_sent_and_one_refused(&prometheus.render(), "tower-breaker-refuses");
}

/// The same through `RetryMiddleware` (reqwest): the same series, the same counts.
#[cfg(feature = "reqwest-middleware")]
#[tokio::test(start_paused = true)]
async fn the_reqwest_client_counts_a_breaker_refused_retry_as_the_tower_client_does() {
    let prometheus = recorder().clone();
    let (addr, seen) = always(StatusCode::INTERNAL_SERVER_ERROR).await;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(
            tower_5xx::retry::RetryMiddleware::new(three_quick_attempts("reqwest-breaker-refuses"))
                .circuit_breakers(one_failure_opens()),
        )
        .build();
    let err = client
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(Failure::from(err), Failure::CircuitOpen(_)));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_one_sent_and_one_refused(&prometheus.render(), "reqwest-breaker-refuses");
}

/// An origin that answers after a minute, and how many requests it received.
async fn slow() -> (SocketAddr, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
            "late"
        }
    });
    (common::serve_axum(app).await, seen)
}

fn one_second_deadline(name: &str) -> RetryPolicy {
    RetryPolicy::builder()
        .name(name)
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// Requests made, attempts sent and `deadline` give-ups of the retry client `name`.
fn attempts_and_deadline_give_ups(text: &str, name: &str) -> (f64, f64, f64) {
    let name = ("name", name);
    (
        value(text, "tower_5xx_retry_requests_total", &[name]),
        value(text, "tower_5xx_retry_attempts_total", &[name]),
        value(
            text,
            "tower_5xx_retry_give_ups_total",
            &[name, ("cause", "deadline")],
        ),
    )
}

/// `RetryLayer`: an attempt the deadline cuts was sent and failed: one attempt, one `deadline`
/// give-up.
#[tokio::test(start_paused = true)]
async fn the_tower_client_counts_a_deadline_cut_attempt_and_a_deadline_give_up() {
    let prometheus = recorder().clone();
    let (addr, seen) = slow().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(one_second_deadline("tower-deadline-cut")))
        .service(client);
    let req = Request::get(format!("http://{addr}/"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    assert!(matches!(Failure::from(err), Failure::DeadlineExceeded(_)));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let text = prometheus.render();
    assert_eq!(
        attempts_and_deadline_give_ups(&text, "tower-deadline-cut"),
        (1.0, 1.0, 1.0),
        "{text}"
    );
}

/// The same through `RetryMiddleware` (reqwest).
#[cfg(feature = "reqwest-middleware")]
#[tokio::test(start_paused = true)]
async fn the_reqwest_client_counts_a_deadline_cut_attempt_as_the_tower_client_does() {
    let prometheus = recorder().clone();
    let (addr, seen) = slow().await;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(tower_5xx::retry::RetryMiddleware::new(one_second_deadline(
            "reqwest-deadline-cut",
        )))
        .build();
    let err = client
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(Failure::from(err), Failure::DeadlineExceeded(_)));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let text = prometheus.render();
    assert_eq!(
        attempts_and_deadline_give_ups(&text, "reqwest-deadline-cut"),
        (1.0, 1.0, 1.0),
        "{text}"
    );
}

/// `RetryMiddleware` (reqwest): an attempt its own timeout cuts is retried as a `timeout`, as
/// `RetryLayer` counts it (the error reqwest-middleware wraps it in hides it from a walk of the
/// `source()` chain).
#[cfg(feature = "reqwest-middleware")]
#[tokio::test(start_paused = true)]
async fn the_reqwest_client_counts_an_attempt_timeout_as_a_timeout_retry() {
    let prometheus = recorder().clone();
    let (addr, seen) = slow().await;
    let policy = RetryPolicy::builder()
        .name("reqwest-attempt-timeout")
        .max_attempts(2)
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(tower_5xx::retry::RetryMiddleware::new(policy))
        .build();
    let err = client
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(Failure::from(err), Failure::AttemptTimedOut(_)));
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    let text = prometheus.render();
    let name = ("name", "reqwest-attempt-timeout");
    assert_eq!(
        value(
            &text,
            "tower_5xx_retry_retries_total",
            &[name, ("cause", "timeout")]
        ),
        1.0,
        "{text}"
    );
}

/// A request body that never ends.
struct Endless;

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Pending
    }
}

/// `RetryLayer`: a deadline that passes while nothing is in flight (here, still buffering the
/// request body) is a `deadline` give-up, and no attempt.
#[tokio::test(start_paused = true)]
async fn a_deadline_that_passes_before_anything_is_sent_is_a_give_up_only() {
    let prometheus = recorder().clone();
    let client = tower::service_fn(|_req: Request<ReplayBody<Endless>>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::default()))
    });
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(one_second_deadline("deadline-unsent")))
        .service(client);
    let req = Request::get("http://127.0.0.1:1/").body(Endless).unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    assert!(matches!(Failure::from(err), Failure::DeadlineExceeded(_)));
    let text = prometheus.render();
    assert_eq!(
        attempts_and_deadline_give_ups(&text, "deadline-unsent"),
        (1.0, 0.0, 1.0),
        "{text}"
    );
}

/// An error whose `Display` panics (user code the catch layer guards against): the client gets
/// one 500, counted once (by the fallback response, not also by the policy whose event
/// panicked).
#[tokio::test]
async fn a_response_whose_error_display_panics_is_counted_once() {
    #[derive(Debug)]
    struct PanickingDisplay;

    impl std::fmt::Display for PanickingDisplay {
        fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            panic!("{} Display of the error", common::EXPECTED_PANIC)
        }
    }

    impl std::error::Error for PanickingDisplay {}

    quiet_panics();
    let _logs = common::logs(); // a subscriber that formats the event's fields
    let prometheus = recorder().clone();
    let svc = CatchLayer::new()
        .name("panicking-display")
        .layer(tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<http::Response<Full<Bytes>>, _>(PanickingDisplay)
        }));
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = prometheus.render();
    assert_eq!(
        generated(&text, "panicking-display"),
        vec![("500".to_owned(), "internal".to_owned(), 1)],
        "{text}"
    );
}

/// Requests that end at the same moment on two threads, again and again: whenever the layer
/// is idle, its gauges say so. Each thread used to write the count it had computed, and the
/// older one could land last: `tower_5xx_shed_in_flight` (or `_queued`) then showed a request
/// on an idle server until the next one came.
#[test]
fn the_shed_gauges_show_the_load_after_requests_end_at_once() {
    let prometheus = recorder().clone();
    let name = ("name", "ending-at-once");
    // The queue's timers need a runtime; the requests end on threads of their own.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let layer = ShedLayer::builder()
        .limit(2)
        .max_queue(4)
        .max_wait(Duration::from_secs(600))
        .name(name.1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::default()))
    }));
    let _entered = runtime.enter();
    for round in 0..5_000 {
        // Two running requests end at once; then, with both permits held, two queued ones.
        for queued in [false, true] {
            let held: Vec<_> = (0..if queued { 2 } else { 0 })
                .map(|_| svc.clone().call(Request::new(())))
                .collect();
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let (mut svc, barrier, runtime) = (svc.clone(), &barrier, &runtime);
                    s.spawn(move || {
                        let _entered = runtime.enter();
                        let future = svc.call(Request::new(()));
                        barrier.wait();
                        drop(future);
                    });
                }
            });
            let text = prometheus.render();
            let shown = |metric| value(&text, metric, &[name]) as usize;
            assert_eq!(
                (
                    shown("tower_5xx_shed_in_flight"),
                    shown("tower_5xx_shed_queued")
                ),
                (handle.in_flight(), handle.queued()),
                "round {round}, queued: {queued}"
            );
            drop(held);
        }
    }
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

/// A recorder whose gauges panic on `increment` once armed (a recorder is user code).
struct ArmedRecorder(Arc<std::sync::atomic::AtomicBool>);

struct ArmedGauge(Arc<std::sync::atomic::AtomicBool>);

impl metrics::GaugeFn for ArmedGauge {
    fn increment(&self, _: f64) {
        if self.0.load(Ordering::SeqCst) {
            panic!("the recorder panicked");
        }
    }
    fn decrement(&self, _: f64) {}
    fn set(&self, _: f64) {}
}

impl metrics::Recorder for ArmedRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(Arc::new(ArmedGauge(self.0.clone())))
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// A recorder that panics while the shed layer hands a released permit to a queued request
/// must not lose the permit: the recorder runs after the wait queue's lock is released, once
/// the permit is with its waiter. (Called under the lock, between taking the permit and handing
/// it over, the panic left the permit taken by nobody: the queued request waited for good and
/// the layer ran one permit short from then on.)
#[test]
fn a_recorder_panicking_while_a_permit_is_handed_over_loses_no_permit() {
    use std::future::Future as _;
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let recorder = ArmedRecorder(armed.clone());
    metrics::with_local_recorder(&recorder, || {
        // Paused: the timeout below is virtual time, not a wait.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let layer = ShedLayer::builder()
                .limit(1)
                .max_queue(4)
                .max_wait(Duration::from_secs(600))
                .name("recorder-panics")
                .build()
                .unwrap();
            let handle = layer.handle();
            let mut svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::default()))
            }));
            let running = svc.call(Request::new(()));
            let mut queued = Box::pin(svc.call(Request::new(())));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(queued.as_mut().poll(&mut cx).is_pending());
            assert_eq!((handle.in_flight(), handle.queued()), (1, 1));

            armed.store(true, Ordering::SeqCst);
            // The running request ends: its permit goes to the queued one, and the recorder
            // panics on the way.
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(running)));
            armed.store(false, Ordering::SeqCst);
            assert!(dropped.is_err(), "the recorder was to panic");

            let res = tokio::time::timeout(Duration::from_secs(10), queued)
                .await
                .expect("the queued request never got the released permit");
            assert_eq!(res.unwrap().status(), StatusCode::OK);
            assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
        });
    });
}
