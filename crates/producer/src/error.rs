//! Errors of the producer crate.

use std::fmt;

use ksp_core::ConfigError;
use ksp_monitor::MonitorError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{OwnedHeaders, OwnedMessage, Timestamp, ToBytes};

use crate::router::Route;

/// Why a producer could not be built (or failed [`validate`](crate::AsyncSmartProducerBuilder::validate)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
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
    /// The health monitor could not be started (its setting errors are [`Config`](Self::Config)
    /// and its Kafka client's [`Kafka`](Self::Kafka), as the producer's own are).
    #[error(transparent)]
    Monitor(MonitorError),
    /// The blocking producer's own runtime thread (for its monitor) could not start.
    #[error("starting the health monitor's runtime thread")]
    Runtime(#[source] std::io::Error),
    /// The Redis L2 could not be set up.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    #[error("redis")]
    Redis(#[source] ksp_redis::L2Error),
}

impl From<MonitorError> for BuildError {
    fn from(error: MonitorError) -> Self {
        match error {
            MonitorError::Config(config) => Self::Config(config),
            MonitorError::Kafka { context, source } => Self::Kafka { context, source },
            other => Self::Monitor(other),
        }
    }
}

/// A message that could not be produced, handed back with the reason.
///
/// Like rdkafka's own `(KafkaError, OwnedMessage)`: the message is an owned copy, ready to be
/// retried or dead-lettered.
pub struct ProduceError(Box<Failed>);

/// Boxed: a `produce` future's output is moved on every send, and a delivery carries no error.
struct Failed {
    error: KafkaError,
    message: Option<OwnedMessage>,
    route: Route,
    topic: String,
}

impl ProduceError {
    /// A message refused before or after it reached librdkafka, handed back.
    pub(crate) fn new(
        error: KafkaError,
        message: Option<OwnedMessage>,
        route: Route,
        topic: &str,
    ) -> Self {
        Self(Box::new(Failed {
            error,
            message,
            route,
            topic: topic.to_owned(),
        }))
    }

    /// A record refused before librdkafka took it: an owned copy goes back to the caller.
    pub(crate) fn refused<K, P>(
        error: KafkaError,
        record: RecordParts<'_, K, P>,
        route: Route,
    ) -> Self
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let message = OwnedMessage::new(
            record.payload.map(|p| p.to_bytes().to_vec()),
            record.key.map(|k| k.to_bytes().to_vec()),
            record.topic.to_owned(),
            record
                .timestamp
                .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
            record.partition.unwrap_or(-1),
            -1,
            record.headers,
        );
        Self::new(error, Some(message), route, record.topic)
    }

    /// librdkafka's reason.
    pub fn error(&self) -> &KafkaError {
        &self.0.error
    }

    /// The message. `None` only if librdkafka dropped the message without a delivery report,
    /// which it does not do while the producer is alive (and the producer is kept alive by
    /// every `produce` in flight).
    pub fn message(&self) -> Option<&OwnedMessage> {
        self.0.message.as_ref()
    }

    /// Takes the message back.
    pub fn into_message(self) -> Option<OwnedMessage> {
        self.0.message
    }

    /// How the message had been routed.
    pub fn route(&self) -> Route {
        self.0.route
    }

    /// Whether librdkafka's local queue was full (`queue.buffering.max.messages` or
    /// `queue.buffering.max.kbytes`): back off and retry.
    pub fn is_queue_full(&self) -> bool {
        self.0.error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
    }
}

impl fmt::Display for ProduceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "failed to produce to `{}` ({}): {}",
            self.0.topic, self.0.route, self.0.error
        )
    }
}

impl fmt::Debug for ProduceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload may be large or sensitive: show its size, not its bytes.
        use rdkafka::Message;
        f.debug_struct("ProduceError")
            .field("error", &self.0.error)
            .field("topic", &self.0.topic)
            .field("route", &self.0.route)
            .field(
                "message",
                &self.0.message.as_ref().map(|m| {
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
        Some(&self.0.error)
    }
}

/// The parts of a record (future or base) that an error hands back.
pub(crate) struct RecordParts<'a, K: ?Sized, P: ?Sized> {
    pub(crate) topic: &'a str,
    pub(crate) key: Option<&'a K>,
    pub(crate) payload: Option<&'a P>,
    pub(crate) timestamp: Option<i64>,
    pub(crate) partition: Option<i32>,
    pub(crate) headers: Option<OwnedHeaders>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `produce` future moves its output, and a delivery carries no error: with the
    /// error inline (librdkafka's error, the message, the topic), each send copied over
    /// 200 bytes with `memcpy`.
    #[test]
    fn a_produce_error_is_one_pointer_wide() {
        assert_eq!(size_of::<ProduceError>(), size_of::<usize>());
        let result = size_of::<Result<crate::Delivery, ProduceError>>();
        assert!(
            result <= size_of::<crate::Delivery>() + size_of::<usize>(),
            "{result}"
        );
    }
}
