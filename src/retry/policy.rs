//! The retry policy: what is retried, when, and how long to wait.

use std::{
    error::Error,
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use http::{header, HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use tokio::time::{Instant, Sleep};

use super::{Backoff, ReplayBody, RetryBudget};
use crate::{
    error::InvalidConfig,
    telemetry::{Meter, RetryCause, RetryMetrics},
    BoxError, RetryAfter,
};

/// The header that marks a request as safe to repeat (IETF draft
/// `draft-ietf-httpapi-idempotency-key-header`): `idempotency-key`.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Why the policy decided to retry, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryReason {
    /// The response had a retryable status (500, 502, 503, 504, 429 by default).
    Status(StatusCode),
    /// The request failed before any response arrived.
    Error,
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryReason::Status(s) => write!(f, "status {s}"),
            RetryReason::Error => f.write_str("request error"),
        }
    }
}

/// What happened after an attempt, passed to [`RetryPolicyBuilder::on_attempt`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AttemptEvent {
    /// The attempt that just finished (1 for the first), or, with
    /// [`GiveUpReason::CircuitOpen`], the attempt the endpoint's breaker refused, unsent.
    pub attempt: u32,
    /// The status, if a response arrived.
    pub status: Option<StatusCode>,
    /// What the policy decided.
    pub decision: Decision,
}

/// The policy's decision after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The result is final: a success, or a failure that is not retryable.
    Done,
    /// Retry after `delay`. `retry_after` is the server's `Retry-After`, when it gave one and it
    /// set the wait.
    Retry {
        /// Why.
        reason: RetryReason,
        /// How long the policy waits before the next attempt.
        delay: Duration,
        /// The server's `Retry-After`, as a wait, when it was honoured.
        retry_after: Option<Duration>,
    },
    /// Retryable, but not retried, for the reason given.
    GiveUp {
        /// What made the attempt retryable.
        reason: RetryReason,
        /// Why it was not retried.
        why: GiveUpReason,
    },
}

/// Why a retryable failure was not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The maximum number of attempts was reached.
    Attempts,
    /// The retry budget is spent.
    Budget,
    /// The server's `Retry-After` is longer than the configured cap.
    RetryAfterTooLong,
    /// The overall deadline: the wait would end after it, or it cut the attempt (which
    /// [`RetryLayer`](super::RetryLayer) and [`RetryMiddleware`](super::RetryMiddleware) report
    /// with a [`DeadlineExceeded`](super::error::DeadlineExceeded) error).
    Deadline,
    /// The request is not idempotent and the failure does not prove it was never processed.
    NotIdempotent,
    /// The request body was too large to buffer, so it cannot be sent again.
    BodyNotReplayable,
    /// The endpoint's circuit breaker is open: the error says when to try again. The attempt
    /// it refused was not sent (and is not counted in `tower_5xx_retry_attempts_total`).
    CircuitOpen,
}

impl GiveUpReason {
    /// The position in `telemetry::GIVE_UP_CAUSES`.
    fn index(self) -> usize {
        match self {
            GiveUpReason::Attempts => 0,
            GiveUpReason::Budget => 1,
            GiveUpReason::RetryAfterTooLong => 2,
            GiveUpReason::Deadline => 3,
            GiveUpReason::NotIdempotent => 4,
            GiveUpReason::BodyNotReplayable => 5,
            GiveUpReason::CircuitOpen => 6,
        }
    }
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GiveUpReason::Attempts => "no attempts left",
            GiveUpReason::Budget => "retry budget spent",
            GiveUpReason::RetryAfterTooLong => "Retry-After longer than the cap",
            GiveUpReason::Deadline => "deadline reached",
            GiveUpReason::NotIdempotent => "request not idempotent",
            GiveUpReason::BodyNotReplayable => "body too large to replay",
            GiveUpReason::CircuitOpen => "circuit breaker open",
        })
    }
}

type AttemptHook = Arc<dyn Fn(&AttemptEvent) + Send + Sync>;

