//! A broker goes down during sends, then comes back.

mod common;

use std::time::{Duration, Instant};

use kafka_smart_producer::rdkafka::mocking::MockCoordinator;
use kafka_smart_producer::{AsyncSmartProducer, Route};
use ksp_testkit::{LagScenario, Ledger, Load, MockKafka, Outcome, read_topic};

const GROUP: &str = "processors";
const TOPIC: &str = "orders";
/// Partitions led by broker 2 (leaders are `p % 3 + 1`).
const ON_BROKER_2: [i32; 2] = [1, 4];
const REFRESH: Duration = Duration::from_millis(300);

async fn cluster() -> MockKafka {
    let kafka = MockKafka::start(3).unwrap();
    LagScenario::new(TOPIC, 6)
        .create(&kafka, GROUP)
        .await
        .unwrap();
    for p in 0..6 {
        kafka
            .cluster()
            .partition_leader(TOPIC, p, Some(p % 3 + 1))
            .unwrap();
    }
    // Lag collection keeps working: the group's coordinator is on a broker that stays up.
    kafka
        .cluster()
        .coordinator(MockCoordinator::Group(GROUP.into()), 1)
        .unwrap();
    kafka
}

async fn producer(kafka: &MockKafka, message_timeout: Duration) -> AsyncSmartProducer {
    let mut config = kafka.client_config();
    config.set("enable.idempotence", "true").set(
        "message.timeout.ms",
        message_timeout.as_millis().to_string(),
    );
    let producer = AsyncSmartProducer::builder(config)
        .consumer_group(GROUP)
        .topics([TOPIC])
        .refresh_interval(REFRESH)
        .build()
        .unwrap();
    producer.refresh_health().await.unwrap();
    assert_eq!(
        producer.healthy_partitions(TOPIC).unwrap(),
        [0, 1, 2, 3, 4, 5]
    );
    producer
}

/// Runs a keyless and a keyed load for `duration` while broker 2 is down from `down_at` to
/// `up_at` (from the start of the load). Returns both ledgers.
async fn run_with_outage(
    kafka: &MockKafka,
    producer: &AsyncSmartProducer,
    duration: Duration,
    down_at: Duration,
    up_at: Duration,
) -> (std::sync::Arc<Ledger>, std::sync::Arc<Ledger>) {
    let keyless = Ledger::new();
    let keyed = Ledger::new();
    let loads = {
        let (producer, keyless, keyed) = (producer.clone(), keyless.clone(), keyed.clone());
        tokio::spawn(async move {
            let (a, b) = (
                Load::new(TOPIC, 300, duration),
                Load::new(TOPIC, 200, duration).keyed(500),
            );
            futures::join!(a.run(&producer, &keyless), b.run(&producer, &keyed));
        })
    };
    let start = Instant::now();
    tokio::time::sleep_until((start + down_at).into()).await;
    kafka.cluster().broker_down(2).unwrap();
    tokio::time::sleep_until((start + up_at).into()).await;
    kafka.cluster().broker_up(2).unwrap();
    // Every produce resolves: the loads only end when all of them have.
    tokio::time::timeout(Duration::from_secs(60), loads)
        .await
        .expect("every produce resolves")
        .unwrap();
    (keyless, keyed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_outage_loses_nothing_and_routes_around_the_down_broker() {
    common::init_tracing();
    let kafka = cluster().await;
    let producer = producer(&kafka, Duration::from_secs(30)).await;
    let (down, up) = (Duration::from_millis(1500), Duration::from_millis(4500));
    let (keyless, keyed) =
        run_with_outage(&kafka, &producer, Duration::from_secs(6), down, up).await;

    // Accounting: every message delivered (the outage is shorter than message.timeout.ms).
    for ledger in [&keyless, &keyed] {
        let tally = ledger.tally();
        assert_eq!(tally.pending, 0, "{tally}");
        assert_eq!(tally.failed, 0, "{tally}");
        assert_eq!(tally.sent, tally.delivered, "{tally}");
    }

    // Once the monitor has seen the outage (a refresh plus slack), nothing new is routed to
    // broker 2's partitions; keys living there move.
    let seen_down = down + REFRESH + Duration::from_millis(700);
    let mut moved = 0;
    for (ledger, keyed) in [(&keyless, false), (&keyed, true)] {
        for entry in ledger.entries().values() {
            if entry.sent_at < seen_down || entry.sent_at >= up {
                continue;
            }
            let Outcome::Delivered { partition, .. } = entry.outcome else {
                unreachable!()
            };
            assert!(
                !ON_BROKER_2.contains(&partition),
                "sent at {:?} to partition {partition} ({:?})",
                entry.sent_at,
                entry.route
            );
            if keyed && entry.route == Some(Route::Moved) {
                moved += 1;
            }
        }
    }
    assert!(moved > 0, "no key moved off the down broker");

    // The topic holds exactly the delivered messages, once each (idempotence on).
    let consumed = read_topic(&kafka.client_config(), TOPIC, Duration::from_secs(30))
        .await
        .unwrap();
    for ledger in [&keyless, &keyed] {
        let check = ledger.reconcile(&consumed);
        assert!(
            check.lost.is_empty() && check.duplicated.is_empty(),
            "{check:?}"
        );
        assert!(
            check.misplaced.is_empty() && check.failed_but_written.is_empty(),
            "{check:?}"
        );
        assert_eq!(check.delivered_found, ledger.tally().delivered);
    }
    // The only messages in the topic are the scenario's 60 and the ledgers'.
    let sent = keyless.tally().sent + keyed.tally().sent;
    assert_eq!(consumed.len(), sent + 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_outage_fails_stuck_messages_within_their_timeout_and_hands_them_back() {
    common::init_tracing();
    let kafka = cluster().await;
    let timeout = Duration::from_secs(2);
    let producer = producer(&kafka, timeout).await;
    let (keyless, keyed) = run_with_outage(
        &kafka,
        &producer,
        Duration::from_secs(4),
        Duration::from_millis(1000),
        Duration::from_millis(6000),
    )
    .await;

    let consumed = read_topic(&kafka.client_config(), TOPIC, Duration::from_secs(30))
        .await
        .unwrap();
    let mut failed = 0;
    for ledger in [&keyless, &keyed] {
        let tally = ledger.tally();
        assert_eq!(tally.pending, 0, "{tally}");
        assert_eq!(tally.sent, tally.delivered + tally.failed, "{tally}");
        failed += tally.failed;
        for entry in ledger.entries().values() {
            // Nothing hangs past message.timeout.ms (plus scheduling slack).
            let latency = entry.latency.unwrap();
            assert!(latency < timeout + Duration::from_secs(1), "{entry:?}");
            if let Outcome::Failed { handed_back, .. } = &entry.outcome {
                assert!(handed_back, "{entry:?}");
            }
        }
        let check = ledger.reconcile(&consumed);
        assert!(check.lost.is_empty(), "{check:?}");
        assert!(check.duplicated.is_empty(), "{check:?}");
        assert!(check.misplaced.is_empty(), "{check:?}");
        assert!(check.failed_but_written.is_empty(), "{check:?}");
    }
    eprintln!("messages that timed out on the down broker and were handed back: {failed}");
}
