//! Drain and arrival rates of one partition, from consecutive rounds.

use std::time::Duration;

use ksp_core::{ConsumerState, PartitionLag, PartitionRates};

/// Smoothing time constant of the rate estimates: a step change in a rate shows half within
/// about 1.4 s of samples.
const SMOOTHING_SECS: f64 = 2.0;

/// A partition whose backlog stays and whose committed offset does not move for this many
/// rounds, and as many of its usual commit intervals, is stalled.
const STALL_ROUNDS: f64 = 3.0;

/// How long a capacity measured under backlog is trusted as is while the partition gets less
/// than half of it. Past this, the estimate grows (doubling every [`RELAX_DOUBLING_SECS`])
/// until the consumer is seen under backlog again: a consumer that got faster while it had
/// little to do is found without anyone telling.
const RELAX_AFTER_SECS: f64 = 30.0;
const RELAX_DOUBLING_SECS: f64 = 30.0;
/// At most twice the measured capacity: enough for the sharing rule to offer a starved
/// consumer more than it was measured at (so a faster one shows it), not so much that a
/// consumer as slow as measured is offered a load it cannot carry.
const RELAX_MAX_DOUBLINGS: f64 = 1.0;

/// A consumer is at its capacity, though it drains more than was waiting, when its backlog
/// grew over this many commit intervals running, ...
const GROWING_INTERVALS: u8 = 2;
/// ... the backlog is more than this many seconds of its drain, ...
const GROWING_BACKLOG_SECS: f64 = 0.25;
/// ... and arrivals are this many times the drain rate.
const GROWING_FACTOR: f64 = 1.1;

/// Two rounds closer than this are the same report read twice (a fleet follower adopting a
/// snapshot again): the second teaches nothing and is not sampled.
const SAME_ROUND_SECS: f64 = 0.01;

/// A commit after a gap of more than this many commit intervals (a rebalance, a restart, a
/// stall that ended) is a new start, not a sample of the consumer's speed.
const LONG_GAP_INTERVALS: f64 = 3.0;

/// What is remembered of one partition's offsets between rounds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RateMemory {
    /// The previous round: its time (seconds on the tracker's clock) and high watermark.
    previous: Option<(f64, i64)>,
    /// When the committed offset last changed, to what, and the lag seen in that round.
    last_change: Option<Change>,
    /// Whether a committed offset was ever seen (its disappearance means the group is gone).
    had_commit: bool,
    drain: Option<f64>,
    /// The capacity last measured under backlog (smoothed).
    capacity: Option<f64>,
    /// When it was last measured (or seen exceeded).
    capacity_at: f64,
    /// Doublings of the measured capacity it is now assumed to drain (see
    /// [`RELAX_AFTER_SECS`]).
    relaxed: f64,
    arrival: Option<f64>,
    commit_interval: Option<f64>,
    round_interval: Option<f64>,
    /// Whether the last commit interval was drained under backlog.
    draining: bool,
    /// Consecutive commit intervals over which the lag grew.
    growing: u8,
    /// What the last round reported, for a report read twice.
    last: Option<PartitionRates>,
}

#[derive(Debug, Clone, Copy)]
struct Change {
    at: f64,
    committed: i64,
    lag: i64,
    /// The high watermark then: messages arrived since if it moved.
    high: Option<i64>,
    /// The offset was first seen here, not seen changing: not a commit time.
    first_sight: bool,
}

/// Exponential smoothing over irregular samples: the weight of a sample grows with the time
/// it covers.
fn smooth(previous: Option<f64>, sample: f64, covered: f64) -> f64 {
    match previous {
        Some(previous) => {
            let alpha = 1.0 - (-covered / SMOOTHING_SECS).exp();
            previous + alpha.clamp(0.0, 1.0) * (sample - previous)
        }
        None => sample,
    }
}

