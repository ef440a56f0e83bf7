//! What the library reports through the `metrics` facade and `tracing`.

mod common;

use std::time::Duration;

use kafka_smart_producer::AsyncSmartProducer;
use kafka_smart_producer::monitor::MonitorConfig;
use kafka_smart_producer::rdkafka::producer::FutureRecord;
use ksp_testkit::{LagScenario, MockKafka};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// A metric's name, labels and value.
type Metric = (String, Vec<(String, String)>, DebugValue);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_refreshes_and_health_are_counted() {
    let logs = common::capture_logs();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let kafka = MockKafka::start(1).unwrap();
    LagScenario::new("orders", 8)
        .lag(3, 5000)
        .create(&kafka, "processors")
        .await
        .unwrap();
    let producer = AsyncSmartProducer::builder(kafka.client_config())
        .consumer_group("processors")
        .topics(["orders"])
        .monitor(MonitorConfig::default().with_refresh_interval(Duration::from_secs(60)))
        .build()
        .unwrap();
    producer.refresh_health().await.unwrap();
    for i in 0..40 {
        producer
            .produce(FutureRecord::<(), _>::to("orders").payload("x"))
            .await
            .unwrap();
        let key = format!("k{}", i % 4);
        producer
            .produce(FutureRecord::to("orders").key(&key).payload("x"))
            .await
            .unwrap();
    }
    producer
        .produce(FutureRecord::<(), _>::to("unwatched").payload("x"))
        .await
        .unwrap();

    let metrics: Vec<Metric> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.key().name().to_owned(), labels, value)
        })
        .collect();
    let counter = |name: &str, label: (&str, &str)| -> u64 {
        metrics
            .iter()
            .filter(|(n, labels, _)| {
                n == name && labels.iter().any(|(k, v)| k == label.0 && v == label.1)
            })
            .map(|(_, _, v)| match v {
                DebugValue::Counter(c) => *c,
                _ => 0,
            })
            .sum()
    };
    let gauge = |name: &str| -> Option<f64> {
        metrics
            .iter()
            .find(|(n, _, _)| n == name)
            .and_then(|(_, _, v)| match v {
                DebugValue::Gauge(g) => Some(g.into_inner()),
                _ => None,
            })
    };
    assert_eq!(counter("ksp_messages_total", ("route", "sticky")), 40);
    let keyed = counter("ksp_messages_total", ("route", "home"))
        + counter("ksp_messages_total", ("route", "moved"));
    assert_eq!(keyed, 40);
    assert_eq!(counter("ksp_messages_total", ("fallback", "no_health")), 1);
    // A waiting decision is an answer to `decide`, never a send's route: no series for it
    // (it was registered, and stayed 0 forever).
    assert!(
        !metrics
            .iter()
            .any(|(n, labels, _)| n == "ksp_messages_total"
                && labels.iter().any(|(k, v)| k == "route" && v == "waiting")),
        "ksp_messages_total{{route=\"waiting\"}} is registered"
    );
    let moved = counter("ksp_messages_total", ("route", "moved"));
    assert_eq!(
        counter("ksp_key_cache_total", ("result", "hit"))
            + counter("ksp_key_cache_total", ("result", "miss")),
        moved
    );
    assert!(counter("ksp_refreshes_total", ("outcome", "ok")) >= 1);
    assert_eq!(gauge("ksp_healthy_partitions"), Some(7.0));
    let of_partition = |name: &str, partition: &str| -> Option<f64> {
        metrics
            .iter()
            .find(|(n, labels, _)| {
                n == name
                    && labels
                        .iter()
                        .any(|(k, v)| k == "partition" && v == partition)
            })
            .and_then(|(_, _, v)| match v {
                DebugValue::Gauge(g) => Some(g.into_inner()),
                _ => None,
            })
    };
    assert_eq!(of_partition("ksp_partition_lag", "3"), Some(5000.0));
    assert_eq!(of_partition("ksp_partition_lag", "0"), Some(0.0));
    assert_eq!(of_partition("ksp_partition_keyless_share", "3"), Some(0.0));
    assert!(of_partition("ksp_partition_keyless_share", "0").is_some_and(|s| s > 0.1));
    assert!(
        metrics
            .iter()
            .any(|(n, _, v)| n == "ksp_refresh_duration_seconds"
                && matches!(v, DebugValue::Histogram(h) if !h.is_empty()))
    );
    // Refreshes are logged inside the monitor's span (group, collector, calculator); no
    // message is logged per send at info or above.
    let text = logs.text();
    assert!(
        text.contains("ksp.monitor{group=processors collector=\"kafka\" calculator=\"relative\"}")
            && text.contains("published health"),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains(" INFO ") && l.contains("routed")),
        "per-message logs at info"
    );
}
