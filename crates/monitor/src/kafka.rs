//! [`KafkaLagCollector`]: consumer-group lag read straight from Kafka.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use futures::future::join_all;
use ksp_core::secret::redact;
use ksp_core::{CollectError, LagCollector, LagRequest, PartitionLag, TopicLag, UncommittedPolicy};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use crate::error::{MonitorError, MonitorResult};

/// Settings copied from the producer's configuration into the lag reader's: where the cluster
/// is and how to talk to it securely. Everything else (batching, acks, compression…) is a
/// producer setting that a consumer would warn about.
const INHERITED_PREFIXES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "security.protocol",
    "sasl.",
    "ssl.",
    "ssl_",
    "enable.ssl.certificate.verification",
    "enable.sasl.oauthbearer.unsecure.jwt",
    "https.",
    "client.dns.lookup",
    "client.rack",
    "broker.address.",
    "socket.",
    "api.version.",
    "broker.version.fallback",
    "connections.max.idle.ms",
    "resolve.",
    "test.mock.",
];

/// The lag reader's own defaults, applied unless the caller sets them explicitly.
const READER_DEFAULTS: &[(&str, &str)] = &[
    // Notice a recovered broker within a second instead of up to ten.
    ("reconnect.backoff.max.ms", "1000"),
];

/// Shortest time worth starting a request with.
const MIN_ATTEMPT: Duration = Duration::from_millis(5);

/// Reads consumer-group lag from Kafka.
///
/// Per refresh, for one group and its topics:
///
/// 1. **Metadata**, one request per topic: partition count and leaders are re-read every time,
///    so added partitions show up and a partition whose leader is not among the live brokers
///    (or has none) is reported with `leader_available: false` and is never routed to.
/// 2. **Committed offsets**, one `OffsetFetch` to the group coordinator for every partition of
///    every topic, through a consumer that carries the group id but never subscribes (it never
///    joins the group, so it cannot trigger a rebalance).
/// 3. **High watermarks**, one `ListOffsets` per leader broker for all of its partitions, the
///    brokers in parallel. A loop over `fetch_watermarks` would cost two requests per
///    partition. Grouping by leader also confines a slow or failing broker to its own
///    partitions.
/// 4. **Low watermarks**, only for partitions without a committed offset (see
///    [`UncommittedPolicy`]), again one `ListOffsets` per leader.
///
/// Steps 2 and 3 run concurrently. All client calls block, so they run on Tokio's blocking
/// pool, never on a worker thread. Retriable errors (`NOT_LEADER_OR_FOLLOWER`,
/// `NOT_COORDINATOR`, …) are retried with exponential backoff while the refresh budget lasts.
///
/// The lag reader inherits the connection and security settings of the configuration it is
/// built from (bootstrap servers, `security.protocol`, `sasl.*`, `ssl.*`, …), so it reaches a
/// secured cluster exactly as the producer does.
#[derive(Clone)]
pub struct KafkaLagCollector {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    readers: Mutex<HashMap<String, Arc<Reader>>>,
    request_timeout: Duration,
    policy: UncommittedPolicy,
}

type Reader = BaseConsumer<ReaderContext>;

impl KafkaLagCollector {
    /// Starts configuring a collector for the cluster `kafka` points at (usually the
    /// producer's own configuration).
    pub fn builder(kafka: &ClientConfig) -> KafkaLagCollectorBuilder {
        let mut config = ClientConfig::new();
        for (key, value) in inherited_settings(kafka) {
            config.set(key, value);
        }
        let client_id = kafka.get("client.id").unwrap_or("ksp");
        config.set("client.id", format!("{client_id}-lag-reader"));
        for (key, value) in READER_DEFAULTS {
            config.set(*key, *value);
        }
        KafkaLagCollectorBuilder {
            config,
            request_timeout: KafkaLagCollectorBuilder::DEFAULT_REQUEST_TIMEOUT,
            policy: UncommittedPolicy::default(),
        }
    }

