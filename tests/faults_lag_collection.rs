//! Lag collection fails (injected errors on ListOffsets, OffsetFetch, Metadata; slow brokers):
//! the monitor keeps the last health, turns it stale after `max_staleness` (routing falls
//! back), retries with backoff, recovers by itself and reports the failure in a counter and a
//! log line. Sends are unaffected: every message is delivered exactly once.

mod common;

use kafka_smart_producer::routing::{Fallback, Route};
use ksp_testkit::Outcome;
use ksp_testkit::faults::{Fault, FaultRun, FaultSpec, GROUP, LAGGING, SETUP_MESSAGES};

async fn run(fault: Fault) -> FaultRun {
    let run = FaultSpec::new(fault).run().await.unwrap();
    let spec = &run.spec;

    // Health went stale during the fault, not before it, and came back by itself.
    let (first, _) = *run.health.stale.first().expect("health turned stale");
    assert!(first >= spec.fault_at, "{:?}", run.health);
    assert!(
        first <= spec.fault_at + spec.max_staleness + spec.refresh * 3,
        "{:?}",
        run.health
    );
    assert!(run.recovered);
    assert!(run.monitor.failures > 0, "{:?}", run.monitor);
    assert_eq!(run.monitor.consecutive_failures, 0, "{:?}", run.monitor);

    // Fresh health steered around the lagging partition; stale health fell back.
    let (mut sticky, mut stale) = (0, 0);
    for entry in run.ledgers.iter().flat_map(|l| l.entries().into_values()) {
        let Outcome::Delivered { partition, .. } = entry.outcome else {
            panic!("not delivered: {entry:?}")
        };
        match entry.route {
            Some(Route::Sticky) => {
                sticky += 1;
                assert_ne!(partition, LAGGING, "{entry:?}");
            }
            Some(Route::Fallback(Fallback::Stale)) => stale += 1,
            _ => {}
        }
    }
    assert!(sticky > 0 && stale > 0, "sticky {sticky}, stale {stale}");

    // Exactly once.
    for i in 0..2 {
        run.reconcile(i).assert_exactly_once(run.ledgers[i].tally());
    }
    let ledgers: usize = run.ledgers.iter().map(|l| l.tally().sent).sum();
    assert_eq!(run.consumed.len(), ledgers + SETUP_MESSAGES);
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_errors() {
    let logs = common::capture_logs();
    run(Fault::ListOffsetsErrors).await;
    let logs = logs.text();
    // Retried with backoff inside each refresh, reported once per failure streak, recovered.
    assert!(logs.contains("retrying"), "{logs}");
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && l.contains("lag collection failed; keeping the last health")
            && l.contains(GROUP)
            && l.contains("high watermarks")),
        "{logs}"
    );
    assert!(logs.contains("lag collection recovered"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_fetch_errors() {
    let logs = common::capture_logs();
    let run = run(Fault::OffsetFetchErrors).await;
    assert!(
        run.monitor.last_error.is_none() || run.monitor.consecutive_failures == 0,
        "{:?}",
        run.monitor
    );
    let logs = logs.text();
    assert!(
        logs.contains("committed offsets of group `processors`"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_errors() {
    let logs = common::capture_logs();
    run(Fault::MetadataErrors).await;
    let logs = logs.text();
    assert!(logs.contains("metadata of `orders`"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_brokers() {
    common::init_tracing();
    run(Fault::SlowBrokers).await;
}
