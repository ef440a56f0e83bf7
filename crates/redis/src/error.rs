//! Errors of the Redis L2.

use ksp_core::ConfigError;

/// A Redis operation did not happen.
///
/// None of these ever fails a send: the producer carries on as if there were no L2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum L2Error {
    /// A setting was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The circuit breaker is open: Redis was not asked.
    #[error("redis circuit breaker is open")]
    BreakerOpen,
    /// Redis failed, timed out or was unreachable.
    #[error("redis: {0}")]
    Redis(#[source] fred::error::Error),
    /// Called outside a Tokio runtime: the client's connection (and the fleet's tasks) run
    /// on one.
    #[error("no Tokio runtime: the Redis L2 must be started from within one")]
    NoRuntime,
    /// Redis answered something this crate does not accept.
    #[error("unexpected answer from redis: {0}")]
    Unexpected(String),
}

/// Results of this crate.
pub type L2Result<T> = std::result::Result<T, L2Error>;
