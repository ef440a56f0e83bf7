//! Errors of the producer crate.

use std::fmt;

use ksp_core::ConfigError;
use ksp_monitor::MonitorError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;

use crate::router::Route;

/// Result of producer operations other than `produce`.
pub type ProducerResult<T> = Result<T, ProducerError>;

/// Why building or operating the producer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerError {
    /// A setting was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// librdkafka refused something.
    #[error("{context}")]
    Kafka {
        /// What was being done.
        context: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The health monitor failed.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// The Redis L2 could not be set up.
    #[cfg(feature = "redis")]
    #[error("redis")]
    Redis(#[source] ksp_redis::L2Error),
    /// The operation needs smart routing, which is disabled.
    #[error("smart routing is disabled on this producer")]
    SmartRoutingDisabled,
}

/// A message that could not be produced, handed back with the reason.
///
/// Like rdkafka's own `(KafkaError, OwnedMessage)`: the message is an owned copy, ready to be
/// retried or dead-lettered.
pub struct ProduceError {
    pub(crate) error: KafkaError,
    pub(crate) message: Option<OwnedMessage>,
    pub(crate) route: Route,
    pub(crate) topic: String,
}

impl ProduceError {
    /// librdkafka's reason.
    pub fn error(&self) -> &KafkaError {
        &self.error
    }

    /// The message. `None` only if librdkafka dropped the message without a delivery report,
    /// which it does not do while the producer is alive (and the producer is kept alive by
    /// every `produce` in flight).
    pub fn message(&self) -> Option<&OwnedMessage> {
        self.message.as_ref()
    }

    /// Takes the message back.
    pub fn into_message(self) -> Option<OwnedMessage> {
        self.message
    }

    /// How the message had been routed.
    pub fn route(&self) -> Route {
        self.route
    }

    /// Whether librdkafka's local queue was full (`queue.buffering.max.messages` or
    /// `queue.buffering.max.kbytes`): back off and retry.
    pub fn is_queue_full(&self) -> bool {
        self.error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
    }
}

impl fmt::Display for ProduceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "failed to produce to `{}` ({}): {}",
            self.topic, self.route, self.error
        )
    }
}

impl fmt::Debug for ProduceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload may be large or sensitive: show its size, not its bytes.
        use rdkafka::Message;
        f.debug_struct("ProduceError")
            .field("error", &self.error)
            .field("topic", &self.topic)
            .field("route", &self.route)
            .field(
                "message",
                &self.message.as_ref().map(|m| {
                    format!(
                        "partition {}, key {} bytes, payload {} bytes",
                        m.partition(),
                        m.key().map_or(0, <[u8]>::len),
                        m.payload().map_or(0, <[u8]>::len)
                    )
                }),
            )
            .finish()
    }
}

impl std::error::Error for ProduceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
