//! Cost of one routing decision.
//!
//! `cargo bench -p ksp-producer --bench routing`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ksp_core::{HealthPublisher, HealthSnapshot, health_channel};
use ksp_producer::{KeyOrderConfig, KeyStep, Partitioner, Route, Router, RouterConfig};

const TOPIC: &str = "orders";
const UNHEALTHY: i32 = 1;

/// A snapshot of `partitions` partitions where only partition 1 is unhealthy.
fn snapshot(partitions: i32) -> HealthSnapshot {
    ksp_core::testing::snapshot_with_unhealthy(TOPIC, partitions, UNHEALTHY)
}

fn setup(partitions: i32) -> (HealthPublisher, Router, Vec<u8>, Vec<u8>) {
    let (mut publisher, feed) = health_channel();
    publisher.publish(snapshot(partitions));
    let router = Router::new(feed, &RouterConfig::default()).unwrap();
    let key_with_home = |wanted: bool| {
        (0..)
            .map(|i| format!("customer-{i}").into_bytes())
            .find(|k| {
                (Partitioner::ConsistentRandom.home(Some(k), partitions) == Some(UNHEALTHY))
                    == wanted
            })
            .unwrap()
    };
    let home = key_with_home(false);
    let moved = key_with_home(true);
    assert_eq!(
        router.route(TOPIC, None, Some(&home), 100).route,
        Route::Home
    );
    assert_eq!(
        router.route(TOPIC, None, Some(&moved), 100).route,
        Route::Moved
    );
    (publisher, router, home, moved)
}

/// The three decisions on one router: keyless, keyed staying home, keyed moved (cache hit).
fn bench_decisions(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    partitions: i32,
    router: &Router,
    home: &[u8],
    moved: &[u8],
) {
    group.bench_with_input(BenchmarkId::new("keyless", partitions), router, |b, r| {
        b.iter(|| r.route(black_box(TOPIC), None, None, black_box(100)))
    });
    for (name, key) in [("keyed_home", home), ("keyed_moved_hit", moved)] {
        group.bench_with_input(BenchmarkId::new(name, partitions), router, |b, r| {
            b.iter(|| r.route(black_box(TOPIC), None, Some(black_box(key)), 100))
        });
    }
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for partitions in [8, 64, 1024] {
        let (_publisher, router, home, moved) = setup(partitions);
        bench_decisions(&mut group, partitions, &router, &home, &moved);
    }
    group.finish();
}

/// The same decisions while another thread publishes a new snapshot as fast as it can.
fn decisions_during_swaps(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_during_swaps");
    for partitions in [8, 1024] {
        let (mut publisher, router, home, moved) = setup(partitions);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    publisher.publish(snapshot(partitions));
                }
            })
        };
        bench_decisions(&mut group, partitions, &router, &home, &moved);
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    }
    group.finish();
}

/// Keyed decisions under strict key order: a key at home while every partition is healthy, a
/// key at home while another partition's keys wait (one transition open), and a key that waits.
fn strict_decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_strict");
    for partitions in [8, 64, 1024] {
        let (mut publisher, feed) = health_channel();
        let config = RouterConfig::default().with_key_order(KeyOrderConfig::strict());
        let router = Router::new(feed, &config).unwrap();
        let all_healthy = ksp_core::testing::snapshot_with_unhealthy(TOPIC, partitions, -1);
        publisher.publish(all_healthy);
        router.observe_health();
        let (_, _, home, moved) = setup(partitions);
        assert!(matches!(
            router.route_in_order(TOPIC, &home),
            KeyStep::Go(d) if d.route == Route::Home
        ));
        group.bench_with_input(
            BenchmarkId::new("keyed_home_nothing_moving", partitions),
            &router,
            |b, r| b.iter(|| r.route_in_order(black_box(TOPIC), black_box(&home))),
        );
        // Partition 1 turns unhealthy; its consumer never commits, so its keys keep waiting.
        publisher.publish(snapshot(partitions));
        router.observe_health();
        assert!(matches!(
            router.route_in_order(TOPIC, &moved),
            KeyStep::Wait {
                partition: UNHEALTHY
            }
        ));
        group.bench_with_input(
            BenchmarkId::new("keyed_home_during_a_move", partitions),
            &router,
            |b, r| b.iter(|| r.route_in_order(black_box(TOPIC), black_box(&home))),
        );
        group.bench_with_input(
            BenchmarkId::new("keyed_waiting", partitions),
            &router,
            |b, r| b.iter(|| r.route_in_order(black_box(TOPIC), black_box(&moved))),
        );
    }
    group.finish();
}

criterion_group!(benches, decisions, decisions_during_swaps, strict_decisions);
criterion_main!(benches);
