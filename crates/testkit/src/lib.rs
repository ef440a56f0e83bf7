//! Fixtures for tests of code that uses kafka-smart-producer.
//!
//! * [`MockKafka`]: librdkafka's embedded mock cluster (a real Kafka-protocol broker on a
//!   loopback port), with helpers to create topics, produce and commit.
//! * [`LagScenario`]: puts a consumer group into a chosen per-partition lag.
//! * [`DrainingConsumer`]: a real consumer that drains each partition at its own rate — one
//!   slow consumer, on demand.
//! * [`TestKafka`] / [`TestRedis`]: the same test body on the embedded cluster, an external
//!   cluster or a testcontainers container (feature `testcontainers`); on a spawned
//!   redis-server, an external Redis or a container. Each prints the backend it used.
//! * [`RedisServer`]: a real `redis-server` on a free loopback port, killable mid-test;
//!   [`RedisCluster`]: three of them as a Redis Cluster.
//! * [`SkewedCollector`]: a lag collector on a machine whose clock is off.
//! * [`ClusterProcess`] / [`serve_cluster`]: an embedded cluster in a child process, driven
//!   over its standard input (the benchmarks' and the soak's broker).
//! * [`demo`]: the embedded demo behind `cargo run --example quickstart`.
//! * `soak` (feature `redis`): the chaos soak — several instances, random overlapping
//!   faults, every message accounted for.

mod backend;
pub mod faults;
#[cfg(feature = "redis")]
mod heap;
mod ledger;
mod load;
mod mock;
mod process;
mod read_back;
mod redis;
mod scenario;
mod skew;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod soak;

pub use backend::{TestKafka, TestRedis};
#[cfg(feature = "redis")]
pub use heap::{HeapUse, NO_THREAD_CACHES, thread_caches_off};
pub use ksp_demo::{DrainingConsumer, DrainingConsumerBuilder, demo};
pub use ledger::{Entry, Ledger, Outcome, Reconciliation, Tally};
pub use load::Load;
pub use mock::{MockKafka, auto_create_topics, commit_offsets, produce_counts};
pub use process::{ClusterProcess, serve_cluster};
pub use read_back::{Consumed, read_topic};
pub use redis::{RedisCluster, RedisServer};
pub use scenario::LagScenario;
pub use skew::{Skew, SkewedCollector};

/// Errors of the fixtures: the demo crate's, which the fixtures share (a Kafka call, a
/// fixture that could not run, a thread that could not start).
pub use ksp_demo::DemoError as TestkitError;

/// Result of the fixtures.
pub type TestkitResult<T> = Result<T, TestkitError>;

/// Polls `ready` every 25 ms until it holds, at most `limit`; whether it did.
pub(crate) async fn wait_for(limit: std::time::Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

pub(crate) fn kafka_error(
    context: impl Into<String>,
) -> impl FnOnce(rdkafka::error::KafkaError) -> TestkitError {
    let context = context.into();
    move |source| TestkitError::Kafka { context, source }
}
