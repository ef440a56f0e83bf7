//! The embedded cluster: librdkafka's mock cluster, in this process.

use std::fmt;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::{DemoResult, kafka_error};

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
    pub fn start(brokers: i32) -> DemoResult<Self> {
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
    pub fn create_topic(&self, topic: &str, partitions: i32) -> DemoResult<()> {
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
