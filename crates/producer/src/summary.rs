//! Health summaries for humans and dashboards.

use std::time::Duration;

use ksp_core::TopicHealth;
use serde::{Serialize, Serializer};

/// The health of one topic as the router sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TopicSummary {
    /// Topic name.
    pub topic: String,
    /// Version of the snapshot this summary was taken from.
    pub snapshot_version: u64,
    /// Whether the health is stale (routing for this topic falls back).
    pub stale: bool,
    /// Time since the lag was read.
    #[serde(rename = "age_seconds", serialize_with = "seconds")]
    pub age: Duration,
    /// Partitions new messages may go to.
    pub routable: Vec<i32>,
    /// Sum of the known lags.
    pub total_lag: i64,
    /// Every partition.
    pub partitions: Vec<PartitionSummary>,
}

/// The health of one partition.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PartitionSummary {
    /// Partition id.
    pub partition: i32,
    /// Messages waiting for the group, if known.
    pub lag: Option<i64>,
    /// The group's committed offset, if any.
    pub committed: Option<i64>,
    /// The high watermark, if read.
    pub high_watermark: Option<i64>,
    /// Health score in `[0, 1]`.
    pub score: f64,
    /// Whether the calculator considers it healthy.
    pub healthy: bool,
    /// Whether its leader was available.
    pub leader_available: bool,
    /// Whether new messages may go there (healthy and leader available).
    pub routable: bool,
}

impl TopicSummary {
    /// Summarizes one topic's health.
    pub fn new(snapshot_version: u64, health: &TopicHealth) -> Self {
        Self {
            topic: health.topic().to_owned(),
            snapshot_version,
            stale: health.is_stale(),
            age: health.age(),
            routable: health.routable_partitions().to_vec(),
            total_lag: health
                .partitions()
                .iter()
                .filter_map(|p| p.lag.lag)
                .fold(0, i64::saturating_add),
            partitions: health
                .partitions()
                .iter()
                .map(|p| PartitionSummary {
                    partition: p.partition,
                    lag: p.lag.lag,
                    committed: p.lag.committed,
                    high_watermark: p.lag.high_watermark,
                    score: p.score,
                    healthy: p.healthy,
                    leader_available: p.lag.leader_available,
                    routable: p.is_routable(),
                })
                .collect(),
        }
    }
}

fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
