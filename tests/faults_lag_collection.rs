//! Lag collection fails (injected errors on ListOffsets, OffsetFetch, Metadata; a slow
//! broker): the monitor keeps the last health, turns it stale after `max_staleness` (routing
//! falls back), retries with backoff, recovers by itself and reports the failure in a counter
//! and a log line. Sends are unaffected: every message is delivered exactly once.

mod common;

use std::time::{Duration, Instant};

use kafka_smart_producer::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use kafka_smart_producer::{AsyncSmartProducer, Fallback, Route};
use ksp_testkit::{LagScenario, Ledger, Load, MockKafka, Outcome, read_topic};

const TOPIC: &str = "orders";
const SLOW: i32 = 2;

struct Run {
    kafka: MockKafka,
    producer: AsyncSmartProducer,
    group: String,
}

/// Partition 2 lags 5000 (so fresh health steers around it); refresh every 200 ms, stale after
/// 1 s.
async fn setup(group: &str) -> Run {
    let kafka = MockKafka::start(3).unwrap();
    LagScenario::new(TOPIC, 6)
        .lag(SLOW as usize, 5000)
        .create(&kafka, group)
        .await
        .unwrap();
    let mut config = kafka.client_config();
    config.set("enable.idempotence", "true");
    let producer = AsyncSmartProducer::builder(config)
        .consumer_group(group)
        .topics([TOPIC])
        .refresh_interval(Duration::from_millis(200))
        .collect_timeout(Duration::from_millis(300))
        .max_staleness(Duration::from_secs(1))
        .build()
        .unwrap();
    producer.refresh_health().await.unwrap();
    Run {
        kafka,
        producer,
        group: group.to_owned(),
    }
}

/// Runs a load for 6 s; the fault is on from 1 s to 3.5 s. Returns the ledger.
async fn run_fault(
    run: &Run,
    on: impl FnOnce(&MockKafka),
    off: impl FnOnce(&MockKafka),
) -> std::sync::Arc<Ledger> {
    let ledger = Ledger::new();
    let load = {
        let (producer, ledger) = (run.producer.clone(), ledger.clone());
        tokio::spawn(async move {
            Load::new(TOPIC, 300, Duration::from_secs(6))
                .run(&producer, &ledger)
                .await;
        })
    };
    let start = Instant::now();
    tokio::time::sleep_until((start + Duration::from_secs(1)).into()).await;
    on(&run.kafka);
    let failures_before = run.producer.monitor_stats().unwrap().failures;
    // While failing, the health turns stale.
    let stale = common::eventually(Duration::from_secs(5), || async {
        run.producer.topic_summary(TOPIC).filter(|s| s.stale)
    })
    .await
    .expect("health turns stale while collection fails");
    assert_eq!(stale.partitions[SLOW as usize].lag, Some(5000));
    assert_eq!(run.producer.healthy_partitions(TOPIC), None);
    let stats = run.producer.monitor_stats().unwrap();
    assert!(stats.failures > failures_before, "{stats:?}");
    assert!(stats.last_error.is_some(), "{stats:?}");
    tokio::time::sleep_until((start + Duration::from_millis(3500)).into()).await;
    off(&run.kafka);
    // It recovers by itself.
    common::eventually(Duration::from_secs(5), || async {
        run.producer.topic_summary(TOPIC).filter(|s| !s.stale)
    })
    .await
    .expect("health recovers without a restart");
    assert_eq!(
        run.producer.monitor_stats().unwrap().consecutive_failures,
        0
    );
    load.await.unwrap();
    ledger
}

/// The routes seen: fresh health → sticky (never the slow partition); stale → fallback.
fn check_routes_and_accounting(ledger: &Ledger) {
    let mut stale = 0;
    let mut sticky = 0;
    for entry in ledger.entries().values() {
        let Outcome::Delivered { partition, .. } = entry.outcome else {
            panic!("not delivered: {entry:?}")
        };
        match entry.route {
            Some(Route::Sticky) => {
                sticky += 1;
                assert_ne!(partition, SLOW, "{entry:?}");
            }
            Some(Route::Fallback(Fallback::Stale)) => stale += 1,
            other => panic!("unexpected route {other:?}"),
        }
    }
    assert!(stale > 0 && sticky > 0, "stale {stale}, sticky {sticky}");
}

