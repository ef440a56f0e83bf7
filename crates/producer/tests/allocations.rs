//! Heap allocations per routing decision, counted by `allocation-counter`'s global allocator.

use ksp_core::health_channel;
use ksp_producer::{Partitioner, Route, Router, RouterConfig};

const TOPIC: &str = "orders";

fn router(partitions: i32) -> (ksp_core::HealthPublisher, Router) {
    let (mut publisher, feed) = health_channel();
    publisher.publish(ksp_core::testing::snapshot_with_unhealthy(
        TOPIC, partitions, 1,
    ));
    (
        publisher,
        Router::new(feed, &RouterConfig::default()).unwrap(),
    )
}

fn key_with_home(home: Option<i32>, partitions: i32) -> Vec<u8> {
    (0..)
        .map(|i| format!("customer-{i}").into_bytes())
        .find(|k| {
            let h = Partitioner::ConsistentRandom.home(Some(k), partitions);
            match home {
                Some(home) => h == Some(home),
                None => h != Some(1),
            }
        })
        .unwrap()
}

#[test]
fn keyless_routing_allocates_nothing() {
    for partitions in [8, 64, 1024] {
        let (_publisher, router) = router(partitions);
        // Warm up: the first decision on a thread may initialise thread-locals.
        router.route(TOPIC, None, None, 100);
        let info = allocation_counter::measure(|| {
            for _ in 0..10_000 {
                let d = router.route(TOPIC, None, None, 100);
                assert_eq!(d.route, Route::Sticky);
            }
        });
        assert_eq!(info.count_total, 0, "{partitions} partitions: {info:?}");
    }
}

#[test]
fn keyed_routing_home_and_fallbacks_allocate_nothing() {
    let (_publisher, router) = router(8);
    let home = key_with_home(None, 8);
    router.route(TOPIC, None, Some(&home), 100);
    let info = allocation_counter::measure(|| {
        for _ in 0..10_000 {
            assert_eq!(
                router.route(TOPIC, None, Some(&home), 100).route,
                Route::Home
            );
            // Unwatched topic: a fallback, decided from the snapshot alone.
            router.route("other", None, Some(&home), 100);
            router.route(TOPIC, Some(3), Some(&home), 100);
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
}

#[test]
fn moved_keys_allocate_only_when_first_moved() {
    let (_publisher, router) = router(8);
    let moved = key_with_home(Some(1), 8);
    let first = allocation_counter::measure(|| {
        assert_eq!(
            router.route(TOPIC, None, Some(&moved), 100).route,
            Route::Moved
        );
    });
    // Inserting the detour into the cache allocates.
    assert!(first.count_total > 0, "{first:?}");
    let hits = allocation_counter::measure(|| {
        for _ in 0..10_000 {
            assert_eq!(
                router.route(TOPIC, None, Some(&moved), 100).route,
                Route::Moved
            );
        }
    });
    // Cache hits: at most an occasional allocation by the cache's own housekeeping.
    assert!(hits.count_total <= 100, "{hits:?}");
}

/// Every send in flight holds one `produce` future, and it is moved into whatever task or
/// `FuturesUnordered` awaits it: it must not be larger than rdkafka's own send future.
#[tokio::test]
async fn the_produce_future_is_no_larger_than_rdkafkas_send_future() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut kafka = rdkafka::ClientConfig::new();
    kafka.set("bootstrap.servers", "127.0.0.1:1");
    let producer = ksp_producer::AsyncSmartProducer::builder(kafka.clone())
        .smart_enabled(false)
        .build()
        .unwrap();
    let plain: FutureProducer = kafka.create().unwrap();
    let ours =
        std::mem::size_of_val(&producer.produce(FutureRecord::<(), _>::to("t").payload("x")));
    let theirs = std::mem::size_of_val(&plain.send(
        FutureRecord::<(), _>::to("t").payload("x"),
        std::time::Duration::ZERO,
    ));
    assert!(
        ours <= theirs,
        "produce future {ours} bytes, rdkafka's send future {theirs}"
    );
}
