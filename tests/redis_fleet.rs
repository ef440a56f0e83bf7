//! A fleet of producers sharing health and key moves through a real redis-server.
//!
//! Each test starts its own `redis-server` on a free loopback port (the README's test command
//! installs the package) and its own embedded Kafka cluster.

mod common;

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_smart_producer::rdkafka::ClientConfig;
use kafka_smart_producer::rdkafka::producer::FutureRecord;
use kafka_smart_producer::redis::{
    BreakerConfig, BreakerState, RedisClient, RedisConfig, SharedMoves, wire,
};
use kafka_smart_producer::{AsyncSmartProducer, KafkaLagCollector, Partitioner, Route};
use ksp_testkit::{LagScenario, MockKafka, RedisServer};

const GROUP: &str = "processors";
const TOPIC: &str = "orders";
const SLOW: i32 = 3;
const LEASE_TTL: Duration = Duration::from_millis(1000);
const COMMAND_TIMEOUT: Duration = Duration::from_millis(150);

async fn cluster() -> MockKafka {
    let kafka = MockKafka::start(3).unwrap();
    LagScenario::new(TOPIC, 8)
        .lag(SLOW as usize, 5000)
        .create(&kafka, GROUP)
        .await
        .unwrap();
    kafka
}

fn redis_config(redis: &RedisServer) -> RedisConfig {
    let mut config = RedisConfig::new(redis.url());
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
            .refresh_interval(Duration::from_millis(300))
            .collector(collector.clone())
            .redis(redis)
            .build()
            .unwrap();
        Self {
            producer,
            collector,
        }
    }

    fn is_leader(&self) -> bool {
        self.status().fleet.unwrap().is_leader
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_collects_for_the_fleet_and_the_other_routes_from_its_snapshot() {
    common::init_tracing();
    let redis = RedisServer::start().unwrap();
    let kafka = cluster().await;
    let a = Instance::start(&kafka.client_config(), redis_config(&redis));
    let b = Instance::start(&kafka.client_config(), redis_config(&redis));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_over_within_one_lease_ttl_when_the_leader_dies_or_leaves() {
    common::init_tracing();
    let redis = RedisServer::start().unwrap();
    let kafka = cluster().await;
    let a = Instance::start(&kafka.client_config(), redis_config(&redis));
    let b = Instance::start(&kafka.client_config(), redis_config(&redis));
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
    let c = Instance::start(&kafka.client_config(), redis_config(&redis));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_moving_the_same_key_at_once_agree_on_its_partition() {
    common::init_tracing();
    let redis = RedisServer::start().unwrap();
    let config = redis_config(&redis);
    let a = SharedMoves::new(RedisClient::connect(&config).unwrap());
    let b = SharedMoves::new(RedisClient::connect(&config).unwrap());
    let routable = [0, 2, 5, 7];
    assert!(until(Duration::from_secs(5), || redis.ping()).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_picks_up_shared_health_and_key_moves() {
    common::init_tracing();
    let redis = RedisServer::start().unwrap();
    let kafka = cluster().await;
    let first = Instance::start(&kafka.client_config(), redis_config(&redis));
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
    let moves = SharedMoves::new(RedisClient::connect(&redis_config(&redis)).unwrap());
    assert!(until(Duration::from_secs(5), || redis.ping()).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    moves
        .put(TOPIC, xxhash_rust::xxh3::xxh3_64(key.as_bytes()), shared)
        .await
        .unwrap();

    // The instance dies and a new one starts: its lease is still held, so the new one
    // follows, and gets its health from the published snapshot without asking Kafka.
    drop(first);
    let second = Instance::start(&kafka.client_config(), redis_config(&redis));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_carry_on_while_redis_is_down_and_sharing_resumes_when_it_is_back() {
    common::init_tracing();
    let mut redis = RedisServer::start().unwrap();
    let kafka = cluster().await;
    let a = Instance::start(&kafka.client_config(), redis_config(&redis));
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
        until(Duration::from_secs(10), || {
            let s = a.status();
            s.breaker == BreakerState::Closed && s.fleet.as_ref().unwrap().is_leader
        })
        .await,
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
    let lease = "test:v1:fleet:mock:processors:lease";
    let snapshot = "test:v1:fleet:mock:processors:snapshot";
    redis
        .command(&["SET", lease, "someone-else", "PX", "600000"])
        .unwrap();
    let a = Instance::start(&kafka.client_config(), redis_config(&redis));

    // A snapshot claiming partition 0 is the slow one, in several broken forms.
    let lie = |version: u32, group: &str| {
        let mut payload = wire::SnapshotPayload::new(
            group,
            "someone-else",
            &[kafka_smart_producer::TopicLag::new(
                TOPIC,
                (0..8)
                    .map(|p| {
                        kafka_smart_producer::PartitionLag::from_lag(
                            p,
                            if p == 0 { 9000 } else { 0 },
                        )
                    })
                    .collect(),
                std::time::SystemTime::now(),
            )],
            &|_| None,
        );
        payload.version = version;
        payload.encode()
    };
    let good = lie(1, GROUP);
    let broken = [
        "not json at all".to_owned(),
        good[..good.len() / 2].to_owned(),
        lie(2, GROUP),
        lie(1, "another-group"),
        good.replace("\"partition\":1,", "\"partition\":-1,"),
    ];
    for (i, payload) in broken.iter().enumerate() {
        redis.set(snapshot, payload).unwrap();
        let rejected = a.status().fleet.unwrap().rejected_payloads;
        assert!(
            until(Duration::from_secs(5), || {
                a.status().fleet.unwrap().rejected_payloads > rejected
            })
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
    redis.set(snapshot, &lie(1, GROUP)).unwrap();
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
    assert!(a.status().fleet.unwrap().adopted >= 1);
}
