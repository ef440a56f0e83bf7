//! A fleet of producers sharing health and key moves through a real Redis.
//!
//! Each test starts its own Redis on free loopback ports (the README's test command installs
//! the package) and its own embedded Kafka cluster. The tests marked `on_each_redis!` run twice:
//! on one `redis-server`, and on a 3-master Redis Cluster (`redis-cli --cluster create`).

mod common;

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_smart_producer::AsyncSmartProducer;
use kafka_smart_producer::monitor::{KafkaLagCollector, MonitorConfig};
use kafka_smart_producer::rdkafka::ClientConfig;
use kafka_smart_producer::rdkafka::producer::FutureRecord;
use kafka_smart_producer::redis::{
    BreakerConfig, BreakerState, FleetCollector, RedisClient, RedisConfig, SharedMoves, wire,
};
use kafka_smart_producer::routing::{Partitioner, Route};
use ksp_testkit::{MockKafka, RedisCluster, RedisServer};

const GROUP: &str = "processors";
const TOPIC: &str = "orders";
const SLOW: i32 = 3;
const LEASE_TTL: Duration = Duration::from_millis(1000);
const COMMAND_TIMEOUT: Duration = Duration::from_millis(150);

async fn cluster() -> MockKafka {
    common::cluster_with_slow_partition(3, TOPIC, GROUP, SLOW as usize).await
}

/// The Redis a test runs against.
enum Redis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    fn single() -> Self {
        Self::Single(RedisServer::start().unwrap())
    }

    fn cluster() -> Self {
        Self::Cluster(RedisCluster::start(3).unwrap())
    }

    fn url(&self) -> String {
        match self {
            Self::Single(server) => server.url(),
            Self::Cluster(cluster) => cluster.url(),
        }
    }
}

