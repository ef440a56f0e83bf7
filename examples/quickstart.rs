//! The embedded demo: routing around a slow consumer.
//!
//! With no arguments it starts librdkafka's embedded mock cluster (3 brokers), a topic of 8
//! partitions, and consumers that read every partition at 500 msg/s except one, read at
//! 50 msg/s. It runs the smart producer at 2000 msg/s for 30 s, printing every second each
//! partition's lag, health and share of that second's messages; then a plain rdkafka
//! `FutureProducer` with the same load on a fresh topic. It ends with one line:
//!
//! ```text
//! summary: slow_partition=P smart_share=S plain_share=S smart_final_lag=L plain_final_lag=L
//! ```
//!
//! With `--bootstrap HOST:PORT --group G --topic T` it runs only the smart producer, against
//! a real cluster whose group `G` consumes `T`.
//!
//! ```text
//! cargo run --release --example quickstart
//! cargo run --release --example quickstart -- --bootstrap localhost:9092 --group orders-svc --topic orders
//! ```
#![expect(
    clippy::print_stdout,
    reason = "a program that reports on its standard output"
)]

use std::time::Duration;

use clap::Parser;
use kafka_smart_producer::rdkafka::ClientConfig;
use ksp_testkit::demo::{DemoConfig, run_against, run_embedded};

#[derive(Debug, Parser)]
#[command(about = "Routes around a slow consumer: the smart producer vs librdkafka's partitioner")]
struct Args {
    /// A real cluster to run against (with --group and --topic) instead of the embedded one.
    #[arg(long, requires_all = ["group", "topic"])]
    bootstrap: Option<String>,
    /// The consumer group whose lag decides (real cluster only).
    #[arg(long)]
    group: Option<String>,
    /// The topic to produce to (real cluster only).
    #[arg(long)]
    topic: Option<String>,
    /// Seconds each producer runs.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Messages per second.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Send keyed messages instead of keyless ones.
    #[arg(long)]
    keyed: bool,
    /// Each partition's consumer speed in msg/s, e.g. 500,100,100,100,100,100,100,100
    /// (embedded cluster only; default: 500 each, partition 3 at 50).
    #[arg(long, value_delimiter = ',')]
    consumer_rates: Vec<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = DemoConfig::default();
    config.duration = Duration::from_secs(args.duration);
    config.rate = args.rate;
    config.keyed = args.keyed;
    if !args.consumer_rates.is_empty() {
        config.partitions = args.consumer_rates.len() as i32;
        // Report on the fastest consumer's partition: the one that should take the most.
        config.slow_partition = args
            .consumer_rates
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(p, _)| p as i32);
        config.consumer_rates = args.consumer_rates;
    }
    let mut print = |line: &str| println!("{line}");

    match (args.bootstrap, args.group, args.topic) {
        (Some(bootstrap), Some(group), Some(topic)) => {
            let mut kafka = ClientConfig::new();
            kafka.set("bootstrap.servers", bootstrap);
            let result = run_against(&kafka, &group, &topic, &config, &mut print).await?;
            let total: u64 = result.delivered.iter().sum();
            println!(
                "summary: delivered={total} failed={} shares={}",
                result.failed,
                (0..result.delivered.len() as i32)
                    .map(|p| format!("{:.4}", result.share(p)))
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        _ => {
            let summary = run_embedded(&config, &mut print).await?;
            println!("{}", summary.smart.calibration);
            println!("{summary}");
        }
    }
    Ok(())
}
