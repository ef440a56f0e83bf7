//! One lag collector per fleet: a lease in Redis elects the instance that talks to Kafka; it
//! publishes each round's exact lags, and the others read them.

mod lease;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::Value;
use ksp_core::{
    CollectError, HotPartitionCalculator, LagCollector, LagRequest, TopicHealth, TopicLag,
};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};
use xxhash_rust::xxh3::xxh3_64;

use crate::client::RedisClient;
use crate::error::{L2Error, L2Result};
use crate::wire::{Publication, SnapshotPayload};

/// Publishes a snapshot only while this instance holds the lease (a deposed leader that wakes
/// up from a pause cannot overwrite its successor's newer snapshot), stamps it with Redis's own
/// clock, and announces it, all in one step.
///
/// KEYS[1] = lease, KEYS[2] = snapshot; ARGV = instance id, payload, TTL ms, term, sequence,
/// channel, announcement. Returns 1 when published, 0 when the lease is someone else's.
const PUBLISH: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[2], 'payload', ARGV[2], 'at', now, 'term', ARGV[4], 'seq', ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
";

/// Reads the snapshot, how long ago it was published (both by Redis's clock), and who holds
/// the lease now.
///
/// KEYS[1] = snapshot, KEYS[2] = lease. Returns {payload, published at (ms), now (s),
/// now (µs), lease holder}, false for what is missing.
const READ: &str = r"
local v = redis.call('HMGET', KEYS[1], 'payload', 'at')
local t = redis.call('TIME')
return {v[1], v[2], t[1], t[2], redis.call('GET', KEYS[2])}
";

/// The wall clock an instance stamps its collections and publications with.
pub type WallClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// A [`LagCollector`] shared by a fleet of producers through Redis.
///
/// Wraps the collector each instance would otherwise use on its own (normally
/// `KafkaLagCollector`). Instances of the same Kafka cluster and consumer group elect one
/// *leader* with a lease (`SET NX PX`, renewed every third of `lease_ttl`); each new leader
/// opens a new *term*:
///
/// * the leader collects from Kafka and publishes the exact lags (see `docs/redis.md`), but only
///   while it holds the lease: the publication checks the lease and writes in one script, so a
///   leader that lost its lease during a pause cannot overwrite its successor;
/// * the followers read that snapshot instead of asking Kafka, and never go back to one that is
///   older (by term and sequence) than one they already used. The announcement lets them
///   refresh at once (see [`FleetCollector::peer_updates`]); their own refresh tick is the
///   polling fallback.
///
/// Freshness never compares two machines' clocks: Redis stamps each publication with its own
/// clock and tells the reader how long ago that was, and the publisher says how old its offsets
/// were then, by its own clock. A follower whose clock is seconds off reads the fleet's
/// snapshot like any other.
///
/// A follower collects by itself whatever the shared snapshot cannot give it: topics the
/// leader does not watch, a snapshot older than `follower_max_age` (the leader died or
/// stalls), a payload that fails its checks (logged as a warning, never applied), or any
/// Redis failure (the breaker then keeps Redis out of the way). So without Redis every
/// instance behaves exactly as it would without L2.
pub struct FleetCollector {
    shared: Arc<Shared>,
    _lease: AbortOnDropHandle<()>,
    _listener: AbortOnDropHandle<()>,
}

/// The fleet's keys, all with the same hash tag (one Redis Cluster slot, so one script can
/// touch them together).
struct Keys {
    lease: String,
    term: String,
    snapshot: String,
    channel: String,
}

