//! `ksp`: consumer-group lag and partition health from the terminal.
//!
//! * `ksp lag --bootstrap B --group G --topic T` prints, per partition, the committed offset,
//!   the high watermark, the lag, the health score and the verdict — what the smart producer
//!   would see. With `--window 10s` it reads twice and adds the consumer's drain rate,
//!   capacity, the arrival rate, the predicted time-lag and the share of keyless traffic.
//! * `ksp watch …` redraws that table every `--interval`.
//! * `ksp check-config FILE` loads a configuration file exactly as the library does (with the
//!   `KSP_*` environment overrides), prints the effective settings with secrets redacted, and
//!   exits with status 1 and the library's error (setting, value, what is allowed) on a bad one.
//! * `ksp demo` runs the embedded demo (a slow consumer, the smart producer vs librdkafka's
//!   partitioner) without any Kafka to install.
#![expect(
    clippy::print_stdout,
    reason = "a program that reports on its standard output"
)]

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use comfy_table::{Cell, Color, Table};
use ksp_core::{CalculatorConfig, LagCollector, LagRequest, TopicHealth};
use ksp_monitor::{KafkaLagCollector, MonitorConfig, TopicTracker};
use rdkafka::ClientConfig;

#[derive(Debug, Parser)]
#[command(
    name = "ksp",
    version,
    about = "Consumer-group lag and partition health, as kafka-smart-producer sees it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print lag and health per partition once.
    Lag {
        #[command(flatten)]
        target: Target,
        /// Read twice, this long apart, to show drain and arrival rates and the predicted
        /// time-lag (e.g. 10s; consumers that commit every 5 s need at least that).
        #[arg(long, value_parser = humantime::parse_duration)]
        window: Option<Duration>,
    },
    /// Redraw the lag table every --interval until interrupted.
    Watch {
        #[command(flatten)]
        target: Target,
        /// Time between redraws, e.g. 2s, 500ms.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many redraws (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Load a configuration file as the library does (with KSP_* environment overrides) and
    /// print the effective settings, secrets redacted; exit 1 with the error on a bad one.
    CheckConfig {
        /// A .toml, .yaml, .yml or .json file.
        file: std::path::PathBuf,
    },
    /// Run the embedded demo: a slow consumer, the smart producer vs librdkafka's partitioner.
    Demo {
        /// Seconds each producer runs.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

#[derive(Debug, Args)]
struct Target {
    /// Kafka bootstrap servers.
    #[arg(long, short)]
    bootstrap: String,
    /// The consumer group.
    #[arg(long, short)]
    group: String,
    /// Topics (repeat, or comma-separate).
    #[arg(long, short, required = true, value_delimiter = ',')]
    topic: Vec<String>,
    /// Calculator: `relative` (default) or `threshold`.
    #[arg(long, default_value = "relative")]
    calculator: CalculatorConfig,
    /// Extra rdkafka settings, e.g. -X security.protocol=SASL_SSL.
    #[arg(short = 'X', value_parser = key_value)]
    set: Vec<(String, String)>,
    /// How long one collection may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Lag { target, window } => {
            let reader = Reader::new(&target)?;
            if let Some(window) = window {
                reader.table().await?;
                tokio::time::sleep(window).await;
            }
            print!("{}", reader.table().await?);
        }
        Command::Watch {
            target,
            interval,
            count,
        } => {
            let reader = Reader::new(&target)?;
            let mut drawn = 0u64;
            loop {
                let table = reader.table().await;
                // Clear the screen and home the cursor, then draw.
                print!("\x1b[2J\x1b[H");
                match table {
                    Ok(table) => print!("{table}"),
                    Err(e) => println!("error: {e:#}"),
                }
                println!(
                    "refreshed every {} — Ctrl-C to stop",
                    humantime::format_duration(interval)
                );
                drawn += 1;
                if count.is_some_and(|c| drawn >= c) {
                    break;
                }
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    () = tokio::time::sleep(interval) => {}
                }
            }
        }
        Command::CheckConfig { file } => match check_config(&file) {
            Ok(report) => print!("{report}"),
            Err(error) => {
                eprintln!("error: {error}");
                std::process::exit(1);
            }
        },
        Command::Demo { seconds } => {
            let mut config = ksp_demo::demo::DemoConfig::default();
            config.duration = Duration::from_secs(seconds);
            let mut print = |line: &str| println!("{line}");
            let summary = ksp_demo::demo::run_embedded(&config, &mut print).await?;
            println!("{summary}");
        }
    }
    Ok(())
}

