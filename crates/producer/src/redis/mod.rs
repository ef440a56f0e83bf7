//! The Redis L2 behind the router (cargo feature `redis`): the fleet's shared collector and
//! shared key moves, agreed without reordering a key's messages.

mod lines;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ksp_core::{HotPartitionCalculator, LagCollector};
use ksp_monitor::{MonitorConfig, MonitorError, MonitorHandle};
use ksp_redis::{
    BreakerState, FleetCollector, FleetStats, L2Error, RedisClient, RedisConfig, SharedMoves,
    cluster_name, instance_id,
};
use rdkafka::ClientConfig;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use xxhash_rust::xxh3::xxh3_64;

use self::lines::Lines;
pub(crate) use self::lines::Turn;
use crate::error::BuildError;
use crate::router::{Decision, Fallback, NewDetour, Router};
use crate::routing::{KeyTurn, Routed};

/// The producer's Redis parts.
pub(crate) struct L2 {
    client: RedisClient,
    fleet: Option<Arc<FleetCollector>>,
    moves: Option<SharedMoves>,
    /// Keys whose first move is being agreed: later sends of the same key wait in line behind
    /// it.
    lines: Arc<Lines>,
    /// This producer's name in the fleet.
    instance: String,
    /// The Kafka cluster's name in the fleet's keys.
    cluster: String,
    counters: Counters,
    cancel: CancellationToken,
    _bridge: Option<AbortOnDropHandle<()>>,
    _moves_listener: Option<AbortOnDropHandle<()>>,
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
        if moves.is_some() {
            for result in ["shared", "hit", "error"] {
                metrics::counter!("ksp_redis_key_moves_total", "result" => result).increment(0);
            }
        }
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
                // A failed round is no reason to stop following the fleet; a stopped monitor is.
                if let Err(MonitorError::Stopped) = monitor.refresh_now().await {
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
        let lines = self.lines.clone();
        let listener = moves.listen(self.cancel.clone(), move |replaced| {
            if let Some(router) = router.upgrade() {
                debug!(topic = %replaced.topic, partition = replaced.partition, "another instance replaced a shared detour");
                lines.replaced(crate::router::fingerprint(&replaced.topic, replaced.key_hash));
                router.forget_detour(&replaced.topic, replaced.key_hash);
            }
        });
        match listener {
            Ok(listener) => self._moves_listener = Some(listener),
            Err(e) => debug!(error = %e, "cannot listen for replaced detours"),
        }
    }

    /// Whether the sends of this key go through its line: a first move, or a line open for
    /// the key (a send decided without one could be enqueued ahead of the key's waiting sends).
    #[inline]
    pub(crate) fn needs_line(&self, topic: &str, key: &[u8], first_move: bool) -> bool {
        self.moves.is_some()
            && (first_move
                || (!self.lines.none_open()
                    && self
                        .lines
                        .is_open(crate::router::fingerprint(topic, xxh3_64(key)))))
    }

    /// Routes a keyed message through its key's line: waits behind the key's earlier sends,
    /// decides by the health of then, and for a first move agrees on the detour with the fleet
    /// (the detour already shared wins; later sends of the key take the same). Returns the
    /// decision and the turn to hold until the message is enqueued.
    ///
    /// A claim waits at most one command timeout, and not at all while the breaker is open;
    /// on any failure the local detour stands.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future gives up the send's place in the line; the next send
    /// of the key claims by itself if the agreement had not come back.
    pub(crate) async fn route_in_line(
        &self,
        router: &Arc<Router>,
        topic: &str,
        key: &[u8],
        size: usize,
    ) -> Routed {
        let fingerprint = crate::router::fingerprint(topic, xxh3_64(key));
        let first = router.route_detailed(topic, None, Some(key), size);
        let Some(waiting) = self.lines.join(fingerprint, first.1.is_some(), router) else {
            // The line closed meanwhile: nothing to wait behind.
            return Routed::plain(first.0, false);
        };
        let turn = waiting.turn().await;
        // Our turn: decide by the health of now.
        let (decision, new_detour) = router.route_detailed(topic, None, Some(key), size);
        let Some(detour) = new_detour else {
            return Routed {
                decision,
                first_move: false,
                in_order: false,
                turn: Some(Box::new(KeyTurn::Fleet(turn))),
            };
        };
        let Some(proposal) = decision.partition else {
            return Routed {
                decision,
                first_move: true,
                in_order: false,
                turn: Some(Box::new(KeyTurn::Fleet(turn))),
            };
        };
        let seen = turn.replacements();
        let agreed = match turn.agreed() {
            Some(partition) => partition,
            // On any failure the local detour stands.
            None => self
                .claim(topic, &detour, proposal)
                .await
                .unwrap_or(proposal),
        };
        // The agreement may have taken a round trip: check it against the health of now.
        let partition = if router.is_routable(topic, agreed) {
            Some(agreed)
        } else {
            router.detour_now(topic, &detour)
        };
        turn.agree(partition, detour, seen);
        let decision = match partition {
            Some(partition) => Decision {
                partition: Some(partition),
                ..decision
            },
            None => Decision::fallback(Fallback::NoRoutablePartition),
        };
        Routed {
            decision,
            first_move: true,
            in_order: false,
            turn: Some(Box::new(KeyTurn::Fleet(turn))),
        }
    }

    /// The partition a line agreed for the key, without waiting in it (for senders that may
    /// not block).
    pub(crate) fn agreed_without_waiting(&self, topic: &str, key: &[u8]) -> Option<i32> {
        let fingerprint = crate::router::fingerprint(topic, xxh3_64(key));
        self.lines.agreed_without_waiting(fingerprint)
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
        self.stopper().stop().await;
    }

    /// What stops this L2, as an owned value (to stop it from another task).
    pub(crate) fn stopper(&self) -> Stopper {
        Stopper {
            cancel: self.cancel.clone(),
            fleet: self.fleet.clone(),
            client: self.client.clone(),
        }
    }
}

/// Stops an L2: listeners end, a held lease is handed over, the connection closes.
pub(crate) struct Stopper {
    cancel: CancellationToken,
    fleet: Option<Arc<FleetCollector>>,
    client: RedisClient,
}

impl Stopper {
    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        if let Some(fleet) = &self.fleet {
            fleet.shutdown().await;
        }
        // After the lease is handed over (with this connection); later key moves go without
        // Redis (their commands fail fast).
        self.client.quit().await;
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