    /// Requests the lag reader of `group` has sent, by API, as librdkafka counts them.
    ///
    /// Available once librdkafka has emitted statistics, which it does only when the reader is
    /// built with `statistics.interval.ms` set (see [`KafkaLagCollectorBuilder::set`]).
    /// Independent evidence of how many requests a refresh costs.
    pub fn request_counts(&self, group: &str) -> Option<RequestCounts> {
        let reader = self.inner.lock_readers().get(group).cloned()?;
        // Statistics are delivered as events that polling serves.
        let _ = reader.poll(Duration::ZERO);
        *reader
            .context()
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The lag reader's configuration, secrets redacted.
    pub fn reader_config(&self) -> BTreeMap<&str, &str> {
        redact(self.inner.config.config_map())
    }
}

impl fmt::Debug for KafkaLagCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaLagCollector")
            .field("config", &self.reader_config())
            .field("request_timeout", &self.inner.request_timeout)
            .field("uncommitted_policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

/// The settings of `kafka` a lag reader inherits.
fn inherited_settings(kafka: &ClientConfig) -> impl Iterator<Item = (&str, &str)> {
    // `config_map` sanitizes secrets, so read each value back with `get`.
    kafka.config_map().into_keys().filter_map(|key| {
        INHERITED_PREFIXES
            .iter()
            .any(|prefix| key.starts_with(prefix))
            .then(|| kafka.get(key).map(|value| (key, value)))
            .flatten()
    })
}

/// Configures a [`KafkaLagCollector`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct KafkaLagCollectorBuilder {
    config: ClientConfig,
    request_timeout: Duration,
    policy: UncommittedPolicy,
}

impl KafkaLagCollectorBuilder {
    /// Default [`request_timeout`](Self::request_timeout).
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

    /// Sets a librdkafka setting of the lag reader (overriding an inherited one), for example
    /// `statistics.interval.ms` or a dedicated `sasl.username`.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.set(key, value);
        self
    }

    /// Longest a single request may take; a refresh's budget caps it further. Default 5 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How partitions without a committed offset are counted. Default
    /// [`UncommittedPolicy::RetainedBacklog`].
    pub fn uncommitted_policy(mut self, policy: UncommittedPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Checks the settings with librdkafka and builds the collector. Lag readers (one per
    /// consumer group) are created on first use.
    pub fn build(self) -> MonitorResult<KafkaLagCollector> {
        if self.request_timeout < Duration::from_millis(10)
            || self.request_timeout > Duration::from_secs(300)
        {
            return Err(ksp_core::ConfigError::duration(
                "lag_request_timeout",
                self.request_timeout,
                "between 10ms and 300s",
            )
            .into());
        }
        if self.config.get("bootstrap.servers").is_none()
            && self.config.get("metadata.broker.list").is_none()
            && self.config.get("test.mock.num.brokers").is_none()
        {
            return Err(ksp_core::ConfigError::new(
                "bootstrap.servers",
                "<unset>",
                "the cluster's brokers, host:port[,host:port…]",
            )
            .into());
        }
        // Let librdkafka reject unknown or malformed settings now rather than on first use.
        let mut probe = self.config.clone();
        probe.set("group.id", "ksp-config-check");
        probe
            .create_native_config()
            .map_err(|source| MonitorError::Kafka {
                context: "invalid lag reader configuration".into(),
                source,
            })?;
        Ok(KafkaLagCollector {
            inner: Arc::new(Inner {
                config: self.config,
                readers: Mutex::default(),
                request_timeout: self.request_timeout,
                policy: self.policy,
            }),
        })
    }
}

impl fmt::Debug for KafkaLagCollectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaLagCollectorBuilder")
            .field("config", &redact(self.config.config_map()))
            .field("request_timeout", &self.request_timeout)
            .field("uncommitted_policy", &self.policy)
            .finish()
    }
}

/// Requests sent by a lag reader since it was created, per Kafka API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestCounts {
    /// `Metadata` requests.
    pub metadata: u64,
    /// `OffsetFetch` requests (committed offsets).
    pub offset_fetch: u64,
    /// `ListOffsets` requests (watermarks).
    pub list_offsets: u64,
}

#[derive(Default)]
struct ReaderContext {
    counts: Mutex<Option<RequestCounts>>,
}

impl ClientContext for ReaderContext {
    fn stats(&self, statistics: Statistics) {
        let count = |api: &str| -> u64 {
            statistics
                .brokers
                .values()
                .filter_map(|b| b.req.get(api))
                .map(|&n| n.max(0) as u64)
                .sum()
        };
        let counts = RequestCounts {
            metadata: count("Metadata"),
            offset_fetch: count("OffsetFetch"),
            list_offsets: count("ListOffsets"),
        };
        *self.counts.lock().unwrap_or_else(PoisonError::into_inner) = Some(counts);
    }
}

impl ConsumerContext for ReaderContext {}