struct Shared {
    inner: Arc<dyn LagCollector>,
    client: RedisClient,
    calculator: Option<Arc<dyn HotPartitionCalculator>>,
    id: String,
    group: String,
    keys: Keys,
    follower_max_age: Duration,
    clock: WallClock,
    leader: AtomicBool,
    /// This instance's term while it leads, and its publications in that term.
    term: AtomicU64,
    sequence: AtomicU64,
    /// The newest snapshot this instance used as a follower: never go back before it.
    applied: Mutex<(u64, u64)>,
    /// When each topic of the snapshot last adopted was read, as first worked out: the same
    /// snapshot adopted again reads the same (a read time recomputed from a new round trip
    /// would make it look like a new collection).
    adopted: Mutex<((u64, u64), HashMap<String, SystemTime>)>,
    /// Bumped when a peer published, or this instance became the leader.
    updates: watch::Sender<u64>,
    /// Wakes the lease task (the leader resigned).
    wake: Notify,
    cancel: CancellationToken,
    last_rejected: Mutex<Option<u64>>,
    /// Refreshes in a row that adopted the fleet's snapshot without collecting here.
    adopted_in_a_row: AtomicU32,
    stats: Counters,
}

/// After this many refreshes in a row that adopted the fleet's snapshot, a follower tells its
/// collector it is idle: a lag reader kept for good by every instance that ever led would hold
/// a librdkafka client (a thread per broker, its connections) on each. Not at once, so that a
/// follower falling back to collecting now and then does not reopen a client every time.
const IDLE_AFTER_ADOPTIONS: u32 = 30;

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    fenced: AtomicU64,
    adopted: AtomicU64,
    collected_locally: AtomicU64,
    rejected_payloads: AtomicU64,
    older_ignored: AtomicU64,
    became_leader: AtomicU64,
}

/// What a [`FleetCollector`] has done so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FleetStats {
    /// This instance's id in the lease and in published snapshots.
    pub instance: String,
    /// Whether this instance holds the lease now.
    pub is_leader: bool,
    /// Its current (or last) leadership term.
    pub term: u64,
    /// Snapshots this instance published.
    pub published: u64,
    /// Publications refused because another instance held the lease by then.
    pub fenced: u64,
    /// Refreshes answered from a peer's snapshot.
    pub adopted: u64,
    /// Refreshes (or parts of refreshes) this instance collected by itself.
    pub collected_locally: u64,
    /// Payloads refused (corrupt, truncated, other version, other group).
    pub rejected_payloads: u64,
    /// Snapshots older than one already used, ignored.
    pub older_ignored: u64,
    /// How many times this instance became the leader.
    pub became_leader: u64,
}

/// Builds a [`FleetCollector`].
#[must_use]
pub struct FleetCollectorBuilder {
    client: RedisClient,
    inner: Arc<dyn LagCollector>,
    group: String,
    cluster: String,
    calculator: Option<Arc<dyn HotPartitionCalculator>>,
    follower_max_age: Duration,
    clock: WallClock,
    instance: String,
}

impl FleetCollector {
    /// A fleet collector for consumer group `group`, collecting with `inner` when it leads.
    pub fn builder(
        client: RedisClient,
        inner: Arc<dyn LagCollector>,
        group: impl Into<String>,
    ) -> FleetCollectorBuilder {
        FleetCollectorBuilder {
            cluster: client.config().cluster.clone(),
            client,
            inner,
            group: group.into(),
            calculator: None,
            follower_max_age: Duration::from_secs(15),
            clock: Arc::new(SystemTime::now),
            instance: instance_id(),
        }
    }

    /// Whether this instance holds the lease.
    pub fn is_leader(&self) -> bool {
        self.shared.leader.load(Ordering::Acquire)
    }

    /// Changes whenever a peer published a snapshot or this instance became the leader: a
    /// monitor that refreshes on it picks up the fleet's health without waiting for its tick.
    pub fn peer_updates(&self) -> watch::Receiver<u64> {
        self.shared.updates.subscribe()
    }

