//! Properties of the router over arbitrary health snapshots and keys.

use std::sync::Arc;
use std::time::SystemTime;

use ksp_core::{HealthSnapshot, PartitionHealth, PartitionLag, TopicHealth, health_channel};
use ksp_producer::{Partitioner, Route, Router, RouterConfig};
use proptest::prelude::*;

const TOPIC: &str = "t";

/// One partition as a calculator (possibly a buggy custom one) might describe it.
#[derive(Debug, Clone)]
struct Part {
    id: i32,
    lag: i64,
    score: f64,
    healthy: bool,
    leader: bool,
}

fn part(id: impl Strategy<Value = i32>) -> impl Strategy<Value = Part> {
    let score = prop_oneof![
        4 => 0.0f64..=1.0,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => any::<f64>(),
    ];
    (
        id,
        any::<i64>(),
        score,
        any::<bool>(),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(id, lag, score, healthy, leader)| Part {
            id,
            lag,
            score,
            healthy,
            leader,
        })
}

/// Dense partitions `0..n` (n from 0 to 64, sometimes 1024), or arbitrary ids: sparse,
/// duplicated, negative or absurdly large, as a broken collector might report.
fn parts() -> impl Strategy<Value = Vec<Part>> {
    prop_oneof![
        (0usize..=64).prop_flat_map(dense),
        Just(1024usize).prop_flat_map(dense),
        prop::collection::vec(part(any::<i32>()), 0..20),
        prop::collection::vec(part(-5i32..70), 0..80),
    ]
}

fn dense(n: usize) -> impl Strategy<Value = Vec<Part>> {
    prop::collection::vec(part(Just(0)), n).prop_map(|mut parts| {
        for (i, p) in parts.iter_mut().enumerate() {
            p.id = i as i32;
        }
        parts
    })
}

fn snapshot(parts: &[Part]) -> HealthSnapshot {
    let health = parts
        .iter()
        .map(|p| {
            let mut lag = PartitionLag::from_lag(p.id, p.lag);
            lag.leader_available = p.leader;
            PartitionHealth::new(lag, p.score, p.healthy)
        })
        .collect();
    HealthSnapshot::new([Arc::new(TopicHealth::new(TOPIC, SystemTime::now(), health))])
}

fn partitioner() -> impl Strategy<Value = Partitioner> {
    prop::sample::select(vec![
        Partitioner::Random,
        Partitioner::Consistent,
        Partitioner::ConsistentRandom,
        Partitioner::Murmur2,
        Partitioner::Murmur2Random,
        Partitioner::Fnv1a,
        Partitioner::Fnv1aRandom,
    ])
}

