//! The metrics the layers record through the [`metrics`](https://docs.rs/metrics/0.24) facade
//! (feature `metrics`): why every generated response was generated, and every decision behind
//! it. The exporter is your choice (`metrics-exporter-prometheus` in the demo).
//!
//! **Install the recorder before the first request.** Each layer instance registers its
//! handles with the recorder installed when it first needs them, and keeps them: that is what
//! makes a counted request cost an atomic add rather than a registry lookup.
//!
//! Label values are bounded: a reason, a cause, a state, a status code, the instance's `name`.
//! Never a path, a client address or an error message. Each generated response is counted
//! exactly once, by the layer that generated it: an outer `CatchLayer` does not count a 503 that
//! an inner `ShedLayer` made.
//!
//! Every series of a layer carries `name="<name>"` when the layer was given a name
//! (`CatchLayer::name`, `MaintenanceLayer::name`, `ShedLayerBuilder::name`,
//! `BreakerBuilder::name`, `RetryPolicyBuilder::name`, `RateLimitBuilder::name`); unnamed layers
//! leave the label out.
//! Label keys use the OpenTelemetry names where one exists (`http.response.status_code`,
//! `error.type`); a Prometheus exporter writes them with underscores
//! (`http_response_status_code`, `error_type`).
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `tower_5xx_responses_generated_total` | counter | `http.response.status_code`, `error.type` | responses a layer generated; `error.type` is the [`Reason`](crate::Reason): `internal`, `panic`, `timeout`, `shed`, `maintenance`, `circuit_open`, `rate_limited`, `draining`, `bad_gateway`, `gateway_timeout`, `classified` |
//! | `tower_5xx_maintenance_active` | gauge | | 1 while maintenance is on, 0 otherwise, as the last request through the layer found it |
//! | `tower_5xx_maintenance_announced_end_seconds` | gauge | | the announced end of the current maintenance (Unix seconds; 0: none announced) |
//! | `tower_5xx_maintenance_bypassed_total` | counter | `rule` (`path`, `header`, `ip`, `predicate`) | requests let through during maintenance |
//! | `tower_5xx_shed_limit` | gauge | | the concurrency limit (changes with an adaptive limit) |
//! | `tower_5xx_shed_in_flight` | gauge | | requests running in the inner service |
//! | `tower_5xx_shed_queued` | gauge | | requests waiting for a permit |
//! | `tower_5xx_shed_rejected_total` | counter | `cause` (`queue_full`, `waited_too_long`, `low_priority`) | requests shed |
//! | `tower_5xx_shed_queue_wait_seconds` | histogram | | how long queued requests waited (admitted or not) |
//! | `tower_5xx_breaker_state` | gauge | `state` (`closed`, `open`, `half_open`, `forced_open`, `disabled`) | breakers in each state: 1 for a breaker's current state, 0 for the others; the keyed breakers of a client (one per origin) add up under their set's name |
//! | `tower_5xx_breaker_transitions_total` | counter | `to` (`closed`, `open`, `half_open`, `forced_open`, `disabled`) | state changes |
//! | `tower_5xx_breaker_calls_total` | counter | `outcome` (`success`, `failure`, `slow`, `rejected`) | calls through the breaker; a slow failure counts as `failure` |
//! | `tower_5xx_retry_requests_total` | counter | | requests made through the retry client, each once however many attempts it took (or none: refused, or the deadline passed first); `attempts / requests` is the retry amplification |
//! | `tower_5xx_retry_attempts_total` | counter | | requests sent by the retry client, first attempts included; an attempt the overall deadline cuts was sent and counts (with a `deadline` give-up); an attempt the endpoint's client breaker refuses was not, and counts only as a `circuit_open` give-up |
//! | `tower_5xx_retry_retries_total` | counter | `cause` (`status`, `connection`, `timeout`) | attempts that were retried, by why |
//! | `tower_5xx_retry_give_ups_total` | counter | `cause` (`attempts_exhausted`, `budget_exhausted`, `retry_after_over_cap`, `deadline`, `not_idempotent`, `body_not_replayable`, `circuit_open`) | retryable failures that were not retried; `deadline` also counts every request the overall deadline ended, whether it cut an attempt in flight or passed with nothing in flight (the body still buffering, the client not ready) |
//! | `tower_5xx_retry_wait_seconds` | histogram | `source` (`retry_after`, `backoff`) | the waits before retries, and whether the server's `Retry-After` set them |
//! | `tower_5xx_retry_budget_balance` | gauge | | retries the budget allows right now |
//!
//! Call [`describe`] once after installing the recorder to give every metric its help text and
//! unit.
//!
//! ```
//! # #[cfg(feature = "catch")] {
//! use tower_5xx::catch::CatchLayer;
//!
//! // With `metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()` (or any
//! // recorder) installed first:
//! tower_5xx::metrics::describe();
//! let layer = CatchLayer::new().name("api");
//! # let _ = layer;
//! # }
//! ```

