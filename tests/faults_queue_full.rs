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
