//! [`KafkaLagCollector`]: consumer-group lag read straight from Kafka.

mod collect;
mod reader;
mod stats;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ksp_core::CollectError;
use ksp_core::secret::redact;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use tracing::debug;

use self::reader::{Reader, ReaderHandle};
use self::stats::ReaderContext;
pub use self::stats::RequestCounts;
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

/// How the watched group's consumers read: whether they wait for transactions to end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IsolationLevel {
    /// `read_uncommitted` (the Java client's default): every message up to the high watermark
    /// is readable.
    #[default]
    ReadUncommitted,
    /// `read_committed` (librdkafka's default, and every exactly-once pipeline): consumers
    /// cannot read past the last stable offset while a transaction is open. The collector then
    /// also reads the last stable offset, and a partition whose consumer waits at an LSO that
    /// has not moved for a while counts as unhealthy.
    ReadCommitted,
}

/// Reads consumer-group lag from Kafka.
///
/// Per refresh, for one group and its topics:
///
/// 1. **Metadata**: partition count and leaders are re-read every time, so added partitions
///    show up and a partition whose leader is not among the live brokers (or has none) is
///    reported with `leader_available: false` and is never routed to. Up to four watched
///    topics, one request per topic, in parallel; more, one request for the whole cluster.
///    Either way a topic-level error (say `TOPIC_AUTHORIZATION_FAILED`) fails that topic
///    only.
/// 2. **Committed offsets**, one `OffsetFetch` to the group coordinator for every partition of
///    every topic, through a consumer that carries the group id but never subscribes (it never
///    joins the group, so it cannot trigger a rebalance, and it never commits).
/// 3. **High watermarks**, one `ListOffsets` per leader broker for all of its partitions, the
///    brokers in parallel. A loop over `fetch_watermarks` would cost two requests per
///    partition. Grouping by leader also confines a slow or failing broker to its own
///    partitions. The reader uses `isolation.level=read_uncommitted`, so this is the high
///    watermark itself, not the last stable offset: an open transaction's messages count as
///    waiting.
/// 4. **Low watermarks**, only for partitions without a committed offset (the monitor's
///    [`UncommittedPolicy`](ksp_core::UncommittedPolicy) may need them), again one
///    `ListOffsets` per leader.
/// 5. With [`IsolationLevel::ReadCommitted`], **last stable offsets**, one more `ListOffsets`
///    per leader through a second, `read_committed` reader.
///
/// Steps 2 and 3 run concurrently. All client calls block, so they run on Tokio's blocking
/// pool, never on a worker thread. Retriable errors (`NOT_LEADER_OR_FOLLOWER`,
/// `NOT_COORDINATOR`, …) are retried with exponential backoff while the refresh budget lasts.
///
/// The lag reader inherits the connection and security settings of the configuration it is
/// built from (bootstrap servers, `security.protocol`, `sasl.*`, `ssl.*`, `socket.*`, …), so
/// it reaches a secured cluster as the producer does. Its socket timeout (unless inherited)
/// and reconnect backoff follow its request timeout (see
/// [`KafkaLagCollectorBuilder::request_timeout`]).
#[derive(Clone)]
pub struct KafkaLagCollector {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// One reader per (group, isolation level), created on first use, closed when idle.
    readers: Mutex<HashMap<(String, &'static str), Arc<ReaderHandle>>>,
    /// Per group, the requests its closed readers had counted.
    retired: Mutex<HashMap<String, RequestCounts>>,
    request_timeout: Duration,
    isolation: IsolationLevel,
}

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
        KafkaLagCollectorBuilder {
            config,
            request_timeout: KafkaLagCollectorBuilder::DEFAULT_REQUEST_TIMEOUT,
            isolation: IsolationLevel::default(),
        }
    }

    /// Requests the lag readers of `group` have sent, by API, as librdkafka counts them,
    /// readers closed while idle included (up to their last statistics: what a reader sent in
    /// its last `statistics.interval.ms` before closing may be missing).
    ///
    /// Available once librdkafka has emitted statistics, which it does only when the reader is
    /// built with `statistics.interval.ms` set (see [`KafkaLagCollectorBuilder::set`]).
    /// Independent evidence of how many requests a refresh costs.
    pub fn request_counts(&self, group: &str) -> Option<RequestCounts> {
        let retired = self
            .inner
            .retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(group)
            .copied();
        let readers: Vec<Arc<ReaderHandle>> = self
            .inner
            .lock_readers()
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|(_, r)| r.clone())
            .collect();
        readers
            .iter()
            .map(|reader| {
                // Statistics are delivered as events that polling serves.
                let _ = reader.poll(Duration::ZERO);
                reader.context().counts()
            })
            .chain([retired])
            .reduce(|a, b| match (a, b) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            })
            .flatten()
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
            .field("isolation", &self.inner.isolation)
            .finish_non_exhaustive()
    }
}

