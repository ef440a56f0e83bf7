//! Health data: what a [`HotPartitionCalculator`](crate::HotPartitionCalculator) makes of lag,
//! and the immutable snapshot the router reads.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::lag::{PartitionLag, TopicLag};

/// Health of one partition: a score in `[0, 1]` (1 = the consumer keeps up), whether new
/// messages may go there, and the lag it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PartitionHealth {
    /// Partition id.
    pub partition: i32,
    /// Health score in `[0, 1]`; never NaN.
    pub score: f64,
    /// Whether the calculator considers the partition healthy.
    pub healthy: bool,
    /// The lag this health was computed from.
    pub lag: PartitionLag,
}

impl PartitionHealth {
    /// Health of a partition.
    ///
    /// The score is clamped to `[0, 1]`. A NaN score (a custom calculator dividing by zero, say)
    /// becomes 0 and unhealthy: a calculator that cannot produce a number has no opinion the
    /// router should act on.
    pub fn new(lag: PartitionLag, score: f64, healthy: bool) -> Self {
        let (score, healthy) = if score.is_nan() {
            (0.0, false)
        } else {
            (score.clamp(0.0, 1.0), healthy)
        };
        Self {
            partition: lag.partition,
            score,
            healthy,
            lag,
        }
    }

    /// Whether new messages may be routed here: healthy, and its leader is available.
    pub fn is_routable(&self) -> bool {
        self.healthy && self.lag.leader_available
    }
}

/// Weight units per unit of share: shares of keyless traffic are resolved to a millionth.
const WEIGHT_SCALE: f64 = 1_000_000.0;

/// No partition gets more than this many times its fair share of keyless traffic, and keys
/// only move off unhealthy partitions when the healthy ones can take them within it.
pub const MAX_SHARE_OF_FAIR: f64 = 2.0;

/// Shares of keyless traffic: routable partitions by score, each capped at
/// [`MAX_SHARE_OF_FAIR`] × fair; the remainder, if the routable ones cannot take it all, to
/// the other partitions with a leader by score, under the same cap. All zero when nothing is
/// routable (routing then falls back to librdkafka).
fn keyless_shares(partitions: &[PartitionHealth]) -> Vec<f64> {
    let mut shares = vec![0.0; partitions.len()];
    let eligible = partitions.iter().filter(|h| h.lag.leader_available).count();
    if eligible == 0 {
        return shares;
    }
    let cap = MAX_SHARE_OF_FAIR / eligible as f64;
    // Every routable partition gets some traffic, however low its score, so that a
    // recovering consumer is seen recovering.
    let healthy: Vec<(usize, f64)> = partitions
        .iter()
        .filter(|h| h.is_routable())
        .map(|h| (h.partition as usize, h.score.max(0.001)))
        .collect();
    if healthy.is_empty() {
        return shares;
    }
    let taken = water_fill(&healthy, 1.0, cap, &mut shares);
    if taken < 1.0 - 1e-9 {
        // What the healthy partitions cannot take goes to the others in inverse proportion to
        // their backlog, under the same cap: the most backed-up consumers get the least.
        let rest: Vec<(usize, f64)> = partitions
            .iter()
            .filter(|h| h.lag.leader_available && !h.is_routable())
            .map(|h| {
                let lag = h.lag.lag.map_or(f64::MAX, |l| l.max(0) as f64);
                (h.partition as usize, 1.0 / (1.0 + lag))
            })
            .collect();
        water_fill(&rest, 1.0 - taken, cap, &mut shares);
    }
    shares
}

