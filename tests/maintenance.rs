//! Maintenance mode over real sockets: toggling under load, truthful Retry-After, bypass rules
//! (and spoofing), response formats, the admin router and the sentinel file.
#![cfg(feature = "maintenance")]

mod common;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use axum::{routing::get, Router};
use bytes::Bytes;
use common::{client, get as get_path, h2_client, request, send, Reply, TestClient};
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::{Notify, Semaphore};
use tower::{service_fn, Layer, ServiceExt};
use tower_5xx::{
    maintenance::{
        FileState, ForwardedHeader, IpNet, MaintenanceLayer, MaintenanceNotice, MaintenanceSwitch,
        SentinelFile, WallClock, Window,
    },
    refuse::RefusalPolicy,
    Reason,
};

/// The layer with a policy without jitter, so that `Retry-After` values can be asserted exactly.
fn exact_layer(switch: &MaintenanceSwitch) -> MaintenanceLayer {
    MaintenanceLayer::new(switch.clone()).refusal(exact())
}

fn exact() -> RefusalPolicy {
    RefusalPolicy::builder()
        .retry_after_jitter(Duration::ZERO)
        .build()
        .unwrap()
}

/// A wall clock the test sets by hand.
#[derive(Debug, Clone)]
struct ManualClock(Arc<Mutex<SystemTime>>);

impl ManualClock {
    fn new(t: SystemTime) -> Self {
        Self(Arc::new(Mutex::new(t)))
    }
    fn set(&self, t: SystemTime) {
        *self.0.lock().unwrap() = t;
    }
}

impl WallClock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

fn date(s: &str) -> SystemTime {
    httpdate::parse_http_date(s).unwrap()
}

/// Without the `axum` feature the layer cannot name axum's `ConnectInfo`: tell it where to look.
fn with_peer(layer: MaintenanceLayer) -> MaintenanceLayer {
    #[cfg(not(feature = "axum"))]
    let layer = layer.peer_addr_from(|ext| {
        ext.get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
    });
    layer
}

fn hello() -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/healthz", get(|| async { "ok" }))
}

async fn serve(layer: MaintenanceLayer) -> SocketAddr {
    common::serve_axum(hello().layer(with_peer(layer))).await
}

fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = request(addr, path, None);
    for (k, v) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    req
}

async fn status_of(c: &TestClient, req: Request<Full<Bytes>>) -> StatusCode {
    send(c, req).await.unwrap().status
}

