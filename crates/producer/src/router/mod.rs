//! The router: where a message should go, decided synchronously from one health snapshot.

mod config;
mod decision;
mod detours;
mod order;
mod partitioner;

use std::fmt;
use std::sync::Arc;

use ksp_core::{ConfigError, HealthFeed, HealthSnapshot, TopicHealth};
use moka::sync::Cache;
use tracing::debug;
use xxhash_rust::xxh3::xxh3_64;

pub use self::config::{KeyCacheConfig, RouterConfig};
pub use self::decision::{Decision, Fallback, Route};
use self::detours::RoutabilityTracker;
use self::order::Gates;
pub use self::order::{KeyOrder, KeyOrderConfig};
pub use self::partitioner::Partitioner;
use ksp_core::mix64;

/// A remembered detour.
#[derive(Debug, Clone, Copy)]
struct Detour {
    topic_hash: u64,
    partition: i32,
}

/// What librdkafka counts for each message in a batch besides its key and payload: the
/// worst case of a v2 record's framing (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`).
const RECORD_OVERHEAD: usize = 36;
/// What a v2 record batch's header takes of `batch.size`.
const BATCH_HEADER: u32 = 61;

/// Decides where each message goes.
///
/// [`route`](Router::route) is synchronous and cheap: it loads the current
/// [`HealthSnapshot`](ksp_core::HealthSnapshot) once, looks the topic up, and for
///
/// * **a keyless message**, adds its size to the topic's sticky cursor and maps the current
///   sticky batch to a partition weighted by health: about one batch of bytes per partition,
///   then the next, like Kafka's KIP-794 partitioner. It allocates nothing.
/// * **a keyed message**, computes the key's home (the partition librdkafka would pick, over
///   the partition count of the health it judged). A routable home is set explicitly, so
///   the message goes exactly where health was judged, even while librdkafka's own metadata
///   still has an older partition count. An unroutable home moves the key to a detour: the
///   routable partition that ranks highest for the key by rendezvous hashing, which every
///   producer instance computes alike without talking to the others, and which stays put for
///   a key when *other* partitions change health. The detour is remembered in a moka cache so
///   the key keeps to it while it stays routable.
///
/// Whenever health is missing, stale or leaves no partition to route to, it sets no partition
/// and librdkafka's own partitioner decides.
pub struct Router {
    feed: HealthFeed,
    partitioner: Partitioner,
    sticky_batch_bytes: u32,
    /// `sticky_linger` in ticks of `clock`.
    sticky_linger_ticks: u64,
    /// A TSC clock (about 10 ns a reading, against about 24 ns for `Instant::now` here).
    clock: quanta::Clock,
    detours: Cache<u64, Detour, foldhash::fast::RandomState>,
    /// Under strict key order: the transitions and pins keys wait on.
    gates: Option<Gates>,
}

/// Where a keyed message goes under [`KeyOrder::Strict`], from
/// [`Router::route_in_order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStep {
    /// Send it now.
    Go(Decision),
    /// The key's partition changed, and the group has not yet committed past what may have
    /// been sent to it on `partition`, its old one: wait (and ask again when health changes),
    /// or send it there and [`pin`](Router::pin) the key.
    Wait {
        /// The key's old partition.
        partition: i32,
    },
}

impl Router {
    /// A router reading health from `feed`.
    pub fn new(feed: HealthFeed, config: &RouterConfig) -> Result<Self, ConfigError> {
        Self::with_clock(feed, config, quanta::Clock::new())
    }

    /// A router timed by `clock`: its sticky linger, and the deadlines of the health it reads
    /// (`quanta::Clock::mock()` makes a simulation or a test decide when time passes).
    ///
    /// Health deadlines are raw readings of the clock that set them
    /// ([`TopicHealth::stale_in_on`]); the health monitor sets them by
    /// [`ksp_core::clock::global`], whose raw readings every `quanta::Clock::new()` shares.
    /// A router on a mock clock must read health timed by that same mock clock.
    pub fn with_clock(
        feed: HealthFeed,
        config: &RouterConfig,
        clock: quanta::Clock,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let detours = Cache::builder()
            .max_capacity(config.key_cache.capacity)
            .time_to_live(config.key_cache.ttl)
            .support_invalidation_closures()
            .build_with_hasher(foldhash::fast::RandomState::default());
        Ok(Self {
            feed,
            partitioner: config.partitioner.unwrap_or_default(),
            sticky_batch_bytes: config.effective_sticky_batch_bytes(),
            sticky_linger_ticks: ksp_core::clock::ticks_for(
                &clock,
                config.effective_sticky_linger(),
            ),
            clock,
            detours,
            gates: config.key_order.is_strict().then(Gates::default),
        })
    }

    /// Where a message for `topic` should go; a key moved for the first time is remembered at
    /// once.
    ///
    /// `partition` is the record's own partition (it always wins), `key` its key and `size`
    /// its size in bytes (key plus payload), which paces sticky switching.
    #[inline]
    pub fn route(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        size: usize,
    ) -> Decision {
        let (decision, new_detour) = self.route_detailed(topic, partition, key, size);
        if let (Some(detour), Some(partition)) = (new_detour, decision.partition) {
            self.remember_detour(&detour, partition);
        }
        decision
    }

    /// [`route`](Self::route) without remembering anything: when the decision moves a key this
    /// router has no detour for, it says so, and the caller decides where the key goes (with
    /// other instances, say) and calls [`remember_detour`](Self::remember_detour) once the
    /// message is on its way.
    #[inline]
    pub fn route_detailed(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        size: usize,
    ) -> (Decision, Option<NewDetour>) {
        if partition.is_some() {
            let explicit = Decision {
                partition,
                route: Route::Explicit,
            };
            return (explicit, None);
        }
        let Some(key) = key else {
            return (self.route_keyless(topic, size), None);
        };
        if self.gates.is_some() {
            let decision = match self.step(topic, key, size, false) {
                KeyStep::Go(decision) => decision,
                KeyStep::Wait { .. } => Decision {
                    partition: None,
                    route: Route::Waiting,
                },
            };
            return (decision, None);
        }
        self.keyed_home(
            topic,
            key,
            size,
            |decision| (decision, None),
            |health| self.away_from_home(health, key),
        )
    }