/// Splits `total` among `items` (index, weight) in proportion to weight, none above `cap`;
/// adds the splits to `shares` and returns how much was handed out (less than `total` when
/// every item is at the cap).
fn water_fill(items: &[(usize, f64)], total: f64, cap: f64, shares: &mut [f64]) -> f64 {
    let mut active: Vec<(usize, f64)> = items.to_vec();
    let mut remaining = total;
    while !active.is_empty() && remaining > 1e-12 {
        let sum: f64 = active.iter().map(|(_, w)| w).sum();
        let at = remaining;
        let (over, under): (Vec<_>, Vec<_>) = active.iter().partition(|(_, w)| at * w / sum > cap);
        if over.is_empty() {
            for (i, w) in &active {
                shares[*i] += at * w / sum;
            }
            remaining = 0.0;
            break;
        }
        for (i, _) in &over {
            shares[*i] += cap;
            remaining -= cap;
        }
        active = under;
    }
    total - remaining
}

/// Health of every partition of one topic, with the tables the router needs precomputed so that
/// a routing decision does no work proportional to the partition count.
///
/// A `TopicHealth` is immutable except for its [`StickyCursor`], the router's scratch space for
/// sticky keyless routing (see [`TopicHealth::cursor`]).
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
    routable_bits: Box<[u64]>,
    absorbs_moved_keys: bool,
    stale: bool,
    cursor: StickyCursor,
}

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
        let eligible = partitions.iter().filter(|h| h.lag.leader_available).count();
        let absorbs_moved_keys = routable.len() as f64 * MAX_SHARE_OF_FAIR >= eligible as f64;
        let shares = keyless_shares(&partitions);
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
            routable_bits: routable_bits.into(),
            absorbs_moved_keys,
            stale: false,
            cursor: StickyCursor::new(),
        }
    }

    /// Whether moving the keys of every unroutable partition onto the routable ones would
    /// still give each of them at most [`MAX_SHARE_OF_FAIR`] times its fair share, that is,
    /// whether at least half the partitions with a leader are routable. When not, keys stay
    /// home: herding them onto the few healthy partitions would overload those.
    #[inline]
    pub fn can_absorb_moved_keys(&self) -> bool {
        self.absorbs_moved_keys
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
            routable_bits: self.routable_bits.clone(),
            absorbs_moved_keys: self.absorbs_moved_keys,
            stale: true,
            cursor: StickyCursor::new(),
        }
    }

    /// Topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A hash of the topic name, stable for the life of the process.
    pub fn topic_hash(&self) -> u64 {
        self.topic_hash
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

    /// Whether the monitor has declared this health too old to route by.
    pub fn is_stale(&self) -> bool {
        self.stale
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
    /// none gets more than [`MAX_SHARE_OF_FAIR`] times its fair share (1 / the partitions with
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
        self.cursor = StickyCursor::starting_at(batch);
        self
    }

    /// The sticky cursor the router uses for keyless messages of this topic.
    ///
    /// It is fresh in every new `TopicHealth` (so at most once per refresh the current sticky
    /// batch ends early) and starts at a random batch number, so that producer instances do not
    /// all start on the same partition.
    pub fn cursor(&self) -> &StickyCursor {
        &self.cursor
    }
}

/// A hash of a topic name that is the same wherever it is computed in this process.
fn topic_hash(topic: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(0x6b73_702d_746f_7069).hash_one(topic)
}

/// Sticky batch state for keyless routing: the current batch number, the bytes routed in it and
/// when it started.
///
/// The router reports each keyless message; a batch ends once it holds `batch_bytes` (Kafka's
/// KIP-794 idea: stay on one partition for about a batch, then switch) or once it is older
/// than `max_age` (librdkafka's `sticky.partitioning.linger.ms`), whichever comes first. The
/// router maps each batch number to a partition. This keeps batches full at high rates without
/// sending bursts of hundreds of messages to one partition at low rates, and unlike a random
/// partition per message it never breaks batching.
///
/// Time is whatever monotonic unit the caller uses (a TSC reading, simulated milliseconds…).
#[derive(Debug)]
pub struct StickyCursor {
    /// High 32 bits: batch number; low 32 bits: bytes routed in the batch.
    state: AtomicU64,
    /// When the current batch started, in the caller's time unit.
    started: AtomicU64,
}

const BYTES_MASK: u64 = 0xffff_ffff;

