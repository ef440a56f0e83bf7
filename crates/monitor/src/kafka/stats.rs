//! Requests a lag reader has sent, as librdkafka's own statistics count them.

use std::sync::{Mutex, PoisonError};

use rdkafka::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::statistics::Statistics;

/// Requests sent by a lag reader since it was created, per Kafka API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestCounts {
    /// `Metadata` requests.
    pub metadata: u64,
    /// `OffsetFetch` requests (committed offsets).
    pub offset_fetch: u64,
    /// `ListOffsets` requests (watermarks).
    pub list_offsets: u64,
    /// Requests that only a group member sends (`JoinGroup`, `SyncGroup`, `Heartbeat`,
    /// `LeaveGroup`, `OffsetCommit`): a lag reader never sends any.
    pub membership: u64,
}

impl std::ops::Add for RequestCounts {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            metadata: self.metadata + other.metadata,
            offset_fetch: self.offset_fetch + other.offset_fetch,
            list_offsets: self.list_offsets + other.list_offsets,
            membership: self.membership + other.membership,
        }
    }
}

/// The lag reader's client context: keeps the request counts of the last statistics event.
#[derive(Default)]
pub(crate) struct ReaderContext {
    counts: Mutex<Option<RequestCounts>>,
}

impl ReaderContext {
    pub(crate) fn counts(&self) -> Option<RequestCounts> {
        *self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ClientContext for ReaderContext {
    fn stats(&self, statistics: Statistics) {
        let count = |api: &str| -> u64 {
            statistics
                .brokers
                .values()
                .filter_map(|b| b.req.get(api))
                .map(|&n| n.max(0) as u64)
                .sum()
        };
        let counts = RequestCounts {
            metadata: count("Metadata"),
            offset_fetch: count("OffsetFetch"),
            list_offsets: count("ListOffsets"),
            membership: [
                "JoinGroup",
                "SyncGroup",
                "Heartbeat",
                "LeaveGroup",
                "OffsetCommit",
            ]
            .into_iter()
            .map(count)
            .sum(),
        };
        *self.counts.lock().unwrap_or_else(PoisonError::into_inner) = Some(counts);
    }
}

impl ConsumerContext for ReaderContext {}