struct Config {
    backoff: Backoff,
    max_attempts: u32,
    retry_after_cap: Duration,
    retry_after_jitter: Duration,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
    /// Bit `n` set: status `400 + n` is retried (covers 400..=599).
    statuses: [u64; 4],
    retry_non_idempotent: bool,
    budget: Option<Arc<RetryBudget>>,
    on_attempt: Option<AttemptHook>,
    metrics: RetryMetrics,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .field("retry_after_cap", &self.retry_after_cap)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("retry_non_idempotent", &self.retry_non_idempotent)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// A [`tower::retry::Policy`] for HTTP: bounded exponential backoff with jitter, `Retry-After`
/// honoured (and capped), a retry budget, idempotency rules and deadlines.
///
/// Build it with [`RetryPolicy::builder`]; use it through [`RetryLayer`](super::RetryLayer),
/// which also buffers request bodies so they can be re-sent, or directly with
/// `tower::retry::RetryLayer` on a service whose requests are `Request<ReplayBody<B>>` and whose
/// error type is [`BoxError`].
///
/// Per request, the policy decides:
///
/// 1. **Retryable?** A response with status 500, 502, 503, 504 or 429 (configurable, never 501
///    or another 4xx), or an error before any response.
/// 2. **Allowed?** The method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), or the
///    request carries `Idempotency-Key`, or non-idempotent retries were enabled, or the error
///    proves the server never processed the request (connection refused, or an HTTP/2 stream
///    reset with `REFUSED_STREAM`). The body must have been buffered. Attempts and budget remain.
/// 3. **How long to wait?** The backoff delay, raised to the server's `Retry-After` when it
///    sent one (delta-seconds, or an HTTP-date read against the response's `Date` to cancel
///    clock skew), or, for a 429 or 503 without `Retry-After`, to the `t` of its `RateLimit`
///    field's exhausted policies (`r=0`, draft-ietf-httpapi-ratelimit-headers). A `Retry-After` above the cap (default 5 minutes), or a wait that would end
///    past the deadline, returns the response at once instead of sleeping.
///
/// The policy itself holds only shared configuration: what it knows about one request's
/// attempts travels with that request (in its [`ReplayBody`]), so one policy serves any number
/// of concurrent requests, as `tower::retry` expects.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    config: Arc<Config>,
}

/// What the policy knows about one request's attempts, carried by its [`ReplayBody`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempts {
    /// Attempts sent so far (when deciding), the first included.
    pub(crate) count: u32,
    /// When the first attempt started; only read (and so only taken) with a deadline.
    pub(crate) started: Option<Instant>,
    pub(crate) previous_delay: Duration,
}

impl Attempts {
    /// A request not sent yet, whose deadline counts from `started`: the instant the caller
    /// handed it to [`Retry`](super::Retry), before its body was buffered and the client was
    /// ready, the instant the layer's deadline timer starts from too.
    pub(crate) fn unsent(started: Instant) -> Self {
        Self {
            count: 0,
            started: Some(started),
            previous_delay: Duration::ZERO,
        }
    }

    pub(crate) fn next(self) -> Self {
        Self {
            count: self.count.saturating_add(1),
            ..self
        }
    }
}

impl Default for RetryPolicy {
    /// The policy with every default of [`RetryPolicy::builder`].
    fn default() -> Self {
        Self::builder()
            .build()
            .expect("the default retry settings are valid")
    }
}

/// Builder for [`RetryPolicy`]; every setting has a documented default.
///
/// The setters only record their value; [`build`](Self::build) checks them all and names the
/// first invalid one in an [`InvalidConfig`]. Nothing is clamped or dropped in silence.
#[derive(Debug)]
#[must_use]
pub struct RetryPolicyBuilder {
    config: Config,
    /// The first status given to `retry_status` that can never be retried.
    unretryable_status: Option<StatusCode>,
}

impl RetryPolicy {
    /// A builder with the defaults: 3 attempts in all, [`Backoff::default`] (100 ms doubling to
    /// at most 10 s, full jitter), `Retry-After` capped at 5 minutes, no deadline, no
    /// per-attempt timeout, statuses 500, 502, 503, 504 and 429, idempotent requests only, no
    /// budget.
    pub fn builder() -> RetryPolicyBuilder {
        let mut statuses = [0u64; 4];
        for s in [500u16, 502, 503, 504, 429] {
            set_status(&mut statuses, s, true);
        }
        RetryPolicyBuilder {
            config: Config {
                backoff: Backoff::default(),
                max_attempts: 3,
                retry_after_cap: Duration::from_secs(300),
                retry_after_jitter: Duration::ZERO,
                deadline: None,
                attempt_timeout: None,
                statuses,
                retry_non_idempotent: false,
                budget: None,
                on_attempt: None,
                metrics: RetryMetrics::default(),
            },
            unretryable_status: None,
        }
    }

    fn status_retryable(&self, status: StatusCode) -> bool {
        status_set(&self.config.statuses, status.as_u16())
    }

