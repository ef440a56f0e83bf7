//! Turning lag into health: the [`HotPartitionCalculator`] trait and two calculators.

use std::fmt;
use std::time::Duration;

use crate::error::ConfigError;
use crate::health::PartitionHealth;
use crate::lag::TopicLag;

/// Decides, from one topic's lag, how healthy each partition is.
///
/// Calculators run in the monitor task once per refresh, never on the send path, so they may
/// take their time; they must not block on I/O. They are used as
/// `Arc<dyn HotPartitionCalculator>`.
///
/// Return one [`PartitionHealth`] per partition of `lag` (a partition left out is treated as
/// unavailable). Partitions whose `lag` is `None` could not be measured; the built-in
/// calculators mark them unhealthy. Whatever a calculator says, a partition whose leader is
/// unavailable is never routed to.
///
/// ```
/// use ksp_core::{HotPartitionCalculator, PartitionHealth, TopicLag};
///
/// /// Healthy while fewer than 10 000 messages wait.
/// struct UnderTenThousand;
///
/// impl HotPartitionCalculator for UnderTenThousand {
///     fn calculate(&self, lag: &TopicLag) -> Vec<PartitionHealth> {
///         lag.partitions
///             .iter()
///             .map(|p| {
///                 let healthy = p.lag.is_some_and(|l| l < 10_000);
///                 PartitionHealth::new(p.clone(), if healthy { 1.0 } else { 0.0 }, healthy)
///             })
///             .collect()
///     }
/// }
/// ```
pub trait HotPartitionCalculator: Send + Sync + 'static {
    /// Health of every partition of `lag`.
    fn calculate(&self, lag: &TopicLag) -> Vec<PartitionHealth>;

    /// A short name for logs and health summaries.
    fn name(&self) -> &str {
        "custom"
    }
}

impl<T: HotPartitionCalculator + ?Sized> HotPartitionCalculator for std::sync::Arc<T> {
    fn calculate(&self, lag: &TopicLag) -> Vec<PartitionHealth> {
        (**self).calculate(lag)
    }

    fn name(&self) -> &str {
        (**self).name()
    }
}

/// Scores each partition on its own lag: `score = 1 − lag / max_lag`, clamped to `[0, 1]`;
/// healthy iff `score ≥ threshold`.
///
/// With the defaults (`threshold` 0.5, `max_lag` 1000) a partition is healthy up to a lag of 500
/// messages. Simple and predictable, but `max_lag` must be chosen per workload: what is a lot of
/// lag for one topic is nothing for another. [`RelativeCalculator`] adapts by itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdCalculator {
    threshold: f64,
    max_lag: i64,
}

impl ThresholdCalculator {
    /// Default `health_threshold`.
    pub const DEFAULT_THRESHOLD: f64 = 0.5;
    /// Default `max_lag`.
    pub const DEFAULT_MAX_LAG: i64 = 1000;

    /// A calculator with the given threshold (in `[0, 1]`) and lag of score 0 (at least 1).
    pub fn new(threshold: f64, max_lag: i64) -> Result<Self, ConfigError> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(ConfigError::new(
                "health_threshold",
                threshold,
                "a number in [0, 1]",
            ));
        }
        if max_lag < 1 {
            return Err(ConfigError::new(
                "max_lag",
                max_lag,
                "a lag of at least 1 message",
            ));
        }
        Ok(Self { threshold, max_lag })
    }

    /// The score of a lag.
    pub fn score(&self, lag: i64) -> f64 {
        (1.0 - lag as f64 / self.max_lag as f64).clamp(0.0, 1.0)
    }

    /// The health threshold.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// The lag that scores 0.
    pub fn max_lag(&self) -> i64 {
        self.max_lag
    }
}

impl Default for ThresholdCalculator {
    fn default() -> Self {
        Self {
            threshold: Self::DEFAULT_THRESHOLD,
            max_lag: Self::DEFAULT_MAX_LAG,
        }
    }
}

