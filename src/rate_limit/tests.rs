//! The layer's behaviour on tokio's paused clock, with `oneshot` on plain services.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{
    header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER},
    HeaderValue, Request, Response, StatusCode,
};
use tower::{service_fn, Layer, Service, ServiceExt};

use super::*;
use crate::{
    refuse::{OmitDefaultHeaders, RefusalPolicy},
    Reason,
};

const S: fn(u64) -> Duration = Duration::from_secs;

fn hello(
) -> impl Service<Request<()>, Response = Response<Bytes>, Error = Infallible, Future = impl Send> + Clone
{
    service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Bytes::from("hello")))
    })
}

fn from(ip: [u8; 4]) -> Request<()> {
    let mut req = Request::get("/api")
        .header(ACCEPT, "application/json")
        .body(())
        .unwrap();
    req.extensions_mut().insert(SocketAddr::from((ip, 4000)));
    req
}

fn exact() -> RefusalPolicy {
    RefusalPolicy::builder()
        .retry_after_jitter(Duration::ZERO)
        .build()
        .unwrap()
}

async fn send<S>(svc: &S, req: Request<()>) -> Response<Bytes>
where
    S: Service<Request<()>, Response = Response<Bytes>, Error = Infallible> + Clone,
{
    svc.clone().oneshot(req).await.unwrap()
}

/// An IPv6 client is its /64 by default: the addresses of one network share a quota (a client
/// cannot take a fresh one from each of its 2^64 addresses); other networks have their own,
/// and `ipv6_prefix(128)` counts each address.
#[tokio::test(start_paused = true)]
async fn an_ipv6_client_is_its_64_by_default() {
    let from6 = |ip: &str| {
        let mut req = Request::get("/api").body(()).unwrap();
        req.extensions_mut().insert(SocketAddr::from((
            ip.parse::<std::net::Ipv6Addr>().unwrap(),
            4000,
        )));
        req
    };
    let one_a_minute = || RateLimitLayer::builder().policy(Policy::new("p", 1, S(60)));
    let svc = one_a_minute().build().unwrap().layer(hello());
    assert_eq!(send(&svc, from6("2001:db8:1:2::1")).await.status(), 200);
    assert_eq!(
        send(&svc, from6("2001:db8:1:2:ffff::9")).await.status(),
        429
    );
    assert_eq!(send(&svc, from6("2001:db8:1:3::1")).await.status(), 200);
    // IPv4 clients, the mapped form included, are counted by address.
    assert_eq!(send(&svc, from([192, 0, 2, 1])).await.status(), 200);
    assert_eq!(send(&svc, from([192, 0, 2, 2])).await.status(), 200);
    assert_eq!(send(&svc, from6("::ffff:192.0.2.3")).await.status(), 200);
    assert_eq!(send(&svc, from6("::ffff:192.0.2.3")).await.status(), 429);

    let svc = one_a_minute()
        .ipv6_prefix(128)
        .build()
        .unwrap()
        .layer(hello());
    assert_eq!(send(&svc, from6("2001:db8:1:2::1")).await.status(), 200);
    assert_eq!(send(&svc, from6("2001:db8:1:2::2")).await.status(), 200);
    assert_eq!(send(&svc, from6("2001:db8:1:2::2")).await.status(), 429);

    for bits in [0, 31, 129] {
        let e = one_a_minute().ipv6_prefix(bits).build().unwrap_err();
        assert_eq!(e.setting(), "ipv6_prefix", "{bits}: {e}");
    }
}

