//! A broker goes down during sends, then comes back.

mod common;

use std::time::Duration;

use kafka_smart_producer::routing::Route;
use ksp_testkit::Outcome;
use ksp_testkit::faults::{Fault, FaultSpec, ON_BROKER_2};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_outage_loses_nothing_and_routes_around_the_down_broker() {
    common::init_tracing();
    // Down from 1.5 s to 4.5 s of a 6 s load; message.timeout.ms is 30 s.
    let spec = FaultSpec::new(Fault::BrokerDown).timing(
        Duration::from_secs(6),
        Duration::from_millis(1500),
        Duration::from_secs(3),
    );
    let run = spec.run().await.unwrap();

    // Accounting: every message delivered (the outage is shorter than message.timeout.ms),
    // found exactly once where its delivery report said (idempotence on; a batch the embedded
    // broker wrote twice, which a Kafka broker would not, is counted apart).
    for i in 0..2 {
        let tally = run.ledgers[i].tally();
        assert_eq!((tally.pending, tally.failed), (0, 0), "{tally}");
        run.reconcile(i).assert_exactly_once(run.ledgers[i].tally());
    }

    // Once the monitor has seen the outage (a refresh plus slack), nothing new is routed to
    // broker 2's partitions; keys living there move.
    let seen = spec.fault_at + spec.refresh + Duration::from_millis(700);
    let until = spec.fault_at + spec.fault_for;
    let mut moved = 0;
    for entry in run
        .during_fault()
        .filter(|e| e.sent_at >= seen && e.sent_at < until)
    {
        let Outcome::Delivered { partition, .. } = entry.outcome else {
            panic!("not delivered: {entry:?}")
        };
        assert!(!ON_BROKER_2.contains(&partition), "{entry:?}");
        moved += usize::from(entry.route == Some(Route::Moved));
    }
    assert!(moved > 0, "no key moved off the down broker");
    assert!(run.recovered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_outage_fails_stuck_messages_within_their_timeout_and_hands_them_back() {
    common::init_tracing();
    // Down from 1 s to 6 s, longer than the 2 s message timeout; the load lasts 4 s.
    let timeout = Duration::from_secs(2);
    let run = FaultSpec::new(Fault::BrokerDown)
        .timing(
            Duration::from_secs(4),
            Duration::from_secs(1),
            Duration::from_secs(5),
        )
        .message_timeout(timeout)
        .run()
        .await
        .unwrap();
    let mut failed = 0;
    for i in 0..2 {
        let tally = run.ledgers[i].tally();
        assert_eq!(tally.pending, 0, "{tally}");
        assert_eq!(tally.sent, tally.delivered + tally.failed, "{tally}");
        failed += tally.failed;
        for entry in run.ledgers[i].entries().values() {
            // Nothing hangs past message.timeout.ms (plus scheduling slack).
            assert!(
                entry.latency.unwrap() < timeout + Duration::from_secs(1),
                "{entry:?}"
            );
            if let Outcome::Failed { handed_back, .. } = &entry.outcome {
                assert!(handed_back, "{entry:?}");
            }
        }
        run.reconcile(i).assert_exactly_once(run.ledgers[i].tally());
    }
    eprintln!("messages that timed out on the down broker and were handed back: {failed}");
}
