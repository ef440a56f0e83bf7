//! [`AsyncSmartProducer`]: rdkafka's `FutureProducer` with lag-aware routing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ksp_core::secret::redact;
use ksp_core::{
    CalculatorConfig, ConfigError, HealthFeed, HealthSnapshot, HotPartitionCalculator,
    LagCollector, RelativeCalculator,
};
use ksp_monitor::{
    HealthMonitor, KafkaLagCollector, MonitorConfig, MonitorHandle, MonitorStats, MonitorStatus,
};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{OwnedMessage, Timestamp, ToBytes};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio_util::task::AbortOnDropHandle;
use tracing::trace;

use crate::config::{KeyCacheConfig, RouterConfig};
use crate::error::{ProduceError, ProducerError, ProducerResult};
use crate::queue::{InFlight, LocalQueue};
use crate::router::{Decision, Fallback, Route, Router};
use crate::summary::TopicSummary;

/// Where a message landed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The partition it was written to.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Its timestamp.
    pub timestamp: Timestamp,
    /// How it was routed.
    pub route: Route,
}

/// A Kafka producer that routes new messages away from partitions whose consumers fall behind.
///
/// It wraps rdkafka's [`FutureProducer`]. A [`HealthMonitor`] task (started by
/// [`build`](AsyncSmartProducerBuilder::build)) reads the consumer group's lag in the
/// background and publishes partition health; every [`produce`](Self::produce) asks the
/// [`Router`] where the message should go, which reads the current health snapshot without
/// locks or I/O. See [`Router`] for the rules.
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
    router: Option<Arc<Router>>,
    monitor: Option<MonitorHandle>,
    _follower: Option<AbortOnDropHandle<()>>,
    #[cfg(feature = "redis")]
    l2: Option<crate::l2::L2>,
    metrics: crate::metrics::SendMetrics,
}

impl AsyncSmartProducer {
    /// Starts configuring a producer with `kafka`, the rdkafka configuration of the
    /// underlying `FutureProducer` (bootstrap servers, security, batching…). The lag reader
    /// inherits its connection and security settings.
    pub fn builder(kafka: ClientConfig) -> AsyncSmartProducerBuilder {
        AsyncSmartProducerBuilder {
            kafka,
            smart_enabled: true,
            monitor: MonitorConfig::new(String::new(), Vec::<String>::new()),
            key_cache: KeyCacheConfig::default(),
            sticky_batch_bytes: None,
            sticky_linger: None,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            calculator: Arc::new(RelativeCalculator::default()),
            calculator_error: None,
            collector: None,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// Sends a message and waits for its delivery report.
    ///
    /// The partition is chosen by the [`Router`] unless the record sets one. Resolves to where
    /// the message landed, or to a [`ProduceError`] that hands the message back.
    ///
    /// When librdkafka's local queue is full (`queue.buffering.max.messages` or
    /// `queue.buffering.max.kbytes`), it waits for room, woken by delivery reports, at most
    /// `queue_timeout`; then it fails with [`ProduceError::is_queue_full`] and the message.
    /// Nothing is retried behind your back.
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
        let (decision, new_detour) = self.decide_detailed(&record);
        let first_move = new_detour.is_some();
        #[cfg(feature = "redis")]
        let decision = match (&new_detour, &self.inner.l2, &self.inner.router) {
            (Some(detour), Some(l2), Some(router)) => {
                // Boxed: fred's command future is several kilobytes, and every send in flight
                // would carry it otherwise. Only a key's first move gets here.
                Box::pin(l2.agree(router, topic, detour, decision)).await
            }
            _ => decision,
        };
        #[cfg(not(feature = "redis"))]
        let _ = new_detour;
        record.partition = decision.partition;
        let mut route = decision.route;
        trace!(topic, %route, partition = ?decision.partition, "routed");

        let payload = record.payload.map_or(0, |p| p.to_bytes().len());
        let Some(reservation) = self.inner.queue.reserve(payload).await else {
            let full = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
            return Err(enqueue_error(full, record, route));
        };
        let delivery = match self.inner.producer.send_result(record) {
            Ok(delivery) => delivery,
            Err((error, mut record))
                if route != Route::Explicit && is_unknown_partition(&error) =>
            {
                // The cluster has partitions this producer's metadata does not know yet.
                route = Route::Fallback(Fallback::PartitionUnknownToProducer);
                record.partition = None;
                self.inner
                    .producer
                    .send_result(record)
                    .map_err(|(error, record)| enqueue_error(error, record, route))?
            }
            Err((error, record)) => return Err(enqueue_error(error, record, route)),
        };
        self.inner.metrics.record(route, first_move);
        let mut in_flight = InFlight {
            delivery: None,
            reservation: Some(reservation),
            producer: &self.inner.producer,
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
            Ok(Err((error, message))) => Err(ProduceError {
                error,
                message: Some(message),
                route,
                topic: topic.to_owned(),
            }),
            Err(_canceled) => Err(ProduceError {
                error: KafkaError::Canceled,
                message: None,
                route,
                topic: topic.to_owned(),
            }),
        }
    }

    /// Where `record` would go now, without sending it.
    pub fn decide<K, P>(&self, record: &FutureRecord<'_, K, P>) -> Decision
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        self.decide_detailed(record).0
    }

    #[inline]
    fn decide_detailed<K, P>(
        &self,
        record: &FutureRecord<'_, K, P>,
    ) -> (Decision, Option<crate::router::NewDetour>)
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        match &self.inner.router {
            Some(router) => {
                let key = record.key.map(ToBytes::to_bytes);
                let size =
                    key.map_or(0, <[u8]>::len) + record.payload.map_or(0, |p| p.to_bytes().len());
                router.route_detailed(record.topic, record.partition, key, size)
            }
            None => match record.partition {
                Some(partition) => (
                    Decision {
                        partition: Some(partition),
                        route: Route::Explicit,
                    },
                    None,
                ),
                None => (
                    Decision {
                        partition: None,
                        route: Route::Fallback(Fallback::Disabled),
                    },
                    None,
                ),
            },
        }
    }

