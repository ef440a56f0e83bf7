//! [`HealthSnapshot`]: what the monitor publishes and the router reads.

use std::sync::Arc;

use crate::topic::TopicHealth;

/// An immutable, versioned view of the health of every watched topic.
///
/// The monitor builds a new snapshot after every refresh and publishes it through a
/// [`HealthPublisher`](crate::HealthPublisher); readers load the current one once per decision.
/// Every refresh builds each collected topic's [`TopicHealth`] anew (topics not collected that
/// round keep theirs); a topic's sticky cursor is handed on, so keyless batches carry on across
/// refreshes.
#[derive(Debug, Default)]
pub struct HealthSnapshot {
    version: u64,
    topics: foldhash::HashMap<Box<str>, Arc<TopicHealth>>,
}

impl HealthSnapshot {
    /// A snapshot holding `topics` (a later duplicate of a topic replaces an earlier one). Its
    /// version is assigned when it is published.
    pub fn new(topics: impl IntoIterator<Item = Arc<TopicHealth>>) -> Self {
        Self {
            version: 0,
            topics: topics.into_iter().map(|t| (t.topic().into(), t)).collect(),
        }
    }

    /// A snapshot with no health at all: every decision falls back to librdkafka.
    pub fn empty() -> Self {
        Self::default()
    }

    pub(crate) fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// The version, increasing by one with every publication (0 for the initial empty one).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Health of `topic`, stale or not.
    #[inline]
    pub fn topic(&self, topic: &str) -> Option<&Arc<TopicHealth>> {
        self.topics.get(topic)
    }

    /// Every topic's health, in no particular order.
    pub fn topics(&self) -> impl Iterator<Item = &Arc<TopicHealth>> {
        self.topics.values()
    }

    /// Whether the snapshot holds no topic at all.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn snapshot_looks_topics_up_by_name() {
        let snap =
            HealthSnapshot::new([Arc::new(TopicHealth::new("a", SystemTime::now(), vec![]))]);
        assert!(snap.topic("a").is_some());
        assert!(snap.topic("b").is_none());
        assert_eq!(snap.version(), 0);
    }
}
