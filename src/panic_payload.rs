//! Panic payloads caught with `catch_unwind`: their message for the log, and their drop.

use std::{
    any::Any,
    panic::{catch_unwind, AssertUnwindSafe},
};

/// Drops a panic payload without letting a panic in its destructor escape (that second
/// payload is leaked, as std does).
pub(crate) fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(|| drop(payload))) {
        // Dropping this one could panic again, and so on: it is leaked on purpose.
        #[allow(clippy::mem_forget)]
        std::mem::forget(again);
    }
}

/// The message of a panic payload (`&str` or `String`), for the log.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "<non-string panic payload>"
    }
}