    /// How the Redis L2 is doing; `None` without one.
    #[cfg(feature = "redis")]
    pub fn redis_status(&self) -> Option<crate::l2::RedisStatus> {
        self.inner.l2.as_ref().map(crate::l2::L2::status)
    }

    /// The partitions of `topic` new messages may go to now; `None` when there is no fresh
    /// health for it (routing for it falls back).
    pub fn healthy_partitions(&self, topic: &str) -> Option<Vec<i32>> {
        let snapshot = self.health();
        snapshot
            .topic(topic)
            .filter(|t| !t.is_stale())
            .map(|t| t.routable_partitions().to_vec())
    }

    /// The health of `topic`: per-partition lag, score and health, and the snapshot's age.
    pub fn topic_summary(&self, topic: &str) -> Option<TopicSummary> {
        let snapshot = self.health();
        snapshot
            .topic(topic)
            .map(|t| TopicSummary::new(snapshot.version(), t))
    }

    /// The health of every watched topic, by topic name.
    pub fn health_summary(&self) -> Vec<TopicSummary> {
        let snapshot = self.health();
        let mut topics: Vec<_> = snapshot
            .topics()
            .map(|t| TopicSummary::new(snapshot.version(), t))
            .collect();
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        topics
    }

    /// The current health snapshot (empty when smart routing is disabled).
    pub fn health(&self) -> Arc<HealthSnapshot> {
        self.health_feed().load_full()
    }

    /// The health feed: subscribe to it to hear about every new snapshot.
    pub fn health_feed(&self) -> HealthFeed {
        self.inner
            .router
            .as_ref()
            .map_or_else(HealthFeed::disconnected, |r| r.feed().clone())
    }

    /// Collects lag now and returns the version of the snapshot published.
    pub async fn refresh_health(&self) -> ProducerResult<u64> {
        Ok(self.monitor()?.refresh_now().await?)
    }

    /// Starts watching another topic (and collects its lag right away).
    pub async fn watch_topic(&self, topic: impl Into<String>) -> ProducerResult<u64> {
        Ok(self.monitor()?.watch_topic(topic).await?)
    }

    /// The monitor's counters and last outcome; `None` when smart routing is disabled or the
    /// health comes from elsewhere.
    pub fn monitor_stats(&self) -> Option<MonitorStats> {
        self.inner.monitor.as_ref().map(MonitorHandle::stats)
    }

    /// Whether the health monitor runs, was stopped, or panicked; `None` when smart routing
    /// is disabled.
    pub fn monitor_status(&self) -> Option<MonitorStatus> {
        self.inner.monitor.as_ref().map(MonitorHandle::status)
    }

    fn monitor(&self) -> ProducerResult<&MonitorHandle> {
        self.inner
            .monitor
            .as_ref()
            .ok_or(ProducerError::SmartRoutingDisabled)
    }

    /// Messages that can still be handed to librdkafka without waiting for room (`None` when
    /// `queue.buffering.max.messages` is 0, librdkafka's "no limit").
    pub fn queue_room(&self) -> Option<usize> {
        self.inner.queue.available_messages()
    }

