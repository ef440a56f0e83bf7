//! What the router decided for a message, and why.

use std::fmt;

use serde::Serialize;

/// Where a message goes, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Decision {
    /// The partition to set on the record; `None` lets librdkafka's partitioner decide.
    pub partition: Option<i32>,
    /// Why.
    pub route: Route,
}

impl Decision {
    pub(crate) const fn fallback(reason: Fallback) -> Self {
        Self {
            partition: None,
            route: Route::Fallback(reason),
        }
    }
}

/// How a routing decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Route {
    /// The caller set the partition; it always wins.
    Explicit,
    /// A keyless message, sent to the current sticky partition, chosen among the healthy
    /// partitions with probability proportional to health.
    Sticky,
    /// A keyed message whose home partition is healthy: it goes home, the partition
    /// librdkafka's partitioner would hash it to, exactly as without this library (named on
    /// the record, so librdkafka's partitioner does not run).
    Home,
    /// A keyed message whose home partition is unhealthy, sent to its detour.
    Moved,
    /// Strict key order: a key whose move waited longer than its bounds allow, sent to its old
    /// partition after its earlier messages (it stays there until the group has committed
    /// past them).
    Pinned,
    /// Strict key order: the key's move waits for its old partition to drain, and the decision
    /// has no partition. Only [`Router::route`](super::Router::route) and `decide` report it,
    /// as an answer, not a decision to send by (sent without a partition, librdkafka would
    /// send the key home, around its barriers): the producer waits, then sends by another
    /// route.
    Waiting,
    /// No smart decision; librdkafka's partitioner decides.
    Fallback(Fallback),
}

/// Why a decision fell back to librdkafka's partitioner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Fallback {
    /// Smart routing is disabled.
    Disabled,
    /// No health for the topic: not watched, or not collected yet.
    NoHealth,
    /// The topic's health is older than `max_staleness`.
    Stale,
    /// No partition of the topic is healthy with an available leader.
    NoRoutablePartition,
    /// A key's home is unhealthy, but fewer than half the partitions are healthy: moving the
    /// keys of all the others onto them would overload them, so keys stay home.
    TooFewRoutable,
    /// The producer's librdkafka does not know the chosen partition yet (partitions were just
    /// added); the message was re-sent without a partition.
    PartitionUnknownToProducer,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Explicit => f.write_str("explicit"),
            Self::Sticky => f.write_str("sticky"),
            Self::Home => f.write_str("home"),
            Self::Moved => f.write_str("moved"),
            Self::Pinned => f.write_str("pinned"),
            Self::Waiting => f.write_str("waiting"),
            Self::Fallback(reason) => write!(f, "fallback({reason:?})"),
        }
    }
}
