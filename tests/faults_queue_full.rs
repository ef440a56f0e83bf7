//! A full local queue: `produce` waits for room up to `queue_timeout`, then fails with
//! `QueueFull` and the message handed back. No sleep-and-retry loop, no unbounded buffering.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use kafka_smart_producer::AsyncSmartProducer;
use kafka_smart_producer::rdkafka::Message;
use kafka_smart_producer::rdkafka::producer::{FutureRecord, Producer};
use ksp_testkit::{MockKafka, read_topic};

const TOPIC: &str = "orders";
const QUEUE: usize = 50;
const RTT: Duration = Duration::from_millis(300);

fn setup() -> MockKafka {
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    kafka.cluster().broker_round_trip_time(1, RTT).unwrap();
    kafka
}

fn producer(kafka: &MockKafka, queue_timeout: Duration) -> AsyncSmartProducer {
    let mut config = kafka.client_config();
    config
        .set("queue.buffering.max.messages", QUEUE.to_string())
        .set("linger.ms", "0");
    AsyncSmartProducer::builder(config)
        .smart_enabled(false)
        .queue_timeout(queue_timeout)
        .build()
        .unwrap()
}

struct Sent {
    latency: Duration,
    result: Result<i32, (bool, Option<Vec<u8>>)>,
    payload: Vec<u8>,
}

/// Sends `count` messages at once; samples librdkafka's own queue depth meanwhile.
async fn burst(producer: &AsyncSmartProducer, count: usize) -> (Vec<Sent>, i32) {
    let deepest = Arc::new(AtomicI32::new(0));
    let sampler = {
        let (producer, deepest) = (producer.clone(), deepest.clone());
        tokio::spawn(async move {
            loop {
                deepest.fetch_max(producer.inner().in_flight_count(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let sends = (0..count).map(|i| {
        let producer = producer.clone();
        async move {
            let payload = format!("burst-{i}").into_bytes();
            let started = Instant::now();
            let result = producer
                .produce(FutureRecord::<(), _>::to(TOPIC).payload(&payload))
                .await
                .map(|d| d.partition)
                .map_err(|e| {
                    (
                        e.is_queue_full(),
                        e.into_message()
                            .and_then(|m| m.payload().map(<[u8]>::to_vec)),
                    )
                });
            Sent {
                latency: started.elapsed(),
                result,
                payload,
            }
        }
    });
    let sent = join_all(sends).await;
    sampler.abort();
    (sent, deepest.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_up_to_the_bound_then_fails_with_the_message() {
    common::init_tracing();
    let kafka = setup();
    let timeout = Duration::from_millis(200);
    let producer = producer(&kafka, timeout);
    let (sent, deepest) = burst(&producer, 200).await;

    let delivered = sent.iter().filter(|s| s.result.is_ok()).count();
    let full: Vec<&Sent> = sent.iter().filter(|s| s.result.is_err()).collect();
    // Room for 50; the first delivery reports come back after the 300 ms round trip, later
    // than the 200 ms bound: the other 150 give up.
    assert_eq!(delivered, QUEUE);
    assert_eq!(full.len(), 200 - QUEUE);
    for s in &full {
        let (queue_full, message) = s.result.as_ref().unwrap_err();
        assert!(queue_full);
        assert_eq!(
            message.as_deref(),
            Some(&s.payload[..]),
            "message handed back"
        );
        // Not before the bound, and not much after it.
        assert!(s.latency >= timeout, "{:?}", s.latency);
        assert!(
            s.latency < timeout + Duration::from_millis(150),
            "{:?}",
            s.latency
        );
    }
    // The burst of 200 waited here, not in librdkafka: its queue (messages plus pending
    // report events, which `in_flight_count` also counts) stayed near the limit of 50.
    assert!(deepest < 2 * QUEUE as i32, "{deepest}");

    // What failed was never written.
    let consumed = read_topic(&kafka.client_config(), TOPIC, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(consumed.len(), QUEUE);
    for s in full {
        assert!(!consumed.iter().any(|c| c.payload == s.payload));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_enough_time_every_send_gets_room_as_reports_come_back() {
    common::init_tracing();
    let kafka = setup();
    let producer = producer(&kafka, Duration::from_secs(10));
    let (sent, deepest) = burst(&producer, 200).await;
    // Regression: a send admitted the moment a report arrived used to find librdkafka still
    // counting the reported message, and failed with QueueFull.
    assert!(sent.iter().all(|s| s.result.is_ok()));
    assert!(deepest < 2 * QUEUE as i32, "{deepest}");
    // The last sends waited for earlier ones; woken by reports, not by a 100 ms poll: four
    // rounds of 50 behind a 300 ms round trip take about 1.2 s.
    let slowest = sent.iter().map(|s| s.latency).max().unwrap();
    assert!(slowest >= 3 * RTT, "{slowest:?}");
    assert!(slowest < Duration::from_secs(3), "{slowest:?}");
    assert_eq!(producer.queue_room(), Some(QUEUE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_timeout_fails_at_once() {
    common::init_tracing();
    let kafka = setup();
    let producer = producer(&kafka, Duration::ZERO);
    let (sent, _) = burst(&producer, 80).await;
    let full: Vec<&Sent> = sent.iter().filter(|s| s.result.is_err()).collect();
    assert_eq!(full.len(), 80 - QUEUE);
    for s in full {
        assert!(s.latency < Duration::from_millis(100), "{:?}", s.latency);
    }
}
