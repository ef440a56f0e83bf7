//! The smart producer end to end on librdkafka's embedded mock cluster.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use kafka_smart_producer::AsyncSmartProducer;
use kafka_smart_producer::monitor::{MonitorConfig, MonitorError};
use kafka_smart_producer::rdkafka::ClientConfig;
use kafka_smart_producer::rdkafka::producer::{FutureProducer, FutureRecord};
use kafka_smart_producer::routing::{Fallback, KeyOrderConfig, Partitioner, Route, RouterConfig};
use ksp_core::testing::ManualCollector;
use ksp_testkit::{LagScenario, MockKafka};

const GROUP: &str = "processors";
const TOPIC: &str = "orders";

/// A mock cluster with an 8-partition topic whose partition `slow` lags 5000 messages.
async fn cluster_with_slow_partition(slow: usize) -> MockKafka {
    common::cluster_with_slow_partition(3, TOPIC, GROUP, slow).await
}

async fn smart_producer(kafka: &ClientConfig) -> AsyncSmartProducer {
    let producer = AsyncSmartProducer::builder(kafka.clone())
        .consumer_group(GROUP)
        .topics([TOPIC])
        .monitor(MonitorConfig::default().with_refresh_interval(Duration::from_secs(60)))
        .build()
        .unwrap();
    producer.refresh_health().await.unwrap();
    producer
}

