//! [`AsyncSmartProducer`]: rdkafka's `FutureProducer` with lag-aware routing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ksp_core::{HealthFeed, HealthSnapshot};
use ksp_monitor::{MonitorResult, MonitorStats, MonitorStatus};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Timestamp, ToBytes};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tracing::{trace, warn};

use crate::backpressure::{LocalQueue, OwnedReservation, Reservation};
use crate::builder::AsyncSmartProducerBuilder;
use crate::context::SmartContext;
use crate::error::{BuildError, ProduceError, RecordParts};
use crate::metrics::SendMetrics;
use crate::router::{Decision, Fallback, Route, Router};
use crate::routing::{Inspect, Pending, Routed, Routing};
use crate::summary::TopicSummary;

/// Where a message landed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The partition it was written to.
    pub partition: i32,
    /// Its offset in that partition; `-1001` (`RD_KAFKA_OFFSET_INVALID`) when librdkafka's
    /// idempotent producer counts the message delivered without an offset: a later batch's
    /// success acknowledged it implicitly (a broker accepts a batch only after the ones before
    /// it), or a retry was answered `DUPLICATE_SEQUENCE_NUMBER`. librdkafka's mock cluster
    /// checks no sequence numbers, so there such a message may not have been written.
    pub offset: i64,
    /// Its timestamp.
    pub timestamp: Timestamp,
    /// How it was routed.
    pub route: Route,
}

/// A Kafka producer that routes new messages away from partitions whose consumers fall behind.
///
/// It wraps rdkafka's [`FutureProducer`]. A health monitor task (started by
/// [`build`](AsyncSmartProducerBuilder::build)) reads the consumer group's lag in the
/// background and publishes partition health; every [`produce`](Self::produce) asks the
/// [`Router`] where the message should go, which reads the current health snapshot with one
/// lock-free load. See [`Router`] for the rules.
///
/// Cheap to clone (an `Arc`); use it from as many tasks as you like.
///
/// ```no_run
/// use ksp_producer::AsyncSmartProducer;
/// use rdkafka::ClientConfig;
/// use rdkafka::producer::FutureRecord;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mut kafka = ClientConfig::new();
/// kafka.set("bootstrap.servers", "localhost:9092");
/// let producer = AsyncSmartProducer::builder(kafka)
///     .consumer_group("order-processors")
///     .topics(["orders"])
///     .build()?;
/// let delivery = producer
///     .produce(FutureRecord::to("orders").key("customer-42").payload("{\"total\":12}"))
///     .await?;
/// println!("partition {} offset {} ({})", delivery.partition, delivery.offset, delivery.route);
/// producer.close(std::time::Duration::from_secs(5)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncSmartProducer {
    inner: Arc<Inner>,
}

struct Inner {
    producer: OffloadedDrop,
    queue: LocalQueue,
    routing: Option<Routing>,
    metrics: SendMetrics,
}

impl AsyncSmartProducer {
    /// Starts configuring a producer with `kafka`, the rdkafka configuration of the
    /// underlying `FutureProducer` (bootstrap servers, security, batching…). The lag reader
    /// inherits its connection and security settings.
    pub fn builder(kafka: rdkafka::ClientConfig) -> AsyncSmartProducerBuilder {
        AsyncSmartProducerBuilder::new(kafka)
    }

