//! The same retry policy for reqwest users, as a `reqwest_middleware::Middleware`.

use std::{error::Error, sync::Arc};

use http::Extensions;
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

use super::error::DeadlineExceeded;
use super::{
    layer::record_outcome,
    policy::{AttemptOutcome, RequestFacts},
    RetryPolicy, IDEMPOTENCY_KEY,
};
use crate::breaker::KeyedBreakers;

/// [`RetryPolicy`] as a [`reqwest_middleware::Middleware`] (feature `reqwest-middleware`).
///
/// The decisions are the policy's, exactly as with [`RetryLayer`](super::RetryLayer):
/// statuses, idempotency, `Retry-After` floor and cap, budget, deadline, and optionally a
/// circuit breaker per endpoint. reqwest buffers request bodies itself: a body it can clone is
/// re-sent byte for byte; a streaming body is sent once and not retried. For a per-attempt
/// timeout use reqwest's own `ClientBuilder::timeout`.
///
/// ```
/// use tower_5xx::retry::{RetryMiddleware, RetryPolicy};
///
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RetryMiddleware::new(RetryPolicy::default()))
///     .build();
/// # let _ = client;
/// ```
#[derive(Debug, Clone)]
pub struct RetryMiddleware {
    policy: RetryPolicy,
    breakers: Option<Arc<KeyedBreakers<String>>>,
}

impl RetryMiddleware {
    /// A middleware retrying with `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            breakers: None,
        }
    }

    /// Guards every attempt with a circuit breaker per endpoint, as
    /// [`RetryLayer::circuit_breakers`](super::RetryLayer::circuit_breakers) does.
    #[must_use]
    pub fn circuit_breakers(mut self, breakers: Arc<KeyedBreakers<String>>) -> Self {
        self.breakers = Some(breakers);
        self
    }
}

#[async_trait::async_trait]
impl Middleware for RetryMiddleware {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let mut state = self.policy.first_attempt();
        let deadline = self.policy.deadline().map(|d| Instant::now() + d);
        let method = req.method().clone();
        let idempotency_key = req.headers().contains_key(IDEMPOTENCY_KEY);
        // host:port, without any userinfo: credentials are not a key.
        let endpoint = match (req.url().host_str(), req.url().port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => String::new(),
        };
        let mut req = req;
        loop {
            let next_copy = req.try_clone();
            let permit = match &self.breakers {
                None => None,
                Some(breakers) => match breakers.get(endpoint.as_str()).try_acquire() {
                    Ok(permit) => Some(permit),
                    Err(open) => return Err(reqwest_middleware::Error::middleware(open)),
                },
            };
            let attempt = next.clone().run(req, extensions);
            let result = match deadline {
                None => attempt.await,
                Some(at) => match tokio::time::timeout_at(at, attempt).await {
                    Ok(result) => result,
                    Err(_) => {
                        return Err(reqwest_middleware::Error::middleware(
                            DeadlineExceeded::new(),
                        ))
                    }
                },
            };
            if let Some(permit) = permit {
                match &result {
                    Ok(res) => record_outcome(permit, Some((res.status(), res.headers()))),
                    Err(_) => record_outcome(permit, None),
                }
            }
            let facts = RequestFacts {
                method: &method,
                idempotency_key,
                replayable: next_copy.is_some(),
            };
            let outcome = match &result {
                Ok(res) => AttemptOutcome::Response(res.status(), res.headers()),
                Err(e) => AttemptOutcome::Error(e as &(dyn Error + 'static)),
            };
            let Some(delay) = self.policy.decide_parts(&mut state, &facts, outcome) else {
                return result;
            };
            let Some(copy) = next_copy else {
                return result;
            };
            drop(result);
            tokio::time::sleep(delay).await;
            req = copy;
            state = state.next();
        }
    }
}
