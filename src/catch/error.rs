//! Errors of the catch module.

use std::fmt;

use crate::ErrorId;

/// The error a response body reports when it panicked while streaming.
///
/// By then the status and headers are on the wire, so the only honest outcome is to end the
/// body with an error (hyper then resets the stream or closes the connection) instead of letting
/// the panic unwind the connection task. The panic and this id are logged at error level.
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
