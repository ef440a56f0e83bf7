//! The embedded cluster and small client helpers.

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::{TestkitResult, kafka_error};
pub use ksp_demo::MockKafka;

/// Produces `counts[p]` small messages to each partition `p` of `topic` and waits for all of
/// them to be delivered.
pub async fn produce_counts(
    kafka: &ClientConfig,
    topic: &str,
    counts: &[u64],
) -> TestkitResult<()> {
    let producer: FutureProducer = kafka
        .clone()
        .set("linger.ms", "5")
        .create()
        .map_err(kafka_error("creating a producer"))?;
    let payload = [0u8; 16];
    for (partition, &count) in counts.iter().enumerate() {
        // Chunks bound the deliveries awaited at once.
        let mut sent = 0;
        while sent < count {
            let chunk = (count - sent).min(10_000);
            let deliveries = (0..chunk).map(|_| {
                let record = FutureRecord::<(), _>::to(topic)
                    .partition(partition as i32)
                    .payload(&payload[..]);
                producer.send(record, Duration::from_secs(10))
            });
            try_join_all(deliveries)
                .await
                .map_err(|(e, _)| kafka_error(format!("producing to `{topic}`"))(e))?;
            sent += chunk;
        }
    }
    Ok(())
}

/// Commits `offsets` (`(partition, next offset to read)`) of `topic` for `group`, with a
/// consumer that never joins the group (no rebalance, no 3 s join delay).
pub fn commit_offsets(
    kafka: &ClientConfig,
    group: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> TestkitResult<()> {
    let consumer: BaseConsumer = kafka
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(kafka_error("creating a committing consumer"))?;
    let mut tpl = TopicPartitionList::new();
    for &(partition, offset) in offsets {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
            .map_err(kafka_error("building the offset list"))?;
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(kafka_error(format!("committing offsets of `{group}`")))
}

/// Creates `topics` on a mock cluster by asking for their metadata (the mock cluster
/// auto-creates unknown topics, with its default partition count). Much faster than
/// [`MockKafka::create_topic`] for many topics: that call now and then waits for the mock
/// cluster's one-second poll timeout.
pub async fn auto_create_topics(kafka: &ClientConfig, topics: &[String]) -> TestkitResult<()> {
    use rdkafka::producer::{BaseProducer, Producer};
    let creator: BaseProducer = kafka
        .clone()
        .set("allow.auto.create.topics", "true")
        .create()
        .map_err(kafka_error("creating a metadata client"))?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        for topic in &topics {
            creator
                .client()
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .map_err(kafka_error(format!("creating topic `{topic}`")))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| crate::TestkitError::Demo(format!("creating topics: {e}")))?
}