    /// The router, for inspection.
    pub fn router(&self) -> Option<&Router> {
        self.inner.router.as_deref()
    }

    /// The underlying rdkafka producer, for what this API does not cover (transactions,
    /// client metrics).
    pub fn inner(&self) -> &FutureProducer {
        &self.inner.producer
    }

    /// Waits until every message sent so far is delivered or failed, at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> ProducerResult<()> {
        let producer = self.inner.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| ProducerError::Kafka {
                context: format!("flush task failed: {e}"),
                source: KafkaError::Canceled,
            })?
            .map_err(|source| ProducerError::Kafka {
                context: format!("flush did not complete within {timeout:?}"),
                source,
            })
    }

    /// Stops the health monitor and flushes, at most `timeout` for the flush. Messages still
    /// in flight keep being delivered: every pending `produce` resolves.
    pub async fn close(&self, timeout: Duration) -> ProducerResult<()> {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.inner.l2 {
            // Hands the fleet's collector lease over at once instead of letting it expire.
            l2.shutdown().await;
        }
        let stopped = match &self.inner.monitor {
            Some(monitor) => monitor.shutdown().await,
            None => Ok(()),
        };
        self.flush(timeout).await?;
        Ok(stopped?)
    }
}

impl fmt::Debug for AsyncSmartProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncSmartProducer")
            .field("smart_enabled", &self.inner.router.is_some())
            .field("router", &self.inner.router)
            .field("monitor", &self.inner.monitor)
            .finish_non_exhaustive()
    }
}

/// The rdkafka producer, dropped on a blocking thread: dropping it purges its queue and waits
/// up to 500 ms for the resulting reports, which must not stall an async worker.
struct OffloadedDrop(Option<FutureProducer>);

impl std::ops::Deref for OffloadedDrop {
    type Target = FutureProducer;

    fn deref(&self) -> &FutureProducer {
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

pub(crate) fn is_unknown_partition(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownPartition)
}

/// An owned copy of a record librdkafka refused, to hand back in the error.
pub(crate) fn owned_message<K, P>(
    topic: &str,
    key: Option<&K>,
    payload: Option<&P>,
    timestamp: Option<i64>,
    partition: Option<i32>,
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> OwnedMessage
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    OwnedMessage::new(
        payload.map(|p| p.to_bytes().to_vec()),
        key.map(|k| k.to_bytes().to_vec()),
        topic.to_owned(),
        timestamp.map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
        partition.unwrap_or(-1),
        -1,
        headers,
    )
}

fn enqueue_error<K, P>(
    error: KafkaError,
    record: FutureRecord<'_, K, P>,
    route: Route,
) -> ProduceError
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    let message = owned_message(
        record.topic,
        record.key,
        record.payload,
        record.timestamp,
        record.partition,
        record.headers,
    );
    ProduceError {
        error,
        message: Some(message),
        route,
        topic: record.topic.to_owned(),
    }
}

/// What a producer is built from.
pub(crate) struct Parts {
    /// The rdkafka configuration of the producer itself (queue headroom applied).
    pub(crate) kafka: ClientConfig,
    pub(crate) queue: LocalQueue,
    pub(crate) routing: Option<Routing>,
}

/// Smart routing's running parts.
pub(crate) struct Routing {
    pub(crate) router: Arc<Router>,
    pub(crate) monitor: MonitorHandle,
    pub(crate) follower: AbortOnDropHandle<()>,
    #[cfg(feature = "redis")]
    pub(crate) l2: Option<crate::l2::L2>,
    #[cfg(not(feature = "redis"))]
    pub(crate) l2: Option<()>,
}

/// Configures an [`AsyncSmartProducer`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct AsyncSmartProducerBuilder {
    kafka: ClientConfig,
    smart_enabled: bool,
    monitor: MonitorConfig,
    key_cache: KeyCacheConfig,
    sticky_batch_bytes: Option<u32>,
    sticky_linger: Option<Duration>,
    queue_timeout: Duration,
    calculator: Arc<dyn HotPartitionCalculator>,
    calculator_error: Option<ConfigError>,
    collector: Option<Arc<dyn LagCollector>>,
    #[cfg(feature = "redis")]
    redis: Option<ksp_redis::RedisConfig>,
}

impl AsyncSmartProducerBuilder {
    /// The consumer group whose lag decides where messages go (required with smart routing).
    pub fn consumer_group(mut self, group: impl Into<String>) -> Self {
        self.monitor.group = group.into();
        self
    }

