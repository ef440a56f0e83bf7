//! The blocking SmartProducer, from code with no Tokio runtime.

mod common;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

use kafka_smart_producer::blocking::SmartProducer;
use kafka_smart_producer::monitor::MonitorConfig;
use kafka_smart_producer::rdkafka::Message;
use kafka_smart_producer::rdkafka::producer::BaseRecord;
use kafka_smart_producer::routing::Route;
use ksp_testkit::{LagScenario, MockKafka};

fn cluster_with_slow_partition() -> MockKafka {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let kafka = MockKafka::start(1).unwrap();
        LagScenario::new("orders", 8)
            .lag(3, 5000)
            .create(&kafka, "processors")
            .await
            .unwrap();
        kafka
    })
}

#[test]
fn sends_with_callbacks_and_routes_without_any_runtime() {
    common::init_tracing();
    let kafka = cluster_with_slow_partition();
    let producer = SmartProducer::builder(kafka.client_config())
        .consumer_group("processors")
        .topics(["orders"])
        .monitor(MonitorConfig::default().with_refresh_interval(Duration::from_secs(60)))
        .build_blocking()
        .unwrap();
    producer.refresh_health().unwrap();
    assert_eq!(
        producer.healthy_partitions("orders").unwrap(),
        [0, 1, 2, 4, 5, 6, 7]
    );
    let (tx, rx) = mpsc::channel();
    for i in 0..200 {
        let tx = tx.clone();
        let payload = format!("m{i}");
        let route = producer
            .send(
                BaseRecord::<(), _>::to("orders").payload(&payload),
                move |outcome| {
                    tx.send(outcome).unwrap();
                },
            )
            .unwrap();
        assert_eq!(route, Route::Sticky);
    }
    drop(tx);
    producer.flush(Duration::from_secs(10)).unwrap();
    let mut landed = BTreeMap::<i32, u32>::new();
    for outcome in rx.iter() {
        let d = outcome.unwrap();
        assert_eq!(d.route, Route::Sticky);
        *landed.entry(d.partition).or_default() += 1;
    }
    assert_eq!(landed.values().sum::<u32>(), 200, "every callback ran once");
    assert!(!landed.contains_key(&3), "{landed:?}");
    // An explicit partition always wins, and the callback reports it.
    let (tx, rx) = mpsc::channel();
    producer
        .send(
            BaseRecord::<(), _>::to("orders").payload("x").partition(3),
            move |o| tx.send(o).unwrap(),
        )
        .unwrap();
    let d = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!((d.partition, d.route), (3, Route::Explicit));
    producer.close(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_refused_send_hands_the_record_back_and_never_runs_the_callback() {
    let kafka = cluster_with_slow_partition();
    let mut config = kafka.client_config();
    config.set("queue.buffering.max.messages", "1");
    let producer = SmartProducer::builder(config)
        .smart_enabled(false)
        .queue_timeout(Duration::ZERO)
        .build_blocking()
        .unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let mut refused = None;
    // The queue holds one message: the bound is enforced here, as for the async producer.
    for i in 0..20_000 {
        let tx = tx.clone();
        let payload = format!("m{i}");
        if let Err(e) = producer.send(
            BaseRecord::<(), _>::to("orders").payload(&payload),
            move |_| {
                let _ = tx.send(());
            },
        ) {
            refused = Some((i, e));
            break;
        }
    }
    let (i, e) = refused.expect("the queue fills up");
    assert!(e.is_queue_full(), "{e}");
    assert_eq!(
        e.message().unwrap().payload(),
        Some(format!("m{i}").as_bytes())
    );
    drop(tx);
    producer.flush(Duration::from_secs(10)).unwrap();
    assert_eq!(rx.iter().count(), i, "one callback per accepted send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_inside_a_runtime_it_uses_that_runtime() {
    let kafka = MockKafka::start(1).unwrap();
    LagScenario::new("orders", 4)
        .lag(1, 5000)
        .create(&kafka, "processors")
        .await
        .unwrap();
    let producer = SmartProducer::builder(kafka.client_config())
        .consumer_group("processors")
        .topics(["orders"])
        .build_blocking()
        .unwrap();
    assert!(format!("{producer:?}").contains("own_runtime: false"));
    let healthy = common::eventually(Duration::from_secs(10), || {
        let h = producer.healthy_partitions("orders");
        async move { h.filter(|h| h.len() == 3) }
    })
    .await
    .unwrap();
    assert_eq!(healthy, [0, 2, 3]);
    tokio::task::spawn_blocking(move || producer.close(Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
}