/// Runs the test body once on a single server and once on a Redis Cluster.
macro_rules! on_each_redis {
    ($(#[$meta:meta])* async fn $name:ident($redis:ident: Redis) $body:block) => {
        $(#[$meta])*
        mod $name {
            use super::*;

            async fn body($redis: Redis) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single_server() {
                common::init_tracing();
                body(Redis::single()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster() {
                common::init_tracing();
                body(Redis::cluster()).await;
            }
        }
    };
}

fn redis_config(url: impl Into<String>) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    config.key_prefix = "test".into();
    config.cluster = "mock".into();
    config.lease_ttl = LEASE_TTL;
    config.command_timeout = COMMAND_TIMEOUT;
    config.reconnect_max_delay = Duration::from_millis(100);
    let mut breaker = BreakerConfig::default();
    breaker.min_calls = 3;
    breaker.window = Duration::from_secs(2);
    breaker.cool_down = Duration::from_millis(300);
    config.breaker = breaker;
    config
}

struct Instance {
    producer: AsyncSmartProducer,
    collector: Arc<KafkaLagCollector>,
}

impl Instance {
    fn start(kafka: &ClientConfig, redis: RedisConfig) -> Self {
        let collector = Arc::new(
            KafkaLagCollector::builder(kafka)
                // Request counts come from librdkafka's statistics.
                .set("statistics.interval.ms", "100")
                .build()
                .unwrap(),
        );
        let producer = AsyncSmartProducer::builder(kafka.clone())
            .consumer_group(GROUP)
            .topics([TOPIC])
            .monitor(MonitorConfig::default().with_refresh_interval(Duration::from_millis(300)))
            .collector(collector.clone())
            .redis(redis)
            .build()
            .unwrap();
        Self {
            producer,
            collector,
        }
    }

    fn fleet(&self) -> kafka_smart_producer::redis::FleetStats {
        self.status().fleet.unwrap()
    }

    fn is_leader(&self) -> bool {
        self.status().fleet.unwrap().is_leader
    }

    /// Redis answers it: the breaker closed, and it leads the fleet.
    fn uses_redis(&self) -> bool {
        let s = self.status();
        s.breaker == BreakerState::Closed && s.fleet.as_ref().unwrap().is_leader
    }

    fn status(&self) -> kafka_smart_producer::redis::RedisStatus {
        self.producer.redis_status().unwrap()
    }

    /// ListOffsets + OffsetFetch requests this instance's own collector has sent.
    fn kafka_requests(&self) -> u64 {
        self.collector
            .request_counts(GROUP)
            .map_or(0, |c| c.list_offsets + c.offset_fetch)
    }

    fn slow_is_unhealthy(&self) -> bool {
        self.producer
            .healthy_partitions(TOPIC)
            .is_some_and(|p| p.len() == 7 && !p.contains(&SLOW))
    }
}

/// Keys whose home (librdkafka's default partitioner, 8 partitions) is the slow partition.
fn keys_homed_on_slow(count: usize, tag: &str) -> Vec<String> {
    (0..)
        .map(|i| format!("{tag}-{i}"))
        .filter(|k| Partitioner::ConsistentRandom.home(Some(k.as_bytes()), 8) == Some(SLOW))
        .take(count)
        .collect()
}

async fn until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    common::eventually(limit, || {
        let ok = ready();
        async move { ok.then_some(()) }
    })
    .await
    .is_some()
}

on_each_redis! {
async fn one_instance_collects_for_the_fleet_and_the_other_routes_from_its_snapshot(redis: Redis) {
    let kafka = cluster().await;
    let a = Instance::start(&kafka.client_config(), redis_config(redis.url()));
    let b = Instance::start(&kafka.client_config(), redis_config(redis.url()));
    assert!(
        until(Duration::from_secs(10), || {
            a.is_leader() != b.is_leader() && a.slow_is_unhealthy() && b.slow_is_unhealthy()
        })
        .await,
        "a: {:?} b: {:?}",
        a.status(),
        b.status()
    );
    let (leader, follower) = if a.is_leader() { (&a, &b) } else { (&b, &a) };
    // Let startup settle (an instance may collect once before it knows who leads), then
    // count over a window of about seven refreshes.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = (leader.kafka_requests(), follower.kafka_requests());
    let adopted_before = follower.status().fleet.unwrap().adopted;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = (leader.kafka_requests(), follower.kafka_requests());
    assert!(
        after.0 > before.0,
        "the leader collects: {before:?} → {after:?}"
    );
    assert_eq!(after.1, before.1, "the follower sends Kafka nothing");
    let fleet = follower.status().fleet.unwrap();
    assert!(fleet.adopted > adopted_before, "{fleet:?}");
    assert_eq!(fleet.rejected_payloads, 0);
    // And it routes on that health: nothing keyless lands on the slow partition.
    for _ in 0..50 {
        let d = follower
            .producer
            .produce(FutureRecord::<(), _>::to(TOPIC).payload("x"))
            .await
            .unwrap();
        assert_ne!(d.partition, SLOW);
    }
}
}

on_each_redis! {
async fn a_follower_takes_over_within_one_lease_ttl_when_the_leader_dies_or_leaves(redis: Redis) {
    let kafka = cluster().await;
    let a = Instance::start(&kafka.client_config(), redis_config(redis.url()));
    let b = Instance::start(&kafka.client_config(), redis_config(redis.url()));
    assert!(until(Duration::from_secs(10), || a.is_leader() != b.is_leader()).await);
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };

    // Dies: dropped without close, so its lease is left to expire.
    drop(leader);
    let died = Instant::now();
    assert!(
        until(Duration::from_secs(10), || follower.is_leader()).await,
        "{:?}",
        follower.status()
    );
    let takeover = died.elapsed();
    // Expiry (at most one TTL after the last renewal) plus the follower's retry period (a
    // tenth of the TTL) plus scheduling slack.
    assert!(
        takeover <= LEASE_TTL + LEASE_TTL / 10 + Duration::from_millis(400),
        "took {takeover:?}"
    );

    // Leaves: close() hands the lease over at once.
    let c = Instance::start(&kafka.client_config(), redis_config(redis.url()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!c.is_leader());
    follower
        .producer
        .close(Duration::from_secs(5))
        .await
        .unwrap();
    let left = Instant::now();
    assert!(until(Duration::from_secs(10), || c.is_leader()).await);
    assert!(left.elapsed() <= LEASE_TTL, "took {:?}", left.elapsed());
    assert!(until(Duration::from_secs(5), || c.slow_is_unhealthy()).await);
}
}

/// Shared moves of `group` through a client of their own, as instance `instance`.
async fn moves(redis: &Redis, cluster: &str, group: &str, instance: &str) -> SharedMoves {
    let client = RedisClient::connect(&redis_config(redis.url())).unwrap();
    let moves = SharedMoves::new(client, cluster, group, instance);
    // Connected once a first command goes through.
    let ready = common::eventually(Duration::from_secs(10), || {
        let moves = moves.clone();
        async move { moves.get("probe", 0).await.ok() }
    })
    .await;
    assert!(ready.is_some(), "redis answers");
    moves
}

on_each_redis! {
async fn instances_moving_the_same_key_at_once_agree_on_its_partition(redis: Redis) {
    let a = moves(&redis, "mock", GROUP, "a").await;
    let b = moves(&redis, "mock", GROUP, "b").await;
    let routable = [0, 2, 5, 7];
    for key in 0..100u64 {
        // Each proposes a different detour, at the same moment.
        let (x, y) = tokio::join!(
            a.claim(TOPIC, key, 2, &routable),
            b.claim(TOPIC, key, 5, &routable)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x, y, "key {key}");
        assert!(x == 2 || x == 5);
        assert_eq!(a.get(TOPIC, key).await.unwrap(), Some(x));
    }
    // A shared detour that is no longer routable for the caller is replaced.
    a.put(TOPIC, 1000, 4).await.unwrap();
    assert_eq!(b.claim(TOPIC, 1000, 5, &routable).await.unwrap(), 5);
    assert_eq!(a.claim(TOPIC, 1000, 2, &routable).await.unwrap(), 5);
}
}

on_each_redis! {
async fn a_restarted_instance_picks_up_shared_health_and_key_moves(redis: Redis) {
    let kafka = cluster().await;
    let first = Instance::start(&kafka.client_config(), redis_config(redis.url()));
    assert!(
        until(Duration::from_secs(10), || first.is_leader()
            && first.slow_is_unhealthy())
        .await
    );
    let key = keys_homed_on_slow(1, "restart").remove(0);
    // Where this instance would move the key by itself…
    let own = first
        .producer
        .decide(&FutureRecord::to(TOPIC).key(&key).payload("v"))
        .partition
        .unwrap();
    // …and a different detour another instance shared earlier.
    let shared = (0..8).find(|p| *p != own && *p != SLOW).unwrap();
    let moves = moves(&redis, "mock", GROUP, "earlier").await;
    moves
        .put(TOPIC, xxhash_rust::xxh3::xxh3_64(key.as_bytes()), shared)
        .await
        .unwrap();

    // The instance dies and a new one starts: its lease is still held, so the new one
    // follows, and gets its health from the published snapshot without asking Kafka.
    drop(first);
    let second = Instance::start(&kafka.client_config(), redis_config(redis.url()));
    assert!(until(Duration::from_secs(5), || second.slow_is_unhealthy()).await);
    assert!(
        until(Duration::from_secs(5), || second
            .status()
            .fleet
            .unwrap()
            .adopted
            >= 1)
        .await,
        "{:?}",
        second.status()
    );
    for _ in 0..3 {
        let d = second
            .producer
            .produce(FutureRecord::to(TOPIC).key(&key).payload("v"))
            .await
            .unwrap();
        assert_eq!((d.partition, d.route), (shared, Route::Moved));
    }
    // One L2 read promoted into L1; the next sends did not ask Redis.
    assert_eq!(second.status().key_move_hits, 1);
}
}

/// Regression: closing and dropping a producer left its Redis client's connection task running
/// (fred reconnects forever until it is told to quit), so every instance closed left a
/// connection open, and a reconnect loop behind it. Found by the chaos soak, which closes an
/// instance about once a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_producer_leaves_no_redis_connection_behind() {
    let redis = RedisServer::start().unwrap();
    let kafka = cluster().await;
    let connections = || connections(&redis);
    let before = connections();
    for _ in 0..3 {
        let a = Instance::start(&kafka.client_config(), redis_config(redis.url()));
        // Connected: leading the fleet.
        assert!(until(Duration::from_secs(10), || a.is_leader()).await);
        assert!(until(Duration::from_secs(10), || connections() > before).await);
        a.producer.close(Duration::from_secs(5)).await.unwrap();
        drop(a);
    }
    assert_connections_back(&redis, before, "the instances").await;
}

/// Dropping the last clone of a client closes its connection, without `quit`: the handle it
/// keeps must stop fred's connection task, not only the task that restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_without_quit_leaves_no_redis_connection_behind() {
    let redis = RedisServer::start().unwrap();
    let connections = || connections(&redis);
    let before = connections();
    let client =
        kafka_smart_producer::redis::RedisClient::connect(&redis_config(redis.url())).unwrap();
    assert!(until(Duration::from_secs(10), || connections() > before).await);
    drop(client);
    assert_connections_back(&redis, before, "the client").await;
}

