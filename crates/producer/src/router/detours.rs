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
    /// The partitions of fresh topics that were routable in the previous snapshot and are not
    /// in `snapshot`; `now` is a raw reading of the router's clock, by which the router judges
    /// its health's deadlines (see [`Router::with_clock`](super::Router::with_clock)).
    pub(crate) fn newly_unroutable(
        &mut self,
        snapshot: &HealthSnapshot,
        now: u64,
    ) -> HashSet<(u64, i32)> {
        let mut lost = HashSet::new();
        let mut current = HashMap::new();
        for topic in snapshot.topics().filter(|t| !t.is_stale_at(now)) {
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
        Arc::new(health(name, healthy))
    }

    fn health(name: &str, healthy: &[bool]) -> TopicHealth {
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
        TopicHealth::new(name, SystemTime::now(), partitions)
    }

    fn now() -> u64 {
        ksp_core::clock::global().raw()
    }

    #[test]
    fn tracker_reports_partitions_that_stop_being_routable() {
        let mut tracker = RoutabilityTracker::default();
        let first = HealthSnapshot::new([topic("t", &[true, false, true])]);
        let hash = first.topic("t").unwrap().topic_hash();
        // First sight: every unroutable partition counts as lost.
        assert_eq!(
            tracker.newly_unroutable(&first, now()),
            HashSet::from([(hash, 1)])
        );
        // Same again: nothing new.
        let same = HealthSnapshot::new([topic("t", &[true, false, true])]);
        assert!(tracker.newly_unroutable(&same, now()).is_empty());
        // Partition 2 falls, 1 recovers.
        let next = HealthSnapshot::new([topic("t", &[true, true, false])]);
        assert_eq!(
            tracker.newly_unroutable(&next, now()),
            HashSet::from([(hash, 2)])
        );
    }

    /// Health timed by a router's own clock (a mock one here) was judged stale by the
    /// process's clock, so the tracker skipped it and never reported a partition it lost.
    /// The deadline is 1 000 ticks of the mock clock (a microsecond), which never moves by
    /// itself: fresh by it, long past by the process's clock (1 000 ticks after boot).
    #[test]
    fn tracker_judges_staleness_by_the_routers_clock_not_the_process_clock() {
        let (clock, mock) = quanta::Clock::mock();
        let timed = |healthy: &[bool]| {
            let t = health("t", healthy).stale_in_on(&clock, std::time::Duration::from_micros(1));
            HealthSnapshot::new([Arc::new(t)])
        };
        let mut tracker = RoutabilityTracker::default();
        let first = timed(&[true, true]);
        let hash = first.topic("t").unwrap().topic_hash();
        assert!(tracker.newly_unroutable(&first, clock.raw()).is_empty());
        let next = timed(&[true, false]);
        assert_eq!(
            tracker.newly_unroutable(&next, clock.raw()),
            HashSet::from([(hash, 1)])
        );
        // Past its deadline by the router's clock: stale, so nothing is judged by it.
        let last = timed(&[false, true]);
        mock.increment(std::time::Duration::from_micros(2));
        assert!(tracker.newly_unroutable(&last, clock.raw()).is_empty());
    }
}
