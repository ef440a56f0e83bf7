//! Cost of one lag refresh by the Kafka collector: wall time and requests sent, on the
//! embedded 3-broker mock cluster, with and without a broker round-trip delay.
//!
//! `cargo bench --bench refresh` (add `-- --quick` for a short run)
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use kafka_smart_producer::{KafkaLagCollector, LagCollector, LagRequest, RequestCounts};
use ksp_testkit::{LagScenario, MockKafka};

const GROUP: &str = "bench-group";

struct Row {
    partitions: i32,
    rtt: Duration,
    p50: Duration,
    p99: Duration,
    per_refresh: (f64, f64, f64),
}

async fn measure(partitions: i32, rtt: Duration, refreshes: u32) -> Row {
    let kafka = MockKafka::start(3).unwrap();
    let topic = format!("t{partitions}");
    kafka.create_topic(&topic, partitions).unwrap();
    LagScenario::new(&topic, partitions as usize)
        .lag(0, 5)
        .apply(&kafka.client_config(), GROUP)
        .await
        .unwrap();
    for broker in 1..=3 {
        kafka.cluster().broker_round_trip_time(broker, rtt).unwrap();
    }
    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .set("statistics.interval.ms", "100")
        .build()
        .unwrap();
    let topics = [topic];
    let request = LagRequest::new(GROUP, &topics, Duration::from_secs(10));
    for _ in 0..3 {
        collector.collect(&request).await.unwrap();
    }
    let before = settled_counts(&collector).await;
    let mut times = Vec::new();
    for _ in 0..refreshes {
        let started = Instant::now();
        let report = collector.collect(&request).await.unwrap();
        times.push(started.elapsed());
        assert_eq!(report[0].partitions.len(), partitions as usize);
    }
    let after = settled_counts(&collector).await;
    times.sort();
    let n = f64::from(refreshes);
    Row {
        partitions,
        rtt,
        p50: times[times.len() / 2],
        p99: times[(times.len() * 99 / 100).min(times.len() - 1)],
        per_refresh: (
            (after.metadata - before.metadata) as f64 / n,
            (after.offset_fetch - before.offset_fetch) as f64 / n,
            (after.list_offsets - before.list_offsets) as f64 / n,
        ),
    }
}

/// librdkafka's request counters, once two statistics intervals agree.
async fn settled_counts(collector: &KafkaLagCollector) -> RequestCounts {
    let mut last = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = collector.request_counts(GROUP);
        if let Some(counts) = now
            && now == last
        {
            return counts;
        }
        last = now;
    }
    panic!("librdkafka statistics never settled");
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let refreshes = if quick { 5 } else { 50 };
    let sizes: &[i32] = if quick { &[8] } else { &[8, 256, 1024] };
    println!("| partitions | broker RTT | p50 | p99 | Metadata | OffsetFetch | ListOffsets |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &partitions in sizes {
        for rtt in [Duration::ZERO, Duration::from_millis(2)] {
            let row = measure(partitions, rtt, refreshes).await;
            println!(
                "| {} | {:?} | {:.2} ms | {:.2} ms | {:.1} | {:.1} | {:.1} |",
                row.partitions,
                row.rtt,
                row.p50.as_secs_f64() * 1e3,
                row.p99.as_secs_f64() * 1e3,
                row.per_refresh.0,
                row.per_refresh.1,
                row.per_refresh.2,
            );
        }
    }
    println!("(per refresh; {refreshes} refreshes each; 3 brokers; `cargo bench --bench refresh`)");
}
