//! [`TopicHealth`]: the health of every partition of a topic, with the tables the router
//! reads.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::clock;
use crate::health::PartitionHealth;
use crate::lag::{PartitionLag, TopicLag};
use crate::shares::{WEIGHT_SCALE, capacity_plan, half_are_routable, keyless_shares};
use crate::sticky::StickyCursor;

/// Health of every partition of one topic, with the tables the router needs precomputed so that
/// a routing decision does no work proportional to the partition count.
///
/// A `TopicHealth` is immutable except for its [`StickyCursor`], the router's scratch space for
/// sticky keyless routing (see [`TopicHealth::cursor`]), which successive healths of a topic
/// can share, and a one-entry cache of the last keyless batch's partition (see
/// [`TopicHealth::pick_for_batch`]).
#[derive(Debug)]
pub struct TopicHealth {
    topic: Box<str>,
    topic_hash: u64,
    collected_at: SystemTime,
    /// Dense: index `i` holds partition `i`.
    partitions: Box<[PartitionHealth]>,
    /// Routable partition ids, ascending.
    routable: Box<[i32]>,
    /// Partitions keyless batches may go to, ascending (see [`TopicHealth::pick_weighted`]).
    picks: Box<[i32]>,
    /// `cumulative[i]` = sum of the weights of `picks[..=i]`.
    cumulative: Box<[u64]>,
    /// Weight of each routable partition (same order as `routable`) in the choice of a moved
    /// key's detour: its headroom under the capacity model, 1 otherwise.
    detour_weights: Box<[f64]>,
    routable_bits: Box<[u64]>,
    absorbs_moved_keys: bool,
    by_capacity: bool,
    stale: bool,
    /// When this health turns stale by itself, in raw ticks of the clock that set it
    /// ([`clock::global`] for [`stale_in`](Self::stale_in), any for
    /// [`stale_in_on`](Self::stale_in_on)); [`NEVER`]: only when marked.
    fresh_until: u64,
    cursor: Arc<StickyCursor>,
    /// The last batch [`pick_for_batch`](Self::pick_for_batch) picked for: its number in the
    /// high half, its partition + 1 in the low half; [`NO_PICK`] before the first.
    last_pick: AtomicU64,
}

/// [`TopicHealth::fresh_until`] of health that turns stale only when marked.
const NEVER: u64 = u64::MAX;

/// [`TopicHealth::last_pick`] before any pick (no partition is `u32::MAX - 1`).
const NO_PICK: u64 = u64::MAX;

impl TopicHealth {
    /// Highest partition count a topic's health may have. Partition ids at or above it are
    /// dropped: the tables are dense, so a collector or calculator reporting partition
    /// 2 000 000 000 would otherwise make this allocate gigabytes.
    pub const MAX_PARTITIONS: i32 = 1 << 20;

    /// Builds the health of a topic from a calculator's output.
    ///
    /// Partition ids are dense in Kafka (`0..n`); ids missing from `health` are filled in as
    /// unavailable, negative ids and ids of [`MAX_PARTITIONS`](Self::MAX_PARTITIONS) or more are
    /// dropped, and a duplicate id keeps its first entry.
    pub fn new(topic: &str, collected_at: SystemTime, health: Vec<PartitionHealth>) -> Self {
        let valid = |h: &PartitionHealth| (0..Self::MAX_PARTITIONS).contains(&h.partition);
        let count = health
            .iter()
            .filter(|h| valid(h))
            .map(|h| h.partition as usize + 1)
            .max()
            .unwrap_or(0);
        let mut dense: Vec<Option<PartitionHealth>> = vec![None; count];
        for h in health.into_iter().filter(valid) {
            let slot = &mut dense[h.partition as usize];
            if slot.is_none() {
                *slot = Some(h);
            }
        }
        let partitions: Box<[PartitionHealth]> = dense
            .into_iter()
            .enumerate()
            .map(|(id, h)| {
                h.unwrap_or_else(|| {
                    PartitionHealth::new(PartitionLag::unavailable(id as i32), 0.0, false)
                })
            })
            .collect();

        let mut routable = Vec::new();
        let mut routable_bits = vec![0u64; count.div_ceil(64)];
        for h in partitions.iter().filter(|h| h.is_routable()) {
            routable.push(h.partition);
            routable_bits[h.partition as usize / 64] |= 1 << (h.partition as usize % 64);
        }
        let (shares, absorbs_moved_keys, detour_weights, by_capacity) =
            match capacity_plan(&partitions) {
                Some(plan) => {
                    let most = routable
                        .iter()
                        .map(|&p| plan.headroom[p as usize])
                        .fold(0.0, f64::max);
                    let weights = routable
                        .iter()
                        .map(|&p| detour_weight(plan.headroom[p as usize], most))
                        .collect();
                    (plan.shares, plan.absorbs_moved_keys, weights, true)
                }
                None => {
                    let weights = vec![1.0; routable.len()].into();
                    let absorbs = half_are_routable(&partitions);
                    (keyless_shares(&partitions), absorbs, weights, false)
                }
            };
        let mut picks = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0u64;
        for (partition, share) in shares.iter().enumerate().filter(|(_, s)| **s > 0.0) {
            total += ((share * WEIGHT_SCALE).round() as u64).max(1);
            picks.push(partition as i32);
            cumulative.push(total);
        }

        Self {
            topic: topic.into(),
            topic_hash: topic_hash(topic),
            collected_at,
            partitions,
            routable: routable.into(),
            picks: picks.into(),
            cumulative: cumulative.into(),
            detour_weights,
            routable_bits: routable_bits.into(),
            absorbs_moved_keys,
            by_capacity,
            stale: false,
            fresh_until: NEVER,
            cursor: Arc::new(StickyCursor::new()),
            last_pick: AtomicU64::new(NO_PICK),
        }
    }

