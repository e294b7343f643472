//! The pages a person sees, in a real browser: Debian's Chromium (headless) loads the 500 of a
//! panic, the 503 of an open circuit breaker and the maintenance 503 from a real server on
//! 127.0.0.1, and the test checks what it rendered, that it made no request anywhere else, and
//! that only the maintenance page reloads itself once its `Retry-After` has passed.
//!
//! Needs `/usr/bin/chromium` (`apt-get install -y chromium`); without it the test fails.
//! With `TOWER_5XX_SCREENSHOTS=docs` the screenshots are written to that directory (relative to
//! the crate root) instead of a temporary one: `scripts/screenshots.sh` does that.
#![cfg(all(unix, feature = "catch", feature = "maintenance", feature = "breaker"))]

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use axum::{
    extract::Request,
    middleware::{self, Next},
    response::{Html, Response},
    routing::get,
    Router,
};
use common::{quiet_panics, serve_axum, EXPECTED_PANIC};
use http::{HeaderMap, StatusCode};
use tokio::{
    io::AsyncReadExt,
    net::TcpListener,
    process::{Child, Command},
};
use tower::{service_fn, Layer};
use tower_5xx::{
    breaker::{BreakerLayer, CircuitBreaker},
    catch::CatchLayer,
    maintenance::{MaintenanceLayer, MaintenanceNotice, MaintenanceSwitch},
    refuse::RefusalPolicy,
    ErrorResponse, Reason, RetryAfter,
};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Hosts Chromium itself talks to whatever page it shows, and that no flag turns off: sign-in's
/// `ListAccounts` (accounts.google.com), the updater (update.googleapis.com), network time
/// (clients2.google.com), and more with each release (Debian's Chromium 148 adds
/// www.google.com and android.clients.google.com, seen for a `data:` page with no link at all
/// through a logging proxy): Google's service domains, as patterns. They bypass the counting
/// proxy and resolve to nothing, so they neither leave the machine nor count as requests of
/// our pages (which link to no host at all; the canary test shows any other host is counted).
const BROWSER_OWN_HOSTS: [&str; 4] = [
    "*.google.com",
    "*.googleapis.com",
    "*.gstatic.com",
    "*.gvt1.com",
];

const MAINTENANCE_MESSAGE: &str = "We are upgrading the database.";

/// A request the server answered.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    status: u16,
    error_id: Option<String>,
    at: Instant,
}

#[derive(Debug, Clone, Default)]
struct Hits(Arc<Mutex<Vec<Hit>>>);

impl Hits {
    fn all(&self) -> Vec<Hit> {
        self.0.lock().unwrap().clone()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn to(&self, path: &str) -> Vec<Hit> {
        self.all().into_iter().filter(|h| h.path == path).collect()
    }
    /// The paths requested since the `from`-th request.
    fn paths_since(&self, from: usize) -> Vec<String> {
        self.all()[from..].iter().map(|h| h.path.clone()).collect()
    }
}

/// A policy without jitter, so that the pages show exact delays.
fn exact() -> RefusalPolicy {
    RefusalPolicy::builder()
        .retry_after_jitter(Duration::ZERO)
        .build()
        .unwrap()
}

/// The app: one route per page, each behind the layer that generates it, and a canary page that
/// does reference another host (to show that the counting proxy would see it).
fn app(hits: Hits) -> Router {
    let breaker = |open: Duration| {
        let breaker = CircuitBreaker::builder()
            .open_duration(open)
            .build()
            .unwrap();
        breaker.force_open();
        BreakerLayer::new(breaker).refusal(exact())
    };
    let maintenance = |retry_after: Duration, message: &str| {
        let switch = MaintenanceSwitch::new();
        switch.enable_with(
            MaintenanceNotice::new()
                .retry_after(retry_after)
                .message(message),
        );
        MaintenanceLayer::new(switch).refusal(exact())
    };
    let ok = || {
        service_fn(|_req: Request| async {
            Ok::<_, std::convert::Infallible>(Response::new(axum::body::Body::from("ok")))
        })
    };

    Router::new()
        .route("/panic", get(panics))
        .route_layer(CatchLayer::new())
        .route_service("/busy", breaker(Duration::from_secs(30)).layer(ok()))
        .route_service("/busy-short", breaker(Duration::from_secs(1)).layer(ok()))
        .route_service(
            "/maintenance",
            maintenance(Duration::from_secs(900), MAINTENANCE_MESSAGE).layer(ok()),
        )
        .route_service(
            "/maintenance-short",
            maintenance(Duration::from_secs(1), "Back in a moment.").layer(ok()),
        )
        .route(
            "/overran",
            get(|headers: HeaderMap| async move {
                // A maintenance page of the application's own, made with `ErrorResponse`, whose
                // announced end has passed: the maintenance overran.
                let end = SystemTime::now() - Duration::from_secs(3600);
                ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::Maintenance)
                    .retry_after(RetryAfter::at(end))
                    .negotiate(&headers, true)
                    .into_response::<axum::body::Body>()
            }),
        )
        .route(
            "/canary",
            get(|| async {
                Html("<!DOCTYPE html><p>canary</p><img src=\"http://external.example/pixel.png\">")
            }),
        )
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let hits = hits.clone();
            async move {
                let path = req.uri().path().to_owned();
                let res = next.run(req).await;
                hits.0.lock().unwrap().push(Hit {
                    path,
                    status: res.status().as_u16(),
                    error_id: res
                        .headers()
                        .get("x-error-id")
                        .map(|v| v.to_str().unwrap().to_owned()),
                    at: Instant::now(),
                });
                res
            }
        }))
}