fn router(parts: &[Part], partitioner: Partitioner) -> (ksp_core::HealthPublisher, Router) {
    let (mut publisher, feed) = health_channel();
    publisher.publish(snapshot(parts));
    let config = RouterConfig::default().with_partitioner(partitioner);
    (publisher, Router::new(feed, &config).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the snapshot, a chosen partition exists in it and has an available leader;
    /// a moved key's detour is routable, and a keyless batch goes to a routable partition
    /// unless fewer than half are routable (then it may spill to a partition with a leader);
    /// the router never panics.
    #[test]
    fn chosen_partitions_are_in_range_and_routable(
        parts in parts(),
        partitioner in partitioner(),
        keys in prop::collection::vec(prop::option::of(prop::collection::vec(any::<u8>(), 0..40)), 1..30),
        size in any::<usize>(),
    ) {
        let (publisher, router) = router(&parts, partitioner);
        let snapshot = publisher.current();
        let health = snapshot.topic(TOPIC).unwrap();
        for key in &keys {
            let decision = router.route(TOPIC, None, key.as_deref(), size);
            if let Some(p) = decision.partition {
                prop_assert!((0..health.partition_count()).contains(&p), "{decision:?}");
                prop_assert!(health.partition(p).unwrap().lag.leader_available, "{decision:?}");
                match decision.route {
                    Route::Moved | Route::Home => {
                        prop_assert!(health.is_routable(p), "{decision:?}");
                    }
                    Route::Sticky => prop_assert!(
                        health.is_routable(p) || !health.can_absorb_moved_keys(),
                        "{decision:?}"
                    ),
                    other => prop_assert!(false, "unexpected route {other:?}"),
                }
            }
            if decision.route == Route::Home {
                // A healthy home is set explicitly: the partition librdkafka would hash the key
                // to over the partition count health was judged with.
                let home = partitioner.home(key.as_deref(), health.partition_count());
                prop_assert_eq!(decision.partition, home);
            }
        }
    }

    /// Two routers reading the same snapshot send the same key to the same place: producer
    /// instances agree without talking.
    #[test]
    fn keyed_decisions_are_deterministic(
        parts in parts(),
        partitioner in partitioner(),
        keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 1..30),
    ) {
        let (_p1, first) = router(&parts, partitioner);
        let (_p2, second) = router(&parts, partitioner);
        for key in &keys {
            let a = first.route(TOPIC, None, Some(key), 10);
            let b = second.route(TOPIC, None, Some(key), 10);
            if a.route != Route::Sticky {
                prop_assert_eq!(a, b);
                // And again: a moved key keeps its detour.
                prop_assert_eq!(first.route(TOPIC, None, Some(key), 10), a);
            }
        }
    }

    /// No partition ever gets more than twice its fair share of keyless traffic (fair: one
    /// over the partitions with a leader), and shares add up to 1 whenever anything is
    /// routable.
    #[test]
    fn keyless_shares_are_capped(parts in parts()) {
        let snapshot = snapshot(&parts);
        let health = snapshot.topic(TOPIC).unwrap();
        let shares = health.keyless_shares();
        let eligible = health.partitions().iter().filter(|h| h.lag.leader_available).count();
        let total: f64 = shares.iter().sum();
        if health.routable_partitions().is_empty() {
            prop_assert_eq!(total, 0.0);
        } else {
            prop_assert!((total - 1.0).abs() < 1e-6, "{shares:?}");
            // The lag-only shares cap every partition at twice its fair share.
            let cap = 2.0 / eligible as f64;
            for s in &shares {
                prop_assert!(*s <= cap + 1e-6, "{shares:?} cap {cap}");
            }
        }
    }

    /// NaN, infinite or out-of-range scores never make a partition routable on their own:
    /// NaN is unhealthy, and the rest are clamped.
    #[test]
    fn nan_scores_are_never_routable(parts in parts()) {
        let snapshot = snapshot(&parts);
        let health = snapshot.topic(TOPIC).unwrap();
        for p in &parts {
            if p.score.is_nan() && (0..TopicHealth::MAX_PARTITIONS).contains(&p.id) {
                // The first entry for an id wins; only check ids that appear once.
                if parts.iter().filter(|q| q.id == p.id).count() == 1 {
                    prop_assert!(!health.is_routable(p.id));
                }
            }
        }
        for h in health.partitions() {
            prop_assert!((0.0..=1.0).contains(&h.score));
        }
    }

    /// An explicit partition is passed through untouched, whatever it is.
    #[test]
    fn explicit_partition_is_untouched(parts in parts(), partition in any::<i32>(), key in prop::option::of(prop::collection::vec(any::<u8>(), 0..8))) {
        let (_publisher, router) = router(&parts, Partitioner::default());
        let d = router.route(TOPIC, Some(partition), key.as_deref(), 1);
        prop_assert_eq!(d.partition, Some(partition));
        prop_assert_eq!(d.route, Route::Explicit);
    }

    /// A key's home is always a partition of the topic.
    #[test]
    fn home_is_in_range(partitioner in partitioner(), key in prop::collection::vec(any::<u8>(), 0..64), count in any::<i32>()) {
        if let Some(home) = partitioner.home(Some(&key), count) {
            prop_assert!((0..count).contains(&home));
        }
    }
}

#[test]
fn zero_and_one_partition_topics() {
    for healthy in [true, false] {
        let parts = vec![Part {
            id: 0,
            lag: 0,
            score: 1.0,
            healthy,
            leader: true,
        }];
        let (_p, router) = router(&parts, Partitioner::default());
        let d = router.route(TOPIC, None, None, 1);
        assert_eq!(d.partition, healthy.then_some(0));
        // A routable home is set explicitly; an unroutable one, with nowhere else to go,
        // falls back to librdkafka.
        let d = router.route(TOPIC, None, Some(b"k"), 1);
        assert_eq!(d.partition, healthy.then_some(0));
    }
    let (_p, router) = router(&[], Partitioner::default());
    assert_eq!(router.route(TOPIC, None, None, 1).partition, None);
    assert_eq!(router.route(TOPIC, None, Some(b"k"), 1).partition, None);
}