    /// [`route_detailed`](Self::route_detailed) for a keyless message the record leaves to
    /// the router (no partition): the send path's common case, on its own so that it inlines.
    #[inline]
    pub(crate) fn route_keyless(&self, topic: &str, size: usize) -> Decision {
        let snapshot = self.feed.load();
        let now = self.clock.raw();
        match self.fresh(&snapshot, topic, now) {
            Ok(health) => self.sticky(health, size, now),
            Err(fallback) => Decision::fallback(fallback),
        }
    }

    /// [`route_detailed`](Self::route_detailed) for a keyed message the record leaves to the
    /// router, under relaxed key order, when the decision remembers nothing: the key's home is
    /// routable, the partitioner does not hash keys, or health says fall back. `None` when the
    /// key would move (or under strict key order): the caller asks `route_detailed`. The send
    /// path's common keyed case, on its own so that it inlines without carrying a
    /// [`NewDetour`].
    #[inline]
    pub(crate) fn route_keyed_home(
        &self,
        topic: &str,
        key: &[u8],
        size: usize,
    ) -> Option<Decision> {
        if self.gates.is_some() {
            return None;
        }
        self.keyed_home(topic, key, size, Some, |_| None)
    }

    /// A keyed message's decision under relaxed key order, as far as its home: `decided` takes
    /// it (fallback on stale or missing health, the home when routable, sticky when the
    /// partitioner gives keys no home); `away` is asked instead when the home is unroutable.
    #[inline(always)]
    fn keyed_home<R>(
        &self,
        topic: &str,
        key: &[u8],
        size: usize,
        decided: impl FnOnce(Decision) -> R,
        away: impl FnOnce(&TopicHealth) -> R,
    ) -> R {
        let snapshot = self.feed.load();
        let now = self.clock.raw();
        let health = match self.fresh(&snapshot, topic, now) {
            Ok(health) => health,
            Err(fallback) => return decided(Decision::fallback(fallback)),
        };
        match self.partitioner.home(Some(key), health.partition_count()) {
            Some(home) if health.is_routable(home) => decided(Decision {
                partition: Some(home),
                route: Route::Home,
            }),
            Some(_) => away(health),
            None => decided(self.sticky(health, size, now)),
        }
    }

    /// Makes the key of `detour` go to `partition` from now on.
    pub fn remember_detour(&self, detour: &NewDetour, partition: i32) {
        self.detours.insert(
            detour.fingerprint,
            Detour {
                topic_hash: detour.topic_hash,
                partition,
            },
        );
    }

    /// Forgets the detour remembered for a key of `topic` (`key_hash` = `xxh3_64` of the key):
    /// its next send chooses again.
    pub fn forget_detour(&self, topic: &str, key_hash: u64) {
        self.detours.invalidate(&fingerprint(topic, key_hash));
    }

    /// A raw reading of this router's clock, the one health's deadlines are judged by.
    pub(crate) fn now(&self) -> u64 {
        self.clock.raw()
    }

    /// Whether `partition` of `topic` may be routed to now (fresh health says so).
    pub fn is_routable(&self, topic: &str, partition: i32) -> bool {
        self.feed
            .load()
            .topic(topic)
            .is_some_and(|t| !t.is_stale_at(self.clock.raw()) && t.is_routable(partition))
    }

    /// Where the key of `detour` would go by the health of now: the routable partition that
    /// ranks highest for it, if any.
    pub fn detour_now(&self, topic: &str, detour: &NewDetour) -> Option<i32> {
        let snapshot = self.feed.load();
        let health = snapshot
            .topic(topic)
            .filter(|t| !t.is_stale_at(self.clock.raw()))?;
        health.detour(detour.key_hash)
    }