/// Produces `count` keyless 100-byte messages in 20 waves, 15 ms apart (longer than the
/// 10 ms sticky linger, so each wave may go elsewhere); returns messages per partition.
async fn produce_keyless(producer: &AsyncSmartProducer, count: usize) -> BTreeMap<i32, usize> {
    let payload = [7u8; 100];
    let mut landed = BTreeMap::new();
    for wave in 0..20 {
        let size = count / 20 + usize::from(wave < count % 20);
        let sends = (0..size)
            .map(|_| producer.produce(FutureRecord::<(), _>::to(TOPIC).payload(&payload[..])));
        for delivery in join_all(sends).await {
            *landed.entry(delivery.unwrap().partition).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    landed
}

/// Messages per partition of the topic, read back from the cluster.
async fn on_topic(kafka: &ClientConfig) -> BTreeMap<i32, usize> {
    let consumed = ksp_testkit::read_topic(kafka, TOPIC, Duration::from_secs(30))
        .await
        .unwrap();
    let mut counts = BTreeMap::new();
    for m in consumed {
        *counts.entry(m.partition).or_default() += 1;
    }
    counts
}

/// What the delivery reports said landed is what the topic holds beyond `before`.
fn assert_topic_holds(
    before: &BTreeMap<i32, usize>,
    after: &BTreeMap<i32, usize>,
    landed: &BTreeMap<i32, usize>,
) {
    for (p, &n) in after {
        let added = n - before.get(p).copied().unwrap_or(0);
        assert_eq!(
            added,
            landed.get(p).copied().unwrap_or(0),
            "partition {p}: {after:?} vs {landed:?}"
        );
    }
}

async fn produce_key(producer: &AsyncSmartProducer, key: &str) -> (i32, Route) {
    let d = producer
        .produce(FutureRecord::to(TOPIC).key(key).payload("v"))
        .await
        .unwrap();
    (d.partition, d.route)
}

/// Keys whose home (librdkafka's default partitioner, 8 partitions) is `home`.
fn keys_with_home(home: i32, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("customer-{i}"))
        .filter(|k| Partitioner::ConsistentRandom.home(Some(k.as_bytes()), 8) == Some(home))
        .take(count)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_messages_stop_landing_on_a_lagging_partition() {
    common::init_tracing();
    let kafka = cluster_with_slow_partition(3).await;
    let producer = smart_producer(&kafka.client_config()).await;
    assert_eq!(
        producer.healthy_partitions(TOPIC).unwrap(),
        [0, 1, 2, 4, 5, 6, 7]
    );

    let landed = produce_keyless(&producer, 4000).await;
    assert_eq!(landed.get(&3), None, "{landed:?}");
    // 20 waves, each on one of the 7 others: most of them get some.
    assert!(landed.len() >= 4, "{landed:?}");

    // The same load through a plain producer does land there.
    let plain = AsyncSmartProducer::builder(kafka.client_config())
        .smart_enabled(false)
        .build()
        .unwrap();
    let mut plain_on_slow = 0;
    for _ in 0..5 {
        plain_on_slow += produce_keyless(&plain, 400)
            .await
            .get(&3)
            .copied()
            .unwrap_or(0);
    }
    assert!(
        plain_on_slow > 0,
        "librdkafka's sticky partitioner never picked partition 3"
    );
    producer.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_messages_stay_home_while_home_is_healthy() {
    common::init_tracing();
    let kafka = MockKafka::start(3).unwrap();
    kafka.create_topic(TOPIC, 8).unwrap();
    LagScenario::new(TOPIC, 8)
        .apply(&kafka.client_config(), GROUP)
        .await
        .unwrap();
    let producer = smart_producer(&kafka.client_config()).await;
    let plain: FutureProducer = kafka.client_config().create().unwrap();
    for i in 0..200 {
        let key = format!("user-{i}");
        let (smart, route) = produce_key(&producer, &key).await;
        assert_eq!(route, Route::Home);
        let plain = plain
            .send(
                FutureRecord::to(TOPIC).key(&key).payload("v"),
                Duration::from_secs(5),
            )
            .await
            .unwrap()
            .partition;
        // Home is exactly where librdkafka itself puts the key.
        assert_eq!(smart, plain, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_messages_move_when_home_lags_and_keep_their_detour() {
    common::init_tracing();
    let kafka = cluster_with_slow_partition(2).await;
    let producer = smart_producer(&kafka.client_config()).await;
    let keys = keys_with_home(2, 30);
    let mut detours = BTreeMap::new();
    for key in &keys {
        let (partition, route) = produce_key(&producer, key).await;
        assert_eq!(route, Route::Moved, "{key}");
        assert_ne!(partition, 2, "{key}");
        detours.insert(key.clone(), partition);
        // Again: same detour.
        assert_eq!(produce_key(&producer, key).await, (partition, Route::Moved));
    }
    // Moved keys spread over several healthy partitions, not all onto one.
    let distinct: std::collections::BTreeSet<_> = detours.values().collect();
    assert!(distinct.len() >= 3, "{detours:?}");

    // Another partition starts lagging: keys whose detour is still healthy stay on it.
    let newly_slow = *detours.values().next().unwrap();
    LagScenario::new(TOPIC, 8)
        .lag(newly_slow as usize, 5000)
        .apply(&kafka.client_config(), GROUP)
        .await
        .unwrap();
    // Partition 2 is still behind: the scenario above only produced to the others.
    producer.refresh_health().await.unwrap();
    let healthy = producer.healthy_partitions(TOPIC).unwrap();
    assert!(
        !healthy.contains(&2) && !healthy.contains(&newly_slow),
        "{healthy:?}"
    );
    for (key, &detour) in &detours {
        let (partition, route) = produce_key(&producer, key).await;
        assert_eq!(route, Route::Moved);
        if detour == newly_slow {
            assert!(healthy.contains(&partition), "{key}: {partition}");
        } else {
            assert_eq!(partition, detour, "{key} left a healthy detour");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_producers_move_a_key_to_the_same_partition() {
    common::init_tracing();
    let kafka = cluster_with_slow_partition(5).await;
    let first = smart_producer(&kafka.client_config()).await;
    let second = smart_producer(&kafka.client_config()).await;
    for key in keys_with_home(5, 40) {
        let a = produce_key(&first, &key).await;
        let b = produce_key(&second, &key).await;
        assert_eq!(a.1, Route::Moved);
        assert_eq!(a, b, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_partition_always_wins() {
    common::init_tracing();
    let kafka = cluster_with_slow_partition(3).await;
    let producer = smart_producer(&kafka.client_config()).await;
    let d = producer
        .produce(FutureRecord::to(TOPIC).partition(3).key("k").payload("v"))
        .await
        .unwrap();
    assert_eq!((d.partition, d.route), (3, Route::Explicit));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_routing_disabled_is_a_plain_producer() {
    common::init_tracing();
    let kafka = cluster_with_slow_partition(3).await;
    let producer = AsyncSmartProducer::builder(kafka.client_config())
        .smart_enabled(false)
        .build()
        .unwrap();
    assert!(producer.monitor_stats().is_none());
    assert!(producer.health().is_empty());
    assert!(matches!(
        producer.refresh_health().await,
        Err(MonitorError::Disabled)
    ));
    // A key whose home is the slow partition still goes there.
    let key = &keys_with_home(3, 1)[0];
    assert_eq!(
        produce_key(&producer, key).await,
        (3, Route::Fallback(Fallback::Disabled))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_health_librdkafka_decides_and_every_message_is_delivered() {
    common::init_tracing();
    let kafka = MockKafka::start(3).unwrap();
    kafka.create_topic(TOPIC, 8).unwrap();
    let collector = Arc::new(ManualCollector::new());
    collector.fail_with("lag source down");
    let producer = AsyncSmartProducer::builder(kafka.client_config())
        .consumer_group(GROUP)
        .topics([TOPIC])
        .collector(collector.clone())
        .build()
        .unwrap();
    assert!(producer.refresh_health().await.is_err());
    assert_eq!(producer.healthy_partitions(TOPIC), None);

    let key = &keys_with_home(6, 1)[0];
    assert_eq!(
        produce_key(&producer, key).await,
        (6, Route::Fallback(Fallback::NoHealth))
    );
    let before = on_topic(&kafka.client_config()).await;
    let landed = produce_keyless(&producer, 2000).await;
    assert_eq!(landed.values().sum::<usize>(), 2000);
    // Not by construction: the topic read back holds exactly these, where the reports said.
    assert_topic_holds(&before, &on_topic(&kafka.client_config()).await, &landed);
    assert_eq!(
        producer.monitor_stats().unwrap().last_error.as_deref(),
        Some("manual collector: lag source down")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_health_is_ignored() {
    let (_kafka, collector, producer) = partition_0_lagging(RouterConfig::default()).await;
    collector.fail_with("coordinator unreachable");
    let stale = common::eventually(Duration::from_secs(5), || async {
        producer.topic_summary(TOPIC).filter(|s| s.stale)
    })
    .await
    .expect("health turns stale");
    assert_eq!(stale.partitions[0].lag, Some(5000));
    sends_fall_back_for_stale_health(&producer).await;
}

/// No partition is reported healthy, and a keyless send goes to librdkafka for stale health.
async fn sends_fall_back_for_stale_health(producer: &AsyncSmartProducer) {
    assert_eq!(producer.healthy_partitions(TOPIC), None);
    let d = producer
        .produce(FutureRecord::<(), _>::to(TOPIC).payload("v"))
        .await
        .unwrap();
    assert_eq!(d.route, Route::Fallback(Fallback::Stale));
}

/// Regression (the soak's one-minute run in CI: health routed by 22.5 s after it was read,
/// against a `max_staleness` of 1 s): only the monitor's task marked health stale, so while
/// something blocked the runtime's threads, sends kept routing by health of any age. Here the
/// runtime's only thread is blocked past `max_staleness`; the monitor cannot run, and sends
/// must fall back all the same.
#[tokio::test(flavor = "current_thread")]
async fn health_was_routed_by_past_max_staleness_while_the_runtime_was_blocked() {
    let (_kafka, producer) = blocked_past_max_staleness(RouterConfig::default()).await;
    let keyless = producer.decide(&FutureRecord::<(), _>::to(TOPIC).payload("v"));
    assert_eq!(keyless.route, Route::Fallback(Fallback::Stale));
    let health = producer.health();
    let topic = health.topic(TOPIC).unwrap();
    assert!(
        !topic.is_marked_stale(),
        "the monitor ran: this test no longer blocks it"
    );
    assert!(topic.is_stale(), "past max_staleness, health is stale");
    // Keys whose home is the lagging partition would otherwise move.
    for key in 0..32u32 {
        let key = key.to_string();
        let keyed = producer.decide(&FutureRecord::to(TOPIC).key(&key).payload("v"));
        assert_eq!(keyed.route, Route::Fallback(Fallback::Stale), "key {key}");
    }
    assert!(producer.topic_summary(TOPIC).unwrap().stale);
    // And the send itself.
    sends_fall_back_for_stale_health(&producer).await;
}

/// The same under strict key order: keys keep their placement and say it is stale (a key
/// whose move is still draining waits for it, whatever the health's age).
#[tokio::test(flavor = "current_thread")]
async fn strict_keys_were_routed_by_health_past_max_staleness_while_the_runtime_was_blocked() {
    let strict = RouterConfig::default().with_key_order(KeyOrderConfig::strict());
    let (_kafka, producer) = blocked_past_max_staleness(strict).await;
    let mut stale = 0;
    for key in 0..32u32 {
        let key = key.to_string();
        let keyed = producer.decide(&FutureRecord::to(TOPIC).key(&key).payload("v"));
        match keyed.route {
            Route::Fallback(Fallback::Stale) => stale += 1,
            Route::Waiting => {}
            route => panic!("key {key} routed {route:?} by health past max_staleness"),
        }
    }
    assert!(stale > 16, "{stale} of 32 keys");
    let health = producer.health();
    assert!(!health.topic(TOPIC).unwrap().is_marked_stale());
}

/// `max_staleness` of [`partition_0_lagging`].
const MAX_STALENESS: Duration = Duration::from_millis(300);

/// A producer over 4 partitions whose health, read, says partition 0 lags (refresh every
/// 100 ms, `max_staleness` 300 ms), with the collector that reports it.
async fn partition_0_lagging(
    router: RouterConfig,
) -> (MockKafka, Arc<ManualCollector>, AsyncSmartProducer) {
    common::init_tracing();
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags(TOPIC, &[5000, 0, 0, 0]);
    let producer = AsyncSmartProducer::builder(kafka.client_config())
        .consumer_group(GROUP)
        .topics([TOPIC])
        .collector(collector.clone())
        .monitor(
            MonitorConfig::default()
                .with_refresh_interval(Duration::from_millis(100))
                .with_max_staleness(MAX_STALENESS),
        )
        .router(router)
        .build()
        .unwrap();
    producer.refresh_health().await.unwrap();
    assert_eq!(producer.healthy_partitions(TOPIC).unwrap(), [1, 2, 3]);
    (kafka, collector, producer)
}

/// [`partition_0_lagging`], then its runtime's only thread blocked past `max_staleness`, so
/// that its monitor could not mark the health stale.
async fn blocked_past_max_staleness(router: RouterConfig) -> (MockKafka, AsyncSmartProducer) {
    let (kafka, _collector, producer) = partition_0_lagging(router).await;
    let read = std::time::Instant::now();
    // A blocking call on the runtime's one thread: the monitor's task does not run.
    std::thread::sleep(MAX_STALENESS + Duration::from_millis(100));
    assert!(read.elapsed() > MAX_STALENESS);
    (kafka, producer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_the_producer_does_not_know_yet_falls_back_instead_of_failing() {
    common::init_tracing();
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    let collector = Arc::new(ManualCollector::new());
    // The collector already sees 8 partitions (say, just added); only the new ones are healthy.
    collector.set_lags(TOPIC, &[5000, 5000, 5000, 5000, 0, 0, 0, 0]);
    let producer = AsyncSmartProducer::builder(kafka.client_config())
        .consumer_group(GROUP)
        .topics([TOPIC])
        .collector(collector)
        .build()
        .unwrap();
    producer.refresh_health().await.unwrap();
    // Let the producer learn the topic's real layout first.
    producer
        .produce(
            FutureRecord::<(), _>::to(TOPIC)
                .partition(0)
                .payload("warm-up"),
        )
        .await
        .unwrap();
    let d = producer
        .produce(FutureRecord::<(), _>::to(TOPIC).payload("v"))
        .await
        .unwrap();
    assert_eq!(
        d.route,
        Route::Fallback(Fallback::PartitionUnknownToProducer)
    );
    assert!((0..4).contains(&d.partition));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_produce_resolves_even_when_it_fails() {
    common::init_tracing();
    let kafka = cluster_with_slow_partition(1).await;
    let mut config = kafka.client_config();
    config.set("message.timeout.ms", "2000");
    let producer = smart_producer(&config).await;
    let before = on_topic(&config).await;
    let landed = produce_keyless(&producer, 5000).await;
    assert_eq!(landed.values().sum::<usize>(), 5000);
    assert_topic_holds(&before, &on_topic(&config).await, &landed);

    // A partition that does not exist: the error hands the message back at once.
    let err = producer
        .produce(
            FutureRecord::to(TOPIC)
                .partition(99)
                .key("k")
                .payload("payload"),
        )
        .await
        .unwrap_err();
    let message = err.message().expect("the message is handed back");
    use kafka_smart_producer::rdkafka::Message;
    assert_eq!(message.payload(), Some(&b"payload"[..]));
    assert_eq!(message.key(), Some(&b"k"[..]));
    assert_eq!(err.route(), Route::Explicit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_summary_reports_lag_score_and_age() {
    common::init_tracing();
    let kafka = cluster_with_slow_partition(4).await;
    let producer = smart_producer(&kafka.client_config()).await;
    let summary = producer.topic_summary(TOPIC).unwrap();
    assert!(!summary.stale);
    assert!(summary.age < Duration::from_secs(30));
    assert_eq!(summary.total_lag, 5000);
    let slow = &summary.partitions[4];
    assert_eq!(
        (slow.lag, slow.score, slow.healthy, slow.routable),
        (Some(5000), 0.0, false, false)
    );
    let fine = &summary.partitions[0];
    assert_eq!((fine.lag, fine.score, fine.healthy), (Some(0), 1.0, true));
    assert_eq!(producer.health_summary().len(), 1);
}
