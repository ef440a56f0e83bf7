//! The embedded demo: one slow consumer, the smart producer, then a plain one.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ksp_core::{ConsumerState, HealthFeed, LagCollector, LagRequest, RelativeCalculator, TopicLag};
use ksp_monitor::{HealthMonitor, KafkaLagCollector, MonitorConfig, MonitorHandle};
use ksp_producer::AsyncSmartProducer;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::task::JoinSet;

use crate::{DemoError, DemoResult, DrainingConsumer, MockKafka, kafka_error};

/// Settings of the demo.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DemoConfig {
    /// How long each producer runs. Default 30 s.
    pub duration: Duration,
    /// Messages per second produced. Default 2000.
    pub rate: u32,
    /// Partitions of the topic. Default 8.
    pub partitions: i32,
    /// The partition whose consumer is slow. Default 3.
    pub slow_partition: i32,
    /// Messages per second each healthy partition's consumer reads. Default 500, so the
    /// healthy consumers together can absorb the whole load.
    pub consumer_rate: f64,
    /// The slow consumer's speed relative to the others. Default 0.1.
    pub slow_factor: f64,
    /// Each partition's consumer speed in messages per second, when not empty: overrides
    /// `consumer_rate` and `slow_factor` (`slow_partition` is then only the partition the
    /// summary reports on). Partitions beyond the list read at `consumer_rate`.
    pub consumer_rates: Vec<f64>,
    /// The monitor's refresh interval. Default 1 s.
    pub refresh_interval: Duration,
    /// Payload size in bytes. Default 100.
    pub payload_bytes: usize,
    /// Send keyed messages (10 000 distinct keys) instead of keyless ones.
    pub keyed: bool,
}

impl DemoConfig {
    /// Each partition's consumer speed in messages per second.
    pub fn consumer_rates(&self) -> Vec<f64> {
        (0..self.partitions.max(0) as usize)
            .map(|p| match self.consumer_rates.get(p) {
                Some(&rate) => rate,
                None if self.consumer_rates.is_empty() && p as i32 == self.slow_partition => {
                    self.consumer_rate * self.slow_factor
                }
                None => self.consumer_rate,
            })
            .collect()
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(30),
            rate: 2000,
            partitions: 8,
            slow_partition: 3,
            consumer_rate: 500.0,
            slow_factor: 0.1,
            consumer_rates: Vec::new(),
            refresh_interval: Duration::from_secs(1),
            payload_bytes: 100,
            keyed: false,
        }
    }
}

/// What one producer achieved in the demo.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PhaseResult {
    /// Messages delivered, per partition.
    pub delivered: Vec<u64>,
    /// Messages that failed.
    pub failed: u64,
    /// Lag of every partition when the producer stopped.
    pub final_lags: Vec<Option<i64>>,
    /// End-to-end latency (produce to consume) of the messages consumed during the phase,
    /// 50th and 99th percentile and maximum, in milliseconds.
    pub latency_ms: (u32, u32, u32),
    /// How well the monitor's predicted time-lag matched what messages then waited.
    pub calibration: Calibration,
}

/// The monitor's predicted time-lag of a partition, once a second while its consumer works
/// through a backlog (state `draining`, capacity measured), against the measured wait
/// (produce → consumed, median) of the messages produced to it within 250 ms of that moment.
/// Only moments where the measured wait is at least 250 ms count: below that, the wait is
/// polling and commit timing, not a backlog, and a relative error means nothing.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Calibration {
    /// Moments compared.
    pub samples: usize,
    /// Median and 90th percentile of |predicted − measured| ÷ measured.
    pub relative_error: Option<(f64, f64)>,
}

