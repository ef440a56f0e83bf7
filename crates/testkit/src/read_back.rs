//! Reading a topic back, to check what a ledger says was delivered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::{TestkitError, TestkitResult, kafka_error};

/// A message read back from the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Reads every message of `topic` (all partitions, from the beginning to the high watermark
/// as it is when called).
pub async fn read_topic(
    kafka: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> TestkitResult<Vec<Consumed>> {
    let kafka = kafka.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_topic_blocking(&kafka, &topic, timeout))
        .await
        .map_err(|e| TestkitError::Demo(format!("reading the topic failed: {e}")))?
}

fn read_topic_blocking(
    kafka: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> TestkitResult<Vec<Consumed>> {
    let consumer: BaseConsumer = kafka
        .clone()
        .set("group.id", "ksp-testkit-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(kafka_error("creating the reader"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka_error("reading metadata"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(kafka_error("reading watermarks"))?;
        ends.insert(p, high);
        if high > 0 {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(kafka_error("building the assignment"))?;
        }
    }
    consumer
        .assign(&assignment)
        .map_err(kafka_error("assigning"))?;
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    let done = |p: i32, offset: i64| ends.get(&p).is_some_and(|&end| offset + 1 >= end);
    let mut remaining: std::collections::HashSet<i32> = assignment
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    while !remaining.is_empty() {
        if Instant::now() >= deadline {
            return Err(TestkitError::Demo(format!(
                "reading `{topic}` timed out; partitions {remaining:?} not read to their end"
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                messages.push(Consumed {
                    partition: m.partition(),
                    offset: m.offset(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                });
                if done(m.partition(), m.offset()) {
                    remaining.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(kafka_error("reading messages")(e)),
            None => {}
        }
    }
    Ok(messages)
}