    /// Counters.
    pub fn stats(&self) -> FleetStats {
        let s = &self.shared.stats;
        FleetStats {
            instance: self.shared.id.clone(),
            is_leader: self.is_leader(),
            term: self.shared.term.load(Ordering::Acquire),
            published: s.published.load(Ordering::Relaxed),
            fenced: s.fenced.load(Ordering::Relaxed),
            adopted: s.adopted.load(Ordering::Relaxed),
            collected_locally: s.collected_locally.load(Ordering::Relaxed),
            rejected_payloads: s.rejected_payloads.load(Ordering::Relaxed),
            older_ignored: s.older_ignored.load(Ordering::Relaxed),
            became_leader: s.became_leader.load(Ordering::Relaxed),
        }
    }

    /// The Redis key of the shared snapshot (a hash: `payload`, `at`, `term`, `seq`).
    pub fn snapshot_key(&self) -> &str {
        &self.shared.keys.snapshot
    }

    /// The Redis key of the lease.
    pub fn lease_key(&self) -> &str {
        &self.shared.keys.lease
    }

    /// Stops taking part: releases the lease if held (announcing it, so a follower takes over
    /// at once instead of after the lease expires) and stops the background tasks.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the background tasks stop when this is first polled; dropping the future
    /// may leave the lease to expire on its own instead of being released.
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        if self.shared.leader.swap(false, Ordering::AcqRel) {
            metrics::gauge!("ksp_fleet_leader").decrement(1.0);
            let s = &self.shared;
            let (keys, args) = (vec![s.keys.lease.clone()], vec![s.id.clone()]);
            let released = s
                .client
                .call(|c| async move { c.eval::<i64, _, _, _>(lease::RELEASE, keys, args).await })
                .await;
            if matches!(released, Ok(1)) {
                let (channel, message) = (s.keys.channel.clone(), format!("resign {}", s.id));
                let _ = s
                    .client
                    .call(|c| async move { c.publish::<i64, _, _>(channel, message).await })
                    .await;
                info!(instance = %s.id, "released the fleet's collector lease");
            }
        }
    }
}

impl fmt::Debug for FleetCollectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetCollectorBuilder")
            .field("group", &self.group)
            .field("cluster", &self.cluster)
            .field("inner", &self.inner.name())
            .field("follower_max_age", &self.follower_max_age)
            .finish_non_exhaustive()
    }
}

impl FleetCollectorBuilder {
    /// Names the Kafka cluster in the fleet's keys (default: the Redis config's `cluster`,
    /// else what [`cluster_name`] derives from `bootstrap.servers`).
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = cluster.into();
        self
    }

    /// Scores published beside the lags, for readers that want them (informational).
    pub fn calculator(mut self, calculator: impl HotPartitionCalculator) -> Self {
        self.calculator = Some(Arc::new(calculator));
        self
    }

    /// The oldest shared snapshot a follower uses; older, it collects by itself. Set it to
    /// a few refresh intervals.
    pub fn follower_max_age(mut self, age: Duration) -> Self {
        self.follower_max_age = age;
        self
    }

    /// This instance's name in the lease and in announcements. Default: a fresh
    /// [`instance_id`].
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    /// The wall clock this instance stamps with. Default `SystemTime::now`; tests give an
    /// instance a clock that is off, as a real machine's can be.
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Starts the lease and listener tasks. Needs a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`L2Error::NoRuntime`](crate::L2Error::NoRuntime) outside a Tokio runtime; the
    /// listener's errors.
    pub fn spawn(self) -> L2Result<FleetCollector> {
        crate::client::in_runtime()?;
        // The series exist from the start (nothing published or adopted). The leader gauge
        // counts the instances of the process that lead: each adds 1 while it leads.
        metrics::gauge!("ksp_fleet_leader").increment(0.0);
        for source in ["published", "adopted", "rejected"] {
            metrics::counter!("ksp_fleet_snapshots_total", "source" => source).increment(0);
        }
        let cluster = if self.cluster.is_empty() {
            "default".to_owned()
        } else {
            self.cluster
        };
        let tag = format!("{{{cluster}:{}}}", self.group);
        let key = |suffix: &str| self.client.key(&["v2", "fleet", tag.as_str(), suffix]);
        let keys = Keys {
            lease: key("lease"),
            term: key("term"),
            snapshot: key("snapshot"),
            channel: key("published"),
        };
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            keys,
            inner: self.inner,
            calculator: self.calculator,
            id: self.instance,
            group: self.group,
            follower_max_age: self.follower_max_age,
            clock: self.clock,
            leader: AtomicBool::new(false),
            term: AtomicU64::new(0),
            sequence: AtomicU64::new(0),
            applied: Mutex::new((0, 0)),
            adopted: Mutex::default(),
            updates: watch::Sender::new(0),
            wake: Notify::new(),
            cancel: cancel.clone(),
            last_rejected: Mutex::new(None),
            adopted_in_a_row: AtomicU32::new(0),
            stats: Counters::default(),
            client: self.client,
        });
        let listener = {
            let weak = Arc::downgrade(&shared);
            crate::listener::listen(
                &shared.client,
                shared.keys.channel.clone(),
                cancel,
                move |text| {
                    if let Some(shared) = weak.upgrade() {
                        shared.on_announcement(text);
                    }
                },
            )?
        };
        let lease = AbortOnDropHandle::new(tokio::spawn(shared.clone().hold_lease()));
        Ok(FleetCollector {
            shared,
            _lease: lease,
            _listener: listener,
        })
    }
}

