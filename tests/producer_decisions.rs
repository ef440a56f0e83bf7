//! When and over what the producer decides: after waiting for room, over the partition count
//! health was judged with, and never locking a partition out for want of a commit. On the
//! embedded cluster.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use kafka_smart_producer::AsyncSmartProducer;
use kafka_smart_producer::monitor::MonitorConfig;
use kafka_smart_producer::rdkafka::producer::FutureRecord;
use kafka_smart_producer::routing::{Partitioner, Route};
use ksp_core::PartitionLag;
use ksp_core::testing::ManualCollector;
use ksp_testkit::{LagScenario, MockKafka};

const GROUP: &str = "processors";
const TOPIC: &str = "orders";

fn quiet() -> MonitorConfig {
    MonitorConfig::default().with_refresh_interval(Duration::from_secs(60))
}

/// Regression: under the retained-backlog default, a partition the group never committed
/// (here: 5000 old messages a `latest` consumer will never read) looked hot next to committed
/// partitions at lag 0, so no message reached it, so it never got a commit, and it stayed hot
/// for ever. Now it counts only what arrives, so it is routable and receives its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_the_group_never_committed_is_not_starved() {
    common::init_tracing();
    let kafka = MockKafka::start(1).unwrap();
    LagScenario::new(TOPIC, 4)
        .uncommitted(3, 5000)
        .create(&kafka, GROUP)
        .await
        .unwrap();
    let producer = AsyncSmartProducer::builder(kafka.client_config())
        .consumer_group(GROUP)
        .topics([TOPIC])
        .monitor(quiet())
        .build()
        .unwrap();
    producer.refresh_health().await.unwrap();
    assert_eq!(producer.healthy_partitions(TOPIC).unwrap(), [0, 1, 2, 3]);
    let mut landed = BTreeMap::<i32, usize>::new();
    for _ in 0..40 {
        let sends =
            (0..10).map(|_| producer.produce(FutureRecord::<(), _>::to(TOPIC).payload("x")));
        for delivery in join_all(sends).await {
            *landed.entry(delivery.unwrap().partition).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(12)).await;
    }
    assert!(landed.get(&3).copied().unwrap_or(0) > 0, "{landed:?}");
    producer.close(Duration::from_secs(5)).await.unwrap();
}

/// Regression: `produce` decided the partition, then waited up to `queue_timeout` for room
/// (or a Redis round trip), so a message could go to a partition that had turned unhealthy
/// meanwhile. Now it decides once it has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_is_decided_after_waiting_for_room() {
    common::init_tracing();
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    // Slow deliveries, one message of room: the second send has to wait.
    kafka
        .cluster()
        .broker_round_trip_time(1, Duration::from_millis(500))
        .unwrap();
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags(TOPIC, &[0, 0, 0, 0]);
    let mut config = kafka.client_config();
    config.set("queue.buffering.max.messages", "1");
    let producer = AsyncSmartProducer::builder(config)
        .consumer_group(GROUP)
        .topics([TOPIC])
        .collector(collector.clone())
        .monitor(quiet())
        .build()
        .unwrap();
    producer.refresh_health().await.unwrap();
    let key = (0..)
        .map(|i| format!("account-{i}"))
        .find(|k| Partitioner::ConsistentRandom.home(Some(k.as_bytes()), 4) == Some(2))
        .unwrap();

    let first = tokio::spawn({
        let producer = producer.clone();
        async move {
            producer
                .produce(FutureRecord::<(), _>::to(TOPIC).payload("first"))
                .await
        }
    });
    common::eventually(Duration::from_secs(5), || {
        let full = producer.queue_room() == Some(0);
        async move { full.then_some(()) }
    })
    .await
    .expect("the first send holds the only place");
    let second = tokio::spawn({
        let producer = producer.clone();
        let key = key.clone();
        async move {
            producer
                .produce(FutureRecord::to(TOPIC).key(&key).payload("second"))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // While the second send waits, its key's home turns hot.
    collector.set_lags(TOPIC, &[0, 0, 9000, 0]);
    producer.refresh_health().await.unwrap();
    assert_eq!(producer.healthy_partitions(TOPIC).unwrap(), [0, 1, 3]);

    first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.route, Route::Moved, "{second:?}");
    assert_ne!(second.partition, 2, "{second:?}");
    producer.close(Duration::from_secs(5)).await.unwrap();
}

/// Regression: a key judged "home, healthy" over the snapshot's partition count was sent with
/// no partition, and librdkafka hashed it over its own (older) count, possibly onto an
/// unhealthy partition. Now the home is set explicitly: the partition that was judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_home_is_the_partition_health_was_judged_for() {
    common::init_tracing();
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    // The monitor already sees 6 partitions (say, just added); librdkafka still knows 4.
    // Partition 3 is hot; the others are fine.
    let collector = Arc::new(ManualCollector::new());
    collector.set_partitions(
        TOPIC,
        (0..6)
            .map(|p| PartitionLag::from_lag(p, if p == 3 { 9000 } else { 0 }))
            .collect(),
    );
    let producer = AsyncSmartProducer::builder(kafka.client_config())
        .consumer_group(GROUP)
        .topics([TOPIC])
        .collector(collector)
        .monitor(quiet())
        .build()
        .unwrap();
    producer.refresh_health().await.unwrap();
    // A key whose home over 6 partitions is 1 (healthy), over 4 partitions 3 (hot).
    let key = (0..)
        .map(|i| format!("account-{i}"))
        .find(|k| {
            let k = Some(k.as_bytes());
            Partitioner::ConsistentRandom.home(k, 6) == Some(1)
                && Partitioner::ConsistentRandom.home(k, 4) == Some(3)
        })
        .unwrap();
    let delivery = producer
        .produce(FutureRecord::to(TOPIC).key(&key).payload("v"))
        .await
        .unwrap();
    assert_eq!((delivery.partition, delivery.route), (1, Route::Home));
    producer.close(Duration::from_secs(5)).await.unwrap();
}
