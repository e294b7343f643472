//! Upstream failures through a real reverse proxy: an axum app on 127.0.0.1 whose route calls
//! an upstream with hyper-util's legacy client or reqwest, behind `CatchLayer`. The built-in
//! rules answer 502 when the upstream refused the connection or cut it short, and 504 when it
//! did not answer in time.
#![cfg(all(feature = "catch", any(feature = "hyper-util", feature = "reqwest")))]

mod common;

use std::{net::SocketAddr, time::Duration};

use axum::{extract::Request, response::Response, Router};
use common::{client, get, Reply};
use http::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower::{service_fn, BoxError, Layer};
use tower_5xx::catch::{CatchLayer, Classify};

/// How long a proxy waits for an upstream that does not answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(300);

/// A loopback address nothing listens on: a connection to it is refused.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
    // Dropped here: the port is closed again.
}

/// An upstream that accepts connections, reads what comes, and never answers.
async fn silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0; 1024];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// Reads a request head from `stream`; whether it came whole.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    true
}

/// An upstream that reads the request head, sends the start of a response (`partial`) and
/// closes the connection.
async fn cutting_upstream(partial: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                if read_head(&mut stream).await {
                    let _ = stream.write_all(partial).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    addr
}

/// An upstream that reads the request head and resets the connection (RST, not FIN) before it
/// answers anything.
async fn resetting_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                if read_head(&mut stream).await {
                    stream.set_zero_linger().unwrap();
                    drop(stream); // RST
                }
            });
        }
    });
    addr
}

/// The start of a response head, cut before its end.
const CUT_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Le";
/// A whole response head, and 5 of the 100 bytes of body it announces.
const CUT_BODY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello";

/// A listener whose accept queue is full, so the kernel drops new SYNs and a connection to it
/// hangs until the client's connect timeout. The returned streams and listener keep it so.
#[cfg(target_os = "linux")]
async fn unanswered_syn() -> (SocketAddr, tokio::net::TcpListener, Vec<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(e)) => panic!("connect failed instead of hanging: {e}"),
            Err(_) => return (addr, listener, held),
        }
    }
    panic!("the accept queue never filled up");
}

/// Serves `route` (a proxy behind `CatchLayer`) at `/proxy` and asks it once.
async fn ask_proxy<S>(route: S) -> Reply
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let app = Router::new().route_service("/proxy", route);
    let addr = common::serve_axum(app).await;
    get(&client(), addr, "/proxy").await
}

/// Wraps a proxy handler in `catch` and turns the response into axum's.
fn behind<C, F, Fut>(
    catch: CatchLayer<C>,
    handler: F,
) -> impl tower::Service<
    Request,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static
where
    C: Classify + Send + Sync + 'static,
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response, BoxError>> + Send + 'static,
{
    use axum::response::IntoResponse;
    use tower::ServiceExt;
    catch
        .layer(service_fn(move |_req: Request| handler()))
        .map_response(IntoResponse::into_response)
}

/// What every generated answer carries, whatever its status.
fn assert_generated(reply: &Reply, status: StatusCode) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.header("cache-control"), Some("no-store"), "{reply:?}");
    let id = reply.header("x-error-id").expect("x-error-id header");
    assert!(reply.text().contains(id), "{reply:?}");
    // Nothing of the client's error reaches the proxy's client.
    for leak in [
        "client error",
        "onnect",
        "refused",
        "timed out",
        "127.0.0.1",
    ] {
        assert!(!reply.text().contains(leak), "leaks {leak:?}: {reply:?}");
    }
}

#[cfg(feature = "hyper-util")]
mod hyper_util_client {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::{
        client::legacy::{connect::HttpConnector, Client},
        rt::TokioExecutor,
    };
    use tower_5xx::catch::Classification;

