//! The embedded cluster and small client helpers.

use std::fmt;
use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::{TestkitResult, kafka_error};

/// librdkafka's mock cluster: real Kafka protocol on loopback ports, in this process.
///
/// It supports producing, consuming, consumer groups with committed offsets, `ListOffsets`,
/// several brokers and fault injection (see [`MockKafka::cluster`]). It cannot add partitions
/// to an existing topic.
///
/// Not `Send`: keep it on the test's own task.
pub struct MockKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
    bootstrap: String,
}

impl MockKafka {
    /// Starts a cluster of `brokers` brokers (ids `1..=brokers`).
    pub fn start(brokers: i32) -> TestkitResult<Self> {
        let cluster =
            MockCluster::new(brokers).map_err(kafka_error("starting the mock cluster"))?;
        let bootstrap = cluster.bootstrap_servers();
        Ok(Self { cluster, bootstrap })
    }

    /// The cluster's `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// A client configuration pointing at the cluster.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// Creates a topic with `partitions` partitions, spread over the brokers.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> TestkitResult<()> {
        self.cluster
            .create_topic(topic, partitions, 1)
            .map_err(kafka_error(format!("creating topic `{topic}`")))
    }

    /// The mock cluster itself, for fault injection: `broker_down`, `request_errors`,
    /// `broker_round_trip_time`, `partition_leader`, …
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}

impl fmt::Debug for MockKafka {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockKafka")
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

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
