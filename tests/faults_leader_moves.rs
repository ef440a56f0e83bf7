//! Partition leaders move during sends: the monitor follows them without a restart (its
//! health never goes stale), routing carries on, and every message is delivered exactly once.
//!
//! Added partitions cannot be shown here: librdkafka's mock cluster has no CreatePartitions.
//! They are covered by `partitions_added_to_a_topic_appear_in_the_next_snapshot` (monitor),
//! `partition_layout_is_reread_every_refresh` (collector) and
//! `a_partition_the_producer_does_not_know_yet_falls_back_instead_of_failing` (producer).

mod common;

use kafka_smart_producer::routing::Route;
use ksp_testkit::faults::{Fault, FaultSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_move_twice_during_sends() {
    common::init_tracing();
    let run = FaultSpec::new(Fault::LeaderMoves).run().await.unwrap();
    assert!(
        run.health.stale.is_empty(),
        "health went stale: {:?}",
        run.health
    );
    assert_eq!(run.monitor.consecutive_failures, 0, "{:?}", run.monitor);
    for i in 0..2 {
        let tally = run.ledgers[i].tally();
        assert_eq!((tally.failed, tally.pending), (0, 0), "{tally}");
        run.reconcile(i).assert_exactly_once(run.ledgers[i].tally());
        assert!(
            run.ledgers[i]
                .entries()
                .values()
                .all(|e| matches!(e.route, Some(Route::Sticky | Route::Home | Route::Moved))),
            "every message routed by fresh health"
        );
    }
}
