//! Closing, dropping, a monitor that fails, and secrets.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kafka_smart_producer::AsyncSmartProducer;
use kafka_smart_producer::monitor::{KafkaLagCollector, MonitorConfig, MonitorStatus};
use kafka_smart_producer::rdkafka::producer::{FutureRecord, Producer};
use kafka_smart_producer::routing::{Fallback, Route};
use ksp_core::testing::ManualCollector;
use ksp_testkit::{LagScenario, MockKafka, read_topic};

const GROUP: &str = "processors";
const TOPIC: &str = "orders";

async fn cluster(rtt: Duration) -> MockKafka {
    let kafka = MockKafka::start(1).unwrap();
    LagScenario::new(TOPIC, 4)
        .create(&kafka, GROUP)
        .await
        .unwrap();
    kafka.cluster().broker_round_trip_time(1, rtt).unwrap();
    kafka
}

fn smart(kafka: &MockKafka) -> AsyncSmartProducer {
    AsyncSmartProducer::builder(kafka.client_config())
        .consumer_group(GROUP)
        .topics([TOPIC])
        .build()
        .unwrap()
}

/// Spawns `count` sends that are still in flight when this returns (the broker is slow).
fn spawn_sends(producer: &AsyncSmartProducer, count: usize) -> Vec<tokio::task::JoinHandle<bool>> {
    (0..count)
        .map(|i| {
            let producer = producer.clone();
            tokio::spawn(async move {
                let payload = format!("in-flight-{i}");
                producer
                    .produce(FutureRecord::<(), _>::to(TOPIC).payload(&payload))
                    .await
                    .is_ok()
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_stops_the_monitor_and_resolves_every_send_in_flight() {
    common::init_tracing();
    let kafka = cluster(Duration::from_millis(300)).await;
    let producer = smart(&kafka);
    producer.refresh_health().await.unwrap();
    let sends = spawn_sends(&producer, 500);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(producer.inner().in_flight_count() > 0);

    producer.close(Duration::from_secs(10)).await.unwrap();
    assert_eq!(producer.monitor_status(), Some(MonitorStatus::Stopped));
    // Health is gone with the monitor: anything sent afterwards falls back.
    assert!(producer.health().is_empty());
    let results = join_all(sends).await;
    assert!(
        results.into_iter().all(|r| r.unwrap()),
        "every send in flight was delivered"
    );
    let after = producer
        .produce(FutureRecord::<(), _>::to(TOPIC).payload("after close"))
        .await
        .unwrap();
    assert_eq!(after.route, Route::Fallback(Fallback::NoHealth));
    let consumed = read_topic(&kafka.client_config(), TOPIC, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(consumed.len(), 40 + 500 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_without_close_loses_nothing_and_does_not_block() {
    common::init_tracing();
    let kafka = cluster(Duration::from_millis(300)).await;
    let producer = smart(&kafka);
    let sends = spawn_sends(&producer, 300);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    drop(producer);
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    // The sends keep the producer alive until they are done.
    let results = join_all(sends).await;
    assert!(results.into_iter().all(|r| r.unwrap()));

    // Dropping the last handle with nothing in flight: the rdkafka producer's own drop (a
    // purge and up to 500 ms of flushing) runs on a blocking thread, not here.
    let producer = smart(&kafka);
    producer.refresh_health().await.unwrap();
    let started = Instant::now();
    drop(producer);
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
}

/// `produce` futures dropped right after their message was enqueued (the caller timed out, a
/// `select!` took another branch): every message is still delivered exactly once, and the
/// queue's room comes back in full, through the hand-off that keeps waiting for each report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_produce_futures_mid_flight_loses_nothing() {
    common::init_tracing();
    let kafka = cluster(Duration::from_millis(300)).await;
    let mut config = kafka.client_config();
    config.set("queue.buffering.max.messages", "1000");
    let producer = AsyncSmartProducer::builder(config)
        .smart_enabled(false)
        .build()
        .unwrap();
    let payloads: Vec<String> = (0..300).map(|i| format!("dropped-{i}")).collect();
    for payload in &payloads {
        let send = producer.produce(FutureRecord::<(), _>::to(TOPIC).payload(payload));
        tokio::pin!(send);
        // One poll enqueues it (there is room); its delivery is 300 ms away.
        assert!(futures::poll!(&mut send).is_pending());
    }
    // Every future is gone; the messages are in flight.
    assert!(producer.queue_room().unwrap() <= 1000 - 300);
    let back = common::eventually(Duration::from_secs(15), || {
        let room = producer.queue_room();
        async move { (room == Some(1000)).then_some(()) }
    })
    .await;
    assert!(back.is_some(), "the room of every dropped send comes back");
    let consumed = read_topic(&kafka.client_config(), TOPIC, Duration::from_secs(30))
        .await
        .unwrap();
    for payload in &payloads {
        let copies = consumed
            .iter()
            .filter(|m| m.payload == payload.as_bytes())
            .count();
        assert_eq!(copies, 1, "{payload}");
    }
}

#[test]
fn dropping_outside_any_runtime_does_not_panic() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (kafka, producer) = runtime.block_on(async {
        let kafka = cluster(Duration::ZERO).await;
        let producer = smart(&kafka);
        producer.refresh_health().await.unwrap();
        producer
            .produce(FutureRecord::<(), _>::to(TOPIC).payload("x"))
            .await
            .unwrap();
        (kafka, producer)
    });
    drop(runtime);
    // No runtime any more: the monitor's task is gone; the producer drops in place.
    assert_eq!(producer.monitor_status(), Some(MonitorStatus::Stopped));
    drop(producer);
    drop(kafka);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_keeps_failing_leaves_routing_on_the_fallback_and_says_why() {
    common::init_tracing();
    let kafka = cluster(Duration::ZERO).await;
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags(TOPIC, &[0, 5000, 0, 0]);
    let producer = AsyncSmartProducer::builder(kafka.client_config())
        .consumer_group(GROUP)
        .topics([TOPIC])
        .collector(collector.clone())
        .monitor(
            MonitorConfig::default()
                .with_refresh_interval(Duration::from_millis(100))
                .with_max_staleness(Duration::from_millis(400)),
        )
        .build()
        .unwrap();
    producer.refresh_health().await.unwrap();
    collector.fail_with("lag source unreachable");
    let routed = common::eventually(Duration::from_secs(5), || async {
        let d = producer
            .produce(FutureRecord::<(), _>::to(TOPIC).payload("x"))
            .await
            .unwrap();
        (d.route == Route::Fallback(Fallback::Stale)).then_some(d)
    })
    .await;
    assert!(routed.is_some(), "routing falls back once health is stale");
    assert_eq!(producer.monitor_status(), Some(MonitorStatus::Running));
    let stats = producer.monitor_stats().unwrap();
    assert!(stats.consecutive_failures >= 2, "{stats:?}");
    assert_eq!(
        stats.last_error.as_deref(),
        Some("manual collector: lag source unreachable")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_debug_display_or_logs() {
    let logs = common::capture_logs();
    const SECRET: &str = "hunter2-do-not-print";
    let kafka = cluster(Duration::ZERO).await;
    let mut config = kafka.client_config();
    config
        .set("sasl.username", "alice")
        .set("sasl.password", SECRET)
        .set("debug", "conf,generic,broker");

    let builder = AsyncSmartProducer::builder(config.clone())
        .consumer_group(GROUP)
        .topics([TOPIC]);
    let builder_debug = format!("{builder:?}");
    assert!(builder_debug.contains("alice"), "{builder_debug}");
    let producer = builder.build().unwrap();
    producer.refresh_health().await.unwrap();
    producer
        .produce(FutureRecord::<(), _>::to(TOPIC).payload("x"))
        .await
        .unwrap();
    let collector = KafkaLagCollector::builder(&config).build().unwrap();

    // An error, and its Display, with the secret configured.
    let err = producer
        .produce(FutureRecord::<(), _>::to(TOPIC).partition(99).payload("x"))
        .await
        .unwrap_err();
    let bad = AsyncSmartProducer::builder(config.clone())
        .consumer_group("")
        .topics([TOPIC])
        .build()
        .unwrap_err();

    let outputs = [
        builder_debug,
        format!("{producer:?}"),
        format!("{collector:?}"),
        format!("{:?}", collector.reader_config()),
        format!("{err:?} {err}"),
        format!("{bad:?} {bad}"),
    ];
    for output in &outputs {
        assert!(!output.contains(SECRET), "{output}");
    }
    producer.close(Duration::from_secs(5)).await.unwrap();
    // librdkafka's own debug output (conf dump included) went through tracing too.
    let logs = logs.text();
    assert!(
        logs.contains("sasl.password"),
        "librdkafka's conf dump was captured"
    );
    assert!(!logs.contains(SECRET), "a log line shows the password");
}
