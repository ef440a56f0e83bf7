//! Strict key order: a key moves off a partition only once the consumer group has committed
//! past everything that could have been sent to it there.
//!
//! Under [`KeyOrder::Strict`] a key's partition is a function of the health snapshot alone
//! (its home while the home is routable, otherwise its plain rendezvous detour), so every
//! instance that sees the same snapshots places a key alike, with no per-key memory. When a
//! snapshot changes that placement (a *transition*), the partitions that lose keys get a
//! barrier: their high watermark in the first snapshot read after the transition was seen,
//! one refresh later, by which time every instance has stopped sending those keys there. A
//! key that changed partition in a transition may go to its new one once the group's
//! committed offset on its old one has reached that barrier; until then its sends wait in
//! the producer, in order, within the bounds of [`KeyOrderConfig`]. A send that reaches a
//! bound goes to the old partition instead (after the key's earlier sends), and the key is
//! *pinned* there until the group has committed past it.
//!
//! Everything here is updated off the send path, when a snapshot arrives; the send path reads
//! one published view with one atomic load.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use ksp_core::{ConfigError, HealthSnapshot, PartitionHealth, PartitionLag, TopicHealth};
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Whether a key's messages may be reordered when the key moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyOrder {
    /// A key whose home turns unhealthy moves at once, and goes home at once when it
    /// recovers: its new messages can be consumed before its older ones still waiting on the
    /// partition it left. The most relief, no waiting. The default.
    #[default]
    Relaxed,
    /// A key moves only once the group has committed everything that could have been sent
    /// to it on the partition it leaves: meanwhile its sends wait in the producer (bounded by
    /// [`KeyOrderConfig`]). Consumers that process each partition in order and commit after
    /// processing see every key's messages in the order they were sent. See
    /// `docs/routing.md`, "Strict key order".
    Strict,
}

/// The key order and the bounds of the waits it imposes under [`KeyOrder::Strict`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyOrderConfig {
    /// Relaxed (the default) or strict.
    pub mode: KeyOrder,
    /// Longest a send waits for its key's old partition to drain; then it goes to the old
    /// partition. Default 30 s.
    pub max_hold: Duration,
    /// Most sends waiting at once in this producer; a send beyond it goes to its key's old
    /// partition at once, after the key's sends that were waiting (they stop waiting).
    /// Default 10 000.
    pub max_held_messages: u64,
    /// Most key and payload bytes waiting at once in this producer, with the same outcome.
    /// Default 64 MiB.
    pub max_held_bytes: u64,
}

impl KeyOrderConfig {
    /// Default `max_hold`.
    pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(30);
    /// Default `max_held_messages`.
    pub const DEFAULT_MAX_HELD_MESSAGES: u64 = 10_000;
    /// Default `max_held_bytes`.
    pub const DEFAULT_MAX_HELD_BYTES: u64 = 64 << 20;

    /// Strict key order with the default bounds.
    pub fn strict() -> Self {
        Self {
            mode: KeyOrder::Strict,
            ..Self::default()
        }
    }

    /// Sets `mode`.
    #[must_use]
    pub fn with_mode(mut self, mode: KeyOrder) -> Self {
        self.mode = mode;
        self
    }

    /// Sets `max_hold`.
    #[must_use]
    pub fn with_max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = max_hold;
        self
    }

    /// Sets `max_held_messages`.
    #[must_use]
    pub fn with_max_held_messages(mut self, messages: u64) -> Self {
        self.max_held_messages = messages;
        self
    }

    /// Sets `max_held_bytes`.
    #[must_use]
    pub fn with_max_held_bytes(mut self, bytes: u64) -> Self {
        self.max_held_bytes = bytes;
        self
    }

    /// Whether the order is strict.
    pub fn is_strict(&self) -> bool {
        self.mode == KeyOrder::Strict
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_hold > Duration::from_secs(3600) {
            return Err(ConfigError::duration(
                "key_order.max_hold",
                self.max_hold,
                "at most 1h (0 never waits: a key whose partition changes stays where it was)",
            ));
        }
        if !(1..=100_000_000).contains(&self.max_held_messages) {
            return Err(ConfigError::new(
                "key_order.max_held_messages",
                self.max_held_messages,
                "between 1 and 100000000 messages",
            ));
        }
        if !(1..=(1 << 40)).contains(&self.max_held_bytes) {
            return Err(ConfigError::new(
                "key_order.max_held_bytes",
                self.max_held_bytes,
                "between 1 and 1099511627776 bytes",
            ));
        }
        Ok(())
    }
}

