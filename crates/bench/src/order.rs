//! Key order under each policy: per-key reorderings counted over every consumed message, the
//! slow partition's share of keyed traffic against its share of the consumers' capacity, and
//! what strict key order's waits cost (`ksp-bench order`).

use std::fmt::Write as _;

use crate::sim::{self, Calc, Keys, Ours, Outcome, Policy, Scenario};

/// The policies compared.
pub const POLICIES: [Policy; 4] = [
    Policy::Librdkafka,
    Policy::PythonPeer,
    Policy::Ours(Calc::Relative),
    Policy::OursStrict(Calc::Relative),
];

/// Strict key order, the policy under test.
const STRICT: Policy = Policy::OursStrict(Calc::Relative);

/// A `max_hold` short enough that keys hit it: the pins then keep order.
const SHORT_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

/// The keyed scenarios: 8 partitions, 2000 msg/s, partition 3 slow.
pub fn scenarios(seconds: u32) -> Vec<Scenario> {
    let keyed = |name, title, exponent, flapping: bool| {
        let base = crate::scenarios::all(seconds)
            .into_iter()
            .find(|s| s.name == "keyed_skew")
            .expect("the keyed_skew scenario exists");
        Scenario {
            name,
            title,
            keys: Some(Keys {
                count: 10_000,
                exponent,
            }),
            drain: if flapping {
                Box::new(|p, t| {
                    if p == 3 && ((t / 5.0) as u64).is_multiple_of(2) {
                        50.0
                    } else {
                        500.0
                    }
                })
            } else {
                base.drain
            },
            ..base
        }
    };
    vec![
        keyed(
            "keyed_skew",
            "Zipf (s = 1) over 10 000 keys; partition 3 at 10 % speed",
            1.0,
            false,
        ),
        keyed(
            "keyed_uniform",
            "10 000 keys drawn uniformly; partition 3 at 10 % speed",
            0.0,
            false,
        ),
        keyed(
            "keyed_flapping",
            "10 000 keys drawn uniformly; partition 3 alternates 10 % and full speed every 5 s",
            0.0,
            true,
        ),
    ]
}

/// The slow partition's share of the consumers' capacity over the run.
fn capacity_share(scenario: &Scenario, partition: usize) -> f64 {
    let seconds = f64::from(scenario.seconds);
    let steps = (seconds * 10.0) as usize;
    let (mut mine, mut all) = (0.0, 0.0);
    for i in 0..steps {
        let t = i as f64 / 10.0;
        for p in 0..scenario.partitions {
            let d = (scenario.drain)(p, t);
            all += d;
            if p == partition {
                mine += d;
            }
        }
    }
    mine / all
}

/// Runs every scenario under every policy and returns the table (markdown).
pub fn table(seconds: u32, seed: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | policy | reordered | slow share ÷ capacity share | p50 ms | p99 ms | waited | wait p50 / p99 ms | pinned |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for scenario in scenarios(seconds) {
        let slow = 3;
        let capacity = capacity_share(&scenario, slow);
        let short = Ours {
            max_hold: Some(SHORT_HOLD),
            ..Ours::default()
        };
        let runs = POLICIES
            .iter()
            .map(|&p| {
                (
                    p.label().to_owned(),
                    sim::run(&scenario, p, &Ours::default(), seed),
                )
            })
            .chain(std::iter::once((
                format!("{}, max_hold {} s", STRICT.label(), SHORT_HOLD.as_secs()),
                sim::run(&scenario, STRICT, &short, seed),
            )));
        for (label, o) in runs {
            let o: Outcome = o;
            let share = o.shares[slow] / scenario.partitions as f64;
            let total = o.shares.iter().sum::<f64>() / scenario.partitions as f64;
            let keyed = (f64::from(scenario.seconds) * 2000.0 * total).max(1.0);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.2} % | {} | {} |",
                scenario.name,
                label,
                o.reorderings,
                share / capacity,
                o.latency.p50,
                o.latency.p99,
                100.0 * o.held as f64 / keyed,
                if o.held > 0 {
                    format!("{:.0} / {:.0}", o.hold_wait.p50, o.hold_wait.p99)
                } else {
                    "–".to_owned()
                },
                o.pinned,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checker can fail: relaxed routing reorders keys when a consumer slows down, strict
    /// key order does not.
    #[test]
    fn strict_key_order_never_reorders_where_relaxed_does() {
        let scenario = scenarios(60).remove(1);
        let relaxed = sim::run(&scenario, Policy::Ours(Calc::Relative), &Ours::default(), 1);
        let strict = sim::run(
            &scenario,
            Policy::OursStrict(Calc::Relative),
            &Ours::default(),
            1,
        );
        assert!(relaxed.reorderings > 0, "{}", relaxed.reorderings);
        assert_eq!(strict.reorderings, 0);
        assert!(strict.held > 0);
        // Strict still relieves the slow partition: less than its home share of 1/8.
        assert!(strict.shares[3] < 0.5, "{:?}", strict.shares);
        // Bounds hit: keys pinned to their old partition, still never reordered.
        let short = Ours {
            max_hold: Some(SHORT_HOLD),
            ..Ours::default()
        };
        let pinned = sim::run(&scenario, STRICT, &short, 1);
        assert!(pinned.pinned > 0);
        assert_eq!(pinned.reorderings, 0);
    }
}