/// The lag reader's own librdkafka settings, applied to those `config` leaves unset (only
/// `socket.timeout.ms` can come from the producer, through the inherited `socket.*`; any of
/// them from [`KafkaLagCollectorBuilder::set`]). They follow the
/// request timeout: the reader has no use for a connection that cannot answer within a
/// collection, and should try a broker that came back at least once per collection.
fn reader_defaults(config: &ClientConfig, request_timeout: Duration) -> Vec<(&'static str, u128)> {
    let timeout = request_timeout.as_millis();
    // librdkafka refuses a maximum backoff below the initial one (100 ms by default).
    let initial = config
        .get("reconnect.backoff.ms")
        .and_then(|v| v.trim().parse::<u128>().ok())
        .unwrap_or(100);
    let defaults = [
        // librdkafka's default is 60 s: a connection that stopped answering could keep
        // failing the reader's metadata and OffsetFetch requests (which wait that long) for
        // a minute. Not below 1 s: librdkafka looks for timed-out requests once a second
        // anyway, and warns about a consumer's `socket.timeout.ms` under `fetch.wait.max.ms`
        // + 1 s. At most 300 s, as `request_timeout` is.
        ("socket.timeout.ms", timeout.max(1000)),
        // The reader never fetches; 0 keeps librdkafka's warning above quiet.
        ("fetch.wait.max.ms", 0),
        // librdkafka's default is 10 s between attempts to reach a broker that is down:
        // health would stay stale that long after it came back.
        (
            "reconnect.backoff.max.ms",
            timeout.clamp(100, 1000).max(initial),
        ),
    ];
    defaults
        .into_iter()
        .filter(|(key, _)| config.get(key).is_none())
        .collect()
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
    isolation: IsolationLevel,
}

impl KafkaLagCollectorBuilder {
    /// Default [`request_timeout`](Self::request_timeout).
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

