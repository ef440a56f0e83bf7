//! Settings of the health monitor.

use std::time::Duration;

use ksp_core::{ConfigError, UncommittedPolicy};

use crate::damping::DampingConfig;

/// How the monitor watches: timings, flap damping, and how partitions without a committed
/// offset count. What it watches (the group and its topics) is given to the builder.
///
/// Every setting has a default; change the ones you need:
///
/// ```
/// # use std::time::Duration;
/// # use ksp_monitor::MonitorConfig;
/// let config = MonitorConfig::default().with_refresh_interval(Duration::from_secs(2));
/// assert_eq!(config.effective_max_staleness(), Duration::from_secs(6));
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MonitorConfig {
    /// Time between two lag collections. Default 5 s.
    pub refresh_interval: Duration,
    /// Health older than this is ignored (routing falls back to librdkafka's partitioner).
    /// Default: 3 × `refresh_interval`, so that two failed refreshes in a row are tolerated.
    pub max_staleness: Option<Duration>,
    /// How long one collection may take, retries included. Default: `refresh_interval`, at
    /// most 10 s.
    pub collect_timeout: Option<Duration>,
    /// How long a partition that turned unhealthy is kept out (see [`DampingConfig`]).
    pub damping: DampingConfig,
    /// How a partition on which the group never committed an offset counts (see
    /// [`UncommittedPolicy`]). Default [`UncommittedPolicy::RecentArrivals`].
    pub uncommitted: UncommittedPolicy,
}

impl MonitorConfig {
    /// Default `refresh_interval`.
    pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
    /// Smallest accepted `refresh_interval`.
    pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(10);
    /// Largest accepted `refresh_interval`.
    pub const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);
    /// Largest accepted `max_staleness`.
    pub const MAX_STALENESS: Duration = Duration::from_secs(24 * 3600);

    /// Sets `refresh_interval`.
    #[must_use]
    pub fn with_refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Sets `max_staleness`.
    #[must_use]
    pub fn with_max_staleness(mut self, staleness: Duration) -> Self {
        self.max_staleness = Some(staleness);
        self
    }

    /// Sets `collect_timeout`.
    #[must_use]
    pub fn with_collect_timeout(mut self, timeout: Duration) -> Self {
        self.collect_timeout = Some(timeout);
        self
    }

    /// Sets `damping`.
    #[must_use]
    pub fn with_damping(mut self, damping: DampingConfig) -> Self {
        self.damping = damping;
        self
    }

    /// Sets `uncommitted`.
    #[must_use]
    pub fn with_uncommitted(mut self, policy: UncommittedPolicy) -> Self {
        self.uncommitted = policy;
        self
    }

    /// `max_staleness`, or its default.
    pub fn effective_max_staleness(&self) -> Duration {
        self.max_staleness
            .unwrap_or_else(|| self.refresh_interval.saturating_mul(3))
    }

    /// `collect_timeout`, or its default.
    pub fn effective_collect_timeout(&self) -> Duration {
        self.collect_timeout
            .unwrap_or_else(|| self.refresh_interval.min(Duration::from_secs(10)))
    }

    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let interval = self.refresh_interval;
        if !(Self::MIN_REFRESH_INTERVAL..=Self::MAX_REFRESH_INTERVAL).contains(&interval) {
            return Err(ConfigError::duration(
                "refresh_interval",
                interval,
                format!(
                    "between {:?} and {:?}",
                    Self::MIN_REFRESH_INTERVAL,
                    Self::MAX_REFRESH_INTERVAL
                ),
            ));
        }
        let staleness = self.effective_max_staleness();
        if !(interval..=Self::MAX_STALENESS).contains(&staleness) {
            return Err(ConfigError::duration(
                "max_staleness",
                staleness,
                format!(
                    "at least refresh_interval ({interval:?}) and at most {:?}; below the \
                     refresh interval every snapshot would expire before the next one",
                    Self::MAX_STALENESS
                ),
            ));
        }
        let timeout = self.effective_collect_timeout();
        if timeout < Duration::from_millis(1) || timeout > staleness {
            return Err(ConfigError::duration(
                "collect_timeout",
                timeout,
                format!("between 1ms and max_staleness ({staleness:?})"),
            ));
        }
        self.damping.validate()
    }
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            refresh_interval: Self::DEFAULT_REFRESH_INTERVAL,
            max_staleness: None,
            collect_timeout: None,
            damping: DampingConfig::default(),
            uncommitted: UncommittedPolicy::default(),
        }
    }
}

