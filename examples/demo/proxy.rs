//! A reverse proxy to an upstream that is down: `GET /proxy` answers 502 Bad Gateway.

use std::net::SocketAddr;

use axum::{body::Body, extract::Request, response::Response, Router};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tower::{service_fn, BoxError, ServiceBuilder};
use tower_5xx::catch::CatchLayer;

pub(crate) fn routes() -> Router {
    let upstream = closed_port();
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();

    // Forwards the request to the upstream with hyper-util's legacy client. The client's
    // "connection refused" error becomes a 502 (feature `hyper-util`), logged with its cause.
    let proxy = ServiceBuilder::new()
        .layer(CatchLayer::new())
        .service(service_fn(move |mut req: Request| {
            let client = client.clone();
            async move {
                *req.uri_mut() = format!("http://{upstream}/").parse()?;
                let res = client.request(req).await?;
                Ok::<Response, BoxError>(res.map(Body::new))
            }
        }));

    Router::new().route_service("/proxy", proxy)
}

/// A loopback port nothing listens on: the "upstream" that is down.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

pub(crate) fn print_help(addr: SocketAddr) {
    println!(
        "  curl -i http://{addr}/proxy       # 502: the upstream refused the connection (hyper-util client)"
    );
}
