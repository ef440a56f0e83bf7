//! The Kafka lag collector against librdkafka's embedded mock cluster.

mod common;

use std::time::Duration;

use kafka_smart_producer::health::UncommittedPolicy;
use kafka_smart_producer::monitor::{
    KafkaLagCollector, MonitorConfig, RequestCounts, TopicTracker,
};
use kafka_smart_producer::rdkafka::mocking::MockCoordinator;
use kafka_smart_producer::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use kafka_smart_producer::{LagCollector, LagRequest, ThresholdCalculator};
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

/// The reader's request counts once they satisfy `ready` (librdkafka emits its statistics every
/// `statistics.interval.ms`), at most 5 s.
async fn counts_when(
    collector: &KafkaLagCollector,
    ready: impl Fn(&RequestCounts) -> bool,
) -> Option<RequestCounts> {
    common::eventually(Duration::from_secs(5), || async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        collector.request_counts(GROUP).filter(|c| ready(c))
    })
    .await
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
async fn uncommitted_partitions_are_reported_with_their_watermarks_for_the_monitor_to_count() {
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
    // Left to the monitor's uncommitted policy.
    assert_eq!(p1.lag, None);
    assert_eq!(events.partitions[2].lag, None);
    // A committed partition does not need its low watermark.
    assert_eq!(events.partitions[0].low_watermark, None);
    assert_eq!(events.partitions[0].lag, Some(30));

    // The monitor counts them by its policy.
    let counted = |policy: UncommittedPolicy| {
        let mut tracker = TopicTracker::new(&MonitorConfig::default().with_uncommitted(policy));
        let health = tracker.update(
            Duration::ZERO,
            events.clone(),
            &ThresholdCalculator::default(),
        );
        (0..3)
            .map(|p| health.partition(p).unwrap().lag.lag)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        counted(UncommittedPolicy::RetainedBacklog),
        [Some(30), Some(80), Some(0)]
    );
    assert_eq!(
        counted(UncommittedPolicy::CaughtUp),
        [Some(30), Some(0), Some(0)]
    );
    // The default counts only what arrives from now on.
    assert_eq!(
        counted(UncommittedPolicy::default()),
        [Some(30), Some(0), Some(0)]
    );
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
    let before = counts_when(&collector, |c| c.offset_fetch >= 1)
        .await
        .expect("statistics arrive");

    const REFRESHES: u64 = 5;
    for _ in 0..REFRESHES {
        let report = collect(&collector, &["wide"]).await;
        assert_eq!(report[0].partitions.len(), 64);
        assert_eq!(report[0].partitions[5].lag, Some(20));
    }
    let after = counts_when(&collector, |c| {
        c.offset_fetch >= before.offset_fetch + REFRESHES
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
    assert_eq!(after.membership, 0, "{after:?}");
}

/// Regression: a topic-level metadata error other than "unknown topic" (here
/// `TOPIC_AUTHORIZATION_FAILED`) failed the whole collection, every topic with it. Now only
/// that topic is missing from the report. With few topics (one request each) and with many
/// (one request for the cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_topic_failing_its_metadata_does_not_fail_the_others() {
    common::init_tracing();
    let kafka = MockKafka::start(1).unwrap();
    let names: Vec<String> = (0..6).map(|i| format!("topic-{i}")).collect();
    for name in &names {
        LagScenario::new(name.as_str(), 2)
            .lag(1, 7)
            .create(&kafka, GROUP)
            .await
            .unwrap();
    }
    kafka
        .cluster()
        .topic_error(
            "topic-1",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .build()
        .unwrap();
    for watched in [&names[..2], &names[..]] {
        let watched: Vec<&str> = watched.iter().map(String::as_str).collect();
        let report = collect(&collector, &watched).await;
        let reported: Vec<&str> = report.iter().map(|t| t.topic.as_str()).collect();
        let expected: Vec<&str> = watched
            .iter()
            .copied()
            .filter(|t| *t != "topic-1")
            .collect();
        assert_eq!(reported, expected);
        assert!(report.iter().all(|t| t.partitions[1].lag == Some(7)));
    }
    // Every watched topic failing is a failed collection.
    let only_failing = ["topic-1".to_owned()];
    let err = collector
        .collect(&LagRequest::new(GROUP, &only_failing, BUDGET))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("topic-1"), "{err}");
}

/// Regression: metadata was fetched one topic at a time within one budget, so with many topics
/// on a cluster a few milliseconds away the collection could not finish (200 topics × 2 ms
/// round trips > 400 ms). Now their metadata is one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_topics_are_refreshed_within_budget_at_two_ms_rtt() {
    common::init_tracing();
    let kafka = MockKafka::start(3).unwrap();
    let names: Vec<String> = (0..200).map(|i| format!("t{i:03}")).collect();
    ksp_testkit::auto_create_topics(&kafka.client_config(), &names)
        .await
        .unwrap();
    for broker in 1..=3 {
        kafka
            .cluster()
            .broker_round_trip_time(broker, Duration::from_millis(2))
            .unwrap();
    }
    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .build()
        .unwrap();
    let budget = Duration::from_millis(400);
    // The first collection also finds the coordinator and connects; count from the second.
    let _ = collector
        .collect(&LagRequest::new(GROUP, &names, Duration::from_secs(5)))
        .await
        .unwrap();
    let report = collector
        .collect(&LagRequest::new(GROUP, &names, budget))
        .await
        .expect("200 topics within a 400 ms budget");
    assert_eq!(report.len(), 200);
}

