//! The Kafka lag collector against librdkafka's embedded mock cluster.

mod common;

use std::time::Duration;

use kafka_smart_producer::rdkafka::mocking::MockCoordinator;
use kafka_smart_producer::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use kafka_smart_producer::{KafkaLagCollector, LagCollector, LagRequest, UncommittedPolicy};
use ksp_testkit::{LagScenario, MockKafka};

const GROUP: &str = "lag-readers";
const BUDGET: Duration = Duration::from_secs(5);

async fn collect(
    collector: &KafkaLagCollector,
    topics: &[&str],
) -> Vec<kafka_smart_producer::TopicLag> {
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    collector
        .collect(&LagRequest::new(GROUP, &topics, BUDGET))
        .await
        .expect("collection succeeds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_per_partition_is_exact() {
    common::init_tracing();
    let kafka = MockKafka::start(3).unwrap();
    let scenario = LagScenario::new("orders", 8)
        .offsets(0, 100, 100)
        .offsets(1, 100, 40)
        .offsets(2, 250, 0)
        .offsets(3, 7, 5)
        .offsets(4, 1000, 999)
        .offsets(5, 10, 10)
        .offsets(6, 300, 150)
        .offsets(7, 1, 0);
    scenario.create(&kafka, GROUP).await.unwrap();

    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .build()
        .unwrap();
    let report = collect(&collector, &["orders"]).await;
    assert_eq!(report.len(), 1);
    let orders = &report[0];
    assert_eq!(orders.topic, "orders");
    assert_eq!(orders.partitions.len(), 8);
    for (p, lag) in orders.partitions.iter().enumerate() {
        assert_eq!(lag.partition, p as i32);
        assert!(lag.leader_available, "{lag:?}");
        assert_eq!(
            lag.high_watermark,
            Some(scenario.produced()[p] as i64),
            "{lag:?}"
        );
        assert_eq!(lag.committed, scenario.committed()[p], "{lag:?}");
        assert_eq!(lag.lag, Some(scenario.expected_lags()[p]), "{lag:?}");
    }
    assert_eq!(
        orders.total_lag(),
        scenario.expected_lags().iter().sum::<i64>()
    );
    assert_eq!(orders.total_lag(), 464);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncommitted_partitions_count_their_retained_backlog() {
    common::init_tracing();
    let kafka = MockKafka::start(1).unwrap();
    LagScenario::new("events", 3)
        .offsets(0, 50, 20)
        .uncommitted(1, 80)
        .uncommitted(2, 0)
        .create(&kafka, GROUP)
        .await
        .unwrap();

    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .build()
        .unwrap();
    let events = collect(&collector, &["events"]).await.remove(0);
    let p1 = &events.partitions[1];
    assert_eq!(p1.committed, None);
    assert_eq!(p1.low_watermark, Some(0));
    assert_eq!(p1.high_watermark, Some(80));
    assert_eq!(p1.lag, Some(80));
    assert_eq!(events.partitions[2].lag, Some(0));
    // A committed partition does not need its low watermark.
    assert_eq!(events.partitions[0].low_watermark, None);
    assert_eq!(events.partitions[0].lag, Some(30));

    let caught_up = KafkaLagCollector::builder(&kafka.client_config())
        .uncommitted_policy(UncommittedPolicy::CaughtUp)
        .build()
        .unwrap();
    let events = collect(&caught_up, &["events"]).await.remove(0);
    assert_eq!(events.partitions[1].lag, Some(0));
    assert_eq!(events.partitions[0].lag, Some(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_layout_is_reread_every_refresh() {
    common::init_tracing();
    // The mock cluster cannot add partitions to a topic (it has no CreatePartitions), so this
    // shows metadata being re-read with a topic that appears between two refreshes.
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic("first", 2).unwrap();
    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .build()
        .unwrap();
    let report = collect(&collector, &["first", "later"]).await;
    assert_eq!(
        report.iter().map(|t| t.topic.as_str()).collect::<Vec<_>>(),
        ["first"]
    );

    kafka.create_topic("later", 5).unwrap();
    let report = collect(&collector, &["first", "later"]).await;
    let later = report
        .iter()
        .find(|t| t.topic == "later")
        .expect("new topic reported");
    assert_eq!(later.partitions.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_list_offsets_per_leader_and_one_offset_fetch_per_refresh() {
    common::init_tracing();
    let kafka = MockKafka::start(3).unwrap();
    LagScenario::new("wide", 64)
        .lag(5, 20)
        .create(&kafka, GROUP)
        .await
        .unwrap();
    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .set("statistics.interval.ms", "100")
        .build()
        .unwrap();

    // Warm up (coordinator lookup, connections), then wait for librdkafka's counters.
    collect(&collector, &["wide"]).await;
    let before = common::eventually(Duration::from_secs(5), || async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        collector
            .request_counts(GROUP)
            .filter(|c| c.offset_fetch >= 1)
    })
    .await
    .expect("statistics arrive");

    const REFRESHES: u64 = 5;
    for _ in 0..REFRESHES {
        let report = collect(&collector, &["wide"]).await;
        assert_eq!(report[0].partitions.len(), 64);
        assert_eq!(report[0].partitions[5].lag, Some(20));
    }
    let after = common::eventually(Duration::from_secs(5), || async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        collector
            .request_counts(GROUP)
            .filter(|c| c.offset_fetch >= before.offset_fetch + REFRESHES)
    })
    .await
    .expect("statistics arrive");
    // Let one more statistics interval pass to be sure nothing else was still counted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = collector.request_counts(GROUP).unwrap_or(after);

    let per_refresh = |now: u64, then: u64| (now - then) as f64 / REFRESHES as f64;
    // 64 partitions led by 3 brokers: 3 ListOffsets (not 64, not 128) and 1 OffsetFetch.
    assert_eq!(
        per_refresh(after.list_offsets, before.list_offsets),
        3.0,
        "{before:?} → {after:?}"
    );
    assert_eq!(
        per_refresh(after.offset_fetch, before.offset_fetch),
        1.0,
        "{before:?} → {after:?}"
    );
    // One Metadata request per watched topic.
    assert_eq!(
        per_refresh(after.metadata, before.metadata),
        1.0,
        "{before:?} → {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_whose_leader_is_down_are_reported_unavailable() {
    common::init_tracing();
    let kafka = MockKafka::start(3).unwrap();
    LagScenario::new("orders", 6)
        .create(&kafka, GROUP)
        .await
        .unwrap();
    // Leaders: partitions 0 and 3 on broker 1, 1 and 4 on broker 2, 2 and 5 on broker 3; the
    // group coordinator on broker 1.
    for p in 0..6 {
        kafka
            .cluster()
            .partition_leader("orders", p, Some(p % 3 + 1))
            .unwrap();
    }
    kafka
        .cluster()
        .coordinator(MockCoordinator::Group(GROUP.into()), 1)
        .unwrap();
    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let orders = collect(&collector, &["orders"]).await.remove(0);
    assert!(orders.partitions.iter().all(|p| p.leader_available));

    kafka.cluster().broker_down(2).unwrap();
    let orders = common::eventually(Duration::from_secs(10), || async {
        let orders = collect(&collector, &["orders"]).await.remove(0);
        (!orders.partitions[1].leader_available).then_some(orders)
    })
    .await
    .expect("the down broker's partitions turn unavailable");
    for p in &orders.partitions {
        let on_down_broker = p.partition % 3 == 1;
        assert_eq!(p.leader_available, !on_down_broker, "{p:?}");
        assert_eq!(p.lag.is_some(), !on_down_broker, "{p:?}");
        // Committed offsets come from the coordinator, which is up.
        assert_eq!(p.committed, Some(10), "{p:?}");
    }

    kafka.cluster().broker_up(2).unwrap();
    common::eventually(Duration::from_secs(15), || async {
        let orders = collect(&collector, &["orders"]).await.remove(0);
        orders
            .partitions
            .iter()
            .all(|p| p.leader_available)
            .then_some(())
    })
    .await
    .expect("the partitions come back when the broker does");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_errors_are_retried_within_the_refresh() {
    common::init_tracing();
    let kafka = MockKafka::start(1).unwrap();
    LagScenario::new("orders", 4)
        .lag(2, 42)
        .create(&kafka, GROUP)
        .await
        .unwrap();
    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .build()
        .unwrap();
    collect(&collector, &["orders"]).await;

    kafka.cluster().request_errors(
        RDKafkaApiKey::ListOffsets,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3],
    );
    kafka.cluster().request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 3],
    );
    let orders = collect(&collector, &["orders"]).await.remove(0);
    assert_eq!(orders.partitions[2].lag, Some(42));
    assert!(orders.partitions.iter().all(|p| p.leader_available));
}
