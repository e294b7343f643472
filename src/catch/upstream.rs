//! Built-in rules for the errors of HTTP clients, each behind its client's feature: 502 for an
//! upstream exchange that failed, 504 for an upstream that did not answer in time. The table is
//! in the [module docs](super), "Upstream errors: 502 and 504".

use std::error::Error;

use super::Classification;

/// The rules of this module for one error of the chain.
#[cfg_attr(
    not(any(feature = "hyper-util", feature = "reqwest")),
    allow(unused_variables)
)]
#[inline]
pub(super) fn classify(error: &(dyn Error + 'static)) -> Option<Classification> {
    #[cfg(feature = "hyper-util")]
    if let Some(c) = hyper_util(error) {
        return Some(c);
    }
    #[cfg(feature = "reqwest")]
    if let Some(c) = error.downcast_ref::<reqwest::Error>().and_then(reqwest) {
        return Some(c);
    }
    #[cfg(feature = "reqwest-middleware")]
    if let Some(reqwest_middleware::Error::Reqwest(e)) =
        error.downcast_ref::<reqwest_middleware::Error>()
    {
        return reqwest(e);
    }
    None
}

#[cfg(feature = "hyper-util")]
fn hyper_util(error: &(dyn Error + 'static)) -> Option<Classification> {
    if let Some(e) = error.downcast_ref::<hyper_util::client::legacy::Error>() {
        if !e.is_connect() {
            return None;
        }
        let timed_out = crate::error_chain::sources(error).any(|e| {
            e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
        return Some(if timed_out {
            Classification::gateway_timeout()
        } else {
            Classification::bad_gateway()
        });
    }
    let e = error.downcast_ref::<hyper::Error>()?;
    // A body cut short: hyper's body error over an `UnexpectedEof`.
    let body_cut = e
        .source()
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            )
        });
    (e.is_incomplete_message() || e.is_closed() || e.is_canceled() || e.is_parse() || body_cut)
        .then(Classification::bad_gateway)
}

#[cfg(feature = "reqwest")]
fn reqwest(e: &reqwest::Error) -> Option<Classification> {
    // A connect timeout is both `is_connect` and `is_timeout`: the timeout decides.
    if e.is_timeout() {
        Some(Classification::gateway_timeout())
    } else if e.is_connect() || e.is_request() || e.is_body() || e.is_decode() {
        Some(Classification::bad_gateway())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_errors_are_left_alone() {
        assert_eq!(classify(&std::io::Error::other("db down")), None);
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(classify(&eof), None);
    }

    #[cfg(feature = "hyper-util")]
    #[tokio::test]
    async fn hyper_util_refused_connection_is_502_and_a_misuse_is_not_judged() {
        use hyper_util::{client::legacy::Client, rt::TokioExecutor};

        let client = Client::builder(TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let refused = client.get(uri).await.unwrap_err();
        assert!(refused.is_connect());
        assert_eq!(classify(&refused), Some(Classification::bad_gateway()));

        // A request without an authority never left the proxy: the proxy's bug, not the
        // upstream's failure. No rule claims it (it stays a 500).
        let misuse = client.get("/relative".parse().unwrap()).await.unwrap_err();
        assert!(!misuse.is_connect());
        assert!(crate::error_chain::sources(&misuse).all(|e| classify(e).is_none()));
    }

    #[cfg(feature = "reqwest")]
    #[test]
    fn reqwest_builder_errors_are_not_upstream_failures() {
        let e = reqwest::Client::new()
            .get("http://[::1")
            .build()
            .unwrap_err();
        assert!(e.is_builder());
        assert_eq!(classify(&e), None);
    }

    #[cfg(feature = "reqwest-middleware")]
    #[tokio::test]
    async fn reqwest_errors_are_found_through_reqwest_middleware() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).build();
        let e = client
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert!(matches!(e, reqwest_middleware::Error::Reqwest(_)));
        // `reqwest_middleware::Error` is transparent: its `source()` skips the reqwest error.
        assert_eq!(classify(&e), Some(Classification::bad_gateway()));
    }
}
