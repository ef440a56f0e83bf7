//! `ksp`: consumer-group lag and partition health from the terminal.
//!
//! * `ksp lag --bootstrap B --group G --topic T` prints, per partition, the committed offset,
//!   the high watermark, the lag, the health score and the verdict — what the smart producer
//!   would see. With `--window 10s` it reads twice and adds the consumer's drain rate,
//!   capacity, the arrival rate, the predicted time-lag and the share of keyless traffic.
//! * `ksp watch …` shows it in the terminal, redrawn every `--interval`: one row per partition
//!   with a lag bar, keys to switch topic and pause; when standard output is not a terminal
//!   (or with `--plain`) it prints the table every interval instead.
//! * `ksp check-config FILE` loads a configuration file exactly as the library does (with the
//!   `KSP_*` environment overrides), prints the effective settings with secrets redacted, and
//!   exits with status 1 and the library's error (setting, value, what is allowed) on a bad one.
//! * `ksp demo` runs the embedded demo (a slow consumer, the smart producer vs librdkafka's
//!   partitioner) without any Kafka to install.
#![expect(
    clippy::print_stdout,
    reason = "a program that reports on its standard output"
)]

mod lag;
mod watch;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ksp_core::CalculatorConfig;

use crate::lag::Reader;

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
        /// time-lag (e.g. 10s; consumers that commit every 5 s need at least that; at most 1h).
        #[arg(long, value_parser = duration_within(Duration::from_millis(10), HOUR))]
        window: Option<Duration>,
    },
    /// Show lag and health per partition, read every --interval, until `q` or Ctrl-C.
    ///
    /// In a terminal: one row per partition with a lag bar; Tab/←→ switch topic, p pauses,
    /// r reads now, q quits. Otherwise (or with --plain or --count) the table is printed every
    /// interval.
    Watch {
        #[command(flatten)]
        target: Target,
        /// Time between reads, e.g. 2s, 500ms (10ms to 1h).
        #[arg(long, default_value = "2s", value_parser = duration_within(Duration::from_millis(10), HOUR))]
        interval: Duration,
        /// Print this many tables, then stop (implies --plain; default: until q or Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
        /// Print the table every interval even in a terminal.
        #[arg(long)]
        plain: bool,
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
pub(crate) struct Target {
    /// Kafka bootstrap servers.
    #[arg(long, short)]
    pub(crate) bootstrap: String,
    /// The consumer group.
    #[arg(long, short)]
    pub(crate) group: String,
    /// Topics (repeat, or comma-separate).
    #[arg(long, short, required = true, value_delimiter = ',')]
    pub(crate) topic: Vec<String>,
    /// Calculator: `relative` (default) or `threshold`.
    #[arg(long, default_value = "relative")]
    pub(crate) calculator: CalculatorConfig,
    /// Extra rdkafka settings, e.g. -X security.protocol=SASL_SSL.
    #[arg(short = 'X', value_parser = key_value)]
    pub(crate) set: Vec<(String, String)>,
    /// How long one collection may take (10ms to 1h).
    #[arg(long, default_value = "10s", value_parser = duration_within(Duration::from_millis(10), HOUR))]
    pub(crate) timeout: Duration,
}

const HOUR: Duration = Duration::from_secs(3600);

/// A duration flag's parser: humantime's syntax, within `min..=max` (a duration past what the
/// clock holds would panic where it is added to it).
fn duration_within(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| {
        let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
        if d < min || d > max {
            return Err(format!(
                "expected a duration between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ));
        }
        Ok(d)
    }
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
            plain,
        } => {
            let reader = Reader::new(&target)?;
            let terminal = std::io::stdout().is_terminal();
            // A counted watch is for scripts: its output must stay once it ends.
            if !plain && count.is_none() && terminal {
                return watch::run(Arc::new(reader), interval).await;
            }
            let mut drawn = 0u64;
            loop {
                let table = reader.table().await;
                if terminal {
                    // Clear the screen and home the cursor, then draw.
                    print!("\x1b[2J\x1b[H");
                }
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