impl StickyCursor {
    /// A cursor starting at a random batch number.
    pub fn new() -> Self {
        let seed = std::hash::RandomState::new().build_hasher().finish();
        Self::starting_at(seed as u32)
    }

    /// A cursor starting at a given batch number (for deterministic simulations).
    pub fn starting_at(batch: u32) -> Self {
        Self {
            state: AtomicU64::new(u64::from(batch) << 32),
            started: AtomicU64::new(0),
        }
    }

    /// Accounts a message of `bytes` bytes sent at time `now` and returns the batch number it
    /// belongs to.
    ///
    /// The message that fills a batch (reaches `batch_bytes`) still belongs to it; the next
    /// one starts a new batch. A message arriving when the batch is `max_age` old or older
    /// starts a new batch itself. Lock-free: two atomic loads and a `fetch_add`, plus one
    /// compare-and-swap by the single caller that ends a batch.
    #[inline]
    pub fn advance(&self, bytes: usize, batch_bytes: u32, now: u64, max_age: u64) -> u32 {
        // Clamped so a single huge message cannot carry into the batch number.
        let bytes = bytes.min(1 << 30) as u64;
        let limit = u64::from(batch_bytes.max(1));
        let started = self.started.load(Ordering::Relaxed);
        if now.saturating_sub(started) >= max_age {
            let current = self.state.load(Ordering::Relaxed);
            let next_batch = ((current >> 32) as u32).wrapping_add(1);
            // The message that starts a batch may fill it on its own: then the batch after it
            // starts with the next message, as when any other message crosses the limit.
            let next = if bytes >= limit {
                u64::from(next_batch.wrapping_add(1)) << 32
            } else {
                (u64::from(next_batch) << 32) | bytes
            };
            if self
                .state
                .compare_exchange(current, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.started.store(now, Ordering::Relaxed);
                return next_batch;
            }
            // Another caller moved the batch on (or added to it) first: join the batch as
            // it now stands, below.
        }
        let previous = self.state.fetch_add(bytes, Ordering::Relaxed);
        let batch = (previous >> 32) as u32;
        let used = previous & BYTES_MASK;
        if used < limit && used + bytes >= limit {
            // Exactly one caller crosses the limit per batch: it starts the next one. Others
            // racing with it land in the full batch, which only makes it slightly larger.
            let next = u64::from(batch.wrapping_add(1)) << 32;
            let mut current = previous.wrapping_add(bytes);
            while (current >> 32) as u32 == batch {
                match self.state.compare_exchange_weak(
                    current,
                    next,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        self.started.store(now, Ordering::Relaxed);
                        break;
                    }
                    Err(actual) => current = actual,
                }
            }
        }
        batch
    }
}

impl Default for StickyCursor {
    fn default() -> Self {
        Self::new()
    }
}