impl Default for KeyOrderConfig {
    fn default() -> Self {
        Self {
            mode: KeyOrder::Relaxed,
            max_hold: Self::DEFAULT_MAX_HOLD,
            max_held_messages: Self::DEFAULT_MAX_HELD_MESSAGES,
            max_held_bytes: Self::DEFAULT_MAX_HELD_BYTES,
        }
    }
}

/// Observations kept per topic: the high watermarks of the last few distinct collections,
/// and the latest committed offsets.
#[derive(Clone, Default)]
pub(crate) struct Marks {
    /// `(when the lag was read, each partition's high watermark)`, oldest first; one entry per
    /// collection (a snapshot republished, or adopted twice from the fleet, is not a new one).
    seen: VecDeque<(SystemTime, Arc<[Option<i64>]>)>,
    committed: Arc<[Option<i64>]>,
}

impl Marks {
    /// Collections remembered. A barrier is read from the first one after the moment it is
    /// for; when that one is gone, from a later one (a higher watermark: later, never wrong).
    const KEEP: usize = 16;

    fn observe(&mut self, topic: &TopicHealth) {
        let lag = |f: fn(&PartitionLag) -> Option<i64>| -> Arc<[Option<i64>]> {
            topic.partitions().iter().map(|h| f(&h.lag)).collect()
        };
        let at = topic.collected_at();
        if self.seen.back().is_some_and(|(last, _)| *last >= at) {
            // The same collection again (or an older one): no new watermark. Committed offsets
            // only ever help a barrier pass, so take them from the newest collection only.
            return;
        }
        if self.seen.len() == Self::KEEP {
            self.seen.pop_front();
        }
        self.seen.push_back((at, lag(|l| l.high_watermark)));
        self.committed = lag(|l| l.committed);
    }

    /// When the newest collection taken in was read.
    fn latest(&self) -> Option<SystemTime> {
        self.seen.back().map(|(at, _)| *at)
    }

    /// Whether the group has committed, on `partition`, everything written there before the
    /// `nth` collection (0 = the first) read after `after` that saw the partition's watermark.
    pub(crate) fn drained_after(&self, partition: i32, after: SystemTime, nth: usize) -> bool {
        let Ok(p) = usize::try_from(partition) else {
            return false;
        };
        let Some(committed) = self.committed.get(p).copied().flatten() else {
            return false;
        };
        self.seen
            .iter()
            .filter(|(at, _)| *at > after)
            // A partition without a leader has no watermark in that collection: the next one.
            .filter_map(|(_, high)| high.get(p).copied().flatten())
            .nth(nth)
            .is_some_and(|barrier| committed >= barrier)
    }
}

/// A change of key placement whose old partitions may still hold unconsumed messages of keys
/// that moved.
#[derive(Clone)]
pub(crate) struct Transition {
    /// When the lag of the snapshot that showed the change was read, or, when later, when
    /// this router took it in: the barrier is the watermark of the next collection (read a
    /// refresh later, once every instance that routes from these snapshots has stopped
    /// sending the keys that moved to their old partitions).
    pub(crate) seen_at: SystemTime,
    /// The placement before the change.
    pub(crate) from: Arc<TopicHealth>,
    /// Per partition of `from`: nothing that left it in this transition can still be
    /// overtaken (it lost no key, or the group committed past its barrier).
    drained: Arc<[bool]>,
}

impl Transition {
    pub(crate) fn drained(&self, partition: i32) -> bool {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.drained.get(p).copied())
            .unwrap_or(true)
    }
}

