//! Lag from somewhere other than Kafka: a `LagCollector` that reads a Prometheus text
//! exposition (the `kafka_consumergroup_lag` gauge of kafka-exporter / Burrow-style
//! exporters), here from a file, wired into the smart producer.
//!
//! ```sh
//! cargo run --example custom_collector
//! ```
//!
//! It starts the embedded cluster, writes a metrics file in which partition 3 lags, and shows
//! that no keyless message goes there.
#![expect(
    clippy::print_stdout,
    reason = "a program that reports on its standard output"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use kafka_smart_producer::monitor::MonitorConfig;
use kafka_smart_producer::rdkafka::producer::FutureRecord;
use kafka_smart_producer::{
    AsyncSmartProducer, CollectError, LagCollector, LagRequest, PartitionLag, TopicLag, async_trait,
};

/// Reads `kafka_consumergroup_lag{consumergroup="…",topic="…",partition="…"} N` lines.
struct PrometheusFileCollector {
    path: PathBuf,
}

#[async_trait]
impl LagCollector for PrometheusFileCollector {
    async fn collect(&self, request: &LagRequest<'_>) -> Result<Vec<TopicLag>, CollectError> {
        // Async I/O: a collector must never block the runtime's workers.
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| CollectError::source(format!("reading {}", self.path.display()), e))?;
        let read_at = SystemTime::now();
        let mut topics: BTreeMap<&str, Vec<PartitionLag>> = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| l.starts_with("kafka_consumergroup_lag{"))
        {
            let Some((labels, value)) = line["kafka_consumergroup_lag{".len()..].split_once("} ")
            else {
                continue;
            };
            let label = |name: &str| {
                labels.split(',').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    (k.trim() == name).then(|| v.trim().trim_matches('"'))
                })
            };
            let (Some(group), Some(topic), Some(partition), Ok(lag)) = (
                label("consumergroup"),
                label("topic"),
                label("partition").and_then(|p| p.parse().ok()),
                value.trim().parse::<f64>(),
            ) else {
                continue;
            };
            if group == request.group && request.topics.iter().any(|t| t == topic) {
                topics
                    .entry(topic)
                    .or_default()
                    .push(PartitionLag::from_lag(partition, lag as i64));
            }
        }
        Ok(topics
            .into_iter()
            .map(|(topic, partitions)| TopicLag::new(topic, partitions, read_at))
            .collect())
    }

    fn name(&self) -> &str {
        "prometheus-file"
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kafka = ksp_testkit::MockKafka::start(1)?;
    kafka.create_topic("orders", 8)?;
    let path = std::env::temp_dir().join(format!("ksp-lag-{}.prom", std::process::id()));
    let metrics: String = (0..8)
        .map(|p| {
            let lag = if p == 3 { 9000 } else { 4 };
            format!(
                "kafka_consumergroup_lag{{consumergroup=\"processors\",topic=\"orders\",partition=\"{p}\"}} {lag}\n"
            )
        })
        .collect();
    tokio::fs::write(&path, metrics).await?;

    let producer = AsyncSmartProducer::builder(kafka.client_config())
        .consumer_group("processors")
        .topics(["orders"])
        .collector(PrometheusFileCollector { path: path.clone() })
        .monitor(MonitorConfig::default().with_refresh_interval(Duration::from_secs(1)))
        .build()?;
    producer.refresh_health().await?;
    println!(
        "healthy partitions: {:?}",
        producer.healthy_partitions("orders")
    );

    let mut landed = BTreeMap::<i32, u32>::new();
    for _ in 0..200 {
        let d = producer
            .produce(FutureRecord::<(), _>::to("orders").payload("x"))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        *landed.entry(d.partition).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("messages per partition: {landed:?}");
    assert!(
        !landed.contains_key(&3),
        "nothing goes to the lagging partition"
    );
    producer.close(Duration::from_secs(5)).await?;
    let _ = tokio::fs::remove_file(&path).await;
    Ok(())
}
