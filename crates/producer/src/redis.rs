//! The Redis L2 behind the router (cargo feature `redis`): the fleet's shared collector and
//! shared key moves, agreed without reordering a key's messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ksp_core::{HotPartitionCalculator, LagCollector};
use ksp_monitor::{MonitorConfig, MonitorHandle};
use ksp_redis::{
    BreakerState, FleetCollector, FleetStats, L2Error, RedisClient, RedisConfig, SharedMoves,
    cluster_name, instance_id,
};
use rdkafka::ClientConfig;
use serde::Serialize;
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use crate::error::BuildError;
use crate::router::{Decision, Fallback, NewDetour, Router};

/// The producer's Redis parts.
pub(crate) struct L2 {
    client: RedisClient,
    fleet: Option<Arc<FleetCollector>>,
    moves: Option<SharedMoves>,
    /// Keys whose first move is being agreed, by fingerprint: later sends of the same key wait
    /// in line behind it.
    lines: Arc<Mutex<HashMap<u64, Arc<Line>>>>,
    /// This producer's name in the fleet.
    instance: String,
    /// The Kafka cluster's name in the fleet's keys.
    cluster: String,
    counters: Counters,
    cancel: CancellationToken,
    _bridge: Option<AbortOnDropHandle<()>>,
    _moves_listener: Option<AbortOnDropHandle<()>>,
}

/// The sends of one key waiting for its first move to be agreed, first come first served.
#[derive(Default)]
struct Line {
    turn: Arc<tokio::sync::Mutex<()>>,
    /// The partition the key's sends take, once agreed.
    agreed: Mutex<Option<i32>>,
}

/// A send's place at the head of its key's line: held until the message is enqueued, so that
/// the key's later sends are enqueued after it. The last one out remembers the detour in the
/// router's cache and closes the line; until then, a new send of the key finds the line and
/// queues up instead of taking the cached detour ahead of those waiting.
pub(crate) struct Turn {
    line: Arc<Line>,
    lines: Arc<Mutex<HashMap<u64, Arc<Line>>>>,
    detour: NewDetour,
    router: Arc<Router>,
    _turn: OwnedMutexGuard<()>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the map and this turn hold the line: nobody else waits.
        if Arc::strong_count(&self.line) == 2 {
            let agreed = *self
                .line
                .agreed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(partition) = agreed {
                self.router.remember_detour(&self.detour, partition);
            }
            lines.remove(&self.detour.fingerprint());
        }
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    shared: AtomicU64,
    errors: AtomicU64,
}

/// How the producer's Redis L2 is doing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RedisStatus {
    /// The circuit breaker in front of Redis.
    pub breaker: BreakerState,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Redis commands sent and failed (refused by the breaker not included).
    pub commands: (u64, u64),
    /// The shared collector, when health is shared.
    pub fleet: Option<FleetStats>,
    /// First moves of a key answered with a detour another instance had already shared.
    pub key_move_hits: u64,
    /// First moves of a key whose detour this instance shared.
    pub key_moves_shared: u64,
    /// First moves of a key that went without L2 (Redis failed or the breaker was open).
    pub key_move_errors: u64,
}

impl L2 {
    /// Connects (in the background) and prepares the shared moves of `group` on the Kafka
    /// cluster `kafka` points at.
    pub(crate) fn connect(
        config: &RedisConfig,
        kafka: &ClientConfig,
        group: &str,
    ) -> Result<(Self, RedisClient), BuildError> {
        let client = RedisClient::connect(config).map_err(l2_error)?;
        let cluster = cluster_of(config, kafka);
        let instance = instance_id();
        let moves = config
            .share_key_moves
            .then(|| SharedMoves::new(client.clone(), &cluster, group, instance.clone()));
        let l2 = Self {
            client: client.clone(),
            fleet: None,
            moves,
            instance,
            cluster,
            lines: Arc::default(),
            counters: Counters::default(),
            cancel: CancellationToken::new(),
            _bridge: None,
            _moves_listener: None,
        };
        Ok((l2, client))
    }

    /// Wraps `collector` in a fleet collector when health is shared.
    pub(crate) fn collector(
        &mut self,
        client: RedisClient,
        collector: Arc<dyn LagCollector>,
        group: &str,
        monitor: &MonitorConfig,
        calculator: Arc<dyn HotPartitionCalculator>,
    ) -> Result<Arc<dyn LagCollector>, BuildError> {
        if !client.config().share_health {
            return Ok(collector);
        }
        let fleet = FleetCollector::builder(client, collector, group)
            .cluster(self.cluster.clone())
            .instance(self.instance.clone())
            .calculator(calculator)
            // A peer's snapshot older than this means the leader is gone or stuck: collect.
            .follower_max_age(monitor.refresh_interval * 2)
            .spawn()
            .map_err(l2_error)?;
        let fleet = Arc::new(fleet);
        self.fleet = Some(fleet.clone());
        Ok(fleet)
    }

