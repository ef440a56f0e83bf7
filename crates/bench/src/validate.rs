//! Simulator scenarios run for real on the embedded cluster: the smart producer and a plain
//! `FutureProducer`, same load, real consumers reading each partition at a set speed.

use std::fmt::Write as _;
use std::time::Duration;

use ksp_testkit::demo::{DemoConfig, DemoSummary, run_embedded};

/// The demo: 2000 msg/s, 8 partitions at 500 msg/s, partition 3 at 50.
pub fn one_slow(seconds: u64) -> DemoConfig {
    let mut config = DemoConfig::default();
    config.duration = Duration::from_secs(seconds);
    config
}

/// The simulator's `fast_one`: consumers at 500 msg/s on partition 0 and 100 msg/s on the
/// seven others, 1000 msg/s produced (42 % of the capacity on partition 0).
pub fn fast_one(seconds: u64) -> DemoConfig {
    with_rates(
        seconds,
        1000,
        vec![500.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0],
    )
}

/// Consumers at `rates` (one per partition), `rate` msg/s produced; the summary reports on the
/// fastest consumer's partition.
pub fn with_rates(seconds: u64, rate: u32, rates: Vec<f64>) -> DemoConfig {
    let mut config = one_slow(seconds);
    config.rate = rate;
    config.partitions = rates.len() as i32;
    config.slow_partition = rates
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(p, _)| p as i32);
    config.consumer_rates = rates;
    config
}

/// Runs `config` on the embedded cluster.
pub async fn run(config: &DemoConfig) -> anyhow::Result<DemoSummary> {
    Ok(run_embedded(config, &mut |_| {}).await?)
}

/// The markdown table of a validation run.
pub fn table(summary: &DemoSummary, config: &DemoConfig) -> String {
    let p = summary.slow_partition;
    let speeds = config
        .consumer_rates()
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut md = format!(
        "| producer | share of messages to partition {p} | its lag at the end | end-to-end p50 | p99 | max | predicted time-lag vs measured wait, relative error p50 / p90 (moments) |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, phase) in [
        ("plain `FutureProducer`", &summary.plain),
        ("smart producer", &summary.smart),
    ] {
        let calibration = match phase.calibration.relative_error {
            Some((p50, p90)) => format!(
                "{:.0} % / {:.0} % ({})",
                p50 * 100.0,
                p90 * 100.0,
                phase.calibration.samples
            ),
            None => "no backlog to predict".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {name} | {:.1} % | {} | {} ms | {} ms | {} ms | {calibration} |",
            phase.share(p) * 100.0,
            phase.final_lag(p),
            phase.latency_ms.0,
            phase.latency_ms.1,
            phase.latency_ms.2,
        );
    }
    let ratio =
        f64::from(summary.plain.latency_ms.1) / f64::from(summary.smart.latency_ms.1.max(1));
    let _ = writeln!(
        md,
        "\n{} s per producer, {} msg/s, {} partitions, real consumers reading [{speeds}] msg/s. \
         Latency is produce timestamp → consumed, over the messages consumed during the run; \
         p99 plain ÷ smart = {ratio:.1}×. The time-lag columns compare, once a second, the \
         monitor's predicted time-lag of each partition with the median wait of the messages \
         produced to it within 250 ms, where that wait is at least 250 ms.\n\n`{summary}`",
        config.duration.as_secs(),
        config.rate,
        config.partitions,
    );
    md
}
