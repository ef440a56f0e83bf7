//! What the embedded broker (librdkafka's mock cluster) does not do, pinned with a plain
//! rdkafka `FutureProducer` (no smart layer): it checks an idempotent producer's sequence
//! numbers only for transactional producers (`rd_kafka_mock_validate_records` returns early
//! without a `transactional.id`). So, with `enable.idempotence=true`:
//!
//! - a batch written whose response was lost is written again by librdkafka's retry (a real
//!   broker recognizes the retry by its sequence numbers and answers with the first write's
//!   offsets);
//! - a batch refused (say `NOT_LEADER_FOR_PARTITION`) while later ones are in flight is
//!   reported delivered, offset unknown (-1001), but never written: the later batch is
//!   accepted out of sequence (a real broker answers `OUT_OF_ORDER_SEQUENCE_NUMBER`), and
//!   librdkafka takes its success as an implicit ack of the earlier one.
//!
//! The chaos soak (`ksp_testkit::soak`) counts these two apart from the producer's own
//! defects; these tests fail the day the embedded broker checks sequences, and the soak's
//! allowance must then go.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use ksp_testkit::{MockKafka, read_topic};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::util::Timeout;

const TOPIC: &str = "embedded-broker";

/// One broker and the topic; an idempotent producer, one message per request, with its
/// producer id and metadata in hand (a first message delivered); then the broker answers
/// after `rtt`.
async fn start(rtt: Duration) -> (MockKafka, FutureProducer) {
    let kafka = MockKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 1).unwrap();
    let producer: FutureProducer = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::<(), _>::to(TOPIC).payload("warm-up"),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    kafka.cluster().broker_round_trip_time(1, rtt).unwrap();
    (kafka, producer)
}

/// Sends `n` messages at once (payload = index); returns each one's reported offset or error.
async fn send_all(producer: &FutureProducer, n: usize) -> Vec<Result<i64, String>> {
    let payloads: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let sends = payloads.iter().map(|payload| async move {
        producer
            .send(
                FutureRecord::<(), _>::to(TOPIC).payload(payload),
                Timeout::After(Duration::from_secs(5)),
            )
            .await
            .map(|d| d.offset)
            .map_err(|(e, _)| e.to_string())
    });
    join_all(sends).await
}

/// How many times each payload is in the topic.
async fn copies(kafka: &MockKafka) -> HashMap<usize, usize> {
    let mut copies = HashMap::new();
    for m in read_topic(&kafka.client_config(), TOPIC, Duration::from_secs(10))
        .await
        .unwrap()
    {
        if let Ok(index) = String::from_utf8(m.payload).unwrap().parse() {
            *copies.entry(index).or_default() += 1;
        }
    }
    copies
}

#[tokio::test]
async fn a_batch_refused_before_later_ones_succeed_is_reported_delivered_but_never_written() {
    // Responses slow enough that several requests are in flight when the first is refused
    // (the next ones go out within the second even on a busy machine).
    let (kafka, producer) = start(Duration::from_secs(1)).await;
    kafka.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION],
    );
    let reports = send_all(&producer, 20).await;
    kafka
        .cluster()
        .broker_round_trip_time(1, Duration::ZERO)
        .unwrap();
    let copies = copies(&kafka).await;

    let acked_unwritten: Vec<usize> = reports
        .iter()
        .enumerate()
        .filter(|(i, r)| r.as_ref().is_ok_and(|&o| o < 0) && !copies.contains_key(i))
        .map(|(i, _)| i)
        .collect();
    assert!(
        !acked_unwritten.is_empty(),
        "every message reported delivered is in the topic: the embedded broker now checks \
         sequences, or the requests were not in flight together ({reports:?}, {copies:?})"
    );
    // Nothing else is wrong: every other message is written once, where reported.
    assert!(reports.iter().all(Result::is_ok), "{reports:?}");
    assert!(copies.values().all(|&c| c == 1), "{copies:?}");
}

#[tokio::test]
async fn a_batch_whose_response_was_lost_is_written_again_by_the_retry() {
    // The broker appends at once and answers after 5 s; it goes down before it answers, so
    // the responses are lost and the batches in flight (sent within the first second even on
    // a busy machine) are sent again once it is back.
    let (kafka, producer) = start(Duration::from_secs(5)).await;
    let sending = tokio::spawn({
        let producer = producer.clone();
        async move { send_all(&producer, 20).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    kafka.cluster().broker_down(1).unwrap();
    kafka
        .cluster()
        .broker_round_trip_time(1, Duration::ZERO)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    kafka.cluster().broker_up(1).unwrap();
    let reports = sending.await.unwrap();
    let copies = copies(&kafka).await;

    assert!(reports.iter().all(Result::is_ok), "{reports:?}");
    assert!(
        copies.values().any(|&c| c > 1),
        "every message is in the topic once: the embedded broker now checks sequences, or no \
         request went out within a second ({reports:?}, {copies:?})"
    );
}
