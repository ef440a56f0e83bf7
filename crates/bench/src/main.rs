//! `ksp-bench`: the benchmarks of kafka-smart-producer.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Benchmarks of kafka-smart-producer")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The routing-quality simulator.
    Sim {
        /// Simulated seconds per scenario.
        #[arg(long, default_value_t = 120)]
        seconds: u32,
        /// Seed of every random choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where to write the plots.
        #[arg(long)]
        images: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Sim {
            seconds,
            seed,
            images,
        } => print!(
            "{}",
            ksp_bench::simulation(seconds, seed, images.as_deref())?
        ),
    }
    Ok(())
}