impl Calibration {
    /// Compares `predictions` (time in ms since the epoch, partition, predicted seconds) with
    /// the messages `consumed`.
    pub fn new(predictions: &[(i64, i32, f64)], consumed: &[crate::ReadSample]) -> Self {
        let mut errors = Vec::new();
        for &(at, partition, predicted) in predictions {
            let mut waits: Vec<u32> = consumed
                .iter()
                .filter(|c| c.partition == partition && (c.produced_at_ms - at).abs() <= 250)
                .map(|c| c.latency_ms)
                .collect();
            if waits.is_empty() {
                continue;
            }
            waits.sort_unstable();
            let measured = f64::from(waits[waits.len() / 2]) / 1000.0;
            if measured >= 0.25 {
                errors.push((predicted - measured).abs() / measured);
            }
        }
        errors.sort_by(f64::total_cmp);
        let at = |q: f64| errors[((errors.len() as f64 * q) as usize).min(errors.len() - 1)];
        Self {
            samples: errors.len(),
            relative_error: (!errors.is_empty()).then(|| (at(0.5), at(0.9))),
        }
    }
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.relative_error {
            Some((p50, p90)) => write!(
                f,
                "predicted time-lag vs measured wait: relative error p50 {:.0} %, p90 {:.0} % over {} moments",
                p50 * 100.0,
                p90 * 100.0,
                self.samples
            ),
            None => write!(
                f,
                "predicted time-lag vs measured wait: no moment with a backlog"
            ),
        }
    }
}

impl PhaseResult {
    /// Share of all delivered messages that went to `partition`.
    pub fn share(&self, partition: i32) -> f64 {
        let total: u64 = self.delivered.iter().sum();
        let on = self.delivered.get(partition as usize).copied().unwrap_or(0);
        if total == 0 {
            0.0
        } else {
            on as f64 / total as f64
        }
    }

    /// Final lag of `partition` (0 if unknown).
    pub fn final_lag(&self, partition: i32) -> i64 {
        self.final_lags
            .get(partition as usize)
            .copied()
            .flatten()
            .unwrap_or(0)
    }
}

/// The outcome of the embedded demo: the smart producer and the plain one, same load, same
/// slow consumer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DemoSummary {
    /// The slow partition.
    pub slow_partition: i32,
    /// The smart producer's run.
    pub smart: PhaseResult,
    /// The plain `FutureProducer`'s run.
    pub plain: PhaseResult,
}

impl fmt::Display for DemoSummary {
    /// The machine-readable summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.slow_partition;
        write!(
            f,
            "summary: slow_partition={p} smart_share={:.4} plain_share={:.4} smart_final_lag={} plain_final_lag={} smart_p99_ms={} plain_p99_ms={}",
            self.smart.share(p),
            self.plain.share(p),
            self.smart.final_lag(p),
            self.plain.final_lag(p),
            self.smart.latency_ms.1,
            self.plain.latency_ms.1,
        )
    }
}

/// Runs the demo on an embedded 3-broker mock cluster: a topic whose consumers keep up on
/// every partition but one, the smart producer for `duration`, then a plain `FutureProducer`
/// for the same time and load on a fresh topic. Every second, `out` receives a few lines of
/// table: per partition lag, health and share of that second's messages.
pub async fn run_embedded(
    config: &DemoConfig,
    out: &mut (dyn FnMut(&str) + Send),
) -> DemoResult<DemoSummary> {
    let kafka = MockKafka::start(3)?;
    let smart = embedded_phase(&kafka, config, true, out).await?;
    let plain = embedded_phase(&kafka, config, false, out).await?;
    Ok(DemoSummary {
        slow_partition: config.slow_partition,
        smart,
        plain,
    })
}

