//! Assembles `docs/benchmarks.md` from the measurements.

use std::fmt::Write as _;
use std::path::Path;

use crate::sim::{Calc, Outcome, Policy};

/// Criterion's median estimate of a benchmark, in nanoseconds, if `cargo bench` ran it.
pub fn criterion_median(target: &Path, group: &str, id: &str) -> Option<f64> {
    let path = target
        .join("criterion")
        .join(group)
        .join(id)
        .join("new")
        .join("estimates.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// The routing-cost table from criterion's results.
pub fn routing_table(target: &Path) -> (String, Option<(f64, f64)>) {
    let mut md = String::from(
        "| partitions | keyless | keyed, home healthy | keyed, moved (cache hit) | keyless, snapshots swapped meanwhile | keyed moved, swapped meanwhile |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut worst: Option<(f64, f64)> = None;
    for partitions in [8, 64, 1024] {
        let get = |group: &str, name: &str| {
            criterion_median(target, group, &format!("{name}/{partitions}"))
        };
        let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1} ns"));
        let keyless = get("route", "keyless");
        let moved = get("route", "keyed_moved_hit");
        let swapped_keyless = get("route_during_swaps", "keyless");
        let swapped_moved = get("route_during_swaps", "keyed_moved_hit");
        for (k, m) in [(keyless, moved), (swapped_keyless, swapped_moved)] {
            if let (Some(k), Some(m)) = (k, m) {
                let (wk, wm) = worst.unwrap_or((0.0, 0.0));
                worst = Some((wk.max(k), wm.max(m)));
            }
        }
        let _ = writeln!(
            md,
            "| {partitions} | {} | {} | {} | {} | {} |",
            cell(keyless),
            cell(get("route", "keyed_home")),
            cell(moved),
            cell(swapped_keyless),
            cell(swapped_moved),
        );
    }
    let _ = writeln!(
        md,
        "\nCriterion medians (`cargo bench -p ksp-producer --bench routing`); \"swapped \
         meanwhile\": another thread publishes a new snapshot in a loop (8 and 1024 partitions)."
    );
    (md, worst)
}

/// Check mark for a met target.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// The outcome of `policy` in a scenario's outcomes.
pub fn outcome(outcomes: &[Outcome], policy: Policy) -> &Outcome {
    outcomes
        .iter()
        .find(|o| o.policy == policy)
        .unwrap_or(&outcomes[0])
}

/// "Ours" with the default calculator.
pub const OURS: Policy = Policy::Ours(Calc::Relative);

/// Writes `contents` to `path`, creating directories.
pub fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, contents)?;
    Ok(())
}