/// Responses a layer generated, by status and reason.
pub const RESPONSES_GENERATED: &str = "tower_5xx_responses_generated_total";
/// Whether maintenance is on (1) or off (0).
pub const MAINTENANCE_ACTIVE: &str = "tower_5xx_maintenance_active";
/// The announced end of the current maintenance, in Unix seconds (0: none).
pub const MAINTENANCE_ANNOUNCED_END: &str = "tower_5xx_maintenance_announced_end_seconds";
/// Requests let through during maintenance, by bypass rule.
pub const MAINTENANCE_BYPASSED: &str = "tower_5xx_maintenance_bypassed_total";
/// The shed layer's concurrency limit.
pub const SHED_LIMIT: &str = "tower_5xx_shed_limit";
/// Requests running in the shed layer's inner service.
pub const SHED_IN_FLIGHT: &str = "tower_5xx_shed_in_flight";
/// Requests waiting in the shed layer's queue.
pub const SHED_QUEUED: &str = "tower_5xx_shed_queued";
/// Requests shed, by cause.
pub const SHED_REJECTED: &str = "tower_5xx_shed_rejected_total";
/// Queue waits, in seconds.
pub const SHED_QUEUE_WAIT: &str = "tower_5xx_shed_queue_wait_seconds";
/// The breaker's state (1 for the current one).
pub const BREAKER_STATE: &str = "tower_5xx_breaker_state";
/// Breaker state changes, by the state entered.
pub const BREAKER_TRANSITIONS: &str = "tower_5xx_breaker_transitions_total";
/// Calls through a breaker, by outcome.
pub const BREAKER_CALLS: &str = "tower_5xx_breaker_calls_total";
/// Requests made through the retry client, each once.
pub const RETRY_REQUESTS: &str = "tower_5xx_retry_requests_total";
/// Requests the retry client sent.
pub const RETRY_ATTEMPTS: &str = "tower_5xx_retry_attempts_total";
/// Retries, by cause.
pub const RETRY_RETRIES: &str = "tower_5xx_retry_retries_total";
/// Retryable failures not retried, by cause.
pub const RETRY_GIVE_UPS: &str = "tower_5xx_retry_give_ups_total";
/// Waits before retries, in seconds.
pub const RETRY_WAIT: &str = "tower_5xx_retry_wait_seconds";
/// Retries the budget allows right now.
pub const RETRY_BUDGET_BALANCE: &str = "tower_5xx_retry_budget_balance";

/// Gives every metric above its help text and unit, through the installed recorder.
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        RESPONSES_GENERATED,
        "Responses a tower-5xx layer generated, by status and reason (error.type)"
    );
    describe_gauge!(MAINTENANCE_ACTIVE, "1 while maintenance is on");
    describe_gauge!(
        MAINTENANCE_ANNOUNCED_END,
        Unit::Seconds,
        "The announced end of the current maintenance (Unix time; 0: none)"
    );
    describe_counter!(
        MAINTENANCE_BYPASSED,
        "Requests let through during maintenance, by bypass rule"
    );
    describe_gauge!(SHED_LIMIT, "The shed layer's concurrency limit");
    describe_gauge!(SHED_IN_FLIGHT, "Requests running behind the shed layer");
    describe_gauge!(SHED_QUEUED, "Requests waiting in the shed layer's queue");
    describe_counter!(SHED_REJECTED, "Requests shed, by cause");
    describe_histogram!(
        SHED_QUEUE_WAIT,
        Unit::Seconds,
        "How long queued requests waited"
    );
    describe_gauge!(BREAKER_STATE, "Circuit breakers in each state");
    describe_counter!(BREAKER_TRANSITIONS, "Circuit breaker state changes");
    describe_counter!(BREAKER_CALLS, "Calls through a circuit breaker, by outcome");
    describe_counter!(
        RETRY_REQUESTS,
        "Requests made through the retry client, each once"
    );
    describe_counter!(RETRY_ATTEMPTS, "Requests the retry client sent");
    describe_counter!(RETRY_RETRIES, "Retries, by cause");
    describe_counter!(RETRY_GIVE_UPS, "Retryable failures not retried, by cause");
    describe_histogram!(
        RETRY_WAIT,
        Unit::Seconds,
        "Waits before retries, by what set them"
    );
    describe_gauge!(RETRY_BUDGET_BALANCE, "Retries the budget allows right now");
}
