//! ShedLayer: real servers on 127.0.0.1 for behaviour, `service_fn` with paused time for the
//! timing-dependent parts.
#![cfg(feature = "shed")]

mod common;

use std::{
    convert::Infallible,
    future::Future,
    pin::pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use axum::{body::Body, extract::Request as AxumRequest, routing::get, Router};
use http::{header, Request, Response, StatusCode};
use tokio::{sync::Semaphore, time::Instant};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_5xx::{
    refuse::RefusalPolicy,
    shed::{Aimd, ExemptPaths, Gradient, Priority, ShedHandle, ShedLayer},
    Reason,
};

use common::{client, h2_client, request, send};

/// Polls a future once, without a real waker.
fn poll_now<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// A gate that handlers wait on: each `open(n)` lets `n` waiting handlers finish.
#[derive(Clone)]
struct Gate(Arc<Semaphore>);

impl Gate {
    fn new() -> Self {
        Gate(Arc::new(Semaphore::new(0)))
    }

    async fn pass(&self) {
        self.0.acquire().await.unwrap().forget();
    }

    fn open(&self, n: usize) {
        self.0.add_permits(n);
    }
}

/// A service whose requests wait at the gate, counting calls.
fn gated(
    gate: Gate,
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |_req: Request<()>| {
        let gate = gate.clone();
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            gate.pass().await;
            Ok::<_, Infallible>(Response::new(Body::from("ok")))
        }
    })
}

fn retry_after_secs<B>(res: &Response<B>) -> u64 {
    res.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Real servers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_against_capacity_ten() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let layer = ShedLayer::builder()
        .limit(10)
        .max_queue(10)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let handle = layer.handle();
    let (r, p) = (running.clone(), peak.clone());
    let app = Router::new()
        .route(
            "/work",
            get(move || {
                let (running, peak) = (r.clone(), p.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    "done"
                }
            }),
        )
        .route_layer(layer);
    let addr = common::serve_axum(app).await;

    let client = client();
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                let reply = tokio::time::timeout(
                    Duration::from_secs(5),
                    send(&client, request(addr, "/work", None)),
                )
                .await
                .expect("a request hung")
                .expect("a request failed at the transport level (reset?)");
                (reply, t.elapsed())
            })
        })
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for task in tasks {
        let (reply, elapsed) = task.await.unwrap();
        match reply.status {
            StatusCode::OK => {
                ok += 1;
                assert_eq!(reply.text(), "done");
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                shed += 1;
                let secs: u64 = reply
                    .header("retry-after")
                    .expect("a 503 without Retry-After")
                    .parse()
                    .expect("Retry-After is not delta-seconds");
                assert!((1..=30).contains(&secs), "Retry-After {secs}");
                assert_eq!(reply.header("cache-control"), Some("no-store"));
                assert!(reply.header("x-error-id").is_some());
            }
            other => panic!("unexpected status {other}: {}", reply.text()),
        }
        // Nobody waits much past the maximum wait plus one handler run (generous for CI).
        assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    }
    assert_eq!(ok + shed, 200);
    assert!(ok >= 10, "only {ok} served");
    assert!(shed > 0, "nothing was shed");
    assert!(peak.load(Ordering::SeqCst) <= 10, "limit exceeded");
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.queued(), 0);
    assert_eq!(handle.shed_count(), shed as u64);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn health_checks_are_never_shed() {
    let gate = Gate::new();
    let layer = ShedLayer::builder()
        .limit(1)
        .max_queue(0)
        .build()
        .unwrap()
        .priority(ExemptPaths::new(["/healthz"]));
    let handle = layer.handle();
    let g = gate.clone();
    let app = Router::new()
        .route(
            "/work",
            get(move || {
                let gate = g.clone();
                async move {
                    gate.pass().await;
                    "done"
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route_layer(layer);
    let addr = common::serve_axum(app).await;
    let client = client();

    // Occupy the only permit.
    let c = client.clone();
    let busy = tokio::spawn(async move { common::get(&c, addr, "/work").await });
    while handle.in_flight() == 0 {
        tokio::task::yield_now().await;
    }

    let health = common::get(&client, addr, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    let shed = send(
        &client,
        request(addr, "/work", Some("application/problem+json")),
    )
    .await
    .unwrap();
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        shed.header("content-type"),
        Some("application/problem+json")
    );
    let json: serde_json::Value = serde_json::from_slice(&shed.body).unwrap();
    assert_eq!(json["status"], 503);
    assert!(json["retry_after"].as_u64().unwrap() >= 1);

    gate.open(1);
    assert_eq!(busy.await.unwrap().status, StatusCode::OK);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test]
async fn client_that_disconnects_while_queued_frees_its_place() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ShedLayer::builder()
        .limit(1)
        .max_queue(1)
        .max_wait(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = layer.handle();
    let (g, c) = (gate.clone(), calls.clone());
    let app = Router::new()
        .route(
            "/work",
            get(move || {
                let gate = g.clone();
                c.fetch_add(1, Ordering::SeqCst);
                async move {
                    gate.pass().await;
                    "done"
                }
            }),
        )
        .route_layer(layer);
    let addr = common::serve_axum(app).await;
    let client = h2_client();

    let c1 = client.clone();
    let first = tokio::spawn(async move { common::get(&c1, addr, "/work").await });
    let c2 = client.clone();
    let queued = tokio::spawn(async move { common::get(&c2, addr, "/work").await });
    wait_for(|| handle.in_flight() == 1 && handle.queued() == 1).await;

    // The queued client goes away: its stream is reset and the server drops the request.
    queued.abort();
    wait_for(|| handle.queued() == 0).await;

    // Its place is free again: the next request queues instead of being shed.
    let c3 = client.clone();
    let third = tokio::spawn(async move { common::get(&c3, addr, "/work").await });
    wait_for(|| handle.queued() == 1).await;
    gate.open(2);
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(third.await.unwrap().status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the cancelled request ran");
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.shed_count(), 0);
}

/// Waits (bounded) until a condition about the server's state holds.
async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached within 2.5 s");
}

// ---------------------------------------------------------------------------------------------
// Service level, paused time
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn queued_request_is_shed_after_max_wait_without_calling_inner() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ShedLayer::builder()
        .limit(1)
        .max_queue(5)
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(gated(gate.clone(), calls.clone()));

    let mut holder = pin!(svc.clone().oneshot(Request::new(())));
    assert!(poll_now(holder.as_mut()).is_pending());
    assert_eq!(handle.in_flight(), 1);

    let start = Instant::now();
    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    // With paused time the clock jumps straight to the deadline: exactly max_wait.
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.extensions().get::<Reason>(), Some(&Reason::Shed));
    assert!(retry_after_secs(&res) >= 1);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "inner called for a shed request"
    );
    assert_eq!(handle.queued(), 0);

    gate.open(1);
    assert_eq!(holder.await.unwrap().status(), StatusCode::OK);
    assert_eq!(handle.in_flight(), 0);
}