impl HotPartitionCalculator for ThresholdCalculator {
    fn calculate(&self, lag: &TopicLag) -> Vec<PartitionHealth> {
        lag.partitions
            .iter()
            .map(|p| match p.lag {
                Some(l) => {
                    let score = self.score(l);
                    PartitionHealth::new(p.clone(), score, score >= self.threshold)
                }
                None => PartitionHealth::new(p.clone(), 0.0, false),
            })
            .collect()
    }

    fn name(&self) -> &str {
        "threshold"
    }
}

/// Flags a partition as hot when its lag exceeds `factor` × the mean lag of the topic's other
/// partitions, and exceeds `min_lag` (so tiny lags are never hot).
///
/// This is the detection rule of the hot-partition runbook ("lag > 2× average"), with two
/// changes: the mean leaves the partition itself out, because with few partitions a hot
/// partition drags the mean up until it can no longer exceed twice of it (with 2 partitions
/// and an inclusive mean it never can); and the floor keeps noise such as 3 vs 1 message from
/// being called hot.
///
/// Score: with `limit = max(factor × mean_of_others, min_lag)`,
/// `score = 1 − lag / (2 × limit)`, clamped to `[0, 1]`; a partition exactly at the limit
/// scores 0.5 and is healthy iff `lag ≤ limit`.
///
/// **By time, when the monitor knows the rates.** When every partition whose lag is known
/// also has a predicted time-lag ([`PartitionRates::time_lag`](crate::PartitionRates)), the same
/// rule is applied to time-lags instead of message counts: a consumer 10 s behind is hot
/// whatever its count, a fast consumer with many messages waiting is not. Then
/// `limit = max(factor × mean time-lag of the others, 1 s, 2 × its commit interval)` (below
/// a second, or within what its commit timing explains, differences are noise), a partition
/// is still never hot at `min_lag` messages or fewer, and a stalled or gone consumer with a
/// backlog is hot. The data behind it is in `docs/routing.md`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelativeCalculator {
    factor: f64,
    min_lag: i64,
}

impl RelativeCalculator {
    /// Default `factor`.
    pub const DEFAULT_FACTOR: f64 = 2.0;
    /// Default `min_lag`.
    pub const DEFAULT_MIN_LAG: i64 = 100;

    /// A calculator with the given factor (finite, at least 1) and floor (at least 0).
    pub fn new(factor: f64, min_lag: i64) -> Result<Self, ConfigError> {
        if !factor.is_finite() || factor < 1.0 {
            return Err(ConfigError::new(
                "hot_factor",
                factor,
                "a finite number of at least 1",
            ));
        }
        if min_lag < 0 {
            return Err(ConfigError::new(
                "min_lag",
                min_lag,
                "a lag of at least 0 messages",
            ));
        }
        Ok(Self { factor, min_lag })
    }

    /// The factor over the mean of the others.
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// The lag below which a partition is never hot.
    pub fn min_lag(&self) -> i64 {
        self.min_lag
    }
}

impl Default for RelativeCalculator {
    fn default() -> Self {
        Self {
            factor: Self::DEFAULT_FACTOR,
            min_lag: Self::DEFAULT_MIN_LAG,
        }
    }
}

impl HotPartitionCalculator for RelativeCalculator {
    fn calculate(&self, lag: &TopicLag) -> Vec<PartitionHealth> {
        match time_lags(lag) {
            Some(times) => self.by_time(lag, &times),
            None => self.by_count(lag),
        }
    }

    fn name(&self) -> &str {
        "relative"
    }
}

/// A partition whose predicted time-lag is at most this is never hot by time: below it,
/// differences are the noise of commit timing and polling.
pub(crate) const MIN_HOT_TIME_LAG: Duration = Duration::from_secs(1);