/// What the send path reads for one topic.
#[derive(Clone)]
pub(crate) struct TopicView {
    /// The health keys are placed by (the latest snapshot's, stale or not).
    pub(crate) placement: Arc<TopicHealth>,
    /// When this router took that placement in: from then on it sends by it. Later than the
    /// placement's collection when a snapshot comes late (adopted from the fleet after an
    /// outage, say).
    pub(crate) taken_in: SystemTime,
    /// Open transitions, oldest first.
    pub(crate) transitions: Vec<Transition>,
    pub(crate) marks: Marks,
}

/// A key sent to its old partition because a bound was hit: it stays there until the group has
/// committed past what it sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pin {
    topic_hash: u64,
    pub(crate) partition: i32,
    /// When the lag of the health it was last sent under was read. Its barrier is the
    /// *second* collection after that: the first may have been read before the send.
    pub(crate) after: SystemTime,
}

impl Pin {
    pub(crate) fn drained(&self, marks: &Marks) -> bool {
        marks.drained_after(self.partition, self.after, 1)
    }
}

type Views = HashMap<u64, Arc<TopicView>, foldhash::fast::RandomState>;

/// The pinned keys, and how many (read without the lock: the send path looks a key up only
/// when some are pinned).
#[derive(Default)]
struct Pins {
    map: RwLock<HashMap<u64, Pin>>,
    count: AtomicUsize,
}

/// The published views, the pins, and what wakes the sends that wait.
pub(crate) struct Gates {
    views: ArcSwap<Views>,
    state: Mutex<State>,
    pins: Pins,
    changed: tokio::sync::watch::Sender<u64>,
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    views: HashMap<u64, TopicView>,
    /// The last snapshot version taken in: older ones are ignored.
    version: Option<u64>,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            views: ArcSwap::from_pointee(Views::default()),
            state: Mutex::default(),
            pins: Pins::default(),
            changed: tokio::sync::watch::channel(0).0,
            dropped: AtomicU64::new(0),
        }
    }
}