    /// Whether the keys of unroutable partitions may move onto the routable ones. When not,
    /// keys stay home: herding them onto the few healthy partitions would overload those.
    ///
    /// With drain rates known (see [`is_capacity_planned`](Self::is_capacity_planned)): whether
    /// the routable partitions' consumers can together drain everything that arrives on the
    /// topic. Without: whether at least half the partitions with a leader are routable (moving
    /// every key then gives none more than twice its fair share).
    #[inline]
    pub fn can_absorb_moved_keys(&self) -> bool {
        self.absorbs_moved_keys
    }

    /// Whether keyless shares and detours follow the consumers' measured drain rates (the
    /// capacity model of `docs/routing.md`) rather than health scores: true once the monitor
    /// has seen a consumer under backlog and knows every partition's rates.
    pub fn is_capacity_planned(&self) -> bool {
        self.by_capacity
    }

    /// The detour of a key whose home is unroutable: the routable partition that ranks
    /// highest for `key_hash` by weighted rendezvous hashing, each partition weighted by its
    /// headroom (spare drain rate) under the capacity model, relative to the roomiest and
    /// rounded down to a power of two (1, 1/2 … 1/16), all alike otherwise. `None` when nothing
    /// is routable.
    ///
    /// Every process computes the same detour from the same health, and from health whose
    /// rates differ by less than the rounding; when a partition leaves or joins the routable
    /// set, only the keys that ranked it highest move; a partition with twice the weight draws
    /// twice the keys.
    pub fn detour(&self, key_hash: u64) -> Option<i32> {
        let mut best: Option<(f64, i32)> = None;
        for (&p, &w) in self.routable.iter().zip(self.detour_weights.iter()) {
            // Weighted rendezvous (Schindelhauer & Schomaker): score w / −ln(u) with u uniform
            // in (0, 1) from the key and the partition; the highest score wins, partition p with
            // probability w_p / Σ w.
            let h = mix64(key_hash ^ (p as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            // 52 bits and a half step: strictly inside (0, 1), so −ln u is finite and positive.
            let u = ((h >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64);
            let score = w / -u.ln();
            if best.is_none_or(|(b, _)| score > b) {
                best = Some((score, p));
            }
        }
        best.map(|(_, p)| p)
    }

    /// The detour of a key whose home is unroutable, by plain rendezvous hashing over the
    /// routable partitions (every partition weighted alike): it changes only when the set of
    /// routable partitions does, not when their rates do. The producer's strict key order
    /// moves keys by it, since every move costs a wait there. `None` when nothing is
    /// routable.
    #[inline]
    pub fn stable_detour(&self, key_hash: u64) -> Option<i32> {
        self.routable.iter().copied().max_by_key(|&p| {
            (
                mix64(key_hash ^ (p as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                p,
            )
        })
    }

    /// Builds the health of a topic by running `calculate` over its lag report.
    pub fn from_lag(
        lag: &TopicLag,
        calculate: impl FnOnce(&TopicLag) -> Vec<PartitionHealth>,
    ) -> Self {
        Self::new(&lag.topic, lag.collected_at, calculate(lag))
    }

    /// The same health, marked stale: readers treat it as absent (routing falls back), but it
    /// stays visible to health queries, with its age.
    pub fn to_stale(&self) -> Self {
        Self {
            topic: self.topic.clone(),
            topic_hash: self.topic_hash,
            collected_at: self.collected_at,
            partitions: self.partitions.clone(),
            routable: self.routable.clone(),
            picks: self.picks.clone(),
            cumulative: self.cumulative.clone(),
            detour_weights: self.detour_weights.clone(),
            routable_bits: self.routable_bits.clone(),
            absorbs_moved_keys: self.absorbs_moved_keys,
            by_capacity: self.by_capacity,
            stale: true,
            fresh_until: self.fresh_until,
            cursor: self.cursor.clone(),
            last_pick: AtomicU64::new(NO_PICK),
        }
    }

    /// Topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A hash of the topic name, the same in every process of this build (see
    /// [`hash_of`](Self::hash_of)).
    pub fn topic_hash(&self) -> u64 {
        self.topic_hash
    }

    /// The hash of a topic name that [`topic_hash`](Self::topic_hash) gives.
    pub fn hash_of(topic: &str) -> u64 {
        topic_hash(topic)
    }

    /// When the underlying lag was read.
    pub fn collected_at(&self) -> SystemTime {
        self.collected_at
    }

    /// Time since the underlying lag was read (zero if that is in the future).
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.collected_at)
            .unwrap_or_default()
    }

    /// The same health, turning stale by itself `after` from now: [`is_stale`](Self::is_stale)
    /// says so from then on, whether or not anybody marks it. The monitor sets this to what is
    /// left of `max_staleness`, so that health is not routed by past it even when the
    /// monitor's task is not scheduled in time (a runtime whose threads something blocks).
    ///
    /// Timed by [`clock::global`] (the TSC where quanta finds it reliable, calibrated against
    /// the monotonic clock), so the deadline can drift from the monitor's own timer by the
    /// calibration's error (parts per million of `after`). A router judges it by its own
    /// clock's raw readings: one built on [`quanta::Clock::mock`] never sees it pass.
    ///
    /// With a deadline, `is_stale` depends on when it is called: two calls can disagree.
    #[must_use]
    pub fn stale_in(self, after: Duration) -> Self {
        self.stale_in_on(clock::global(), after)
    }

    /// [`stale_in`](Self::stale_in), timed by `clock`.
    #[must_use]
    pub fn stale_in_on(mut self, clock: &quanta::Clock, after: Duration) -> Self {
        self.fresh_until = clock
            .raw()
            .saturating_add(clock::ticks_for(clock, after))
            .min(NEVER - 1);
        self
    }

    /// Whether this health is too old to route by: the monitor declared it so, or the deadline
    /// set with [`stale_in`](Self::stale_in) has passed.
    pub fn is_stale(&self) -> bool {
        self.is_stale_at(clock::global().raw())
    }

    /// Whether the monitor marked this health stale ([`to_stale`](Self::to_stale)), its
    /// deadline aside.
    pub fn is_marked_stale(&self) -> bool {
        self.stale
    }

    /// [`is_stale`](Self::is_stale) at `now`, a raw reading of a [`quanta::Clock`] (a
    /// router's own): for a caller that has read the clock already.
    #[inline(always)]
    pub fn is_stale_at(&self, now: u64) -> bool {
        self.stale | (now >= self.fresh_until)
    }

    /// Number of partitions the health covers (highest known id + 1).
    pub fn partition_count(&self) -> i32 {
        self.partitions.len() as i32
    }

    /// Every partition, indexed by id.
    pub fn partitions(&self) -> &[PartitionHealth] {
        &self.partitions
    }

    /// One partition's health.
    pub fn partition(&self, partition: i32) -> Option<&PartitionHealth> {
        usize::try_from(partition)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }

    /// Partitions new messages may go to (healthy, leader available), ascending.
    pub fn routable_partitions(&self) -> &[i32] {
        &self.routable
    }

    /// Whether new messages may go to `partition`. Constant time.
    #[inline]
    pub fn is_routable(&self, partition: i32) -> bool {
        let Ok(p) = usize::try_from(partition) else {
            return false;
        };
        self.routable_bits
            .get(p / 64)
            .is_some_and(|word| word & (1 << (p % 64)) != 0)
    }

    /// Picks the partition for a sticky batch of keyless messages, from `random`, a uniformly
    /// distributed 64-bit value; `None` when no partition is routable.
    ///
    /// Routable partitions are drawn with probability proportional to their score, except that
    /// none gets more than twice its fair share (1 / the partitions with
    /// a leader); what the routable partitions cannot take that way goes to the other
    /// partitions with a leader, the least unhealthy first. So when most consumers are slow,
    /// the few fast ones are not buried under the whole load (herding).
    ///
    /// Logarithmic in the number of partitions; allocates nothing.
    #[inline]
    pub fn pick_weighted(&self, random: u64) -> Option<i32> {
        let total = *self.cumulative.last()?;
        // Lemire's multiply-shift: uniform in [0, total) without a division.
        let target = ((u128::from(random) * u128::from(total)) >> 64) as u64;
        let index = self.cumulative.partition_point(|&c| c <= target);
        self.picks.get(index).copied()
    }

    /// The partition of keyless batch number `batch` (from the topic's [`StickyCursor`]):
    /// [`pick_weighted`](Self::pick_weighted) of the batch number spread over `[0, 2^64)`.
    ///
    /// Consecutive batch numbers times the golden ratio spread over `[0, 2^64)` as evenly as
    /// any sequence can (a Weyl sequence): each partition's share converges to its weight
    /// within a few dozen batches, where hashing the batch number would leave random swings.
    ///
    /// Every message of a batch asks, so the last batch's answer is kept: a batch's partition
    /// is a function of this health and the batch number alone, so two callers racing on it
    /// store the same answer, and a caller on another batch computes its own.
    #[inline]
    pub fn pick_for_batch(&self, batch: u32) -> Option<i32> {
        let last = self.last_pick.load(Ordering::Relaxed);
        if last != NO_PICK && (last >> 32) as u32 == batch {
            return Some((last as u32 - 1) as i32);
        }
        let spread = u64::from(batch).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let partition = self.pick_weighted(spread)?;
        self.last_pick.store(
            (u64::from(batch) << 32) | u64::from(partition as u32 + 1),
            Ordering::Relaxed,
        );
        Some(partition)
    }

    /// Each partition's share of keyless traffic, indexed by partition (0 for those never
    /// picked).
    pub fn keyless_shares(&self) -> Vec<f64> {
        let total = self.cumulative.last().copied().unwrap_or(0).max(1) as f64;
        let mut shares = vec![0.0; self.partitions.len()];
        let mut previous = 0;
        for (&p, &c) in self.picks.iter().zip(self.cumulative.iter()) {
            shares[p as usize] = (c - previous) as f64 / total;
            previous = c;
        }
        shares
    }

    /// The same health with its sticky cursor starting at batch `batch` instead of a random
    /// one, for deterministic simulations.
    #[must_use]
    pub fn with_sticky_start(mut self, batch: u32) -> Self {
        self.cursor = Arc::new(StickyCursor::starting_at(batch));
        self
    }

    /// The same health, carrying on with `cursor` (the previous health's, say): a batch in
    /// progress continues across a refresh instead of ending early.
    #[must_use]
    pub fn with_cursor(mut self, cursor: Arc<StickyCursor>) -> Self {
        self.cursor = cursor;
        self
    }

    /// The sticky cursor the router uses for keyless messages of this topic.
    ///
    /// A new `TopicHealth` gets one starting at a random batch, so that producer instances do
    /// not all start on the same partition; the monitor hands each topic's cursor on from one
    /// refresh to the next.
    pub fn cursor(&self) -> &Arc<StickyCursor> {
        &self.cursor
    }
}

/// SplitMix64's finalizer: a fast, well-mixed 64-bit permutation.
#[inline]
/// A routable partition's weight in the choice of detours: its headroom relative to the
/// roomiest one, rounded down to a power of two between 1/16 and 1. Rounded, so that the
/// small differences between two instances' rate estimates (or between two refreshes) do not
/// change a key's detour; floored, so that a partition with no room left still ranks.
fn detour_weight(headroom: f64, most: f64) -> f64 {
    if most.is_nan() || most <= 0.0 || !headroom.is_finite() {
        return 1.0;
    }
    let relative = (headroom / most).clamp(1.0 / 16.0, 1.0);
    relative.log2().floor().exp2()
}

/// SplitMix64's finalizer: a fast, well-mixed 64-bit permutation. Shared with the router,
/// which derives key fingerprints with it; not part of the API.
#[doc(hidden)]
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash of a topic name that is the same wherever it is computed in this process.
fn topic_hash(topic: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(0x6b73_702d_746f_7069).hash_one(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(partition: i32, score: f64, healthy: bool) -> PartitionHealth {
        PartitionHealth::new(PartitionLag::from_lag(partition, 0), score, healthy)
    }

    #[test]
    fn a_batch_is_picked_as_pick_weighted_says_whether_or_not_it_was_just_asked() {
        let scores = [1.0, 0.2, 0.7, 0.05, 1.0, 0.4, 0.9, 0.6];
        let t = TopicHealth::new(
            "t",
            SystemTime::now(),
            scores
                .iter()
                .enumerate()
                .map(|(p, &s)| health(p as i32, s, s > 0.1))
                .collect(),
        );
        let expected =
            |batch: u32| t.pick_weighted(u64::from(batch).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // Repeated, interleaved, the batch numbers at both ends, and a batch whose number is
        // the cache's empty marker in its high half.
        let batches = [
            0,
            0,
            1,
            1,
            0,
            7,
            7,
            7,
            3,
            7,
            u32::MAX,
            u32::MAX,
            0,
            u32::MAX - 1,
        ];
        let mut seen = std::collections::HashSet::new();
        for batch in batches {
            assert_eq!(t.pick_for_batch(batch), expected(batch), "batch {batch}");
            seen.insert(t.pick_for_batch(batch));
        }
        assert!(seen.len() > 1, "every batch on one partition: {seen:?}");
        let none = TopicHealth::new("t", SystemTime::now(), vec![]);
        assert_eq!(none.pick_for_batch(5), None);
        assert_eq!(none.pick_for_batch(5), None);
    }

    #[test]
    fn missing_partitions_are_filled_as_unavailable() {
        let t = TopicHealth::new(
            "t",
            SystemTime::now(),
            vec![
                health(0, 1.0, true),
                health(3, 1.0, true),
                health(-1, 1.0, true),
            ],
        );
        assert_eq!(t.partition_count(), 4);
        assert_eq!(t.routable_partitions(), [0, 3]);
        assert!(!t.is_routable(1));
        assert!(!t.partition(2).unwrap().lag.leader_available);
        assert!(!t.is_routable(-1));
        assert!(!t.is_routable(4));
    }

    #[test]
    fn absurd_partition_ids_are_dropped_not_allocated() {
        let t = TopicHealth::new(
            "t",
            SystemTime::now(),
            vec![
                health(1, 1.0, true),
                health(2_000_000_000, 1.0, true),
                health(TopicHealth::MAX_PARTITIONS, 1.0, true),
                health(i32::MAX, 1.0, true),
            ],
        );
        assert_eq!(t.partition_count(), 2);
        assert_eq!(t.routable_partitions(), [1]);
    }

    #[test]
    fn partition_without_leader_is_not_routable_even_if_healthy() {
        let t = TopicHealth::new(
            "t",
            SystemTime::now(),
            vec![
                health(0, 1.0, true),
                PartitionHealth::new(PartitionLag::unavailable(1), 1.0, true),
            ],
        );
        assert_eq!(t.routable_partitions(), [0]);
    }

    #[test]
    fn weighted_pick_follows_scores() {
        // Eight partitions: the cap (2 × 1/8) does not bind.
        let mut parts: Vec<_> = (0..8).map(|p| health(p, 1.0, true)).collect();
        parts[1] = health(1, 0.25, true);
        parts[2] = health(2, 1.0, false);
        let t = TopicHealth::new("t", SystemTime::now(), parts);
        let mut counts = [0u32; 8];
        let n = 100_000u64;
        for i in 0..n {
            // Evenly spaced values stand in for a uniform random source.
            let r = i.wrapping_mul(u64::MAX / n);
            counts[t.pick_weighted(r).unwrap() as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        // Weights 1 : 0.25 : 1 × 5 → 1/6.25 = 16 % and 0.25/6.25 = 4 %, up to rounding.
        assert!(counts[0].abs_diff(16_000) <= 2, "{counts:?}");
        assert!(counts[1].abs_diff(4_000) <= 2, "{counts:?}");
    }

    fn shares(parts: Vec<PartitionHealth>) -> Vec<f64> {
        TopicHealth::new("t", SystemTime::now(), parts)
            .keyless_shares()
            .iter()
            .map(|s| (s * 1000.0).round() / 1000.0)
            .collect()
    }

    #[test]
    fn no_partition_gets_more_than_twice_its_fair_share() {
        // 7 of 8 unhealthy: the healthy one takes 2/8; the other 3/4 spill over the rest in
        // inverse proportion to their backlog, 2/8 at most each.
        let unhealthy =
            |p: i32, lag: i64| PartitionHealth::new(PartitionLag::from_lag(p, lag), 0.0, false);
        let mut parts = vec![health(0, 1.0, true)];
        parts.extend((1..8).map(|p| unhealthy(p, 999)));
        let s = shares(parts);
        assert_eq!(s[0], 0.25);
        for share in &s[1..] {
            assert!((share - 0.75 / 7.0).abs() < 0.001, "{s:?}");
        }
        // A partition with 10 times the backlog gets about a tenth as much.
        let mut parts = vec![health(0, 1.0, true), unhealthy(1, 9_999)];
        parts.extend((2..8).map(|p| unhealthy(p, 999)));
        let s = TopicHealth::new("t", SystemTime::now(), parts).keyless_shares();
        assert!((s[2] / s[1] - 10.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn healthy_partitions_take_everything_when_they_can() {
        let s = shares((0..8).map(|p| health(p, 1.0, p != 3)).collect());
        assert_eq!(s[3], 0.0);
        for (p, share) in s.iter().enumerate().filter(|(p, _)| *p != 3) {
            assert!((share - 1.0 / 7.0).abs() < 0.001, "{p}: {s:?}");
        }
        // Two partitions, one healthy: 2 × 1/2 allows it everything.
        assert_eq!(
            shares(vec![health(0, 1.0, true), health(1, 0.0, false)]),
            [1.0, 0.0]
        );
    }

    #[test]
    fn nothing_routable_means_no_pick_and_no_leader_means_no_share() {
        let t = TopicHealth::new("t", SystemTime::now(), vec![health(0, 0.5, false)]);
        assert_eq!(t.pick_weighted(7), None);
        let mut parts = vec![health(0, 1.0, true)];
        parts
            .extend((1..8).map(|p| PartitionHealth::new(PartitionLag::unavailable(p), 0.0, false)));
        let s = shares(parts);
        // Only one partition has a leader: it takes everything.
        assert_eq!(s[0], 1.0);
    }

    #[test]
    fn keys_move_only_when_the_healthy_partitions_can_take_them() {
        let topic = |healthy: usize| {
            TopicHealth::new(
                "t",
                SystemTime::now(),
                (0..8)
                    .map(|p| health(p, 1.0, (p as usize) < healthy))
                    .collect(),
            )
        };
        assert!(topic(8).can_absorb_moved_keys());
        assert!(topic(4).can_absorb_moved_keys());
        assert!(!topic(3).can_absorb_moved_keys());
        assert!(!topic(0).can_absorb_moved_keys());
    }

    #[test]
    fn weighted_pick_of_nothing_is_none() {
        let t = TopicHealth::new("t", SystemTime::now(), vec![health(0, 1.0, false)]);
        assert_eq!(t.pick_weighted(42), None);
    }

    #[test]
    fn zero_score_routable_partition_still_gets_some_weight() {
        let t = TopicHealth::new("t", SystemTime::now(), vec![health(0, 0.0, true)]);
        assert_eq!(t.pick_weighted(u64::MAX), Some(0));
    }

    #[test]
    fn stale_copy_keeps_data() {
        let t = TopicHealth::new("t", SystemTime::UNIX_EPOCH, vec![health(0, 1.0, true)]);
        let s = t.to_stale();
        assert!(s.is_stale());
        assert!(!t.is_stale());
        assert_eq!(s.routable_partitions(), t.routable_partitions());
        assert_eq!(s.topic_hash(), t.topic_hash());
    }

    /// Health given a deadline turns stale at it by itself, unmarked; a stale copy keeps it.
    #[test]
    fn health_turns_stale_at_its_deadline_without_being_marked() {
        let (clock, mock) = quanta::Clock::mock();
        mock.increment(Duration::from_secs(1));
        let t = TopicHealth::new("t", SystemTime::now(), vec![health(0, 1.0, true)])
            .stale_in_on(&clock, Duration::from_millis(100));
        assert!(!t.is_stale_at(clock.raw()));
        mock.increment(Duration::from_millis(99));
        assert!(!t.is_stale_at(clock.raw()), "fresh before its deadline");
        mock.increment(Duration::from_millis(1));
        assert!(t.is_stale_at(clock.raw()), "stale at its deadline");
        assert!(!t.is_marked_stale(), "nobody marked it");
        let marked = t.to_stale();
        assert!(marked.is_marked_stale() && marked.is_stale_at(0));
        // Without a deadline, only marking makes health stale.
        let forever = TopicHealth::new("t", SystemTime::UNIX_EPOCH, vec![]);
        assert!(!forever.is_stale_at(u64::MAX - 1));
        // On the process's clock, the deadline is ahead.
        let real =
            TopicHealth::new("t", SystemTime::now(), vec![]).stale_in(Duration::from_secs(60));
        assert!(!real.is_stale());
        assert!(real.is_stale_at(u64::MAX));
    }

    /// Partitions with the given capacities, each with 100 msg/s arriving; those in `hot`
    /// unroutable.
    fn by_capacity(capacities: &[f64], hot: &[i32]) -> TopicHealth {
        let parts = capacities
            .iter()
            .enumerate()
            .map(|(p, &capacity)| {
                let mut lag = PartitionLag::from_lag(p as i32, 0);
                lag.rates = Some(
                    crate::PartitionRates::new()
                        .with_capacity(capacity)
                        .with_drain_rate(100.0)
                        .with_arrival_rate(100.0)
                        .with_time_lag(Duration::ZERO),
                );
                let healthy = !hot.contains(&(p as i32));
                PartitionHealth::new(lag, 1.0, healthy)
            })
            .collect();
        TopicHealth::new("t", SystemTime::now(), parts)
    }

    #[test]
    fn detours_are_weighted_by_headroom() {
        // Headroom 300, 100, 100 on the routable three; partition 3 is the hot home.
        let t = by_capacity(&[400.0, 200.0, 200.0, 200.0], &[3]);
        assert!(t.is_capacity_planned());
        let mut counts = [0u32; 4];
        for key in 0..100_000u64 {
            counts[t.detour(mix64(key)).unwrap() as usize] += 1;
        }
        assert_eq!(counts[3], 0);
        // Headroom 3 : 1 : 1, weights rounded to powers of two: 1 : 1/4 : 1/4 → 2/3, 1/6, 1/6,
        // within 1 %.
        assert!(counts[0].abs_diff(66_667) < 1_000, "{counts:?}");
        assert!(counts[1].abs_diff(16_667) < 1_000, "{counts:?}");
        // Without rates, alike.
        let parts = (0..4).map(|p| health(p, 1.0, p != 3)).collect();
        let t = TopicHealth::new("t", SystemTime::now(), parts);
        assert!(!t.is_capacity_planned());
        let mut counts = [0u32; 4];
        for key in 0..90_000u64 {
            counts[t.detour(mix64(key)).unwrap() as usize] += 1;
        }
        assert!(
            counts[..3].iter().all(|c| c.abs_diff(30_000) < 1_000),
            "{counts:?}"
        );
    }

    #[test]
    fn only_the_keys_of_a_partition_that_leaves_change_detour() {
        let before = by_capacity(&[400.0, 200.0, 300.0, 200.0], &[3]);
        let after = by_capacity(&[400.0, 200.0, 300.0, 200.0], &[3, 2]);
        let mut moved = 0;
        for key in 0..20_000u64 {
            let (b, a) = (before.detour(key).unwrap(), after.detour(key).unwrap());
            if b != 2 {
                assert_eq!(a, b, "key {key} moved off a partition that stayed");
            } else {
                moved += 1;
                assert_ne!(a, 2);
            }
        }
        assert!(moved > 0);
        // The same health gives the same detours, in any process.
        let again = by_capacity(&[400.0, 200.0, 300.0, 200.0], &[3]);
        assert!((0..1_000u64).all(|k| before.detour(k) == again.detour(k)));
    }

    #[test]
    fn detours_do_not_follow_small_changes_of_the_rates() {
        let before = by_capacity(&[400.0, 200.0, 200.0, 200.0], &[3]);
        let after = by_capacity(&[410.0, 195.0, 205.0, 200.0], &[3]);
        assert!((0..20_000u64).all(|k| before.detour(k) == after.detour(k)));
    }
}
