//! How fast each partition's consumer drains and how fast messages arrive: what the monitor
//! learns from consecutive lag reports.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the consumer of a partition is doing, as seen from its committed offsets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConsumerState {
    /// Not enough rounds yet, or no committed offset to follow.
    #[default]
    Unknown,
    /// Keeps up: its backlog is no more than what it drains between commits.
    CaughtUp,
    /// Works through a backlog: what it drains now is what it *can* drain (its capacity).
    Draining,
    /// Has a backlog and has not committed for several rounds and several of its usual commit
    /// intervals.
    Stalled,
    /// Its committed offset disappeared (offsets expired, group deleted), or it has been
    /// stalled for [`PartitionRates::GONE_AFTER`]: no member of the group consumes it.
    Gone,
}

impl ConsumerState {
    /// Whether the consumer is not draining at all (stalled or gone).
    pub fn is_stopped(self) -> bool {
        matches!(self, ConsumerState::Stalled | ConsumerState::Gone)
    }

    /// A short lowercase name (`caught_up`, `draining`…), as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerState::Unknown => "unknown",
            ConsumerState::CaughtUp => "caught_up",
            ConsumerState::Draining => "draining",
            ConsumerState::Stalled => "stalled",
            ConsumerState::Gone => "gone",
        }
    }
}

/// Rates of one partition, estimated by the monitor from consecutive rounds.
///
/// * `drain_rate`: committed-offset delta per second, smoothed over commit intervals (a
///   consumer that commits every 5 s is measured over 5 s, not read as stopped in between).
/// * `capacity`: what the consumer *can* drain. The drain rate measures it only while the
///   consumer works through a backlog; once caught up it equals the arrival rate, a lower
///   bound, so the last estimate taken under backlog is kept (and raised whenever the consumer
///   is seen draining faster). `None` until the consumer has been seen under backlog.
/// * `arrival_rate`: high-watermark delta per second, smoothed (every producer's messages).
/// * `time_lag`: the predicted time for the consumer to reach what is waiting now: backlog ÷
///   capacity (÷ drain rate while capacity is unknown); `None` when neither is known or the
///   consumer has stopped with a backlog (it would never reach it).
///
/// Collectors leave [`PartitionLag::rates`](crate::PartitionLag::rates) empty; the monitor
/// fills it in before the calculator runs, so a custom
/// [`HotPartitionCalculator`](crate::HotPartitionCalculator) sees rates. A collector that
/// knows better (from a metrics system, say) may fill it itself: the monitor keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PartitionRates {
    /// Messages committed per second, smoothed.
    pub drain_rate: Option<f64>,
    /// Messages per second the consumer can drain, estimated under backlog.
    pub capacity: Option<f64>,
    /// Messages arriving per second, smoothed.
    pub arrival_rate: Option<f64>,
    /// Predicted time to drain the current backlog.
    #[serde(
        rename = "time_lag_seconds",
        default,
        with = "seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub time_lag: Option<Duration>,
    /// The consumer's usual time between commits, smoothed.
    #[serde(
        rename = "commit_interval_seconds",
        default,
        with = "seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub commit_interval: Option<Duration>,
    /// What the consumer is doing.
    pub state: ConsumerState,
}

impl PartitionRates {
    /// A consumer stalled this long counts as [`ConsumerState::Gone`]: past any session timeout
    /// the group would have handed the partition to another member, which would commit.
    pub const GONE_AFTER: Duration = Duration::from_secs(300);

    /// Rates with every field unknown.
    pub fn new() -> Self {
        Self::default()
    }

    /// The rate the router plans with: the capacity if known, else the drain rate (a lower
    /// bound); 0 for a consumer that stopped.
    pub fn planning_capacity(&self) -> Option<f64> {
        if self.state.is_stopped() {
            return Some(0.0);
        }
        self.capacity.or(self.drain_rate).filter(|c| c.is_finite())
    }

    /// Sets the capacity (builder style, for tests and custom collectors).
    #[must_use]
    pub fn with_capacity(mut self, capacity: f64) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Sets the drain rate.
    #[must_use]
    pub fn with_drain_rate(mut self, rate: f64) -> Self {
        self.drain_rate = Some(rate);
        self
    }

    /// Sets the arrival rate.
    #[must_use]
    pub fn with_arrival_rate(mut self, rate: f64) -> Self {
        self.arrival_rate = Some(rate);
        self
    }

    /// Sets the time-lag.
    #[must_use]
    pub fn with_time_lag(mut self, time_lag: Duration) -> Self {
        self.time_lag = Some(time_lag);
        self
    }

    /// Sets the state.
    #[must_use]
    pub fn with_state(mut self, state: ConsumerState) -> Self {
        self.state = state;
        self
    }
}

/// Optional durations as a number of seconds (dashboards and `jq` want numbers).
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|secs| Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_consumer_plans_with_no_capacity() {
        let rates = PartitionRates::new().with_capacity(500.0);
        assert_eq!(rates.planning_capacity(), Some(500.0));
        assert_eq!(
            rates.with_state(ConsumerState::Stalled).planning_capacity(),
            Some(0.0)
        );
        // Capacity unknown: the drain rate, a lower bound.
        let rates = PartitionRates::new().with_drain_rate(120.0);
        assert_eq!(rates.planning_capacity(), Some(120.0));
        assert_eq!(PartitionRates::new().planning_capacity(), None);
    }

    #[test]
    fn rates_round_trip_through_json_with_seconds() {
        let rates = PartitionRates::new()
            .with_capacity(500.0)
            .with_time_lag(Duration::from_millis(1500))
            .with_state(ConsumerState::Draining);
        let json = serde_json::to_string(&rates).unwrap();
        assert!(json.contains("\"time_lag_seconds\":1.5"), "{json}");
        assert!(json.contains("\"state\":\"draining\""), "{json}");
        let back: PartitionRates = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rates);
    }

    #[test]
    fn rates_from_an_older_writer_without_every_field_still_read() {
        let back: PartitionRates = serde_json::from_str(r#"{"capacity":5.0}"#).unwrap();
        assert_eq!(back, PartitionRates::new().with_capacity(5.0));
    }
}
