//! One lag collector per fleet: a lease in Redis elects the instance that talks to Kafka; it
//! publishes each round's exact lags, and the others read them.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
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
use crate::wire::SnapshotPayload;

/// Renews the lease only if this instance still holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Releases the lease only if this instance holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A [`LagCollector`] shared by a fleet of producers through Redis.
///
/// Wraps the collector each instance would otherwise use on its own (normally
/// `KafkaLagCollector`). Instances of the same Kafka cluster and consumer group elect one
/// *leader* with a lease (`SET NX PX`, renewed every third of `lease_ttl`):
///
/// * the leader collects from Kafka and publishes the exact lags (see `docs/redis.md`) to
///   `{prefix}:v1:fleet:{cluster}:{group}:snapshot`, then announces it on the channel
///   `{prefix}:v1:fleet:{cluster}:{group}:published`;
/// * the followers read that snapshot instead of asking Kafka. The announcement lets them
///   refresh at once (see [`FleetCollector::peer_updates`]); their own refresh tick is the
///   polling fallback.
///
/// A follower collects by itself whatever the shared snapshot cannot give it: topics the
/// leader does not watch, a snapshot older than `follower_max_age` (the leader died or
/// stalls), a payload that fails its checks (logged as a warning, never applied), or any
/// Redis failure (the breaker then keeps Redis out of the way). So without Redis every
/// instance behaves exactly as it would without L2.
pub struct FleetCollector {
    shared: Arc<Shared>,
    _lease: AbortOnDropHandle<()>,
    _subscriber: AbortOnDropHandle<()>,
}