/// One producer's run on its own topic of the embedded cluster, with fresh consumers.
async fn embedded_phase(
    kafka: &MockKafka,
    config: &DemoConfig,
    smart: bool,
    out: &mut (dyn FnMut(&str) + Send),
) -> DemoResult<PhaseResult> {
    let group = "demo-consumers";
    let name = if smart { "smart" } else { "plain" };
    let topic = format!("demo-{name}");
    kafka.create_topic(&topic, config.partitions)?;
    let client = kafka.client_config();
    let rates = config.consumer_rates();
    let mut consumer = DrainingConsumer::builder(&client, group, &topic, config.partitions);
    for (p, &rate) in rates.iter().enumerate() {
        consumer = consumer.partition_rate(p as i32, rate);
    }
    let consumer = consumer.start()?;
    let speeds = rates
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(" ");
    out(&format!(
        "\n{name}: {} msg/s for {:?} to `{topic}` ({} partitions); consumers read [{speeds}] \
         msg/s",
        config.rate, config.duration, config.partitions,
    ));
    let sender = if smart {
        Sender::Smart(
            AsyncSmartProducer::builder(client.clone())
                .consumer_group(group)
                .topics([topic.clone()])
                .monitor(MonitorConfig::default().with_refresh_interval(config.refresh_interval))
                .build()
                .map_err(|e| DemoError::Demo(e.to_string()))?,
        )
    } else {
        Sender::Plain(
            client
                .create()
                .map_err(kafka_error("creating the plain producer"))?,
        )
    };
    let result = run_phase(name, &client, group, &topic, sender, &consumer, config, out).await?;
    consumer.stop();
    Ok(result)
}

/// Runs the smart producer alone against a real cluster, printing the same table, for
/// `config.duration`. Only `rate`, `duration`, `payload_bytes`, `keyed` and
/// `refresh_interval` apply.
pub async fn run_against(
    kafka: &ClientConfig,
    group: &str,
    topic: &str,
    config: &DemoConfig,
    out: &mut (dyn FnMut(&str) + Send),
) -> DemoResult<PhaseResult> {
    let producer = AsyncSmartProducer::builder(kafka.clone())
        .consumer_group(group)
        .topics([topic])
        .monitor(MonitorConfig::default().with_refresh_interval(config.refresh_interval))
        .build()
        .map_err(|e| DemoError::Demo(e.to_string()))?;
    producer
        .refresh_health()
        .await
        .map_err(|e| DemoError::Demo(e.to_string()))?;
    let partitions = producer
        .topic_summary(topic)
        .map(|s| s.partitions.len())
        .ok_or_else(|| DemoError::Demo(format!("no lag could be read for topic `{topic}`")))?;
    let config = DemoConfig {
        partitions: partitions as i32,
        slow_partition: -1,
        ..config.clone()
    };
    run_phase(
        "smart",
        kafka,
        group,
        topic,
        Sender::Smart(producer),
        &NoConsumer,
        &config,
        out,
    )
    .await
}

#[derive(Clone)]
enum Sender {
    Smart(AsyncSmartProducer),
    Plain(FutureProducer),
}

impl Sender {
    async fn send(&self, topic: &str, key: Option<&str>, payload: &[u8]) -> Option<i32> {
        let mut record = FutureRecord::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        match self {
            Self::Smart(p) => p.produce(record).await.ok().map(|d| d.partition),
            Self::Plain(p) => p
                .send(record, Duration::ZERO)
                .await
                .ok()
                .map(|d| d.partition),
        }
    }
}

/// Where latencies come from.
trait LatencySource {
    fn take_consumed(&self) -> Vec<crate::ReadSample>;
}

impl LatencySource for DrainingConsumer {
    fn take_consumed(&self) -> Vec<crate::ReadSample> {
        DrainingConsumer::take_consumed(self)
    }
}

struct NoConsumer;

impl LatencySource for NoConsumer {
    fn take_consumed(&self) -> Vec<crate::ReadSample> {
        Vec::new()
    }
}

/// Each partition's predicted time-lag in the current health, stamped now.
fn predicted_time_lags(feed: &HealthFeed, topic: &str) -> Vec<(i64, i32, f64)> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let snapshot = feed.load_full();
    let Some(health) = snapshot.topic(topic).filter(|h| !h.is_stale()) else {
        return Vec::new();
    };
    health
        .partitions()
        .iter()
        .filter_map(|h| {
            // Only where the model speaks: a consumer working through a backlog, its capacity
            // measured. A caught-up consumer's wait is polling and commit timing.
            let rates = h.lag.rates?;
            let time_lag = rates.time_lag?;
            (rates.state == ConsumerState::Draining && rates.capacity.is_some()).then_some((
                now_ms,
                h.partition,
                time_lag.as_secs_f64(),
            ))
        })
        .collect()
}