/// An immutable, versioned view of the health of every watched topic.
///
/// The monitor builds a new snapshot after every refresh and publishes it through a
/// [`HealthPublisher`](crate::HealthPublisher); readers load the current one once per decision.
/// Topics whose health did not change between two snapshots share the same [`TopicHealth`].
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
            topics: topics.into_iter().map(|t| (t.topic.clone(), t)).collect(),
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
    use super::*;

    fn health(partition: i32, score: f64, healthy: bool) -> PartitionHealth {
        PartitionHealth::new(PartitionLag::from_lag(partition, 0), score, healthy)
    }

    #[test]
    fn nan_score_is_zero_and_unhealthy() {
        let h = health(0, f64::NAN, true);
        assert_eq!(h.score, 0.0);
        assert!(!h.healthy);
    }

    #[test]
    fn score_is_clamped() {
        assert_eq!(health(0, 7.0, true).score, 1.0);
        assert_eq!(health(0, -1.0, true).score, 0.0);
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

    /// No time limit.
    const FOREVER: u64 = u64::MAX;

    #[test]
    fn cursor_switches_batch_after_batch_bytes() {
        let c = StickyCursor::starting_at(7);
        assert_eq!(c.advance(40, 100, 0, FOREVER), 7);
        assert_eq!(c.advance(40, 100, 0, FOREVER), 7);
        // This one fills the batch: still batch 7.
        assert_eq!(c.advance(40, 100, 0, FOREVER), 7);
        assert_eq!(c.advance(40, 100, 0, FOREVER), 8);
        // A message larger than a batch fills it on its own.
        assert_eq!(c.advance(500, 100, 0, FOREVER), 8);
        assert_eq!(c.advance(1, 100, 0, FOREVER), 9);
    }

    #[test]
    fn cursor_switches_batch_when_it_is_old() {
        let c = StickyCursor::starting_at(0);
        // The first batch started at time 0; max age 10.
        assert_eq!(c.advance(1, 1000, 3, 10), 0);
        assert_eq!(c.advance(1, 1000, 9, 10), 0);
        // At age 10 the message starts a new batch itself.
        assert_eq!(c.advance(1, 1000, 10, 10), 1);
        assert_eq!(c.advance(1, 1000, 19, 10), 1);
        // Long idle: the next message starts a fresh batch, not the stale one.
        assert_eq!(c.advance(1, 1000, 500, 10), 2);
        // Bytes still end a batch before its time is up.
        assert_eq!(c.advance(999, 1000, 501, 10), 2);
        assert_eq!(c.advance(1, 1000, 502, 10), 3);
        assert_eq!(c.advance(1, 1000, 503, 10), 3);
    }

    #[test]
    fn cursor_with_zero_max_age_switches_every_message() {
        let c = StickyCursor::starting_at(0);
        let batches: Vec<u32> = (0..4).map(|t| c.advance(1, 1000, t, 0)).collect();
        assert_eq!(batches, [1, 2, 3, 4]);
    }

    #[test]
    fn cursor_batch_number_wraps() {
        let c = StickyCursor::starting_at(u32::MAX);
        assert_eq!(c.advance(10, 10, 0, FOREVER), u32::MAX);
        assert_eq!(c.advance(1, 10, 0, FOREVER), 0);
    }

    #[test]
    fn cursor_under_contention_loses_no_batch_boundary() {
        let c = Arc::new(StickyCursor::starting_at(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.advance(10, 1000, 0, FOREVER);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 400 000 bytes in batches of 1 000 bytes: 400 batches. Racing callers can only make a
        // batch larger (by at most one message per other thread), never skip a batch number,
        // so at least 400 000 / (1 000 + 3 × 10) batches end.
        let batch = c.advance(0, 1000, 0, FOREVER);
        assert!((388..=400).contains(&batch), "batch number {batch}");
    }

    /// Regression: when a batch started because the previous one aged out, its first message's
    /// bytes were counted without the crossing check, so a message of at least `batch_bytes`
    /// never ended its batch by bytes; with `sticky_batch_bytes = 1` a burst stayed on one
    /// partition until the linger ran out.
    #[test]
    fn sticky_batch_started_by_age_still_ends_at_batch_bytes() {
        let c = StickyCursor::starting_at(0);
        // Batch 0 is old at time 10: this message starts batch 1 and fills it on its own.
        assert_eq!(c.advance(500, 100, 10, 10), 1);
        assert_eq!(c.advance(500, 100, 11, 10), 2);
        assert_eq!(c.advance(500, 100, 12, 10), 3);
        // One-byte batches: every message is a batch of its own, aged out or not.
        let c = StickyCursor::starting_at(0);
        let batches: Vec<u32> = (0..5).map(|t| c.advance(1, 1, 100 + t, 50)).collect();
        assert_eq!(batches, [1, 2, 3, 4, 5]);
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

    #[test]
    fn snapshot_looks_topics_up_by_name() {
        let snap =
            HealthSnapshot::new([Arc::new(TopicHealth::new("a", SystemTime::now(), vec![]))]);
        assert!(snap.topic("a").is_some());
        assert!(snap.topic("b").is_none());
        assert_eq!(snap.version(), 0);
    }
}