/// A queue that has not been empty for 100 ms, or in which a waiter timed out in the last
/// 100 ms, is a standing queue: a request that joins it waits `standing_queue_wait`, not the
/// whole `max_wait`; once the queue has emptied and nobody timed out for 100 ms, a new request
/// waits the full `max_wait` again.
#[tokio::test(start_paused = true)]
async fn a_request_joining_a_standing_queue_waits_the_shorter_time() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ShedLayer::builder()
        .limit(1)
        .max_queue(5)
        .max_wait(Duration::from_millis(100))
        .standing_queue_wait(Duration::from_millis(20))
        .build()
        .unwrap();
    let svc = layer.layer(gated(gate.clone(), calls.clone()));
    let mut holder = pin!(svc.clone().oneshot(Request::new(())));
    assert!(poll_now(holder.as_mut()).is_pending());

    let start = Instant::now();
    // When a request joining at `at` ms is shed, in ms since the start.
    let join = |at: u64| {
        let svc = svc.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start + Duration::from_millis(at)).await;
            let res = svc.oneshot(Request::new(())).await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            start.elapsed().as_millis()
        })
    };
    // A joins the empty queue at 0 and B at 60 (the queue has held a waiter for 60 ms): each
    // may wait 100 ms. A leaves at 100 with B still there, so at 120 the queue has not been
    // empty for 120 ms: C, joining then, waits 20 ms. B leaves at 160 and the queue is empty,
    // but B timed out: D, joining at 180, still finds a standing queue and waits 20 ms (a queue
    // under sustained overload empties whenever several requests finish at once; its waiters
    // keep timing out). The last timeout is D's at 200: E, joining at 320 an empty queue in
    // which nobody timed out for 120 ms, waits the whole 100 ms again.
    let (a, b, c, d, e) = (join(0), join(60), join(120), join(180), join(320));
    assert_eq!(
        (
            a.await.unwrap(),
            b.await.unwrap(),
            c.await.unwrap(),
            d.await.unwrap(),
            e.await.unwrap()
        ),
        (100, 160, 140, 200, 420)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only the holder ran");

    gate.open(1);
    assert_eq!(holder.await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn standing_queue_wait_longer_than_max_wait_is_rejected() {
    let err = ShedLayer::builder()
        .max_wait(Duration::from_millis(100))
        .standing_queue_wait(Duration::from_millis(101))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("standing_queue_wait"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn queued_request_runs_when_a_permit_frees_before_the_deadline() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ShedLayer::builder()
        .limit(1)
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(gated(gate.clone(), calls.clone()));

    let start = Instant::now();
    let holder = tokio::spawn(svc.clone().oneshot(Request::new(())));
    let waiter = tokio::spawn(svc.clone().oneshot(Request::new(())));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
    gate.open(2);
    assert_eq!(holder.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(waiter.await.unwrap().unwrap().status(), StatusCode::OK);
    // Woken by the released permit at 60 ms, not by its 100 ms deadline.
    assert_eq!(start.elapsed(), Duration::from_millis(60));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn full_queue_sheds_at_once() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ShedLayer::builder().limit(1).max_queue(1).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(gated(gate.clone(), calls.clone()));

    let mut a = pin!(svc.clone().oneshot(Request::new(())));
    let mut b = pin!(svc.clone().oneshot(Request::new(())));
    assert!(poll_now(a.as_mut()).is_pending());
    assert!(poll_now(b.as_mut()).is_pending());
    let mut c = pin!(svc.clone().oneshot(Request::new(())));
    let Poll::Ready(Ok(res)) = poll_now(c.as_mut()) else {
        panic!("a request that finds the queue full must be answered at once");
    };
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
}

/// A layer is a plain value around one limiter: a handle taken from the layer, from a clone of
/// it or from a service it made observes the same limit, queue and counts.
#[tokio::test(start_paused = true)]
async fn the_layer_its_clones_handles_and_services_share_one_limiter() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ShedLayer::builder().limit(2).max_queue(1).build().unwrap();
    let handle = layer.handle();
    let clone = layer.clone();
    assert_eq!(handle.limit(), 2);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
    let svc = layer.layer(gated(gate.clone(), calls.clone()));
    let other = clone.layer(gated(gate.clone(), calls.clone()));

    let mut a = pin!(svc.clone().oneshot(Request::new(())));
    let mut b = pin!(other.clone().oneshot(Request::new(())));
    let mut c = pin!(svc.clone().oneshot(Request::new(())));
    assert!(poll_now(a.as_mut()).is_pending());
    assert!(poll_now(b.as_mut()).is_pending());
    assert!(poll_now(c.as_mut()).is_pending());
    assert_eq!((handle.in_flight(), handle.queued()), (2, 1));
    assert_eq!(other.handle().in_flight(), 2);
    let mut d = pin!(other.clone().oneshot(Request::new(())));
    let Poll::Ready(Ok(res)) = poll_now(d.as_mut()) else {
        panic!("the queue of 1 is full");
    };
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(handle.shed_count(), 1);

    // A limit set through the handle reaches the services.
    handle.set_limit(3);
    assert_eq!(svc.handle().limit(), 3);
    assert!(poll_now(c.as_mut()).is_pending());
    assert_eq!((handle.in_flight(), handle.queued()), (3, 0));
    gate.open(3);
    for res in [a.await, b.await, c.await] {
        assert_eq!(res.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(handle.in_flight(), 0);
}

/// Two layers built separately are two limiters.
#[tokio::test(start_paused = true)]
async fn separately_built_layers_are_independent() {
    let base = ShedLayer::builder().limit(5).build().unwrap();
    let other = ShedLayer::builder().limit(7).build().unwrap();
    other.handle().set_limit(8);
    assert_eq!(base.handle().limit(), 5);
    assert_eq!(other.handle().limit(), 8);
}

/// Invalid settings are a typed error when the layer is built: no silent clamp.
#[test]
fn invalid_settings_are_rejected_at_build() {
    let invalid = [
        ShedLayer::builder().limit(0).build().err(),
        ShedLayer::builder()
            .max_queue(4)
            .low_priority_queue(5)
            .build()
            .err(),
        ShedLayer::builder()
            .limit(Aimd::new().floor(0))
            .build()
            .err(),
        ShedLayer::builder()
            .limit(Aimd::new().floor(10).ceiling(5))
            .build()
            .err(),
        ShedLayer::builder()
            .limit(Aimd::new().initial(2000))
            .build()
            .err(),
        ShedLayer::builder()
            .limit(Aimd::new().backoff_ratio(1.0))
            .build()
            .err(),
        ShedLayer::builder()
            .limit(Aimd::new().backoff_ratio(f64::NAN))
            .build()
            .err(),
        ShedLayer::builder()
            .limit(Aimd::new().window(Duration::from_millis(10), 0))
            .build()
            .err(),
        ShedLayer::builder()
            .limit(Gradient::new().tolerance(0.5))
            .build()
            .err(),
        ShedLayer::builder()
            .limit(Gradient::new().smoothing(0.0))
            .build()
            .err(),
        ShedLayer::builder()
            .limit(Gradient::new().headroom(-1.0))
            .build()
            .err(),
        ShedLayer::builder()
            .limit(Gradient::new().headroom(f64::INFINITY))
            .build()
            .err(),
    ];
    for (i, error) in invalid.iter().enumerate() {
        let error = error
            .as_ref()
            .unwrap_or_else(|| panic!("setting {i} was accepted"));
        assert!(error.to_string().starts_with("invalid "), "{error}");
    }
    assert!(ShedLayer::builder()
        .max_queue(4)
        .low_priority_queue(4)
        .build()
        .is_ok());
    assert!(ShedLayer::builder()
        .limit(Gradient::new().initial(5).floor(5).ceiling(5))
        .build()
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn permits_and_places_are_released_on_cancel() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ShedLayer::builder().limit(1).max_queue(1).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(gated(gate.clone(), calls.clone()));

    let mut running = Box::pin(svc.clone().oneshot(Request::new(())));
    let mut queued = Box::pin(svc.clone().oneshot(Request::new(())));
    assert!(poll_now(running.as_mut()).is_pending());
    assert!(poll_now(queued.as_mut()).is_pending());
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));

    drop(queued);
    assert_eq!(handle.queued(), 0, "a dropped waiter keeps its place");
    drop(running);
    assert_eq!(handle.in_flight(), 0, "a dropped request keeps its permit");

    // Both are usable again: one runs, one queues.
    let mut a = pin!(svc.clone().oneshot(Request::new(())));
    let mut b = pin!(svc.clone().oneshot(Request::new(())));
    assert!(poll_now(a.as_mut()).is_pending());
    assert!(poll_now(b.as_mut()).is_pending());
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
    gate.open(2);
    assert_eq!(a.await.unwrap().status(), StatusCode::OK);
    assert_eq!(b.await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the dropped waiter was never called"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_passes_its_wakeup_on() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ShedLayer::builder()
        .limit(1)
        .max_queue(2)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(gated(gate.clone(), calls.clone()));

    let mut holder = Box::pin(svc.clone().oneshot(Request::new(())));
    assert!(poll_now(holder.as_mut()).is_pending());
    let mut first = Box::pin(svc.clone().oneshot(Request::new(())));
    assert!(poll_now(first.as_mut()).is_pending());
    let second = tokio::spawn(svc.clone().oneshot(Request::new(())));
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 2));

    // The permit frees: the first waiter (first in line) is notified, but it is dropped before
    // it runs. The wake-up must reach the second waiter, long before its 10 s deadline.
    drop(holder);
    drop(first);
    gate.open(1);
    let start = Instant::now();
    assert_eq!(second.await.unwrap().unwrap().status(), StatusCode::OK);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the second waiter was not woken"
    );
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn permit_is_released_when_the_inner_future_or_call_panics() {
    common::quiet_panics();
    let layer = ShedLayer::builder().limit(2).build().unwrap();
    let handle = layer.handle();

    let panicking_future = layer.layer(service_fn(|_req: Request<()>| async {
        if true {
            panic!("{} in the response future", common::EXPECTED_PANIC);
        }
        Ok::<_, Infallible>(Response::new(Body::empty()))
    }));
    let joined = tokio::spawn(panicking_future.oneshot(Request::new(()))).await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(handle.in_flight(), 0);

    #[derive(Clone)]
    struct PanicsInCall;
    impl Service<Request<()>> for PanicsInCall {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            panic!("{} in call", common::EXPECTED_PANIC);
        }
    }
    let mut svc = layer.layer(PanicsInCall);
    let caught =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| svc.call(Request::new(()))));
    assert!(caught.is_err());
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.limit(), 2);
}

