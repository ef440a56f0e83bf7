//! [`TopicTracker`]: what the monitor remembers about one topic between rounds.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ksp_core::{HotPartitionCalculator, StickyCursor, TopicHealth, TopicLag, UncommittedPolicy};

use crate::config::MonitorConfig;
use crate::damping::Damper;
use crate::rates::RateMemory;

/// Turns one topic's successive lag reports into health: applies the [`UncommittedPolicy`],
/// estimates each partition's drain and arrival rates from the previous rounds (see
/// [`ksp_core::PartitionRates`]), runs the calculator, damps flapping verdicts, and builds the
/// [`TopicHealth`] the router reads.
///
/// The monitor keeps one per watched topic. It is public so that a simulation can drive the
/// monitor's exact logic round by round without a task or a clock of its own.
///
/// ```
/// # use std::time::{Duration, SystemTime};
/// # use ksp_core::{PartitionLag, RelativeCalculator, TopicLag};
/// # use ksp_monitor::{MonitorConfig, TopicTracker};
/// let mut tracker = TopicTracker::new(&MonitorConfig::default());
/// let report = TopicLag::new(
///     "orders",
///     vec![PartitionLag::from_lag(0, 0), PartitionLag::from_lag(1, 9000)],
///     SystemTime::now(),
/// );
/// let health = tracker.update(Duration::ZERO, report, &RelativeCalculator::default());
/// assert_eq!(health.routable_partitions(), [0]);
/// ```
#[derive(Debug)]
pub struct TopicTracker {
    uncommitted: UncommittedPolicy,
    damper: Damper,
    /// Dense: index `i` holds partition `i`.
    partitions: Vec<Memory>,
    /// The topic's sticky cursor, handed from one health to the next.
    cursor: Option<Arc<StickyCursor>>,
    /// The previous round's report time and the smoothed time between rounds, in seconds.
    last_round: Option<f64>,
    round_interval: Option<f64>,
}

/// What is remembered of one partition.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    /// Under [`UncommittedPolicy::RecentArrivals`]: the high watermark from which arrivals
    /// count, while the partition has no committed offset.
    baseline: Option<i64>,
    /// The high watermark seen last round.
    last_high: Option<i64>,
    /// Whether the partition counted as healthy last round (after damping).
    healthy: bool,
    /// The last stable offset seen last round, and since when it has been there.
    last_stable: Option<(i64, Duration)>,
    /// Offsets of the previous rounds, for rates.
    rates: RateMemory,
}

/// A `read_committed` consumer waiting at a last stable offset that has not moved for this long
/// is blocked by an open transaction: messages sent to its partition wait for that
/// transaction. Normal transactions commit within a second or so; `transaction.timeout.ms`
/// (60 s by default) is how long a hung one can hold the partition.
pub(crate) const LSO_STUCK_AFTER: Duration = Duration::from_secs(10);

impl TopicTracker {
    /// A tracker with no history, following `config`'s damping and uncommitted policy.
    pub fn new(config: &MonitorConfig) -> Self {
        Self {
            uncommitted: config.uncommitted,
            damper: Damper::new(config.damping),
            partitions: Vec::new(),
            cursor: None,
            last_round: None,
            round_interval: None,
        }
    }

    /// One round: `report` becomes the topic's health. `now` is the time of the round on any
    /// monotonic clock (the same origin every call); it paces the damping holds and, less the
    /// report's age (`SystemTime::now()` − its `collected_at`), times the rates.
    pub fn update(
        &mut self,
        now: Duration,
        report: TopicLag,
        calculator: &dyn HotPartitionCalculator,
    ) -> TopicHealth {
        let age = SystemTime::now()
            .duration_since(report.collected_at)
            .unwrap_or_default();
        self.update_with_age(now, age, report, calculator)
    }

    /// [`update`](Self::update) with the report's age given rather than read from the
    /// system clock: for simulations, which run faster than time.
    pub fn update_with_age(
        &mut self,
        now: Duration,
        age: Duration,
        mut report: TopicLag,
        calculator: &dyn HotPartitionCalculator,
    ) -> TopicHealth {
        self.count_uncommitted(&mut report);
        self.estimate_rates(now, age, &mut report);
        let blocked = self.blocked_by_transactions(now, &report);
        let mut health = calculator.calculate(&report);
        for h in health.iter_mut().filter(|h| blocked.contains(&h.partition)) {
            h.healthy = false;
            h.score = 0.0;
        }
        self.damper.apply(now, &mut health);
        for h in &health {
            if let Some(memory) = self.memory(h.partition) {
                memory.healthy = h.healthy;
            }
        }
        let health = TopicHealth::new(&report.topic, report.collected_at, health);
        match &self.cursor {
            Some(cursor) => health.with_cursor(cursor.clone()),
            None => {
                self.cursor = Some(health.cursor().clone());
                health
            }
        }
    }

