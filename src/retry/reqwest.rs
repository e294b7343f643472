//! The same retry policy for reqwest users, as a `reqwest_middleware::Middleware`.

use std::{error::Error, sync::Arc};

use http::Extensions;
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

use super::error::{AttemptTimedOut, DeadlineExceeded};
use super::{
    layer::record_outcome,
    policy::{AttemptOutcome, RequestFacts},
    Origin, RetryPolicy, IDEMPOTENCY_KEY,
};
use crate::breaker::KeyedBreakers;

/// [`RetryPolicy`] as a [`reqwest_middleware::Middleware`] (feature `reqwest-middleware`).
///
/// The decisions are the policy's, exactly as with [`RetryLayer`](super::RetryLayer):
/// statuses, idempotency, `Retry-After` floor and cap, budget, deadline and per-attempt
/// timeout, and optionally a circuit breaker per endpoint. reqwest buffers request bodies
/// itself: a body it can clone is re-sent byte for byte; a streaming body is sent once and not
/// retried.
///
/// This crate's errors ([`CircuitOpen`](crate::breaker::error::CircuitOpen),
/// [`DeadlineExceeded`], [`AttemptTimedOut`]) come back as
/// `reqwest_middleware::Error::Middleware`; [`Failure::from`](super::Failure) tells them apart
/// from reqwest's own errors.
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
    breakers: Option<Arc<KeyedBreakers<Origin>>>,
}

impl RetryMiddleware {
    /// A middleware retrying with `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            breakers: None,
        }
    }

    /// Guards every attempt with a circuit breaker per endpoint (the URL's [`Origin`]), as
    /// [`RetryLayer::circuit_breakers`](super::RetryLayer::circuit_breakers) does: one
    /// registry shared by both clients keeps one breaker per endpoint.
    #[must_use]
    pub fn circuit_breakers(mut self, breakers: Arc<KeyedBreakers<Origin>>) -> Self {
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
        self.policy.request_made();
        // One start for the deadline the middleware enforces and the one the policy plans by.
        let started = Instant::now();
        let mut state = self.policy.first_attempt(Some(started));
        // A deadline too far to represent is no deadline.
        let deadline = self.policy.deadline().and_then(|d| started.checked_add(d));
        let method = req.method().clone();
        let idempotency_key = req.headers().contains_key(IDEMPOTENCY_KEY);
        let origin = match &self.breakers {
            Some(breakers) => Origin::from_url(req.url()).map(|origin| (breakers, origin)),
            None => None,
        };
        let mut req = req;
        loop {
            // The policy never starts a wait that ends past the deadline; should the wait still
            // end there, the attempt is not started: a give-up, nothing sent.
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.policy.deadline_passed_unsent();
                return Err(reqwest_middleware::Error::middleware(
                    DeadlineExceeded::new(),
                ));
            }
            let next_copy = req.try_clone();
            let facts = RequestFacts {
                method: &method,
                idempotency_key,
                replayable: next_copy.is_some(),
            };
            let permit = match &origin {
                None => None,
                Some((breakers, origin)) => match breakers.get(origin).try_acquire() {
                    Ok(permit) => Some(permit),
                    Err(open) => {
                        // Not sent: the policy records a `circuit_open` give-up (and no
                        // attempt), as it does for `RetryLayer`.
                        let outcome = AttemptOutcome::Error(&open);
                        let retry = self.policy.decide_parts(&mut state, &facts, outcome);
                        debug_assert!(retry.is_none(), "a refused attempt is never retried");
                        return Err(reqwest_middleware::Error::middleware(open));
                    }
                },
            };
            let attempt_end = self
                .policy
                .attempt_timeout()
                .and_then(|t| Instant::now().checked_add(t));
            // Whichever comes first cuts the attempt; the deadline wins a tie.
            let cut = match (deadline, attempt_end) {
                (Some(d), Some(a)) if a < d => Some((a, false)),
                (Some(d), _) => Some((d, true)),
                (None, Some(a)) => Some((a, false)),
                (None, None) => None,
            };
            let attempt = next.clone().run(req, extensions);
            let result = match cut {
                None => attempt.await,
                Some((at, is_deadline)) => match tokio::time::timeout_at(at, attempt).await {
                    Ok(result) => result,
                    Err(_) if is_deadline => {
                        // Sent, and cut: the policy records the attempt and a `deadline`
                        // give-up. The client's own deadline is not the endpoint's failure: the
                        // breaker is not told (the permit goes unused).
                        // Said to the policy as its own cut, not as an error: an inner
                        // middleware's `DeadlineExceeded` is an ordinary error of the attempt.
                        let retry = self.policy.decide_parts(
                            &mut state,
                            &facts,
                            AttemptOutcome::DeadlineCut,
                        );
                        debug_assert!(retry.is_none(), "a cut attempt is never retried");
                        return Err(reqwest_middleware::Error::middleware(
                            DeadlineExceeded::new(),
                        ));
                    }
                    Err(_) => Err(reqwest_middleware::Error::middleware(AttemptTimedOut::new())),
                },
            };
            if let Some(permit) = permit {
                match &result {
                    Ok(res) => record_outcome(permit, Some((res.status(), res.headers()))),
                    Err(_) => record_outcome(permit, None),
                }
            }
            let outcome = match &result {
                Ok(res) => AttemptOutcome::Response(res.status(), res.headers()),
                // The wrapped error itself: `reqwest_middleware::Error` is transparent, its
                // `source()` is the wrapped error's source, so a walk from it would never see an
                // `AttemptTimedOut` (a timeout would be counted as a `connection` retry).
                Err(reqwest_middleware::Error::Middleware(e)) => {
                    AttemptOutcome::Error(AsRef::<dyn Error + Send + Sync>::as_ref(e))
                }
                Err(reqwest_middleware::Error::Reqwest(e)) => AttemptOutcome::Error(e),
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
