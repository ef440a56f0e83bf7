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
    /// Every topic once.
    topics: Vec<Arc<TopicHealth>>,
    /// Positions in `topics` by name, with more than [`SCAN_UP_TO`] topics: comparing a few
    /// names costs less than hashing one, and every send looks its topic up.
    index: Option<foldhash::HashMap<Box<str>, usize>>,
}

/// Up to this many topics, a lookup compares names instead of hashing.
const SCAN_UP_TO: usize = 4;

impl HealthSnapshot {
    /// A snapshot holding `topics` (a later duplicate of a topic replaces an earlier one). Its
    /// version is assigned when it is published.
    pub fn new(topics: impl IntoIterator<Item = Arc<TopicHealth>>) -> Self {
        let mut index = foldhash::HashMap::<Box<str>, usize>::default();
        let mut unique: Vec<Arc<TopicHealth>> = Vec::new();
        for topic in topics {
            match index.get(topic.topic()) {
                Some(&at) => unique[at] = topic,
                None => {
                    index.insert(topic.topic().into(), unique.len());
                    unique.push(topic);
                }
            }
        }
        Self {
            version: 0,
            index: (unique.len() > SCAN_UP_TO).then_some(index),
            topics: unique,
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
    #[inline(always)]
    pub fn topic(&self, topic: &str) -> Option<&Arc<TopicHealth>> {
        match &self.index {
            None => self.topics.iter().find(|t| t.topic() == topic),
            Some(index) => index.get(topic).map(|&at| &self.topics[at]),
        }
    }

    /// Every topic's health, in no particular order.
    pub fn topics(&self) -> impl Iterator<Item = &Arc<TopicHealth>> {
        self.topics.iter()
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

    #[test]
    fn a_later_duplicate_replaces_an_earlier_one_with_few_topics_and_with_many() {
        let at = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        for count in [1, 3, 4, 5, 40] {
            let names: Vec<String> = (0..count).map(|i| format!("topic-{i}")).collect();
            let first = names
                .iter()
                .map(|n| Arc::new(TopicHealth::new(n, at(1), vec![])));
            let again = Arc::new(TopicHealth::new("topic-0", at(2), vec![]));
            let snap = HealthSnapshot::new(first.chain([again]));
            assert_eq!(snap.topics().count(), count, "{count} topics");
            for name in &names {
                assert_eq!(snap.topic(name).map(|t| t.topic()), Some(name.as_str()));
            }
            assert_eq!(snap.topic("topic-0").unwrap().collected_at(), at(2));
            assert!(snap.topic("topic").is_none() && snap.topic("").is_none());
        }
    }
}