/// A name for a Kafka cluster from its `bootstrap.servers`: the sorted host list, so that
/// instances listing the same brokers in another order agree.
pub fn cluster_name(bootstrap_servers: &str) -> String {
    let mut hosts: Vec<&str> = bootstrap_servers
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    format!("{:016x}", xxh3_64(hosts.join(",").as_bytes()))
}

/// A name for this producer instance in the fleet's keys and announcements:
/// `{pid}-{16 hex digits}`, the digits from the operating system's randomness (as std seeds
/// its hash maps), so two processes with the same pid (containers) still differ.
pub fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = std::hash::RandomState::new().build_hasher().finish();
    format!("{}-{random:016x}", std::process::id())
}

/// A snapshot read from Redis, how long ago it was published (by Redis's clock), and whether
/// its publisher holds the lease now.
struct Read {
    payload: SnapshotPayload,
    since_published: Duration,
    from_leader: bool,
}

impl Shared {
    fn on_announcement(&self, text: &str) {
        if let Some(who) = text.strip_prefix("resign ") {
            if who != self.id {
                self.wake.notify_one();
            }
        } else if text.split(' ').next() != Some(self.id.as_str())
            && !self.leader.load(Ordering::Acquire)
        {
            self.updates.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Publishes `lags` if this instance still holds the lease; `false` when it does not.
    async fn publish(&self, lags: &[TopicLag]) -> L2Result<bool> {
        let calculator = self.calculator.clone();
        let score = move |lag: &TopicLag| -> Option<TopicHealth> {
            let calculator = calculator.as_ref()?;
            // Scores are informational: a calculator that panics on one topic leaves that
            // topic without them, and the fleet still gets the lags.
            let health = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                calculator.calculate(lag)
            }))
            .ok()?;
            Some(TopicHealth::new(&lag.topic, lag.collected_at, health))
        };
        let term = self.term.load(Ordering::Acquire);
        let sequence = self.sequence.fetch_add(1, Ordering::AcqRel) + 1;
        let publication = Publication {
            group: &self.group,
            publisher: &self.id,
            term,
            sequence,
            now: (self.clock)(),
        };
        let payload = SnapshotPayload::new(publication, lags, &score);
        let ttl = u64::try_from(self.client.config().snapshot_ttl.as_millis()).unwrap_or(u64::MAX);
        let keys = vec![self.keys.lease.clone(), self.keys.snapshot.clone()];
        let args = vec![
            self.id.clone(),
            payload.encode(),
            ttl.to_string(),
            term.to_string(),
            sequence.to_string(),
            self.keys.channel.clone(),
            format!("{} {term} {sequence}", self.id),
        ];
        let published: i64 = self
            .client
            .call(|c| async move { c.eval(PUBLISH, keys, args).await })
            .await?;
        if published != 1 {
            return Ok(false);
        }
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ksp_fleet_snapshots_total", "source" => "published").increment(1);
        Ok(true)
    }

    /// The shared snapshot; the read gives up after `within` at most.
    async fn read(&self, within: Duration) -> L2Result<Option<Read>> {
        let keys = vec![self.keys.snapshot.clone(), self.keys.lease.clone()];
        let reply: Vec<Value> = self
            .client
            .call_within(within, |c| async move {
                c.eval(READ, keys, Vec::<String>::new()).await
            })
            .await?;
        let [payload, at, secs, micros, holder] = <[Value; 5]>::try_from(reply).map_err(|v| {
            L2Error::Unexpected(format!("snapshot read returned {} values", v.len()))
        })?;
        let holder = holder.as_string();
        let Some(bytes) = payload.as_bytes().map(<[u8]>::to_vec) else {
            return Ok(None);
        };
        let (Some(at), Some(secs), Some(micros)) = (at.as_u64(), secs.as_u64(), micros.as_u64())
        else {
            return Err(L2Error::Unexpected(
                "snapshot without a publication time".into(),
            ));
        };
        let now_ms = secs.saturating_mul(1000) + micros / 1000;
        let since_published = Duration::from_millis(now_ms.saturating_sub(at));
        match SnapshotPayload::decode(&bytes, &self.group) {
            Ok(payload) => Ok(Some(Read {
                from_leader: holder.as_deref() == Some(payload.publisher.as_str()),
                payload,
                since_published,
            })),
            Err(e) => {
                self.stats.rejected_payloads.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ksp_fleet_snapshots_total", "source" => "rejected").increment(1);
                let fingerprint = xxh3_64(&bytes);
                let mut last = self
                    .last_rejected
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                // One warning per distinct bad payload, not one per refresh.
                if last.replace(fingerprint) != Some(fingerprint) {
                    warn!(key = %self.keys.snapshot, error = %e, bytes = bytes.len(), "ignoring the shared health snapshot in redis");
                } else {
                    debug!(key = %self.keys.snapshot, error = %e, "shared health snapshot still refused");
                }
                Err(L2Error::Unexpected(e.to_string()))
            }
        }
    }

    async fn collect_locally(
        &self,
        request: &LagRequest<'_>,
        topics: &[String],
    ) -> Result<Vec<TopicLag>, CollectError> {
        self.stats.collected_locally.fetch_add(1, Ordering::Relaxed);
        self.adopted_in_a_row.store(0, Ordering::Relaxed);
        let request = LagRequest::new(request.group, topics, request.budget);
        self.inner.collect(&request).await
    }

    /// Gives the topics of a snapshot adopted before the read times they were given then.
    fn same_read_times(&self, order: (u64, u64), lags: &mut [TopicLag]) {
        let mut adopted = self.adopted.lock().unwrap_or_else(PoisonError::into_inner);
        if adopted.0 != order {
            *adopted = (order, HashMap::new());
        }
        for lag in lags {
            let first = *adopted
                .1
                .entry(lag.topic.clone())
                .or_insert(lag.collected_at);
            lag.collected_at = first;
        }
    }

    /// The fleet's snapshot if it is usable: fresh, and not older than one already used.
    fn usable(&self, read: &Read) -> bool {
        let fresh = read
            .payload
            .oldest(read.since_published)
            .is_some_and(|age| age <= self.follower_max_age);
        if !fresh {
            debug!(since_published = ?read.since_published, "shared health snapshot is too old; collecting locally");
            return false;
        }
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        // The current lease holder's snapshot is always good: if the term counter went back
        // (a Redis restart without persistence, a failover that lost writes), ordering by it
        // would refuse the fleet's snapshots for good.
        if read.payload.order() < *applied && !read.from_leader {
            self.stats.older_ignored.fetch_add(1, Ordering::Relaxed);
            warn!(
                found = ?read.payload.order(),
                used = ?*applied,
                "the shared health snapshot is older than one already used; ignored",
            );
            return false;
        }
        *applied = read.payload.order();
        true
    }
}