    /// `topic`'s health in `snapshot` if it may be routed by at `now` (a raw reading of
    /// this router's clock), or why not.
    #[inline(always)]
    fn fresh<'a>(
        &self,
        snapshot: &'a HealthSnapshot,
        topic: &str,
        now: u64,
    ) -> Result<&'a TopicHealth, Fallback> {
        match snapshot.topic(topic) {
            None => Err(Fallback::NoHealth),
            // The deadline as well as the monitor's mark: a monitor whose task is not
            // scheduled in time (something blocks the runtime's threads) cannot mark it.
            Some(health) if health.is_stale_at(now) => Err(Fallback::Stale),
            Some(health) => Ok(health),
        }
    }

    /// The sticky choice for a message of `size` bytes at `now` (a raw clock reading).
    #[inline(always)]
    fn sticky(&self, health: &TopicHealth, size: usize, now: u64) -> Decision {
        // Counted as librdkafka counts a batch against `batch.size`, so that a sticky batch
        // fills one of its batches and never spills a few messages into a second one.
        let batch = health.cursor().advance(
            size.saturating_add(RECORD_OVERHEAD),
            self.sticky_batch_bytes.saturating_sub(BATCH_HEADER).max(1),
            now,
            self.sticky_linger_ticks,
        );
        // The cursor starts at a random batch, so producers do not move in step.
        match health.pick_for_batch(batch) {
            Some(partition) => Decision {
                partition: Some(partition),
                route: Route::Sticky,
            },
            None => Decision::fallback(Fallback::NoRoutablePartition),
        }
    }

    /// A key whose home is unroutable: moved (to its remembered detour, or a new one), or
    /// kept home as a fallback.
    fn away_from_home(&self, health: &TopicHealth, key: &[u8]) -> (Decision, Option<NewDetour>) {
        if health.routable_partitions().is_empty() {
            return (Decision::fallback(Fallback::NoRoutablePartition), None);
        }
        if !health.can_absorb_moved_keys() {
            // Moving every key of the unhealthy majority onto the few healthy partitions would
            // overload them: keys stay home.
            return (Decision::fallback(Fallback::TooFewRoutable), None);
        }
        let key_hash = xxh3_64(key);
        let fingerprint = fingerprint_with(health.topic_hash(), key_hash);
        // Detours that turned unroutable are dropped when the snapshot changes; this check
        // only covers the moment between a snapshot's publication and that clean-up.
        if let Some(detour) = self.detours.get(&fingerprint)
            && health.is_routable(detour.partition)
        {
            let moved = Decision {
                partition: Some(detour.partition),
                route: Route::Moved,
            };
            return (moved, None);
        }
        let Some(partition) = health.detour(key_hash) else {
            return (Decision::fallback(Fallback::NoRoutablePartition), None);
        };
        let detour = NewDetour {
            key_hash,
            fingerprint,
            topic_hash: health.topic_hash(),
            routable: health.routable_partitions().into(),
        };
        let moved = Decision {
            partition: Some(partition),
            route: Route::Moved,
        };
        (moved, Some(detour))
    }

    /// The key order this router keeps.
    pub fn key_order(&self) -> KeyOrder {
        if self.gates.is_some() {
            KeyOrder::Strict
        } else {
            KeyOrder::Relaxed
        }
    }

    /// Where a keyed message of `topic` goes under [`KeyOrder::Strict`] (under `Relaxed`, as
    /// [`route`](Self::route)): to its home while it is routable, otherwise to its detour by
    /// plain rendezvous hashing over the routable partitions (the same in every instance that
    /// sees the same health); but a key whose partition changed waits until the group has
    /// committed past what may have been sent to it on its old one (see `docs/routing.md`).
    ///
    /// While the topic's health is stale, keys keep the partitions the last health gave them;
    /// without health for the topic, librdkafka's partitioner decides (the key's home).
    /// Allocates nothing; takes a lock only for keys when some key is pinned.
    ///
    /// A key without a home is routed like a keyless message of the key's size (the producers
    /// count the whole message, key and payload).
    #[inline]
    pub fn route_in_order(&self, topic: &str, key: &[u8]) -> KeyStep {
        self.step(topic, key, key.len(), true)
    }

    /// [`route_in_order`](Self::route_in_order) for a message of `size` bytes (key plus
    /// payload), which paces sticky switching when the key has no home.
    #[inline]
    pub(crate) fn route_in_order_sized(&self, topic: &str, key: &[u8], size: usize) -> KeyStep {
        self.step(topic, key, size, true)
    }

    /// [`route_in_order`](Self::route_in_order); `sending` when the message goes where the
    /// answer says (a pinned key's pin then covers it), not when only asking.
    #[inline]
    fn step(&self, topic: &str, key: &[u8], size: usize, sending: bool) -> KeyStep {
        let Some(gates) = &self.gates else {
            return KeyStep::Go(self.route_detailed(topic, None, Some(key), size).0);
        };
        let topic_hash = TopicHealth::hash_of(topic);
        let Some(view) = gates.view(topic_hash) else {
            return KeyStep::Go(Decision::fallback(Fallback::NoHealth));
        };
        let key_hash = xxh3_64(key);
        let now = self.clock.raw();
        let stale = view.placement.is_stale_at(now);
        let Some((target, route)) = self.place(&view.placement, key, key_hash) else {
            // No home (an empty key under `consistent_random`, any key under `random`): routed
            // like a keyless message, as librdkafka would.
            if stale {
                return KeyStep::Go(Decision::fallback(Fallback::Stale));
            }
            return KeyStep::Go(self.sticky(&view.placement, size, now));
        };
        let route = if stale {
            Route::Fallback(Fallback::Stale)
        } else {
            route
        };
        let fingerprint = fingerprint_with(topic_hash, key_hash);
        if let Some(pin) = gates.pin(fingerprint) {
            if pin.partition == target {
                // Every message of the key is there (or consumed): nothing to wait for.
                gates.unpin(fingerprint, &pin);
                return KeyStep::Go(Decision {
                    partition: Some(target),
                    route,
                });
            }
            if pin.drained(&view.marks) {
                gates.unpin(fingerprint, &pin);
            } else {
                if sending {
                    gates.set_pin(
                        fingerprint,
                        topic_hash,
                        pin.partition,
                        view.placement.collected_at().max(view.taken_in),
                    );
                }
                return KeyStep::Go(Decision {
                    partition: Some(pin.partition),
                    route: Route::Pinned,
                });
            }
        }
        // Follow the key through the open transitions, oldest first: before each, it was
        // where that transition's old placement put it; it may have left only once that
        // partition drained past the transition's barrier.
        let place = |health: &TopicHealth| self.place(health, key, key_hash).map(|(p, _)| p);
        for (i, transition) in view.transitions.iter().enumerate() {
            let here = place(&transition.from);
            let next = match view.transitions.get(i + 1) {
                Some(later) => place(&later.from),
                None => Some(target),
            };
            if let Some(here) = here
                && next != Some(here)
                && !transition.drained(here)
            {
                if here == target {
                    break;
                }
                return KeyStep::Wait { partition: here };
            }
        }
        KeyStep::Go(Decision {
            partition: Some(target),
            route,
        })
    }

    /// Sends the key to `partition` (its old one, after a [`KeyStep::Wait`] that could not
    /// wait longer) and keeps it there until the group has committed past this send, so its
    /// later messages cannot overtake it.
    pub fn pin(&self, topic: &str, key: &[u8], partition: i32) -> Decision {
        if let Some(gates) = &self.gates {
            let topic_hash = TopicHealth::hash_of(topic);
            // Without health for the topic, the pin's barrier is the second collection once
            // health comes.
            let after = gates
                .view(topic_hash)
                .map_or(std::time::SystemTime::UNIX_EPOCH, |v| {
                    v.placement.collected_at().max(v.taken_in)
                });
            gates.set_pin(
                fingerprint_with(topic_hash, xxh3_64(key)),
                topic_hash,
                partition,
                after,
            );
        }
        Decision {
            partition: Some(partition),
            route: Route::Pinned,
        }
    }

    /// A key's identity in the lines of waiting sends.
    pub(crate) fn key_fingerprint(&self, topic: &str, key: &[u8]) -> u64 {
        fingerprint(topic, xxh3_64(key))
    }

    /// Takes in the feed's current snapshot for strict key order now (the producer does it on
    /// every snapshot; a simulation driving a router by hand calls it after each publication).
    pub fn observe_health(&self) {
        if let Some(gates) = &self.gates {
            gates.observe_at(&self.feed.load_full(), None, self.clock.raw());
        }
    }

    /// Wakes whenever strict key order has taken in a new snapshot (never under `Relaxed`).
    pub fn key_order_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.gates.as_ref().map(Gates::subscribe)
    }

    /// Keys pinned to their old partition now, and transitions closed before they drained
    /// (see [`KeyOrder::Strict`]); zeros under `Relaxed`.
    pub fn key_order_counts(&self) -> (usize, u64) {
        self.gates
            .as_ref()
            .map_or((0, 0), |g| (g.pinned_keys(), g.dropped_transitions()))
    }

    /// Where strict key order places a key under `health`, and why.
    #[inline]
    fn place(&self, health: &TopicHealth, key: &[u8], key_hash: u64) -> Option<(i32, Route)> {
        let home = self.partitioner.home(Some(key), health.partition_count())?;
        if health.is_routable(home) {
            return Some((home, Route::Home));
        }
        if health.routable_partitions().is_empty() {
            return Some((home, Route::Fallback(Fallback::NoRoutablePartition)));
        }
        if !health.can_absorb_moved_keys() {
            return Some((home, Route::Fallback(Fallback::TooFewRoutable)));
        }
        health.stable_detour(key_hash).map(|p| (p, Route::Moved))
    }

    /// The health feed this router reads.
    pub fn feed(&self) -> &HealthFeed {
        &self.feed
    }

    /// The partitioner whose homes it respects.
    pub fn partitioner(&self) -> Partitioner {
        self.partitioner
    }

    /// Moved keys currently remembered (approximate: the cache counts lazily).
    pub fn moved_keys(&self) -> u64 {
        self.detours.entry_count()
    }

    /// Applies pending cache maintenance now (evictions, invalidations).
    pub fn run_pending_tasks(&self) {
        self.detours.run_pending_tasks();
    }

    /// Keeps the detour cache in step with health until the feed closes: on every new
    /// snapshot, forgets the detours that lead to partitions which stopped being routable.
    ///
    /// The producer spawns this; it runs off the send path. It subscribes when called, not
    /// when first polled, so no snapshot published in between is missed.
    pub fn follow_health(self: Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let changes = self.feed.subscribe();
        self.follow(changes)
    }

    async fn follow(self: Arc<Self>, mut changes: tokio::sync::watch::Receiver<u64>) {
        let mut tracker = RoutabilityTracker::default();
        // Taken in now, by the clock: a barrier must be read after this router stopped
        // sending moved keys to their old partitions.
        let take_in = |snapshot: &ksp_core::HealthSnapshot| {
            if let Some(gates) = &self.gates {
                gates.observe_at(
                    snapshot,
                    Some(std::time::SystemTime::now()),
                    self.clock.raw(),
                );
            }
        };
        if self.feed.load().version() > 0 {
            take_in(&self.feed.load_full());
        }
        while changes.changed().await.is_ok() {
            let snapshot = self.feed.load_full();
            if self.gates.is_some() {
                take_in(&snapshot);
                continue;
            }
            let lost = tracker.newly_unroutable(&snapshot, self.clock.raw());
            if lost.is_empty() {
                continue;
            }
            debug!(
                partitions = lost.len(),
                "forgetting detours to partitions that are no longer routable"
            );
            let registered = self
                .detours
                .invalidate_entries_if(move |_, d| lost.contains(&(d.topic_hash, d.partition)));
            if registered.is_ok() {
                let router = self.clone();
                // Maintenance walks the cache; keep it off the async workers.
                let _ = tokio::task::spawn_blocking(move || router.run_pending_tasks()).await;
            }
        }
        // The monitor is gone for good: without health, keys go where librdkafka sends them
        // (and the sends waiting for a key's move are woken to go too).
        if let Some(gates) = &self.gates {
            gates.clear();
        }
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("partitioner", &self.partitioner)
            .field("sticky_batch_bytes", &self.sticky_batch_bytes)
            .field(
                "sticky_linger",
                &self.clock.delta(0, self.sticky_linger_ticks),
            )
            .field("moved_keys", &self.moved_keys())
            .field("feed", &self.feed)
            .finish()
    }
}