struct Shared {
    inner: Arc<dyn LagCollector>,
    client: RedisClient,
    calculator: Option<Arc<dyn HotPartitionCalculator>>,
    id: String,
    group: String,
    lease_key: String,
    snapshot_key: String,
    channel: String,
    follower_max_age: Duration,
    leader: AtomicBool,
    /// Bumped when a peer published, or this instance became the leader.
    updates: watch::Sender<u64>,
    /// Wakes the lease task (the leader resigned).
    wake: Notify,
    cancel: CancellationToken,
    last_rejected: Mutex<Option<u64>>,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    adopted: AtomicU64,
    collected_locally: AtomicU64,
    rejected_payloads: AtomicU64,
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
    /// Snapshots this instance published.
    pub published: u64,
    /// Refreshes answered from a peer's snapshot.
    pub adopted: u64,
    /// Refreshes (or parts of refreshes) this instance collected by itself.
    pub collected_locally: u64,
    /// Payloads refused (corrupt, truncated, other version, other group).
    pub rejected_payloads: u64,
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
            published: s.published.load(Ordering::Relaxed),
            adopted: s.adopted.load(Ordering::Relaxed),
            collected_locally: s.collected_locally.load(Ordering::Relaxed),
            rejected_payloads: s.rejected_payloads.load(Ordering::Relaxed),
            became_leader: s.became_leader.load(Ordering::Relaxed),
        }
    }

    /// The Redis key of the shared snapshot.
    pub fn snapshot_key(&self) -> &str {
        &self.shared.snapshot_key
    }

    /// The Redis key of the lease.
    pub fn lease_key(&self) -> &str {
        &self.shared.lease_key
    }

    /// Stops taking part: releases the lease if held (announcing it, so a follower takes over
    /// at once instead of after the lease expires) and stops the background tasks.
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        if self.shared.leader.swap(false, Ordering::AcqRel) {
            let s = &self.shared;
            let (key, id) = (s.lease_key.clone(), s.id.clone());
            let released = s
                .client
                .call(|c| async move { c.eval::<i64, _, _, _>(RELEASE, key, vec![id]).await })
                .await;
            if matches!(released, Ok(1)) {
                let (channel, message) = (s.channel.clone(), format!("resign {}", s.id));
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
    pub fn calculator(mut self, calculator: Arc<dyn HotPartitionCalculator>) -> Self {
        self.calculator = Some(calculator);
        self
    }

    /// The oldest shared snapshot a follower uses; older, it collects by itself. Set it to
    /// a few refresh intervals.
    pub fn follower_max_age(mut self, age: Duration) -> Self {
        self.follower_max_age = age;
        self
    }

    /// Starts the lease and subscriber tasks. Needs a Tokio runtime.
    pub fn spawn(self) -> L2Result<FleetCollector> {
        let cluster = if self.cluster.is_empty() {
            "default".to_owned()
        } else {
            self.cluster
        };
        let base = ["v1", "fleet", cluster.as_str(), self.group.as_str()];
        let key = |suffix: &str| {
            let mut parts = base.to_vec();
            parts.push(suffix);
            self.client.key(&parts)
        };
        let subscriber = self.client.subscriber()?;
        let shared = Arc::new(Shared {
            lease_key: key("lease"),
            snapshot_key: key("snapshot"),
            channel: key("published"),
            inner: self.inner,
            calculator: self.calculator,
            id: instance_id(),
            group: self.group,
            follower_max_age: self.follower_max_age,
            leader: AtomicBool::new(false),
            updates: watch::Sender::new(0),
            wake: Notify::new(),
            cancel: CancellationToken::new(),
            last_rejected: Mutex::new(None),
            stats: Counters::default(),
            client: self.client,
        });
        let lease = AbortOnDropHandle::new(tokio::spawn(shared.clone().hold_lease()));
        let subscriber = AbortOnDropHandle::new(tokio::spawn(shared.clone().listen(subscriber)));
        Ok(FleetCollector {
            shared,
            _lease: lease,
            _subscriber: subscriber,
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

fn instance_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let salt = xxh3_64(format!("{nanos}{:p}", &nanos).as_bytes());
    format!("{}-{:08x}", std::process::id(), salt as u32)
}

impl Shared {
    /// Holds or seeks the lease until cancelled.
    async fn hold_lease(self: Arc<Self>) {
        let ttl = self.client.config().lease_ttl;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut last_renewed: Option<Instant> = None;
        loop {
            if self.leader.load(Ordering::Acquire) {
                let (key, id) = (self.lease_key.clone(), self.id.clone());
                let renewed = self
                    .client
                    .call(|c| async move {
                        c.eval::<i64, _, _, _>(RENEW, key, vec![id, ttl_ms.to_string()])
                            .await
                    })
                    .await;
                match renewed {
                    Ok(1) => last_renewed = Some(Instant::now()),
                    Ok(_) => self.step_down("another instance holds the lease"),
                    Err(e) => {
                        // Without renewal the lease expires at the latest `ttl` after the
                        // last success; stop acting as leader by then.
                        if last_renewed.is_none_or(|t| t.elapsed() >= ttl) {
                            self.step_down(&format!("could not renew the lease: {e}"));
                        }
                    }
                }
            } else {
                let (key, id) = (self.lease_key.clone(), self.id.clone());
                let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
                let acquired = self
                    .client
                    .call(|c| async move {
                        c.set::<Option<String>, _, _>(
                            key,
                            id,
                            Some(Expiration::PX(ttl)),
                            Some(SetOptions::NX),
                            false,
                        )
                        .await
                    })
                    .await;
                if matches!(acquired, Ok(Some(_))) {
                    last_renewed = Some(Instant::now());
                    self.leader.store(true, Ordering::Release);
                    self.stats.became_leader.fetch_add(1, Ordering::Relaxed);
                    metrics::gauge!("ksp_fleet_leader").set(1.0);
                    info!(instance = %self.id, lease = %self.lease_key, "this instance now collects lag for the fleet");
                    self.updates.send_modify(|v| *v = v.wrapping_add(1));
                }
            }
            // The leader renews three times per TTL; followers try ten times per TTL, so a
            // dead leader is replaced at most a tenth of a TTL after its lease expires.
            let pause = if self.leader.load(Ordering::Acquire) {
                ttl / 3
            } else {
                ttl / 10
            };
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    fn step_down(&self, why: &str) {
        if self.leader.swap(false, Ordering::AcqRel) {
            metrics::gauge!("ksp_fleet_leader").set(0.0);
            warn!(instance = %self.id, reason = why, "no longer collecting lag for the fleet");
        }
    }

    /// Listens for announcements until cancelled.
    async fn listen(self: Arc<Self>, subscriber: fred::clients::SubscriberClient) {
        drop(subscriber.connect());
        let _resubscribe = subscriber.manage_subscriptions();
        let mut messages = subscriber.message_rx();
        // The first subscription may come before the server is reachable; retry until it
        // takes (afterwards fred re-subscribes on every reconnect).
        let channel = self.channel.clone();
        let subscribe = {
            let subscriber = subscriber.clone();
            let cancel = self.cancel.clone();
            async move {
                for attempt in 0u32.. {
                    if cancel.is_cancelled() {
                        return;
                    }
                    match tokio::time::timeout(
                        Duration::from_secs(2),
                        subscriber.subscribe(channel.clone()),
                    )
                    .await
                    {
                        Ok(Ok(())) => return,
                        _ => {
                            let wait = Duration::from_millis(100 << attempt.min(5));
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            }
        };
        let subscribing = tokio::spawn(subscribe);
        let _subscribing = AbortOnDropHandle::new(subscribing);
        loop {
            let message = tokio::select! {
                () = self.cancel.cancelled() => break,
                m = messages.recv() => m,
            };
            let Ok(message) = message else {
                // Lagged behind the broadcast channel or closed: the poll still covers us.
                continue;
            };
            let Some(text) = message.value.as_str() else {
                continue;
            };
            if let Some(who) = text.strip_prefix("resign ") {
                if who != self.id {
                    self.wake.notify_one();
                }
            } else if !text.starts_with(&self.id) && !self.leader.load(Ordering::Acquire) {
                self.updates.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
        let _ = subscriber.quit().await;
    }

    async fn publish(&self, lags: &[TopicLag]) -> L2Result<()> {
        let calculator = self.calculator.clone();
        let score = move |lag: &TopicLag| -> Option<TopicHealth> {
            let calculator = calculator.as_ref()?;
            let health = calculator.calculate(lag);
            Some(TopicHealth::new(&lag.topic, lag.collected_at, health))
        };
        let payload = SnapshotPayload::new(&self.group, &self.id, lags, &score);
        let text = payload.encode();
        let key = self.snapshot_key.clone();
        let ttl = i64::try_from(self.client.config().snapshot_ttl.as_millis()).unwrap_or(i64::MAX);
        self.client
            .call(|c| async move {
                c.set::<(), _, _>(key, text, Some(Expiration::PX(ttl)), None, false)
                    .await
            })
            .await?;
        let (channel, message) = (
            self.channel.clone(),
            format!("{} {}", self.id, payload.published_at_ms),
        );
        self.client
            .call(|c| async move { c.publish::<i64, _, _>(channel, message).await })
            .await?;
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ksp_fleet_snapshots_total", "source" => "published").increment(1);
        Ok(())
    }

    async fn read(&self) -> L2Result<Option<SnapshotPayload>> {
        let key = self.snapshot_key.clone();
        let bytes: Option<Vec<u8>> = self
            .client
            .call(|c| async move { c.get(key).await })
            .await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        match SnapshotPayload::decode(&bytes, &self.group) {
            Ok(payload) => Ok(Some(payload)),
            Err(e) => {
                self.stats.rejected_payloads.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ksp_fleet_snapshots_total", "source" => "rejected").increment(1);
                let fingerprint = xxh3_64(&bytes);
                let mut last = self.last_rejected.lock().unwrap_or_else(|p| p.into_inner());
                // One warning per distinct bad payload, not one per refresh.
                if last.replace(fingerprint) != Some(fingerprint) {
                    warn!(key = %self.snapshot_key, error = %e, bytes = bytes.len(), "ignoring the shared health snapshot in redis");
                } else {
                    debug!(key = %self.snapshot_key, error = %e, "shared health snapshot still refused");
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
        let request = LagRequest::new(request.group, topics, request.budget);
        self.inner.collect(&request).await
    }
}

#[async_trait]
impl LagCollector for FleetCollector {
    async fn collect(&self, request: &LagRequest<'_>) -> Result<Vec<TopicLag>, CollectError> {
        let s = &self.shared;
        if s.leader.load(Ordering::Acquire) {
            let lags = s.collect_locally(request, request.topics).await?;
            if let Err(e) = s.publish(&lags).await {
                debug!(error = %e, "could not publish the fleet's health snapshot");
            }
            return Ok(lags);
        }
        let payload = match s.read().await {
            Ok(Some(payload)) => payload,
            Ok(None) => {
                debug!("no shared health snapshot yet; collecting locally");
                return s.collect_locally(request, request.topics).await;
            }
            Err(e) => {
                debug!(error = %e, "shared health unavailable; collecting locally");
                return s.collect_locally(request, request.topics).await;
            }
        };
        let fresh = payload
            .oldest_collection()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age <= s.follower_max_age);
        if !fresh {
            debug!("shared health snapshot is too old; collecting locally");
            return s.collect_locally(request, request.topics).await;
        }
        let mut lags = payload.lags(request.topics);
        let have: HashSet<&str> = lags.iter().map(|l| l.topic.as_str()).collect();
        let missing: Vec<String> = request
            .topics
            .iter()
            .filter(|t| !have.contains(t.as_str()))
            .cloned()
            .collect();
        s.stats.adopted.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ksp_fleet_snapshots_total", "source" => "adopted").increment(1);
        if !missing.is_empty() {
            // Topics the leader does not watch: ours to collect.
            lags.extend(s.collect_locally(request, &missing).await?);
        }
        Ok(lags)
    }

    fn name(&self) -> &str {
        "redis-fleet"
    }
}

impl fmt::Debug for FleetCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetCollector")
            .field("stats", &self.stats())
            .field("lease_key", &self.shared.lease_key)
            .field("inner", &self.shared.inner.name())
            .finish_non_exhaustive()
    }
}

impl Drop for FleetCollector {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}
