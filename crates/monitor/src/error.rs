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
    /// The monitor task is no longer running (it was shut down, or it panicked).
    #[error("the health monitor has stopped")]
    Stopped,
    /// The monitor task panicked.
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
