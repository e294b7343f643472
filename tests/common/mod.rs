//! Shared helpers for the integration tests: real servers on 127.0.0.1 (port 0) and real hyper
//! clients. Each test file uses a subset.
#![allow(dead_code, unreachable_pub)]

pub mod redis;

use std::{
    convert::Infallible,
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves an axum app on 127.0.0.1:0 (HTTP/1.1 and h2c), with `ConnectInfo<SocketAddr>`.
pub async fn serve_axum(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Serves a tower service with plain hyper (hyper-util's auto builder: HTTP/1.1 and h2c) on
/// 127.0.0.1:0. A fresh clone of `svc` serves each connection.
pub async fn serve_hyper<S, B>(svc: S) -> SocketAddr
where
    S: tower::Service<Request<hyper::body::Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 hyper client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 (prior knowledge, h2c) hyper client.
pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// Sends `req` and reads the whole response.
pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Result<Reply, BoxError> {
    let res = client.request(req).await?;
    let (parts, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `GET http://{addr}{path}` with an optional `Accept`.
pub async fn get(client: &TestClient, addr: SocketAddr, path: &str) -> Reply {
    send(client, request(addr, path, None)).await.unwrap()
}

/// A `GET` request to the server, with an optional `Accept`.
pub fn request(addr: SocketAddr, path: &str, accept: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::get(format!("http://{addr}{path}"));
    if let Some(accept) = accept {
        builder = builder.header(http::header::ACCEPT, accept);
    }
    builder.body(Full::default()).unwrap()
}

/// Log lines captured from `tracing` by a global subscriber (installed once per test binary).
#[derive(Clone)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The captured lines that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.contents()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once) a global `tracing` subscriber that records every event, and returns it.
pub fn logs() -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || LogWriter(writer.clone()))
            .init();
        Logs(buf)
    })
    .clone()
}

/// Put this in the message of a panic a test causes on purpose.
pub const EXPECTED_PANIC: &str = "[expected panic]";

/// Silences the default panic message for panics whose message contains [`EXPECTED_PANIC`], so
/// tests that panic on purpose a thousand times do not flood the output. Other panics print.
pub fn quiet_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !msg.contains(EXPECTED_PANIC) {
                default(info);
            }
        }));
    });
}

/// A FIFO in the temp dir (made with `mkfifo`) that nobody writes to: opening it for reading
/// blocks, as on a hung network volume. Dropping it releases any reader blocked in `open` and
/// removes the FIFO.
#[cfg(unix)]
pub struct Fifo(pub std::path::PathBuf);

#[cfg(unix)]
impl Fifo {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "tower-5xx-fifo-{name}-{}-{nanos}",
            std::process::id()
        ));
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo runs");
        assert!(made.success(), "mkfifo {}", path.display());
        Self(path)
    }

    /// Lets the reader go on, with `content` to read before end-of-file: a thread opens the
    /// FIFO for writing (which waits for the reader to open its end, whenever it gets there),
    /// writes and closes it.
    pub fn write(&self, content: &str) {
        let (path, content) = (self.0.clone(), content.to_owned());
        std::thread::spawn(move || {
            use std::io::Write as _;
            if let Ok(mut pipe) = std::fs::OpenOptions::new().write(true).open(path) {
                let _ = pipe.write_all(content.as_bytes());
            }
        });
    }
}

#[cfg(unix)]
impl Drop for Fifo {
    fn drop(&mut self) {
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sends `GET {path}` as raw HTTP/1.1 on a new connection and reads until the server closes
/// it: every byte the client received. Panics if the server keeps the connection open for
/// 5 s (a complete response on a keep-alive connection: use it for cut responses only).
pub async fn raw_http1_get_until_closed(addr: SocketAddr, path: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut received),
    )
    .await
    .expect("the server kept the connection open")
    .expect("read failed");
    received
}

/// Builds the demo with this test's features and returns its path.
pub fn demo_binary() -> std::path::PathBuf {
    let features: Vec<&str> = [
        ("catch", cfg!(feature = "catch")),
        ("maintenance", cfg!(feature = "maintenance")),
        ("shed", cfg!(feature = "shed")),
        ("breaker", cfg!(feature = "breaker")),
        ("retry", cfg!(feature = "retry")),
        ("lifecycle", cfg!(feature = "lifecycle")),
        ("lifecycle-serve", cfg!(feature = "lifecycle-serve")),
        ("rate-limit", cfg!(feature = "rate-limit")),
        ("redis", cfg!(feature = "redis")),
        ("hyper-util", cfg!(feature = "hyper-util")),
        ("axum", cfg!(feature = "axum")),
        ("reqwest", cfg!(feature = "reqwest")),
        ("reqwest-middleware", cfg!(feature = "reqwest-middleware")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--example",
            "demo",
            "--no-default-features",
        ])
        .args(["--features", &features.join(",")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build --example demo failed");
    // The test binary is target/<profile>/deps/<test>-<hash>; the example is beside deps.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("examples").join("demo");
    assert!(bin.exists(), "no demo binary at {}", bin.display());
    bin
}