    /// Sends a message and waits for its delivery report.
    ///
    /// The partition is chosen by the [`Router`] unless the record sets one. Resolves to where
    /// the message landed, or to a [`ProduceError`] that hands the message back.
    ///
    /// When librdkafka's local queue is full (`queue.buffering.max.messages` or
    /// `queue.buffering.max.kbytes`), it waits for room, woken by delivery reports, at most
    /// `queue_timeout`; then it fails with [`ProduceError::is_queue_full`] and the message.
    /// Sends that wait get room in the order they arrived. The partition is decided once
    /// there is room, by the health of that moment. Nothing is retried behind your back.
    ///
    /// # Errors
    ///
    /// A [`ProduceError`] holding librdkafka's reason and the message: the queue stayed full
    /// for `queue_timeout`, librdkafka refused the message, or it could not be delivered
    /// (`message.timeout.ms` passed, say).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits for room sends nothing. Once the message is
    /// enqueued, dropping the future does not cancel the send: librdkafka still delivers it
    /// (or reports it failed) and its report is discarded; its queue room stays reserved until
    /// then.
    pub async fn produce<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
    ) -> Result<Delivery, ProduceError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let mut record = record;
        let topic = record.topic;
        let payload = record.payload.map_or(0, |p| p.to_bytes().len());
        // Room first, then the decision: a partition chosen before a wait of up to
        // `queue_timeout` could have turned unhealthy, or lost its leader, meanwhile.
        let Some(reservation) = self.inner.queue.reserve(payload).await else {
            let route = self.decide(&record).route;
            let full = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
            return Err(ProduceError::refused(full, parts(record), route));
        };
        let routed = match &self.inner.routing {
            Some(routing) => {
                let key = record.key.map(ToBytes::to_bytes);
                let size = key.map_or(0, <[u8]>::len) + payload;
                match routing.route(topic, record.partition, key, size) {
                    Pending::Ready(routed) => routed,
                    // Boxed: fred's command future is several kilobytes, and every send in
                    // flight would carry it otherwise. Only keys in a line get here.
                    #[cfg(feature = "redis")]
                    Pending::InLine if key.is_some() => {
                        let key = key.unwrap_or_default();
                        Box::pin(routing.route_in_line(topic, key, size)).await
                    }
                    Pending::Held => {
                        let key = key.unwrap_or_default();
                        Box::pin(routing.route_held(topic, key, size)).await
                    }
                    // Only keyed messages (with Redis) have a line; decide as usual otherwise.
                    Pending::InLine => {
                        Routed::plain(routing.peek(topic, record.partition, key, size), false)
                    }
                }
            }
            None => Routed::disabled(record.partition),
        };
        record.partition = routed.decision.partition;
        let mut route = routed.decision.route;
        trace!(topic, %route, partition = ?record.partition, "routed");

        let may_resend = routed.may_resend_unpartitioned();
        let producer: &FutureProducer<SmartContext> = &self.inner.producer;
        let delivery = match producer.send_result(record) {
            Ok(delivery) => delivery,
            Err((error, mut record)) if may_resend && is_unknown_partition(&error) => {
                // The cluster has partitions this producer's metadata does not know yet.
                route = Route::Fallback(Fallback::PartitionUnknownToProducer);
                record.partition = None;
                producer
                    .send_result(record)
                    .map_err(|(error, record)| ProduceError::refused(error, parts(record), route))?
            }
            Err((error, record)) => {
                if routed.in_order && is_unknown_partition(&error) {
                    // Strict key order: the key must go where it was placed, not where
                    // librdkafka's partitioner would send it. Partitions were just added:
                    // refused, and librdkafka learns them for the next try.
                    refresh_metadata(producer, topic);
                }
                return Err(ProduceError::refused(error, parts(record), route));
            }
        };
        let first_move = routed.first_move;
        // Enqueued: the key's next sends may follow.
        drop(routed);
        self.inner.metrics.record(route, first_move);
        let mut in_flight = InFlight {
            delivery: None,
            reservation: Some(reservation),
            producer,
        };
        let report = in_flight.delivery.insert(delivery).await;
        // The report is in: nothing left to wait for if this future is dropped now.
        in_flight.delivery = None;
        drop(in_flight);
        match report {
            Ok(Ok(d)) => Ok(Delivery {
                partition: d.partition,
                offset: d.offset,
                timestamp: d.timestamp,
                route,
            }),
            Ok(Err((error, message))) => Err(ProduceError::new(error, Some(message), route, topic)),
            Err(_canceled) => Err(ProduceError::new(KafkaError::Canceled, None, route, topic)),
        }
    }

    /// Where `record` would go now, without sending it (and without remembering a key's
    /// first move).
    pub fn decide<K, P>(&self, record: &FutureRecord<'_, K, P>) -> Decision
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        match &self.inner.routing {
            Some(routing) => {
                let key = record.key.map(ToBytes::to_bytes);
                let size =
                    key.map_or(0, <[u8]>::len) + record.payload.map_or(0, |p| p.to_bytes().len());
                routing.peek(record.topic, record.partition, key, size)
            }
            None => Routed::disabled(record.partition).decision,
        }
    }

    fn inspect(&self) -> Inspect<'_> {
        Inspect(self.inner.routing.as_ref())
    }

    /// How the Redis L2 is doing; `None` without one.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_status(&self) -> Option<crate::redis::RedisStatus> {
        self.inspect().redis_status()
    }

    /// The partitions of `topic` new messages may go to now; `None` when there is no fresh
    /// health for it (routing for it falls back).
    pub fn healthy_partitions(&self, topic: &str) -> Option<Vec<i32>> {
        self.inspect().healthy_partitions(topic)
    }

    /// The health of `topic`: per-partition lag, score and health, and the snapshot's age.
    pub fn topic_summary(&self, topic: &str) -> Option<TopicSummary> {
        self.inspect().topic_summary(topic)
    }

    /// The health of every watched topic, by topic name.
    pub fn health_summary(&self) -> Vec<TopicSummary> {
        self.inspect().health_summary()
    }

    /// The current health snapshot (empty when smart routing is disabled).
    pub fn health(&self) -> Arc<HealthSnapshot> {
        self.inspect().health()
    }

    /// The health feed: subscribe to it to hear about every new snapshot.
    pub fn health_feed(&self) -> HealthFeed {
        self.inspect().feed()
    }

    /// Collects lag now and returns the version of the snapshot published.
    ///
    /// # Errors
    ///
    /// As [`MonitorHandle::refresh_now`](ksp_monitor::MonitorHandle::refresh_now);
    /// [`MonitorError::Disabled`](ksp_monitor::MonitorError::Disabled) without smart routing.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the collection still happens if the future is dropped.
    pub async fn refresh_health(&self) -> MonitorResult<u64> {
        self.inspect().monitor()?.refresh_now().await
    }

    /// Starts watching another topic (and collects its lag right away).
    ///
    /// # Errors
    ///
    /// As [`MonitorHandle::watch_topic`](ksp_monitor::MonitorHandle::watch_topic);
    /// [`MonitorError::Disabled`](ksp_monitor::MonitorError::Disabled) without smart routing.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: once sent, the topic is added even if the future is dropped.
    pub async fn watch_topic(&self, topic: impl Into<String>) -> MonitorResult<u64> {
        self.inspect().monitor()?.watch_topic(topic).await
    }

    /// The monitor's counters and last outcome; `None` when smart routing is disabled.
    pub fn monitor_stats(&self) -> Option<MonitorStats> {
        self.inspect().monitor_stats()
    }

    /// Whether the health monitor runs, was stopped, or panicked; `None` when smart routing
    /// is disabled.
    pub fn monitor_status(&self) -> Option<MonitorStatus> {
        self.inspect().monitor_status()
    }

    /// Messages that can still be handed to librdkafka without waiting for room (`None` when
    /// `queue.buffering.max.messages` is 0, librdkafka's "no limit").
    pub fn queue_room(&self) -> Option<usize> {
        self.inner.queue.available_messages()
    }

    /// The router, for inspection.
    pub fn router(&self) -> Option<&Router> {
        self.inner.routing.as_ref().map(|r| &*r.router)
    }

    /// The underlying rdkafka producer, for what this API does not cover (transactions,
    /// client metrics).
    pub fn inner(&self) -> &FutureProducer<SmartContext> {
        &self.inner.producer
    }

    /// Waits until every message sent so far is delivered or failed, at most `timeout`.
    ///
    /// # Errors
    ///
    /// librdkafka's `OperationTimedOut` when messages are still in flight after `timeout`.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the flush runs on a blocking thread and nothing is lost if the future is
    /// dropped; it only stops waiting.
    pub async fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        let producer = self.inner.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }

    /// Stops the health monitor (and, with Redis, hands a fleet's collector lease over and
    /// closes the connections, each step at most `command_timeout`), then flushes, at most
    /// `timeout` for the flush. Messages still in flight keep being delivered: every pending
    /// `produce` resolves. Later sends fall back to librdkafka's partitioner.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush).
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe in full: dropping the future may leave the monitor stopped and the
    /// flush unfinished. Nothing sent is lost; call `flush` again.
    pub async fn close(&self, timeout: Duration) -> KafkaResult<()> {
        if let Some(routing) = &self.inner.routing {
            #[cfg(feature = "redis")]
            if let Some(l2) = &routing.l2 {
                // Hands the fleet's collector lease over at once instead of letting it expire.
                l2.shutdown().await;
            }
            if let Err(error) = routing.monitor.shutdown().await {
                warn!(%error, "the health monitor had failed");
            }
        }
        self.flush(timeout).await
    }
}