/// A key this router just moved for the first time (its moka cache had no detour for it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewDetour {
    /// `xxh3_64` of the key: the key's name in a shared store.
    pub key_hash: u64,
    /// The partitions that were routable when the detour was chosen.
    pub routable: Arc<[i32]>,
    fingerprint: u64,
    topic_hash: u64,
}

/// A key's identity in the detour cache: its hash and its topic's.
pub(crate) fn fingerprint(topic: &str, key_hash: u64) -> u64 {
    fingerprint_with(TopicHealth::hash_of(topic), key_hash)
}

#[inline]
fn fingerprint_with(topic_hash: u64, key_hash: u64) -> u64 {
    mix64(key_hash ^ topic_hash.rotate_left(29))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ksp_core::{
        HealthPublisher, HealthSnapshot, PartitionHealth, PartitionLag, health_channel,
    };

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

    fn router() -> (HealthPublisher, Router) {
        let (publisher, feed) = health_channel();
        (
            publisher,
            Router::new(feed, &RouterConfig::default()).unwrap(),
        )
    }

    fn publish(publisher: &mut HealthPublisher, healthy: &[bool]) {
        publisher.publish(HealthSnapshot::new([topic("t", healthy)]));
    }

    #[test]
    fn explicit_partition_always_wins() {
        let (mut publisher, router) = router();
        publish(&mut publisher, &[false, true]);
        let d = router.route("t", Some(0), Some(b"k"), 10);
        assert_eq!(d.partition, Some(0));
        assert_eq!(d.route, Route::Explicit);
    }

    /// The send path's keyed shortcut decides as the full path does, and declines exactly
    /// the keys whose home is unroutable (which the full path moves, or keeps home as a
    /// fallback).
    #[test]
    fn keyed_home_shortcut_agrees_with_route_detailed() {
        let (mut publisher, router) = router();
        let keys: Vec<Vec<u8>> = (0..500).map(|i| format!("key-{i}").into_bytes()).collect();
        // No health, then stale health, then health with unroutable partitions, then none
        // routable.
        let shapes: [Option<&[bool]>; 4] = [
            None,
            Some(&[true, false, true, false, true, true, false, true]),
            Some(&[false, false, false, false, false, false, false, true]),
            Some(&[false; 8]),
        ];
        let mut declined = 0;
        for (i, shape) in shapes.iter().enumerate() {
            if let Some(healthy) = shape {
                publish(&mut publisher, healthy);
            }
            if i == 1 {
                // Once as published, once stale.
                publisher.publish(HealthSnapshot::new([Arc::new(
                    topic("t", shape.unwrap()).to_stale(),
                )]));
                for key in &keys {
                    assert_eq!(
                        router.route_keyed_home("t", key, 10),
                        Some(Decision::fallback(Fallback::Stale))
                    );
                }
                publish(&mut publisher, shape.unwrap());
            }
            for key in &keys {
                let (full, detour) = router.route_detailed("t", None, Some(key), 10);
                match router.route_keyed_home("t", key, 10) {
                    Some(short) => {
                        assert_eq!(short, full, "{key:?}");
                        assert!(detour.is_none(), "{key:?}");
                    }
                    None => {
                        // Its home is unroutable: moved, or kept home when the routable
                        // partitions are too few to take the moved keys.
                        declined += 1;
                        assert!(
                            matches!(
                                full.route,
                                Route::Moved
                                    | Route::Fallback(
                                        Fallback::TooFewRoutable | Fallback::NoRoutablePartition
                                    )
                            ),
                            "{key:?}: {full:?}"
                        );
                        assert_eq!(full.route == Route::Moved, detour.is_some(), "{key:?}");
                    }
                }
            }
        }
        // Keys whose home is unroutable were declined: 3 of 8 partitions, then 7, then 8.
        assert!(declined > 500 * 15 / 8, "{declined}");
    }

    /// Keys moved and remembered go home again once their home is routable, by the shortcut
    /// as by the full path.
    #[test]
    fn keyed_home_shortcut_sends_a_remembered_key_home_once_its_home_recovers() {
        let (mut publisher, router) = router();
        publish(&mut publisher, &[true, true, true, false]);
        let mut moved = Vec::new();
        for i in 0..200 {
            let key = format!("key-{i}").into_bytes();
            let (decision, detour) = router.route_detailed("t", None, Some(&key), 10);
            if let Some(detour) = detour {
                router.remember_detour(&detour, decision.partition.unwrap());
                assert_eq!(router.route_keyed_home("t", &key, 10), None);
                moved.push(key);
            }
        }
        assert!(!moved.is_empty());
        publish(&mut publisher, &[true; 4]);
        for key in &moved {
            let (full, _) = router.route_detailed("t", None, Some(key), 10);
            assert_eq!(full.route, Route::Home);
            assert_eq!(router.route_keyed_home("t", key, 10), Some(full));
        }
    }

    /// Under a partitioner that gives keys no home, keyed messages stick as keyless ones do,
    /// by the shortcut as by the full path.
    #[test]
    fn keyed_home_shortcut_sticks_when_keys_have_no_home() {
        let (mut publisher, feed) = health_channel();
        let config = RouterConfig {
            partitioner: Some(Partitioner::Random),
            ..RouterConfig::default()
        };
        let router = Router::new(feed, &config).unwrap();
        publish(&mut publisher, &[true, false, true, true]);
        for i in 0..100 {
            let key = format!("key-{i}").into_bytes();
            let short = router.route_keyed_home("t", &key, 10).unwrap();
            let (full, detour) = router.route_detailed("t", None, Some(&key), 10);
            assert!(detour.is_none());
            assert_eq!(short.route, full.route);
            assert_ne!(short.partition, Some(1), "{short:?}");
        }
    }

    #[test]
    fn no_health_falls_back() {
        let (_publisher, router) = router();
        let d = router.route("t", None, None, 10);
        assert_eq!(d, Decision::fallback(Fallback::NoHealth));
    }

    #[test]
    fn stale_health_falls_back() {
        let (mut publisher, router) = router();
        publisher.publish(HealthSnapshot::new([Arc::new(
            topic("t", &[true]).to_stale(),
        )]));
        assert_eq!(
            router.route("t", None, None, 10),
            Decision::fallback(Fallback::Stale)
        );
        assert_eq!(
            router.route("t", None, Some(b"k"), 10),
            Decision::fallback(Fallback::Stale)
        );
    }

    #[test]
    fn nothing_routable_falls_back() {
        let (mut publisher, router) = router();
        publish(&mut publisher, &[false, false]);
        let expected = Decision::fallback(Fallback::NoRoutablePartition);
        assert_eq!(router.route("t", None, None, 10), expected);
        // Find a key whose home is unhealthy (all are).
        assert_eq!(router.route("t", None, Some(b"k"), 10), expected);
    }

    #[test]
    fn linger_converts_to_clock_ticks_and_back() {
        let clock = quanta::Clock::new();
        for ms in [0, 1, 10, 250, 900_000] {
            let d = std::time::Duration::from_millis(ms);
            let back = clock.delta(0, ksp_core::clock::ticks_for(&clock, d));
            assert!(
                back >= d && back - d < std::time::Duration::from_micros(1),
                "{d:?} → {back:?}"
            );
        }
    }

    #[test]
    fn keyless_never_picks_an_unhealthy_partition_and_sticks_for_a_batch() {
        let (mut publisher, feed) = health_channel();
        let config = RouterConfig::default()
            .with_sticky_batch_bytes(16 * 1024)
            // Long enough that only bytes end a batch in this test.
            .with_sticky_linger(std::time::Duration::from_secs(600));
        let router = Router::new(feed, &config).unwrap();
        publish(&mut publisher, &[true, false, true, true]);
        let mut picks = Vec::new();
        for _ in 0..10_000 {
            let d = router.route("t", None, None, 100);
            assert_eq!(d.route, Route::Sticky);
            picks.push(d.partition.unwrap());
        }
        assert!(picks.iter().all(|&p| p != 1));
        // 100-byte messages (136 as librdkafka counts them) in 16 KiB batches: a switch
        // every 120 messages.
        let switches = picks.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(switches <= 10_000 / 120, "{switches} switches");
        // And it does move on: every healthy partition gets traffic.
        for p in [0, 2, 3] {
            assert!(picks.contains(&p), "partition {p} never picked");
        }
    }

    /// Regression: a sticky batch counted only keys and payloads up to `batch.size`, and took
    /// the message that crossed it; librdkafka counts 36 bytes of framing per record and 61 of
    /// batch header, so each sticky batch filled one of its batches and spilled the rest into
    /// a second, nearly empty one (1 KiB messages: 474 per batch against 700 for librdkafka's
    /// partitioner, in `ksp-bench throughput`).
    #[test]
    fn a_sticky_batch_fits_one_librdkafka_batch() {
        let (mut publisher, feed) = health_channel();
        let config = RouterConfig::default()
            .with_sticky_batch_bytes(16 * 1024)
            .with_sticky_linger(std::time::Duration::from_secs(600));
        let router = Router::new(feed, &config).unwrap();
        publish(&mut publisher, &[true; 8]);
        let picks: Vec<i32> = (0..1_000)
            .map(|_| router.route("t", None, None, 1024).partition.unwrap())
            .collect();
        // librdkafka fits (16 384 - 61) / (1 024 + 36) = 15 such messages in a batch.
        let mut runs = Vec::new();
        let mut run = 1;
        for w in picks.windows(2) {
            if w[0] == w[1] {
                run += 1;
            } else {
                runs.push(run);
                run = 1;
            }
        }
        assert!(runs.iter().all(|&r| r == 15), "{runs:?}");
    }

    #[test]
    fn keyless_switches_partition_after_the_sticky_linger() {
        let (mut publisher, feed) = health_channel();
        let config =
            RouterConfig::default().with_sticky_linger(std::time::Duration::from_millis(1));
        let (clock, mock) = quanta::Clock::mock();
        let router = Router::with_clock(feed, &config, clock).unwrap();
        publish(&mut publisher, &[true, true, true]);
        let mut picks = std::collections::BTreeSet::new();
        let mut switches = 0;
        let mut last = None;
        for _ in 0..30 {
            let p = router.route("t", None, None, 10).partition.unwrap();
            switches += usize::from(last.is_some_and(|l| l != p));
            last = Some(p);
            picks.insert(p);
            mock.increment(std::time::Duration::from_millis(2));
        }
        // Every message comes after the linger: each starts a batch of its own.
        assert!(switches >= 15, "{switches} switches");
        // 30 batches over 3 partitions: all of them get some.
        assert_eq!(picks.len(), 3, "{picks:?}");
    }

    #[test]
    fn keyed_message_with_healthy_home_goes_home() {
        let (mut publisher, router) = router();
        publish(&mut publisher, &[true; 4]);
        let d = router.route("t", None, Some(b"user-1"), 10);
        // The home is set explicitly: the one health was judged for.
        let home = router.partitioner().home(Some(b"user-1"), 4);
        assert_eq!(
            d,
            Decision {
                partition: home,
                route: Route::Home
            }
        );
        assert_eq!(router.moved_keys(), 0);
    }

    fn key_with_home(router: &Router, home: i32, count: i32) -> Vec<u8> {
        (0..)
            .map(|i| format!("key-{i}").into_bytes())
            .find(|k| router.partitioner().home(Some(k), count) == Some(home))
            .unwrap()
    }

    #[test]
    fn keyed_message_with_unhealthy_home_moves_and_keeps_its_detour() {
        let (mut publisher, router) = router();
        publish(&mut publisher, &[true, false, true, true]);
        let key = key_with_home(&router, 1, 4);
        let first = router.route("t", None, Some(&key), 10);
        assert_eq!(first.route, Route::Moved);
        let detour = first.partition.unwrap();
        assert_ne!(detour, 1);
        for _ in 0..100 {
            assert_eq!(router.route("t", None, Some(&key), 10), first);
        }
        // Another partition turns unhealthy: the key keeps its detour.
        let other = [0, 2, 3].into_iter().find(|&p| p != detour).unwrap();
        let mut healthy = [true, false, true, true];
        healthy[other as usize] = false;
        publish(&mut publisher, &healthy);
        assert_eq!(router.route("t", None, Some(&key), 10), first);
    }

    #[test]
    fn detour_that_turns_unhealthy_is_replaced() {
        let (mut publisher, router) = router();
        publish(&mut publisher, &[true, false, true, true]);
        let key = key_with_home(&router, 1, 4);
        let detour = router.route("t", None, Some(&key), 10).partition.unwrap();
        let mut healthy = [true, false, true, true];
        healthy[detour as usize] = false;
        publish(&mut publisher, &healthy);
        let d = router.route("t", None, Some(&key), 10);
        assert_eq!(d.route, Route::Moved);
        assert!(![1, detour].contains(&d.partition.unwrap()), "{d:?}");
    }

    #[test]
    fn two_routers_move_a_key_to_the_same_partition() {
        let (mut p1, r1) = router();
        let (mut p2, r2) = router();
        let healthy = [true, false, true, true, false, true, true, true];
        publish(&mut p1, &healthy);
        publish(&mut p2, &healthy);
        let mut moved = 0;
        for i in 0..500 {
            let key = format!("customer-{i}");
            let a = r1.route("t", None, Some(key.as_bytes()), 10);
            let b = r2.route("t", None, Some(key.as_bytes()), 10);
            assert_eq!(a, b, "{key}");
            moved += usize::from(a.route == Route::Moved);
        }
        // About a quarter of the keys live on the two unhealthy partitions.
        assert!((80..=170).contains(&moved), "{moved}");
    }

    #[test]
    fn moved_keys_spread_over_healthy_partitions() {
        let (mut publisher, router) = router();
        publish(&mut publisher, &[false, true, true, true, true]);
        let mut counts = [0; 5];
        for i in 0..5000 {
            let key = format!("k{i}");
            let d = router.route("t", None, Some(key.as_bytes()), 10);
            if d.route == Route::Moved {
                counts[d.partition.unwrap() as usize] += 1;
            }
        }
        assert_eq!(counts[0], 0);
        let moved: i32 = counts.iter().sum();
        for &c in &counts[1..] {
            assert!((c - moved / 4).abs() < moved / 8, "{counts:?}");
        }
    }

    #[test]
    fn unwatched_topic_falls_back() {
        let (mut publisher, router) = router();
        publish(&mut publisher, &[true]);
        assert_eq!(
            router.route("other", None, None, 10),
            Decision::fallback(Fallback::NoHealth)
        );
    }

    /// Waits (at most a second) for the follower to forget detours until `expected` keys are
    /// remembered as moved, and checks it did.
    async fn assert_moved_keys_become(router: &Router, expected: u64) {
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            router.run_pending_tasks();
            if router.moved_keys() == expected {
                break;
            }
        }
        assert_eq!(router.moved_keys(), expected);
    }

    #[tokio::test]
    async fn detours_to_partitions_that_turn_unhealthy_are_dropped_on_notification() {
        let (mut publisher, router) = router();
        let router = Arc::new(router);
        let follower = tokio::spawn(router.clone().follow_health());
        publish(&mut publisher, &[true, false, true, true]);
        let keys: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("key-{i}").into_bytes())
            .filter(|k| router.partitioner().home(Some(k), 4) == Some(1))
            .collect();
        for key in &keys {
            router.route("t", None, Some(key), 10);
        }
        router.run_pending_tasks();
        let before = router.moved_keys();
        assert_eq!(before, keys.len() as u64);

        // Partition 2 turns unhealthy: the detours to it are dropped without any routing.
        let to_two = keys
            .iter()
            .filter(|k| router.route("t", None, Some(k), 10).partition == Some(2))
            .count() as u64;
        assert!(to_two > 0);
        publish(&mut publisher, &[true, false, false, true]);
        assert_moved_keys_become(&router, before - to_two).await;
        drop(publisher);
        follower.await.unwrap();
    }

    /// The detour follower judged staleness by the process's clock: a router on a mock clock,
    /// fed health timed by that clock, saw it stale and never forgot detours to partitions it
    /// lost. The deadline is a microsecond of the mock clock, which never moves by itself:
    /// fresh by it, long past by the process's clock.
    #[tokio::test]
    async fn detours_are_dropped_by_the_routers_clock_not_the_process_clock() {
        let (clock, _mock) = quanta::Clock::mock();
        let (mut publisher, feed) = health_channel();
        let router =
            Arc::new(Router::with_clock(feed, &RouterConfig::default(), clock.clone()).unwrap());
        // Owns the publisher: dropping it ends the follower.
        let mut publish = move |healthy: &[bool]| {
            let health =
                health("t", healthy).stale_in_on(&clock, std::time::Duration::from_micros(1));
            publisher.publish(HealthSnapshot::new([Arc::new(health)]));
        };
        let follower = tokio::spawn(router.clone().follow_health());
        publish(&[true, false, true, true]);
        let keys: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("key-{i}").into_bytes())
            .filter(|k| router.partitioner().home(Some(k), 4) == Some(1))
            .collect();
        let to_two = keys
            .iter()
            .filter(|k| router.route("t", None, Some(k), 10).partition == Some(2))
            .count() as u64;
        assert!(to_two > 0);
        router.run_pending_tasks();
        let before = router.moved_keys();
        assert_eq!(before, keys.len() as u64);
        publish(&[true, false, false, true]);
        assert_moved_keys_become(&router, before - to_two).await;
        drop(publish);
        tokio::time::timeout(std::time::Duration::from_secs(10), follower)
            .await
            .expect("the follower ends with its feed")
            .unwrap();
    }

    fn strict_router() -> (HealthPublisher, Router) {
        let (publisher, feed) = health_channel();
        let config = RouterConfig::default().with_key_order(KeyOrderConfig::strict());
        (publisher, Router::new(feed, &config).unwrap())
    }

    /// Publishes health with `(committed, high watermark)` per partition and lets the
    /// router take it in.
    fn publish_offsets(
        publisher: &mut HealthPublisher,
        router: &Router,
        healthy: &[bool],
        offsets: &[(i64, i64)],
    ) {
        let partitions = healthy
            .iter()
            .zip(offsets)
            .enumerate()
            .map(|(p, (&h, &(committed, high)))| {
                PartitionHealth::new(
                    PartitionLag::from_offsets(p as i32, Some(committed), None, high),
                    if h { 1.0 } else { 0.0 },
                    h,
                )
            })
            .collect();
        publisher.publish(HealthSnapshot::new([Arc::new(TopicHealth::new(
            "t",
            SystemTime::now(),
            partitions,
        ))]));
        router.observe_health();
    }

    #[test]
    fn strict_key_waits_until_its_old_partition_drains_past_the_barrier() {
        let (mut publisher, router) = strict_router();
        let key = key_with_home(&router, 1, 4);
        publish_offsets(&mut publisher, &router, &[true; 4], &[(0, 10); 4]);
        assert_eq!(
            router.route_in_order("t", &key),
            KeyStep::Go(Decision {
                partition: Some(1),
                route: Route::Home
            })
        );
        // Home turns unhealthy with 100 messages waiting: the key waits. The barrier is the
        // next snapshot's watermark (105); committed 104 is not enough, 105 is.
        let sick = [true, false, true, true];
        for committed in [None, Some(50), Some(104), Some(105)] {
            let home = committed.map_or((0, 100), |c| (c, 105));
            publish_offsets(
                &mut publisher,
                &router,
                &sick,
                &[(10, 10), home, (10, 10), (10, 10)],
            );
            if committed != Some(105) {
                assert_eq!(
                    router.route_in_order("t", &key),
                    KeyStep::Wait { partition: 1 }
                );
            }
        }
        let KeyStep::Go(moved) = router.route_in_order("t", &key) else {
            panic!("the key still waits");
        };
        assert_eq!(moved.route, Route::Moved);
        let detour = moved.partition.unwrap();
        assert_ne!(detour, 1);
        // Keys whose home stayed healthy never wait.
        let other = key_with_home(&router, 2, 4);
        assert!(
            matches!(router.route_in_order("t", &other), KeyStep::Go(d) if d.partition == Some(2))
        );
        // Home recovers: the key goes back only once its detour drained past its barrier.
        let mut offsets = [(10, 10), (105, 105), (10, 10), (10, 10)];
        offsets[detour as usize] = (10, 30);
        publish_offsets(&mut publisher, &router, &[true; 4], &offsets);
        assert_eq!(
            router.route_in_order("t", &key),
            KeyStep::Wait { partition: detour }
        );
        offsets[detour as usize] = (30, 31);
        publish_offsets(&mut publisher, &router, &[true; 4], &offsets);
        assert_eq!(
            router.route_in_order("t", &key),
            KeyStep::Wait { partition: detour }
        );
        offsets[detour as usize] = (31, 31);
        publish_offsets(&mut publisher, &router, &[true; 4], &offsets);
        assert_eq!(
            router.route_in_order("t", &key),
            KeyStep::Go(Decision {
                partition: Some(1),
                route: Route::Home
            })
        );
    }

    #[test]
    fn a_pinned_key_stays_on_its_old_partition_until_it_drains() {
        let (mut publisher, router) = strict_router();
        let key = key_with_home(&router, 0, 2);
        publish_offsets(&mut publisher, &router, &[true, true], &[(0, 0), (0, 0)]);
        publish_offsets(&mut publisher, &router, &[false, true], &[(0, 50), (0, 0)]);
        assert_eq!(
            router.route_in_order("t", &key),
            KeyStep::Wait { partition: 0 }
        );
        assert_eq!(router.pin("t", &key, 0).route, Route::Pinned);
        // The pinned send is in the next watermark (51).
        publish_offsets(&mut publisher, &router, &[false, true], &[(50, 51), (0, 0)]);
        let pinned = KeyStep::Go(Decision {
            partition: Some(0),
            route: Route::Pinned,
        });
        assert_eq!(router.route_in_order("t", &key), pinned);
        assert_eq!(router.key_order_counts().0, 1);
        // That send (made under the health read just before) is covered only by the second
        // collection after that health: not yet.
        publish_offsets(&mut publisher, &router, &[false, true], &[(51, 52), (0, 0)]);
        assert_eq!(router.route_in_order("t", &key), pinned);
        publish_offsets(&mut publisher, &router, &[false, true], &[(52, 53), (0, 0)]);
        publish_offsets(&mut publisher, &router, &[false, true], &[(53, 53), (0, 0)]);
        assert_eq!(
            router.route_in_order("t", &key),
            KeyStep::Go(Decision {
                partition: Some(1),
                route: Route::Moved
            })
        );
        assert_eq!(router.key_order_counts().0, 0);
    }

    /// Review finding: a pinned key whose home became routable again was made to wait for a
    /// detour it never used (and, on a bound, pinned there, ahead of its messages at home).
    #[test]
    fn a_pinned_key_goes_home_at_once_when_home_recovers() {
        let (mut publisher, router) = strict_router();
        let key = key_with_home(&router, 0, 3);
        let healthy = [true; 3];
        let sick = [false, true, true];
        publish_offsets(&mut publisher, &router, &healthy, &[(0, 0); 3]);
        publish_offsets(&mut publisher, &router, &sick, &[(0, 50), (0, 10), (0, 10)]);
        assert_eq!(
            router.route_in_order("t", &key),
            KeyStep::Wait { partition: 0 }
        );
        router.pin("t", &key, 0);
        // The move's barrier (52) passes; the pinned sends (53) have not.
        publish_offsets(
            &mut publisher,
            &router,
            &sick,
            &[(50, 52), (0, 10), (0, 10)],
        );
        publish_offsets(
            &mut publisher,
            &router,
            &sick,
            &[(52, 53), (0, 10), (0, 10)],
        );
        assert_eq!(router.key_order_counts().0, 1);
        // Home recovers; the detours (never committed past) must drain before their keys go
        // home, but this key never left home.
        publish_offsets(
            &mut publisher,
            &router,
            &healthy,
            &[(52, 53), (0, 10), (0, 10)],
        );
        assert_eq!(
            router.route_in_order("t", &key),
            KeyStep::Go(Decision {
                partition: Some(0),
                route: Route::Home
            })
        );
        assert_eq!(router.key_order_counts().0, 0);
    }

    #[test]
    fn strict_keys_keep_their_partition_while_health_is_stale() {
        let (mut publisher, router) = strict_router();
        let key = key_with_home(&router, 0, 2);
        publish_offsets(&mut publisher, &router, &[false, true], &[(0, 0), (0, 0)]);
        publish_offsets(&mut publisher, &router, &[false, true], &[(0, 0), (0, 0)]);
        let stale = router.feed().load().topic("t").unwrap().to_stale();
        publisher.publish(HealthSnapshot::new([Arc::new(stale)]));
        router.observe_health();
        assert_eq!(
            router.route_in_order("t", &key),
            KeyStep::Go(Decision {
                partition: Some(1),
                route: Route::Fallback(Fallback::Stale)
            })
        );
    }
}