/// Each partition's predicted time-lag in seconds (infinite for a consumer that stopped with a
/// backlog), when every partition whose lag is known has one; else `None`.
fn time_lags(lag: &TopicLag) -> Option<Vec<Option<f64>>> {
    lag.partitions
        .iter()
        .map(|p| match (p.lag, p.rates) {
            (None, _) => Some(None),
            (Some(_), Some(r)) if r.state.is_stopped() => Some(Some(f64::INFINITY)),
            (Some(_), Some(r)) => r.time_lag.map(|t| Some(t.as_secs_f64())),
            (Some(_), None) => None,
        })
        .collect()
}

impl RelativeCalculator {
    /// Offsets: hot past `factor` × the others' mean lag and past `min_lag`.
    fn by_count(&self, lag: &TopicLag) -> Vec<PartitionHealth> {
        let known: Vec<f64> = lag
            .partitions
            .iter()
            .filter_map(|p| p.lag.map(|l| l.max(0) as f64))
            .collect();
        let sum: f64 = known.iter().sum();
        let count = known.len() as f64;
        lag.partitions
            .iter()
            .map(|p| match p.lag {
                Some(l) => {
                    let l = l.max(0) as f64;
                    let limit =
                        (self.factor * mean_of_others(sum, count, l)).max(self.min_lag as f64);
                    PartitionHealth::new(p.clone(), score(l, limit), l <= limit)
                }
                None => PartitionHealth::new(p.clone(), 0.0, false),
            })
            .collect()
    }

    /// Time: a consumer 10 s behind is hot whatever its offset count, and a fast consumer
    /// with many messages waiting is not. Hot past `factor` × the others' mean time-lag, past
    /// [`MIN_HOT_TIME_LAG`] and twice its own commit interval (lag that commit timing alone
    /// explains), and past `min_lag` messages.
    fn by_time(&self, lag: &TopicLag, times: &[Option<f64>]) -> Vec<PartitionHealth> {
        let finite: Vec<f64> = times
            .iter()
            .flatten()
            .copied()
            .filter(|t| t.is_finite())
            .collect();
        let sum: f64 = finite.iter().sum();
        let count = finite.len() as f64;
        lag.partitions
            .iter()
            .zip(times)
            .map(|(p, time)| match (p.lag, *time) {
                (Some(l), Some(t)) => {
                    let others = if t.is_finite() {
                        mean_of_others(sum, count, t)
                    } else {
                        sum / count.max(1.0)
                    };
                    let commit = p
                        .rates
                        .and_then(|r| r.commit_interval)
                        .map_or(0.0, |c| 2.0 * c.as_secs_f64());
                    let limit = (self.factor * others)
                        .max(MIN_HOT_TIME_LAG.as_secs_f64())
                        .max(commit);
                    let healthy = t <= limit || l <= self.min_lag;
                    let score = if healthy {
                        score(t, limit).max(0.5)
                    } else {
                        score(t, limit)
                    };
                    PartitionHealth::new(p.clone(), score, healthy)
                }
                _ => PartitionHealth::new(p.clone(), 0.0, false),
            })
            .collect()
    }
}

fn mean_of_others(sum: f64, count: f64, own: f64) -> f64 {
    let others = count - 1.0;
    if others > 0.0 {
        ((sum - own) / others).max(0.0)
    } else {
        0.0
    }
}

/// `1 − value / (2 × limit)`: 0.5 at the limit.
fn score(value: f64, limit: f64) -> f64 {
    if limit > 0.0 {
        1.0 - value / (2.0 * limit)
    } else if value > 0.0 {
        0.0
    } else {
        1.0
    }
}

impl fmt::Display for ThresholdCalculator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "threshold(health_threshold={}, max_lag={})",
            self.threshold, self.max_lag
        )
    }
}

