//! The chaos soak: three producer instances (two async, one blocking; one in strict key
//! order) sharing Redis, keyed (Zipf) and keyless load with idempotence on, on the embedded
//! 3-broker cluster with real draining consumers (one changing speed at random), under a
//! seeded random schedule of overlapping faults. Ends with one line per promise; exits with
//! status 1 if one was broken.
//!
//! Needs `redis-server` on `PATH` (or `KSP_REDIS_SERVER`). With `RUST_LOG` set (say
//! `RUST_LOG=ksp_monitor=warn`), the instances' logs go to standard error, stamped with the
//! time since the start like the fault timeline.
//!
//! The embedded cluster runs in a child process (this program, run with `--serve-broker`),
//! so that the memory judged is the producers' and the harness's; `--broker-in-process`
//! keeps it in this one.
//!
//! Memory is judged on glibc's count of the heap in use. This program runs itself again with
//! glibc's per-thread caches off (`GLIBC_TUNABLES=glibc.malloc.tcache_count=0`): `malloc_info`
//! does not list what they hold as free. With `GLIBC_TUNABLES` already set, or with
//! `--keep-thread-caches`, it runs as it is (the memory line says whether the caches were
//! off). Under heaptrack or valgrind, which follow only the first program, set
//! `GLIBC_TUNABLES=glibc.malloc.tcache_count=0` yourself (or pass `--keep-thread-caches`).
//!
//! ```text
//! cargo run --release -p ksp-testkit --features redis --example soak -- --duration 30m --seed 7
//! ```
#![expect(
    clippy::print_stdout,
    reason = "a program that reports on its standard output"
)]

use std::time::Duration;

use clap::Parser;
use ksp_testkit::soak::{BrokerPlacement, DEFAULT_SEED, SoakSpec};

#[derive(Debug, Parser)]
#[command(about = "Random overlapping faults under load; every message accounted for")]
struct Args {
    /// How long the load runs: `90s`, `30m`, `1h`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// The seed of the fault schedule and the load.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Memory is judged after this long: `5m`.
    #[arg(long, value_parser = parse_duration)]
    warm_up: Option<Duration>,
    /// Run the embedded cluster in this process (its memory then counts in the RSS judged).
    #[arg(long)]
    broker_in_process: bool,
    /// Write the memory samples (one a second) to this CSV file: seconds from the start, RSS,
    /// heap in use and the free memory glibc keeps (bytes; the heap columns empty without
    /// glibc's count).
    #[arg(long)]
    samples: Option<std::path::PathBuf>,
    /// Do not run again with glibc's per-thread caches off (see the module's docs).
    #[arg(long)]
    keep_thread_caches: bool,
    /// Serve the embedded cluster for a soak in the parent process (how this program runs
    /// itself as the broker's process).
    #[arg(long, hide = true)]
    serve_broker: bool,
}

/// Set in the environment of the run started again with the caches off.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const RAN_AGAIN: &str = "KSP_SOAK_RAN_AGAIN";

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a number and a unit (s, m, h)"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("`{text}`: the unit is s, m or h")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !args.keep_thread_caches
        && !args.serve_broker
        && std::env::var_os("GLIBC_TUNABLES").is_none()
        && std::env::var_os(RAN_AGAIN).is_none()
    {
        use std::os::unix::process::CommandExt;
        // glibc reads its tunables when the process starts: only a new one takes them. Once
        // (the marker), whatever glibc made of the variable.
        let error = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", ksp_testkit::NO_THREAD_CACHES)
            .env(RAN_AGAIN, "1")
            .exec();
        return Err(anyhow::anyhow!(
            "running this program again with glibc's per-thread caches off: {error}"
        ));
    }
    if std::env::var_os("RUST_LOG").is_some() {
        // On standard error: the broker's process answers the soak on standard output.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .with_writer(std::io::stderr)
            .init();
    }
    if args.serve_broker {
        return Ok(ksp_testkit::soak::serve_broker()?);
    }
    let mut spec = SoakSpec::new(args.duration)
        .seed(args.seed)
        .progress(Duration::from_secs(60));
    if !args.broker_in_process {
        spec = spec.broker(BrokerPlacement::process(
            std::env::current_exe()?,
            &["--serve-broker"],
        ));
    }
    if let Some(warm_up) = args.warm_up {
        spec.warm_up = warm_up;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(spec.run());
    // Not waiting for a blocking task that lingers before the report is out.
    runtime.shutdown_timeout(Duration::from_secs(5));
    let report = report?;
    if let Some(path) = &args.samples {
        std::fs::write(path, samples_csv(&report))?;
    }
    println!("{report}");
    if !report.all_kept() {
        std::process::exit(1);
    }
    Ok(())
}

/// The report's memory samples as CSV, one line a second.
fn samples_csv(report: &ksp_testkit::soak::SoakReport) -> String {
    let heap: std::collections::HashMap<u64, ksp_testkit::HeapUse> = report
        .heap
        .iter()
        .map(|(at, count)| (at.to_bits(), *count))
        .collect();
    let mut csv = String::from("seconds,rss_bytes,heap_in_use_bytes,heap_kept_free_bytes\n");
    for (at, rss, _) in &report.rss {
        let (in_use, kept_free) = heap.get(&at.to_bits()).map_or_else(
            || (String::new(), String::new()),
            |h| (h.in_use.to_string(), h.kept_free.to_string()),
        );
        csv.push_str(&format!("{at:.3},{rss},{in_use},{kept_free}\n"));
    }
    csv
}