/// fred's own `fail_fast` (on by default) gave up on a client whose first connection failed:
/// its connection task ended, nothing reconnected, and every command waiting for the first
/// connection stayed in fred's queue for good (the fleet's lease asks ten times a TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_built_while_redis_is_down_uses_it_once_it_is_up() {
    common::init_tracing();
    let mut redis = RedisServer::start().unwrap();
    let kafka = cluster().await;
    redis.kill();
    let a = Instance::start(&kafka.client_config(), redis_config(redis.url()));
    // Its first connection fails, and its lease is asked for meanwhile.
    tokio::time::sleep(LEASE_TTL).await;
    assert!(!a.is_leader());

    redis.restart().unwrap();
    assert!(
        until(Duration::from_secs(10), || a.uses_redis()).await,
        "never used Redis after it came up: {:?}",
        a.status()
    );
    a.producer.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_carry_on_while_redis_is_down_and_sharing_resumes_when_it_is_back() {
    common::init_tracing();
    let mut redis = RedisServer::start().unwrap();
    let kafka = cluster().await;
    let a = Instance::start(&kafka.client_config(), redis_config(redis.url()));
    assert!(
        until(Duration::from_secs(10), || a.is_leader()
            && a.slow_is_unhealthy())
        .await
    );
    let keys = keys_homed_on_slow(300, "outage");
    let mut keys = keys.iter();
    let (sent, delivered, slowest) = (Cell::new(0), Cell::new(0), Cell::new(Duration::ZERO));
    let mut send_batch = async |n: usize, phase: &str| {
        for key in keys.by_ref().take(n) {
            let start = Instant::now();
            let d = a
                .producer
                .produce(FutureRecord::to(TOPIC).key(key).payload(phase))
                .await;
            sent.set(sent.get() + 1);
            slowest.set(slowest.get().max(start.elapsed()));
            let d = d.unwrap_or_else(|e| panic!("{phase}: {e}"));
            assert_eq!(d.route, Route::Moved);
            assert_ne!(d.partition, SLOW);
            delivered.set(delivered.get() + 1);
        }
    };
    send_batch(50, "up").await;
    let shared_before = a.status().key_moves_shared;
    assert_eq!(shared_before, 50, "{:?}", a.status());

    redis.kill();
    slowest.set(Duration::ZERO);
    send_batch(100, "down").await;
    let status = a.status();
    assert!(status.breaker_opened >= 1, "{status:?}");
    assert!(status.key_move_errors >= 1, "{status:?}");
    // No send waited on Redis longer than one command timeout (plus the delivery itself).
    let slowest = slowest.get();
    assert!(
        slowest <= COMMAND_TIMEOUT + Duration::from_millis(500),
        "slowest send {slowest:?}"
    );
    // Routing continued on the last health (the monitor collects by itself meanwhile).
    assert!(a.slow_is_unhealthy());

    redis.restart().unwrap();
    assert!(
        until(Duration::from_secs(10), || a.uses_redis()).await,
        "{:?}",
        a.status()
    );
    let published = a.status().fleet.unwrap().published;
    assert!(
        until(Duration::from_secs(5), || a
            .status()
            .fleet
            .unwrap()
            .published
            > published)
        .await
    );
    let shared_mid = a.status().key_moves_shared;
    send_batch(50, "back").await;
    assert!(a.status().key_moves_shared > shared_mid, "{:?}", a.status());
    assert_eq!((sent.get(), delivered.get()), (200, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_or_foreign_snapshots_are_ignored_with_a_warning() {
    let logs = common::capture_logs();
    let redis = RedisServer::start().unwrap();
    let kafka = cluster().await;
    // Another instance holds the lease for a long time: this one only follows.
    let lease = "test:v2:fleet:{mock:processors}:lease";
    let snapshot = "test:v2:fleet:{mock:processors}:snapshot";
    redis
        .command(&["SET", lease, "someone-else", "PX", "600000"])
        .unwrap();
    let a = Instance::start(&kafka.client_config(), redis_config(redis.url()));

    let broken = [
        "not json at all".to_owned(),
        {
            let good = lie(&[0], wire::VERSION, GROUP, 1);
            good[..good.len() / 2].to_owned()
        },
        lie(&[0], 1, GROUP, 1),
        lie(&[0], wire::VERSION, "another-group", 1),
        lie(&[0], wire::VERSION, GROUP, 1).replace("\"partition\":1,", "\"partition\":-1,"),
    ];
    for (i, payload) in broken.iter().enumerate() {
        plant(&redis, snapshot, payload);
        let rejected = a.fleet().rejected_payloads;
        assert!(
            until(Duration::from_secs(5), || a.fleet().rejected_payloads
                > rejected)
            .await,
            "payload {i}"
        );
        // Not applied: health still comes from this instance's own collection.
        a.producer.refresh_health().await.unwrap();
        assert!(a.slow_is_unhealthy(), "payload {i}");
    }
    assert!(
        logs.text().contains("ignoring the shared health snapshot"),
        "a warning names the problem"
    );
    // A valid one is applied (partition 3 stays out a while longer: flap damping holds a
    // partition that was unhealthy).
    plant(&redis, snapshot, &lie(&[0], wire::VERSION, GROUP, 1));
    assert!(
        until(Duration::from_secs(5), || {
            a.producer
                .healthy_partitions(TOPIC)
                .is_some_and(|p| !p.contains(&0))
        })
        .await,
        "{:?} {:?}",
        a.status(),
        a.producer.topic_summary(TOPIC)
    );
    assert!(a.fleet().adopted >= 1);
}

/// A snapshot payload from "someone-else" saying the `hot` partitions lag 9000 and the others
/// 0, in `term`.
fn lie(hot: &[i32], version: u32, group: &str, term: u64) -> String {
    lie_from("someone-else", hot, version, group, term)
}

fn lie_from(publisher: &str, hot: &[i32], version: u32, group: &str, term: u64) -> String {
    let lag = kafka_smart_producer::TopicLag::new(
        TOPIC,
        (0..8)
            .map(|p| {
                kafka_smart_producer::PartitionLag::from_lag(
                    p,
                    if hot.contains(&p) { 9000 } else { 0 },
                )
            })
            .collect(),
        std::time::SystemTime::now(),
    );
    let publication = wire::Publication {
        group,
        publisher,
        term,
        sequence: 1,
        now: std::time::SystemTime::now(),
    };
    let mut payload = wire::SnapshotPayload::new(publication, &[lag], &|_| None);
    payload.version = version;
    payload.encode()
}

/// Writes a snapshot as a leader would (published now, by this machine's clock, which is the
/// server's too).
fn plant(redis: &RedisServer, key: &str, payload: &str) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let reply = redis
        .command(&["HSET", key, "payload", payload, "at", &now_ms])
        .unwrap();
    assert!(reply.starts_with(':'), "{reply}");
}

/// Regression: a follower judged the shared snapshot's freshness by comparing the leader's
/// collection time with its own clock; with the leader's clock a few seconds ahead (or
/// behind) every snapshot looked too old (or from the future), so the follower collected
/// from Kafka every round and "five instances send the cluster what one sends" quietly failed.
/// Here the leader's clock (its collector's and its fleet's) is 5 s ahead, then 5 s behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_adopts_the_fleet_snapshot_whatever_the_clock_skew() {
    use kafka_smart_producer::monitor::HealthMonitor;
    use ksp_testkit::{Skew, SkewedCollector};

    common::init_tracing();
    for skew in [
        Skew::Ahead(Duration::from_secs(5)),
        Skew::Behind(Duration::from_secs(5)),
    ] {
        let redis = RedisServer::start().unwrap();
        let kafka = cluster().await;
        let config = redis_config(redis.url());
        let leader_collector = SkewedCollector::new(
            KafkaLagCollector::builder(&kafka.client_config())
                .build()
                .unwrap(),
            skew,
        );
        let fleet = Arc::new(
            FleetCollector::builder(
                RedisClient::connect(&config).unwrap(),
                Arc::new(leader_collector),
                GROUP,
            )
            .cluster("mock")
            .follower_max_age(Duration::from_millis(600))
            .clock(move || skew.now())
            .spawn()
            .unwrap(),
        );
        let monitor = HealthMonitor::builder(fleet.clone())
            .group(GROUP)
            .topics([TOPIC])
            .config(MonitorConfig::default().with_refresh_interval(Duration::from_millis(300)))
            .spawn()
            .unwrap();
        assert!(until(Duration::from_secs(10), || fleet.is_leader()).await);
        let follower = Instance::start(&kafka.client_config(), config);
        assert!(
            until(Duration::from_secs(10), || follower.slow_is_unhealthy()).await,
            "{:?}",
            follower.status()
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (requests, local, adopted) = (
            follower.kafka_requests(),
            follower.fleet().collected_locally,
            follower.fleet().adopted,
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let skewed = format!("leader {skew:?}");
        assert_eq!(
            follower.kafka_requests(),
            requests,
            "{skewed}: the follower sends Kafka nothing"
        );
        let fleet_stats = follower.fleet();
        assert_eq!(
            fleet_stats.collected_locally, local,
            "{skewed}: {fleet_stats:?}"
        );
        assert!(
            fleet_stats.adopted >= adopted + 4,
            "{skewed}: {fleet_stats:?}"
        );
        // And the health it routes by is fresh, by its own clock.
        let summary = follower.producer.topic_summary(TOPIC).unwrap();
        assert!(!summary.stale, "{skewed}: {summary:?}");
        assert!(
            summary.age < Duration::from_secs(1),
            "{skewed}: {summary:?}"
        );
        monitor.shutdown().await.unwrap();
        fleet.shutdown().await;
    }
}

/// A fleet instance whose collector can be made to pause its whole runtime thread once, after
/// reading the lags: a stop-the-world pause between collecting and publishing. It runs on a
/// runtime of its own, so that pausing it pauses nothing else.
struct Pausable {
    fleet: Arc<FleetCollector>,
    pause: Arc<std::sync::atomic::AtomicBool>,
    /// How often its collector was told it is idle.
    idles: Arc<std::sync::atomic::AtomicU32>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pausable {
    fn start(kafka: ClientConfig, config: RedisConfig) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

        use kafka_smart_producer::monitor::HealthMonitor;
        use kafka_smart_producer::{CollectError, LagCollector, LagRequest, TopicLag, async_trait};

        struct Pausing {
            inner: KafkaLagCollector,
            pause: Arc<AtomicBool>,
            idles: Arc<AtomicU32>,
        }

        #[async_trait]
        impl LagCollector for Pausing {
            async fn collect(
                &self,
                request: &LagRequest<'_>,
            ) -> Result<Vec<TopicLag>, CollectError> {
                let lags = self.inner.collect(request).await?;
                if self.pause.swap(false, Ordering::SeqCst) {
                    std::thread::sleep(LEASE_TTL * 5 / 2);
                }
                Ok(lags)
            }

            fn idle(&self, group: &str) {
                self.idles.fetch_add(1, Ordering::SeqCst);
                self.inner.idle(group);
            }
        }

        let pause = Arc::new(AtomicBool::new(false));
        let idles = Arc::new(AtomicU32::new(0));
        let (fleet_tx, fleet_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let (pause, idles) = (pause.clone(), idles.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let collector = Pausing {
                        inner: KafkaLagCollector::builder(&kafka).build().unwrap(),
                        pause,
                        idles,
                    };
                    let fleet = Arc::new(
                        FleetCollector::builder(
                            RedisClient::connect(&config).unwrap(),
                            Arc::new(collector),
                            GROUP,
                        )
                        .cluster("mock")
                        .spawn()
                        .unwrap(),
                    );
                    let monitor = HealthMonitor::builder(fleet.clone())
                        .group(GROUP)
                        .topics([TOPIC])
                        .config(
                            MonitorConfig::default()
                                .with_refresh_interval(Duration::from_millis(300)),
                        )
                        .spawn()
                        .unwrap();
                    fleet_tx.send(fleet.clone()).unwrap();
                    let _ = stopped.await;
                    monitor.shutdown().await.unwrap();
                    fleet.shutdown().await;
                });
            })
        };
        Self {
            fleet: fleet_rx.recv().unwrap(),
            pause,
            idles,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Pauses it once, at its next collection.
    fn pause(&self) {
        self.pause.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn idles(&self) -> u32 {
        self.idles.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// A (pausable) leads and B (a producer) follows; then A pauses past its lease, B takes over
/// and A, awake, finds itself deposed.
async fn depose(kafka: &MockKafka, config: RedisConfig) -> (Pausable, Instance) {
    let a = Pausable::start(kafka.client_config(), config.clone());
    assert!(until(Duration::from_secs(10), || a.fleet.is_leader()).await);
    let b = Instance::start(&kafka.client_config(), config);
    assert!(until(Duration::from_secs(10), || b.slow_is_unhealthy()).await);
    assert!(!b.is_leader());

    a.pause();
    // A stops mid-round; its lease runs out and B takes over.
    assert!(
        until(Duration::from_secs(10), || b.is_leader()).await,
        "{:?}",
        b.status()
    );
    // A wakes up and tries to publish what it read before the pause.
    assert!(
        until(Duration::from_secs(10), || a.fleet.stats().fenced >= 1).await,
        "{:?}",
        a.fleet.stats()
    );
    assert!(!a.fleet.is_leader());
    (a, b)
}

/// Regression: a leader noticed a lost lease only every third of its TTL and published with
/// an unconditional SET, so a leader paused past its lease (a long GC, a frozen VM) overwrote
/// its successor's newer snapshot when it woke up. Now publishing checks the lease in the
/// same script: the deposed leader's snapshot is refused and it steps down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cannot_overwrite_its_successors_snapshot() {
    common::init_tracing();
    let redis = RedisServer::start().unwrap();
    let kafka = cluster().await;
    let (a, b) = depose(&kafka, redis_config(redis.url())).await;
    let b_id = b.fleet().instance;
    let stored = redis
        .command(&[
            "HGET",
            "test:v2:fleet:{mock:processors}:snapshot",
            "payload",
        ])
        .unwrap();
    assert!(
        stored.contains(&format!("\"publisher\":\"{b_id}\"")),
        "B's snapshot stands: {stored}"
    );
    assert!(b.is_leader());
    a.stop();
}

/// The 30-minute soak's heap grew by about 0.6 MB a client: an instance that had led the
/// fleet kept its lag reader (a librdkafka client, a thread per broker and its connections)
/// for good after it stepped down, so over a run in which leadership moved, every instance
/// held one. A follower now tells its collector it is idle after a run of adopted snapshots,
/// and the collector closes the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_kept_its_lag_reader_for_good() {
    common::init_tracing();
    let redis = RedisServer::start().unwrap();
    let kafka = cluster().await;
    let (a, b) = depose(&kafka, redis_config(redis.url())).await;
    // Both lag readers are open now: A's, kept from its lead, and B's (B has collected).
    let published = b.fleet().published;
    assert!(until(Duration::from_secs(10), || b.fleet().published > published).await);
    let both = common::librdkafka_threads();
    assert_eq!(a.idles(), 0);

    // A follows B: after a run of adopted snapshots (300 ms apart) it closes its reader.
    assert!(
        until(Duration::from_secs(30), || a.idles() == 1).await,
        "A was told idle {} times; {:?}",
        a.idles(),
        a.fleet.stats()
    );
    assert!(
        until(Duration::from_secs(10), || common::librdkafka_threads()
            < both)
        .await,
        "{} librdkafka threads, {both} with both lag readers open",
        common::librdkafka_threads(),
    );
    assert_eq!(a.idles(), 1);
    assert!(!a.fleet.is_leader());
    assert!(b.is_leader());
    a.stop();
}

/// Followers never go back to an older snapshot (by term, then sequence) than one they used:
/// a late write from a former leader would otherwise roll their health back. The current lease
/// holder's snapshot is always taken, though: if Redis lost the term counter (a restart without
/// persistence), ordering by it would refuse the fleet's snapshots for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_snapshot_is_never_applied_after_a_newer_one() {
    common::init_tracing();
    let redis = RedisServer::start().unwrap();
    let kafka = cluster().await;
    let lease = "test:v2:fleet:{mock:processors}:lease";
    let snapshot = "test:v2:fleet:{mock:processors}:snapshot";
    redis
        .command(&["SET", lease, "someone-else", "PX", "600000"])
        .unwrap();
    let a = Instance::start(&kafka.client_config(), redis_config(redis.url()));
    let partition_0_out = |a: &Instance| {
        a.producer
            .healthy_partitions(TOPIC)
            .is_some_and(|p| !p.contains(&0))
    };
    // Term 5, from the lease holder, says partition 0 is hot: applied.
    plant(&redis, snapshot, &lie(&[0], wire::VERSION, GROUP, 5));
    assert!(until(Duration::from_secs(5), || partition_0_out(&a)).await);
    // Term 4, from a former leader, says everything is fine: ignored.
    plant(
        &redis,
        snapshot,
        &lie_from("former-leader", &[], wire::VERSION, GROUP, 4),
    );
    assert!(until(Duration::from_secs(5), || a.fleet().older_ignored >= 1).await);
    for _ in 0..5 {
        a.producer.refresh_health().await.unwrap();
        assert_ne!(
            a.producer.healthy_partitions(TOPIC).map(|p| p.len()),
            Some(8),
            "rolled back to the older snapshot"
        );
    }
    // Term 1 from the lease holder (the counter was lost): applied, partition 1 hot now.
    plant(&redis, snapshot, &lie(&[1], wire::VERSION, GROUP, 1));
    assert!(
        until(Duration::from_secs(5), || {
            a.producer
                .healthy_partitions(TOPIC)
                .is_some_and(|p| !p.contains(&1))
        })
        .await,
        "{:?}",
        a.fleet()
    );
}

on_each_redis! {
/// Regression: the router put a key's local detour into its cache before the Redis claim came
/// back, so the key's next sends took that detour at once and were enqueued before the first
/// one, which then went wherever the fleet had agreed: one key, two partitions, out of order.
/// Now the key's sends wait in line behind its first move and all take the agreed detour.
async fn same_key_sends_keep_their_order_through_a_first_move(redis: Redis) {
    let kafka = cluster().await;
    let a = Instance::start(&kafka.client_config(), redis_config(redis.url()));
    assert!(until(Duration::from_secs(10), || a.slow_is_unhealthy()).await);
    let key = keys_homed_on_slow(1, "ordered").remove(0);
    let own = a
        .producer
        .decide(&FutureRecord::to(TOPIC).key(&key).payload("v"))
        .partition
        .unwrap();
    // Another instance already moved the key elsewhere.
    let shared = (0..8).find(|p| *p != own && *p != SLOW).unwrap();
    moves(&redis, "mock", GROUP, "other")
        .await
        .put(TOPIC, xxhash_rust::xxh3::xxh3_64(key.as_bytes()), shared)
        .await
        .unwrap();
    let payloads: Vec<String> = (0..50).map(|i| format!("seq-{i:02}")).collect();
    let sends = payloads
        .iter()
        .map(|p| a.producer.produce(FutureRecord::to(TOPIC).key(&key).payload(p)));
    let deliveries: Vec<_> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for d in &deliveries {
        assert_eq!((d.partition, d.route), (shared, Route::Moved), "{deliveries:?}");
    }
    for pair in deliveries.windows(2) {
        assert!(pair[0].offset < pair[1].offset, "out of order: {deliveries:?}");
    }
}
}

on_each_redis! {
/// Regression: key-move entries carried no cluster or group, so two fleets (routing by two
/// groups, or for two Kafka clusters) sharing one Redis overwrote each other's detours.
async fn key_moves_are_scoped_by_kafka_cluster_and_group(redis: Redis) {
    let routable = [0, 1, 2, 4, 5, 6, 7];
    let here = moves(&redis, "mock", GROUP, "a").await;
    let other_group = moves(&redis, "mock", "analytics", "b").await;
    let other_cluster = moves(&redis, "elsewhere", GROUP, "c").await;
    for key in 0..20u64 {
        assert_eq!(here.claim(TOPIC, key, 1, &routable).await.unwrap(), 1);
        assert_eq!(other_group.claim(TOPIC, key, 5, &routable).await.unwrap(), 5);
        assert_eq!(other_cluster.claim(TOPIC, key, 6, &routable).await.unwrap(), 6);
        assert_eq!(here.get(TOPIC, key).await.unwrap(), Some(1));
    }
}
}

on_each_redis! {
/// Regression: an instance's remembered detour was never reconciled with Redis after the key's
/// first move, so when another instance replaced the shared detour (the old one had become
/// unroutable for it), this one kept sending the key to the old one for the whole cache TTL.
/// Now the replacement is announced and every instance forgets its copy.
async fn a_replaced_detour_is_forgotten_by_the_other_instances(redis: Redis) {
    let kafka = cluster().await;
    let a = Instance::start(&kafka.client_config(), redis_config(redis.url()));
    assert!(until(Duration::from_secs(10), || a.slow_is_unhealthy()).await);
    let key = keys_homed_on_slow(1, "replaced").remove(0);
    let first = a
        .producer
        .produce(FutureRecord::to(TOPIC).key(&key).payload("1"))
        .await
        .unwrap();
    assert_eq!(first.route, Route::Moved);
    // Another instance, for which the first detour is no longer routable, replaces it.
    let replacement = (0..8)
        .find(|p| *p != first.partition && *p != SLOW)
        .unwrap();
    let routable: Vec<i32> = (0..8).filter(|p| *p != first.partition && *p != SLOW).collect();
    let other = moves(&redis, "mock", GROUP, "other").await;
    let hash = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
    assert_eq!(
        other.claim(TOPIC, hash, replacement, &routable).await.unwrap(),
        replacement
    );
    // This instance follows within moments, not after its 10-minute cache TTL.
    let moved = common::eventually(Duration::from_secs(5), || async {
        let d = a
            .producer
            .produce(FutureRecord::to(TOPIC).key(&key).payload("n"))
            .await
            .unwrap();
        (d.partition == replacement).then_some(d)
    })
    .await;
    assert!(moved.is_some(), "{:?}", a.status());
}
}

/// Connections the Redis server has open now.
fn connections(redis: &RedisServer) -> usize {
    redis
        .command(&["CLIENT", "LIST"])
        .unwrap()
        .matches("id=")
        .count()
}

/// Waits up to 5 s for the server's connections to be `before` again, what was open before
/// `what`.
async fn assert_connections_back(redis: &RedisServer, before: usize, what: &str) {
    assert!(
        until(Duration::from_secs(5), || connections(redis) == before).await,
        "{} connections open, {before} before {what}",
        connections(redis)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_producer_leaves_no_librdkafka_client_behind() {
    common::init_tracing();
    let redis = RedisServer::start().unwrap();
    let kafka = cluster().await;
    let before = common::librdkafka_threads();
    for blocking in [false, true, false, true] {
        let builder = AsyncSmartProducer::builder(kafka.client_config())
            .consumer_group(GROUP)
            .topics([TOPIC])
            .monitor(MonitorConfig::default().with_refresh_interval(Duration::from_millis(300)))
            .redis(redis_config(redis.url()));
        if blocking {
            let producer = builder.build_blocking().unwrap();
            for i in 0..20 {
                let payload = format!("b{i}");
                producer
                    .send(
                        kafka_smart_producer::rdkafka::producer::BaseRecord::to(TOPIC)
                            .key(&payload)
                            .payload(&payload),
                        |_| {},
                    )
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
            tokio::task::spawn_blocking(move || producer.close(Duration::from_secs(5)))
                .await
                .unwrap()
                .unwrap();
        } else {
            let producer = builder.build().unwrap();
            for i in 0..20 {
                let payload = format!("a{i}");
                producer
                    .produce(FutureRecord::to(TOPIC).key(&payload).payload(&payload))
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
            producer.close(Duration::from_secs(5)).await.unwrap();
        }
    }
    assert!(
        until(Duration::from_secs(10), || common::librdkafka_threads()
            <= before)
        .await,
        "{} librdkafka threads, {before} before the producers",
        common::librdkafka_threads()
    );
}