fn parts<'a, K, P>(record: FutureRecord<'a, K, P>) -> RecordParts<'a, K, P>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    RecordParts {
        topic: record.topic,
        key: record.key,
        payload: record.payload,
        timestamp: record.timestamp,
        partition: record.partition,
        headers: record.headers,
    }
}

impl fmt::Debug for AsyncSmartProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncSmartProducer")
            .field("smart_enabled", &self.inner.routing.is_some())
            .field("router", &self.router())
            .field("monitor_status", &self.monitor_status())
            .finish_non_exhaustive()
    }
}

impl AsyncSmartProducerBuilder {
    /// Validates everything, creates the rdkafka producer and, with smart routing, spawns the
    /// health monitor on the current Tokio runtime (its first collection starts right away;
    /// until it lands, messages go where librdkafka sends them).
    ///
    /// # Errors
    ///
    /// As [`validate`](Self::validate); [`BuildError::Monitor`] outside a Tokio runtime;
    /// [`BuildError::Kafka`] if librdkafka cannot create the producer.
    pub fn build(self) -> Result<AsyncSmartProducer, BuildError> {
        let parts = self.into_parts()?;
        let producer: FutureProducer<SmartContext> = parts
            .kafka
            .create_with_context(SmartContext {
                statistics: parts.statistics,
            })
            .map_err(|source| BuildError::Kafka {
                context: "creating the rdkafka producer".into(),
                source,
            })?;
        Ok(AsyncSmartProducer {
            inner: Arc::new(Inner {
                producer: OffloadedDrop(Some(producer)),
                queue: parts.queue,
                routing: parts.routing,
                metrics: SendMetrics::register(),
            }),
        })
    }
}

