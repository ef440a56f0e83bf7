//! The embedded demo of kafka-smart-producer, and the two fixtures it stands on.
//!
//! * [`MockKafka`]: librdkafka's embedded mock cluster (a real Kafka-protocol broker on a
//!   loopback port).
//! * [`DrainingConsumer`]: a real consumer that drains each partition at its own rate.
//! * [`demo`]: the smart producer against a plain `FutureProducer`, one slow consumer, on the
//!   embedded cluster or a real one: `cargo run --example quickstart` and `ksp demo`.
//!
//! No test machinery here (the `ksp` tool depends on this crate); `ksp-testkit` re-exports it.

pub mod demo;
mod drain;
mod embedded;

pub use drain::{DrainingConsumer, DrainingConsumerBuilder, ReadSample};
pub use embedded::MockKafka;

/// Why the demo or a fixture failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A Kafka client call failed.
    #[error("{context}")]
    Kafka {
        /// What was being done.
        context: String,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The demo could not run.
    #[error("demo: {0}")]
    Demo(String),
    /// A thread could not be started.
    #[error("starting a thread")]
    Io(#[from] std::io::Error),
}

/// Result of the demo and its fixtures.
pub type DemoResult<T> = Result<T, DemoError>;

pub(crate) fn kafka_error(
    context: impl Into<String>,
) -> impl FnOnce(rdkafka::error::KafkaError) -> DemoError {
    let context = context.into();
    move |source| DemoError::Kafka { context, source }
}
