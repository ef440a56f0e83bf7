//! [`AsyncSmartProducerBuilder`]: the settings of both producers, and what building them
//! shares.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ksp_core::secret::redact;
use ksp_core::{ConfigError, HotPartitionCalculator, LagCollector, RelativeCalculator};
use ksp_monitor::{
    HealthMonitor, KafkaLagCollector, KafkaLagCollectorBuilder, MonitorConfig, MonitorError,
};
use rdkafka::ClientConfig;
use rdkafka::statistics::Statistics;
use tokio_util::task::AbortOnDropHandle;

use crate::backpressure::LocalQueue;
use crate::context::OnStatistics;
use crate::error::BuildError;
use crate::router::{Router, RouterConfig};
use crate::routing::Routing;

/// Default `queue_timeout`.
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Configures an [`AsyncSmartProducer`](crate::AsyncSmartProducer) (finish with
/// [`build`](Self::build)) or a blocking [`SmartProducer`](crate::blocking::SmartProducer)
/// (finish with [`build_blocking`](Self::build_blocking)).
///
/// What to watch is set here (`consumer_group`, `topics`, the `calculator` and `collector`);
/// how is set by two settings structs, each with defaults: [`MonitorConfig`] (refresh
/// interval, staleness, damping…) and [`RouterConfig`] (sticky batching, the key cache).
#[must_use = "a builder does nothing until `build` is called"]
pub struct AsyncSmartProducerBuilder {
    kafka: ClientConfig,
    smart_enabled: bool,
    group: String,
    topics: Vec<String>,
    monitor: MonitorConfig,
    router: RouterConfig,
    queue_timeout: Duration,
    calculator: Arc<dyn HotPartitionCalculator>,
    collector: Option<Arc<dyn LagCollector>>,
    statistics: Option<OnStatistics>,
    #[cfg(feature = "redis")]
    redis: Option<ksp_redis::RedisConfig>,
}

/// What a producer is built from.
pub(crate) struct Parts {
    /// The rdkafka configuration of the producer itself (queue headroom applied).
    pub(crate) kafka: ClientConfig,
    /// Where librdkafka's statistics go.
    pub(crate) statistics: Option<OnStatistics>,
    pub(crate) queue: LocalQueue,
    pub(crate) routing: Option<Routing>,
}

impl AsyncSmartProducerBuilder {
    pub(crate) fn new(kafka: ClientConfig) -> Self {
        Self {
            kafka,
            smart_enabled: true,
            group: String::new(),
            topics: Vec::new(),
            monitor: MonitorConfig::default(),
            router: RouterConfig::default(),
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            calculator: Arc::new(RelativeCalculator::default()),
            collector: None,
            statistics: None,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// Hands librdkafka's statistics of the producer (queues, batches, brokers, per
    /// partition) to `callback`, every `statistics.interval.ms`: set that in the rdkafka
    /// configuration, or [`build`](Self::build) refuses the callback. Without a callback they
    /// are logged at `info`, as rdkafka's default context does.
    ///
    /// The callback runs on rdkafka's polling thread (or on a thread that flushes or drops the
    /// producer), the thread that also completes deliveries: keep it short. A panic in it is
    /// caught and logged, and those statistics are dropped.
    pub fn statistics(mut self, callback: impl Fn(&Statistics) + Send + Sync + 'static) -> Self {
        self.statistics = Some(Arc::new(callback));
        self
    }

    /// The consumer group whose lag decides where messages go (required with smart routing).
    pub fn consumer_group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// The topics to route smartly (required with smart routing). Messages to other topics go
    /// where librdkafka sends them.
    pub fn topics<T: Into<String>>(mut self, topics: impl IntoIterator<Item = T>) -> Self {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// How lag becomes health. Default [`RelativeCalculator::default`] (see
    /// [`CalculatorConfig`](ksp_core::CalculatorConfig) for why). A `CalculatorConfig` builds
    /// one: `.calculator(config.build()?)`.
    pub fn calculator(mut self, calculator: impl HotPartitionCalculator) -> Self {
        self.calculator = Arc::new(calculator);
        self
    }

    /// Where lag comes from. Default: a [`KafkaLagCollector`] built from the producer's own
    /// configuration.
    pub fn collector(mut self, collector: impl LagCollector) -> Self {
        self.collector = Some(Arc::new(collector));
        self
    }

    /// How the health monitor watches: refresh interval, staleness, damping, the policy for
    /// partitions without a committed offset. Default [`MonitorConfig::default`].
    pub fn monitor(mut self, config: MonitorConfig) -> Self {
        self.monitor = config;
        self
    }

    /// How the router batches keyless messages and remembers moved keys. Settings left unset
    /// follow the producer's own configuration (`batch.size`, `partitioner`…). Default
    /// [`RouterConfig::default`].
    pub fn router(mut self, config: RouterConfig) -> Self {
        self.router = config;
        self
    }

    /// Shares health and key moves with the other instances of a fleet through Redis (cargo
    /// feature `redis`; see `docs/redis.md`): one instance collects lag for everyone, and a
    /// moved key goes to the same partition from every instance. Redis is never required:
    /// while it is down (or the circuit breaker open) the producer behaves as without it.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, config: ksp_redis::RedisConfig) -> Self {
        self.redis = Some(config);
        self
    }

    /// How long `produce` waits for room when librdkafka's local queue is full, before failing
    /// with the message handed back. Default 5 s; `Duration::ZERO` fails at once.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// `false` makes a plain producer: no monitor, no routing, librdkafka decides everything.
    /// Default `true`.
    pub fn smart_enabled(mut self, enabled: bool) -> Self {
        self.smart_enabled = enabled;
        self
    }

    /// Runs every check [`build`](Self::build) runs, librdkafka's own parsing of the client
    /// settings included (the producer's, and with smart routing the lag reader's), without
    /// creating a client or touching the network. Use it to reject a bad configuration at
    /// startup, or in a test.
    ///
    /// # Errors
    ///
    /// [`BuildError::Config`] naming the first bad setting, or [`BuildError::Kafka`] when
    /// librdkafka refuses a client setting.
    pub fn validate(&self) -> Result<(), BuildError> {
        self.checked().map(drop)
    }

    /// The checks, and what they built: the queue mirror, the router's settings and, with
    /// smart routing, the lag collector (the caller's, or the default one, which creates no
    /// client until its first collection).
    fn checked(&self) -> Result<Checked, BuildError> {
        let queue = LocalQueue::new(&self.kafka, self.queue_timeout)?;
        queue.client_config(&self.kafka)?;
        let router = self.router.for_producer(&self.kafka)?;
        if self.statistics.is_some() {
            let interval = self.kafka.get("statistics.interval.ms").unwrap_or("0");
            if interval.trim().parse::<u64>().map_or(true, |ms| ms == 0) {
                return Err(ConfigError::new(
                    "statistics",
                    format!("a callback with statistics.interval.ms = {interval:?}"),
                    "statistics.interval.ms set to a number of milliseconds above 0 in the rdkafka \
                     configuration: without it librdkafka sends no statistics",
                )
                .into());
            }
        }
        if self.smart_enabled {
            ksp_monitor::validate_watch(&self.group, &self.topics)?;
            self.monitor.validate()?;
            router.validate()?;
            #[cfg(feature = "redis")]
            if let Some(redis) = &self.redis {
                redis.validate()?;
            }
        }
        self.kafka
            .create_native_config()
            .map_err(|source| BuildError::Kafka {
                context: "invalid rdkafka client configuration".into(),
                source,
            })?;
        let collector = match (&self.collector, self.smart_enabled) {
            (_, false) => None,
            (Some(collector), true) => Some(collector.clone()),
            (None, true) => Some(Arc::new(default_collector(&self.kafka, &self.monitor)?) as _),
        };
        Ok(Checked {
            queue,
            router,
            collector,
        })
    }

    /// Validates, and with smart routing spawns the monitor (and the Redis L2) on the current
    /// Tokio runtime: what every producer flavour shares.
    pub(crate) fn into_parts(self) -> Result<Parts, BuildError> {
        let Checked {
            queue,
            router: router_config,
            collector,
        } = self.checked()?;
        let Self {
            kafka,
            group,
            topics,
            monitor,
            calculator,
            statistics,
            #[cfg(feature = "redis")]
            redis,
            ..
        } = self;
        let producer_config = queue.client_config(&kafka)?;
        let Some(collector) = collector else {
            // Smart routing is off.
            return Ok(Parts {
                kafka: producer_config,
                statistics,
                queue,
                routing: None,
            });
        };
        // Before anything spawns a task (the Redis client's connection does first), which
        // would panic outside a runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(MonitorError::NoRuntime.into());
        }
        #[cfg(feature = "redis")]
        let (collector, mut l2) = match &redis {
            Some(config) => {
                let (mut l2, client) = crate::redis::L2::connect(config, &kafka, &group)?;
                let collector =
                    l2.collector(client, collector, &group, &monitor, calculator.clone())?;
                (collector, Some(l2))
            }
            None => (collector, None),
        };
        let handle = HealthMonitor::builder(collector)
            .group(group)
            .topics(topics)
            .config(monitor)
            .calculator(calculator)
            .spawn()?;
        #[cfg(feature = "redis")]
        if let Some(l2) = &mut l2 {
            l2.follow_peers(&handle);
        }
        let router = Arc::new(Router::new(handle.feed(), &router_config)?);
        #[cfg(feature = "redis")]
        if let Some(l2) = &mut l2 {
            l2.follow_moves(&router);
        }
        let follower = AbortOnDropHandle::new(tokio::spawn(router.clone().follow_health()));
        let holds = router_config
            .key_order
            .is_strict()
            .then(|| crate::holds::Holds::new(router_config.key_order.clone()));
        Ok(Parts {
            kafka: producer_config,
            statistics,
            queue,
            routing: Some(Routing {
                router,
                monitor: handle,
                _follower: follower,
                holds,
                #[cfg(feature = "redis")]
                l2,
            }),
        })
    }
}

/// What [`AsyncSmartProducerBuilder::checked`] built.
struct Checked {
    queue: LocalQueue,
    router: RouterConfig,
    /// `None` without smart routing.
    collector: Option<Arc<dyn LagCollector>>,
}

/// The collector a producer uses unless given one: Kafka's, its requests timed out at the
/// collection budget (no request can outlast a collection), which also bounds how long its
/// librdkafka client keeps a connection that stopped answering (see
/// [`KafkaLagCollectorBuilder::request_timeout`]).
fn default_collector(
    kafka: &ClientConfig,
    monitor: &MonitorConfig,
) -> Result<KafkaLagCollector, MonitorError> {
    KafkaLagCollector::builder(kafka)
        .request_timeout(
            monitor
                .effective_collect_timeout()
                .min(KafkaLagCollectorBuilder::DEFAULT_REQUEST_TIMEOUT)
                // The shortest the collector takes.
                .max(Duration::from_millis(10)),
        )
        .build()
}

impl fmt::Debug for AsyncSmartProducerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("AsyncSmartProducerBuilder");
        d.field("kafka", &redact(self.kafka.config_map()))
            .field("smart_enabled", &self.smart_enabled)
            .field("group", &self.group)
            .field("topics", &self.topics)
            .field("monitor", &self.monitor)
            .field("router", &self.router)
            .field("queue_timeout", &self.queue_timeout)
            .field("calculator", &self.calculator.name())
            .field(
                "collector",
                &self.collector.as_ref().map(|c| c.name().to_owned()),
            )
            .field("statistics", &self.statistics.is_some());
        #[cfg(feature = "redis")]
        d.field("redis", &self.redis);
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default collector's requests, and so its socket timeout and reconnect backoff,
    /// follow the collection budget: a 200 ms refresh must not wait 5 s (or librdkafka's
    /// 60 s) on a connection that stopped answering.
    #[test]
    fn the_default_collector_times_out_within_the_collection_budget() {
        let mut kafka = ClientConfig::new();
        kafka.set("bootstrap.servers", "b1:9092");
        let reader = |monitor: MonitorConfig| {
            let collector = default_collector(&kafka, &monitor).unwrap();
            let config = collector.reader_config();
            ["socket.timeout.ms", "reconnect.backoff.max.ms"]
                .map(|key| config.get(key).copied().unwrap_or("-").to_owned())
        };
        let fast = MonitorConfig::default()
            .with_refresh_interval(Duration::from_millis(200))
            .with_max_staleness(Duration::from_secs(1));
        assert_eq!(reader(fast), ["1000", "200"]);
        let slow = MonitorConfig::default().with_refresh_interval(Duration::from_secs(30));
        assert_eq!(reader(slow), ["5000", "1000"]);
    }
}