fn assert_maintenance_503(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert!(reply.header("retry-after").is_some());
    assert!(reply.header("x-error-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_flight_requests_finish_when_maintenance_starts() {
    let switch = MaintenanceSwitch::new();
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new((AtomicUsize::new(0), Notify::new()));
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .route(
            "/slow",
            get({
                let (gate, entered) = (gate.clone(), entered.clone());
                move || async move {
                    entered.0.fetch_add(1, Ordering::SeqCst);
                    entered.1.notify_waiters();
                    gate.acquire().await.unwrap().forget();
                    "slow but fine"
                }
            }),
        )
        .layer(exact_layer(&switch));
    let addr = common::serve_axum(app).await;

    let slow: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(async move {
                let c = if i % 2 == 0 { client() } else { h2_client() };
                get_path(&c, addr, "/slow").await
            })
        })
        .collect();
    // Wait until all four are inside the handler (bounded: a hang fails the test).
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let notified = entered.1.notified();
            if entered.0.load(Ordering::SeqCst) == 4 {
                break;
            }
            notified.await;
        }
    })
    .await
    .expect("slow requests reached the handler");

    switch.enable();
    let c = client();
    assert_maintenance_503(&get_path(&c, addr, "/").await);
    assert_maintenance_503(&get_path(&c, addr, "/slow").await);

    gate.add_permits(4);
    for handle in slow {
        let reply = handle.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "in-flight request completes");
        assert_eq!(reply.text(), "slow but fine");
    }
    assert_eq!(entered.0.load(Ordering::SeqCst), 4, "no new request got in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toggling_under_load_gives_only_200_or_503() {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 60;
    let switch = MaintenanceSwitch::new();
    let addr = serve(exact_layer(&switch)).await;
    let completed = Arc::new(AtomicUsize::new(0));

    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (switch, completed) = (switch.clone(), completed.clone());
            tokio::spawn(async move {
                let c = if i % 2 == 0 { client() } else { h2_client() };
                let mut statuses = Vec::with_capacity(PER_CLIENT);
                for _ in 0..PER_CLIENT {
                    let reply = send(&c, request(addr, "/", None))
                        .await
                        .expect("no dropped connection, no protocol error");
                    if reply.status == StatusCode::SERVICE_UNAVAILABLE {
                        assert_maintenance_503(&reply);
                    } else {
                        assert_eq!(reply.status, StatusCode::OK);
                        assert_eq!(reply.text(), "hello");
                    }
                    statuses.push(reply.status);
                    // Every 7th completed request (across all clients) flips the switch, while
                    // the other clients' requests are in flight.
                    if completed.fetch_add(1, Ordering::SeqCst) % 7 == 6 {
                        if switch.is_enabled() {
                            switch.disable();
                        } else {
                            switch.enable();
                        }
                    }
                }
                statuses
            })
        })
        .collect();
    let mut ok = 0;
    let mut unavailable = 0;
    for task in tasks {
        for status in task.await.unwrap() {
            match status {
                StatusCode::OK => ok += 1,
                StatusCode::SERVICE_UNAVAILABLE => unavailable += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert_eq!(ok + unavailable, CLIENTS * PER_CLIENT);
    assert!(ok > 0 && unavailable > 0, "{ok} x 200, {unavailable} x 503");
}

#[tokio::test]
async fn retry_after_counts_down_to_the_window_end() {
    let t0 = date("Sun, 06 Nov 2033 08:00:00 GMT");
    let clock = ManualClock::new(t0);
    let switch = MaintenanceSwitch::with_clock(clock.clone());
    let end = t0 + Duration::from_secs(100);
    switch.schedule(
        Window::new(t0 + Duration::from_secs(10), end)
            .unwrap()
            .message("Planned maintenance."),
    );
    let delta = serve(exact_layer(&switch)).await;
    let dated =
        serve(exact_layer(&switch).refusal(exact().to_builder().http_date(true).build().unwrap()))
            .await;
    let c = client();

    assert_eq!(get_path(&c, delta, "/").await.status, StatusCode::OK);

    clock.set(t0 + Duration::from_secs(10));
    let reply = get_path(&c, delta, "/").await;
    assert_maintenance_503(&reply);
    assert_eq!(reply.header("retry-after"), Some("90"));
    assert!(reply.text().contains("Planned maintenance."));

    clock.set(t0 + Duration::from_millis(55_500));
    let reply = send(&c, request(delta, "/", Some("application/problem+json")))
        .await
        .unwrap();
    assert_eq!(reply.header("retry-after"), Some("45"), "44.5 s rounds up");
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(json["retry_after"], 45);
    assert_eq!(json["detail"], "Planned maintenance.");

    let reply = get_path(&c, dated, "/").await;
    assert_eq!(
        reply.header("retry-after"),
        Some("Sun, 06 Nov 2033 08:01:40 GMT")
    );

    // The window closes by itself.
    clock.set(end);
    assert_eq!(get_path(&c, delta, "/").await.status, StatusCode::OK);
    assert!(!switch.is_enabled());
}

#[tokio::test(start_paused = true)]
async fn retry_after_counts_down_to_a_deadline_on_tokios_clock() {
    let switch = MaintenanceSwitch::new();
    let svc = exact_layer(&switch)
        .default_retry_after(Duration::from_secs(7))
        .layer(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        }));
    let retry_after = |svc: &tower_5xx::maintenance::Maintenance<_>| {
        let svc = svc.clone();
        async move {
            let res = svc
                .oneshot(Request::get("/").body(Full::default()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(res.extensions().get::<Reason>(), Some(&Reason::Maintenance));
            res.headers()[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };

    switch.enable_with(MaintenanceNotice::new().ends_in(Duration::from_secs(90)));
    assert_eq!(retry_after(&svc).await, "90");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(retry_after(&svc).await, "60");
    tokio::time::advance(Duration::from_millis(59_001)).await;
    assert_eq!(retry_after(&svc).await, "1");
    // Past the announced end: still on (an overrun must not let traffic in), default Retry-After.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(retry_after(&svc).await, "7");
    assert!(switch.is_enabled());
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_do_not_bypass() {
    let allowed: IpNet = "203.0.113.0/24".parse().unwrap();
    let switch = MaintenanceSwitch::new();
    switch.enable();
    let c = client();

    // Direct: the peer is 127.0.0.1, not a trusted proxy; its headers are not believed.
    let direct = serve(exact_layer(&switch).allow_ip(allowed)).await;
    for spoof in [
        ("x-forwarded-for", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7"),
        ("x-forwarded-for", "203.0.113.7, 203.0.113.8"),
    ] {
        let reply = send(&c, get_with(direct, "/", &[spoof])).await.unwrap();
        assert_maintenance_503(&reply);
    }

    // Behind a trusted proxy (here: the test client on 127.0.0.1), the header is believed.
    let proxied = serve(
        exact_layer(&switch)
            .allow_ip(allowed)
            .trusted_proxy("127.0.0.0/8".parse::<IpNet>().unwrap()),
    )
    .await;
    let via = |h: &'static str, v: &'static str| get_with(proxied, "/", &[(h, v)]);
    assert_eq!(
        status_of(&c, via("x-forwarded-for", "203.0.113.7")).await,
        StatusCode::OK
    );
    // Only X-Forwarded-For (the default) is read.
    assert_eq!(
        status_of(&c, via("forwarded", "for=203.0.113.7;proto=https")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The client prepended an allowed address; the proxy appended the real one.
    assert_eq!(
        status_of(&c, via("x-forwarded-for", "203.0.113.7, 198.51.100.1")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status_of(&c, via("x-forwarded-for", "203.0.113.7, garbage")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // No header: the client is the proxy itself, which is not allow-listed.
    assert_eq!(
        status_of(&c, request(proxied, "/", None)).await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // The real peer address is found: allow-listing 127.0.0.1 lets the test client in.
    let local = serve(exact_layer(&switch).allow_ip(IpNet::from(
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap(),
    )))
    .await;
    assert_eq!(
        status_of(&c, request(local, "/", None)).await,
        StatusCode::OK
    );
}

/// Proxies append to the header they write and pass the other one through from the client: a
/// client behind a trusted proxy must not pick its own address with the header the proxy does
/// not write.
#[tokio::test]
async fn only_the_header_the_proxies_write_is_believed() {
    let allowed: IpNet = "203.0.113.0/24".parse().unwrap();
    let switch = MaintenanceSwitch::new();
    switch.enable();
    let c = client();
    let layer = || {
        exact_layer(&switch)
            .allow_ip(allowed)
            .trusted_proxy("127.0.0.0/8".parse::<IpNet>().unwrap())
    };

    // nginx-like proxy (the default): it appended the real client to X-Forwarded-For; the client
    // sent its own `Forwarded` naming an allowed address.
    let xff = serve(layer()).await;
    let spoofed = [
        ("x-forwarded-for", "198.51.100.1"),
        ("forwarded", "for=203.0.113.7"),
    ];
    let reply = send(&c, get_with(xff, "/", &spoofed)).await.unwrap();
    assert_maintenance_503(&reply);
    let honest = [
        ("x-forwarded-for", "203.0.113.7"),
        ("forwarded", "for=198.51.100.1"),
    ];
    assert_eq!(
        status_of(&c, get_with(xff, "/", &honest)).await,
        StatusCode::OK
    );

    // A proxy that writes RFC 7239 `Forwarded`: now X-Forwarded-For is the client's word.
    let fwd = serve(layer().forwarded_header(ForwardedHeader::Forwarded)).await;
    assert_eq!(
        status_of(&c, get_with(fwd, "/", &honest)).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status_of(&c, get_with(fwd, "/", &spoofed)).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(
            &c,
            get_with(fwd, "/", &[("x-forwarded-for", "203.0.113.7")])
        )
        .await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// An empty secret (an unset environment variable) must not turn into "send the header empty".
#[tokio::test]
async fn an_empty_bypass_secret_lets_nobody_through() {
    let logs = common::logs();
    let name = HeaderName::from_static("x-maintenance-bypass");
    let switch = MaintenanceSwitch::new();
    let addr = serve(
        exact_layer(&switch)
            .bypass_header(name.clone(), "")
            .bypass_header(
                name.clone(),
                std::env::var("TOWER_5XX_SURELY_UNSET").unwrap_or_default(),
            )
            .bypass_header(name.clone(), " \t\n"),
    )
    .await;
    switch.enable();
    let c = client();
    for value in ["", " ", "anything"] {
        let reply = send(&c, get_with(addr, "/", &[("x-maintenance-bypass", value)]))
            .await
            .unwrap();
        assert_maintenance_503(&reply);
    }
    assert_maintenance_503(&get_path(&c, addr, "/").await);
    assert!(!logs
        .lines_with("maintenance bypass header with an empty secret ignored")
        .is_empty());

    // A secret read from a file with its newline still works.
    let addr = serve(exact_layer(&switch).bypass_header(name, "0p3r4t0r\n")).await;
    assert_eq!(
        status_of(
            &c,
            get_with(addr, "/", &[("x-maintenance-bypass", "0p3r4t0r")])
        )
        .await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bypass_paths_headers_and_predicates() {
    let switch = MaintenanceSwitch::new();
    let addr = serve(
        exact_layer(&switch)
            .bypass_path("/healthz")
            .bypass_header(HeaderName::from_static("x-maintenance-bypass"), "0p3r4t0r")
            .bypass_if(|req| req.uri().query() == Some("canary=1")),
    )
    .await;
    switch.enable();
    let c = client();

    assert_eq!(get_path(&c, addr, "/healthz").await.status, StatusCode::OK);
    assert_maintenance_503(&get_path(&c, addr, "/").await);
    let with = |v: &'static str| get_with(addr, "/", &[("x-maintenance-bypass", v)]);
    assert_eq!(status_of(&c, with("0p3r4t0r")).await, StatusCode::OK);
    for wrong in ["0p3r4t0", "0p3r4t0r!", "", "0P3R4T0R"] {
        assert_eq!(
            status_of(&c, with(wrong)).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "{wrong:?}"
        );
    }
    assert_eq!(
        get_path(&c, addr, "/?canary=1").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_path(&c, addr, "/?canary=2").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// Sends `GET <target> HTTP/1.1` as raw bytes (hyper's client would normalise the target) and
/// returns the status code of the answer.
async fn raw_get_status(addr: SocketAddr, target: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .unwrap_or_else(|| panic!("{target}: {answer}"));
    status.parse().unwrap()
}

/// Bypass prefixes match the path the application will see, dot-segments removed: a request
/// cannot climb out of `/healthz` with `..` (plain, percent-encoded, in absolute form), and a
/// path whose meaning servers disagree on (an encoded slash) never bypasses.
#[tokio::test]
async fn dot_segments_do_not_bypass() {
    let switch = MaintenanceSwitch::new();
    // The fallback stands for an application (or a proxy, a file server) that normalises paths
    // itself: whatever gets past the layer reaches it.
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { "reached the app" })
        .layer(
            exact_layer(&switch)
                .bypass_path("/healthz")
                .bypass_path("/static/"),
        );
    let addr = common::serve_axum(app).await;
    switch.enable();

    for legit in [
        "/healthz",
        "/healthz/live",
        "/healthz?x=1",
        "/static/app.js",
    ] {
        assert_eq!(raw_get_status(addr, legit).await, 200, "{legit}");
    }
    for attack in [
        "/healthz/..",
        "/healthz/../admin",
        "/healthz/%2e%2e/admin",
        "/healthz/%2E./admin",
        "/healthz/..%2fadmin",
        "/healthz%2f..%2fadmin",
        "/healthz/..;/admin",
        "/static/../../admin/maintenance",
        "/static/./../admin",
        "http://example.com/healthz/../admin",
    ] {
        assert_eq!(raw_get_status(addr, attack).await, 503, "{attack}");
    }
    // Backslashes: refused by the server or by the layer, never let through.
    for attack in ["/healthz/..\\admin", "/healthz/..%5cadmin"] {
        let status = raw_get_status(addr, attack).await;
        assert!(status == 503 || status == 400, "{attack}: {status}");
    }
}

#[tokio::test]
async fn browsers_get_an_html_page_apis_get_problem_json() {
    let switch = MaintenanceSwitch::new();
    let addr = serve(
        exact_layer(&switch).refusal(
            exact()
                .to_builder()
                .detail("Back at <noon>.")
                .build()
                .unwrap(),
        ),
    )
    .await;
    switch.enable_with(MaintenanceNotice::new().retry_after(Duration::from_secs(120)));
    let c = client();

    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let html = send(&c, request(addr, "/", Some(browser))).await.unwrap();
    assert_maintenance_503(&html);
    assert!(html
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(
        html.text().contains("Back at &lt;noon&gt;."),
        "{}",
        html.text()
    );
    assert_eq!(html.header("retry-after"), Some("120"));

    let api = send(&c, request(addr, "/", Some("application/json")))
        .await
        .unwrap();
    assert_maintenance_503(&api);
    assert_eq!(api.header("content-type"), Some("application/problem+json"));
    let json: serde_json::Value = serde_json::from_slice(&api.body).unwrap();
    assert_eq!(json["status"], 503);
    assert_eq!(json["detail"], "Back at <noon>.");
    assert_eq!(json["retry_after"], 120);

    let text = get_path(&c, addr, "/").await;
    assert!(text
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));

    // The notice's own message wins over the layer's.
    switch.enable_with(MaintenanceNotice::new().message("Database upgrade."));
    assert!(get_path(&c, addr, "/")
        .await
        .text()
        .contains("Database upgrade."));
}

/// A fresh path in the temp dir, removed on drop.
struct TempPath(std::path::PathBuf);

impl TempPath {
    fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Self(std::env::temp_dir().join(format!("tower-5xx-{name}-{}-{nanos}", std::process::id())))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test]
async fn sentinel_file_switches_on_and_off() {
    let path = TempPath::new("sentinel");
    let switch = MaintenanceSwitch::new();
    let addr = serve(exact_layer(&switch).default_retry_after(Duration::from_secs(30))).await;
    let mut file = SentinelFile::new(&path.0, switch.clone());
    let c = client();

    assert_eq!(file.check().await, FileState::Absent);
    assert!(!switch.is_enabled());

    std::fs::write(&path.0, "").unwrap();
    assert!(matches!(file.check().await, FileState::Present(_)));
    let reply = get_path(&c, addr, "/").await;
    assert_maintenance_503(&reply);
    assert_eq!(reply.header("retry-after"), Some("30"));

    std::fs::write(&path.0, "120\nBack after the migration.\n").unwrap();
    assert!(matches!(file.check().await, FileState::Present(_)));
    let reply = get_path(&c, addr, "/").await;
    assert_eq!(reply.header("retry-after"), Some("120"));
    assert!(reply.text().contains("Back after the migration."));

    // Bad content: on, default Retry-After, logged.
    let logs = common::logs();
    std::fs::write(&path.0, "after lunch").unwrap();
    assert_eq!(file.check().await, FileState::Invalid);
    let reply = get_path(&c, addr, "/").await;
    assert_maintenance_503(&reply);
    assert_eq!(reply.header("retry-after"), Some("30"));
    assert!(!logs
        .lines_with("neither delta-seconds nor an HTTP-date")
        .is_empty());

    std::fs::remove_file(&path.0).unwrap();
    assert_eq!(file.check().await, FileState::Absent);
    assert_eq!(get_path(&c, addr, "/").await.status, StatusCode::OK);

    // Only changes are applied: a switch flipped by hand stays flipped while the file does not
    // change.
    switch.enable();
    assert_eq!(file.check().await, FileState::Absent);
    assert!(switch.is_enabled());
    switch.disable();

    // Present but unreadable (a directory): on, never a panic.
    std::fs::create_dir(&path.0).unwrap();
    assert!(matches!(file.check().await, FileState::Unreadable(_)));
    assert!(switch.is_enabled());
    std::fs::remove_dir(&path.0).unwrap();
    assert_eq!(file.check().await, FileState::Absent);
    assert!(!switch.is_enabled());
}

/// However far ahead the file announces the end (the year 9999, a huge delay), clients are told
/// to come back within the refusal policy's maximum (30 days), plus its jitter.
#[tokio::test]
async fn a_sentinel_file_cannot_push_retry_after_beyond_30_days() {
    use tower_5xx::refuse::MAX_RETRY_AFTER;
    let path = TempPath::new("far");
    let switch = MaintenanceSwitch::new();
    // The default policy: up to 1 s of jitter.
    let delta = serve(MaintenanceLayer::new(switch.clone())).await;
    let dated = serve(
        MaintenanceLayer::new(switch.clone())
            .refusal(RefusalPolicy::builder().http_date(true).build().unwrap()),
    )
    .await;
    let mut file = SentinelFile::new(&path.0, switch.clone());
    let c = client();
    let max = MAX_RETRY_AFTER.as_secs();

    for content in [
        "Fri, 31 Dec 9999 23:59:59 GMT\nBack one day.\n",
        "99999999999999\n",
    ] {
        std::fs::write(&path.0, content).unwrap();
        assert!(
            matches!(file.check().await, FileState::Present(_)),
            "{content:?}"
        );
        for _ in 0..20 {
            let reply = get_path(&c, delta, "/").await;
            assert_maintenance_503(&reply);
            let secs: u64 = reply.header("retry-after").unwrap().parse().unwrap();
            assert!((max..=max + 1).contains(&secs), "{content:?}: {secs}");
        }
        let reply = get_path(&c, dated, "/").await;
        let at = date(reply.header("retry-after").unwrap());
        let latest = SystemTime::now() + MAX_RETRY_AFTER + Duration::from_secs(2);
        assert!(at <= latest, "{content:?}: {reply:?}");
    }
}

/// Waits (in real time, at most 5 s) until `cond` holds: the sentinel file is read on a thread of
/// its own, outside tokio's clock.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn sentinel_poller_follows_the_file() {
    let path = TempPath::new("poller");
    let switch = MaintenanceSwitch::new();
    let poller = SentinelFile::new(&path.0, switch.clone())
        .interval(Duration::from_millis(20))
        .spawn();

    std::fs::write(&path.0, "Sun, 06 Nov 2033 08:49:37 GMT\n").unwrap();
    eventually("the poller switches maintenance on", || switch.is_enabled()).await;
    assert_eq!(
        switch.status().ends_at,
        Some(date("Sun, 06 Nov 2033 08:49:37 GMT"))
    );
    std::fs::remove_file(&path.0).unwrap();
    eventually("the poller switches maintenance off", || {
        !switch.is_enabled()
    })
    .await;
    assert!(!poller.is_finished());
    poller.abort();
}

/// A read that never returns (a FIFO nobody writes to, like a hung network volume) does not stop
/// the poller: its checks time out and keep the state, no second read is started, and once the
/// hung read returns its content is used.
#[cfg(unix)]
#[tokio::test]
async fn a_hung_sentinel_read_times_out_and_polling_goes_on() {
    let logs = common::logs();
    let fifo = common::Fifo::new("hung");
    let switch = MaintenanceSwitch::new();
    let poller = SentinelFile::new(&fifo.0, switch.clone())
        .interval(Duration::from_millis(20))
        .spawn();
    let timeouts = || {
        logs.lines_with(&fifo.0.display().to_string())
            .iter()
            .filter(|l| l.contains("read timed out"))
            .count()
    };
    eventually("three checks time out", || timeouts() >= 3).await;
    assert!(!switch.is_enabled(), "a hung read changes nothing");
    assert!(!poller.is_finished());

    // The hung read gets its content: the poller uses it.
    fifo.write("120\nFrom the pipe.\n");
    eventually("the poller uses the late read", || switch.is_enabled()).await;
    let notice = switch.status().notice.unwrap();
    assert_eq!(notice.get_retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(notice.get_message(), Some("From the pipe."));

    // And reads afresh after it.
    drop(fifo);
    eventually("the poller sees the FIFO gone", || !switch.is_enabled()).await;
    poller.abort();
}

/// The poller of a FIFO nobody writes to must not keep the runtime (and so the process) from
/// shutting down: dropping the runtime, as `#[tokio::main]` does when `main` returns (on SIGINT,
/// say), returns at once.
#[cfg(unix)]
#[test]
fn a_hung_sentinel_read_does_not_hold_up_shutdown() {
    let fifo = common::Fifo::new("shutdown");
    let switch = MaintenanceSwitch::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let _poller = SentinelFile::new(&fifo.0, switch.clone())
            .interval(Duration::from_millis(20))
            .spawn();
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    assert!(!switch.is_enabled());

    let started = std::time::Instant::now();
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(rt);
        let _ = done.send(());
    });
    dropped
        .recv_timeout(Duration::from_secs(5))
        .expect("the runtime shuts down while the read hangs");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Dropping the FIFO lets the hung reader go.
}

#[cfg(feature = "axum")]
mod admin {
    use super::*;
    use http::Method;
    use tower_5xx::maintenance::admin;

    const TOKEN: &str = "correct-horse-battery-staple";

    fn call(
        addr: SocketAddr,
        method: Method,
        token: Option<&str>,
        body: &str,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}/admin/maintenance"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        req.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap()
    }

    #[test]
    fn refuses_to_be_built_without_a_token() {
        let err = admin::router(MaintenanceSwitch::new(), "").unwrap_err();
        assert_eq!(
            err.to_string(),
            "maintenance admin router needs a bearer token of 1 to 256 bytes"
        );
        // Longer: every comparison covers 256 bytes, so that its time hides the length.
        assert!(admin::router(MaintenanceSwitch::new(), "k".repeat(257)).is_err());
    }

    #[tokio::test]
    async fn admin_router_guards_and_flips_the_switch() {
        let switch = MaintenanceSwitch::new();
        let app = hello().layer(exact_layer(&switch)).nest(
            "/admin/maintenance",
            admin::router(switch.clone(), TOKEN).unwrap(),
        );
        let addr = common::serve_axum(app).await;
        let c = client();
        let snapshot = || switch.status();

        // No token, a wrong token: 401 with a challenge, nothing changes.
        let before = snapshot();
        for token in [None, Some("wrong"), Some("correct-horse-battery-stapl")] {
            for method in [Method::GET, Method::PUT, Method::DELETE] {
                let reply = send(&c, call(addr, method.clone(), token, "{}"))
                    .await
                    .unwrap();
                assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {token:?}");
                assert!(reply
                    .header("www-authenticate")
                    .unwrap()
                    .starts_with("Bearer"));
            }
        }
        assert_eq!(snapshot(), before);
        assert!(!switch.is_enabled());

        // Malformed bodies: 400 problem+json, nothing changes.
        for bad in [
            "{\"retry_after\": ",
            "{\"retry_after\": \"soon\"}",
            "{\"retry_afterr\": 5}",
            "{\"until\": \"tomorrow\"}",
            "[]",
            // Well-formed, but absurd: an end in the past, a 68-year Retry-After.
            "{\"until\": \"Wed, 01 Jan 2020 00:00:00 GMT\"}",
            "{\"retry_after\": 18446744073709551615}",
            "{\"retry_after\": 2592001}",
            "{\"until\": \"Fri, 01 Jan 2100 00:00:00 GMT\"}",
        ] {
            let reply = send(&c, call(addr, Method::PUT, Some(TOKEN), bad))
                .await
                .unwrap();
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(
                reply.header("content-type"),
                Some("application/problem+json")
            );
            let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(json["status"], 400);
            assert!(!switch.is_enabled(), "{bad}");
        }

        // Enable.
        let reply = send(
            &c,
            call(
                addr,
                Method::PUT,
                Some(TOKEN),
                r#"{"retry_after": 120, "message": "Upgrading."}"#,
            ),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(json["enabled"], true);
        assert_eq!(json["source"], "manual");
        assert_eq!(json["retry_after"], 120);
        assert_eq!(json["message"], "Upgrading.");
        let reply = get_path(&c, addr, "/").await;
        assert_maintenance_503(&reply);
        assert_eq!(reply.header("retry-after"), Some("120"));

        // While on: bad requests still change nothing.
        let on = snapshot();
        let reply = send(&c, call(addr, Method::PUT, Some(TOKEN), "{not json"))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let reply = send(&c, call(addr, Method::DELETE, Some("wrong"), ""))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(snapshot(), on);

        // Status, then disable.
        let reply = send(&c, call(addr, Method::GET, Some(TOKEN), ""))
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(json["enabled"], true);
        let reply = send(&c, call(addr, Method::DELETE, Some(TOKEN), ""))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(json["enabled"], false);
        assert_eq!(get_path(&c, addr, "/").await.status, StatusCode::OK);

        // `until` as an HTTP-date (within 30 days); an empty body is `{}`.
        let until = httpdate::fmt_http_date(
            std::time::SystemTime::now() + Duration::from_secs(7 * 24 * 3600),
        );
        let body = format!(r#"{{"until": "{until}"}}"#);
        let reply = send(&c, call(addr, Method::PUT, Some(TOKEN), &body))
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(json["until"], until.as_str());
        let reply = send(&c, call(addr, Method::PUT, Some(TOKEN), ""))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(snapshot().notice, Some(MaintenanceNotice::new()));
    }

    /// The admin router and a sentinel file are two sources: maintenance is on while either says
    /// so, each with its own notice, and turning one off leaves the other on.
    #[tokio::test]
    async fn admin_router_and_sentinel_file_are_separate_sources() {
        let path = TempPath::new("sources");
        let switch = MaintenanceSwitch::new();
        let app = hello().layer(exact_layer(&switch)).nest(
            "/admin/maintenance",
            admin::router(switch.clone(), TOKEN).unwrap(),
        );
        let addr = common::serve_axum(app).await;
        let mut file = SentinelFile::new(&path.0, switch.clone());
        let c = client();
        let admin = |method: Method, body: &str| {
            let req = call(addr, method, Some(TOKEN), body);
            let c = c.clone();
            async move {
                let reply = send(&c, req).await.unwrap();
                assert_eq!(reply.status, StatusCode::OK);
                serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap()
            }
        };
        let app_reply = || get_path(&c, addr, "/");

        // File on, admin off: still on, with the file's notice.
        std::fs::write(&path.0, "300\nFrom the file.\n").unwrap();
        assert!(matches!(file.check().await, FileState::Present(_)));
        let json = admin(Method::DELETE, "").await;
        assert_eq!(json["enabled"], true, "{json}");
        assert_eq!(json["sources"], serde_json::json!(["file"]));
        assert_eq!(json["source"], "file");
        let reply = app_reply().await;
        assert_maintenance_503(&reply);
        assert_eq!(reply.header("retry-after"), Some("300"));
        assert!(reply.text().contains("From the file."));

        // Admin on too, with a longer wait: its notice is in force.
        let json = admin(
            Method::PUT,
            r#"{"retry_after": 900, "message": "From the admin."}"#,
        )
        .await;
        assert_eq!(json["sources"], serde_json::json!(["manual", "file"]));
        assert_eq!(json["source"], "manual");
        assert_eq!(json["retry_after"], 900);
        let reply = app_reply().await;
        assert_eq!(reply.header("retry-after"), Some("900"));
        assert!(reply.text().contains("From the admin."));

        // File removed: the admin's maintenance goes on.
        std::fs::remove_file(&path.0).unwrap();
        assert_eq!(file.check().await, FileState::Absent);
        assert!(switch.is_enabled());
        let json = admin(Method::GET, "").await;
        assert_eq!(json["enabled"], true);
        assert_eq!(json["sources"], serde_json::json!(["manual"]));
        assert_maintenance_503(&app_reply().await);

        // Both off: off.
        let json = admin(Method::DELETE, "").await;
        assert_eq!(json["enabled"], false);
        assert_eq!(json["sources"], serde_json::json!([]));
        assert_eq!(json["source"], serde_json::Value::Null);
        assert_eq!(app_reply().await.status, StatusCode::OK);
    }

    /// The token is checked before the body is read: a caller without it cannot make the server
    /// read (or wait for) a body. The request below announces a megabyte and sends none of it; a
    /// router that read the body first would never answer.
    #[tokio::test]
    async fn the_token_is_checked_before_the_body_is_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let switch = MaintenanceSwitch::new();
        let app = Router::new().nest(
            "/admin/maintenance",
            admin::router(switch.clone(), TOKEN).unwrap(),
        );
        let addr = common::serve_axum(app).await;

        for auth in ["", "Authorization: Bearer wrong\r\n"] {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "PUT /admin/maintenance HTTP/1.1\r\nHost: {addr}\r\n{auth}\
                 Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{{"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let mut answer = vec![0; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
                .await
                .expect("answered without waiting for the body")
                .unwrap();
            let answer = String::from_utf8_lossy(&answer[..n]);
            assert!(answer.starts_with("HTTP/1.1 401"), "{auth:?}: {answer}");
        }
        assert!(!switch.is_enabled());
    }

    /// With the token, a body announced over the limit is refused before it is read, and a body
    /// that takes too long (silent, or trickling in) is given up after 5 s.
    #[tokio::test]
    async fn huge_or_slow_bodies_are_refused_without_waiting_for_them() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let switch = MaintenanceSwitch::new();
        let app = Router::new().nest(
            "/admin/maintenance",
            admin::router(switch.clone(), TOKEN).unwrap(),
        );
        let addr = common::serve_axum(app).await;
        let head = |length: &str| {
            format!(
                "PUT /admin/maintenance HTTP/1.1\r\nHost: {addr}\r\n\
                 Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n{length}\r\n"
            )
        };
        /// Reads the first answer's head, for at most `within`.
        async fn answer(stream: &mut tokio::net::TcpStream, within: Duration) -> String {
            let mut buf = vec![0; 1024];
            let n = tokio::time::timeout(within, stream.read(&mut buf))
                .await
                .expect("answered in time")
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }

        // 100 MB announced, one byte sent: 413 at once.
        let huge = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = head("Content-Length: 100000000\r\n") + "{";
            stream.write_all(req.as_bytes()).await.unwrap();
            let answer = answer(&mut stream, Duration::from_secs(2)).await;
            assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
            assert!(answer.contains("application/problem+json"), "{answer}");
            assert!(answer.contains("no-store"), "{answer}");
        };
        // 100 bytes announced, one sent, then silence: 408 after 5 s.
        let silent = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let started = std::time::Instant::now();
            let req = head("Content-Length: 100\r\n") + "{";
            stream.write_all(req.as_bytes()).await.unwrap();
            let answer = answer(&mut stream, Duration::from_secs(8)).await;
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert!(started.elapsed() >= Duration::from_millis(4500));
        };
        // A chunked body trickling in, a byte every 200 ms: given up after 5 s in all, though
        // it never stays silent for long.
        let trickle = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = head("Transfer-Encoding: chunked\r\n");
            stream.write_all(req.as_bytes()).await.unwrap();
            let started = std::time::Instant::now();
            let mut buf = vec![0; 1024];
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => {
                        let answer = String::from_utf8_lossy(&buf[..read.unwrap()]).into_owned();
                        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
                        break;
                    }
                    () = tokio::time::sleep(Duration::from_millis(200)) => {
                        assert!(started.elapsed() < Duration::from_secs(8), "no answer");
                        // Ignore a failed write: the server may close once it has answered.
                        let _ = stream.write_all(b"1\r\n \r\n").await;
                    }
                }
            }
        };
        tokio::join!(huge, silent, trickle);
        assert!(!switch.is_enabled());
    }

    #[tokio::test]
    async fn bodies_are_limited_and_errors_are_problem_json() {
        let switch = MaintenanceSwitch::new();
        let app = Router::new().nest(
            "/admin/maintenance",
            // A token read from a file, newline and all.
            admin::router(switch.clone(), format!("  {TOKEN}\n")).unwrap(),
        );
        let addr = common::serve_axum(app).await;
        let c = client();

        let reply = send(&c, call(addr, Method::GET, Some(TOKEN), ""))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "the trimmed token matches");

        // Valid JSON, but over the 16 KiB limit: 413, nothing changes.
        let big: &'static str = format!(r#"{{"message": "{}"}}"#, "x".repeat(20 * 1024)).leak();
        let reply = send(&c, call(addr, Method::PUT, Some(TOKEN), big))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!switch.is_enabled());
        // Just under it is fine.
        let fits: &'static str =
            format!(r#"{{"message": "{}"}}"#, "x".repeat(16 * 1024 - 20)).leak();
        let reply = send(&c, call(addr, Method::PUT, Some(TOKEN), fits))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert!(switch.is_enabled());

        // Every error is problem+json, never cached.
        let unauthorized = send(&c, call(addr, Method::GET, None, "")).await.unwrap();
        for (reply, status) in [
            (reply_of(&c, addr, big).await, 413),
            (unauthorized, 401),
            (reply_of(&c, addr, "{").await, 400),
        ] {
            assert_eq!(reply.status.as_u16(), status);
            assert_eq!(
                reply.header("content-type"),
                Some("application/problem+json")
            );
            assert_eq!(reply.header("cache-control"), Some("no-store"));
            let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(json["status"], status);
            assert_eq!(json["type"], "about:blank");
            assert!(json["title"].is_string() && json["detail"].is_string());
        }
    }

    /// Every answer of the admin router is `no-store`, the router's own 404 and 405 included,
    /// and every error is problem+json.
    #[tokio::test]
    async fn every_admin_answer_is_no_store() {
        let switch = MaintenanceSwitch::new();
        let app = hello().nest(
            "/admin/maintenance",
            admin::router(switch.clone(), TOKEN).unwrap(),
        );
        let addr = common::serve_axum(app).await;
        let c = client();
        let at = |method: Method, path: &str, token: Option<&str>| {
            let mut req = Request::builder()
                .method(method)
                .uri(format!("http://{addr}/admin/maintenance{path}"));
            if let Some(token) = token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            req.body(Full::default()).unwrap()
        };

        for (req, status) in [
            (at(Method::GET, "", Some(TOKEN)), 200),
            (at(Method::GET, "", None), 401),
            (at(Method::POST, "", Some(TOKEN)), 405),
            (at(Method::PATCH, "", Some(TOKEN)), 405),
            (at(Method::GET, "/nope", Some(TOKEN)), 404),
            (at(Method::DELETE, "/x/y", None), 404),
        ] {
            let what = format!("{} {}", req.method(), req.uri());
            let reply = send(&c, req).await.unwrap();
            assert_eq!(reply.status.as_u16(), status, "{what}");
            assert_eq!(reply.header("cache-control"), Some("no-store"), "{what}");
            if status != 200 {
                assert_eq!(
                    reply.header("content-type"),
                    Some("application/problem+json"),
                    "{what}"
                );
                let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
                assert_eq!(json["status"], status, "{what}");
            }
            if status == 405 {
                assert_eq!(reply.header("allow"), Some("GET,HEAD,PUT,DELETE"), "{what}");
            }
        }
        // The application's own 404 outside the router is left alone.
        let reply = get_path(&c, addr, "/elsewhere").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.header("cache-control"), None);
        assert!(!switch.is_enabled());
    }

    async fn reply_of(c: &TestClient, addr: SocketAddr, body: &'static str) -> Reply {
        send(c, call(addr, Method::PUT, Some(TOKEN), body))
            .await
            .unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Windows in a run, an injected clock, a bypass path that would pass everything.

fn ok_service(
) -> impl tower::Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>
       + Clone {
    service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
    })
}

async fn call(
    svc: &(impl tower::Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>
          + Clone),
    req: Request<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    svc.clone().oneshot(req).await.unwrap()
}

/// Two scheduled windows back to back (or overlapping) are one maintenance: while the first is
/// open, clients are told to come back when the second ends, not into the second.
#[tokio::test]
async fn back_to_back_windows_announce_the_end_of_the_last() {
    let t0 = date("Sun, 06 Nov 2033 08:00:00 GMT");
    let s = Duration::from_secs;
    let clock = ManualClock::new(t0);
    let switch = MaintenanceSwitch::with_clock(clock.clone());
    switch.schedule(Window::new(t0, t0 + s(100)).unwrap());
    switch.schedule(Window::new(t0 + s(100), t0 + s(200)).unwrap());
    // Overlapping the second, and a window after a gap that is not part of the run.
    switch.schedule(Window::new(t0 + s(150), t0 + s(250)).unwrap());
    switch.schedule(Window::new(t0 + s(300), t0 + s(400)).unwrap());
    let svc = exact_layer(&switch).layer(ok_service());
    let get = || Request::get("/").body(Full::default()).unwrap();

    let res = call(&svc, get()).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()[header::RETRY_AFTER], "250");
    assert_eq!(switch.status().ends_at, Some(t0 + s(250)));
    clock.set(t0 + s(120));
    assert_eq!(
        call(&svc, get()).await.headers()[header::RETRY_AFTER],
        "130"
    );
    // The gap: open.
    clock.set(t0 + s(250));
    assert_eq!(call(&svc, get()).await.status(), StatusCode::OK);
    clock.set(t0 + s(300));
    assert_eq!(
        call(&svc, get()).await.headers()[header::RETRY_AFTER],
        "100"
    );
}

/// With an injected wall clock and HTTP-date `Retry-After`, the body's "retry after" and the
/// HTML page's self-refresh count from the switch's clock, as the header does (a clock behind
/// the system's must not make the page reload itself at once).
#[tokio::test]
async fn the_body_agrees_with_the_header_on_an_injected_clock() {
    let t0 = date("Tue, 06 Nov 2001 08:00:00 GMT");
    let switch = MaintenanceSwitch::with_clock(ManualClock::new(t0));
    switch.enable_with(MaintenanceNotice::new().until(t0 + Duration::from_secs(300)));
    let dated = exact().to_builder().http_date(true).build().unwrap();
    let svc = MaintenanceLayer::new(switch.clone())
        .refusal(dated)
        .layer(ok_service());
    let get = |accept: &str| {
        Request::get("/")
            .header(header::ACCEPT, accept)
            .body(Full::default())
            .unwrap()
    };
    let body = |res: Response<Full<Bytes>>| async {
        http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes()
    };

    let res = call(&svc, get("text/html")).await;
    assert_eq!(
        res.headers()[header::RETRY_AFTER],
        "Tue, 06 Nov 2001 08:05:00 GMT"
    );
    let page = body(res).await;
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("content=\"300\""), "{page}");

    let res = call(&svc, get("application/problem+json")).await;
    let json: serde_json::Value = serde_json::from_slice(&body(res).await).unwrap();
    assert_eq!(json["retry_after"], 300);
}

/// A bypass prefix that would let every path through (empty, say from an unset environment
/// variable; `/`; `/x/..`) adds no rule, as an empty bypass secret does: maintenance still
/// answers 503.
#[tokio::test]
async fn a_bypass_path_that_would_pass_everything_adds_no_rule() {
    let switch = MaintenanceSwitch::new();
    switch.enable();
    let health_path = String::new(); // std::env::var("HEALTH_PATH").unwrap_or_default()
    let svc = exact_layer(&switch)
        .bypass_path(health_path)
        .bypass_path("/")
        .bypass_path("/healthz/..")
        .bypass_path("/healthz")
        .layer(ok_service());
    let get = |path: &str| Request::get(path).body(Full::default()).unwrap();
    for path in ["/", "/checkout", "/healthzz"] {
        let res = call(&svc, get(path)).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
    }
    assert_eq!(
        call(&svc, get("/healthz/live")).await.status(),
        StatusCode::OK
    );
}