#[tokio::test(start_paused = true)]
async fn low_priority_is_shed_first() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ShedLayer::builder()
        .limit(1)
        .max_queue(3)
        .low_priority_queue(1)
        .build()
        .unwrap()
        .priority(|req: &Request<()>| {
            if req.uri().path() == "/batch" {
                Priority::Low
            } else {
                Priority::Normal
            }
        });
    let handle = layer.handle();
    let svc = layer.layer(gated(gate.clone(), calls.clone()));
    let req = |path: &str| Request::get(path).body(()).unwrap();

    let mut futures = Vec::new();
    for path in ["/", "/batch"] {
        let mut f = Box::pin(svc.clone().oneshot(req(path)));
        assert!(poll_now(f.as_mut()).is_pending());
        futures.push(f);
    }
    assert_eq!(handle.queued(), 1);
    // The low-priority share (1 place) is used up: more batch work is shed ...
    let batch = svc.clone().oneshot(req("/batch")).await.unwrap();
    assert_eq!(batch.status(), StatusCode::SERVICE_UNAVAILABLE);
    // ... while normal requests still queue.
    let mut normal = Box::pin(svc.clone().oneshot(req("/")));
    assert!(poll_now(normal.as_mut()).is_pending());
    assert_eq!(handle.queued(), 2);
    gate.open(3);
    for f in futures {
        assert_eq!(f.await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(normal.await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn retry_after_follows_the_drain_rate_within_bounds() {
    // Each request takes 2 s; one runs at a time; three wait.
    let svc_fn = || {
        service_fn(|_req: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        })
    };
    for (max, expected) in [(Duration::from_secs(60), 8), (Duration::from_secs(5), 5)] {
        let layer = ShedLayer::builder()
            .limit(1)
            .max_queue(3)
            .max_wait(Duration::from_secs(60))
            .refusal(
                RefusalPolicy::builder()
                    .max_retry_after(max)
                    .retry_after_jitter(Duration::ZERO)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let handle = layer.handle();
        let svc = layer.layer(svc_fn());
        // Teach it the latency.
        svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(handle.latency(), Some(Duration::from_secs(2)));
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut f = Box::pin(svc.clone().oneshot(Request::new(())));
            assert!(poll_now(f.as_mut()).is_pending());
            held.push(f);
        }
        assert_eq!(handle.queued(), 3);
        // (3 queued + 1) * 2 s / limit 1 = 8 s, capped at `max`.
        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after_secs(&res), expected);
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_jitter_stays_within_bounds() {
    let gate = Gate::new();
    let layer = ShedLayer::builder()
        .limit(1)
        .max_queue(0)
        .refusal(
            RefusalPolicy::builder()
                .min_retry_after(Duration::from_secs(2))
                .max_retry_after(Duration::from_secs(4))
                .retry_after_jitter(Duration::from_secs(10))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let svc = layer.layer(gated(gate.clone(), Arc::default()));
    let mut holder = pin!(svc.clone().oneshot(Request::new(())));
    assert!(poll_now(holder.as_mut()).is_pending());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
        let secs = retry_after_secs(&res);
        // Within the bounds, plus at most the jitter: a fleet must spread out even when the
        // estimate sits at its cap (heavy overload is exactly when it does).
        assert!((2..=4 + 10).contains(&secs), "{secs}");
        seen.insert(secs);
    }
    assert!(seen.len() > 5, "no jitter: {seen:?}");
    assert!(
        seen.iter().any(|s| *s > 4),
        "jitter vanished at the cap: {seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn raising_the_limit_wakes_waiters() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ShedLayer::builder()
        .limit(1)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(gated(gate.clone(), calls.clone()));
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(Request::new(()))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 2));
    handle.set_limit(3);
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queued()), (3, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    gate.open(3);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}

/// What happened to request `n` (numbered in arrival order), in the order it happened.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    Served(usize),
    Shed(usize),
}

/// Limit 2, queue 64: every 10 ms one running request finishes and two new ones arrive in the
/// same instant, racing the released permit. The queue grows until waits pass `max_wait`.
/// Service must follow arrival order exactly, and a waiter may only be shed when nobody who
/// arrived after it has been served.
#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order_and_never_passed() {
    let gate = Gate::new();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let layer = ShedLayer::builder()
        .limit(2)
        .max_queue(64)
        // Off the 10 ms grid: a deadline never falls in the instant of a release.
        .max_wait(Duration::from_millis(305))
        .build()
        .unwrap();
    let handle = layer.handle();
    let (g, l) = (gate.clone(), log.clone());
    let svc = layer.layer(service_fn(move |req: Request<()>| {
        let n: usize = req.uri().path()[1..].parse().unwrap();
        l.lock().unwrap().push(Event::Served(n));
        let gate = g.clone();
        async move {
            gate.pass().await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }
    }));
    let mut tasks = Vec::new();
    let mut arrive = |n: usize| {
        let (svc, log) = (svc.clone(), log.clone());
        let req = Request::get(format!("/{n}")).body(()).unwrap();
        tasks.push(tokio::spawn(async move {
            let res = svc.oneshot(req).await.unwrap();
            if res.status() == StatusCode::SERVICE_UNAVAILABLE {
                log.lock().unwrap().push(Event::Shed(n));
            }
            res.status()
        }));
    };

    // Two run, thirty wait.
    let mut next = 0;
    while next < 32 {
        arrive(next);
        next += 1;
        tokio::task::yield_now().await;
    }
    assert_eq!((handle.in_flight(), handle.queued()), (2, 30));
    for _ in 0..100 {
        gate.open(1);
        // In the same instant, after the release is due: the new arrivals race for it.
        arrive(next);
        arrive(next + 1);
        next += 2;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.open(next);
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));

    let log = log.lock().unwrap().clone();
    let served: Vec<usize> = log
        .iter()
        .filter_map(|e| match e {
            Event::Served(n) => Some(*n),
            Event::Shed(_) => None,
        })
        .collect();
    assert!(
        served.windows(2).all(|w| w[0] < w[1]),
        "served out of arrival order: {served:?}"
    );
    let mut youngest_served = None;
    for event in &log {
        match *event {
            Event::Served(n) => youngest_served = Some(n),
            Event::Shed(n) => assert!(
                youngest_served.is_none_or(|y| y < n),
                "request {n} was shed after request {youngest_served:?}, which arrived later, was served"
            ),
        }
    }
    let shed = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(served.len() + shed, next, "a request got no answer");
    assert!(shed > 20, "the waits never passed max_wait: {shed} shed");
    assert!(served.len() > 100, "{} served", served.len());
}