    /// Sets a librdkafka setting of the lag reader (overriding an inherited one), for example
    /// `statistics.interval.ms` or a dedicated `sasl.username`. `isolation.level` is the
    /// reader's own business: see [`isolation_level`](Self::isolation_level).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.set(key, value);
        self
    }

    /// Longest a single request may take; a refresh's budget caps it further. Default 5 s.
    ///
    /// It also sets the reader's own (unless [`set`](Self::set) gives them; of these only
    /// `socket.timeout.ms` is inherited from the producer's configuration, with the other
    /// `socket.*` settings, and then kept)
    /// * `socket.timeout.ms` (at least 1 s): librdkafka drops a connection on which a request
    ///   has waited that long (it looks once a second, and only with `socket.max.fails` above
    ///   0, its default) and connects again. With its default (60 s), a connection that
    ///   stopped answering (a broker that hangs, a half-open TCP connection) could fail the
    ///   reader's metadata and OffsetFetch requests for a minute. Connecting (the ApiVersion
    ///   exchange, SASL) must also finish within it;
    /// * `reconnect.backoff.max.ms` (between 100 ms and 1 s, and not below
    ///   `reconnect.backoff.ms`): a broker that was down is tried again at least that often,
    ///   so health comes back about a collection after the broker does;
    /// * `fetch.wait.max.ms` 0 (the reader never fetches; librdkafka warns when it is not
    ///   1 s below `socket.timeout.ms`).
    ///
    /// A producer built with the default collector sets it to its collection budget
    /// ([`MonitorConfig::effective_collect_timeout`](crate::MonitorConfig::effective_collect_timeout)),
    /// at most 5 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How the watched group's consumers read. Default [`IsolationLevel::ReadUncommitted`].
    pub fn isolation_level(mut self, isolation: IsolationLevel) -> Self {
        self.isolation = isolation;
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
        let mut config = self.config;
        for (key, value) in reader_defaults(&config, self.request_timeout) {
            config.set(key, value.to_string());
        }
        // Let librdkafka reject unknown or malformed settings now rather than on first use.
        let mut probe = config.clone();
        probe.set("group.id", "ksp-config-check");
        probe
            .create_native_config()
            .map_err(|source| MonitorError::Kafka {
                context: "invalid lag reader configuration".into(),
                source,
            })?;
        Ok(KafkaLagCollector {
            inner: Arc::new(Inner {
                config,
                readers: Mutex::default(),
                retired: Mutex::default(),
                request_timeout: self.request_timeout,
                isolation: self.isolation,
            }),
        })
    }
}

impl fmt::Debug for KafkaLagCollectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaLagCollectorBuilder")
            .field("config", &redact(self.config.config_map()))
            .field("request_timeout", &self.request_timeout)
            .field("isolation", &self.isolation)
            .finish()
    }
}