/// The rdkafka producer, dropped on a blocking thread: dropping it purges its queue and waits
/// up to 500 ms for the resulting reports, which must not stall an async worker.
struct OffloadedDrop(Option<FutureProducer<SmartContext>>);

impl std::ops::Deref for OffloadedDrop {
    type Target = FutureProducer<SmartContext>;

    fn deref(&self) -> &FutureProducer<SmartContext> {
        // Only `drop` takes it out.
        self.0
            .as_ref()
            .expect("the producer is present until dropped")
    }
}

impl Drop for OffloadedDrop {
    fn drop(&mut self) {
        if let (Some(producer), Ok(runtime)) =
            (self.0.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn_blocking(move || drop(producer));
        }
    }
}

/// How long a strict-order send refused for an unknown partition lets librdkafka fetch fresh
/// metadata.
pub(crate) const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches `topic`'s metadata on a blocking thread, so that librdkafka learns partitions just
/// added: a strict-order send refused for an unknown partition succeeds when tried again.
fn refresh_metadata(producer: &FutureProducer<SmartContext>, topic: &str) {
    let (producer, topic) = (producer.clone(), topic.to_owned());
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        drop(runtime.spawn_blocking(move || {
            let _ = producer
                .client()
                .fetch_metadata(Some(&topic), METADATA_TIMEOUT);
        }));
    }
}

pub(crate) fn is_unknown_partition(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownPartition)
}

/// A message handed to librdkafka whose delivery report is still awaited.
///
/// If the caller stops waiting (drops the `produce` future), librdkafka still delivers the
/// message; the guard then hands the wait to a task that keeps the message's queue room
/// reserved, and the producer alive, until the report arrives. Nothing is lost and the room
/// accounting stays exact.
struct InFlight<'a> {
    delivery: Option<DeliveryFuture>,
    reservation: Option<Reservation<'a>>,
    producer: &'a FutureProducer<SmartContext>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Some(delivery) = self.delivery.take() else {
            return;
        };
        let reservation: Option<OwnedReservation> =
            self.reservation.take().map(Reservation::into_owned);
        let producer = self.producer.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = delivery.await;
                drop(reservation);
                drop(producer);
            });
        }
    }
}