struct Reader {
    collector: KafkaLagCollector,
    calculator: std::sync::Arc<dyn ksp_core::HotPartitionCalculator>,
    group: String,
    topics: Vec<String>,
    timeout: Duration,
    /// What the monitor remembers between rounds (rates, uncommitted partitions, damping),
    /// per topic: the same health the producer would route by.
    trackers: std::sync::Mutex<std::collections::HashMap<String, TopicTracker>>,
    started: std::time::Instant,
}

impl Reader {
    fn new(target: &Target) -> anyhow::Result<Self> {
        let mut kafka = ClientConfig::new();
        kafka.set("bootstrap.servers", &target.bootstrap);
        for (k, v) in &target.set {
            kafka.set(k, v);
        }
        Ok(Self {
            collector: KafkaLagCollector::builder(&kafka).build()?,
            calculator: target.calculator.build()?,
            group: target.group.clone(),
            topics: target.topic.clone(),
            timeout: target.timeout,
            trackers: std::sync::Mutex::default(),
            started: std::time::Instant::now(),
        })
    }

    async fn table(&self) -> anyhow::Result<String> {
        let request = LagRequest::new(&self.group, &self.topics, self.timeout);
        let lags = self.collector.collect(&request).await?;
        let mut out = String::new();
        let mut reported = Vec::new();
        for lag in lags {
            reported.push(lag.topic.clone());
            let health = {
                let mut trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
                trackers
                    .entry(lag.topic.clone())
                    .or_insert_with(|| TopicTracker::new(&MonitorConfig::default()))
                    .update(self.started.elapsed(), lag, self.calculator.as_ref())
            };
            out.push_str(&render(&self.group, &health));
            out.push('\n');
        }
        for topic in &self.topics {
            if !reported.contains(topic) {
                out.push_str(&format!("topic {topic}: no lag reported\n"));
            }
        }
        Ok(out)
    }
}

/// One topic's table.
fn render(group: &str, health: &TopicHealth) -> String {
    let mut table = Table::new();
    table.set_header(vec![
        "partition",
        "committed",
        "high watermark",
        "lag",
        "time-lag",
        "drain/s",
        "capacity/s",
        "arrival/s",
        "consumer",
        "share",
        "score",
        "health",
    ]);
    let show = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let rate = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
    let shares = health.keyless_shares();
    for (p, share) in health.partitions().iter().zip(shares) {
        let rates = p.lag.rates.unwrap_or_default();
        let verdict = if !p.lag.leader_available {
            Cell::new("no leader").fg(Color::Red)
        } else if p.healthy {
            Cell::new("healthy").fg(Color::Green)
        } else {
            Cell::new("HOT").fg(Color::Red)
        };
        table.add_row(vec![
            Cell::new(p.partition),
            Cell::new(show(p.lag.committed)),
            Cell::new(show(p.lag.high_watermark)),
            Cell::new(show(p.lag.lag)),
            Cell::new(
                rates
                    .time_lag
                    .map_or_else(|| "-".to_owned(), |t| format!("{:.1}s", t.as_secs_f64())),
            ),
            Cell::new(rate(rates.drain_rate)),
            Cell::new(rate(rates.capacity)),
            Cell::new(rate(rates.arrival_rate)),
            Cell::new(rates.state.as_str()),
            Cell::new(format!("{:.0}%", share * 100.0)),
            Cell::new(format!("{:.2}", p.score)),
            verdict,
        ]);
    }
    format!(
        "topic {} · group {group} · {} of {} partitions routable · shares by {}\n{table}\n",
        health.topic(),
        health.routable_partitions().len(),
        health.partition_count(),
        if health.is_capacity_planned() {
            "capacity"
        } else {
            "score"
        }
    )
}

/// The effective settings of a configuration file, or the library's error (with its causes).
fn check_config(file: &std::path::Path) -> Result<String, String> {
    // The file's own errors name it already.
    let config = ksp_producer::SmartProducerConfig::load(file).map_err(|e| e.to_string())?;
    // Building the producer checks what the file alone cannot (the calculator's settings,
    // rdkafka's own names and values); it connects to nothing.
    let invalid = |e: &dyn std::error::Error| {
        let mut message = format!("{}: {e}", file.display());
        let mut source = e.source();
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        message
    };
    config
        .builder()
        .map_err(|e| invalid(&e))?
        .validate()
        .map_err(|e| invalid(&e))?;
    Ok(format!(
        "{} is valid (KSP_* environment overrides applied).\n\n\
         The file, secrets redacted:\n{config:#?}\n\n\
         Effective monitor settings:\n{:#?}\n\n\
         Effective router settings (unset ones follow the producer's rdkafka settings):\n{:#?}\n",
        file.display(),
        config.monitor_config(),
        config.router_config(),
    ))
}