    /// The topics to route smartly (required with smart routing). Messages to other topics go
    /// where librdkafka sends them.
    pub fn topics<T: Into<String>>(mut self, topics: impl IntoIterator<Item = T>) -> Self {
        self.monitor.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// How lag becomes health. Default [`RelativeCalculator::default`] (see
    /// [`CalculatorConfig`] for why).
    pub fn calculator(mut self, calculator: impl HotPartitionCalculator) -> Self {
        self.calculator = Arc::new(calculator);
        self.calculator_error = None;
        self
    }

    /// Where lag comes from. Default: a [`KafkaLagCollector`] built from the producer's own
    /// configuration.
    pub fn collector(mut self, collector: impl LagCollector) -> Self {
        self.collector = Some(Arc::new(collector));
        self
    }

    /// Shares health and key moves with the other instances of a fleet through Redis (cargo
    /// feature `redis`; see `docs/redis.md`): one instance collects lag for everyone, and a
    /// moved key goes to the same partition from every instance. Redis is never required:
    /// while it is down (or the circuit breaker open) the producer behaves as without it.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, config: ksp_redis::RedisConfig) -> Self {
        self.redis = Some(config);
        self
    }

    /// Time between lag collections. Default 5 s.
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.monitor.refresh_interval = interval;
        self
    }

    /// Health older than this is ignored. Default 3 × `refresh_interval`.
    pub fn max_staleness(mut self, staleness: Duration) -> Self {
        self.monitor.max_staleness = Some(staleness);
        self
    }

    /// How long one lag collection may take. Default `refresh_interval`, at most 10 s.
    pub fn collect_timeout(mut self, timeout: Duration) -> Self {
        self.monitor.collect_timeout = Some(timeout);
        self
    }

    /// How long a partition that turned unhealthy is kept out before it is routed to again.
    /// Default: 60 s, growing with each repeated flip up to 10 minutes.
    pub fn damping(mut self, damping: ksp_core::DampingConfig) -> Self {
        self.monitor.damping = damping;
        self
    }

    /// Capacity and TTL of the cache of moved keys.
    pub fn key_cache(mut self, cache: KeyCacheConfig) -> Self {
        self.key_cache = cache;
        self
    }

    /// Bytes of keyless messages sent to one partition before switching. Default: the
    /// producer's `batch.size`. See [`RouterConfig::sticky_batch_bytes`].
    pub fn sticky_batch_bytes(mut self, bytes: u32) -> Self {
        self.sticky_batch_bytes = Some(bytes);
        self
    }

    /// Longest time keyless messages stick to one partition. Default: the producer's
    /// `sticky.partitioning.linger.ms`. See [`RouterConfig::sticky_linger`].
    pub fn sticky_linger(mut self, linger: Duration) -> Self {
        self.sticky_linger = Some(linger);
        self
    }

    /// How long `produce` waits for room when librdkafka's local queue is full, before failing
    /// with the message handed back. Default 5 s; `Duration::ZERO` fails at once.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// How lag becomes health, chosen by name and settings (what configuration files hold).
    /// Invalid settings are reported by [`validate`](Self::validate) and
    /// [`build`](Self::build).
    pub fn calculator_config(mut self, config: CalculatorConfig) -> Self {
        match config.build() {
            Ok(calculator) => {
                self.calculator = calculator;
                self.calculator_error = None;
            }
            Err(error) => self.calculator_error = Some(error),
        }
        self
    }

    /// `false` makes a plain producer: no monitor, no routing, librdkafka decides everything.
    /// Default `true`.
    pub fn smart_enabled(mut self, enabled: bool) -> Self {
        self.smart_enabled = enabled;
        self
    }

    /// Replaces every monitor setting at once.
    pub fn monitor_config(mut self, config: MonitorConfig) -> Self {
        self.monitor = config;
        self
    }

    /// Runs every check [`build`](Self::build) runs, librdkafka's own parsing of the client
    /// settings included, without creating a client or touching the network. Use it to reject a
    /// bad configuration at startup, or in a test.
    pub fn validate(&self) -> ProducerResult<()> {
        self.checked().map(drop)
    }

    fn checked(&self) -> ProducerResult<(LocalQueue, RouterConfig)> {
        if let Some(error) = &self.calculator_error {
            return Err(error.clone().into());
        }
        let queue = LocalQueue::new(&self.kafka, self.queue_timeout)?;
        queue.client_config(&self.kafka)?;
        let mut router = RouterConfig::from_client_config(&self.kafka)?;
        router.key_cache = self.key_cache.clone();
        if let Some(bytes) = self.sticky_batch_bytes {
            router.sticky_batch_bytes = bytes;
        }
        if let Some(linger) = self.sticky_linger {
            router.sticky_linger = linger;
        }
        if self.smart_enabled {
            self.monitor.validate()?;
            router.validate()?;
            #[cfg(feature = "redis")]
            if let Some(redis) = &self.redis {
                redis.validate()?;
            }
        }
        self.kafka
            .create_native_config()
            .map_err(|source| ProducerError::Kafka {
                context: "invalid rdkafka client configuration".into(),
                source,
            })?;
        Ok((queue, router))
    }

    /// Validates everything, creates the rdkafka producer and, with smart routing, spawns the
    /// health monitor on the current Tokio runtime (its first collection starts right away;
    /// until it lands, messages go where librdkafka sends them).
    pub fn build(self) -> ProducerResult<AsyncSmartProducer> {
        let parts = self.into_parts()?;
        let producer: FutureProducer =
            parts
                .kafka
                .create()
                .map_err(|source| ProducerError::Kafka {
                    context: "creating the rdkafka producer".into(),
                    source,
                })?;
        let producer = OffloadedDrop(Some(producer));
        let (router, monitor, follower, l2) = match parts.routing {
            Some(r) => (Some(r.router), Some(r.monitor), Some(r.follower), r.l2),
            None => (None, None, None, None),
        };
        #[cfg(not(feature = "redis"))]
        let _: Option<()> = l2;
        Ok(AsyncSmartProducer {
            inner: Arc::new(Inner {
                producer,
                queue: parts.queue,
                router,
                monitor,
                _follower: follower,
                #[cfg(feature = "redis")]
                l2,
                metrics: crate::metrics::SendMetrics::register(),
            }),
        })
    }

    /// Validates, and with smart routing spawns the monitor (and the Redis L2) on the current
    /// Tokio runtime: what every producer flavour shares.
    pub(crate) fn into_parts(self) -> ProducerResult<Parts> {
        let (queue, router) = self.checked()?;
        let Self {
            kafka,
            smart_enabled,
            monitor,
            calculator,
            collector,
            #[cfg(feature = "redis")]
            redis,
            ..
        } = self;
        let producer_config = queue.client_config(&kafka)?;
        if !smart_enabled {
            return Ok(Parts {
                kafka: producer_config,
                queue,
                routing: None,
            });
        }
        let collector = match collector {
            Some(collector) => collector,
            None => Arc::new(KafkaLagCollector::builder(&kafka).build()?),
        };
        #[cfg(feature = "redis")]
        let (collector, mut l2) = match &redis {
            Some(config) => {
                let (mut l2, client) = crate::l2::L2::connect(config)?;
                let collector =
                    l2.collector(client, collector, &kafka, &monitor, calculator.clone())?;
                (collector, Some(l2))
            }
            None => (collector, None),
        };
        #[cfg(not(feature = "redis"))]
        let l2 = None;
        let handle = HealthMonitor::builder(collector)
            .config(monitor)
            .calculator(calculator)
            .spawn()?;
        #[cfg(feature = "redis")]
        if let Some(l2) = &mut l2 {
            l2.follow_peers(&handle);
        }
        let router = Arc::new(Router::new(handle.feed(), &router)?);
        let follower = AbortOnDropHandle::new(tokio::spawn(router.clone().follow_health()));
        Ok(Parts {
            kafka: producer_config,
            queue,
            routing: Some(Routing {
                router,
                monitor: handle,
                follower,
                l2,
            }),
        })
    }
}

impl fmt::Debug for AsyncSmartProducerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncSmartProducerBuilder")
            .field("kafka", &redact(self.kafka.config_map()))
            .field("smart_enabled", &self.smart_enabled)
            .field("monitor", &self.monitor)
            .field("key_cache", &self.key_cache)
            .field("sticky_batch_bytes", &self.sticky_batch_bytes)
            .field("sticky_linger", &self.sticky_linger)
            .field("queue_timeout", &self.queue_timeout)
            .field("calculator", &self.calculator.name())
            .field("redis", &self.redis_debug())
            .field(
                "collector",
                &self.collector.as_ref().map(|c| c.name().to_owned()),
            )
            .finish()
    }
}

impl AsyncSmartProducerBuilder {
    #[cfg(feature = "redis")]
    fn redis_debug(&self) -> &dyn fmt::Debug {
        &self.redis
    }

    #[cfg(not(feature = "redis"))]
    fn redis_debug(&self) -> &dyn fmt::Debug {
        &"disabled (cargo feature `redis`)"
    }
}

/// Default `queue_timeout`.
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
