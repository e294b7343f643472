//! Errors of the catch module.

use std::fmt;

use crate::ErrorId;

/// The error a response body reports when it panicked (in `poll_frame`, `size_hint` or
/// `is_end_stream`).
///
/// By then the status and headers are decided, and perhaps on the wire, so the only honest
/// outcome is to end the body with an error (hyper then closes the HTTP/1.1 connection or
/// resets the h2 stream, and the client sees a cut response) instead of letting the panic
/// unwind the connection task. The panic and this id are logged at error level. What a client
/// gets in each case: [A panic while the body streams](super#a-panic-while-the-body-streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPanicked {
    error_id: ErrorId,
}

impl BodyPanicked {
    pub(crate) fn new(error_id: ErrorId) -> Self {
        Self { error_id }
    }

    /// The id under which the panic was logged.
    pub fn error_id(&self) -> ErrorId {
        self.error_id
    }
}

impl fmt::Display for BodyPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "response body panicked (error id {})", self.error_id)
    }
}

impl std::error::Error for BodyPanicked {}