    /// Reports the decision after attempt `attempt`: metrics, a span, the user's hook.
    /// `timeout`: the attempt failed on the per-attempt timeout.
    fn notify(&self, attempt: u32, status: Option<StatusCode>, decision: Decision, timeout: bool) {
        let metrics = &self.config.metrics;
        // An attempt the endpoint's breaker refused was never sent: it is a give-up, and no
        // attempt (`tower_5xx_retry_attempts_total` counts requests sent).
        if !matches!(
            decision,
            Decision::GiveUp {
                why: GiveUpReason::CircuitOpen,
                ..
            }
        ) {
            metrics.attempt();
        }
        let span = tracing::debug_span!(
            target: "tower_5xx",
            "retry.attempt",
            attempt,
            http.response.status_code = status.map(|s| s.as_u16()),
            decision = tracing::field::Empty,
            delay_ms = tracing::field::Empty,
            retry_after = tracing::field::Empty,
            give_up = tracing::field::Empty,
            name = metrics.meter.name(),
        );
        match &decision {
            Decision::Done => {
                span.record("decision", "done");
            }
            Decision::Retry {
                reason,
                delay,
                retry_after,
            } => {
                let cause = match reason {
                    RetryReason::Status(_) => RetryCause::Status,
                    RetryReason::Error if timeout => RetryCause::Timeout,
                    RetryReason::Error => RetryCause::Connection,
                };
                metrics.retry(cause, *delay, retry_after.is_some());
                span.record("decision", "retry");
                span.record("delay_ms", delay.as_millis() as u64);
                span.record("retry_after", retry_after.is_some());
            }
            Decision::GiveUp { why, .. } => {
                metrics.give_up(why.index());
                span.record("decision", "give_up");
                span.record("give_up", tracing::field::display(why));
            }
        }
        if let Some(budget) = &self.config.budget {
            metrics.budget(budget.remaining());
        }
        let _entered = span.enter();
        if let Some(hook) = &self.config.on_attempt {
            hook(&AttemptEvent {
                attempt,
                status,
                decision,
            });
        }
    }

    /// The decision after an attempt of a `tower::retry` request; `Some(delay)` to retry.
    fn decide<B, ResB>(
        &self,
        req: &mut Request<ReplayBody<B>>,
        result: &Result<Response<ResB>, BoxError>,
    ) -> Option<Duration> {
        let Some(mut state) = req.body().attempts() else {
            // Not a request this policy cloned: nothing to go on, do not retry.
            return None;
        };
        let outcome = match result {
            Ok(res) => {
                // The common case, a final answer, needs nothing more from the request.
                if !self.status_retryable(res.status()) {
                    self.notify(state.count, Some(res.status()), Decision::Done, false);
                    return None;
                }
                AttemptOutcome::Response(res.status(), res.headers())
            }
            // The layer's own deadline cut the attempt (an inner client's `DeadlineExceeded`
            // is an ordinary error).
            Err(e) if e.is::<super::error::DeadlineCut>() => AttemptOutcome::DeadlineCut,
            Err(e) => AttemptOutcome::Error(&**e),
        };
        let request = RequestFacts {
            method: req.method(),
            idempotency_key: req.headers().contains_key(IDEMPOTENCY_KEY),
            replayable: req.body().is_replayable(),
        };
        let delay = self.decide_parts(&mut state, &request, outcome)?;
        req.body_mut().set_attempts(state);
        Some(delay)
    }

    /// The decision after attempt `state.count`, for any client: `Some(delay)` to retry (and
    /// `state` updated), `None` when the result is final.
    pub(crate) fn decide_parts(
        &self,
        state: &mut Attempts,
        req: &RequestFacts<'_>,
        outcome: AttemptOutcome<'_>,
    ) -> Option<Duration> {
        let attempt = state.count;
        let (reason, status, server_wait) = match outcome {
            AttemptOutcome::Response(status, headers) => {
                if !self.status_retryable(status) {
                    self.notify(attempt, Some(status), Decision::Done, false);
                    return None;
                }
                (
                    RetryReason::Status(status),
                    Some(status),
                    server_wait(status, headers),
                )
            }
            AttemptOutcome::Error(_) | AttemptOutcome::DeadlineCut => {
                (RetryReason::Error, None, None)
            }
        };
        let timeout = matches!(outcome, AttemptOutcome::Error(e)
            if crate::error_chain::sources(e).any(|e| e.is::<super::error::AttemptTimedOut>()));
        let give_up = |this: &Self, why| {
            this.notify(attempt, status, Decision::GiveUp { reason, why }, timeout);
            None
        };

        if matches!(outcome, AttemptOutcome::Error(e) if e.is::<crate::breaker::error::CircuitOpen>())
        {
            return give_up(self, GiveUpReason::CircuitOpen);
        }
        // An attempt this client's own deadline cut: sent, failed, and never retried. (An
        // inner client's `DeadlineExceeded` is an `Error`, judged like any other below.)
        if matches!(outcome, AttemptOutcome::DeadlineCut) {
            return give_up(self, GiveUpReason::Deadline);
        }
        let unprocessed = matches!(outcome, AttemptOutcome::Error(e) if never_processed(e));
        let idempotent = is_idempotent_method(req.method) || req.idempotency_key;
        if !(unprocessed || self.config.retry_non_idempotent || idempotent) {
            return give_up(self, GiveUpReason::NotIdempotent);
        }
        if !req.replayable {
            return give_up(self, GiveUpReason::BodyNotReplayable);
        }
        if attempt >= self.config.max_attempts {
            return give_up(self, GiveUpReason::Attempts);
        }
        if let Some(wait) = server_wait {
            if wait > self.config.retry_after_cap {
                return give_up(self, GiveUpReason::RetryAfterTooLong);
            }
        }
        let backoff = self.config.backoff.delay(attempt, state.previous_delay);
        let delay = match server_wait {
            None => backoff,
            Some(wait) if wait < backoff => backoff,
            // The server named the wait: never earlier, and spread out above it if asked, but
            // never so far that the spread alone would push the retry past the deadline.
            Some(wait) => {
                let mut spread = self.config.retry_after_jitter;
                if let Some(deadline) = self.config.deadline {
                    let elapsed = state.started.map_or(Duration::ZERO, |s| s.elapsed());
                    let room = deadline.saturating_sub(elapsed).saturating_sub(wait);
                    // Keep clear of the deadline itself (the check below is `>=`).
                    spread = spread.min(room.saturating_sub(Duration::from_millis(1)));
                }
                wait.saturating_add(spread.mul_f64(fastrand::f64()))
            }
        };
        if let Some(deadline) = self.config.deadline {
            let elapsed = state.started.map_or(Duration::ZERO, |s| s.elapsed());
            if elapsed.saturating_add(delay) >= deadline {
                return give_up(self, GiveUpReason::Deadline);
            }
        }
        if let Some(budget) = &self.config.budget {
            if !budget.withdraw() {
                return give_up(self, GiveUpReason::Budget);
            }
        }
        state.previous_delay = delay;
        self.notify(
            attempt,
            status,
            Decision::Retry {
                reason,
                delay,
                retry_after: server_wait.filter(|w| *w >= backoff),
            },
            timeout,
        );
        Some(delay)
    }