impl Inner {
    fn lock_readers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Reader>>> {
        self.readers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lag reader of `group`, created on first use and kept: the Python library builds a
    /// new client every refresh, paying connection setup each time.
    fn reader(&self, group: &str) -> Result<Arc<Reader>, CollectError> {
        let mut readers = self.lock_readers();
        if let Some(reader) = readers.get(group) {
            return Ok(reader.clone());
        }
        let mut config = self.config.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("allow.auto.create.topics", "false");
        let reader: Reader = config
            .create_with_context(ReaderContext::default())
            .map_err(|e| {
                CollectError::source(format!("creating the lag reader for group `{group}`"), e)
            })?;
        let reader = Arc::new(reader);
        readers.insert(group.to_owned(), reader.clone());
        Ok(reader)
    }
}

/// Why one step of a collection failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("the refresh budget ran out")]
    OutOfBudget,
    #[error("a blocking client call failed: {0}")]
    Blocking(String),
}

impl ReadError {
    fn is_retriable(&self) -> bool {
        match self {
            Self::Kafka(e) => e.rdkafka_error_code().is_some_and(is_retriable),
            Self::OutOfBudget | Self::Blocking(_) => false,
        }
    }
}

fn is_retriable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::NotLeaderForPartition
            | C::LeaderNotAvailable
            | C::NotCoordinator
            | C::CoordinatorLoadInProgress
            | C::CoordinatorNotAvailable
            | C::RequestTimedOut
            | C::OperationTimedOut
            | C::NetworkException
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::UnknownLeaderEpoch
            | C::FencedLeaderEpoch
            | C::OffsetNotAvailable
            | C::NotEnoughReplicas
            | C::KafkaStorageError
            | C::UnstableOffsetCommit
    )
}

/// Runs the blocking `op` on Tokio's blocking pool, retrying retriable failures with
/// exponential backoff until `deadline`. `op` receives the timeout to use for its request.
async fn retrying<T, F>(
    what: &'static str,
    deadline: Instant,
    max_timeout: Duration,
    op: F,
) -> Result<T, ReadError>
where
    T: Send + 'static,
    F: Fn(Duration) -> Result<T, ReadError> + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let attempt = || {
        let op = op.clone();
        async move {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < MIN_ATTEMPT {
                return Err(ReadError::OutOfBudget);
            }
            let timeout = remaining.min(max_timeout);
            tokio::task::spawn_blocking(move || op(timeout))
                .await
                .map_err(|e| ReadError::Blocking(e.to_string()))?
        }
    };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(20))
                .with_max_delay(Duration::from_millis(500))
                .with_max_times(16)
                .with_jitter(),
        )
        .when(|e: &ReadError| e.is_retriable())
        // Give up, with the last real error, when the next attempt would not fit in the budget
        // (otherwise the caller's timeout fires first and the error says only "timed out").
        .adjust(move |_, delay| delay.filter(|&d| Instant::now() + d + MIN_ATTEMPT < deadline))
        .notify(|e: &ReadError, after: Duration| debug!(what, error = %e, ?after, "retrying"))
        .await
}

/// Partitions of one topic, with their leader when it is available.
struct TopicLayout {
    topic: String,
    /// `(partition, leader)`; `leader` is `None` when unavailable.
    partitions: Vec<(i32, Option<i32>)>,
}

fn read_layout(
    reader: &Reader,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<TopicLayout>, ReadError> {
    let deadline = Instant::now() + timeout;
    let mut layouts = Vec::with_capacity(topics.len());
    for topic in topics {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let metadata = reader.fetch_metadata(Some(topic), remaining)?;
        let live: HashSet<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            continue;
        };
        if let Some(error) = found.error() {
            let code = RDKafkaErrorCode::from(error);
            if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                debug!(%topic, "topic does not exist (yet); not reported");
                continue;
            }
            return Err(KafkaError::MetadataFetch(code).into());
        }
        let partitions = found
            .partitions()
            .iter()
            .map(|p| {
                let leader_lost = p.error().is_some_and(|e| {
                    RDKafkaErrorCode::from(e) == RDKafkaErrorCode::LeaderNotAvailable
                });
                let available = p.leader() >= 0 && live.contains(&p.leader()) && !leader_lost;
                (p.id(), available.then_some(p.leader()))
            })
            .collect();
        layouts.push(TopicLayout {
            topic: topic.clone(),
            partitions,
        });
    }
    Ok(layouts)
}

type Offsets = HashMap<(String, i32), i64>;

/// Reads offsets of `tpl`; partitions with a non-retriable error of their own are left out.
fn read_offsets(
    tpl: &TopicPartitionList,
    call: impl FnOnce(TopicPartitionList) -> KafkaResult<TopicPartitionList>,
) -> Result<Offsets, ReadError> {
    let result = call(tpl.clone())?;
    let mut offsets = Offsets::new();
    for element in result.elements() {
        if let Err(error) = element.error() {
            if error.rdkafka_error_code().is_some_and(is_retriable) {
                return Err(error.into());
            }
            warn!(
                topic = element.topic(),
                partition = element.partition(),
                %error,
                "offsets of one partition could not be read",
            );
            continue;
        }
        if let Offset::Offset(offset) = element.offset() {
            offsets.insert((element.topic().to_owned(), element.partition()), offset);
        }
    }
    Ok(offsets)
}

