//! The Redis L2 behind the router (cargo feature `redis`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ksp_core::{HotPartitionCalculator, LagCollector};
use ksp_monitor::{MonitorConfig, MonitorHandle};
use ksp_redis::{
    BreakerState, FleetCollector, FleetStats, L2Error, RedisClient, RedisConfig, SharedMoves,
    cluster_name,
};
use rdkafka::ClientConfig;
use serde::Serialize;
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use crate::error::{ProducerError, ProducerResult};
use crate::router::{Decision, NewDetour, Router};

/// The producer's Redis parts.
pub(crate) struct L2 {
    client: RedisClient,
    fleet: Option<Arc<FleetCollector>>,
    moves: Option<SharedMoves>,
    counters: Counters,
    _bridge: Option<AbortOnDropHandle<()>>,
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
    pub(crate) fn connect(config: &RedisConfig) -> ProducerResult<(Self, RedisClient)> {
        let client = RedisClient::connect(config).map_err(l2_error)?;
        let moves = config
            .share_key_moves
            .then(|| SharedMoves::new(client.clone()));
        let l2 = Self {
            client: client.clone(),
            fleet: None,
            moves,
            counters: Counters::default(),
            _bridge: None,
        };
        Ok((l2, client))
    }

    /// Wraps `collector` in a fleet collector when health is shared.
    pub(crate) fn collector(
        &mut self,
        client: RedisClient,
        collector: Arc<dyn LagCollector>,
        kafka: &ClientConfig,
        monitor: &MonitorConfig,
        calculator: Arc<dyn HotPartitionCalculator>,
    ) -> ProducerResult<Arc<dyn LagCollector>> {
        if !client.config().share_health {
            return Ok(collector);
        }
        let cluster = if client.config().cluster.is_empty() {
            cluster_name(kafka.get("bootstrap.servers").unwrap_or_default())
        } else {
            client.config().cluster.clone()
        };
        let fleet = FleetCollector::builder(client, collector, monitor.group.clone())
            .cluster(cluster)
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

    /// Agrees on a first-time detour with the fleet: the detour already shared wins.
    ///
    /// Waits at most one command timeout, and not at all while the breaker is open; on any
    /// failure the local detour stands.
    pub(crate) async fn agree(
        &self,
        router: &Router,
        topic: &str,
        detour: &NewDetour,
        decision: Decision,
    ) -> Decision {
        let (Some(moves), Some(proposal)) = (&self.moves, decision.partition) else {
            return decision;
        };
        match moves
            .claim(topic, detour.key_hash, proposal, &detour.routable)
            .await
        {
            Ok(partition) if partition == proposal => {
                self.counters.shared.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ksp_redis_key_moves_total", "result" => "shared").increment(1);
                decision
            }
            Ok(partition) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ksp_redis_key_moves_total", "result" => "hit").increment(1);
                router.remember_detour(detour, partition);
                Decision {
                    partition: Some(partition),
                    ..decision
                }
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ksp_redis_key_moves_total", "result" => "error").increment(1);
                debug!(topic, error = %e, "shared key move unavailable; using the local detour");
                decision
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
        if let Some(fleet) = &self.fleet {
            fleet.shutdown().await;
        }
    }
}

fn l2_error(e: L2Error) -> ProducerError {
    match e {
        L2Error::Config(e) => ProducerError::Config(e),
        other => ProducerError::Redis(other),
    }
}
