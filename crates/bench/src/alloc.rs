//! Heap allocations per routing decision (`allocation-counter` replaces this binary's global
//! allocator with a counting one).

use std::fmt::Write as _;

use ksp_core::health_channel;
use ksp_producer::{Partitioner, Router, RouterConfig};

const TOPIC: &str = "orders";
const DECISIONS: u64 = 100_000;

fn allocations_per_decision(mut decide: impl FnMut()) -> f64 {
    decide();
    let info = allocation_counter::measure(|| {
        for _ in 0..DECISIONS {
            decide();
        }
    });
    info.count_total as f64 / DECISIONS as f64
}

/// The markdown table: allocations per decision for each path and partition count.
pub fn table() -> String {
    let mut md = String::from(
        "| partitions | keyless | keyed, home healthy | keyed, moved (cache hit) |\n|---:|---:|---:|---:|\n",
    );
    for partitions in [8, 64, 1024] {
        let (mut publisher, feed) = health_channel();
        publisher.publish(ksp_core::testing::snapshot_with_unhealthy(
            TOPIC, partitions, 1,
        ));
        let router = Router::new(feed, &RouterConfig::default()).expect("valid config");
        let key = |moved: bool| {
            (0..)
                .map(|i| format!("customer-{i}").into_bytes())
                .find(|k| {
                    (Partitioner::ConsistentRandom.home(Some(k), partitions) == Some(1)) == moved
                })
                .unwrap_or_default()
        };
        let (home, moved) = (key(false), key(true));
        let keyless = allocations_per_decision(|| {
            router.route(TOPIC, None, None, 100);
        });
        let at_home = allocations_per_decision(|| {
            router.route(TOPIC, None, Some(&home), 100);
        });
        let hit = allocations_per_decision(|| {
            router.route(TOPIC, None, Some(&moved), 100);
        });
        let _ = writeln!(md, "| {partitions} | {keyless} | {at_home} | {hit:.4} |");
    }
    let _ = writeln!(
        md,
        "\nAverages over {DECISIONS} decisions, counted by a global counting allocator."
    );
    md
}