impl RateMemory {
    /// One round at `at` seconds, `lookahead` seconds before the health built from it is
    /// halfway through its use: the rates of `p`.
    pub(crate) fn observe(&mut self, at: f64, lookahead: f64, p: &PartitionLag) -> PartitionRates {
        let previous = self.previous;
        if let Some((then, _)) = previous
            && at - then < SAME_ROUND_SECS
        {
            return self.last.unwrap_or_default();
        }
        if let Some((then, high)) = previous
            && let Some(now_high) = p.high_watermark
        {
            let dt = at - then;
            self.round_interval = Some(smooth(self.round_interval, dt, dt));
            if now_high >= high {
                let rate = (now_high - high) as f64 / dt;
                self.arrival = Some(smooth(self.arrival, rate, dt));
            }
        }
        if let Some(high) = p.high_watermark {
            self.previous = Some((at, high));
        }

        let lag = p.lag.unwrap_or(0).max(0);
        let gone_commit = self.had_commit && p.committed.is_none() && p.leader_available;
        let change_here = |first_sight| Change {
            at,
            committed: p.committed.unwrap_or(0),
            lag,
            high: p.high_watermark,
            first_sight,
        };
        if let Some(committed) = p.committed {
            self.had_commit = true;
            match self.last_change {
                Some(change) if committed > change.committed && at > change.at => {
                    let dt = at - change.at;
                    let long_gap = self.commit_interval.is_some_and(|ci| {
                        dt > LONG_GAP_INTERVALS * ci.max(self.round_interval.unwrap_or(0.0))
                    });
                    if change.first_sight || long_gap {
                        // Not a commit interval (first sight is not a commit time; a long gap
                        // is a restart or a stall that ended): start measuring from here.
                        self.growing = 0;
                    } else {
                        self.sample_commit(change, committed, lag, dt, at);
                    }
                    self.last_change = Some(change_here(false));
                }
                Some(change) if committed == change.committed => {
                    if p.lag == Some(0)
                        && let Some((then, _)) = previous
                        && at > then
                    {
                        // Nothing to drain and nothing drained: it drains what arrives.
                        let dt = at - then;
                        self.drain = Some(smooth(self.drain, self.arrival.unwrap_or(0.0), dt));
                        self.draining = false;
                    }
                }
                // First sight, or the offset went back (reset by an operator): start over.
                _ => {
                    self.last_change = Some(change_here(true));
                    self.draining = false;
                    self.growing = 0;
                }
            }
        }

        let since_commit = self.last_change.map_or(0.0, |c| at - c.at);
        // Stalled: a backlog, messages arrived since the last commit and none of them was
        // committed, for several of its commit intervals. Until two commits have shown its
        // interval (a Kafka Streams app commits every 30 s, Flink at each checkpoint), only
        // a consumer silent for `GONE_AFTER` counts.
        let arrived_since = self.last_change.is_some_and(|c| {
            p.high_watermark
                .zip(c.high)
                .is_some_and(|(now, then)| now > then)
        });
        let stall_after = match self.commit_interval {
            Some(ci) => STALL_ROUNDS * self.round_interval.unwrap_or(0.0).max(ci).max(1.0),
            None => PartitionRates::GONE_AFTER.as_secs_f64(),
        };
        let stalled =
            p.committed.is_some() && lag > 0 && arrived_since && since_commit >= stall_after;
        let state = if gone_commit
            || (stalled && since_commit >= PartitionRates::GONE_AFTER.as_secs_f64())
        {
            ConsumerState::Gone
        } else if stalled {
            ConsumerState::Stalled
        } else if self.drain.is_none() {
            ConsumerState::Unknown
        } else if self.draining {
            ConsumerState::Draining
        } else {
            ConsumerState::CaughtUp
        };

        // Offered less than half of its capacity for a while: trust the old measurement less,
        // round by round, until the consumer is seen under backlog again.
        if let (Some(measured), Some((then, _))) = (self.capacity, previous)
            && at > then
            && at - self.capacity_at > RELAX_AFTER_SECS
            && !self.draining
            && self
                .drain
                .is_none_or(|d| d < measured * self.relaxed.exp2() / 2.0)
        {
            self.relaxed =
                (self.relaxed + (at - then) / RELAX_DOUBLING_SECS).min(RELAX_MAX_DOUBLINGS);
        }
        let capacity = self.capacity.map(|c| c * self.relaxed.exp2());
        let mut rates = PartitionRates::new();
        rates.drain_rate = self.drain;
        rates.capacity = capacity;
        rates.arrival_rate = self.arrival;
        rates.commit_interval = self
            .commit_interval
            .and_then(|c| Duration::try_from_secs_f64(c).ok());
        rates.state = state;
        if p.lag.is_some() && !state.is_stopped() {
            let planned = capacity.or(self.drain).filter(|c| *c > 0.0);
            // Committed offsets trail what the consumer has read by up to one commit
            // interval of its drain: a consumer that keeps up shows that much lag just before
            // each commit, half of it on average. Not a backlog: a caught-up consumer's
            // time-lag leaves that mean out. A draining one keeps it (what it shows is then
            // an upper bound, the safe side for the share it is offered).
            let drain = self.drain.unwrap_or(0.0);
            let uncommitted = if state == ConsumerState::CaughtUp {
                drain * self.commit_interval.unwrap_or(0.0) / 2.0
            } else {
                0.0
            };
            // The backlog when the health is halfway through its use: what waits now, plus
            // what arrives meanwhile, minus what the consumer drains meanwhile.
            let net = self.arrival.unwrap_or(0.0) - drain;
            let backlog = ((lag as f64 - uncommitted).max(0.0) + net * lookahead).max(0.0);
            rates.time_lag = match planned {
                Some(c) => Duration::try_from_secs_f64(backlog / c).ok(),
                None if backlog == 0.0 => Some(Duration::ZERO),
                None => None,
            };
        }
        self.last = Some(rates);
        rates
    }

