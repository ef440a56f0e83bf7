//! Lag data: what a [`LagCollector`](crate::LagCollector) reports.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::rates::PartitionRates;

/// How to count the lag of a partition on which the group has never committed an offset.
///
/// Kafka has no committed offset for a partition the group has never consumed (or whose commit
/// expired under `offsets.retention.minutes`). What is waiting there depends on where the
/// group's consumers will start, which the broker does not say: from the earliest retained
/// offset (`auto.offset.reset=earliest`), from the end (`latest`), or nowhere (no consumer).
///
/// The monitor applies the policy round by round (collectors report the offsets and leave the
/// lag of such partitions unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UncommittedPolicy {
    /// Lag = the messages that arrived since the partition was last seen receiving nothing
    /// while it was unhealthy (counted from the high watermark when first seen).
    ///
    /// It cannot lock itself in: an uncommitted partition starts healthy, so it receives
    /// messages; a live consumer reads them and commits, and its real lag takes over; a
    /// missing consumer lets them pile up, so it turns hot and stops receiving. Then, once a
    /// round passes with nothing new, it counts as caught up again and (after the damping
    /// hold, which grows with each relapse) gets another chance. Retained messages produced
    /// before the monitor started watching are not counted: a group starting from `latest`
    /// never reads them.
    #[default]
    RecentArrivals,
    /// Lag = high watermark − low watermark: the retained backlog a consumer starting from the
    /// earliest offset would have to read. Right for `earliest` groups whose consumers are
    /// known to run; a partition no consumer reads stays hot, and without a commit it never
    /// recovers, so keys homed there stay moved.
    RetainedBacklog,
    /// Lag = 0: right for groups that start from the end (`auto.offset.reset=latest`) and
    /// always have a consumer.
    CaughtUp,
}

/// Lag of one partition for one consumer group.
///
/// Offsets follow Kafka's conventions: the committed offset is the *next* offset the group will
/// read, the high watermark is the offset the next produced message will get, the low watermark
/// the oldest offset still retained. `lag` is `None` when it could not be measured (the
/// partition's leader is unavailable, or its offsets could not be read this round).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PartitionLag {
    /// Partition id.
    pub partition: i32,
    /// The group's committed offset, if it has one.
    pub committed: Option<i64>,
    /// Oldest retained offset, when it was read.
    pub low_watermark: Option<i64>,
    /// Offset of the next message to be produced, when it was read.
    pub high_watermark: Option<i64>,
    /// The last stable offset (the first offset of the oldest transaction still open), when it
    /// was read: only for groups whose consumers read with `isolation.level=read_committed`,
    /// which cannot read past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stable_offset: Option<i64>,
    /// Messages waiting for the group, or `None` if unknown.
    pub lag: Option<i64>,
    /// Whether the partition's leader was available when the lag was read. The router never
    /// sends to a partition whose leader is unavailable: such a send waits up to
    /// `message.timeout.ms`.
    pub leader_available: bool,
    /// Drain and arrival rates, filled in by the monitor from consecutive rounds (see
    /// [`PartitionRates`]); `None` from collectors and in the first rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rates: Option<PartitionRates>,
}

impl PartitionLag {
    /// Lag computed from offsets: with a committed offset, `high − max(committed, low)`
    /// (messages deleted by retention are not counted when the low watermark was read), never
    /// negative (a committed offset read after the high watermark can be ahead of it).
    /// Without one, the lag is left unknown: the monitor counts it by its
    /// [`UncommittedPolicy`].
    pub fn from_offsets(
        partition: i32,
        committed: Option<i64>,
        low_watermark: Option<i64>,
        high_watermark: i64,
    ) -> Self {
        let lag = committed.map(|committed| {
            let start = low_watermark.map_or(committed, |low| committed.max(low));
            high_watermark.saturating_sub(start).max(0)
        });
        Self {
            partition,
            committed,
            low_watermark,
            high_watermark: Some(high_watermark),
            last_stable_offset: None,
            lag,
            leader_available: true,
            rates: None,
        }
    }

    /// Lag from a source that only knows the lag itself (a metrics exporter, say).
    pub fn from_lag(partition: i32, lag: i64) -> Self {
        Self {
            partition,
            committed: None,
            low_watermark: None,
            high_watermark: None,
            last_stable_offset: None,
            lag: Some(lag),
            leader_available: true,
            rates: None,
        }
    }

    /// A partition whose leader is unavailable: nothing was measured and nothing may be routed
    /// to it.
    pub fn unavailable(partition: i32) -> Self {
        Self {
            partition,
            committed: None,
            low_watermark: None,
            high_watermark: None,
            last_stable_offset: None,
            lag: None,
            leader_available: false,
            rates: None,
        }
    }
}

/// Lag of every partition of one topic for one consumer group, and when it was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TopicLag {
    /// Topic name.
    pub topic: String,
    /// One entry per partition, sorted by partition id.
    pub partitions: Vec<PartitionLag>,
    /// When the offsets were read. Staleness is measured from here, not from when the monitor
    /// received the report, so a report that travelled (through Redis, say) ages correctly.
    pub collected_at: SystemTime,
}

impl TopicLag {
    /// A report; partitions are sorted by id and duplicate ids keep their first entry.
    pub fn new(
        topic: impl Into<String>,
        mut partitions: Vec<PartitionLag>,
        collected_at: SystemTime,
    ) -> Self {
        partitions.sort_by_key(|p| p.partition);
        partitions.dedup_by_key(|p| p.partition);
        Self {
            topic: topic.into(),
            partitions,
            collected_at,
        }
    }

    /// Sum of the known lags.
    pub fn total_lag(&self) -> i64 {
        self.partitions
            .iter()
            .filter_map(|p| p.lag)
            .fold(0i64, i64::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_lag_is_high_minus_committed() {
        let p = PartitionLag::from_offsets(0, Some(40), None, 100);
        assert_eq!(p.lag, Some(60));
        assert!(p.leader_available);
    }

    #[test]
    fn committed_below_low_watermark_counts_only_retained_messages() {
        let p = PartitionLag::from_offsets(0, Some(10), Some(50), 100);
        assert_eq!(p.lag, Some(50));
    }

    #[test]
    fn committed_ahead_of_high_watermark_is_zero_not_negative() {
        let p = PartitionLag::from_offsets(0, Some(120), None, 100);
        assert_eq!(p.lag, Some(0));
    }

    #[test]
    fn uncommitted_lag_is_left_to_the_monitor() {
        let p = PartitionLag::from_offsets(3, None, Some(30), 100);
        assert_eq!(p.lag, None);
        assert_eq!(p.committed, None);
        assert_eq!((p.low_watermark, p.high_watermark), (Some(30), Some(100)));
    }

    #[test]
    fn topic_lag_sorts_and_dedups_partitions() {
        let t = TopicLag::new(
            "t",
            vec![
                PartitionLag::from_lag(2, 5),
                PartitionLag::from_lag(0, 1),
                PartitionLag::from_lag(2, 9),
            ],
            SystemTime::UNIX_EPOCH,
        );
        let ids: Vec<_> = t.partitions.iter().map(|p| p.partition).collect();
        assert_eq!(ids, [0, 2]);
        assert_eq!(t.total_lag(), 6);
    }
}
