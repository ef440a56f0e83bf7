//! The async and the blocking producer make the same decisions, enforce the same queue bound,
//! report the same routes and count the same metrics: each test body runs against both.

mod common;

use std::sync::Arc;
use std::time::Duration;

use kafka_smart_producer::blocking::SmartProducer;
use kafka_smart_producer::monitor::MonitorConfig;
use kafka_smart_producer::rdkafka::ClientConfig;
use kafka_smart_producer::rdkafka::producer::{BaseRecord, FutureRecord};
use kafka_smart_producer::routing::{Fallback, Partitioner, Route};
use kafka_smart_producer::{AsyncSmartProducer, AsyncSmartProducerBuilder, Delivery, ProduceError};
use ksp_core::testing::ManualCollector;
use ksp_testkit::MockKafka;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

const GROUP: &str = "processors";
const TOPIC: &str = "orders";
const SLOW: i32 = 3;

/// One producer of either flavour, behind one interface.
#[derive(Clone)]
enum Producer {
    Async(AsyncSmartProducer),
    Blocking(Arc<SmartProducer>),
}

impl Producer {
    /// Builds `builder` as `flavour`, its metrics going to a recorder of the test's own.
    fn build(flavour: &str, builder: AsyncSmartProducerBuilder) -> (Self, Snapshotter) {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let producer = metrics::with_local_recorder(&recorder, || match flavour {
            "async" => Self::Async(builder.build().unwrap()),
            _ => Self::Blocking(Arc::new(builder.build_blocking().unwrap())),
        });
        (producer, snapshotter)
    }

    /// Sends one message and waits for where it landed. The blocking producer sends from a
    /// plain thread (not one of a Tokio runtime's), as its users do.
    async fn send(
        &self,
        key: Option<&str>,
        payload: &str,
        partition: Option<i32>,
    ) -> Result<Delivery, ProduceError> {
        match self {
            Self::Async(p) => {
                let mut record = FutureRecord::<str, str>::to(TOPIC).payload(payload);
                record.key = key;
                record.partition = partition;
                p.produce(record).await
            }
            Self::Blocking(p) => {
                let (p, key, payload) = (p.clone(), key.map(str::to_owned), payload.to_owned());
                let (tx, rx) = tokio::sync::oneshot::channel();
                let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || {
                    let mut record = BaseRecord::<str, str>::to(TOPIC).payload(&payload);
                    record.key = key.as_deref();
                    record.partition = partition;
                    let sent = p.send(record, move |outcome| {
                        let _ = tx.send(outcome);
                    });
                    let _ = sent_tx.send(sent);
                });
                sent_rx.await.unwrap()?;
                rx.await.expect("every accepted send's callback runs")
            }
        }
    }

    async fn refresh(&self) {
        match self {
            Self::Async(p) => {
                p.refresh_health().await.unwrap();
            }
            Self::Blocking(p) => {
                let p = p.clone();
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || tx.send(p.refresh_health().map(drop)));
                rx.await.unwrap().unwrap();
            }
        }
    }

    async fn close(self) {
        match self {
            Self::Async(p) => p.close(Duration::from_secs(5)).await.unwrap(),
            Self::Blocking(p) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || tx.send(p.close(Duration::from_secs(5))));
                rx.await.unwrap().unwrap();
            }
        }
    }
}