/// Many threads releasing and queueing at once while the limit moves between 1 and 3: every
/// hand-off reaches a waiter (a lost one would leave a request waiting for its 10 s deadline
/// next to a free permit), and no more than the highest limit run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_waiter_is_forgotten_under_contention() {
    let layer = ShedLayer::builder()
        .limit(2)
        .max_queue(64)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let svc = layer.layer(service_fn(move |_req: Request<()>| {
        let (running, peak) = (r.clone(), p.clone());
        async move {
            peak.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }
    }));
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..48)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
                    assert_eq!(res.status(), StatusCode::OK);
                }
            })
        })
        .collect();
    let h = handle.clone();
    let mover = tokio::spawn(async move {
        for i in 0.. {
            h.set_limit(1 + i % 3);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    for client in clients {
        client.await.unwrap();
    }
    mover.abort();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a waiter waited for its deadline: {:?}",
        started.elapsed()
    );
    assert!(peak.load(Ordering::SeqCst) <= 3, "more ran than the limit");
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
    assert_eq!(handle.shed_count(), 0);
}

/// A lower limit lets the running requests finish: their permits retire instead of going to
/// the waiters, until the running count is under the new limit.
#[tokio::test(start_paused = true)]
async fn lowering_the_limit_lets_running_requests_finish_first() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ShedLayer::builder()
        .limit(3)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(gated(gate.clone(), calls.clone()));
    let tasks: Vec<_> = (0..5)
        .map(|_| tokio::spawn(svc.clone().oneshot(Request::new(()))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queued()), (3, 2));
    handle.set_limit(1);
    gate.open(1);
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queued()), (2, 2));
    gate.open(1);
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 2));
    // Under the limit now: the next permit released goes to the oldest waiter.
    gate.open(1);
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    gate.open(2);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