#[expect(
    clippy::too_many_arguments,
    reason = "one phase of the demo: the cluster, its topic and what to measure"
)]
async fn run_phase(
    name: &str,
    kafka: &ClientConfig,
    group: &str,
    topic: &str,
    sender: Sender,
    consumer: &dyn LatencySource,
    config: &DemoConfig,
    out: &mut (dyn FnMut(&str) + Send),
) -> DemoResult<PhaseResult> {
    let partitions = config.partitions.max(1) as usize;
    // Lag for the table comes from a monitor watching the same group: for the smart phase
    // it is the producer's own view.
    let (feed, observer) = match &sender {
        Sender::Smart(p) => (p.health_feed(), None),
        Sender::Plain(_) => {
            let monitor = observer(kafka, group, topic, config)?;
            (monitor.feed(), Some(monitor))
        }
    };
    let counts: Arc<Vec<AtomicU64>> =
        Arc::new((0..partitions).map(|_| AtomicU64::new(0)).collect());
    let failed = Arc::new(AtomicU64::new(0));
    let mut totals = vec![0u64; partitions];
    let mut predictions = Vec::new();
    let _ = consumer.take_consumed();

    let generator = tokio::spawn(generate(
        sender.clone(),
        topic.to_owned(),
        config.clone(),
        counts.clone(),
        failed.clone(),
    ));
    let seconds = config.duration.as_secs().max(1);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    out(&header(name, partitions, config.slow_partition));
    for second in 1..=seconds {
        ticker.tick().await;
        let window: Vec<u64> = counts
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        for (total, n) in totals.iter_mut().zip(&window) {
            *total += n;
        }
        predictions.extend(predicted_time_lags(&feed, topic));
        out(&table(second, &window, &feed, topic, partitions));
    }
    generator
        .await
        .map_err(|e| DemoError::Demo(format!("load generator failed: {e}")))?;
    for (total, c) in totals.iter_mut().zip(counts.iter()) {
        *total += c.swap(0, Ordering::Relaxed);
    }

    // The lag the moment production stopped, read directly.
    let final_lags = read_lags(kafka, group, topic).await?;
    let consumed = consumer.take_consumed();
    let calibration = Calibration::new(&predictions, &consumed);
    let mut latencies: Vec<u32> = consumed.iter().map(|c| c.latency_ms).collect();
    latencies.sort_unstable();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let result = PhaseResult {
        final_lags: (0..partitions as i32)
            .map(|p| {
                final_lags
                    .as_ref()
                    .and_then(|t| t.partitions.iter().find(|l| l.partition == p))
                    .and_then(|l| l.lag)
            })
            .collect(),
        delivered: totals,
        failed: failed.load(Ordering::Relaxed),
        latency_ms: (pct(0.5), pct(0.99), latencies.last().copied().unwrap_or(0)),
        calibration,
    };
    out(&format!(
        "{name}: delivered {} (failed {}), end-to-end latency p50 {} ms, p99 {} ms, max {} ms",
        result.delivered.iter().sum::<u64>(),
        result.failed,
        result.latency_ms.0,
        result.latency_ms.1,
        result.latency_ms.2,
    ));
    if let Sender::Smart(p) = sender {
        p.close(Duration::from_secs(5))
            .await
            .map_err(|e| DemoError::Demo(e.to_string()))?;
    }
    if let Some(monitor) = observer {
        let _ = monitor.shutdown().await;
    }
    Ok(result)
}

fn observer(
    kafka: &ClientConfig,
    group: &str,
    topic: &str,
    config: &DemoConfig,
) -> DemoResult<MonitorHandle> {
    let collector = KafkaLagCollector::builder(kafka)
        .build()
        .map_err(|e| DemoError::Demo(e.to_string()))?;
    HealthMonitor::builder(Arc::new(collector))
        .group(group)
        .topics([topic])
        .calculator(RelativeCalculator::default())
        .config(MonitorConfig::default().with_refresh_interval(config.refresh_interval))
        .spawn()
        .map_err(|e| DemoError::Demo(e.to_string()))
}

