//! One refusal policy shared by every layer of a real axum server: the same custom schema for a
//! maintenance 503, a shed 503, an open-breaker 503 and a panic's 500, each keeping
//! `Retry-After`, `Cache-Control: no-store` and `x-error-id`.
#![cfg(all(
    feature = "catch",
    feature = "maintenance",
    feature = "shed",
    feature = "breaker"
))]

mod common;

use std::time::Duration;

use axum::{routing::get, Router};
use bytes::Bytes;
use http::{header::CONTENT_TYPE, Response, StatusCode};
use tower::Layer;
use tower_5xx::Format;
use tower_5xx::{
    breaker::{BreakerLayer, CircuitBreaker},
    catch::CatchLayer,
    maintenance::{MaintenanceLayer, MaintenanceNotice, MaintenanceSwitch},
    refuse::{OmitDefaultHeaders, RefusalPolicy},
    shed::ShedLayer,
};

use common::{client, get as fetch, request, send};

/// Our own error schema: `{"code": .., "id": .., "retry_in": ..}`.
fn house_policy() -> RefusalPolicy {
    RefusalPolicy::builder()
        .min_retry_after(Duration::from_secs(2))
        .retry_after_jitter(Duration::ZERO)
        .render(|r| {
            let body = serde_json::json!({
                "code": r.reason().as_str(),
                "id": r.error_id().to_string(),
                "retry_in": r.retry_after().map(|ra| ra.to_string()),
                "path": r.path(),
            });
            let mut res = Response::new(Bytes::from(body.to_string()));
            *res.status_mut() = r.status();
            res.headers_mut()
                .insert(CONTENT_TYPE, "application/vnd.acme+json".parse().unwrap());
            if r.path() == "/raw" {
                res.extensions_mut().insert(OmitDefaultHeaders);
            }
            res
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn every_layer_refuses_through_one_policy() {
    common::quiet_panics();
    let policy = house_policy();
    let switch = MaintenanceSwitch::new();
    let breaker = CircuitBreaker::builder().build().unwrap();
    breaker.force_open();
    // A limit of 1 and no queue: the held request makes the next one shed.
    let shed = ShedLayer::builder()
        .limit(1)
        .max_queue(0)
        .refusal(policy.clone())
        .build()
        .unwrap();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let entered = std::sync::Arc::new(tokio::sync::Notify::new());
    let (r, e) = (release.clone(), entered.clone());
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let (r, e) = (r.clone(), e.clone());
                async move {
                    e.notify_one();
                    r.notified().await;
                    "done"
                }
            }),
        )
        .route("/busy", get(|| async { "ok" }))
        .route_layer(shed)
        .route_service(
            "/dependency",
            BreakerLayer::new(breaker.clone())
                .refusal(policy.clone())
                .layer(tower::service_fn(|_req: axum::extract::Request| async {
                    Ok::<_, std::convert::Infallible>(axum::response::Response::new(
                        axum::body::Body::from("dependency"),
                    ))
                })),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("secret detail");
                }
                "unreachable"
            }),
        )
        .route("/raw", get(|| async { "raw" }))
        .route("/maint", get(|| async { "up" }))
        .layer(
            MaintenanceLayer::new(switch.clone())
                .bypass_path("/slow")
                .bypass_path("/busy")
                .bypass_path("/dependency")
                .bypass_path("/panic")
                .refusal(policy.clone()),
        )
        .layer(CatchLayer::new().refusal(policy.clone()));
    let addr = common::serve_axum(app).await;
    let c = client();

    // Hold the one shed permit.
    let held = tokio::spawn({
        let c = c.clone();
        async move { fetch(&c, addr, "/slow").await }
    });
    entered.notified().await;
    switch.enable_with(MaintenanceNotice::new().retry_after(Duration::from_secs(40)));

    let cases = [
        ("/maint", 503, "maintenance", Some("40")),
        ("/busy", 503, "shed", Some("2")),
        ("/dependency", 503, "circuit_open", None),
        ("/panic", 500, "panic", None),
    ];
    for (path, status, code, retry_after) in cases {
        let reply = fetch(&c, addr, path).await;
        assert_eq!(reply.status.as_u16(), status, "{path}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/vnd.acme+json"),
            "{path}"
        );
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(json["code"], code, "{path}");
        assert_eq!(json["path"], path);
        // The guarantees the hook did not set itself.
        assert_eq!(reply.header("cache-control"), Some("no-store"), "{path}");
        assert_eq!(reply.header("x-error-id"), json["id"].as_str(), "{path}");
        if status == 503 {
            let sent = reply.header("retry-after").expect("a 503 has Retry-After");
            assert_eq!(json["retry_in"].as_str(), Some(sent), "{path}");
            if let Some(expected) = retry_after {
                assert_eq!(sent, expected, "{path}");
            }
        } else {
            assert_eq!(reply.header("retry-after"), None, "{path}");
        }
        assert!(!reply.text().contains("secret detail"));
    }

    // The explicit opt-out: the hook's response goes out as it is.
    let raw = fetch(&c, addr, "/raw").await;
    assert_eq!(raw.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(raw.header("retry-after"), None);
    assert_eq!(raw.header("cache-control"), None);
    assert_eq!(raw.header("x-error-id"), None);

    release.notify_one();
    assert_eq!(held.await.unwrap().text(), "done");
}

/// A JSON API sets its policy's format to problem+json. A client that leaves the choice to the
/// server must get it whether it sends no `Accept` or `*/*` (curl, `fetch`, reqwest: RFC 9110
/// §12.5.1 makes the two the same), or names several formats at one weight (axios); a client
/// that prefers another format still gets that one.
#[tokio::test]
async fn the_policy_format_is_sent_when_accept_leaves_the_choice_to_the_server() {
    let switch = MaintenanceSwitch::new();
    switch.enable();
    let policy = RefusalPolicy::builder()
        .format(Format::ProblemJson)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "up" }))
        .layer(MaintenanceLayer::new(switch).refusal(policy));
    let addr = common::serve_axum(app).await;
    let c = client();

    let json = "application/problem+json";
    let cases = [
        (None, json),
        (Some("*/*"), json),
        (Some("application/json, text/plain, */*"), json),
        (Some("text/plain, application/json"), json),
        (Some("text/plain"), "text/plain; charset=utf-8"),
        (
            Some("text/plain, application/json;q=0.9"),
            "text/plain; charset=utf-8",
        ),
        (
            Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            "text/html; charset=utf-8",
        ),
    ];
    for (accept, expected) in cases {
        let reply = send(&c, request(addr, "/", accept)).await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            reply.header("content-type"),
            Some(expected),
            "Accept: {accept:?}"
        );
    }
}