/// Runs `rounds` rounds of `handle.limit()` concurrent requests against `svc`.
async fn drive<S>(svc: &S, handle: &ShedHandle, rounds: usize)
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    for _ in 0..rounds {
        let tasks: Vec<_> = (0..handle.limit())
            .map(|_| tokio::spawn(svc.clone().oneshot(Request::new(()))))
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
}

/// A service whose latency is set from outside (paused time makes it exact).
fn variable_latency(
    latency_ms: Arc<AtomicU64>,
    fail: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |_req: Request<()>| {
        let ms = latency_ms.load(Ordering::SeqCst);
        let fail = fail.load(Ordering::SeqCst) > 0;
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let mut res = Response::new(Body::empty());
            if fail {
                *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            Ok::<_, Infallible>(res)
        }
    })
}

/// A service of as many workers as `workers` has permits, 10 ms each; requests over them wait
/// inside it, first come, first served (paused time makes it exact).
fn worker_pool(
    workers: Arc<Semaphore>,
) -> impl Service<
    Request<()>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |_req: Request<()>| {
        let workers = workers.clone();
        async move {
            let _worker = workers.acquire().await.expect("never closed");
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }
    })
}

/// `clients` clients sending requests back to back for `time`; a shed one tries again 10 ms
/// later.
async fn closed_loop<S>(svc: &S, clients: usize, time: Duration)
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let end = Instant::now() + time;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                while Instant::now() < end {
                    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
                    if res.status() == StatusCode::SERVICE_UNAVAILABLE {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn gradient_limit_falls_when_requests_queue_and_recovers() {
    let workers = Arc::new(Semaphore::new(40));
    let layer = ShedLayer::builder()
        // No wait before probing again after the fall (the wait is unit-tested in
        // `shed::limit`): a window is 100 ms, about ten rounds here.
        .limit(
            Gradient::new()
                .initial(20)
                .floor(4)
                .ceiling(60)
                .probe_after(0),
        )
        .max_queue(0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(worker_pool(workers.clone()));

    // (The first windows measure the baseline at a lower limit.)
    closed_loop(&svc, 64, Duration::from_secs(3)).await;
    let steady = handle.limit();
    assert!(
        steady > 20,
        "a fast, fully used service earns a higher limit: {steady}"
    );

    // Down to 8 workers: requests over them queue inside the service, and latency grows with
    // the limit.
    assert_eq!(workers.forget_permits(32), 32);
    closed_loop(&svc, 64, Duration::from_secs(6)).await;
    let loaded = handle.limit();
    assert!(
        loaded < steady / 2,
        "limit did not fall: {steady} -> {loaded}"
    );
    assert!(loaded >= 4, "below the floor: {loaded}");

    workers.add_permits(32);
    closed_loop(&svc, 64, Duration::from_secs(6)).await;
    assert!(
        handle.limit() > loaded,
        "limit did not recover: {}",
        handle.limit()
    );
    assert!(handle.limit() <= 60, "above the ceiling");
}

#[tokio::test(start_paused = true)]
async fn aimd_limit_backs_off_on_slow_or_failed_requests() {
    let latency = Arc::new(AtomicU64::new(10));
    let fail = Arc::new(AtomicUsize::new(0));
    let layer = ShedLayer::builder()
        .limit(
            Aimd::new()
                .initial(10)
                .floor(2)
                .ceiling(30)
                .latency_threshold(Duration::from_millis(100)),
        )
        .max_queue(0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(variable_latency(latency.clone(), fail.clone()));

    drive(&svc, &handle, 20).await;
    let grown = handle.limit();
    assert!(grown > 10, "{grown}");

    latency.store(200, Ordering::SeqCst);
    drive(&svc, &handle, 3).await;
    let slow = handle.limit();
    assert!(slow < grown, "no backoff on latency: {grown} -> {slow}");

    latency.store(10, Ordering::SeqCst);
    handle.set_limit(20);
    fail.store(1, Ordering::SeqCst);
    drive(&svc, &handle, 400).await;
    assert_eq!(handle.limit(), 2, "failures drive it to the floor");
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ShedLayer>();
    assert_send_sync::<ShedHandle>();
    assert_send_sync::<tower_5xx::shed::Shed<axum::routing::Route>>();
    fn assert_send<T: Send>(_: &T) {}
    let svc = ShedLayer::new().layer(service_fn(|_req: AxumRequest| async {
        Ok::<_, Infallible>(axum::response::Response::new(axum::body::Body::empty()))
    }));
    assert_send(
        &svc.clone()
            .oneshot(AxumRequest::new(axum::body::Body::empty())),
    );
}