/// Checks what a monitor would watch: a consumer group and at least one valid topic name
/// (for the producer's builder, which validates before it spawns anything).
#[doc(hidden)]
pub fn validate_watch(group: &str, topics: &[String]) -> Result<(), ConfigError> {
    if group.trim().is_empty() {
        return Err(ConfigError::new(
            "consumer_group",
            format_args!("{group:?}"),
            "a non-empty consumer group id",
        ));
    }
    if topics.is_empty() {
        return Err(ConfigError::new(
            "topics",
            "[]",
            "at least one topic to watch",
        ));
    }
    topics.iter().try_for_each(|t| validate_topic(t))
}

/// Checks a topic name the way Kafka does: 1 to 249 characters from `[a-zA-Z0-9._-]`, and not
/// `.` or `..`.
pub(crate) fn validate_topic(topic: &str) -> Result<(), ConfigError> {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            "topics",
            format_args!("{topic:?}"),
            "Kafka topic names: 1 to 249 characters from [a-zA-Z0-9._-], not \".\" or \"..\"",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MonitorConfig {
        MonitorConfig::default()
    }

    #[test]
    fn defaults_validate() {
        config().validate().unwrap();
        assert_eq!(config().effective_max_staleness(), Duration::from_secs(15));
        assert_eq!(config().effective_collect_timeout(), Duration::from_secs(5));
    }

    #[test]
    fn collect_timeout_default_is_capped() {
        let c = config().with_refresh_interval(Duration::from_secs(60));
        assert_eq!(c.effective_collect_timeout(), Duration::from_secs(10));
    }

    #[test]
    fn each_bad_setting_is_named_with_its_value() {
        let watch_cases: Vec<(&str, Vec<String>, &str, &str)> = vec![
            ("", vec!["t".into()], "consumer_group", "\"\""),
            ("g", vec![], "topics", "[]"),
            ("g", vec!["bad topic".into()], "topics", "\"bad topic\""),
            ("g", vec!["..".into()], "topics", "\"..\""),
            ("g", vec!["x".repeat(250)], "topics", "\"xxx"),
        ];
        for (group, topics, setting, value) in watch_cases {
            let err = validate_watch(group, &topics).unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
            assert!(err.value.starts_with(value), "{err}");
        }
        let cases: Vec<(MonitorConfig, &str, &str)> = vec![
            (
                config().with_refresh_interval(Duration::ZERO),
                "refresh_interval",
                "0ns",
            ),
            (
                config().with_refresh_interval(Duration::from_secs(7200)),
                "refresh_interval",
                "7200s",
            ),
            (
                config().with_max_staleness(Duration::from_secs(1)),
                "max_staleness",
                "1s",
            ),
            (
                config().with_collect_timeout(Duration::ZERO),
                "collect_timeout",
                "0ns",
            ),
            (
                config().with_collect_timeout(Duration::from_secs(60)),
                "collect_timeout",
                "60s",
            ),
        ];
        for (c, setting, value) in cases {
            let err = c.validate().unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
            assert!(err.value.starts_with(value), "{err}");
            assert!(err.to_string().contains("expected"), "{err}");
        }
    }

    #[test]
    fn max_staleness_message_explains_the_bound() {
        let err = config()
            .with_max_staleness(Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid `max_staleness` = 1s: expected at least refresh_interval (5s) and at most \
             86400s; below the refresh interval every snapshot would expire before the next one"
        );
    }
}