    /// The request's deadline passed while no attempt was in flight (its body still buffering,
    /// the client not ready, an attempt due to start past it): a `deadline` give-up, and no
    /// attempt, for nothing was sent and failed.
    pub(crate) fn deadline_passed_unsent(&self) {
        self.config.metrics.give_up(GiveUpReason::Deadline.index());
    }

    /// Counts a request made through the client (once, whatever becomes of it).
    pub(crate) fn request_made(&self) {
        self.config.metrics.request();
    }

    /// Starts the bookkeeping of a new request (and pays its deposit into the budget). Its
    /// deadline counts from `started` (now if `None`): the instant the client's own deadline
    /// timer started, so that the policy never starts a wait the client would cut.
    pub(crate) fn first_attempt(&self, started: Option<Instant>) -> Attempts {
        if let Some(budget) = &self.config.budget {
            budget.deposit();
        }
        Attempts {
            count: 1,
            started: self
                .config
                .deadline
                .map(|_| started.unwrap_or_else(Instant::now)),
            previous_delay: Duration::ZERO,
        }
    }
}

/// The server's `Retry-After` as a wait, a date read against the response's `Date` when it has
/// one (to cancel clock skew), else against the local clock. Unparseable values are ignored
/// (the backoff applies), and every value is bounded by [`RetryAfter::MAX_DELAY`].
///
/// A 429 or 503 without `Retry-After` may still say when to come back in its `RateLimit`
/// field (draft-ietf-httpapi-ratelimit-headers): the wait is then the longest `t` of the
/// policies with no request left (`r=0`). `Retry-After` wins when both are present.
pub(crate) fn server_wait(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    let Some(value) = headers.get(header::RETRY_AFTER) else {
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            return ratelimit_wait(headers);
        }
        return None;
    };
    let ra = RetryAfter::from_header_value(value).ok()?;
    let now = headers
        .get(header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .unwrap_or_else(SystemTime::now);
    Some(ra.delay_from(now).min(RetryAfter::MAX_DELAY))
}

/// The delay the policy waits after a first attempt answered 503 with `headers` (a `GET`, no
/// retry-after jitter, the default backoff), with `cap` as the longest `Retry-After` honoured:
/// for the fuzz targets (`crate::__fuzz`).
#[cfg(fuzzing)]
pub(crate) fn fuzz_retry_delay(cap: Duration, headers: &HeaderMap) -> Option<Duration> {
    let policy = RetryPolicy::builder().retry_after_cap(cap).build().ok()?;
    let mut state = Attempts {
        count: 1,
        started: None,
        previous_delay: Duration::ZERO,
    };
    let request = RequestFacts {
        method: &Method::GET,
        idempotency_key: false,
        replayable: true,
    };
    let outcome = AttemptOutcome::Response(StatusCode::SERVICE_UNAVAILABLE, headers);
    policy.decide_parts(&mut state, &request, outcome)
}

