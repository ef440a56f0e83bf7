//! The simulator's one-slow-consumer scenario, run for real on the embedded cluster: the
//! smart producer and a plain `FutureProducer` with real consumers.

use std::fmt::Write as _;
use std::time::Duration;

use ksp_testkit::demo::{DemoConfig, DemoSummary, run_embedded};

/// Runs the embedded demo for `seconds` per producer.
pub async fn run(seconds: u64) -> anyhow::Result<DemoSummary> {
    let mut config = DemoConfig::default();
    config.duration = Duration::from_secs(seconds);
    Ok(run_embedded(&config, &mut |_| {}).await?)
}

/// The markdown table of a validation run.
pub fn table(summary: &DemoSummary, seconds: u64) -> String {
    let p = summary.slow_partition;
    let mut md = String::from(
        "| producer | share of messages to the slow partition | its lag at the end | end-to-end p50 | p99 | max |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for (name, phase) in [
        ("plain `FutureProducer`", &summary.plain),
        ("smart producer", &summary.smart),
    ] {
        let _ = writeln!(
            md,
            "| {name} | {:.1} % | {} | {} ms | {} ms | {} ms |",
            phase.share(p) * 100.0,
            phase.final_lag(p),
            phase.latency_ms.0,
            phase.latency_ms.1,
            phase.latency_ms.2,
        );
    }
    let _ = writeln!(
        md,
        "\n{seconds} s per producer, 2000 msg/s, 8 partitions, real consumers reading 500 msg/s \
         per partition and 50 msg/s on partition {p} (the demo, `cargo run --release --example \
         quickstart`). Latency is produce timestamp → consumed, over the messages consumed \
         during the run.\n\n`{summary}`"
    );
    md
}