#[tokio::test(start_paused = true)]
async fn over_quota_is_a_429_with_the_fields_and_a_quota_exceeded_problem() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("burst", 5, S(10)))
        .policy(Policy::new("daily", 100, S(86_400)))
        .refusal(exact())
        .build()
        .unwrap();
    let svc = layer.layer(hello());
    for i in 0..5u64 {
        let res = send(&svc, from([192, 0, 2, 1])).await;
        assert_eq!(res.status(), 200, "request {i}");
        assert_eq!(
            res.headers()[RATELIMIT_POLICY],
            r#""burst";q=5;w=10, "daily";q=100;w=86400"#
        );
        assert_eq!(
            res.headers()[RATELIMIT],
            format!(
                r#""burst";r={};t={}, "daily";r={};t={}"#,
                4 - i,
                2 * (i + 1),
                99 - i,
                864 * (i + 1)
            )
            .as_str()
        );
    }
    let res = send(&svc, from([192, 0, 2, 1])).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.extensions().get::<Reason>(), Some(&Reason::RateLimited));
    assert_eq!(res.headers()[RETRY_AFTER], "2");
    assert_eq!(
        res.headers()[RATELIMIT],
        r#""burst";r=0;t=10, "daily";r=95;t=4320"#
    );
    assert_eq!(
        res.headers()[RATELIMIT_POLICY],
        r#""burst";q=5;w=10, "daily";q=100;w=86400"#
    );
    assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let json: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(
        json["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(json["status"], 429);
    assert_eq!(json["violated-policies"], serde_json::json!(["burst"]));

    // Another client is not affected.
    assert_eq!(send(&svc, from([192, 0, 2, 2])).await.status(), 200);
    // The refused request was not counted: one interval later, exactly one more.
    tokio::time::advance(S(2)).await;
    assert_eq!(send(&svc, from([192, 0, 2, 1])).await.status(), 200);
    assert_eq!(send(&svc, from([192, 0, 2, 1])).await.status(), 429);
    // A full window later, the whole burst.
    tokio::time::advance(S(10)).await;
    for _ in 0..5 {
        assert_eq!(send(&svc, from([192, 0, 2, 1])).await.status(), 200);
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_the_longest_wait_of_the_violated_policies() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("second", 1, S(1)))
        .policy(Policy::new("minute", 2, S(60)))
        .refusal(exact())
        .build()
        .unwrap();
    let svc = layer.layer(hello());
    assert_eq!(send(&svc, from([192, 0, 2, 1])).await.status(), 200);
    let res = send(&svc, from([192, 0, 2, 1])).await;
    assert_eq!(res.headers()[RETRY_AFTER], "1");
    tokio::time::advance(S(1)).await;
    assert_eq!(send(&svc, from([192, 0, 2, 1])).await.status(), 200);
    tokio::time::advance(S(1)).await;
    let res = send(&svc, from([192, 0, 2, 1])).await;
    assert_eq!(res.status(), 429);
    // The minute policy: 58 s of debt at 2 s, 30 s per request, 60 s of capacity: the next
    // request fits in 28 s.
    assert_eq!(res.headers()[RETRY_AFTER], "28");
    let json: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(json["violated-policies"], serde_json::json!(["minute"]));
}

#[tokio::test(start_paused = true)]
async fn exempt_paths_are_neither_limited_nor_counted() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("p", 1, S(60)))
        .exempt_path("healthz")
        .build()
        .unwrap();
    let svc = layer.layer(hello());
    let at = |path: &str| {
        let mut req = Request::get(path).body(()).unwrap();
        req.extensions_mut()
            .insert(SocketAddr::from(([192, 0, 2, 1], 1)));
        req
    };
    for _ in 0..3 {
        let res = send(&svc, at("/healthz/live")).await;
        assert_eq!(res.status(), 200);
        assert!(res.headers().get(RATELIMIT).is_none());
    }
    assert_eq!(send(&svc, at("/api")).await.status(), 200);
    assert_eq!(send(&svc, at("/api")).await.status(), 429);
    // Normalised as the maintenance bypass paths are: no way out through dot-segments.
    assert_eq!(send(&svc, at("/healthz/../api")).await.status(), 429);
    assert_eq!(send(&svc, at("/healthz/..%2fapi")).await.status(), 429);
    assert_eq!(send(&svc, at("/healthz/./live")).await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn the_fields_within_quota_can_be_turned_off() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("p", 1, S(60)))
        .headers_within_quota(false)
        .build()
        .unwrap();
    let svc = layer.layer(hello());
    let res = send(&svc, from([192, 0, 2, 1])).await;
    assert!(res.headers().get(RATELIMIT).is_none());
    assert!(res.headers().get(RATELIMIT_POLICY).is_none());
    let res = send(&svc, from([192, 0, 2, 1])).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()[RATELIMIT], r#""p";r=0;t=60"#);
}

#[tokio::test(start_paused = true)]
async fn keys_from_a_header_or_a_function_and_the_shared_missing_key() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("p", 1, S(60)))
        .key_header(http::HeaderName::from_static("x-api-key"))
        .build()
        .unwrap();
    let svc = layer.layer(hello());
    let keyed = |key: Option<&'static str>| {
        let mut b = Request::get("/");
        if let Some(k) = key {
            b = b.header("x-api-key", k);
        }
        b.body(()).unwrap()
    };
    assert_eq!(send(&svc, keyed(Some("a"))).await.status(), 200);
    assert_eq!(send(&svc, keyed(Some("a"))).await.status(), 429);
    assert_eq!(send(&svc, keyed(Some("b"))).await.status(), 200);
    // Without the header: one shared quota, not a way around the limit.
    assert_eq!(send(&svc, keyed(None)).await.status(), 200);
    assert_eq!(send(&svc, keyed(None)).await.status(), 429);

    let layer = RateLimitLayer::builder()
        .policy(Policy::new("p", 1, S(60)))
        .key_fn(|req| {
            req.uri()
                .query()
                .and_then(|q| q.strip_prefix("user="))
                .map(RateLimitKey::from)
        })
        .build()
        .unwrap();
    let svc = layer.layer(hello());
    let user = |q: &str| Request::get(format!("/x?{q}")).body(()).unwrap();
    assert_eq!(send(&svc, user("user=1")).await.status(), 200);
    assert_eq!(send(&svc, user("user=1")).await.status(), 429);
    assert_eq!(send(&svc, user("user=2")).await.status(), 200);
    assert_eq!(send(&svc, user("other")).await.status(), 200);
    assert_eq!(send(&svc, user("nobody")).await.status(), 429);
}

