//! Health of a partition: what a [`HotPartitionCalculator`](crate::HotPartitionCalculator) makes
//! of its lag.

use serde::{Deserialize, Serialize};

use crate::lag::PartitionLag;

/// Health of one partition: a score in `[0, 1]` (1 = the consumer keeps up), whether new
/// messages may go there, and the lag it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PartitionHealth {
    /// Partition id.
    pub partition: i32,
    /// Health score in `[0, 1]`; never NaN.
    pub score: f64,
    /// Whether the calculator considers the partition healthy.
    pub healthy: bool,
    /// The lag this health was computed from.
    pub lag: PartitionLag,
}

impl PartitionHealth {
    /// Health of a partition.
    ///
    /// The score is clamped to `[0, 1]`. A NaN score (a custom calculator dividing by zero, say)
    /// becomes 0 and unhealthy: a calculator that cannot produce a number has no opinion the
    /// router should act on.
    pub fn new(lag: PartitionLag, score: f64, healthy: bool) -> Self {
        let (score, healthy) = if score.is_nan() {
            (0.0, false)
        } else {
            (score.clamp(0.0, 1.0), healthy)
        };
        Self {
            partition: lag.partition,
            score,
            healthy,
            lag,
        }
    }

    /// Whether new messages may be routed here: healthy, and its leader is available.
    pub fn is_routable(&self) -> bool {
        self.healthy && self.lag.leader_available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(partition: i32, score: f64, healthy: bool) -> PartitionHealth {
        PartitionHealth::new(PartitionLag::from_lag(partition, 0), score, healthy)
    }

    #[test]
    fn nan_score_is_zero_and_unhealthy() {
        let h = health(0, f64::NAN, true);
        assert_eq!(h.score, 0.0);
        assert!(!h.healthy);
    }

    #[test]
    fn score_is_clamped() {
        assert_eq!(health(0, 7.0, true).score, 1.0);
        assert_eq!(health(0, -1.0, true).score, 0.0);
    }
}