impl fmt::Display for RelativeCalculator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "relative(hot_factor={}, min_lag={})",
            self.factor, self.min_lag
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::lag::PartitionLag;

    fn topic(lags: &[i64]) -> TopicLag {
        TopicLag::new(
            "t",
            lags.iter()
                .enumerate()
                .map(|(p, &l)| PartitionLag::from_lag(p as i32, l))
                .collect(),
            SystemTime::now(),
        )
    }

    fn scores(c: &dyn HotPartitionCalculator, lags: &[i64]) -> Vec<(f64, bool)> {
        c.calculate(&topic(lags))
            .into_iter()
            .map(|h| (h.score, h.healthy))
            .collect()
    }

    fn timed(lags: &[(i64, f64)]) -> TopicLag {
        TopicLag::new(
            "t",
            lags.iter()
                .enumerate()
                .map(|(p, &(l, secs))| {
                    let mut lag = PartitionLag::from_lag(p as i32, l);
                    lag.rates = Some(
                        crate::PartitionRates::new()
                            .with_drain_rate(100.0)
                            .with_time_lag(Duration::from_secs_f64(secs)),
                    );
                    lag
                })
                .collect(),
            SystemTime::now(),
        )
    }

    fn healthy(c: &dyn HotPartitionCalculator, lag: &TopicLag) -> Vec<bool> {
        c.calculate(lag).into_iter().map(|h| h.healthy).collect()
    }

    #[test]
    fn relative_judges_time_lags_when_every_partition_has_one() {
        let c = RelativeCalculator::default();
        // Partition 0 holds the most messages but drains them in 0.5 s; partition 2 holds
        // fewer and needs 20 s. By count 0 is hot, by time 2 is.
        let lag = timed(&[(5_000, 0.5), (300, 0.6), (2_000, 20.0), (300, 0.4)]);
        assert_eq!(healthy(&c, &lag), [true, true, false, true]);
        let mut counted = lag.clone();
        for p in &mut counted.partitions {
            p.rates = None;
        }
        assert_eq!(healthy(&c, &counted), [false, true, true, true]);
    }

    #[test]
    fn relative_time_lags_under_a_second_or_a_commit_interval_are_noise() {
        let c = RelativeCalculator::default();
        // 0.9 s against ~0 s elsewhere: under the 1 s floor.
        assert_eq!(
            healthy(&c, &timed(&[(500, 0.9), (0, 0.0), (0, 0.0)])),
            [true, true, true]
        );
        // 4 s against ~0, but the consumer commits every 5 s: commit timing explains it.
        let mut lag = timed(&[(500, 4.0), (0, 0.0), (0, 0.0)]);
        let r = lag.partitions[0].rates.as_mut().unwrap();
        r.commit_interval = Some(Duration::from_secs(5));
        assert_eq!(healthy(&c, &lag), [true, true, true]);
        // Few messages are never hot, however long they wait.
        assert_eq!(
            healthy(&c, &timed(&[(50, 30.0), (0, 0.0), (0, 0.0)])),
            [true, true, true]
        );
    }

    #[test]
    fn relative_calls_a_stalled_consumer_with_a_backlog_hot() {
        let c = RelativeCalculator::default();
        let mut lag = timed(&[(500, 0.0), (10, 0.1), (10, 0.1)]);
        lag.partitions[0].rates = Some(
            crate::PartitionRates::new()
                .with_drain_rate(100.0)
                .with_state(crate::ConsumerState::Stalled),
        );
        assert_eq!(healthy(&c, &lag), [false, true, true]);
    }

    #[test]
    fn relative_falls_back_to_counts_when_one_partition_lacks_a_time_lag() {
        let c = RelativeCalculator::default();
        let mut lag = timed(&[(5_000, 0.5), (300, 0.6), (2_000, 20.0), (300, 0.4)]);
        lag.partitions[1].rates = None;
        assert_eq!(healthy(&c, &lag), [false, true, true, true]);
    }

    #[test]
    fn threshold_formula_matches_the_seed() {
        let c = ThresholdCalculator::new(0.5, 1000).unwrap();
        assert_eq!(
            scores(&c, &[-10, 0, 250, 500, 1000, 5000]),
            [
                (1.0, true),
                (1.0, true),
                (0.75, true),
                // Inclusive: exactly at the threshold is healthy.
                (0.5, true),
                (0.0, false),
                (0.0, false),
            ]
        );
    }

    #[test]
    fn threshold_defaults() {
        let c = ThresholdCalculator::default();
        assert_eq!(c.threshold(), 0.5);
        assert_eq!(c.max_lag(), 1000);
        assert_eq!(c.name(), "threshold");
    }

    #[test]
    fn threshold_rejects_max_lag_zero() {
        let err = ThresholdCalculator::new(0.5, 0).unwrap_err();
        assert_eq!(err.setting, "max_lag");
        assert_eq!(
            err.to_string(),
            "invalid `max_lag` = 0: expected a lag of at least 1 message"
        );
    }

    #[test]
    fn threshold_rejects_threshold_outside_unit_interval() {
        for bad in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            let err = ThresholdCalculator::new(bad, 1000).unwrap_err();
            assert_eq!(err.setting, "health_threshold");
        }
        assert!(ThresholdCalculator::new(0.0, 1).is_ok());
        assert!(ThresholdCalculator::new(1.0, 1).is_ok());
    }

    #[test]
    fn unknown_lag_is_unhealthy() {
        let lag = TopicLag::new(
            "t",
            vec![PartitionLag::from_lag(0, 0), PartitionLag::unavailable(1)],
            SystemTime::now(),
        );
        for c in [
            &ThresholdCalculator::default() as &dyn HotPartitionCalculator,
            &RelativeCalculator::default(),
        ] {
            let h = c.calculate(&lag);
            assert!(h[0].healthy, "{}", c.name());
            assert!(!h[1].healthy, "{}", c.name());
            assert_eq!(h[1].score, 0.0);
        }
    }

    #[test]
    fn relative_flags_only_the_partition_at_five_times_the_others() {
        let c = RelativeCalculator::default();
        let h = scores(&c, &[400, 400, 400, 2000, 400, 400, 400, 400]);
        let hot: Vec<usize> = h
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.1)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(hot, [3]);
        // The others sit well below their limit of 2 × 628.
        assert!(h[0].0 > 0.8, "{:?}", h[0]);
    }

    #[test]
    fn relative_with_two_partitions_still_finds_the_hot_one() {
        // An inclusive mean (3000) would put the limit at 6000 and miss it.
        let h = scores(&RelativeCalculator::default(), &[1000, 5000]);
        assert_eq!(h.iter().map(|h| h.1).collect::<Vec<_>>(), [true, false]);
    }

    #[test]
    fn relative_never_flags_tiny_lags() {
        let h = scores(&RelativeCalculator::default(), &[0, 1, 0, 90, 2, 0]);
        assert!(h.iter().all(|h| h.1), "{h:?}");
    }

    #[test]
    fn relative_all_zero_is_all_healthy_with_full_score() {
        let h = scores(&RelativeCalculator::default(), &[0, 0, 0]);
        assert_eq!(h, [(1.0, true); 3]);
    }

    #[test]
    fn relative_with_zero_floor_and_zero_mean() {
        let c = RelativeCalculator::new(2.0, 0).unwrap();
        let h = scores(&c, &[0, 0, 5]);
        assert_eq!(h, [(1.0, true), (1.0, true), (0.0, false)]);
    }

    #[test]
    fn relative_score_is_half_at_the_limit() {
        let c = RelativeCalculator::new(2.0, 0).unwrap();
        // Others' mean is 100, limit 200.
        let h = scores(&c, &[100, 100, 200]);
        assert_eq!(h[2], (0.5, true));
    }

    #[test]
    fn relative_rejects_bad_settings() {
        assert_eq!(
            RelativeCalculator::new(0.5, 10).unwrap_err().setting,
            "hot_factor"
        );
        assert_eq!(
            RelativeCalculator::new(f64::NAN, 10).unwrap_err().setting,
            "hot_factor"
        );
        assert_eq!(
            RelativeCalculator::new(2.0, -1).unwrap_err().setting,
            "min_lag"
        );
    }
}