/// The `RateLimit` field (a structured-field list, possibly over several field lines): the
/// longest `t` of its items with `r=0`, in seconds. `None` when no item is exhausted or the
/// field is not a list that can be read: a malformed structured field is ignored whole
/// (RFC 9651 section 4.2), and so is one with a member that is no `RateLimit` item.
///
/// Parsed by `sfv`: the lines are parsed in turn into one list, which is what combining them
/// with commas would give.
fn ratelimit_wait(headers: &HeaderMap) -> Option<Duration> {
    let mut list = sfv::List::new();
    for value in headers.get_all(RATELIMIT) {
        sfv::Parser::new(value.as_bytes())
            .parse_list_with_visitor(&mut list)
            .ok()?;
    }
    let mut longest: Option<u64> = None;
    for member in &list {
        let (remaining, reset) = ratelimit_item(member)?;
        if remaining == Some(0) {
            if let Some(t) = reset {
                longest = Some(longest.map_or(t, |l| l.max(t)));
            }
        }
    }
    longest.map(|secs| Duration::from_secs(secs).min(RetryAfter::MAX_DELAY))
}

/// `RateLimit`.
const RATELIMIT: header::HeaderName = header::HeaderName::from_static("ratelimit");

/// The `r` and `t` parameters of one `RateLimit` member (`"name";r=0;t=7`), in any order and
/// among any others. `None` when the member is no `RateLimit` item: an inner list, a name that
/// is neither a string nor a token, `r` or `t` not a non-negative integer.
fn ratelimit_item(member: &sfv::ListEntry) -> Option<(Option<u64>, Option<u64>)> {
    let sfv::ListEntry::Item(item) = member else {
        return None;
    };
    if item.bare_item.as_string().is_none() && item.bare_item.as_token().is_none() {
        return None;
    }
    let int = |key: &str| -> Option<Option<u64>> {
        match item.params.get(key) {
            None => Some(None),
            Some(value) => u64::try_from(value.as_integer()?).ok().map(Some),
        }
    };
    Some((int("r")?, int("t")?))
}

/// What the policy needs to know of a request, from any client's request type.
#[derive(Debug)]
pub(crate) struct RequestFacts<'a> {
    pub(crate) method: &'a Method,
    /// The request carries an `Idempotency-Key`.
    pub(crate) idempotency_key: bool,
    pub(crate) replayable: bool,
}

/// How an attempt ended, from any client's response and error types.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AttemptOutcome<'a> {
    Response(StatusCode, &'a HeaderMap),
    Error(&'a (dyn Error + 'static)),
    /// The client's own deadline cut the attempt in flight. Only the client that enforces
    /// this policy's deadline says so; an error, whatever its type, is an `Error`.
    DeadlineCut,
}

/// Idempotent methods (RFC 9110 §9.2.2).
fn is_idempotent_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

#[cfg(test)]
fn is_idempotent<B>(req: &Request<B>) -> bool {
    is_idempotent_method(req.method()) || req.headers().contains_key(IDEMPOTENCY_KEY)
}

/// Whether an error proves the server never processed the request: the connection was refused,
/// or the server reset the HTTP/2 stream with `REFUSED_STREAM` (RFC 9113 §8.7: "the stream was
/// closed prior to any processing").
///
/// A `GOAWAY` is not taken as proof: h2 reports the same `GOAWAY` error to streams at or below
/// its last-stream-id (which the server may have processed) when the connection then closes.
/// Requests that a `GOAWAY` excluded before they were written are re-sent by hyper-util's client
/// itself (`retry_canceled_requests`, on by default).
pub(crate) fn never_processed(error: &(dyn Error + 'static)) -> bool {
    crate::error_chain::sources(error).any(|e| {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if h2.is_reset() && h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return true;
            }
        }
        false
    })
}

fn set_status(set: &mut [u64; 4], status: u16, on: bool) {
    if let Some(i) = status.checked_sub(400).filter(|i| *i < 256) {
        let (word, bit) = (usize::from(i / 64), i % 64);
        if on {
            set[word] |= 1 << bit;
        } else {
            set[word] &= !(1 << bit);
        }
    }
}

/// The statuses `retry_status` accepts: 408, 429, and 5xx but 501 and 505. Any other says the
/// request itself is wrong (4xx), or is not a failure at all.
fn can_retry_status(status: u16) -> bool {
    matches!(status, 408 | 429) || ((500..=599).contains(&status) && status != 501 && status != 505)
}

fn status_set(set: &[u64; 4], status: u16) -> bool {
    status
        .checked_sub(400)
        .filter(|i| *i < 256)
        .is_some_and(|i| set[usize::from(i / 64)] & (1 << (i % 64)) != 0)
}