/// One list of partitions per leader broker, each partition's offset set to `offset` (a
/// ListOffsets "timestamp": `End` for the high watermark, `Beginning` for the low one).
fn per_leader<'a>(
    partitions: impl Iterator<Item = (&'a str, i32, i32)>,
    offset: Offset,
) -> Vec<(i32, TopicPartitionList)> {
    let mut by_leader: BTreeMap<i32, TopicPartitionList> = BTreeMap::new();
    for (topic, partition, leader) in partitions {
        // Offset::End and Beginning are always valid here.
        let _ = by_leader
            .entry(leader)
            .or_default()
            .add_partition_offset(topic, partition, offset);
    }
    by_leader.into_iter().collect()
}

impl KafkaLagCollector {
    /// Watermarks at `offset` for the given partitions, one request per leader, leaders in
    /// parallel. A failing leader only loses its own partitions, which count as unavailable
    /// this round; if every leader fails, the read fails as a whole (the monitor then keeps
    /// its last health rather than publishing a topic with nothing measured).
    async fn watermarks(
        &self,
        reader: &Arc<Reader>,
        lists: Vec<(i32, TopicPartitionList)>,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Offsets, ReadError> {
        let reads = lists.into_iter().map(|(leader, tpl)| {
            let reader = reader.clone();
            async move {
                let read = retrying(what, deadline, self.inner.request_timeout, move |timeout| {
                    read_offsets(&tpl, |tpl| reader.offsets_for_times(tpl, timeout))
                })
                .await;
                (leader, read)
            }
        });
        let results = join_all(reads).await;
        let leaders = results.len();
        let mut offsets = Offsets::new();
        let mut failures = Vec::new();
        for (leader, read) in results {
            match read {
                Ok(read) => offsets.extend(read),
                Err(error) => failures.push((leader, error)),
            }
        }
        if leaders > 0 && failures.len() == leaders {
            return Err(failures.swap_remove(0).1);
        }
        for (leader, error) in failures {
            warn!(
                leader,
                %error,
                "{what} of one broker's partitions could not be read; they count as unavailable \
                 this round",
            );
        }
        Ok(offsets)
    }
}

#[async_trait]
impl LagCollector for KafkaLagCollector {
    async fn collect(&self, request: &LagRequest<'_>) -> Result<Vec<TopicLag>, CollectError> {
        let deadline = Instant::now() + request.budget;
        let group = request.group;
        let reader = self.inner.reader(group)?;
        let timeout = self.inner.request_timeout;

        let layouts = {
            let reader = reader.clone();
            let topics = request.topics.to_vec();
            retrying("metadata", deadline, timeout, move |t| {
                read_layout(&reader, &topics, t)
            })
            .await
            .map_err(|e| CollectError::source(format!("metadata of {:?}", request.topics), e))?
        };

        let read_at = SystemTime::now();
        let mut all = TopicPartitionList::new();
        for layout in &layouts {
            for &(partition, _) in &layout.partitions {
                all.add_partition(&layout.topic, partition);
            }
        }
        let available = || {
            layouts.iter().flat_map(|l| {
                l.partitions
                    .iter()
                    .filter_map(|&(p, leader)| leader.map(|leader| (l.topic.as_str(), p, leader)))
            })
        };
        let committed = {
            let reader = reader.clone();
            retrying("committed offsets", deadline, timeout, move |t| {
                read_offsets(&all, |tpl| reader.committed_offsets(tpl, t))
            })
        };
        let highs = self.watermarks(
            &reader,
            per_leader(available(), Offset::End),
            deadline,
            "high watermarks",
        );
        let (committed, highs) = futures::join!(committed, highs);
        let committed = committed.map_err(|e| {
            CollectError::source(format!("committed offsets of group `{group}`"), e)
        })?;
        let highs = highs.map_err(|e| {
            CollectError::source(format!("high watermarks of {:?}", request.topics), e)
        })?;

        let lows = if self.inner.policy == UncommittedPolicy::RetainedBacklog {
            let uncommitted = available()
                .filter(|(topic, p, _)| !committed.contains_key(&((*topic).to_owned(), *p)));
            let lists = per_leader(uncommitted, Offset::Beginning);
            if lists.is_empty() {
                Offsets::new()
            } else {
                // Without them the uncommitted partitions' lag is unknown, not the whole
                // collection.
                self.watermarks(&reader, lists, deadline, "low watermarks")
                    .await
                    .unwrap_or_default()
            }
        } else {
            Offsets::new()
        };

        // Serve librdkafka's queued events (statistics, errors) for this reader.
        let _ = reader.poll(Duration::ZERO);

        let policy = self.inner.policy;
        Ok(layouts
            .into_iter()
            .map(|layout| {
                let partitions = layout
                    .partitions
                    .iter()
                    .map(|&(partition, leader)| {
                        let key = (layout.topic.clone(), partition);
                        let committed = committed.get(&key).copied();
                        match (leader, highs.get(&key)) {
                            (Some(_), Some(&high)) => PartitionLag::from_offsets(
                                partition,
                                committed,
                                lows.get(&key).copied(),
                                high,
                                policy,
                            ),
                            _ => {
                                let mut lag = PartitionLag::unavailable(partition);
                                lag.committed = committed;
                                lag
                            }
                        }
                    })
                    .collect();
                TopicLag::new(layout.topic, partitions, read_at)
            })
            .collect())
    }