#[async_trait]
impl LagCollector for FleetCollector {
    async fn collect(&self, request: &LagRequest<'_>) -> Result<Vec<TopicLag>, CollectError> {
        let s = &self.shared;
        if s.leader.load(Ordering::Acquire) {
            let lags = s.collect_locally(request, request.topics).await?;
            match s.publish(&lags).await {
                Ok(true) => {}
                Ok(false) => {
                    // The lease went to another instance (this one was paused, say): its
                    // snapshot stands; ours is used here only.
                    s.stats.fenced.fetch_add(1, Ordering::Relaxed);
                    s.step_down("another instance took the lease; its snapshot stands");
                }
                Err(e) => debug!(error = %e, "could not publish the fleet's health snapshot"),
            }
            return Ok(lags);
        }
        // Leave time to collect from Kafka if Redis does not answer in a third of the budget.
        let read = match s.read(request.budget / 3).await {
            Ok(Some(read)) => read,
            Ok(None) => {
                debug!("no shared health snapshot yet; collecting locally");
                return s.collect_locally(request, request.topics).await;
            }
            Err(e) => {
                debug!(error = %e, "shared health unavailable; collecting locally");
                return s.collect_locally(request, request.topics).await;
            }
        };
        if !s.usable(&read) {
            return s.collect_locally(request, request.topics).await;
        }
        let mut lags = read
            .payload
            .lags(request.topics, read.since_published, (s.clock)());
        s.same_read_times(read.payload.order(), &mut lags);
        let have: HashSet<&str> = lags.iter().map(|l| l.topic.as_str()).collect();
        let missing: Vec<String> = request
            .topics
            .iter()
            .filter(|t| !have.contains(t.as_str()))
            .cloned()
            .collect();
        s.stats.adopted.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ksp_fleet_snapshots_total", "source" => "adopted").increment(1);
        // Once per run of adoptions (the count stops at the threshold), and not if this
        // instance took the lease while it read.
        if missing.is_empty()
            && s.adopted_in_a_row
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < IDLE_AFTER_ADOPTIONS).then_some(n + 1)
                })
                == Ok(IDLE_AFTER_ADOPTIONS - 1)
            && !s.leader.load(Ordering::Acquire)
        {
            s.inner.idle(&s.group);
        }
        if !missing.is_empty() {
            // Topics the leader does not watch: ours to collect. If that fails, the fleet's
            // topics are still good.
            match s.collect_locally(request, &missing).await {
                Ok(local) => lags.extend(local),
                Err(error) => warn!(
                    topics = ?missing,
                    %error,
                    "topics the fleet's leader does not watch could not be collected here",
                ),
            }
        }
        Ok(lags)
    }

    fn name(&self) -> &str {
        "redis-fleet"
    }

    fn idle(&self, group: &str) {
        self.shared.inner.idle(group);
    }
}

impl fmt::Debug for FleetCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetCollector")
            .field("stats", &self.stats())
            .field("lease_key", &self.shared.keys.lease)
            .field("inner", &self.shared.inner.name())
            .finish_non_exhaustive()
    }
}

impl Drop for FleetCollector {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        // The lease expires on its own; this process no longer leads.
        if self.shared.leader.swap(false, Ordering::AcqRel) {
            metrics::gauge!("ksp_fleet_leader").decrement(1.0);
        }
    }
}
