//! Health summaries for humans and dashboards.

use std::time::Duration;

use ksp_core::{ConsumerState, TopicHealth};
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
    /// Whether keyless shares and detours follow the consumers' measured capacities (else
    /// health scores).
    pub capacity_planned: bool,
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
    /// Share of keyless traffic the router sends there, in `[0, 1]`.
    pub keyless_share: f64,
    /// Predicted time for its consumer to drain what waits.
    #[serde(rename = "time_lag_seconds", serialize_with = "optional_seconds")]
    pub time_lag: Option<Duration>,
    /// Messages committed per second.
    pub drain_rate: Option<f64>,
    /// Messages per second its consumer can drain, measured under backlog.
    pub capacity: Option<f64>,
    /// Messages arriving per second.
    pub arrival_rate: Option<f64>,
    /// What its consumer is doing.
    pub consumer: ConsumerState,
}

impl TopicSummary {
    /// Summarizes one topic's health (stale or not by the process's clock,
    /// [`ksp_core::clock::global`], the one the health monitor times deadlines by).
    pub fn new(snapshot_version: u64, health: &TopicHealth) -> Self {
        Self::at(snapshot_version, health, ksp_core::clock::global().raw())
    }

    /// [`new`](Self::new), stale or not at `now`, a raw reading of a router's clock.
    pub(crate) fn at(snapshot_version: u64, health: &TopicHealth, now: u64) -> Self {
        let shares = health.keyless_shares();
        Self {
            topic: health.topic().to_owned(),
            snapshot_version,
            stale: health.is_stale_at(now),
            age: health.age(),
            routable: health.routable_partitions().to_vec(),
            total_lag: health
                .partitions()
                .iter()
                .filter_map(|p| p.lag.lag)
                .fold(0, i64::saturating_add),
            capacity_planned: health.is_capacity_planned(),
            partitions: health
                .partitions()
                .iter()
                .zip(&shares)
                .map(|(p, &keyless_share)| PartitionSummary {
                    partition: p.partition,
                    lag: p.lag.lag,
                    committed: p.lag.committed,
                    high_watermark: p.lag.high_watermark,
                    score: p.score,
                    healthy: p.healthy,
                    leader_available: p.lag.leader_available,
                    routable: p.is_routable(),
                    keyless_share,
                    time_lag: p.lag.rates.and_then(|r| r.time_lag),
                    drain_rate: p.lag.rates.and_then(|r| r.drain_rate),
                    capacity: p.lag.rates.and_then(|r| r.capacity),
                    arrival_rate: p.lag.rates.and_then(|r| r.arrival_rate),
                    consumer: p.lag.rates.map_or(ConsumerState::Unknown, |r| r.state),
                })
                .collect(),
        }
    }
}

fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn optional_seconds<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}