/// A built-in calculator chosen by name, with its settings: what configuration files hold.
///
/// ```
/// # use ksp_core::CalculatorConfig;
/// let relative: CalculatorConfig = "relative".parse().unwrap();
/// assert_eq!(relative.build().unwrap().name(), "relative");
/// let err = "median".parse::<CalculatorConfig>().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid `calculator` = \"median\": expected one of \"threshold\", \"relative\"",
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum CalculatorConfig {
    /// [`ThresholdCalculator`].
    Threshold {
        /// Healthy iff score ≥ this.
        #[serde(default = "default_threshold")]
        health_threshold: f64,
        /// Lag that scores 0.
        #[serde(default = "default_max_lag")]
        max_lag: i64,
    },
    /// [`RelativeCalculator`].
    Relative {
        /// Hot iff lag > this × the others' mean.
        #[serde(default = "default_factor")]
        hot_factor: f64,
        /// Lags at or below this are never hot.
        #[serde(default = "default_min_lag")]
        min_lag: i64,
    },
}

fn default_threshold() -> f64 {
    ThresholdCalculator::DEFAULT_THRESHOLD
}
fn default_max_lag() -> i64 {
    ThresholdCalculator::DEFAULT_MAX_LAG
}
fn default_factor() -> f64 {
    RelativeCalculator::DEFAULT_FACTOR
}
fn default_min_lag() -> i64 {
    RelativeCalculator::DEFAULT_MIN_LAG
}