    /// A commit `dt` seconds after the previous one (`change`), at `committed` with `lag`
    /// left: a sample of the drain rate, the commit interval and, if the consumer was busy,
    /// its capacity.
    fn sample_commit(&mut self, change: Change, committed: i64, lag: i64, dt: f64, at: f64) {
        let drained = (committed - change.committed) as f64;
        let rate = drained / dt;
        if !rate.is_finite() {
            return;
        }
        self.drain = Some(smooth(self.drain, rate, dt));
        if change.lag > 0 {
            // Something was there to commit all along: the gap is the consumer's commit
            // interval, not a quiet spell.
            self.commit_interval = Some(smooth(self.commit_interval, dt, dt));
        }
        self.growing = if lag > change.lag {
            self.growing.saturating_add(1)
        } else {
            0
        };
        // Busy the whole interval: more was waiting at its start than it drained. Or falling
        // behind: the backlog grew over two intervals running while more arrived than it
        // drained.
        self.draining = change.lag as f64 > drained
            || (self.growing >= GROWING_INTERVALS
                && lag as f64 > GROWING_BACKLOG_SECS * rate
                && self.arrival.is_some_and(|a| a > GROWING_FACTOR * rate));
        // One sample never more than doubles the estimate: an offset reset to the end of the
        // log (an operator skipping a backlog) reads as millions of messages a second.
        let effective = self.capacity.map(|c| c * self.relaxed.exp2());
        let sample = effective.map_or(rate, |c| rate.min(2.0 * c));
        if self.draining {
            self.capacity = Some(smooth(self.capacity, sample, dt));
            self.capacity_at = at;
            self.relaxed = 0.0;
        } else if effective.is_some_and(|c| rate > c) {
            // Seen draining faster than it was thought able to.
            self.capacity = Some(sample);
            self.capacity_at = at;
            self.relaxed = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A consumer with a capacity, committing its position every `commit_every` seconds, read
    /// once a second.
    struct Consumer {
        memory: RateMemory,
        now: f64,
        high: f64,
        position: f64,
        committed: i64,
        since_commit: f64,
        commit_every: f64,
    }

    impl Consumer {
        fn new(commit_every: f64) -> Self {
            Self {
                memory: RateMemory::default(),
                now: 0.0,
                high: 0.0,
                position: 0.0,
                committed: 0,
                // Commits out of phase with the reads, as in life.
                since_commit: 0.3,
                commit_every,
            }
        }

        /// Runs `seconds` with `arrival` msg/s arriving and the consumer draining up to
        /// `capacity`; returns the rates of the last round.
        fn run(&mut self, seconds: u32, arrival: f64, capacity: f64) -> PartitionRates {
            let mut rates = PartitionRates::new();
            for _ in 0..seconds {
                for _ in 0..10 {
                    self.high += arrival / 10.0;
                    self.position = (self.position + capacity / 10.0).min(self.high.floor());
                    self.since_commit += 0.1;
                    if self.since_commit >= self.commit_every - 1e-9 {
                        self.committed = self.position as i64;
                        self.since_commit = 0.0;
                    }
                }
                self.now += 1.0;
                let p = PartitionLag::from_offsets(0, Some(self.committed), None, self.high as i64);
                rates = self.memory.observe(self.now, 0.0, &p);
            }
            rates
        }
    }

    fn near(value: Option<f64>, expected: f64) -> bool {
        value.is_some_and(|v| (v - expected).abs() <= expected * 0.1)
    }

    #[test]
    fn capacity_is_measured_under_backlog_and_kept_once_caught_up() {
        let mut c = Consumer::new(0.5);
        // 200 msg/s for a consumer of 100: a backlog builds and the drain is its capacity.
        let rates = c.run(20, 200.0, 100.0);
        assert_eq!(rates.state, ConsumerState::Draining);
        assert!(near(rates.capacity, 100.0), "{rates:?}");
        assert!(near(rates.arrival_rate, 200.0), "{rates:?}");
        // Backlog ~2 000 at 100 msg/s: about 20 s behind.
        let secs = rates.time_lag.unwrap().as_secs_f64();
        assert!((18.0..=22.0).contains(&secs), "{rates:?}");
        // Load falls to 70 msg/s: it catches up (2 000 at 30 msg/s net, ~67 s), then drains
        // only what arrives; the capacity measured under backlog stays.
        let rates = c.run(90, 70.0, 100.0);
        assert_eq!(rates.state, ConsumerState::CaughtUp, "{rates:?}");
        assert!(near(rates.drain_rate, 70.0), "{rates:?}");
        assert!(near(rates.capacity, 100.0), "{rates:?}");
        assert!(
            rates.time_lag.unwrap() < Duration::from_secs(1),
            "{rates:?}"
        );
    }

    #[test]
    fn a_consumer_that_commits_every_five_seconds_is_not_read_as_stopped() {
        let mut c = Consumer::new(5.0);
        for round in 0..30 {
            let rates = c.run(1, 100.0, 150.0);
            assert!(!rates.state.is_stopped(), "round {round}: {rates:?}");
        }
        let rates = c.run(1, 100.0, 150.0);
        assert!(near(rates.drain_rate, 100.0), "{rates:?}");
        let interval = rates.commit_interval.unwrap().as_secs_f64();
        assert!((4.5..=5.5).contains(&interval), "{rates:?}");
    }

    #[test]
    fn a_consumer_that_stops_is_stalled_then_gone() {
        let mut c = Consumer::new(1.0);
        c.run(10, 100.0, 150.0);
        assert!(c.memory.commit_interval.is_some());
        // It stops: a backlog builds, nothing is committed.
        let rates = c.run(2, 100.0, 0.0);
        assert!(
            !rates.state.is_stopped(),
            "two rounds are not a stall: {rates:?}"
        );
        let rates = c.run(2, 100.0, 0.0);
        assert_eq!(rates.state, ConsumerState::Stalled, "{rates:?}");
        assert_eq!(rates.time_lag, None);
        let rates = c.run(300, 100.0, 0.0);
        assert_eq!(rates.state, ConsumerState::Gone, "{rates:?}");
        // It comes back.
        let rates = c.run(3, 100.0, 1_000.0);
        assert!(!rates.state.is_stopped(), "{rates:?}");
    }

    #[test]
    fn a_quiet_partition_is_not_stalled() {
        let mut c = Consumer::new(1.0);
        c.run(10, 100.0, 150.0);
        // Nothing arrives: nothing to commit, no backlog.
        let rates = c.run(30, 0.0, 150.0);
        assert_eq!(rates.state, ConsumerState::CaughtUp, "{rates:?}");
    }

    #[test]
    fn a_commit_that_disappears_means_the_consumer_is_gone() {
        let mut memory = RateMemory::default();
        memory.observe(0.0, 0.0, &PartitionLag::from_offsets(0, Some(10), None, 10));
        memory.observe(1.0, 0.0, &PartitionLag::from_offsets(0, Some(20), None, 20));
        let rates = memory.observe(2.0, 0.0, &PartitionLag::from_offsets(0, None, None, 30));
        assert_eq!(rates.state, ConsumerState::Gone);
    }

    #[test]
    fn a_consumer_that_got_faster_while_starved_is_found() {
        let mut c = Consumer::new(0.5);
        c.run(20, 200.0, 100.0);
        c.run(40, 20.0, 100.0);
        // Offered little for a while, the capacity it may have is assumed to grow (up to
        // twice what was measured), so that it is offered more and can show a new speed.
        let rates = c.run(60, 20.0, 100.0);
        assert!(near(rates.capacity, 200.0), "{rates:?}");
        // Offered 180 msg/s, it drains them all: measured faster, the estimate follows.
        let rates = c.run(20, 180.0, 400.0);
        assert!(rates.capacity.is_some_and(|v| v >= 170.0), "{rates:?}");
        // Offered more than it can (it is really 100), it is measured again.
        let mut c = Consumer::new(0.5);
        c.run(20, 200.0, 100.0);
        c.run(100, 20.0, 100.0);
        let rates = c.run(30, 180.0, 100.0);
        assert_eq!(rates.state, ConsumerState::Draining, "{rates:?}");
        assert!(near(rates.capacity, 100.0), "{rates:?}");
    }

    #[test]
    fn a_consumer_that_commits_every_thirty_seconds_is_not_called_stalled() {
        // Kafka Streams' default commit interval: lag > 0 between commits all along.
        let mut c = Consumer::new(30.0);
        for round in 0..120 {
            let rates = c.run(1, 100.0, 150.0);
            assert!(!rates.state.is_stopped(), "round {round}: {rates:?}");
        }
        // Caught up: what waits between commits is commit timing, not a backlog.
        let rates = c.run(1, 100.0, 150.0);
        assert_eq!(rates.state, ConsumerState::CaughtUp, "{rates:?}");
    }

    #[test]
    fn a_leftover_lag_with_nothing_arriving_is_not_a_stall() {
        // A transaction's commit marker (or a client committing the last offset, not +1)
        // leaves a lag of 1 that no consumer will ever commit away.
        let mut memory = RateMemory::default();
        for second in 0..10i64 {
            let high = 100 * second + 1;
            let p = PartitionLag::from_offsets(0, Some(high - 1), None, high);
            memory.observe(second as f64, 0.0, &p);
        }
        for second in 10..400i64 {
            let p = PartitionLag::from_offsets(0, Some(900), None, 901);
            let rates = memory.observe(second as f64, 0.0, &p);
            assert!(!rates.state.is_stopped(), "second {second}: {rates:?}");
        }
    }

    #[test]
    fn an_offset_reset_to_the_end_does_not_make_a_fast_consumer() {
        let mut c = Consumer::new(0.5);
        c.run(20, 200.0, 100.0);
        // An operator skips the backlog: the committed offset jumps to the end.
        c.position = c.high.floor();
        let rates = c.run(3, 50.0, 100.0);
        assert!(
            rates.capacity.is_some_and(|v| v <= 200.0 + 1e-9),
            "{rates:?}"
        );
    }

    #[test]
    fn a_report_read_twice_teaches_nothing() {
        let mut memory = RateMemory::default();
        let mut last = PartitionRates::new();
        for second in 0..10i64 {
            let p = PartitionLag::from_offsets(0, Some(100 * second), None, 100 * second + 10);
            last = memory.observe(second as f64, 0.0, &p);
        }
        let p = PartitionLag::from_offsets(0, Some(900), None, 910);
        let again = memory.observe(9.001, 0.0, &p);
        assert_eq!(again, last);
        assert!(near(memory.arrival, 100.0), "{memory:?}");
    }

    #[test]
    fn a_long_pause_then_a_catch_up_is_not_a_speed() {
        let mut c = Consumer::new(0.5);
        c.run(20, 200.0, 100.0);
        // A rebalance: nothing committed for 20 s, then it resumes at its speed.
        c.run(20, 100.0, 0.0);
        let rates = c.run(2, 100.0, 100.0);
        assert!(rates.capacity.is_some_and(|v| v > 50.0), "{rates:?}");
    }
}