    /// Refreshes the monitor whenever a peer publishes, instead of waiting for the tick.
    pub(crate) fn follow_peers(&mut self, monitor: &MonitorHandle) {
        let (Some(fleet), Ok(runtime)) = (&self.fleet, tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let mut updates = fleet.peer_updates();
        let monitor = monitor.clone();
        self._bridge = Some(AbortOnDropHandle::new(runtime.spawn(async move {
            while updates.changed().await.is_ok() {
                if monitor.refresh_now().await.is_err() {
                    break;
                }
            }
        })));
    }

    /// Makes `router` forget a detour as soon as another instance replaces it in Redis, so the
    /// fleet converges on one detour per key instead of each instance keeping the one it saw
    /// first.
    pub(crate) fn follow_moves(&mut self, router: &Arc<Router>) {
        let Some(moves) = &self.moves else {
            return;
        };
        let router = Arc::downgrade(router);
        let listener = moves.listen(self.cancel.clone(), move |replaced| {
            if let Some(router) = router.upgrade() {
                debug!(topic = %replaced.topic, partition = replaced.partition, "another instance replaced a shared detour");
                router.forget_detour(&replaced.topic, replaced.key_hash);
            }
        });
        match listener {
            Ok(listener) => self._moves_listener = Some(listener),
            Err(e) => debug!(error = %e, "cannot listen for replaced detours"),
        }
    }

    /// Whether first moves are agreed with the fleet.
    pub(crate) fn shares_moves(&self) -> bool {
        self.moves.is_some()
    }

    /// Routes a message whose key this router has no detour for yet: the first send of the
    /// key agrees on the detour with the fleet (the detour already shared wins), the key's
    /// later sends wait in line behind it and take the same partition. Returns the decision
    /// and the turn to hold until the message is enqueued.
    ///
    /// Waits at most one command timeout per claim, and not at all while the breaker is open;
    /// on any failure the local detour stands.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the line to the next send of the key, which claims itself if
    /// the agreement had not come back.
    pub(crate) async fn first_move(
        &self,
        router: &Arc<Router>,
        topic: &str,
        detour: NewDetour,
        decision: Decision,
    ) -> (Decision, Option<Turn>) {
        let Some(proposal) = decision.partition else {
            return (decision, None);
        };
        let line = {
            let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
            lines.entry(detour.fingerprint()).or_default().clone()
        };
        let guard = line.turn.clone().lock_owned().await;
        // From here on, dropping the future (or the turn) lets the next send of the key in.
        let turn = Turn {
            line,
            lines: self.lines.clone(),
            detour,
            router: router.clone(),
            _turn: guard,
        };
        let agreed = *turn
            .line
            .agreed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let agreed = match agreed {
            Some(partition) => partition,
            // On any failure the local detour stands.
            None => self
                .claim(topic, &turn.detour, proposal)
                .await
                .unwrap_or(proposal),
        };
        // The agreement may have taken a round trip, the wait in line longer: check it against
        // the health of now.
        let partition = if router.is_routable(topic, agreed) {
            Some(agreed)
        } else {
            router.detour_now(topic, &turn.detour)
        };
        *turn
            .line
            .agreed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = partition;
        let decision = match partition {
            Some(partition) => Decision {
                partition: Some(partition),
                ..decision
            },
            None => Decision::fallback(Fallback::NoRoutablePartition),
        };
        (decision, Some(turn))
    }

    /// One claim in Redis: the partition the fleet agreed on, or `None` without Redis.
    async fn claim(&self, topic: &str, detour: &NewDetour, proposal: i32) -> Option<i32> {
        let moves = self.moves.as_ref()?;
        match moves
            .claim(topic, detour.key_hash, proposal, &detour.routable)
            .await
        {
            Ok(partition) if partition == proposal => {
                self.counters.shared.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ksp_redis_key_moves_total", "result" => "shared").increment(1);
                Some(partition)
            }
            Ok(partition) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ksp_redis_key_moves_total", "result" => "hit").increment(1);
                Some(partition)
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ksp_redis_key_moves_total", "result" => "error").increment(1);
                debug!(topic, error = %e, "shared key move unavailable; using the local detour");
                None
            }
        }
    }

    pub(crate) fn status(&self) -> RedisStatus {
        RedisStatus {
            breaker: self.client.breaker_state(),
            breaker_opened: self.client.breaker().times_opened(),
            commands: self.client.call_counts(),
            fleet: self.fleet.as_ref().map(|f| f.stats()),
            key_move_hits: self.counters.hits.load(Ordering::Relaxed),
            key_moves_shared: self.counters.shared.load(Ordering::Relaxed),
            key_move_errors: self.counters.errors.load(Ordering::Relaxed),
        }
    }

    pub(crate) async fn shutdown(&self) {
        self.cancel.cancel();
        if let Some(fleet) = &self.fleet {
            fleet.shutdown().await;
        }
    }
}

/// The Kafka cluster's name in the fleet's keys: the configured one, or one derived from
/// `bootstrap.servers`.
fn cluster_of(config: &RedisConfig, kafka: &ClientConfig) -> String {
    if config.cluster.is_empty() {
        cluster_name(kafka.get("bootstrap.servers").unwrap_or_default())
    } else {
        config.cluster.clone()
    }
}

fn l2_error(e: L2Error) -> BuildError {
    match e {
        L2Error::Config(e) => BuildError::Config(e),
        other => BuildError::Redis(other),
    }
}
