//! Detours: where a key whose home is unroutable goes, and keeping remembered detours in step
//! with health.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ksp_core::{HealthSnapshot, TopicHealth};

/// Remembers which partitions were routable in the previous snapshot, to find those that just
/// stopped being routable.
#[derive(Default)]
pub(crate) struct RoutabilityTracker {
    previous: HashMap<u64, Arc<TopicHealth>>,
}

impl RoutabilityTracker {
    pub(crate) fn newly_unroutable(&mut self, snapshot: &HealthSnapshot) -> HashSet<(u64, i32)> {
        let mut lost = HashSet::new();
        let mut current = HashMap::new();
        for topic in snapshot.topics().filter(|t| !t.is_stale()) {
            let before = self.previous.get(&topic.topic_hash());
            for partition in 0..topic.partition_count() {
                // A topic seen for the first time (or again after a gap) may have detours
                // from before; treat all its partitions as previously routable.
                let was = before.is_none_or(|b| b.is_routable(partition));
                if was && !topic.is_routable(partition) {
                    lost.insert((topic.topic_hash(), partition));
                }
            }
            current.insert(topic.topic_hash(), topic.clone());
        }
        self.previous = current;
        lost
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ksp_core::{PartitionHealth, PartitionLag};

    use super::*;

    fn topic(name: &str, healthy: &[bool]) -> Arc<TopicHealth> {
        let partitions = healthy
            .iter()
            .enumerate()
            .map(|(p, &h)| {
                PartitionHealth::new(
                    PartitionLag::from_lag(p as i32, 0),
                    if h { 1.0 } else { 0.0 },
                    h,
                )
            })
            .collect();
        Arc::new(TopicHealth::new(name, SystemTime::now(), partitions))
    }

    #[test]
    fn tracker_reports_partitions_that_stop_being_routable() {
        let mut tracker = RoutabilityTracker::default();
        let first = HealthSnapshot::new([topic("t", &[true, false, true])]);
        let hash = first.topic("t").unwrap().topic_hash();
        // First sight: every unroutable partition counts as lost.
        assert_eq!(tracker.newly_unroutable(&first), HashSet::from([(hash, 1)]));
        // Same again: nothing new.
        let same = HealthSnapshot::new([topic("t", &[true, false, true])]);
        assert!(tracker.newly_unroutable(&same).is_empty());
        // Partition 2 falls, 1 recovers.
        let next = HealthSnapshot::new([topic("t", &[true, true, false])]);
        assert_eq!(tracker.newly_unroutable(&next), HashSet::from([(hash, 2)]));
    }
}