    fn name(&self) -> &str {
        "kafka"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherits_connection_and_security_settings_only() {
        let mut producer = ClientConfig::new();
        producer
            .set("bootstrap.servers", "b1:9092,b2:9092")
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanisms", "PLAIN")
            .set("sasl.username", "alice")
            .set("sasl.password", "hunter2")
            .set("ssl.ca.location", "/etc/ca.pem")
            .set("client.id", "orders-api")
            .set("linger.ms", "20")
            .set("acks", "all")
            .set("enable.idempotence", "true");
        // Not built: this rdkafka build has no OpenSSL, so librdkafka would refuse `ssl.*`.
        let builder = KafkaLagCollector::builder(&producer);
        let config = &builder.config;
        assert_eq!(config.get("bootstrap.servers"), Some("b1:9092,b2:9092"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.mechanisms"), Some("PLAIN"));
        assert_eq!(config.get("sasl.username"), Some("alice"));
        assert_eq!(config.get("sasl.password"), Some("hunter2"));
        assert_eq!(config.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(config.get("client.id"), Some("orders-api-lag-reader"));
        assert_eq!(config.get("reconnect.backoff.max.ms"), Some("1000"));
        for producer_only in ["linger.ms", "acks", "enable.idempotence"] {
            assert_eq!(config.get(producer_only), None, "{producer_only}");
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let mut producer = ClientConfig::new();
        producer
            .set("bootstrap.servers", "b1:9092")
            .set("sasl.username", "alice")
            .set("sasl.password", "hunter2");
        let collector = KafkaLagCollector::builder(&producer).build().unwrap();
        let debug = format!("{collector:?}");
        assert!(debug.contains("alice"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let builder = format!("{:?}", KafkaLagCollector::builder(&producer));
        assert!(!builder.contains("hunter2"), "{builder}");
    }

    #[test]
    fn reader_settings_can_be_overridden() {
        let mut producer = ClientConfig::new();
        producer.set("bootstrap.servers", "b1:9092");
        let collector = KafkaLagCollector::builder(&producer)
            .set("reconnect.backoff.max.ms", "250")
            .build()
            .unwrap();
        assert_eq!(
            collector.inner.config.get("reconnect.backoff.max.ms"),
            Some("250")
        );
    }

    #[test]
    fn missing_bootstrap_servers_is_a_config_error() {
        let err = KafkaLagCollector::builder(&ClientConfig::new())
            .build()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid `bootstrap.servers` = <unset>"),
            "{err}"
        );
    }

    #[test]
    fn malformed_setting_is_rejected_at_build() {
        let mut producer = ClientConfig::new();
        producer.set("bootstrap.servers", "b1:9092");
        let err = KafkaLagCollector::builder(&producer)
            .set("reconnect.backoff.max.ms", "soon")
            .build()
            .unwrap_err();
        assert!(matches!(err, MonitorError::Kafka { .. }), "{err}");
    }

    #[test]
    fn request_timeout_is_bounded() {
        let mut producer = ClientConfig::new();
        producer.set("bootstrap.servers", "b1:9092");
        let err = KafkaLagCollector::builder(&producer)
            .request_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("lag_request_timeout"), "{err}");
    }

    #[test]
    fn retriable_codes() {
        assert!(is_retriable(RDKafkaErrorCode::NotCoordinator));
        assert!(is_retriable(RDKafkaErrorCode::NotLeaderForPartition));
        assert!(!is_retriable(RDKafkaErrorCode::UnknownTopicOrPartition));
        assert!(!ReadError::OutOfBudget.is_retriable());
    }
}