async fn read_lags(kafka: &ClientConfig, group: &str, topic: &str) -> DemoResult<Option<TopicLag>> {
    let collector = KafkaLagCollector::builder(kafka)
        .build()
        .map_err(|e| DemoError::Demo(e.to_string()))?;
    let topics = [topic.to_owned()];
    let report = collector
        .collect(&LagRequest::new(group, &topics, Duration::from_secs(5)))
        .await
        .map_err(|e| DemoError::Demo(e.to_string()))?;
    Ok(report.into_iter().next())
}

/// Sends `rate` messages per second for `duration`, in 10 ms steps.
async fn generate(
    sender: Sender,
    topic: String,
    config: DemoConfig,
    counts: Arc<Vec<AtomicU64>>,
    failed: Arc<AtomicU64>,
) {
    let steps = config.duration.as_millis() as u64 / 10;
    let per_step = f64::from(config.rate) / 100.0;
    let payload: Arc<[u8]> = vec![b'x'; config.payload_bytes].into();
    let topic: Arc<str> = topic.into();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sends = JoinSet::new();
    let mut owed = 0.0;
    let mut sequence = 0u64;
    for _ in 0..steps {
        tick.tick().await;
        owed += per_step;
        let batch = owed as u64;
        owed -= batch as f64;
        for _ in 0..batch {
            sequence += 1;
            let key = config
                .keyed
                .then(|| format!("key-{}", sequence.wrapping_mul(0x9e37_79b9) % 10_000));
            let (sender, topic, payload, counts, failed) = (
                sender.clone(),
                topic.clone(),
                payload.clone(),
                counts.clone(),
                failed.clone(),
            );
            sends.spawn(async move {
                match sender.send(&topic, key.as_deref(), &payload).await {
                    Some(p) => {
                        if let Some(c) = counts.get(p as usize) {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // Reap finished sends so the set stays small.
        while sends.try_join_next().is_some() {}
    }
    while sends.join_next().await.is_some() {}
}

fn header(name: &str, partitions: usize, slow: i32) -> String {
    let mut line = format!("{:<10}{:<9}", name, "");
    for p in 0..partitions as i32 {
        let label = if p == slow {
            format!("p{p}*")
        } else {
            format!("p{p}")
        };
        line.push_str(&format!("{label:>9}"));
    }
    line
}

fn table(second: u64, window: &[u64], feed: &HealthFeed, topic: &str, partitions: usize) -> String {
    let snapshot = feed.load_full();
    let health = snapshot.topic(topic);
    let total: u64 = window.iter().sum::<u64>().max(1);
    let mut lag = format!("{:>6}s   {:<9}", second, "lag");
    let mut score = format!("{:<9}{:<9}", "", "health");
    let mut time_lag = format!("{:<9}{:<9}", "", "time-lag");
    let mut share = format!("{:<9}{:<9}", "", "share");
    for (p, sent) in window.iter().enumerate().take(partitions) {
        let h = health.and_then(|t| t.partition(p as i32));
        lag.push_str(&format!(
            "{:>9}",
            h.and_then(|h| h.lag.lag)
                .map_or("-".into(), |l| l.to_string())
        ));
        score.push_str(&format!(
            "{:>9}",
            h.map_or("-".into(), |h| format!(
                "{:.2}{}",
                h.score,
                if h.is_routable() { " " } else { "✗" }
            ))
        ));
        time_lag.push_str(&format!(
            "{:>9}",
            h.and_then(|h| h.lag.rates?.time_lag)
                .map_or("-".into(), |t| format!("{:.1}s", t.as_secs_f64()))
        ));
        share.push_str(&format!("{:>8.1}%", *sent as f64 * 100.0 / total as f64));
    }
    format!("{lag}\n{time_lag}\n{score}\n{share}")
}