    fn memory(&mut self, partition: i32) -> Option<&mut Memory> {
        let index = usize::try_from(partition)
            .ok()
            .filter(|&i| i < TopicHealth::MAX_PARTITIONS as usize)?;
        if index >= self.partitions.len() {
            self.partitions.resize(index + 1, Memory::default());
        }
        self.partitions.get_mut(index)
    }

    /// Partitions whose `read_committed` consumer has reached the last stable offset and waits
    /// there behind a transaction open for [`LSO_STUCK_AFTER`] or longer. Only collectors
    /// configured for `read_committed` groups report last stable offsets.
    fn blocked_by_transactions(&mut self, now: Duration, report: &TopicLag) -> Vec<i32> {
        let mut blocked = Vec::new();
        for p in &report.partitions {
            let Some(memory) = self.memory(p.partition) else {
                continue;
            };
            let Some(stable) = p.last_stable_offset else {
                memory.last_stable = None;
                continue;
            };
            let since = match memory.last_stable {
                Some((previous, since)) if previous == stable => since,
                _ => now,
            };
            memory.last_stable = Some((stable, since));
            let open = p.high_watermark.is_some_and(|high| stable < high);
            let waiting = p.committed.is_some_and(|c| c >= stable);
            if open && waiting && now.saturating_sub(since) >= LSO_STUCK_AFTER {
                blocked.push(p.partition);
            }
        }
        blocked
    }

    /// Fills in each partition's rates (unless the collector did), from this report and the
    /// previous ones.
    fn estimate_rates(&mut self, now: Duration, age: Duration, report: &mut TopicLag) {
        // The report was read `age` ago: rates are timed by when offsets were read, which for
        // a report shared by another instance is not when this one received it.
        let age = age.min(now).as_secs_f64();
        let at = now.as_secs_f64() - age;
        // A report read twice (a fleet follower adopting the same snapshot) is no round.
        if let Some(last) = self.last_round
            && at > last + 0.01
        {
            let dt = at - last;
            self.round_interval = Some(self.round_interval.map_or(dt, |i| i + 0.3 * (dt - i)));
            self.last_round = Some(at);
        } else if self.last_round.is_none() {
            self.last_round = Some(at);
        }
        // Health built now is used until the next round: predict backlogs for halfway through.
        let lookahead = age + self.round_interval.unwrap_or(0.0) / 2.0;
        for p in &mut report.partitions {
            let Some(memory) = self.memory(p.partition) else {
                continue;
            };
            let rates = memory.rates.observe(at, lookahead, p);
            if p.rates.is_none() {
                p.rates = Some(rates);
            }
        }
    }