/// Most transitions open per topic. Each costs a little on every keyed send; they close as
/// consumers drain, so more means a partition stuck for dozens of changes of health.
const MAX_TRANSITIONS: usize = 32;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Gates {
    /// The view of `topic_hash`, if its health has been observed.
    #[inline]
    pub(crate) fn view(&self, topic_hash: u64) -> Option<Arc<TopicView>> {
        self.views.load().get(&topic_hash).cloned()
    }

    /// Wakes on every observed snapshot.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Transitions closed before they drained because too many were open (a key of one of
    /// them may then be reordered).
    pub(crate) fn dropped_transitions(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Keys pinned to their old partition now.
    pub(crate) fn pinned_keys(&self) -> usize {
        self.pins.count.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn pin(&self, fingerprint: u64) -> Option<Pin> {
        if self.pins.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.pins
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&fingerprint)
            .copied()
    }

    pub(crate) fn set_pin(
        &self,
        fingerprint: u64,
        topic_hash: u64,
        partition: i32,
        after: SystemTime,
    ) {
        let mut pins = self
            .pins
            .map
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        pins.insert(
            fingerprint,
            Pin {
                topic_hash,
                partition,
                after,
            },
        );
        self.pins.count.store(pins.len(), Ordering::Release);
    }

    /// Forgets the pin of `fingerprint` if it is still `pin` (not renewed meanwhile).
    pub(crate) fn unpin(&self, fingerprint: u64, pin: &Pin) {
        let mut pins = self
            .pins
            .map
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if pins
            .get(&fingerprint)
            .is_some_and(|p| p.partition == pin.partition && p.after == pin.after)
        {
            pins.remove(&fingerprint);
        }
        self.pins.count.store(pins.len(), Ordering::Release);
    }

    /// Forgets every topic (the health feed closed: the monitor stopped for good); keys then go
    /// where librdkafka sends them, as without health.
    pub(crate) fn clear(&self) {
        let mut state = lock(&self.state);
        state.views.clear();
        self.views.store(Arc::default());
        let mut pins = self
            .pins
            .map
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        pins.clear();
        self.pins.count.store(0, Ordering::Release);
        drop(pins);
        drop(state);
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Takes in a new snapshot: opens a transition where key placement changed, records the
    /// watermarks and committed offsets, closes what drained, and wakes the waiting sends.
    /// A snapshot older than one already taken in is ignored; a topic missing from it keeps
    /// its placement, marked stale (the monitor restarting publishes an empty snapshot first).
    #[cfg(test)]
    pub(crate) fn observe(&self, snapshot: &HealthSnapshot) {
        self.observe_at(snapshot, None, ksp_core::clock::global().raw());
    }

    /// [`observe`](Self::observe), the snapshot taken in at `taken_in` (the producer passes
    /// the clock; `None`, as a simulation driving a router by hand does: when it was read).
    /// `now` (a raw reading of the router's clock) judges staleness, once per topic: a
    /// collection taken in past its deadline (a busy runtime) is handled as one marked stale.
    /// It does not replace the placement taken in before it, and its watermarks and committed
    /// offsets are not taken either: a pin's barrier counts collections from the placement's
    /// time on, so every collection whose marks are taken must move the placement too.
    ///
    /// A transition's barrier is the first collection read after the transition was taken
    /// in, not merely after it was read: a snapshot taken in late (a follower adopting it
    /// after an outage, a busy runtime) leaves collections read before this router stopped
    /// sending the moved keys to their old partitions, and those cannot be barriers.
    pub(crate) fn observe_at(
        &self,
        snapshot: &HealthSnapshot,
        taken_in: Option<SystemTime>,
        now: u64,
    ) {
        let version = snapshot.version();
        let mut state = lock(&self.state);
        if state.version.is_some_and(|v| v >= version) {
            return;
        }
        state.version = Some(version);
        let mut next: HashMap<u64, TopicView> = HashMap::with_capacity(state.views.len());
        for topic in snapshot.topics() {
            let hash = topic.topic_hash();
            let taken_in = taken_in.map_or(topic.collected_at(), |t| t.max(topic.collected_at()));
            let stale = topic.is_stale_at(now);
            let mut view = match state.views.remove(&hash) {
                Some(mut view) if stale => {
                    // Nothing new was read: keys keep their places.
                    if !view.placement.is_marked_stale() {
                        view.placement = Arc::new(view.placement.to_stale());
                    }
                    view
                }
                Some(view)
                    if view
                        .marks
                        .latest()
                        .is_some_and(|l| topic.collected_at() <= l) =>
                {
                    // A collection already taken in (republished, or adopted again from the
                    // fleet), or an older one: no new offsets, and no placement to go back to.
                    next.insert(hash, view);
                    continue;
                }
                Some(mut view) => {
                    if placement_changed(&view.placement, topic) {
                        open(
                            &mut view.transitions,
                            view.placement.clone(),
                            topic,
                            taken_in,
                        );
                    }
                    view.placement = topic.clone();
                    view.taken_in = taken_in;
                    view
                }
                None => {
                    let mut view = TopicView {
                        placement: topic.clone(),
                        taken_in,
                        transitions: Vec::new(),
                        marks: Marks::default(),
                    };
                    // Until now keys of this topic went home (librdkafka's partitioner).
                    let everything_home = Arc::new(all_routable(topic));
                    if placement_changed(&everything_home, topic) {
                        open(&mut view.transitions, everything_home, topic, taken_in);
                    }
                    view
                }
            };
            if !stale {
                view.marks.observe(topic);
            }
            for t in &mut view.transitions {
                let drained: Arc<[bool]> = (0..t.from.partition_count())
                    .map(|p| t.drained(p) || view.marks.drained_after(p, t.seen_at, 0))
                    .collect();
                t.drained = drained;
            }
            view.transitions.retain(|t| t.drained.iter().any(|d| !d));
            if view.transitions.len() > MAX_TRANSITIONS {
                let excess = view.transitions.len() - MAX_TRANSITIONS;
                view.transitions.drain(..excess);
                self.dropped.fetch_add(excess as u64, Ordering::Relaxed);
                metrics::counter!("ksp_key_order_transitions_dropped_total")
                    .increment(excess as u64);
                warn!(
                    topic = topic.topic(),
                    excess, "too many key moves still draining: the oldest no longer hold keys"
                );
            }
            next.insert(hash, view);
        }
        for (hash, mut view) in state.views.drain() {
            if !view.placement.is_marked_stale() {
                view.placement = Arc::new(view.placement.to_stale());
            }
            next.insert(hash, view);
        }
        // Pins whose partition drained past their last send go.
        {
            let mut pins = self
                .pins
                .map
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            pins.retain(|_, pin| {
                next.get(&pin.topic_hash)
                    .is_some_and(|v| !pin.drained(&v.marks))
            });
            self.pins.count.store(pins.len(), Ordering::Release);
        }
        let views: Views = next
            .iter()
            .map(|(&h, v)| (h, Arc::new(v.clone())))
            .collect();
        self.views.store(Arc::new(views));
        state.views = next;
        drop(state);
        self.changed.send_replace(version);
    }
}

fn open(
    transitions: &mut Vec<Transition>,
    from: Arc<TopicHealth>,
    to: &TopicHealth,
    taken_in: SystemTime,
) {
    let losers = losers(&from, to);
    if losers.iter().any(|&l| l) {
        transitions.push(Transition {
            seen_at: taken_in,
            from,
            drained: losers.iter().map(|&l| !l).collect(),
        });
    }
}

/// Whether keys may be placed differently under `to` than under `from`.
fn placement_changed(from: &TopicHealth, to: &TopicHealth) -> bool {
    from.partition_count() != to.partition_count()
        || from.routable_partitions() != to.routable_partitions()
        || moves_keys(from) != moves_keys(to)
}

/// Whether keys whose home is unroutable move (otherwise every key stays home).
pub(crate) fn moves_keys(health: &TopicHealth) -> bool {
    !health.routable_partitions().is_empty() && health.can_absorb_moved_keys()
}

/// Per partition of `from`: whether some key placed there under `from` is placed elsewhere
/// under `to`.
fn losers(from: &TopicHealth, to: &TopicHealth) -> Vec<bool> {
    let count = from.partition_count();
    if count != to.partition_count() {
        // Keys' homes themselves change.
        return vec![true; count as usize];
    }
    let (moves_from, moves_to) = (moves_keys(from), moves_keys(to));
    let detours_change =
        moves_from != moves_to || from.routable_partitions() != to.routable_partitions();
    let some_moved = moves_from && (from.routable_partitions().len() as i32) < count;
    (0..count)
        .map(|p| {
            let home_from = from.is_routable(p) || !moves_from;
            let home_to = to.is_routable(p) || !moves_to;
            let holds_detours = some_moved && from.is_routable(p);
            (home_from && !home_to) || (holds_detours && detours_change)
        })
        .collect()
}

/// The placement of a topic before any health: every partition routable (every key home).
fn all_routable(topic: &TopicHealth) -> TopicHealth {
    let partitions = (0..topic.partition_count())
        .map(|p| PartitionHealth::new(PartitionLag::from_lag(p, 0), 1.0, true))
        .collect();
    TopicHealth::new(topic.topic(), SystemTime::UNIX_EPOCH, partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A topic's health whose lag was read at `second`, with `(committed, high)` per partition
    /// (`high` < 0: no watermark, the partition has no leader).
    fn topic(second: u64, routable: &[bool], offsets: &[(i64, i64)]) -> Arc<TopicHealth> {
        let partitions = routable
            .iter()
            .zip(offsets)
            .enumerate()
            .map(|(p, (&r, &(committed, high)))| {
                let mut lag = PartitionLag::from_offsets(p as i32, Some(committed), None, high);
                if high < 0 {
                    lag.high_watermark = None;
                }
                PartitionHealth::new(lag, if r { 1.0 } else { 0.0 }, r)
            })
            .collect();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + second);
        Arc::new(TopicHealth::new("t", at, partitions))
    }

    fn at(second: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + second)
    }

    /// Snapshots published one after the other (versions 1, 2, 3…).
    struct Feed(ksp_core::HealthPublisher, ksp_core::HealthFeed);

    impl Feed {
        fn new() -> Self {
            let (publisher, feed) = ksp_core::health_channel();
            Self(publisher, feed)
        }

        fn next(&mut self, t: Arc<TopicHealth>) -> Arc<HealthSnapshot> {
            self.0.publish(HealthSnapshot::new([t]));
            self.1.load_full()
        }

        fn empty(&mut self) -> Arc<HealthSnapshot> {
            self.0.publish(HealthSnapshot::empty());
            self.1.load_full()
        }
    }

    const SICK: [bool; 3] = [true, false, true];

    fn hash() -> u64 {
        TopicHealth::hash_of("t")
    }

    fn waits(gates: &Gates) -> bool {
        gates
            .view(hash())
            .unwrap()
            .transitions
            .first()
            .is_some_and(|t| !t.drained(1))
    }

    #[test]
    fn a_partition_turning_unroutable_opens_a_transition_that_drains_at_its_barrier() {
        let gates = Gates::default();
        let mut feed = Feed::new();
        gates.observe(&feed.next(topic(0, &[true; 3], &[(0, 10); 3])));
        assert!(gates.view(hash()).unwrap().transitions.is_empty());
        // Partition 1 turns unroutable, its watermark 50.
        gates.observe(&feed.next(topic(1, &SICK, &[(10, 10), (10, 50), (10, 10)])));
        assert_eq!(gates.view(hash()).unwrap().transitions.len(), 1);
        assert!(waits(&gates));
        // The barrier is read by the next collection (60: what was sent meanwhile counts).
        gates.observe(&feed.next(topic(2, &SICK, &[(10, 10), (40, 60), (10, 10)])));
        assert!(waits(&gates));
        gates.observe(&feed.next(topic(3, &SICK, &[(10, 10), (59, 70), (10, 10)])));
        assert!(waits(&gates));
        gates.observe(&feed.next(topic(4, &SICK, &[(10, 10), (60, 70), (10, 10)])));
        assert!(gates.view(hash()).unwrap().transitions.is_empty());
    }

    /// Review finding: a snapshot republished (or adopted twice from the fleet) under a new
    /// version gave the barrier the watermark read *before* the transition was seen.
    #[test]
    fn a_republished_snapshot_is_no_barrier() {
        let gates = Gates::default();
        let mut feed = Feed::new();
        gates.observe(&feed.next(topic(0, &[true; 3], &[(0, 10); 3])));
        let revealing = topic(1, &SICK, &[(10, 10), (10, 50), (10, 10)]);
        gates.observe(&feed.next(revealing.clone()));
        // The same collection again, as a follower adopting it twice would publish it, with
        // the consumer past its watermark (what the key sent meanwhile is above it).
        gates.observe(&feed.next(revealing));
        gates.observe(&feed.next(topic(1, &SICK, &[(10, 10), (50, 50), (10, 10)])));
        assert!(waits(&gates));
        gates.observe(&feed.next(topic(2, &SICK, &[(10, 10), (50, 55), (10, 10)])));
        assert!(waits(&gates));
        gates.observe(&feed.next(topic(3, &SICK, &[(10, 10), (55, 55), (10, 10)])));
        assert!(!waits(&gates));
    }

    /// Soak finding (code review of a reorder): a follower adopted the snapshot showing a
    /// transition only after the leader's next collection had been read, and kept sending the
    /// moved keys to their old partition until then; that earlier collection served as the
    /// barrier, below those sends.
    #[test]
    fn a_collection_read_before_the_transition_was_taken_in_is_no_barrier() {
        let gates = Gates::default();
        let mut feed = Feed::new();
        gates.observe_at(
            &feed.next(topic(0, &[true; 3], &[(0, 10); 3])),
            Some(at(0)),
            ksp_core::clock::global().raw(),
        );
        // Read at 1, taken in only at 3: the keys of partition 1 went there until 3.
        gates.observe_at(
            &feed.next(topic(1, &SICK, &[(10, 10), (10, 50), (10, 10)])),
            Some(at(3)),
            ksp_core::clock::global().raw(),
        );
        // The collection read at 2, before this router stopped sending: no barrier, although
        // the group is past its watermark.
        gates.observe_at(
            &feed.next(topic(2, &SICK, &[(10, 10), (50, 50), (10, 10)])),
            Some(at(3)),
            ksp_core::clock::global().raw(),
        );
        assert!(waits(&gates));
        // The first collection read after 3 is.
        gates.observe_at(
            &feed.next(topic(4, &SICK, &[(10, 10), (50, 60), (10, 10)])),
            Some(at(4)),
            ksp_core::clock::global().raw(),
        );
        assert!(waits(&gates));
        gates.observe_at(
            &feed.next(topic(5, &SICK, &[(10, 10), (60, 60), (10, 10)])),
            Some(at(5)),
            ksp_core::clock::global().raw(),
        );
        assert!(!waits(&gates));
    }

    /// Review finding: a partition without a leader reports no watermark; the barrier must
    /// come from the next collection that has one, not be lost.
    #[test]
    fn a_collection_without_the_partitions_watermark_is_no_barrier() {
        let gates = Gates::default();
        let mut feed = Feed::new();
        gates.observe(&feed.next(topic(0, &[true; 3], &[(0, 10); 3])));
        gates.observe(&feed.next(topic(1, &SICK, &[(10, 10), (10, 50), (10, 10)])));
        gates.observe(&feed.next(topic(2, &SICK, &[(10, 10), (10, -1), (10, 10)])));
        assert!(waits(&gates));
        gates.observe(&feed.next(topic(3, &SICK, &[(10, 10), (50, 60), (10, 10)])));
        assert!(waits(&gates));
        gates.observe(&feed.next(topic(4, &SICK, &[(10, 10), (60, 60), (10, 10)])));
        assert!(!waits(&gates));
    }

    /// Review finding: the monitor restarting publishes an empty snapshot; that wiped every
    /// transition and pin, and keys went home at once.
    #[test]
    fn a_snapshot_without_the_topic_keeps_its_transitions_and_pins() {
        let gates = Gates::default();
        let mut feed = Feed::new();
        gates.observe(&feed.next(topic(0, &[true; 3], &[(0, 10); 3])));
        gates.observe(&feed.next(topic(1, &SICK, &[(10, 10), (10, 50), (10, 10)])));
        gates.set_pin(7, hash(), 1, at(1));
        gates.observe(&feed.empty());
        let view = gates.view(hash()).unwrap();
        assert!(view.placement.is_stale());
        assert!(!view.placement.is_routable(1) && view.placement.is_routable(0));
        assert!(waits(&gates));
        assert!(gates.pin(7).is_some());
    }

    #[test]
    fn an_older_snapshot_is_ignored() {
        let gates = Gates::default();
        let mut feed = Feed::new();
        let first = feed.next(topic(0, &[true; 3], &[(0, 10); 3]));
        let second = feed.next(topic(1, &SICK, &[(10, 10), (10, 50), (10, 10)]));
        gates.observe(&second);
        gates.observe(&first);
        assert!(!gates.view(hash()).unwrap().placement.is_routable(1));
    }

    #[test]
    fn only_partitions_that_lose_keys_wait() {
        let from = topic(0, &[true, false, true, true], &[(0, 0); 4]);
        // Partition 1 recovers: its keys come home from every detour; partition 1 itself loses
        // nothing.
        let to = topic(0, &[true; 4], &[(0, 0); 4]);
        assert_eq!(losers(&from, &to), vec![true, false, true, true]);
        // Partition 3 falls too: its home keys leave, and detours re-rank.
        let to = topic(0, &[true, false, true, false], &[(0, 0); 4]);
        assert_eq!(losers(&from, &to), vec![true, false, true, true]);
        // Nothing moved before, partition 2 falls: only it loses keys.
        let from = topic(0, &[true; 4], &[(0, 0); 4]);
        let to = topic(0, &[true, true, false, true], &[(0, 0); 4]);
        assert_eq!(losers(&from, &to), vec![false, false, true, false]);
    }

    /// Review finding: a pin's barrier was the next collection, which may have been read
    /// before the pinned send.
    #[test]
    fn a_pin_holds_until_the_second_collection_after_its_send_drains() {
        let gates = Gates::default();
        let mut feed = Feed::new();
        gates.observe(&feed.next(topic(0, &[true, false], &[(0, 10), (0, 10)])));
        // Sent under the health read at 0; the collection at 1 may not have seen it.
        gates.set_pin(7, hash(), 1, at(0));
        gates.observe(&feed.next(topic(1, &[true, false], &[(10, 10), (10, 10)])));
        assert!(gates.pin(7).is_some());
        gates.observe(&feed.next(topic(2, &[true, false], &[(10, 10), (10, 11)])));
        assert!(gates.pin(7).is_some());
        gates.observe(&feed.next(topic(3, &[true, false], &[(10, 10), (11, 12)])));
        assert!(gates.pin(7).is_none());
        assert_eq!(gates.pinned_keys(), 0);
    }

    /// Regression (a review of 63a6c58): collections taken in past their deadline added their
    /// watermarks and committed offsets but left the placement, whose time a pin's barrier
    /// counts from, behind; the pin of a key sent after them was then released by them, before
    /// that send was consumed. The sequence that releases the pin above, each collection taken
    /// in late: nothing may release it.
    #[test]
    fn collections_taken_in_past_their_deadline_released_a_pin() {
        let gates = Gates::default();
        let mut feed = Feed::new();
        gates.observe(&feed.next(topic(0, &[true, false], &[(0, 10), (0, 10)])));
        gates.set_pin(7, hash(), 1, at(0));
        let late =
            |t: Arc<TopicHealth>| Arc::new(Arc::into_inner(t).unwrap().stale_in(Duration::ZERO));
        let offsets = [
            [(10, 10), (10, 10)],
            [(10, 10), (10, 11)],
            [(10, 10), (11, 12)],
        ];
        for (second, offsets) in (1..).zip(offsets) {
            gates.observe(&feed.next(late(topic(second, &[true, false], &offsets))));
        }
        assert!(
            gates.pin(7).is_some(),
            "released by collections taken in late"
        );
    }

    #[test]
    fn an_unpin_does_not_drop_a_renewed_pin_or_miscount() {
        let gates = Gates::default();
        gates.set_pin(7, hash(), 1, at(0));
        gates.set_pin(8, hash(), 1, at(0));
        let old = gates.pin(7).unwrap();
        gates.set_pin(7, hash(), 1, at(5));
        gates.unpin(7, &old);
        assert!(gates.pin(7).is_some());
        gates.unpin(8, &gates.pin(8).unwrap());
        assert_eq!(gates.pinned_keys(), 1);
    }

    #[test]
    fn first_health_that_moves_keys_opens_a_transition_from_everything_home() {
        let gates = Gates::default();
        let mut feed = Feed::new();
        gates.observe(&feed.next(topic(0, &[false, true, true], &[(0, 5); 3])));
        let view = gates.view(hash()).unwrap();
        assert_eq!(view.transitions.len(), 1);
        assert!(!view.transitions[0].drained(0));
        assert!(view.transitions[0].drained(1));
    }

    #[test]
    fn settings_are_checked() {
        KeyOrderConfig::strict().validate().unwrap();
        let e = KeyOrderConfig::strict()
            .with_max_held_messages(0)
            .validate()
            .unwrap_err();
        assert_eq!(e.setting, "key_order.max_held_messages");
        let e = KeyOrderConfig::strict()
            .with_max_hold(Duration::from_secs(7200))
            .validate()
            .unwrap_err();
        assert_eq!(e.setting, "key_order.max_hold");
    }
}
