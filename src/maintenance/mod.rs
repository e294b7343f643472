//! Maintenance mode: answer **503 Service Unavailable** with a truthful `Retry-After` while a
//! switch is on, and let operators and health checks through.
//!
//! [`MaintenanceLayer`] wraps a `Service<http::Request<_>>`. It is driven by a
//! [`MaintenanceSwitch`], a cheap cloneable handle that your code, a signal handler, the
//! [admin router](admin) (feature `axum`) or a [`SentinelFile`] poller flip at run time, or that
//! follows one key in Redis for a whole fleet ([`MaintenanceSwitch::follow_redis`], feature
//! `redis`).
//!
//! | situation | what a new request gets |
//! |---|---|
//! | switch off, no [`Window`] open | the inner service's response; the check is **one atomic load** |
//! | any [source](#sources) on: [`enable`](MaintenanceSwitch::enable) (code, the admin router), a [`SentinelFile`] that exists, the fleet's Redis key, an open [`Window`] | **503**, `Retry-After`, `Cache-Control: no-store`, an HTML page / problem+json / text body as `Accept` asks, [`Reason::Maintenance`](crate::Reason) in the extensions |
//! | ... and a [bypass rule](#bypass-rules) matches | the inner service's response |
//! | already in flight when the switch flipped | finishes normally: the decision is made once, in `call` |
//!
//! **`Retry-After` tells the truth**: with a known end (a [`MaintenanceNotice::until`] date, a
//! [`MaintenanceNotice::ends_in`] deadline on tokio's clock, a window's end) it is the time left
//! until then; otherwise the notice's own [`retry_after`](MaintenanceNotice::retry_after), else
//! the layer's [default](MaintenanceLayer::default_retry_after) (60 s). The layer's
//! [refusal policy](MaintenanceLayer::refusal) then cuts it to its bounds (at most 30 days),
//! adds jitter so a fleet's clients do not return in one herd (1 s by default), and sends it as
//! delta-seconds or, if asked, an HTTP-date.
//!
//! # Sources
//!
//! Maintenance is **on while any source says on**. Each [`Source`] is switched on and off by
//! itself and owns its notice; switching one off never switches another off:
//!
//! | [`Source`] | on | off |
//! |---|---|---|
//! | [`Manual`](Source::Manual) | [`enable`](MaintenanceSwitch::enable) / [`enable_with`](MaintenanceSwitch::enable_with) in code, the [admin router](admin)'s `PUT` (without Redis) | [`disable`](MaintenanceSwitch::disable), the admin router's `DELETE` (without Redis) |
//! | [`File`](Source::File) | the [`SentinelFile`] exists | the poller sees it gone |
//! | [`Redis`](Source::Redis) (feature `redis`) | the followed key says `"enabled": true` (an admin `PUT` on **any** instance of the fleet), or one of its windows is open | the key says `"enabled": false` (an admin `DELETE` on any instance) and none of its windows is open; an absent key or an unreachable Redis changes nothing (see [`redis`]) |
//! | [`Scheduled`](Source::Scheduled) | a [`Window`] opens | it ends, or [`clear_schedule`](MaintenanceSwitch::clear_schedule) |
//! | **several on** | the 503 uses **one** notice, whole (its `Retry-After` and its message): the one with the **longest wait**, where a notice's wait is the time left until its known end (`until`, `ends_in`, a window's end), else its `retry_after`; a notice that states no wait yields to one that does; ties go to the first in this table's order | only when the last one goes off |
//!
//! So removing the sentinel file does not end maintenance that the admin router started, an
//! admin `DELETE` does not end maintenance while the file exists, and clients are not told to
//! come back before the longest announced end. While a switch follows Redis, its admin router
//! writes to Redis **instead of** the manual source: the fleet's admin state lives in one place,
//! so a `DELETE` on any instance clears what a `PUT` on another set. [`MaintenanceSwitch::status`] (and the admin
//! router's `GET`) lists the sources that are on and the one whose notice is in force.
//!
//! **Scheduled windows** ([`MaintenanceSwitch::schedule`]) open and close by themselves. There is
//! no background task: each request compares the [wall clock](WallClock) with the pending
//! windows (while any is pending, the hot path is the atomic load, a clock read and a shared
//! read lock; once the last one has ended it is one atomic load again). Windows back to back or
//! overlapping (of any source) are one maintenance: while the first is open, clients are told to
//! come back when the last of the run ends, not into the next window.
//!
//! # Bypass rules
//!
//! Checked only while maintenance is on, cheapest first; any match lets the request through:
//!
//! - [`bypass_path`](MaintenanceLayer::bypass_path): path prefixes, e.g. `/healthz`, matched
//!   against the path with its dot-segments removed (`/healthz/../admin` is `/admin`); a path
//!   that servers read in different ways (`/healthz/..%2fadmin`) passes by no prefix; a prefix
//!   that would pass every path (empty, `/`) is refused: it adds no rule;
//! - [`bypass_header`](MaintenanceLayer::bypass_header): a secret header, compared in constant
//!   time, its length included (an empty secret, or one over 256 bytes, is refused: it adds no
//!   rule);
//! - [`allow_ip`](MaintenanceLayer::allow_ip): client IPs in CIDR nets. The client IP is the
//!   **peer address** (axum's `ConnectInfo<SocketAddr>` with the `axum` feature, or a
//!   `SocketAddr` you insert into the request's extensions with plain hyper). The header the
//!   proxies write ([`X-Forwarded-For` by default, or `Forwarded`](ForwardedHeader)) is believed
//!   only when that peer is a [trusted proxy](MaintenanceLayer::trusted_proxy), and only that
//!   one header is read, so a client cannot spoof its way in;
//! - [`bypass_if`](MaintenanceLayer::bypass_if): your predicate.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use bytes::Bytes;
//! use http::{header, Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_5xx::maintenance::{MaintenanceLayer, MaintenanceNotice, MaintenanceSwitch};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let switch = MaintenanceSwitch::new();
//! let svc = ServiceBuilder::new()
//!     .layer(MaintenanceLayer::new(switch.clone()).bypass_path("/healthz"))
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
//!     }));
//! let get = |path: &str| Request::get(path).body(Full::default()).unwrap();
//!
//! assert_eq!(svc.clone().oneshot(get("/")).await.unwrap().status(), StatusCode::OK);
//!
//! switch.enable_with(
//!     MaintenanceNotice::new()
//!         .retry_after(Duration::from_secs(300))
//!         .message("Upgrading the database."),
//! );
//! let res = svc.clone().oneshot(get("/")).await.unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! // 300 s, plus up to 1 s of jitter (the default refusal policy).
//! let retry_after = res.headers()[header::RETRY_AFTER].to_str().unwrap();
//! assert!(retry_after == "300" || retry_after == "301", "{retry_after}");
//! assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
//! // Health checks still pass.
//! assert_eq!(svc.clone().oneshot(get("/healthz")).await.unwrap().status(), StatusCode::OK);
//!
//! switch.disable();
//! assert_eq!(svc.oneshot(get("/")).await.unwrap().status(), StatusCode::OK);
//! # }
//! ```
//!
//! With axum, `Router::layer(MaintenanceLayer::new(switch))`; serve with
//! `into_make_service_with_connect_info::<SocketAddr>()` if you use IP rules.

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod admin;
mod bypass;
pub mod error;
mod file;
mod layer;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod secret;
mod service;
mod switch;

pub use bypass::{ClientRequest, ForwardedHeader};
#[cfg(fuzzing)]
pub(crate) use file::fuzz as file_fuzz;
pub use file::{FileState, SentinelFile};
/// Response future of [`Maintenance`]: the inner service's future, or a ready 503.
pub type ResponseFuture<F, B> = crate::refuse::InnerOrRefused<F, B>;
pub use ipnet::IpNet;
pub use layer::MaintenanceLayer;
pub use service::Maintenance;
pub use switch::{
    MaintenanceNotice, MaintenanceStatus, MaintenanceSwitch, Source, SystemClock, WallClock, Window,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_clone<T: Clone>() {}

    #[test]
    fn public_types_are_send_sync_and_clone() {
        assert_send_sync::<MaintenanceSwitch>();
        assert_send_sync::<MaintenanceLayer>();
        assert_send_sync::<Maintenance<()>>();
        assert_send_sync::<MaintenanceNotice>();
        assert_send_sync::<SentinelFile>();
        assert_send_sync::<ResponseFuture<std::future::Ready<()>, String>>();
        assert_clone::<MaintenanceSwitch>();
        assert_clone::<MaintenanceLayer>();
        assert_clone::<Maintenance<()>>();
    }
}
