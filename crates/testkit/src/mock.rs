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
