//! Errors shared by every crate of the workspace.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// A boxed error that crosses crate boundaries (a collector's own failure, say).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A setting was rejected when something was built.
///
/// The message names the setting, the value it was given and what is allowed, so that a bad
/// configuration file or builder call can be fixed from the error alone:
///
/// ```
/// # use ksp_core::ThresholdCalculator;
/// let err = ThresholdCalculator::new(1.5, 1000).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid `health_threshold` = 1.5: expected a number in [0, 1]",
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{setting}` = {value}: expected {expected}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The name of the setting, as it is spelled in builders and configuration files.
    pub setting: &'static str,
    /// The rejected value, rendered for humans (secrets are never rendered).
    pub value: String,
    /// What the setting accepts.
    pub expected: String,
}

impl ConfigError {
    /// A rejected setting.
    pub fn new(
        setting: &'static str,
        value: impl fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Self {
            setting,
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// A rejected duration, rendered the way `Debug` renders durations (`1.5s`, `0ns`).
    pub fn duration(setting: &'static str, value: Duration, expected: impl Into<String>) -> Self {
        Self::new(setting, format_args!("{value:?}"), expected)
    }
}

/// A lag collection failed as a whole.
///
/// The monitor keeps the last snapshot when this happens; the snapshot turns stale (and routing
/// falls back to librdkafka's partitioner) once it is older than `max_staleness`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    /// The collection did not finish within its budget.
    #[error("lag collection did not finish within {budget:?}")]
    Timeout {
        /// The budget it was given.
        budget: Duration,
    },
    /// The source of lag data failed.
    #[error("{context}")]
    Source {
        /// What was being done, for example `offset fetch for group \`orders\``.
        context: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
}

impl CollectError {
    /// A failure of the lag source, with what was being done.
    pub fn source(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Source {
            context: context.into(),
            source: source.into(),
        }
    }
}
