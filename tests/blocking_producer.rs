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

/// A producer without routing whose local queue holds one message, and whose sends wait
/// for room up to 120 s.
fn one_message_queue(kafka: &MockKafka) -> SmartProducer {
    let mut config = kafka.client_config();
    config.set("queue.buffering.max.messages", "1");
    SmartProducer::builder(config)
        .smart_enabled(false)
        .queue_timeout(Duration::from_secs(120))
        .build_blocking()
        .unwrap()
}

/// Bug: a send from inside a delivery callback (librdkafka's polling thread, the one thread
/// whose callbacks give queue room back) waited for room while the queue was full: it could
/// only ever wait out `queue_timeout`, and no delivery report was served meanwhile. It now
/// fails at once there, as on a one-thread runtime's thread.
#[test]
fn a_send_from_a_delivery_callback_never_waits_for_room() {
    use std::sync::{Arc, OnceLock};

    let kafka = cluster_with_slow_partition();
    let producer = Arc::new(one_message_queue(&kafka));
    // The callback's handle on the producer (dropped with the slot at the end).
    let slot: Arc<OnceLock<Arc<SmartProducer>>> = Arc::new(OnceLock::new());
    slot.set(producer.clone()).ok().unwrap();
    let (tx, rx) = mpsc::channel();
    let in_callback = slot.clone();
    producer
        .send(
            BaseRecord::<(), _>::to("orders").payload("first"),
            move |outcome| {
                outcome.unwrap();
                // The first message's room is still held (given back after this callback),
                // so the queue of one is full.
                let producer = in_callback.get().unwrap();
                let again =
                    producer.send(BaseRecord::<(), _>::to("orders").payload("second"), |_| {});
                tx.send(again.map_err(|e| e.is_queue_full())).unwrap();
            },
        )
        .unwrap();
    // Well under `queue_timeout`: a send that waited for room would not have answered yet.
    let again = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the send inside the callback answered without waiting out queue_timeout");
    assert_eq!(again, Err(true), "refused as queue-full at once");
    drop(slot);
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// The rule above is per producer: from one producer's delivery callback, a send of another
/// producer still waits for room (its room comes back on its own polling thread).
#[test]
fn a_send_from_a_callback_to_another_producer_still_waits_for_room() {
    use std::sync::{Arc, OnceLock};

    let kafka = cluster_with_slow_partition();
    let first = one_message_queue(&kafka);
    let other: Arc<OnceLock<SmartProducer>> = Arc::new(OnceLock::new());
    other.set(one_message_queue(&kafka)).ok().unwrap();
    let (tx, rx) = mpsc::channel();
    let in_callback = other.clone();
    first
        .send(
            BaseRecord::<(), _>::to("orders").payload("first"),
            move |outcome| {
                outcome.unwrap();
                let other = in_callback.get().unwrap();
                // Takes the other producer's only place; the next send must wait for its
                // report, which the other producer's own thread serves.
                other
                    .send(BaseRecord::<(), _>::to("orders").payload("a"), |_| {})
                    .unwrap();
                let waited = other.send(BaseRecord::<(), _>::to("orders").payload("b"), |_| {});
                tx.send(waited.map_err(|e| e.to_string())).unwrap();
            },
        )
        .unwrap();
    let waited = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(waited.is_ok(), "{waited:?}");
    first.flush(Duration::from_secs(10)).unwrap();
    other.get().unwrap().flush(Duration::from_secs(10)).unwrap();
}
