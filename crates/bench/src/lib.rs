//! Benchmarks of kafka-smart-producer. `just bench` runs them all and rewrites
//! `docs/benchmarks.md`; `cargo run --release -p ksp-bench -- --help` lists the pieces.

pub mod alloc;
pub mod dashboard;
pub mod fleet;
pub mod instructions;
pub mod order;
pub mod plot;
pub mod refresh;
pub mod report;
pub mod scenarios;
pub mod sim;
pub mod throughput;
pub mod validate;

use std::fmt::Write as _;
use std::path::Path;

use sim::{Ours, Outcome, Policy, Scenario};

/// One simulated scenario under every policy.
#[derive(Debug)]
pub struct SimRun {
    /// The scenario.
    pub scenario: Scenario,
    /// One outcome per policy, in [`Policy::ALL`] order.
    pub outcomes: Vec<Outcome>,
}

/// Runs every simulated scenario under every policy.
pub fn simulate(seconds: u32, seed: u64) -> Vec<SimRun> {
    simulate_with(seconds, seed, &Ours::default(), None)
}

/// Runs the scenarios whose name contains `only` (all if `None`) under every policy, "ours"
/// with `ours`.
pub fn simulate_with(seconds: u32, seed: u64, ours: &Ours, only: Option<&str>) -> Vec<SimRun> {
    scenarios::all(seconds)
        .into_iter()
        .filter(|s| only.is_none_or(|only| s.name.contains(only)))
        .map(|scenario| {
            let outcomes = Policy::ALL
                .iter()
                .map(|&policy| sim::run(&scenario, policy, ours, seed))
                .collect();
            SimRun { scenario, outcomes }
        })
        .collect()
}

/// The markdown of the simulation results; plots go to `images` (linked as `img/…`).
pub fn simulation_markdown(runs: &[SimRun], images: Option<&Path>) -> anyhow::Result<String> {
    let mut md = String::new();
    for SimRun { scenario, outcomes } in runs {
        writeln!(md, "#### {}\n", scenario.title)?;
        writeln!(
            md,
            "| policy | end-to-end p50 | p99 | max | lag of partition {w} at the end | its highest lag | health flips / partition / min (worst) | largest share of a 10 s window (× fair) | … ÷ its capacity share | keyed messages that changed partition |",
            w = scenario.watched[0]
        )?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for o in outcomes {
            let watched = scenario.watched[0];
            let flips = o.flips_per_minute.iter().copied().fold(0.0, f64::max);
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} (p{} at {:.0} s) | {} |",
                o.policy.label(),
                ms(o.latency.p50),
                ms(o.latency.p99),
                ms(o.latency.max),
                o.final_lag(watched),
                o.max_lag(watched),
                if o.policy == Policy::Librdkafka {
                    "–".to_owned()
                } else {
                    format!("{flips:.1}")
                },
                o.max_window_share,
                o.max_share_over_capacity,
                o.max_share_over_capacity_at.1,
                o.max_share_over_capacity_at.0,
                o.keyed_moved
                    .map_or("–".to_owned(), |m| format!("{:.1} %", m * 100.0)),
            )?;
        }
        if let Some(images) = images {
            std::fs::create_dir_all(images)?;
            let file = images.join(format!("sim_{}.svg", scenario.name));
            plot::lag_panels(&file, scenario, outcomes)?;
            writeln!(
                md,
                "\n![lag per partition over time: {}](img/sim_{}.svg)\n",
                scenario.title, scenario.name
            )?;
        } else {
            writeln!(md)?;
        }
    }
    Ok(md)
}

/// A duration in milliseconds, for tables.
pub fn ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0} s", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1} s", v / 1000.0)
    } else {
        format!("{v:.0} ms")
    }
}