/// Runs the body against the async producer and against the blocking one.
macro_rules! for_both {
    ($(#[$meta:meta])* async fn $name:ident($flavour:ident: &str) $body:block) => {
        $(#[$meta])*
        mod $name {
            use super::*;

            async fn body($flavour: &str) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn async_producer() {
                common::init_tracing();
                body("async").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn blocking_producer() {
                common::init_tracing();
                body("blocking").await;
            }
        }
    };
}

async fn cluster() -> MockKafka {
    common::cluster_with_slow_partition(1, TOPIC, GROUP, SLOW as usize).await
}

fn smart(kafka: ClientConfig) -> AsyncSmartProducerBuilder {
    AsyncSmartProducer::builder(kafka)
        .consumer_group(GROUP)
        .topics([TOPIC])
        .monitor(MonitorConfig::default().with_refresh_interval(Duration::from_secs(60)))
}

fn key_homed_on(home: i32) -> String {
    (0..)
        .map(|i| format!("customer-{i}"))
        .find(|k| Partitioner::ConsistentRandom.home(Some(k.as_bytes()), 8) == Some(home))
        .unwrap()
}

/// Counters by name and labels; a snapshot resets them, so take one and look it up.
type Counters = Vec<(metrics_util::CompositeKey, DebugValue)>;

fn counters(snapshotter: &Snapshotter) -> Counters {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect()
}

fn counter(counters: &Counters, name: &str, labels: &[(&str, &str)]) -> u64 {
    counters
        .iter()
        .filter(|(key, _)| {
            let key = key.key();
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(_, value)| match value {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum()
}

for_both! {
/// Keyless messages avoid the slow partition, a key homed there moves (and keeps its detour),
/// an explicit partition wins; the routes and the route counters say so.
async fn the_same_decisions_and_the_same_counts(flavour: &str) {
    let kafka = cluster().await;
    let (producer, metrics) = Producer::build(flavour, smart(kafka.client_config()));
    producer.refresh().await;
    for _ in 0..100 {
        let d = producer.send(None, "x", None).await.unwrap();
        assert_eq!(d.route, Route::Sticky);
        assert_ne!(d.partition, SLOW);
    }
    let key = key_homed_on(SLOW);
    let first = producer.send(Some(&key), "k", None).await.unwrap();
    assert_eq!(first.route, Route::Moved);
    assert_ne!(first.partition, SLOW);
    for _ in 0..9 {
        let d = producer.send(Some(&key), "k", None).await.unwrap();
        assert_eq!((d.partition, d.route), (first.partition, Route::Moved));
    }
    let home = key_homed_on(1);
    let d = producer.send(Some(&home), "h", None).await.unwrap();
    assert_eq!((d.partition, d.route), (1, Route::Home));
    let d = producer.send(None, "e", Some(SLOW)).await.unwrap();
    assert_eq!((d.partition, d.route), (SLOW, Route::Explicit));

    let metrics = counters(&metrics);
    let count = |route, fallback| {
        counter(&metrics, "ksp_messages_total", &[("route", route), ("fallback", fallback)])
    };
    assert_eq!(count("sticky", ""), 100);
    assert_eq!(count("moved", ""), 10);
    assert_eq!(count("home", ""), 1);
    assert_eq!(count("explicit", ""), 1);
    assert_eq!(counter(&metrics, "ksp_key_cache_total", &[("result", "miss")]), 1);
    assert_eq!(counter(&metrics, "ksp_key_cache_total", &[("result", "hit")]), 9);
    producer.close().await;
}
}

for_both! {
/// The local queue bound is enforced here, not only by librdkafka: a send that finds no room
/// waits up to `queue_timeout`, then fails with the message handed back.
async fn the_same_queue_bound(flavour: &str) {
    let kafka = cluster().await;
    kafka
        .cluster()
        .broker_round_trip_time(1, Duration::from_millis(400))
        .unwrap();
    let mut config = kafka.client_config();
    config.set("queue.buffering.max.messages", "1");
    for (timeout, refused) in [(Duration::ZERO, true), (Duration::from_secs(5), false)] {
        let (producer, _) = Producer::build(
            flavour,
            smart(config.clone()).smart_enabled(false).queue_timeout(timeout),
        );
        let first = {
            let producer = producer.clone();
            tokio::spawn(async move { producer.send(None, "first", None).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = producer.send(None, "second", None).await;
        match second {
            Err(e) => {
                assert!(refused, "{timeout:?}: {e}");
                assert!(e.is_queue_full(), "{e}");
                let message = e.into_message().unwrap();
                assert_eq!(
                    kafka_smart_producer::rdkafka::Message::payload(&message),
                    Some(&b"second"[..])
                );
            }
            Ok(d) => assert!(!refused, "{timeout:?}: delivered {d:?}"),
        }
        first.await.unwrap().unwrap();
        producer.close().await;
    }
}
}

for_both! {
/// When the monitor knows partitions librdkafka does not know yet, the message is re-sent
/// without a partition; the route reported (returned, and in the delivery) says so.
async fn the_same_route_after_the_unknown_partition_retry(flavour: &str) {
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags(TOPIC, &[5000, 5000, 5000, 5000, 0, 0, 0, 0]);
    let (producer, _) = Producer::build(
        flavour,
        smart(kafka.client_config()).collector(collector.clone()),
    );
    producer.refresh().await;
    // Let librdkafka learn the topic's real layout first.
    producer.send(None, "warm-up", Some(0)).await.unwrap();
    let d = producer.send(None, "v", None).await.unwrap();
    assert_eq!(d.route, Route::Fallback(Fallback::PartitionUnknownToProducer));
    assert!((0..4).contains(&d.partition), "{d:?}");
    producer.close().await;
}
}

for_both! {
/// Under strict key order a keyed message goes where the key is placed or nowhere: when
/// librdkafka does not know that partition (and does not learn it from fresh metadata), the
/// send is refused with the message handed back, instead of being re-sent where librdkafka's
/// partitioner would put the key (around its barriers).
async fn strict_key_order_refuses_a_partition_librdkafka_does_not_know(flavour: &str) {
    use kafka_smart_producer::rdkafka::error::RDKafkaErrorCode;
    use kafka_smart_producer::routing::{KeyOrderConfig, RouterConfig};
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags(TOPIC, &[0; 8]);
    let (producer, _) = Producer::build(
        flavour,
        smart(kafka.client_config())
            .collector(collector.clone())
            .router(RouterConfig::default().with_key_order(KeyOrderConfig::strict())),
    );
    producer.refresh().await;
    producer.send(None, "warm-up", Some(0)).await.unwrap();
    let known = key_homed_on(1);
    let d = producer.send(Some(&known), "v", None).await.unwrap();
    assert_eq!((d.partition, d.route), (1, Route::Home));
    let unknown = key_homed_on(6);
    let e = producer.send(Some(&unknown), "v", None).await.unwrap_err();
    assert_eq!(
        e.error().rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownPartition),
        "{e}"
    );
    producer.close().await;
}
}

for_both! {
/// librdkafka's statistics reach the builder's callback: the topic's batches (what the
/// overhead bench reads to compare batch fill) and the messages sent.
async fn statistics_reach_the_callback(flavour: &str) {
    let kafka = cluster().await;
    let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut config = kafka.client_config();
    config.set("statistics.interval.ms", "100");
    let builder = {
        let batches = batches.clone();
        smart(config).statistics(move |stats| {
            if let Some(topic) = stats.topics.get(TOPIC) {
                batches.lock().unwrap().push((topic.batchcnt.sum, topic.batchcnt.cnt));
            }
        })
    };
    let (producer, _) = Producer::build(flavour, builder);
    producer.refresh().await;
    for i in 0..50 {
        producer.send(None, &format!("m{i}"), None).await.unwrap();
    }
    // Each report covers the interval since the previous one: the sums add up.
    let seen = common::eventually(Duration::from_secs(10), || {
        let (messages, batches) = batches
            .lock()
            .unwrap()
            .iter()
            .fold((0, 0), |(m, b), (sum, cnt)| (m + sum, b + cnt));
        async move { (messages >= 50).then_some((messages, batches)) }
    })
    .await;
    let (messages, batches) = seen.expect("statistics with the 50 messages' batches");
    assert_eq!(messages, 50, "messages in batches");
    assert!((1..=50).contains(&batches), "{batches} batches");
    producer.close().await;
}
}

/// A statistics callback without `statistics.interval.ms` would never be called: refused.
#[test]
fn a_statistics_callback_without_an_interval_is_refused() {
    let kafka = ClientConfig::new();
    let error = AsyncSmartProducer::builder(kafka)
        .consumer_group(GROUP)
        .topics([TOPIC])
        .statistics(|_| {})
        .validate()
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("statistics.interval.ms"), "{text}");
}

for_both! {
/// A statistics callback that panics runs on the thread that completes deliveries: the panic
/// is caught, and sends still resolve.
async fn a_panicking_statistics_callback_does_not_stop_deliveries(flavour: &str) {
    let kafka = cluster().await;
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut config = kafka.client_config();
    config.set("statistics.interval.ms", "50");
    let builder = {
        let calls = calls.clone();
        smart(config).statistics(move |_| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            panic!("a bug in the caller's statistics code");
        })
    };
    let (producer, _) = Producer::build(flavour, builder);
    producer.refresh().await;
    for round in 0..4 {
        for i in 0..10 {
            let sent = tokio::time::timeout(
                Duration::from_secs(10),
                producer.send(None, &format!("m{round}-{i}"), None),
            )
            .await;
            assert!(matches!(sent, Ok(Ok(_))), "round {round}: {sent:?}");
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert!(
        calls.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "the callback ran and panicked more than once"
    );
    producer.close().await;
}
}