    /// Fills in the lag of partitions the collector left unknown for want of a committed
    /// offset, as the policy says.
    fn count_uncommitted(&mut self, report: &mut TopicLag) {
        let policy = self.uncommitted;
        for p in &mut report.partitions {
            let Some(memory) = self.memory(p.partition) else {
                continue;
            };
            let (None, Some(high), None) = (p.committed, p.high_watermark, p.lag) else {
                // Committed (or a collector that decided itself): arrivals restart from
                // scratch should the commit ever disappear.
                memory.baseline = None;
                memory.last_high = p.high_watermark;
                continue;
            };
            p.lag = match policy {
                UncommittedPolicy::CaughtUp => Some(0),
                UncommittedPolicy::RetainedBacklog => {
                    p.low_watermark.map(|low| high.saturating_sub(low).max(0))
                }
                // `RecentArrivals`, the default (the enum is non-exhaustive).
                _ => {
                    let baseline = match (memory.baseline, memory.last_high) {
                        // Nothing arrived during a round in which it was out: whatever sits
                        // there is old; count it as caught up and give it another chance.
                        (Some(_), Some(last)) if high == last && !memory.healthy => high,
                        (Some(baseline), Some(_)) if high >= baseline => baseline,
                        // First sight, or the log shrank (topic recreated).
                        _ => high,
                    };
                    memory.baseline = Some(baseline);
                    Some(high.saturating_sub(baseline).max(0))
                }
            };
            memory.last_high = Some(high);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ksp_core::{PartitionLag, ThresholdCalculator};

    use super::*;
    use crate::damping::DampingConfig;

    /// Partition 0 committed and caught up; partition 1 uncommitted at high watermark `high`.
    fn report(high: i64) -> TopicLag {
        TopicLag::new(
            "t",
            vec![
                PartitionLag::from_offsets(0, Some(100), None, 100),
                PartitionLag::from_offsets(1, None, Some(0), high),
            ],
            SystemTime::now(),
        )
    }

    fn tracker(policy: UncommittedPolicy) -> TopicTracker {
        TopicTracker::new(
            &MonitorConfig::default()
                .with_uncommitted(policy)
                .with_damping(DampingConfig::DISABLED),
        )
    }

    fn lag_of_uncommitted(tracker: &mut TopicTracker, at: u64, high: i64) -> (i64, bool) {
        let calculator = ThresholdCalculator::new(0.5, 1000).unwrap();
        let health = tracker.update(Duration::from_secs(at), report(high), &calculator);
        let p = health.partition(1).unwrap();
        (p.lag.lag.unwrap(), p.healthy)
    }

    #[test]
    fn retained_backlog_and_caught_up_count_as_they_say() {
        let mut t = tracker(UncommittedPolicy::RetainedBacklog);
        assert_eq!(lag_of_uncommitted(&mut t, 0, 5000), (5000, false));
        let mut t = tracker(UncommittedPolicy::CaughtUp);
        assert_eq!(lag_of_uncommitted(&mut t, 0, 5000), (0, true));
    }

    /// Regression: under the retained-backlog default, a partition the group never committed
    /// (a new group starting from `latest`, say) looked hot next to committed partitions at
    /// lag 0, so nothing was routed to it, so it never got a message to commit, and it stayed
    /// hot for ever.
    #[test]
    fn uncommitted_partition_cannot_lock_itself_out() {
        let mut t = tracker(UncommittedPolicy::RecentArrivals);
        // 5000 old messages nobody will read: not counted, so it is routable at once.
        assert_eq!(lag_of_uncommitted(&mut t, 0, 5000), (0, true));
        // Messages arrive and nobody commits: they count.
        assert_eq!(lag_of_uncommitted(&mut t, 1, 5400), (400, true));
        assert_eq!(lag_of_uncommitted(&mut t, 2, 6500), (1500, false));
        // Routing stops sending it anything: after a round out with nothing new, it counts as
        // caught up and gets another chance.
        assert_eq!(lag_of_uncommitted(&mut t, 3, 6500), (0, true));
        // While healthy, a quiet round does not reset the count (a slow trickle accumulates).
        assert_eq!(lag_of_uncommitted(&mut t, 4, 6600), (100, true));
        assert_eq!(lag_of_uncommitted(&mut t, 5, 6600), (100, true));
        assert_eq!(lag_of_uncommitted(&mut t, 6, 6700), (200, true));
    }

    #[test]
    fn a_commit_takes_over_and_a_shrunk_log_restarts_the_count() {
        let mut t = tracker(UncommittedPolicy::RecentArrivals);
        assert_eq!(lag_of_uncommitted(&mut t, 0, 50), (0, true));
        assert_eq!(lag_of_uncommitted(&mut t, 1, 80), (30, true));
        // The topic was recreated: high watermark below the baseline.
        assert_eq!(lag_of_uncommitted(&mut t, 2, 10), (0, true));
        // A commit: the ordinary lag.
        let calculator = ThresholdCalculator::default();
        let committed = TopicLag::new(
            "t",
            vec![PartitionLag::from_offsets(1, Some(5), None, 30)],
            SystemTime::now(),
        );
        let health = t.update(Duration::from_secs(3), committed, &calculator);
        assert_eq!(health.partition(1).unwrap().lag.lag, Some(25));
    }

    /// A `read_committed` consumer caught up to a last stable offset that stays behind the high
    /// watermark is blocked by an open transaction: unhealthy once that lasted
    /// `LSO_STUCK_AFTER`, whatever its lag; healthy again when the transaction ends.
    #[test]
    fn a_partition_blocked_behind_a_hung_transaction_is_unhealthy() {
        let mut t = tracker(UncommittedPolicy::RecentArrivals);
        let calculator = ThresholdCalculator::default();
        let round = |t: &mut TopicTracker, at: u64, stable: i64, high: i64| {
            let mut p = PartitionLag::from_offsets(0, Some(stable), None, high);
            p.last_stable_offset = Some(stable);
            let lag = TopicLag::new("t", vec![p], SystemTime::now());
            let health = t.update(Duration::from_secs(at), lag, &calculator);
            health.partition(0).unwrap().healthy
        };
        // Transactions that commit between rounds: the LSO moves, always healthy.
        assert!(round(&mut t, 0, 100, 110));
        assert!(round(&mut t, 5, 110, 120));
        // A transaction opens at 120 and hangs: 5 messages behind it, a small lag.
        assert!(round(&mut t, 10, 120, 125));
        assert!(round(&mut t, 15, 120, 125));
        assert!(!round(&mut t, 20, 120, 125), "blocked for 10 s");
        assert!(!round(&mut t, 25, 120, 126));
        // Aborted or committed: the LSO catches up.
        assert!(round(&mut t, 30, 126, 126));
        // Without last stable offsets (read_uncommitted groups) nothing of this applies.
        let mut p = PartitionLag::from_offsets(0, Some(120), None, 125);
        p.last_stable_offset = None;
        let health = t.update(
            Duration::from_secs(60),
            TopicLag::new("t", vec![p], SystemTime::now()),
            &calculator,
        );
        assert!(health.partition(0).unwrap().healthy);
    }

    /// Each refresh builds the topic's health anew, but its sticky cursor carries on: a batch
    /// in progress does not end early because health was refreshed.
    #[test]
    fn the_sticky_cursor_carries_over_from_one_refresh_to_the_next() {
        let mut t = tracker(UncommittedPolicy::RecentArrivals);
        let calculator = ThresholdCalculator::default();
        let first = t.update(Duration::ZERO, report(10), &calculator);
        let batch = first.cursor().advance(10, 1000, 0, u64::MAX);
        let second = t.update(Duration::from_secs(1), report(10), &calculator);
        assert!(Arc::ptr_eq(first.cursor(), second.cursor()));
        assert_eq!(second.cursor().advance(10, 1000, 0, u64::MAX), batch);
    }

    #[test]
    fn collectors_that_decide_the_lag_themselves_are_left_alone() {
        let mut t = tracker(UncommittedPolicy::CaughtUp);
        let mut p = PartitionLag::from_lag(0, 7000);
        p.high_watermark = Some(7000);
        let health = t.update(
            Duration::ZERO,
            TopicLag::new("t", vec![p], SystemTime::now()),
            &ThresholdCalculator::default(),
        );
        assert_eq!(health.partition(0).unwrap().lag.lag, Some(7000));
    }

    #[test]
    fn rates_come_from_consecutive_rounds_and_a_collectors_own_are_kept() {
        let mut t = tracker(UncommittedPolicy::CaughtUp);
        let calculator = ThresholdCalculator::default();
        // Partition 0: 100 msg/s arrive and its consumer keeps up. Partition 1: 100 msg/s,
        // drained at 50 with a growing backlog. Partition 2: the collector's own rates.
        let mut last = None;
        for second in 0..10i64 {
            let mut own = PartitionLag::from_offsets(2, Some(0), None, 10);
            own.rates = Some(ksp_core::PartitionRates::new().with_capacity(7.0));
            let report = TopicLag::new(
                "t",
                vec![
                    PartitionLag::from_offsets(0, Some(second * 100), None, second * 100 + 20),
                    PartitionLag::from_offsets(1, Some(second * 50), None, second * 100 + 20),
                    own,
                ],
                SystemTime::now(),
            );
            last = Some(t.update_with_age(
                Duration::from_secs(second as u64),
                Duration::ZERO,
                report,
                &calculator,
            ));
        }
        let health = last.unwrap();
        let rates = |p: i32| health.partition(p).unwrap().lag.rates.unwrap();
        assert!(
            (rates(0).arrival_rate.unwrap() - 100.0).abs() < 1.0,
            "{:?}",
            rates(0)
        );
        assert!(
            (rates(0).drain_rate.unwrap() - 100.0).abs() < 1.0,
            "{:?}",
            rates(0)
        );
        assert_eq!(
            rates(1).state,
            ksp_core::ConsumerState::Draining,
            "{:?}",
            rates(1)
        );
        assert!(
            (rates(1).capacity.unwrap() - 50.0).abs() < 1.0,
            "{:?}",
            rates(1)
        );
        // 470 waiting at 50 msg/s, growing by 50/s for half a round: about 9.9 s.
        let secs = rates(1).time_lag.unwrap().as_secs_f64();
        assert!((9.0..11.0).contains(&secs), "{:?}", rates(1));
        assert_eq!(rates(2), ksp_core::PartitionRates::new().with_capacity(7.0));
    }
}
