//! Errors of the monitor crate.

use std::sync::Arc;

use ksp_core::{CollectError, ConfigError};
use rdkafka::error::KafkaError;

/// Result of monitor operations.
pub type MonitorResult<T> = Result<T, MonitorError>;

/// Why a monitor operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// A setting was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `spawn` was called outside a Tokio runtime.
    #[error(
        "the health monitor needs a Tokio runtime: spawn it from within one, or use `spawn_on`"
    )]
    NoRuntime,
    /// The monitor task is no longer running (it was shut down or cancelled).
    #[error("the health monitor has stopped")]
    Stopped,
    /// The blocking producer may not wait on this thread: it drives a one-thread Tokio
    /// runtime, the one that would have to run the monitor (the blocking producer, called from
    /// async code), or it runs one of the producer's callbacks, which would stall its delivery
    /// reports.
    #[error(
        "cannot wait for the health monitor on this thread: it drives a one-thread Tokio \
         runtime or runs one of the producer's callbacks; call from a plain thread, or use the \
         async producer"
    )]
    WouldBlock,
    /// There is no monitor: smart routing is disabled on this producer.
    #[error("smart routing is disabled: there is no health monitor")]
    Disabled,
    /// The monitor task panicked. Its supervisor restarts it; a request in progress at the
    /// time gets this error.
    #[error("the health monitor task panicked: {0}")]
    Panicked(String),
    /// A lag collection failed; the previous snapshot was kept.
    #[error("lag collection failed")]
    Collect(#[source] Arc<CollectError>),
    /// The Kafka client of the lag collector could not be created.
    #[error("{context}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// An error with its chain of causes, `a: b: c`.
pub(crate) fn render_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut rendered = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        rendered.push_str(": ");
        rendered.push_str(&cause.to_string());
        source = cause.source();
    }
    rendered
}