#[tokio::test(start_paused = true)]
async fn trusted_proxies_report_the_client() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("p", 1, S(60)))
        .trusted_proxy("10.0.0.0/8".parse::<IpNet>().unwrap())
        .build()
        .unwrap();
    let svc = layer.layer(hello());
    let via = |peer: [u8; 4], xff: &'static str| {
        let mut req = from(peer);
        req.headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_static(xff));
        req
    };
    assert_eq!(
        send(&svc, via([10, 0, 0, 1], "203.0.113.1")).await.status(),
        200
    );
    // Same client through another proxy of ours.
    assert_eq!(
        send(&svc, via([10, 0, 0, 2], "203.0.113.1")).await.status(),
        429
    );
    assert_eq!(
        send(&svc, via([10, 0, 0, 1], "203.0.113.2")).await.status(),
        200
    );
    // An untrusted peer cannot pose as someone else.
    assert_eq!(
        send(&svc, via([198, 51, 100, 1], "203.0.113.3"))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&svc, via([198, 51, 100, 1], "203.0.113.4"))
            .await
            .status(),
        429
    );
}

#[tokio::test(start_paused = true)]
async fn a_render_hook_sees_the_violated_policies_and_replaces_the_body() {
    let policy = RefusalPolicy::builder()
        .render(|r| {
            let names: Vec<&str> = r.violated_policies().collect();
            let mut res = Response::new(Bytes::from(format!(
                "slow down: {} ({})",
                names.join(","),
                r.reason()
            )));
            *res.status_mut() = r.status();
            if r.path() == "/raw" {
                res.extensions_mut().insert(OmitDefaultHeaders);
            }
            res
        })
        .build()
        .unwrap();
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("mine", 1, S(60)))
        .refusal(policy)
        .build()
        .unwrap();
    let svc = layer.layer(hello());
    send(&svc, from([192, 0, 2, 1])).await;
    let res = send(&svc, from([192, 0, 2, 1])).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.body(), "slow down: mine (rate_limited)");
    assert!(res.headers().contains_key(RETRY_AFTER));
    assert_eq!(res.headers()[RATELIMIT], r#""mine";r=0;t=60"#);
    let mut raw = from([192, 0, 2, 1]);
    *raw.uri_mut() = "/raw".parse().unwrap();
    let res = send(&svc, raw).await;
    assert!(res.headers().get(RATELIMIT).is_none());
    assert!(res.headers().get(RETRY_AFTER).is_none());
}

#[test]
fn invalid_settings_are_errors_at_build() {
    let p = || Policy::new("p", 1, S(1));
    let cases = [
        (RateLimitLayer::builder(), "policy"),
        (
            RateLimitLayer::builder()
                .policy(Policy::new("a", 1, S(1)))
                .policy(Policy::new("b", 1, S(1)))
                .policy(Policy::new("c", 1, S(1)))
                .policy(Policy::new("d", 1, S(1)))
                .policy(Policy::new("e", 1, S(1))),
            "policy",
        ),
        (
            RateLimitLayer::builder().policy(p()).policy(p()),
            "policy name",
        ),
        (
            RateLimitLayer::builder().policy(Policy::new("p", 0, S(1))),
            "policy quota",
        ),
        (
            RateLimitLayer::builder().policy(Policy::new("p", 1, Duration::ZERO)),
            "policy window",
        ),
        (
            RateLimitLayer::builder().policy(p()).capacity(0),
            "capacity",
        ),
        (
            RateLimitLayer::builder().policy(p()).capacity(usize::MAX),
            "capacity",
        ),
        // An exempt path that would exempt everything (an unset environment variable).
        (
            RateLimitLayer::builder().policy(p()).exempt_path(""),
            "exempt_path",
        ),
        (
            RateLimitLayer::builder().policy(p()).exempt_path("/"),
            "exempt_path",
        ),
        (
            RateLimitLayer::builder()
                .policy(p())
                .exempt_path("healthz")
                .exempt_path("/x/.."),
            "exempt_path",
        ),
    ];
    for (builder, setting) in cases {
        let e = builder.build().unwrap_err();
        assert_eq!(e.setting(), setting, "{e}");
    }
}