impl RetryPolicyBuilder {
    /// The total number of attempts, the first included (default 3; 1 turns retries off).
    ///
    /// [`build`](Self::build) rejects 0.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// The backoff between attempts (default [`Backoff::default`]).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// The longest `Retry-After` the client will wait for (default 5 minutes). A longer one
    /// returns the response at once, so the caller can decide.
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.config.retry_after_cap = cap;
        self
    }

    /// A random extra in `[0, jitter]` added above the server's `Retry-After` when it sets the
    /// wait (default none: the retry goes out at the server's instant).
    ///
    /// `Retry-After` is a floor: no retry goes out before it, with or without this. But when a
    /// server names one instant for everyone (an HTTP-date, or the end of a maintenance window),
    /// every client of a fleet comes back in the same second; this spreads them over the
    /// following `jitter`. See the fleet simulation in `BENCHMARKS.md`.
    pub fn retry_after_jitter(mut self, jitter: Duration) -> Self {
        self.config.retry_after_jitter = jitter;
        self
    }

    /// An overall deadline across attempts and waits (default none). No wait is started that
    /// would end past it; [`RetryLayer`](super::RetryLayer) and
    /// [`RetryMiddleware`](super::RetryMiddleware) also cut an attempt in flight at the
    /// deadline, with a [`DeadlineExceeded`](super::error::DeadlineExceeded) error. It counts
    /// from the moment the request is handed to the layer or the middleware: the time spent
    /// buffering its body and waiting for the client to be ready is part of it.
    ///
    /// An attempt the deadline cuts was sent: it reaches [`on_attempt`](Self::on_attempt) and
    /// the metrics as an attempt given up for [`GiveUpReason::Deadline`]. A deadline that passes
    /// with no attempt in flight is counted as that give-up only. A `DeadlineExceeded` that an
    /// attempt returns (from a retry client nested under this one, with a deadline of its own)
    /// is not this deadline: it is an error of that attempt, retried by the rules of any error
    /// before a response.
    ///
    /// [`build`](Self::build) rejects a zero deadline (every request would fail unsent).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = Some(deadline);
        self
    }

    /// Cuts each attempt after `timeout` (default none) with an
    /// [`AttemptTimedOut`](super::error::AttemptTimedOut) error, which is retried like any
    /// error before a response (so only for requests safe to repeat). Applied by
    /// [`RetryLayer`](super::RetryLayer) and [`RetryMiddleware`](super::RetryMiddleware); with
    /// `tower::retry` alone, put a `tower::timeout` layer under the retry instead.
    ///
    /// [`build`](Self::build) rejects a zero timeout.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.config.attempt_timeout = Some(timeout);
        self
    }

    /// Also retry this status: 408, 429, or a 5xx other than 501 and 505.
    ///
    /// [`build`](Self::build) rejects any other status (404, 501, 200, ...): a 4xx or a 501
    /// says the request itself is wrong, and sending it again cannot help.
    pub fn retry_status(mut self, status: StatusCode) -> Self {
        let s = status.as_u16();
        if can_retry_status(s) {
            set_status(&mut self.config.statuses, s, true);
        } else if self.unretryable_status.is_none() {
            self.unretryable_status = Some(status);
        }
        self
    }

    /// Do not retry this status. Any status is accepted: one that is never retried stays so.
    pub fn no_retry_status(mut self, status: StatusCode) -> Self {
        set_status(&mut self.config.statuses, status.as_u16(), false);
        self
    }

    /// Retry non-idempotent requests (POST, PATCH, ...) too (default `false`: only when they
    /// carry `Idempotency-Key` or the failure proves they were never processed).
    pub fn retry_non_idempotent(mut self, enabled: bool) -> Self {
        self.config.retry_non_idempotent = enabled;
        self
    }

    /// Names this policy in its metrics (`name="<name>"` on every series, feature `metrics`)
    /// and in its attempt spans.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.config.metrics = RetryMetrics::new(Meter::new(Some(name.into())));
        self
    }

    /// Shares a [`RetryBudget`] (default none). Every clone of the policy uses the same one.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.config.budget = Some(budget);
        self
    }

    /// Calls `hook` after every attempt with what the policy decided (for logs and metrics).
    pub fn on_attempt<F>(mut self, hook: F) -> Self
    where
        F: Fn(&AttemptEvent) + Send + Sync + 'static,
    {
        self.config.on_attempt = Some(Arc::new(hook));
        self
    }

    /// Checks the settings and builds the policy.
    ///
    /// # Errors
    ///
    /// An [`InvalidConfig`] naming the first invalid setting: `max_attempts` of 0,
    /// `retry_status` with a status that cannot be retried, a zero `deadline` or
    /// `attempt_timeout`. ([`Backoff::new`] and [`RetryBudget::new`] check their own values.)
    pub fn build(self) -> Result<RetryPolicy, InvalidConfig> {
        let config = self.config;
        if config.max_attempts == 0 {
            return Err(InvalidConfig::new("max_attempts", "must be at least 1"));
        }
        if self.unretryable_status.is_some() {
            return Err(InvalidConfig::new(
                "retry_status",
                "only 408, 429 and 5xx other than 501 and 505 can be retried",
            ));
        }
        if config.deadline.is_some_and(|d| d.is_zero()) {
            return Err(InvalidConfig::new("deadline", "must be longer than zero"));
        }
        if config.attempt_timeout.is_some_and(|t| t.is_zero()) {
            return Err(InvalidConfig::new(
                "attempt_timeout",
                "must be longer than zero",
            ));
        }
        Ok(RetryPolicy {
            config: Arc::new(config),
        })
    }
}

