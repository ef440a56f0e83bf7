//! Every benchmark, at tiny sizes: they keep compiling and keep measuring what they claim.
//! (The benchmarks themselves never run in the test command.)

use std::time::Duration;

use ksp_bench::sim::{Calc, Policy};
use ksp_bench::{alloc, refresh, simulate, simulation_markdown, throughput};

#[test]
fn the_simulator_is_deterministic_and_covers_every_scenario_and_policy() {
    let first = simulate(10, 7);
    let second = simulate(10, 7);
    assert_eq!(first.len(), 12);
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.outcomes.len(), Policy::ALL.len());
        for (x, y) in a.outcomes.iter().zip(&b.outcomes) {
            assert_eq!(x.latency, y.latency, "{}: {:?}", a.scenario.name, x.policy);
            assert_eq!(x.lags, y.lags, "{}: {:?}", a.scenario.name, x.policy);
            assert_eq!(x.shares, y.shares, "{}: {:?}", a.scenario.name, x.policy);
        }
    }
    // A different seed gives a different run (the randomness is real, just seeded).
    let other = simulate(10, 8);
    assert!(
        first
            .iter()
            .zip(&other)
            .any(|(a, b)| a.outcomes[0].lags != b.outcomes[0].lags)
    );
}

#[test]
fn ours_beats_librdkafka_on_one_slow_consumer_even_in_a_short_run() {
    let runs = simulate(30, 1);
    let run = runs.iter().find(|r| r.scenario.name == "one_slow").unwrap();
    let by = |p: Policy| run.outcomes.iter().find(|o| o.policy == p).unwrap();
    let ours = by(Policy::Ours(Calc::Relative));
    let plain = by(Policy::Librdkafka);
    assert!(
        ours.latency.p99 * 10.0 < plain.latency.p99,
        "{:?} vs {:?}",
        ours.latency,
        plain.latency
    );
    assert!(ours.final_lag(3) < plain.final_lag(3));
}

#[test]
fn simulation_report_and_plots_are_written() {
    let dir = std::env::temp_dir().join(format!("ksp-bench-smoke-{}", std::process::id()));
    let md = simulation_markdown(&simulate(5, 1), Some(&dir)).unwrap();
    assert!(md.contains("#### one consumer at 10 % speed"), "{md}");
    assert!(md.contains("ours, relative calculator"));
    let svg = std::fs::read_to_string(dir.join("sim_one_slow.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("partition 3"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn allocation_report_shows_a_free_keyless_path() {
    let table = alloc::table();
    for partitions in [8, 64, 1024] {
        assert!(
            table.contains(&format!("| {partitions} | 0 | 0 |")),
            "{table}"
        );
    }
}

/// Both producers, with the broker in this process and in a child process, and batch fill
/// read from both producers' statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_bench_runs_both_producers() {
    let settings = throughput::Settings {
        messages: 2_000,
        rounds: 1,
        window: 100,
    };
    for broker in [throughput::Broker::InProcess, throughput::Broker::Process] {
        let results = throughput::measure_with(
            settings,
            broker,
            std::path::Path::new(env!("CARGO_BIN_EXE_ksp-bench")),
        )
        .await
        .unwrap();
        assert_eq!(results.len(), 4);
        for r in &results {
            assert!(r.smart > 0.0 && r.plain > 0.0, "{r:?}");
            // One round of 2 000 messages each, every one of them in some batch.
            assert_eq!(r.smart_batches.messages, 2_000, "{broker:?} {r:?}");
            assert_eq!(r.plain_batches.messages, 2_000, "{broker:?} {r:?}");
            assert!(r.smart_batches.bytes_per_batch() > 0.0, "{r:?}");
        }
        let table = throughput::table(&results, settings, broker);
        assert!(table.contains("| 100 B | none |"), "{table}");
        assert!(table.contains("messages per batch"), "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_bench_counts_batched_requests() {
    let row = refresh::measure(8, Duration::ZERO, 3).await.unwrap();
    assert_eq!(row.requests, (1.0, 1.0, 3.0), "{row:?}");
    assert!(row.p50 > Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_sharing_one_collector_sends_kafka_what_one_instance_sends() {
    use ksp_bench::fleet::{self, Sharing};
    let alone = fleet::requests_per_refresh(1, Sharing::Redis, 2)
        .await
        .unwrap();
    let five = fleet::requests_per_refresh(5, Sharing::Redis, 2)
        .await
        .unwrap();
    let skewed = fleet::requests_per_refresh(5, Sharing::RedisSkewed, 2)
        .await
        .unwrap();
    assert!(alone.0 > 0.0 && alone.1 > 0.0, "{alone:?}");
    // Unshared, five instances would send five times as much; sampling at the window's edges
    // can catch one collection more or less.
    assert!(five.1 < 2.0 * alone.1, "alone {alone:?} five {five:?}");
    assert!(
        skewed.1 < 2.0 * alone.1,
        "alone {alone:?} skewed {skewed:?}"
    );
    let rows = fleet::first_move_latency(20).await.unwrap();
    assert_eq!(rows.len(), 3);
    for (name, stats) in rows {
        assert_eq!((stats.failed, stats.not_moved), (0, 0), "{name}");
    }
}