#[test]
fn public_types_are_send_sync_and_clone() {
    fn send_sync<T: Send + Sync>() {}
    fn clone<T: Clone>() {}
    send_sync::<RateLimitLayer>();
    send_sync::<RateLimit<()>>();
    send_sync::<Policy>();
    clone::<RateLimitLayer>();
    clone::<RateLimit<()>>();
    #[cfg(feature = "redis")]
    send_sync::<RedisStore>();
}

/// `interval * burst` beyond u64 nanoseconds is refused at build, never a panic (debug) or a
/// capacity that wrapped around (release).
#[test]
fn a_burst_that_takes_centuries_to_replenish_is_a_config_error() {
    // One a year with bursts of 1,000: 3.16e16 ns * 1,000 = 3.16e19 > u64::MAX.
    let e = RateLimitLayer::builder()
        .policy(Policy::new("yearly", 1, MAX_WINDOW).burst(1_000))
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "policy burst", "{e}");
    // 500 years' worth fits.
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("yearly", 1, MAX_WINDOW).burst(500))
        .build()
        .unwrap();
    let g = layer.shared.gcras()[0];
    assert_eq!(g.capacity / g.interval, 500);
}

/// Behind a trusted proxy, what the client wrote left of the hop the proxy appended (junk, a
/// non-ASCII byte, a `Forwarded` element without `for=`) is never read: the client keeps its own
/// quota instead of escaping to the shared one of unknown clients.
#[tokio::test(start_paused = true)]
async fn junk_left_of_the_proxy_hop_does_not_move_the_client_to_another_quota() {
    let cases: [(ForwardedHeader, &str, &[u8], &[u8]); 2] = [
        // nginx `$proxy_add_x_forwarded_for`: "<what the client sent>, <peer>".
        (
            ForwardedHeader::XForwardedFor,
            "x-forwarded-for",
            b"203.0.113.9",
            b"\xff, 203.0.113.9",
        ),
        // A proxy appending to `Forwarded`: "<what the client sent>, for=<peer>".
        (
            ForwardedHeader::Forwarded,
            "forwarded",
            b"for=203.0.113.9",
            b"proto=https, for=203.0.113.9",
        ),
    ];
    for (which, name, honest, with_junk) in cases {
        let layer = RateLimitLayer::builder()
            .policy(Policy::new("p", 1, S(60)))
            .trusted_proxy("10.0.0.0/8".parse::<IpNet>().unwrap())
            .forwarded_header(which)
            .build()
            .unwrap();
        let svc = layer.layer(hello());
        let via = |value: &[u8]| {
            let mut req = from([10, 0, 0, 1]);
            req.headers_mut()
                .insert(name, HeaderValue::from_bytes(value).unwrap());
            req
        };
        assert_eq!(send(&svc, via(honest)).await.status(), 200, "{which:?}");
        assert_eq!(send(&svc, via(honest)).await.status(), 429, "{which:?}");
        assert_eq!(
            send(&svc, via(with_junk)).await.status(),
            429,
            "{which:?}: the junk moved the client to another quota"
        );
    }
}

/// A trusted proxy network written IPv4-mapped (as a dual-stack listener reports the proxy,
/// `::ffff:10.0.0.1`) trusts the IPv4 proxies it maps; a mapped network shorter than /96 is no
/// IPv4 network and an error at build.
#[tokio::test(start_paused = true)]
async fn an_ipv4_mapped_trusted_proxy_network_trusts_its_ipv4_proxies() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("p", 1, S(60)))
        .trusted_proxy("::ffff:10.0.0.0/104".parse::<IpNet>().unwrap())
        .build()
        .unwrap();
    let svc = layer.layer(hello());
    let via = |xff: &'static str| {
        let mut req = Request::get("/").body(()).unwrap();
        req.extensions_mut().insert(SocketAddr::from((
            "::ffff:10.0.0.1".parse::<std::net::Ipv6Addr>().unwrap(),
            4000,
        )));
        req.headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_static(xff));
        req
    };
    assert_eq!(send(&svc, via("203.0.113.1")).await.status(), 200);
    // Another client through the same proxy: its own quota.
    assert_eq!(send(&svc, via("203.0.113.2")).await.status(), 200);
    assert_eq!(send(&svc, via("203.0.113.1")).await.status(), 429);

    let e = RateLimitLayer::builder()
        .policy(Policy::new("p", 1, S(60)))
        .trusted_proxy("::ffff:10.0.0.0/80".parse::<IpNet>().unwrap())
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "trusted_proxy", "{e}");
}
