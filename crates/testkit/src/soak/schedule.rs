//! The soak's seeded random fault schedule: episodes of one to three overlapping faults, each
//! followed by a quiet window in which recovery is measured.

use std::fmt;
use std::time::Duration;

/// A small seeded generator (SplitMix64): the same seed gives the same schedule on every
/// machine, with no dependency.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform between `from` and `to`.
    pub(crate) fn between(&mut self, from: Duration, to: Duration) -> Duration {
        from + (to.saturating_sub(from)).mul_f64(self.unit())
    }
}

/// One kind of fault the soak injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FaultKind {
    /// A broker goes down, then up.
    BrokerDown,
    /// Every partition's leader moves to another broker (once; they stay there).
    LeaderMoves,
    /// Every `ListOffsets` request fails.
    ListOffsetsErrors,
    /// Every `OffsetFetch` request fails.
    OffsetFetchErrors,
    /// The topic's metadata reports `LEADER_NOT_AVAILABLE`.
    MetadataErrors,
    /// Every `Produce` request fails with a retriable error.
    ProduceErrors,
    /// Brokers answer late (a round-trip-time spike).
    RttSpike,
    /// `redis-server` is killed (SIGKILL), then restarted empty.
    RedisDown,
    /// The fleet's leader instance is closed, then a new one takes its place.
    LeaderRestart,
    /// One partition's consumer stops reading, then resumes.
    ConsumerStall,
    /// One instance gets a burst of sends three times its local queue.
    QueueSaturation,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 11] = [
        FaultKind::BrokerDown,
        FaultKind::LeaderMoves,
        FaultKind::ListOffsetsErrors,
        FaultKind::OffsetFetchErrors,
        FaultKind::MetadataErrors,
        FaultKind::ProduceErrors,
        FaultKind::RttSpike,
        FaultKind::RedisDown,
        FaultKind::LeaderRestart,
        FaultKind::ConsumerStall,
        FaultKind::QueueSaturation,
    ];
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::BrokerDown => "broker down/up",
            FaultKind::LeaderMoves => "leader moves",
            FaultKind::ListOffsetsErrors => "ListOffsets errors",
            FaultKind::OffsetFetchErrors => "OffsetFetch errors",
            FaultKind::MetadataErrors => "Metadata errors",
            FaultKind::ProduceErrors => "Produce errors",
            FaultKind::RttSpike => "broker RTT spike",
            FaultKind::RedisDown => "redis-server killed/restarted",
            FaultKind::LeaderRestart => "fleet leader closed/restarted",
            FaultKind::ConsumerStall => "consumer stalled",
            FaultKind::QueueSaturation => "local queue saturated",
        })
    }
}

/// A fault in an episode: what, and when (from the start of the soak).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Planned {
    pub(crate) kind: FaultKind,
    pub(crate) from: Duration,
    pub(crate) to: Duration,
    /// A random draw for the fault's target (which broker, partition, instance; how slow).
    pub(crate) pick: u64,
}

/// One to three overlapping faults, then a quiet window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Episode {
    pub(crate) faults: Vec<Planned>,
    /// When the last of its faults ends.
    pub(crate) end: Duration,
    /// When the next episode may start: the quiet window is `end..quiet_until`.
    pub(crate) quiet_until: Duration,
}

/// The whole schedule of a soak of `duration` from `seed`. Kinds are dealt from a shuffled
/// deck of all of them, so that a short soak still sees every kind; no episode holds the same
/// kind twice. Faults last 0.5–4 s; quiet windows at least `quiet` long.
pub(crate) fn plan(
    seed: u64,
    duration: Duration,
    start: Duration,
    quiet: Duration,
) -> Vec<Episode> {
    let mut rng = Rng::new(seed);
    let mut deck: Vec<FaultKind> = Vec::new();
    let mut episodes = Vec::new();
    let mut at = start;
    loop {
        let count = 1 + rng.below(3) as usize;
        let mut faults: Vec<Planned> = Vec::with_capacity(count);
        while faults.len() < count {
            if deck.is_empty() {
                deck = FaultKind::ALL.to_vec();
                // Fisher–Yates.
                for i in (1..deck.len()).rev() {
                    deck.swap(i, rng.below(i as u64 + 1) as usize);
                }
            }
            let Some(kind) = deck.pop() else { break };
            if faults.iter().any(|f| f.kind == kind) {
                deck.insert(0, kind);
                continue;
            }
            let from = at + rng.between(Duration::ZERO, Duration::from_secs(1));
            let to = from + rng.between(Duration::from_millis(500), Duration::from_secs(4));
            faults.push(Planned {
                kind,
                from,
                to,
                pick: rng.next_u64(),
            });
        }
        let end = faults.iter().map(|f| f.to).max().unwrap_or(at);
        let quiet_until = end + quiet + rng.between(Duration::ZERO, Duration::from_secs(2));
        if quiet_until > duration {
            break;
        }
        at = quiet_until;
        episodes.push(Episode {
            faults,
            end,
            quiet_until,
        });
    }
    episodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a = plan(
            7,
            Duration::from_secs(600),
            Duration::from_secs(3),
            Duration::from_secs(4),
        );
        let b = plan(
            7,
            Duration::from_secs(600),
            Duration::from_secs(3),
            Duration::from_secs(4),
        );
        let c = plan(
            8,
            Duration::from_secs(600),
            Duration::from_secs(3),
            Duration::from_secs(4),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn episodes_overlap_faults_and_leave_quiet_windows() {
        let episodes = plan(
            1,
            Duration::from_secs(3600),
            Duration::from_secs(3),
            Duration::from_secs(4),
        );
        assert!(episodes.len() > 100);
        let mut previous_quiet = Duration::ZERO;
        let mut overlapping = 0;
        for e in &episodes {
            assert!((1..=3).contains(&e.faults.len()));
            for f in &e.faults {
                assert!(f.from >= previous_quiet && f.to > f.from && f.to <= e.end);
            }
            assert!(e.quiet_until >= e.end + Duration::from_secs(4));
            let (a, b) = (e.faults.first().unwrap(), e.faults.last().unwrap());
            if e.faults.len() > 1 && a.from.max(b.from) < a.to.min(b.to) {
                overlapping += 1;
            }
            previous_quiet = e.quiet_until;
        }
        assert!(
            overlapping > 10,
            "{overlapping} episodes with overlapping faults"
        );
    }

    #[test]
    fn a_one_minute_soak_sees_every_kind() {
        let episodes = plan(
            crate::soak::DEFAULT_SEED,
            Duration::from_secs(60),
            Duration::from_secs(3),
            Duration::from_secs(4),
        );
        let mut kinds: Vec<FaultKind> = episodes
            .iter()
            .flat_map(|e| e.faults.iter().map(|f| f.kind))
            .collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds, FaultKind::ALL.to_vec());
    }
}
