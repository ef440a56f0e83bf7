//! Partition leaders move during sends: the monitor follows them without a restart (its
//! health never goes stale), routing carries on, and every message is delivered exactly once.
//!
//! Added partitions cannot be shown here: librdkafka's mock cluster has no CreatePartitions.
//! They are covered by `partitions_added_to_a_topic_appear_in_the_next_snapshot` (monitor),
//! `partition_layout_is_reread_every_refresh` (collector) and
//! `a_partition_the_producer_does_not_know_yet_falls_back_instead_of_failing` (producer).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kafka_smart_producer::{AsyncSmartProducer, Route};
use ksp_testkit::{LagScenario, Ledger, Load, MockKafka, read_topic};

const GROUP: &str = "processors";
const TOPIC: &str = "orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_move_twice_during_sends() {
    common::init_tracing();
    let kafka = MockKafka::start(3).unwrap();
    LagScenario::new(TOPIC, 6)
        .create(&kafka, GROUP)
        .await
        .unwrap();
    let move_leaders = |shift: i32| {
        for p in 0..6 {
            kafka
                .cluster()
                .partition_leader(TOPIC, p, Some((p + shift) % 3 + 1))
                .unwrap();
        }
    };
    move_leaders(0);
    let mut config = kafka.client_config();
    config.set("enable.idempotence", "true");
    let producer = AsyncSmartProducer::builder(config)
        .consumer_group(GROUP)
        .topics([TOPIC])
        .refresh_interval(Duration::from_millis(200))
        .max_staleness(Duration::from_millis(600))
        .build()
        .unwrap();
    producer.refresh_health().await.unwrap();

    let (keyless, keyed) = (Ledger::new(), Ledger::new());
    let loads = {
        let (producer, keyless, keyed) = (producer.clone(), keyless.clone(), keyed.clone());
        tokio::spawn(async move {
            let (a, b) = (
                Load::new(TOPIC, 300, Duration::from_secs(5)),
                Load::new(TOPIC, 200, Duration::from_secs(5)).keyed(300),
            );
            futures::join!(a.run(&producer, &keyless), b.run(&producer, &keyed));
        })
    };
    // Watch the health the whole time: it must never go stale.
    let went_stale = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (producer, went_stale) = (producer.clone(), went_stale.clone());
        tokio::spawn(async move {
            loop {
                if producer.topic_summary(TOPIC).is_none_or(|s| s.stale) {
                    went_stale.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let start = Instant::now();
    tokio::time::sleep_until((start + Duration::from_secs(1)).into()).await;
    move_leaders(1);
    tokio::time::sleep_until((start + Duration::from_millis(2500)).into()).await;
    move_leaders(2);
    loads.await.unwrap();
    watcher.abort();

    assert!(
        !went_stale.load(Ordering::SeqCst),
        "health went stale while leaders moved"
    );
    let stats = producer.monitor_stats().unwrap();
    assert_eq!(stats.consecutive_failures, 0, "{stats:?}");
    assert_eq!(
        producer.healthy_partitions(TOPIC).unwrap(),
        [0, 1, 2, 3, 4, 5]
    );

    let consumed = read_topic(&kafka.client_config(), TOPIC, Duration::from_secs(30))
        .await
        .unwrap();
    for ledger in [&keyless, &keyed] {
        let tally = ledger.tally();
        assert_eq!((tally.failed, tally.pending), (0, 0), "{tally}");
        let check = ledger.reconcile(&consumed);
        assert!(
            check.lost.is_empty() && check.duplicated.is_empty(),
            "{check:?}"
        );
        assert!(
            check.misplaced.is_empty() && check.failed_but_written.is_empty(),
            "{check:?}"
        );
        assert_eq!(check.delivered_found, tally.sent);
        assert!(
            ledger
                .entries()
                .values()
                .all(|e| matches!(e.route, Some(Route::Sticky | Route::Home))),
            "every message routed by fresh health"
        );
    }
}