/// The lag reader never joins the watched group: a real member stays assigned without a
/// rebalance, the group's committed offsets are untouched, and the reader sends no
/// membership or commit request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_reader_never_joins_commits_or_rebalances_the_group() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kafka_smart_producer::rdkafka::consumer::{
        BaseConsumer, Consumer, ConsumerContext, Rebalance,
    };
    use kafka_smart_producer::rdkafka::{ClientContext, TopicPartitionList};

    struct Counting(Arc<AtomicUsize>);
    impl ClientContext for Counting {}
    impl ConsumerContext for Counting {
        fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
            if matches!(rebalance, Rebalance::Assign(_)) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    common::init_tracing();
    let kafka = MockKafka::start(1).unwrap();
    LagScenario::new("orders", 4)
        .lag(2, 30)
        .create(&kafka, GROUP)
        .await
        .unwrap();
    let assignments = Arc::new(AtomicUsize::new(0));
    let member: BaseConsumer<Counting> = kafka
        .client_config()
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create_with_context(Counting(assignments.clone()))
        .unwrap();
    member.subscribe(&["orders"]).unwrap();
    let member = Arc::new(member);
    let poll = |member: Arc<BaseConsumer<Counting>>, for_: Duration| {
        tokio::task::spawn_blocking(move || {
            let until = std::time::Instant::now() + for_;
            while std::time::Instant::now() < until {
                let _ = member.poll(Duration::from_millis(50));
            }
        })
    };
    common::eventually(Duration::from_secs(15), || {
        let member = member.clone();
        let assigned = assignments.clone();
        async move {
            poll(member, Duration::from_millis(200)).await.unwrap();
            (assigned.load(Ordering::SeqCst) > 0).then_some(())
        }
    })
    .await
    .expect("the member is assigned");
    let committed = |member: &BaseConsumer<Counting>| {
        let mut tpl = TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition("orders", p);
        }
        member
            .committed_offsets(tpl, Duration::from_secs(5))
            .unwrap()
            .elements()
            .iter()
            .map(|e| e.offset())
            .collect::<Vec<_>>()
    };
    let before = committed(&member);

    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .set("statistics.interval.ms", "100")
        .build()
        .unwrap();
    for _ in 0..5 {
        let report = collect(&collector, &["orders"]).await;
        assert_eq!(report[0].partitions[2].lag, Some(30));
    }
    poll(member.clone(), Duration::from_secs(2)).await.unwrap();

    assert_eq!(assignments.load(Ordering::SeqCst), 1, "no rebalance");
    assert_eq!(committed(&member), before);
    let counts = common::eventually(Duration::from_secs(5), || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        collector
            .request_counts(GROUP)
            .filter(|c| c.offset_fetch >= 5)
    })
    .await
    .expect("statistics arrive");
    assert_eq!(counts.membership, 0, "{counts:?}");
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