async fn panics() -> &'static str {
    panic!("{EXPECTED_PANIC} secret internal detail")
}

/// A TCP listener that stands in for an HTTP proxy: it counts the connections and keeps the
/// first line of each (`CONNECT host:443 ...` or `GET http://host/...`), and answers nothing.
#[derive(Debug, Clone)]
struct CountingProxy {
    port: u16,
    connections: Arc<AtomicUsize>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl CountingProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = CountingProxy {
            port: listener.local_addr().unwrap().port(),
            connections: Arc::default(),
            lines: Arc::default(),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                p.connections.fetch_add(1, Ordering::SeqCst);
                let lines = p.lines.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 512];
                    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
                        .await
                        .map_or(0, |r| r.unwrap_or(0));
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let first = text.lines().next().unwrap_or("(nothing read)").to_owned();
                    lines.lock().unwrap().push(first);
                });
            }
        });
        proxy
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// Runs Chromium headless, each run with a fresh profile, every request but loopback sent to
/// the counting proxy.
struct Browser {
    dir: PathBuf,
    runs: AtomicUsize,
    proxy: CountingProxy,
}

impl Browser {
    fn new(proxy: CountingProxy) -> Self {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: this test drives Debian's Chromium; install it with \
             `apt-get install -y chromium`"
        );
        // One directory per browser: the tests of this file run at once.
        static BROWSERS: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tower-5xx-pages-{}-{}",
            std::process::id(),
            BROWSERS.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Browser {
            dir,
            runs: AtomicUsize::new(0),
            proxy,
        }
    }

    /// A Chromium command with the common flags and a fresh profile. It gets its own process
    /// group, so that [`stop`] ends the browser and all its helper processes.
    fn command(&self, args: &[String]) -> Command {
        let run = self.runs.fetch_add(1, Ordering::SeqCst);
        let profile = self.dir.join(format!("profile-{run}"));
        let resolver_rules = BROWSER_OWN_HOSTS
            .iter()
            .map(|h| format!("MAP {h} ~NOTFOUND"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Chromium never sends loopback through a proxy: our server is reached directly, any
        // other host through the counting proxy, which answers nothing.
        .arg(format!(
            "--proxy-server=http://127.0.0.1:{}",
            self.proxy.port
        ))
        .arg(format!(
            "--proxy-bypass-list={}",
            BROWSER_OWN_HOSTS.join(";")
        ))
        .arg(format!("--host-resolver-rules={resolver_rules}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
        cmd
    }

    /// Runs Chromium to completion (`--dump-dom`, `--screenshot`); returns its stdout.
    async fn run(&self, args: &[String]) -> String {
        let child = self.command(args).spawn().expect("start chromium");
        let pid = child.id();
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await;
        if let Some(pid) = pid {
            // The browser is gone; end any helper left in its group.
            signal_group(pid, "KILL").await;
        }
        let out = out.unwrap_or_else(|_| panic!("chromium {args:?} did not finish in 30 s"));
        let out = out.expect("chromium ran");
        assert!(
            out.status.success(),
            "chromium {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 DOM")
    }

    async fn dump_dom(&self, url: &str) -> String {
        self.run(&["--dump-dom".to_owned(), url.to_owned()]).await
    }

    async fn screenshot(&self, url: &str, png: &Path) {
        let _ = std::fs::remove_file(png);
        self.run(&[
            format!("--screenshot={}", png.display()),
            "--window-size=1000,700".to_owned(),
            url.to_owned(),
        ])
        .await;
    }

    /// Starts Chromium showing `url` and leaves it open (stop it with [`stop`]).
    fn open(&self, url: &str) -> Child {
        self.command(&[url.to_owned()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `SIGTERM`, or `SIGKILL`, to the process group `pgid` (a browser this test started).
async fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), "--".to_owned(), format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .await;
}

/// Ends a browser started with [`Browser::open`]: `SIGTERM` to its group, `SIGKILL` if it is
/// still there after 10 s.
async fn stop(mut child: Child) {
    let Some(pid) = child.id() else { return };
    signal_group(pid, "TERM").await;
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        signal_group(pid, "KILL").await;
        let _ = child.wait().await;
    }
    signal_group(pid, "KILL").await;
}

/// Waits until `done` holds, polling, for at most `limit`.
async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The text of the DOM without its tags, whitespace collapsed.
fn visible_text(dom: &str) -> String {
    let body = dom.split_once("<body").map_or(dom, |(_, b)| b);
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The width and height in a PNG's header.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&png[16..20]), be(&png[20..24]))
}

/// One page: where it is, what it must say, where its screenshot goes.
struct Page {
    path: &'static str,
    status: u16,
    says: &'static [&'static str],
    screenshot: &'static str,
}

const PAGES: [Page; 3] = [
    Page {
        path: "/panic",
        status: 500,
        says: &[
            "500",
            "Internal Server Error",
            "The server encountered an unexpected error.",
        ],
        screenshot: "page-500.png",
    },
    Page {
        path: "/busy",
        status: 503,
        says: &[
            "503",
            "Service Unavailable",
            "A service this request depends on is unavailable.",
            "Please try again in 30 seconds.",
        ],
        screenshot: "page-503.png",
    },
    Page {
        path: "/maintenance",
        status: 503,
        says: &[
            "503",
            "Service Unavailable",
            MAINTENANCE_MESSAGE,
            "Please try again in about 15 minutes (900 seconds).",
            "This page reloads itself then.",
        ],
        screenshot: "page-maintenance.png",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_in_chromium_without_external_requests() {
    quiet_panics();
    let started = Instant::now();
    let hits = Hits::default();
    let addr = serve_axum(app(hits.clone())).await;
    let proxy = CountingProxy::start().await;
    let browser = Browser::new(proxy.clone());
    let shots = match std::env::var_os("TOWER_5XX_SCREENSHOTS") {
        Some(dir) => Path::new(env!("CARGO_MANIFEST_DIR")).join(dir),
        None => browser.dir.join("screenshots"),
    };
    std::fs::create_dir_all(&shots).unwrap();

    for page in &PAGES {
        let url = format!("http://{addr}{}", page.path);

        // The DOM Chromium built: not blank, says what happened and when to come back.
        let before = hits.len();
        let dom = browser.dump_dom(&url).await;
        let text = visible_text(&dom);
        for says in page.says {
            assert!(text.contains(says), "{url}: {says:?} not shown in {text:?}");
        }
        assert!(
            !text.contains("secret"),
            "{url}: the panic leaked: {text:?}"
        );
        // The id on the page is the one the server sent (and logged).
        let served = hits.to(page.path);
        let served = served.last().expect("the server saw the page");
        assert_eq!(served.status, page.status);
        let id = served.error_id.clone().expect("x-error-id");
        assert!(
            text.contains(&format!("Error id: {id}")),
            "{url}: error id {id} not shown in {text:?}"
        );
        // The page, once (no reload), and perhaps the favicon of the same origin: nothing else.
        let mut requested = hits.paths_since(before);
        requested.retain(|p| p != "/favicon.ico");
        assert_eq!(requested, [page.path], "{url}");

        // What a person sees.
        let before = hits.len();
        let png_path = shots.join(page.screenshot);
        browser.screenshot(&url, &png_path).await;
        let png = std::fs::read(&png_path).expect("chromium wrote the screenshot");
        assert_eq!(png_size(&png), (1000, 700), "{}", png_path.display());
        // A blank page is about 3.6 kB, one line of text 6.3 kB; these pages are 20 to 40.
        assert!(
            png.len() > 10_000,
            "{}: {} bytes, a blank page?",
            png_path.display(),
            png.len()
        );
        let mut requested = hits.paths_since(before);
        requested.retain(|p| p != "/favicon.ico");
        assert_eq!(requested, [page.path], "{url}");
    }

    // No page made a request anywhere but our server.
    assert_eq!(
        proxy.connections(),
        0,
        "the pages made external requests: {:?} (if one is Chromium's own, not caused by the \
         page, add its host to BROWSER_OWN_HOSTS)",
        proxy.lines()
    );

    // The maintenance page reloads itself once Retry-After (1 s here) has passed; the breaker's
    // page, with the same Retry-After, does not. Both are open at the same time.
    let maintenance = browser.open(&format!("http://{addr}/maintenance-short"));
    let busy = browser.open(&format!("http://{addr}/busy-short"));
    wait_for("both pages to load", Duration::from_secs(15), || {
        !hits.to("/maintenance-short").is_empty() && !hits.to("/busy-short").is_empty()
    })
    .await;
    let busy_loaded = hits.to("/busy-short")[0].at;
    // Three reloads of the maintenance page after the breaker's page loaded: more than two
    // seconds in which the breaker's page would have reloaded too.
    wait_for(
        "the maintenance page to reload itself",
        Duration::from_secs(20),
        || {
            hits.to("/maintenance-short")
                .iter()
                .filter(|h| h.at > busy_loaded)
                .count()
                >= 3
        },
    )
    .await;
    stop(maintenance).await;
    stop(busy).await;
    let reloads = hits.to("/maintenance-short");
    assert!(reloads.len() >= 2);
    for pair in reloads.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(900),
            "reloaded after {gap:?}, before its Retry-After of 1 s"
        );
        assert_eq!(pair[1].status, 503);
    }
    assert_eq!(
        hits.to("/busy-short").len(),
        1,
        "the breaker's 503 page reloaded itself"
    );
    assert_eq!(
        proxy.connections(),
        0,
        "the pages made external requests: {:?} (if one is Chromium's own, not caused by the \
         page, add its host to BROWSER_OWN_HOSTS)",
        proxy.lines()
    );

    // The check above can fail: a page that does reference another host is seen by the proxy.
    browser.dump_dom(&format!("http://{addr}/canary")).await;
    wait_for(
        "the canary's request at the counting proxy",
        Duration::from_secs(10),
        || proxy.lines().iter().any(|l| l.contains("external.example")),
    )
    .await;

    eprintln!(
        "pages: {} requests served, screenshots in {}, {:?}",
        hits.len(),
        shots.display(),
        started.elapsed()
    );
}

/// A maintenance page whose `Retry-After` is a date already past (an application's own page,
/// made with `ErrorResponse`, announcing an end the maintenance overran) reloads itself after a
/// second, as the shortest `Retry-After` the crate sends: not at once, in a loop that would
/// hammer the server under maintenance from every open tab.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_retry_after_date_has_passed_does_not_reload_in_a_loop() {
    let hits = Hits::default();
    let addr = serve_axum(app(hits.clone())).await;
    let browser = Browser::new(CountingProxy::start().await);
    let page = browser.open(&format!("http://{addr}/overran"));
    wait_for(
        "the page to load and reload itself twice",
        Duration::from_secs(20),
        || hits.to("/overran").len() >= 3,
    )
    .await;
    stop(page).await;
    let reloads = hits.to("/overran");
    for pair in reloads.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(900),
            "reloaded after {gap:?} ({} loads in all)",
            reloads.len()
        );
        assert_eq!(pair[1].status, 503);
    }
}