impl CalculatorConfig {
    /// The names of the built-in calculators.
    pub const NAMES: [&'static str; 2] = ["threshold", "relative"];

    /// Validates the settings and builds the calculator.
    pub fn build(&self) -> Result<std::sync::Arc<dyn HotPartitionCalculator>, ConfigError> {
        Ok(match *self {
            Self::Threshold {
                health_threshold,
                max_lag,
            } => std::sync::Arc::new(ThresholdCalculator::new(health_threshold, max_lag)?),
            Self::Relative {
                hot_factor,
                min_lag,
            } => std::sync::Arc::new(RelativeCalculator::new(hot_factor, min_lag)?),
        })
    }
}

/// The default is the relative calculator: it adapts to each workload, where the threshold
/// calculator's `max_lag` must be chosen per topic (1000 messages is 10 ms of backlog at
/// 100 000 msg/s and 100 s at 10 msg/s). `docs/benchmarks.md` compares both.
impl Default for CalculatorConfig {
    fn default() -> Self {
        Self::Relative {
            hot_factor: default_factor(),
            min_lag: default_min_lag(),
        }
    }
}

impl std::str::FromStr for CalculatorConfig {
    type Err = ConfigError;

    /// A built-in calculator by name, with default settings.
    fn from_str(name: &str) -> Result<Self, ConfigError> {
        match name {
            "threshold" => Ok(Self::Threshold {
                health_threshold: default_threshold(),
                max_lag: default_max_lag(),
            }),
            "relative" => Ok(Self::default()),
            other => Err(ConfigError::new(
                "calculator",
                format_args!("{other:?}"),
                "one of \"threshold\", \"relative\"",
            )),
        }
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn decodes_from_json_with_defaults() {
        let c: CalculatorConfig =
            serde_json::from_str(r#"{"kind":"relative","min_lag":50}"#).unwrap();
        assert_eq!(
            c,
            CalculatorConfig::Relative {
                hot_factor: 2.0,
                min_lag: 50
            }
        );
        let c: CalculatorConfig = serde_json::from_str(r#"{"kind":"threshold"}"#).unwrap();
        assert_eq!(c, "threshold".parse().unwrap());
        assert_eq!(CalculatorConfig::default(), "relative".parse().unwrap());
    }

    #[test]
    fn invalid_values_fail_at_build_with_the_setting_named() {
        let c: CalculatorConfig =
            serde_json::from_str(r#"{"kind":"threshold","health_threshold":2}"#).unwrap();
        let err = c.build().err().unwrap();
        assert_eq!(err.setting, "health_threshold");
    }

    #[test]
    fn unknown_kind_is_rejected() {
        let err = serde_json::from_str::<CalculatorConfig>(r#"{"kind":"median"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `median`"),
            "{err}"
        );
    }
}