/// A transactional producer's open transaction: its messages count as waiting (the reader reads
/// the high watermark, not the last stable offset), and with `read_committed` the collector also
/// reports the last stable offset. librdkafka's mock cluster does not hold the LSO back for open
/// transactions (it reports the end offset), so the blocked-consumer rule itself is tested on a
/// hand-driven report in `ksp-monitor` (`a_partition_blocked_behind_a_hung_transaction_is_unhealthy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transactions_messages_count_as_waiting() {
    use kafka_smart_producer::monitor::IsolationLevel;
    use kafka_smart_producer::rdkafka::producer::{FutureProducer, FutureRecord, Producer};

    common::init_tracing();
    let kafka = MockKafka::start(1).unwrap();
    LagScenario::new("ledger", 2)
        .create(&kafka, GROUP)
        .await
        .unwrap();
    let producer: FutureProducer = kafka
        .client_config()
        .set("transactional.id", "ledger-writer")
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(10)).unwrap();
    producer.begin_transaction().unwrap();
    for i in 0..5 {
        let payload = format!("t{i}");
        producer
            .send(
                FutureRecord::<(), _>::to("ledger")
                    .partition(0)
                    .payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .isolation_level(IsolationLevel::ReadCommitted)
        .build()
        .unwrap();
    let ledger = collect(&collector, &["ledger"]).await.remove(0);
    let p0 = &ledger.partitions[0];
    assert_eq!(p0.committed, Some(10));
    assert_eq!(p0.high_watermark, Some(15), "{p0:?}");
    assert_eq!(p0.lag, Some(5), "the open transaction's messages wait");
    assert!(p0.last_stable_offset.is_some(), "{p0:?}");
    assert_eq!(ledger.partitions[1].lag, Some(0));
    producer
        .commit_transaction(Duration::from_secs(10))
        .unwrap();
    let ledger = collect(&collector, &["ledger"]).await.remove(0);
    // The commit marker takes an offset too.
    assert!(
        ledger.partitions[0].lag.unwrap() >= 5,
        "{:?}",
        ledger.partitions[0]
    );
}

/// Told it is idle (a fleet follower does this), the collector closes its lag reader, a
/// librdkafka client with a thread per broker, and opens one again at the next collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_collector_closes_its_lag_reader_and_reopens_it_when_asked_again() {
    common::init_tracing();
    let kafka = MockKafka::start(3).unwrap();
    let scenario = LagScenario::new("orders", 4).offsets(0, 10, 5);
    scenario.create(&kafka, GROUP).await.unwrap();
    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .set("statistics.interval.ms", "100")
        .build()
        .unwrap();
    let before = common::librdkafka_threads();
    let first = collect(&collector, &["orders"]).await;
    let open = common::librdkafka_threads();
    assert!(open > before, "{open} librdkafka threads, {before} before");
    let counted = counts_when(&collector, |c| c.offset_fetch >= 1)
        .await
        .expect("statistics arrive");

    collector.idle(GROUP);
    // What the closed reader counted is still counted.
    let kept = collector.request_counts(GROUP);
    assert!(
        kept.is_some_and(|c| c.offset_fetch >= counted.offset_fetch
            && c.list_offsets >= counted.list_offsets
            && c.metadata >= counted.metadata),
        "{kept:?}, {counted:?} before closing"
    );
    let closed = common::eventually(Duration::from_secs(10), || async {
        (common::librdkafka_threads() <= before).then_some(())
    })
    .await;
    assert!(
        closed.is_some(),
        "{} librdkafka threads, {before} before the lag reader opened",
        common::librdkafka_threads()
    );

    let again = collect(&collector, &["orders"]).await;
    assert_eq!(again[0].partitions, first[0].partitions);
    assert!(common::librdkafka_threads() > before);
    let recounted = counts_when(&collector, |c| c.offset_fetch > counted.offset_fetch).await;
    assert!(recounted.is_some(), "{:?}", collector.request_counts(GROUP));
}

/// Bug: a budget too large to add to the clock (`Duration::MAX`, or `ksp lag --timeout` with
/// a huge value) panicked on `Instant + Duration` instead of meaning "no budget of its own".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_beyond_the_clock_means_no_deadline_not_a_panic() {
    common::init_tracing();
    let kafka = MockKafka::start(1).unwrap();
    let scenario = LagScenario::new("orders", 2)
        .offsets(0, 10, 4)
        .offsets(1, 5, 5);
    scenario.create(&kafka, GROUP).await.unwrap();
    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .build()
        .unwrap();
    let topics = ["orders".to_owned()];
    let collected = tokio::spawn(async move {
        collector
            .collect(&LagRequest::new(GROUP, &topics, Duration::MAX))
            .await
    })
    .await
    .expect("collect panicked")
    .expect("collection succeeds");
    assert_eq!(collected[0].total_lag(), 6);
}