    fn upstream_client(connect_timeout: Option<Duration>) -> Client<HttpConnector, Empty<Bytes>> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(connect_timeout);
        Client::builder(TokioExecutor::new()).build(connector)
    }

    /// A proxy handler: GET the upstream, buffer its answer, send it on.
    fn proxy(
        upstream: SocketAddr,
        client: Client<HttpConnector, Empty<Bytes>>,
    ) -> impl Fn() -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, BoxError>> + Send>,
    > + Clone
           + Send
           + Sync
           + 'static {
        move || {
            let client = client.clone();
            Box::pin(async move {
                let uri = format!("http://{upstream}/").parse::<http::Uri>()?;
                let res = client.get(uri).await?;
                let (parts, body) = res.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok(Response::from_parts(parts, axum::body::Body::from(body)))
            })
        }
    }

    #[tokio::test]
    async fn connection_refused_is_502() {
        let handler = proxy(closed_port(), upstream_client(None));
        let reply = ask_proxy(behind(CatchLayer::new(), handler)).await;
        assert_generated(&reply, StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn upstream_closing_mid_response_is_502() {
        let handler = proxy(cutting_upstream(CUT_HEAD).await, upstream_client(None));
        let reply = ask_proxy(behind(CatchLayer::new(), handler)).await;
        assert_generated(&reply, StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn upstream_closing_mid_body_is_502() {
        let handler = proxy(cutting_upstream(CUT_BODY).await, upstream_client(None));
        let reply = ask_proxy(behind(CatchLayer::new(), handler)).await;
        assert_generated(&reply, StatusCode::BAD_GATEWAY);
    }

    /// An upstream that reads the request head and resets the connection (RST, not FIN) before
    /// answering: it cut the exchange short as surely as a FIN does, so the proxy answers 502,
    /// as it does for the same upstream through reqwest (`is_request`). (hyper reports the read
    /// error as a plain I/O error, `ConnectionReset`, which the rule once missed: 500.)
    #[tokio::test]
    async fn an_upstream_resetting_the_connection_is_502() {
        let upstream = resetting_upstream().await;
        let handler = proxy(upstream, upstream_client(None));
        let reply = ask_proxy(behind(CatchLayer::new(), handler)).await;
        assert_generated(&reply, StatusCode::BAD_GATEWAY);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn connect_timeout_is_504() {
        let (addr, _listener, _held) = unanswered_syn().await;
        let handler = proxy(addr, upstream_client(Some(UPSTREAM_TIMEOUT)));
        let reply = ask_proxy(behind(CatchLayer::new(), handler)).await;
        assert_generated(&reply, StatusCode::GATEWAY_TIMEOUT);
    }

    /// The legacy client has no response timeout; the proxy puts one around the call. A timeout
    /// is 503 by default (the layer cannot tell whom it waited for); on a route that only waits
    /// for its upstream, one rule makes it 504.
    #[tokio::test]
    async fn upstream_that_never_answers_is_504_with_a_rule_for_the_timeout() {
        let upstream = silent_upstream().await;
        let handler = move || {
            let call = proxy(upstream, upstream_client(None))();
            async move { tokio::time::timeout(UPSTREAM_TIMEOUT, call).await? }
        };
        let catch = CatchLayer::new()
            .on_error::<tokio::time::error::Elapsed>(|_| Classification::gateway_timeout());
        let reply = ask_proxy(behind(catch, handler)).await;
        assert_generated(&reply, StatusCode::GATEWAY_TIMEOUT);

        let reply = ask_proxy(behind(CatchLayer::new(), handler)).await;
        assert_generated(&reply, StatusCode::SERVICE_UNAVAILABLE);
        // The default refusal policy: at least 1 s, plus up to 1 s of jitter.
        let retry_after = reply.header("retry-after");
        assert!(matches!(retry_after, Some("1" | "2")), "{retry_after:?}");
    }
}

#[cfg(feature = "reqwest")]
mod reqwest_client {
    use super::*;

    fn upstream_client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(UPSTREAM_TIMEOUT)
            .connect_timeout(UPSTREAM_TIMEOUT)
            .build()
            .unwrap()
    }

    /// A proxy handler: GET the upstream, buffer its answer, send it on.
    fn proxy(
        upstream: SocketAddr,
    ) -> impl Fn() -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, BoxError>> + Send>,
    > + Clone
           + Send
           + Sync
           + 'static {
        let client = upstream_client();
        move || {
            let client = client.clone();
            Box::pin(async move {
                let res = client.get(format!("http://{upstream}/")).send().await?;
                let status = res.status();
                let body = res.bytes().await?;
                let mut out = Response::new(axum::body::Body::from(body));
                *out.status_mut() = status;
                Ok(out)
            })
        }
    }

    #[tokio::test]
    async fn connection_refused_is_502() {
        let reply = ask_proxy(behind(CatchLayer::new(), proxy(closed_port()))).await;
        assert_generated(&reply, StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn upstream_that_never_answers_is_504() {
        let upstream = silent_upstream().await;
        let reply = ask_proxy(behind(CatchLayer::new(), proxy(upstream))).await;
        assert_generated(&reply, StatusCode::GATEWAY_TIMEOUT);
    }

    #[tokio::test]
    async fn upstream_closing_mid_response_is_502() {
        for partial in [CUT_HEAD, CUT_BODY] {
            let upstream = cutting_upstream(partial).await;
            let reply = ask_proxy(behind(CatchLayer::new(), proxy(upstream))).await;
            assert_generated(&reply, StatusCode::BAD_GATEWAY);
        }
    }

    /// The same reset through reqwest is 502 (reqwest's `is_request`).
    #[tokio::test]
    async fn an_upstream_resetting_the_connection_is_502() {
        let upstream = resetting_upstream().await;
        let reply = ask_proxy(behind(CatchLayer::new(), proxy(upstream))).await;
        assert_generated(&reply, StatusCode::BAD_GATEWAY);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn connect_timeout_is_504() {
        let (addr, _listener, _held) = unanswered_syn().await;
        let reply = ask_proxy(behind(CatchLayer::new(), proxy(addr))).await;
        assert_generated(&reply, StatusCode::GATEWAY_TIMEOUT);
    }
}