impl Inner {
    fn lock_readers(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, &'static str), Arc<ReaderHandle>>> {
        self.readers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The configuration of the lag reader of `group` reading at `isolation`.
    fn reader_config(&self, group: &str, isolation: &'static str) -> ClientConfig {
        let mut config = self.config.clone();
        config
            .set("group.id", group)
            // Never commits: it only reads the group's offsets.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("allow.auto.create.topics", "false")
            // librdkafka's default is read_committed, which makes ListOffsets answer with the
            // last stable offset (a hung transaction would look caught up) and OffsetFetch ask
            // for stable offsets (UNSTABLE_OFFSET_COMMIT while a transaction commits offsets).
            .set("isolation.level", isolation);
        config
    }

    /// Closes the lag readers of `group`; the next use opens them again. What they counted
    /// is kept for [`KafkaLagCollector::request_counts`]. A refresh in flight keeps the reader
    /// it holds until it ends (the last holder destroys it, on a blocking thread).
    fn close_readers(&self, group: &str) {
        let closed: Vec<Arc<ReaderHandle>> = {
            let mut readers = self.lock_readers();
            let keys: Vec<_> = readers
                .keys()
                .filter(|(g, _)| g == group)
                .cloned()
                .collect();
            keys.iter().filter_map(|key| readers.remove(key)).collect()
        };
        if closed.is_empty() {
            return;
        }
        debug!(
            group,
            readers = closed.len(),
            "closing the lag readers while idle"
        );
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        for reader in closed {
            // Statistics are delivered as events that polling serves.
            let _ = reader.poll(Duration::ZERO);
            if let Some(counts) = reader.context().counts() {
                let sum = retired.entry(group.to_owned()).or_default();
                *sum = *sum + counts;
            }
        }
    }

    /// The lag reader of `group` reading at `isolation` (`read_uncommitted` for committed
    /// offsets and watermarks, `read_committed` for last stable offsets), created on first use
    /// and kept until the collector is told it is idle: the Python library builds a new client
    /// every refresh, paying connection setup each time.
    fn reader(
        &self,
        group: &str,
        isolation: &'static str,
    ) -> Result<Arc<ReaderHandle>, CollectError> {
        let mut readers = self.lock_readers();
        if let Some(reader) = readers.get(&(group.to_owned(), isolation)) {
            return Ok(reader.clone());
        }
        let reader: Reader = self
            .reader_config(group, isolation)
            .create_with_context(ReaderContext::default())
            .map_err(|e| {
                CollectError::source(format!("creating the lag reader for group `{group}`"), e)
            })?;
        let reader = Arc::new(ReaderHandle::new(reader));
        readers.insert((group.to_owned(), isolation), reader.clone());
        Ok(reader)
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

    /// Regression: the reader inherited librdkafka's consumer default
    /// `isolation.level=read_committed`, so ListOffsets returned the last stable offset: with a
    /// hung transaction the partition looked caught up while read_committed consumers were
    /// blocked, and kept receiving messages nobody could read.
    #[test]
    fn lag_reader_reads_the_high_watermark_not_the_last_stable_offset() {
        let mut producer = ClientConfig::new();
        producer
            .set("bootstrap.servers", "b1:9092")
            .set("isolation.level", "read_committed");
        let collector = KafkaLagCollector::builder(&producer)
            .isolation_level(IsolationLevel::ReadCommitted)
            .build()
            .unwrap();
        let reader = collector
            .inner
            .reader_config("g", collect::HIGH_WATERMARK_READER);
        assert_eq!(reader.get("isolation.level"), Some("read_uncommitted"));
        assert_eq!(reader.get("enable.auto.commit"), Some("false"));
        let lso = collector.inner.reader_config("g", collect::LSO_READER);
        assert_eq!(lso.get("isolation.level"), Some("read_committed"));
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

    /// Regression (chaos soak): the reader kept librdkafka's 60 s `socket.timeout.ms`, so a
    /// connection that stopped answering could fail its metadata requests (each waiting for an
    /// answer that never came) until librdkafka gave the connection up a minute later, and it
    /// waited up to 1 s between attempts to reach a broker that was down against a 200 ms
    /// refresh. Both now follow the request timeout.
    #[test]
    fn a_silent_connection_is_given_up_within_a_collection_not_a_minute() {
        let mut producer = ClientConfig::new();
        producer
            .set("bootstrap.servers", "b1:9092")
            .set("socket.keepalive.enable", "true");
        let reader = |builder: KafkaLagCollectorBuilder| {
            let collector = builder.build().unwrap();
            let config = collector
                .inner
                .reader_config("g", collect::HIGH_WATERMARK_READER);
            [
                "socket.timeout.ms",
                "reconnect.backoff.max.ms",
                "fetch.wait.max.ms",
            ]
            .map(|key| config.get(key).unwrap_or("-").to_owned())
        };
        // The default request timeout (5 s).
        assert_eq!(
            reader(KafkaLagCollector::builder(&producer)),
            ["5000", "1000", "0"]
        );
        let short =
            || KafkaLagCollector::builder(&producer).request_timeout(Duration::from_millis(200));
        assert_eq!(reader(short()), ["1000", "200", "0"]);
        // Set on the reader itself: kept; the maximum backoff never below the initial one
        // (librdkafka would refuse the client at the first collection).
        assert_eq!(
            reader(
                short()
                    .set("socket.timeout.ms", "7000")
                    .set("reconnect.backoff.ms", "500")
            ),
            ["7000", "500", "0"]
        );
        // Set on the producer: inherited, like every other socket setting.
        producer.set("socket.timeout.ms", "30000");
        assert_eq!(
            reader(
                KafkaLagCollector::builder(&producer).request_timeout(Duration::from_millis(200))
            ),
            ["30000", "200", "0"]
        );
        let collector = KafkaLagCollector::builder(&producer).build().unwrap();
        assert_eq!(
            collector.reader_config().get("socket.keepalive.enable"),
            Some(&"true")
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
}