impl RetryPolicy {
    pub(crate) fn deadline(&self) -> Option<Duration> {
        self.config.deadline
    }

    pub(crate) fn attempt_timeout(&self) -> Option<Duration> {
        self.config.attempt_timeout
    }
}

impl<B, ResB> tower::retry::Policy<Request<ReplayBody<B>>, Response<ResB>, BoxError>
    for RetryPolicy
{
    type Future = Sleep;

    fn retry(
        &mut self,
        req: &mut Request<ReplayBody<B>>,
        result: &mut Result<Response<ResB>, BoxError>,
    ) -> Option<Self::Future> {
        let delay = self.decide(req, result)?;
        Some(tokio::time::sleep(delay))
    }

    /// Called by `tower::retry` before every attempt, with the request about to be sent; the
    /// clone is kept for the next attempt.
    fn clone_request(&mut self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        let state = match req.body().attempts() {
            // The first attempt of a new request: from `ReplayBody::buffered` (no bookkeeping
            // yet), or from `Retry`, which noted when the deadline started.
            None => self.first_attempt(None),
            Some(state) if state.count == 0 => self.first_attempt(state.started),
            Some(state) => state.next(),
        };
        let mut body = req.body().try_clone()?;
        body.set_attempts(state);
        let mut clone = Request::new(body);
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_set_bounds() {
        let p = RetryPolicy::default();
        for s in [500, 502, 503, 504, 429] {
            assert!(p.status_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 400, 404, 501, 505, 599] {
            assert!(!p.status_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        let p = RetryPolicy::builder()
            .retry_status(StatusCode::REQUEST_TIMEOUT)
            .retry_status(StatusCode::from_u16(599).unwrap())
            .no_retry_status(StatusCode::INTERNAL_SERVER_ERROR)
            .no_retry_status(StatusCode::NOT_FOUND)
            .build()
            .unwrap();
        assert!(p.status_retryable(StatusCode::REQUEST_TIMEOUT));
        assert!(p.status_retryable(StatusCode::from_u16(599).unwrap()));
        assert!(!p.status_retryable(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!p.status_retryable(StatusCode::NOT_FOUND));
    }

    #[test]
    fn the_defaults_are_valid() {
        let p = RetryPolicy::default();
        assert_eq!(p.config.max_attempts, 3);
        assert_eq!(p.deadline(), None);
        assert_eq!(p.attempt_timeout(), None);
    }

    #[test]
    fn max_attempts_zero_is_rejected() {
        let err = RetryPolicy::builder().max_attempts(0).build().unwrap_err();
        assert_eq!(err.setting(), "max_attempts");
        assert_eq!(err.to_string(), "invalid max_attempts: must be at least 1");
        let p = RetryPolicy::builder().max_attempts(1).build().unwrap();
        assert_eq!(p.config.max_attempts, 1);
    }

    #[test]
    fn statuses_that_cannot_be_retried_are_rejected() {
        for s in [404, 400, 200, 301, 501, 505, 600, 999] {
            let status = StatusCode::from_u16(s).unwrap();
            let err = RetryPolicy::builder()
                .retry_status(status)
                .build()
                .unwrap_err();
            assert_eq!(err.setting(), "retry_status", "{s}");
        }
        // A later valid status does not hide an earlier invalid one.
        let err = RetryPolicy::builder()
            .retry_status(StatusCode::NOT_FOUND)
            .retry_status(StatusCode::REQUEST_TIMEOUT)
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "retry_status");
        for s in [408, 429, 500, 502, 503, 504, 507, 599] {
            let status = StatusCode::from_u16(s).unwrap();
            assert!(
                RetryPolicy::builder().retry_status(status).build().is_ok(),
                "{s}"
            );
        }
    }

    #[test]
    fn zero_durations_are_rejected() {
        let err = RetryPolicy::builder()
            .deadline(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "deadline");
        let err = RetryPolicy::builder()
            .attempt_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "attempt_timeout");
        let p = RetryPolicy::builder()
            .deadline(Duration::from_nanos(1))
            .attempt_timeout(Duration::from_nanos(1))
            .retry_after_cap(Duration::ZERO)
            .build()
            .unwrap();
        assert_eq!(p.attempt_timeout(), Some(Duration::from_nanos(1)));
    }

    #[test]
    fn retry_after_reads_dates_against_the_date_header() {
        let mut h = HeaderMap::new();
        h.insert(
            header::DATE,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        h.insert(
            header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:39 GMT".parse().unwrap(),
        );
        assert_eq!(
            server_wait(StatusCode::SERVICE_UNAVAILABLE, &h),
            Some(Duration::from_secs(2))
        );
        h.insert(header::RETRY_AFTER, "garbage".parse().unwrap());
        assert_eq!(server_wait(StatusCode::SERVICE_UNAVAILABLE, &h), None);
        h.insert(
            header::RETRY_AFTER,
            "99999999999999999999999".parse().unwrap(),
        );
        assert_eq!(
            server_wait(StatusCode::SERVICE_UNAVAILABLE, &h),
            Some(RetryAfter::MAX_DELAY)
        );
    }

    #[test]
    fn ratelimit_t_is_read_when_retry_after_is_absent() {
        let wait = |status: u16, fields: &[&'static str]| {
            let mut h = HeaderMap::new();
            for f in fields {
                h.append(RATELIMIT, f.parse().unwrap());
            }
            server_wait(StatusCode::from_u16(status).unwrap(), &h)
        };
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(wait(429, &[r#""burst";r=0;t=7"#]), secs(7));
        assert_eq!(wait(503, &[r#""burst";r=0;t=7"#]), secs(7));
        // Only 429 and 503 are read.
        assert_eq!(wait(500, &[r#""burst";r=0;t=7"#]), None);
        // The longest wait of the exhausted policies, over several field lines.
        assert_eq!(
            wait(
                429,
                &[r#""a";r=0;t=3, "b;x";r=5;t=99"#, r#"c;r=0;t=9;pk=:AAA=:"#]
            ),
            secs(9)
        );
        // Nothing exhausted: no wait from the field.
        assert_eq!(wait(429, &[r#""a";r=1;t=3"#]), None);
        // Malformed: ignored whole.
        for bad in [
            r#""a;r=0;t=3"#,
            r#""a";r=0;t=-3"#,
            r#""a";r=0;t=1.5"#,
            r#";r=0;t=3"#,
            r#""a";r=0;t=99999999999999999999"#,
            r#""a";r=x;t=3"#,
        ] {
            assert_eq!(wait(429, &[bad]), None, "{bad}");
        }
        // Read by `sfv` as RFC 9651 lists: parameters in any order and among unknown ones, a
        // token name, whitespace around members, several field lines, a duplicate parameter
        // (the last wins), a name holding a comma or an escaped quote.
        assert_eq!(wait(429, &[r#""a";t=4;x=?1;r=0"#]), secs(4));
        assert_eq!(wait(429, &[r#"burst;r=0;t=5;pk=:AAA=:;z="q""#]), secs(5));
        assert_eq!(wait(429, &["  \"a\";r=0;t=2 ,\t\"b\";r=0;t=6  "]), secs(6));
        assert_eq!(wait(429, &[r#""a";r=0;t=2"#, r#""b";r=0;t=8"#]), secs(8));
        assert_eq!(wait(429, &[r#""a";r=0;t=2;t=11"#]), secs(11));
        assert_eq!(wait(429, &[r#""a,\"b";r=0;t=3, "c";r=2;t=50"#]), secs(3));
        // A `t` above the longest honoured wait is bounded.
        assert_eq!(
            wait(429, &[r#""a";r=0;t=999999999999999"#]),
            Some(RetryAfter::MAX_DELAY)
        );
        // Malformed anywhere, over any line: the whole field is ignored, not just its item.
        for bad in [
            &[r#""a";r=0;t=7, "b";r=0;t=1.5"#][..],
            &[r#""a";r=0;t=7, "b";r=0;t="3""#],
            &[r#""a";r=0;t=7, "b";r=0;t=?1"#],
            &[r#""a";r=0;t=7"#, r#""b";r=0;t=-1"#],
            &[r#""a";r=0;t=7"#, r#""b";r=0;t=2,"#],
            &[r#""a";r=0;t=7, ("b" "c");r=0;t=3"#],
            &[r#""a";r=0;t=7, 5;r=0;t=3"#],
            &[r#""a";r=0;t=7;R=1"#],
            &[r#""a";r=0;t=7 "b""#],
            &[r#""a";r=0;t=07x"#],
        ] {
            assert_eq!(wait(429, bad), None, "{bad:?}");
        }
        // Retry-After wins.
        let mut h = HeaderMap::new();
        h.insert(RATELIMIT, r#""a";r=0;t=30"#.parse().unwrap());
        h.insert(header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(
            server_wait(StatusCode::TOO_MANY_REQUESTS, &h),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn never_processed_detection() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(never_processed(&refused));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!never_processed(&reset));
        // A reason alone (not a reset received from the server) proves nothing; the real
        // REFUSED_STREAM case runs against an h2 server in tests/retry.rs.
        let h2_reason = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert!(!never_processed(&h2_reason));
    }

    #[test]
    fn idempotency() {
        let req = |m: Method| Request::builder().method(m).body(()).unwrap();
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert!(is_idempotent(&req(m)));
        }
        assert!(!is_idempotent(&req(Method::POST)));
        assert!(!is_idempotent(&req(Method::PATCH)));
        let keyed = Request::post("/")
            .header(IDEMPOTENCY_KEY, "abc")
            .body(())
            .unwrap();
        assert!(is_idempotent(&keyed));
    }
}