async fn check_topic(run: &Run, ledger: &Ledger) {
    let consumed = read_topic(&run.kafka.client_config(), TOPIC, Duration::from_secs(30))
        .await
        .unwrap();
    let check = ledger.reconcile(&consumed);
    // Besides the ledger's messages, the topic holds the scenario's: 5 × 10 + 5000.
    assert_eq!(check.foreign, 5050, "{check:?}");
    assert!(
        check.lost.is_empty() && check.duplicated.is_empty(),
        "{check:?}"
    );
    assert!(
        check.misplaced.is_empty() && check.failed_but_written.is_empty(),
        "{check:?}"
    );
    assert_eq!(check.delivered_found, ledger.tally().sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_errors() {
    let logs = common::capture_logs();
    let run = setup("g-list-offsets").await;
    let ledger = run_fault(
        &run,
        |k| {
            k.cluster().request_errors(
                RDKafkaApiKey::ListOffsets,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 100_000],
            )
        },
        |k| k.cluster().clear_request_errors(RDKafkaApiKey::ListOffsets),
    )
    .await;
    check_routes_and_accounting(&ledger);
    check_topic(&run, &ledger).await;
    let logs = logs.text();
    // Retried with backoff inside each refresh, then reported once per failure streak.
    assert!(logs.contains("retrying"), "{logs}");
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && l.contains("lag collection failed; keeping the last health")
            && l.contains(&run.group)),
        "{logs}"
    );
    assert!(logs.contains("lag collection recovered"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_fetch_errors() {
    let logs = common::capture_logs();
    let run = setup("g-offset-fetch").await;
    let ledger = run_fault(
        &run,
        |k| {
            k.cluster().request_errors(
                RDKafkaApiKey::OffsetFetch,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED; 100_000],
            )
        },
        |k| k.cluster().clear_request_errors(RDKafkaApiKey::OffsetFetch),
    )
    .await;
    check_routes_and_accounting(&ledger);
    check_topic(&run, &ledger).await;
    let stats = run.producer.monitor_stats().unwrap();
    assert!(stats.failures > 0);
    let logs = logs.text();
    assert!(
        logs.lines()
            .any(|l| l.contains("committed offsets of group `g-offset-fetch`")),
        "{logs}"
    );
}

/// librdkafka 2.12's mock ignores `request_errors` for Metadata; a topic-level error is its
/// way to make Metadata fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_errors() {
    let logs = common::capture_logs();
    let run = setup("g-metadata").await;
    let ledger = run_fault(
        &run,
        |k| {
            k.cluster()
                .topic_error(
                    TOPIC,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
                )
                .unwrap()
        },
        |k| {
            k.cluster()
                .topic_error(TOPIC, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
                .unwrap()
        },
    )
    .await;
    check_routes_and_accounting(&ledger);
    check_topic(&run, &ledger).await;
    let logs = logs.text();
    assert!(logs.contains("metadata of [\"orders\"]"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_brokers() {
    let _logs = common::capture_logs();
    let run = setup("g-slow").await;
    let ledger = run_fault(
        &run,
        |k| {
            for broker in 1..=3 {
                k.cluster()
                    .broker_round_trip_time(broker, Duration::from_millis(800))
                    .unwrap();
            }
        },
        |k| {
            for broker in 1..=3 {
                k.cluster()
                    .broker_round_trip_time(broker, Duration::ZERO)
                    .unwrap();
            }
        },
    )
    .await;
    check_routes_and_accounting(&ledger);
    check_topic(&run, &ledger).await;
    let stats = run.producer.monitor_stats().unwrap();
    assert!(stats.failures > 0, "{stats:?}");
}
