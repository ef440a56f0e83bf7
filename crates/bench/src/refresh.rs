//! Cost of one lag refresh by the Kafka collector: wall time and requests sent (counted by
//! librdkafka's own statistics), on the embedded 3-broker cluster, with and without a broker
//! round-trip delay.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ksp_core::{LagCollector, LagRequest};
use ksp_monitor::{KafkaLagCollector, RequestCounts};
use ksp_testkit::{LagScenario, MockKafka};

const GROUP: &str = "bench-group";

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct Row {
    /// Topics watched.
    pub topics: usize,
    /// Partitions of the topic (of each topic, with several).
    pub partitions: i32,
    /// Injected round trip of every broker.
    pub rtt: Duration,
    /// Median refresh time.
    pub p50: Duration,
    /// 99th percentile refresh time.
    pub p99: Duration,
    /// Requests per refresh: Metadata, OffsetFetch, ListOffsets.
    pub requests: (f64, f64, f64),
}

/// Measures `refreshes` refreshes of a topic of `partitions` partitions.
pub async fn measure(partitions: i32, rtt: Duration, refreshes: u32) -> anyhow::Result<Row> {
    let kafka = MockKafka::start(3)?;
    let topic = format!("t{partitions}");
    LagScenario::new(&topic, partitions as usize)
        .lag(0, 5)
        .create(&kafka, GROUP)
        .await?;
    measure_on(&kafka, vec![topic], rtt, refreshes).await
}

/// Measures `refreshes` refreshes of `topics` topics (created by the mock cluster with its
/// default partition count).
pub async fn measure_topics(topics: usize, rtt: Duration, refreshes: u32) -> anyhow::Result<Row> {
    let kafka = MockKafka::start(3)?;
    let names: Vec<String> = (0..topics).map(|i| format!("topic-{i:04}")).collect();
    ksp_testkit::auto_create_topics(&kafka.client_config(), &names).await?;
    measure_on(&kafka, names, rtt, refreshes).await
}

async fn measure_on(
    kafka: &MockKafka,
    topics: Vec<String>,
    rtt: Duration,
    refreshes: u32,
) -> anyhow::Result<Row> {
    for broker in 1..=3 {
        kafka.cluster().broker_round_trip_time(broker, rtt)?;
    }
    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .set("statistics.interval.ms", "100")
        .build()?;
    let request = LagRequest::new(GROUP, &topics, Duration::from_secs(10));
    for _ in 0..3 {
        collector.collect(&request).await?;
    }
    let before = settled_counts(&collector).await?;
    let mut times = Vec::new();
    let mut partitions = 0;
    for _ in 0..refreshes {
        let started = Instant::now();
        let report = collector.collect(&request).await?;
        times.push(started.elapsed());
        anyhow::ensure!(report.len() == topics.len(), "every topic reported");
        partitions = report[0].partitions.len() as i32;
    }
    let after = settled_counts(&collector).await?;
    times.sort();
    let n = f64::from(refreshes);
    Ok(Row {
        topics: topics.len(),
        partitions,
        rtt,
        p50: times[times.len() / 2],
        p99: times[(times.len() * 99 / 100).min(times.len() - 1)],
        requests: (
            (after.metadata - before.metadata) as f64 / n,
            (after.offset_fetch - before.offset_fetch) as f64 / n,
            (after.list_offsets - before.list_offsets) as f64 / n,
        ),
    })
}

/// librdkafka's request counters, once two statistics intervals agree.
async fn settled_counts(collector: &KafkaLagCollector) -> anyhow::Result<RequestCounts> {
    let mut last = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = collector.request_counts(GROUP);
        if let Some(counts) = now
            && now == last
        {
            return Ok(counts);
        }
        last = now;
    }
    anyhow::bail!("librdkafka statistics never settled")
}

/// Measures one topic of 8, 256 and 1024 partitions (or only `sizes`), and 200 topics, with
/// and without 2 ms RTT.
pub async fn table(sizes: &[i32], refreshes: u32) -> anyhow::Result<String> {
    let mut md = String::from(
        "| topics | partitions (each) | broker RTT | p50 | p99 | Metadata | OffsetFetch | ListOffsets |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut rows = Vec::new();
    for &partitions in sizes {
        for rtt in [Duration::ZERO, Duration::from_millis(2)] {
            rows.push(measure(partitions, rtt, refreshes).await?);
        }
    }
    for rtt in [Duration::ZERO, Duration::from_millis(2)] {
        rows.push(measure_topics(200, rtt, refreshes).await?);
    }
    for row in rows {
        {
            writeln!(
                md,
                "| {} | {} | {:?} | {:.2} ms | {:.2} ms | {:.1} | {:.1} | {:.1} |",
                row.topics,
                row.partitions,
                row.rtt,
                row.p50.as_secs_f64() * 1e3,
                row.p99.as_secs_f64() * 1e3,
                row.requests.0,
                row.requests.1,
                row.requests.2,
            )?;
        }
    }
    writeln!(
        md,
        "\nPer refresh; {refreshes} refreshes each; 3 brokers; requests counted by librdkafka's \
         statistics (`brokers[].req`), not by this library."
    )?;
    Ok(md)
}
