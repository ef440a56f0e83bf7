//! A full local queue: `produce` waits for room up to `queue_timeout`, then fails with
//! `QueueFull` and the message handed back. No sleep-and-retry loop, no unbounded buffering.

mod common;

use std::time::Duration;

use ksp_testkit::faults::QueueBurst;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_up_to_the_bound_then_fails_with_the_message() {
    common::init_tracing();
    let timeout = Duration::from_millis(200);
    let spec = QueueBurst::new(timeout);
    let run = spec.run().await.unwrap();

    let delivered = run.sends.iter().filter(|s| s.result.is_ok()).count();
    let full: Vec<_> = run.sends.iter().filter(|s| s.result.is_err()).collect();
    // Room for 50; the first delivery reports come back after the 300 ms round trip, later
    // than the 200 ms bound: the other 150 give up.
    assert_eq!(delivered, spec.queue);
    assert_eq!(full.len(), spec.burst - spec.queue);
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
    assert!(run.deepest < 2 * spec.queue as i32, "{}", run.deepest);
    // What failed was never written.
    assert_eq!(run.consumed.len(), spec.queue);
    for s in full {
        assert!(!run.consumed.iter().any(|c| c.payload == s.payload));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_enough_time_every_send_gets_room_as_reports_come_back() {
    common::init_tracing();
    let spec = QueueBurst::new(Duration::from_secs(10));
    let run = spec.run().await.unwrap();
    // Regression: a send admitted the moment a report arrived used to find librdkafka still
    // counting the reported message, and failed with QueueFull.
    assert!(run.sends.iter().all(|s| s.result.is_ok()));
    assert!(run.deepest < 2 * spec.queue as i32, "{}", run.deepest);
    // The last sends waited for earlier ones, woken by reports: four rounds of 50 behind a
    // 300 ms round trip take about 1.2 s.
    let slowest = run.sends.iter().map(|s| s.latency).max().unwrap();
    assert!(slowest >= 3 * spec.rtt, "{slowest:?}");
    assert!(slowest < Duration::from_secs(3), "{slowest:?}");
    assert_eq!(run.room_after, Some(spec.queue));
    assert_eq!(run.consumed.len(), spec.burst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_timeout_fails_at_once() {
    common::init_tracing();
    let spec = QueueBurst::new(Duration::ZERO).burst(80);
    let run = spec.run().await.unwrap();
    let full: Vec<_> = run.sends.iter().filter(|s| s.result.is_err()).collect();
    assert_eq!(full.len(), 80 - spec.queue);
    for s in full {
        assert!(s.latency < Duration::from_millis(100), "{:?}", s.latency);
    }
}

/// Regression: librdkafka reports a partition's timed-out (or purged) messages in one event
/// and frees them only after all of that event's callbacks ran; senders woken by those
/// callbacks found librdkafka still full and got `QueueFull` at once, despite
/// `queue_timeout`, whenever the event held more than the one batch of headroom. 20 000
/// messages time out together here (batches of one message) while 5 000 more wait for room on
/// four worker threads (enough for the woken senders to race librdkafka's callback loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timeout_of_more_than_one_batch_never_refuses_an_admitted_send() {
    use futures::future::join_all;
    use kafka_smart_producer::AsyncSmartProducer;
    use kafka_smart_producer::rdkafka::error::RDKafkaErrorCode;
    use kafka_smart_producer::rdkafka::producer::FutureRecord;
    use ksp_testkit::MockKafka;

    common::init_tracing();
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic("stuck", 1).unwrap();
    let mut config = kafka.client_config();
    config
        .set("queue.buffering.max.messages", "20000")
        .set("batch.num.messages", "1")
        .set("message.timeout.ms", "1000");
    let producer = AsyncSmartProducer::builder(config)
        .smart_enabled(false)
        .queue_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    kafka.cluster().broker_down(1).unwrap();
    let sends = (0..25_000).map(|i| {
        let producer = producer.clone();
        async move {
            let payload = format!("m{i}");
            let result = producer
                .produce(FutureRecord::<(), _>::to("stuck").payload(&payload))
                .await;
            (payload, result)
        }
    });
    let results = join_all(sends).await;
    let mut timed_out = 0;
    for (payload, result) in results {
        let error = result.expect_err("the broker is down for the whole test");
        assert!(!error.is_queue_full(), "{payload}: {error}");
        assert_eq!(
            error.error().rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageTimedOut),
            "{payload}: {error}"
        );
        let message = error.into_message().expect("handed back");
        assert_eq!(
            kafka_smart_producer::rdkafka::Message::payload(&message),
            Some(payload.as_bytes())
        );
        timed_out += 1;
    }
    assert_eq!(timed_out, 25_000);
    assert_eq!(producer.queue_room(), Some(20_000));
}
