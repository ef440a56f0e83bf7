//! Settings of the router and its key cache.

use std::time::Duration;

use ksp_core::ConfigError;
use rdkafka::ClientConfig;

use super::order::KeyOrderConfig;
use super::partitioner::Partitioner;

/// The cache of moved keys: for each key whose home partition was unhealthy, the detour it
/// took, so that the key keeps to one detour instead of bouncing between partitions.
///
/// The detour itself is a deterministic function of the key and the set of healthy
/// partitions, so an evicted entry is usually recomputed to the same partition; the cache is
/// what keeps a key where it is when the set of healthy partitions changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyCacheConfig {
    /// Most moved keys remembered. Default 100 000.
    pub capacity: u64,
    /// How long a detour is remembered after it was chosen. Default 10 minutes.
    pub ttl: Duration,
}

impl KeyCacheConfig {
    /// Default `capacity`.
    pub const DEFAULT_CAPACITY: u64 = 100_000;
    /// Default `ttl`.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

    /// Sets `capacity`.
    #[must_use]
    pub fn with_capacity(mut self, capacity: u64) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets `ttl`.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=100_000_000).contains(&self.capacity) {
            return Err(ConfigError::new(
                "key_cache.capacity",
                self.capacity,
                "between 1 and 100000000 keys",
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600)).contains(&self.ttl) {
            return Err(ConfigError::duration(
                "key_cache.ttl",
                self.ttl,
                "between 1s and 7 days",
            ));
        }
        Ok(())
    }
}

impl Default for KeyCacheConfig {
    fn default() -> Self {
        Self {
            capacity: Self::DEFAULT_CAPACITY,
            ttl: Self::DEFAULT_TTL,
        }
    }
}

/// Settings of the [`Router`](super::Router). Every setting has a default; the producer takes
/// the ones left unset from its own rdkafka configuration, so that routing batches and hashes
/// keys exactly as librdkafka would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterConfig {
    /// librdkafka's partitioner, to know each key's home. `None`: the producer's `partitioner`
    /// setting (librdkafka's default, `consistent_random`, for a router on its own). A
    /// producer refuses a value that differs from its `partitioner` setting.
    pub partitioner: Option<Partitioner>,
    /// Keyless messages stick to one partition while they fit in one batch of this many bytes
    /// (Kafka's KIP-794 switches after a batch), counted as librdkafka fills a batch up to
    /// `batch.size`: each message's key and payload plus 36 bytes of record framing, against
    /// this less 61 bytes of batch header … `None`: the producer's `batch.size` (librdkafka's
    /// default is 1 000 000).
    pub sticky_batch_bytes: Option<u32>,
    /// … or until this long has passed, whichever comes first (librdkafka's own sticky
    /// partitioner switches after `sticky.partitioning.linger.ms`). `None`: the producer's
    /// `sticky.partitioning.linger.ms` if set, otherwise its `linger.ms` (librdkafka's default
    /// is 5 ms; under 0.5 ms, 0: a new partition for every message, as librdkafka's
    /// partitioner does then).
    /// librdkafka's own default is twice `linger.ms`, but it sends a partition's batch once the
    /// batch is `linger.ms` old, so the second half of such a run makes a second batch; a run
    /// of `linger.ms` fills one. A router built on its own, without a producer, uses
    /// [`DEFAULT_STICKY_LINGER`](Self::DEFAULT_STICKY_LINGER). Without a time bound, a
    /// low-rate producer would send hundreds of messages in a row to one partition, and its
    /// consumer would see them as a burst.
    pub sticky_linger: Option<Duration>,
    /// The cache of moved keys.
    pub key_cache: KeyCacheConfig,
    /// Whether a key's messages may be reordered when it moves, and the bounds of the waits
    /// that keep them in order.
    pub key_order: KeyOrderConfig,
}

impl RouterConfig {
    /// Default `sticky_batch_bytes`: librdkafka's default `batch.size`.
    pub const DEFAULT_STICKY_BATCH_BYTES: u32 = 1_000_000;
    /// Default `sticky_linger` of a router built on its own: librdkafka's run length with its
    /// default `linger.ms` (twice 5 ms). A producer's router takes it from the producer's
    /// configuration instead (see [`sticky_linger`](Self::sticky_linger)).
    pub const DEFAULT_STICKY_LINGER: Duration = Duration::from_millis(10);

    /// Sets `sticky_batch_bytes`.
    #[must_use]
    pub fn with_sticky_batch_bytes(mut self, bytes: u32) -> Self {
        self.sticky_batch_bytes = Some(bytes);
        self
    }

    /// Sets `sticky_linger`.
    #[must_use]
    pub fn with_sticky_linger(mut self, linger: Duration) -> Self {
        self.sticky_linger = Some(linger);
        self
    }

    /// Sets `key_cache`.
    #[must_use]
    pub fn with_key_cache(mut self, key_cache: KeyCacheConfig) -> Self {
        self.key_cache = key_cache;
        self
    }

    /// Sets `key_order`.
    #[must_use]
    pub fn with_key_order(mut self, key_order: KeyOrderConfig) -> Self {
        self.key_order = key_order;
        self
    }

    /// Sets `partitioner`.
    #[must_use]
    pub fn with_partitioner(mut self, partitioner: Partitioner) -> Self {
        self.partitioner = Some(partitioner);
        self
    }

    /// `sticky_batch_bytes`, or its default.
    pub fn effective_sticky_batch_bytes(&self) -> u32 {
        self.sticky_batch_bytes
            .unwrap_or(Self::DEFAULT_STICKY_BATCH_BYTES)
    }

    /// `sticky_linger`, or its default.
    pub fn effective_sticky_linger(&self) -> Duration {
        self.sticky_linger.unwrap_or(Self::DEFAULT_STICKY_LINGER)
    }

    /// These settings with the ones left unset taken from a producer's configuration: its
    /// `partitioner`, `batch.size`, `sticky.partitioning.linger.ms` and `linger.ms`.
    pub fn for_producer(&self, kafka: &ClientConfig) -> Result<Self, ConfigError> {
        let partitioner = Partitioner::from_config(kafka)?;
        if let Some(mine) = self.partitioner
            && mine != partitioner
        {
            return Err(ConfigError::new(
                "router.partitioner",
                format_args!("{mine:?}"),
                format!(
                    "the producer's own `partitioner` ({partitioner:?}): keys' homes must be \
                     where librdkafka sends them"
                ),
            ));
        }
        let mut config = self.clone();
        config.partitioner = Some(partitioner);
        if config.sticky_batch_bytes.is_none()
            && let Some(value) = kafka.get("batch.size")
        {
            config.sticky_batch_bytes = Some(value.trim().parse().map_err(|_| {
                ConfigError::new("batch.size", format_args!("{value:?}"), "a number of bytes")
            })?);
        }
        check_linger_alias(kafka)?;
        if config.sticky_linger.is_none() {
            config.sticky_linger = Some(match kafka.get("sticky.partitioning.linger.ms") {
                Some(value) => Duration::from_millis(value.trim().parse().map_err(|_| {
                    ConfigError::new(
                        "sticky.partitioning.linger.ms",
                        format_args!("{value:?}"),
                        "a number of milliseconds",
                    )
                })?),
                // librdkafka's own runs then last twice `linger.ms`, and a partition's batch
                // is sent once its first message is `linger.ms` old: what the second half of
                // such a run sends makes a second batch. A run of `linger.ms` fills one. (No
                // linger: both switch partition on every message.)
                None => producer_linger(kafka),
            });
        }
        Ok(config)
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bytes = self.effective_sticky_batch_bytes();
        if !(1..=(1 << 30)).contains(&bytes) {
            return Err(ConfigError::new(
                "sticky_batch_bytes",
                bytes,
                "between 1 and 1073741824 bytes",
            ));
        }
        let linger = self.effective_sticky_linger();
        if linger > Duration::from_secs(900) {
            return Err(ConfigError::duration(
                "sticky_linger",
                linger,
                "at most 900s (0 switches partition on every message)",
            ));
        }
        self.key_cache.validate()?;
        self.key_order.validate()
    }
}

/// librdkafka's default `linger.ms`.
const DEFAULT_LINGER: Duration = Duration::from_millis(5);

/// Refuses `linger.ms` and its alias `queue.buffering.max.ms` set to different values: they are
/// one librdkafka setting, and which value it keeps depends on the order rdkafka hands them over
/// (a `HashMap`'s).
fn check_linger_alias(kafka: &ClientConfig) -> Result<(), ConfigError> {
    let number = |name| kafka.get(name).map(|v| (v, v.trim().parse::<f64>()));
    // What librdkafka cannot read, it refuses, naming it, when the producer is created.
    if let (Some((linger, Ok(a))), Some((alias, Ok(b)))) =
        (number("linger.ms"), number("queue.buffering.max.ms"))
        && a != b
    {
        return Err(ConfigError::new(
            "queue.buffering.max.ms",
            format_args!("{alias:?}"),
            format!(
                "not set, or the same as `linger.ms` ({linger:?}): they are one librdkafka \
                 setting, and which value it keeps depends on the order rdkafka hands them over"
            ),
        ));
    }
    Ok(())
}

/// The producer's `linger.ms` as librdkafka reads it (milliseconds, fractions allowed; its alias
/// `queue.buffering.max.ms` is the same setting), as a run length: under half a millisecond it
/// is 0, a new partition for every message, as librdkafka's own sticky time (twice `linger.ms`,
/// in whole milliseconds) is then. A configuration librdkafka refuses gives the default here:
/// librdkafka says what is wrong with it when the producer is created.
fn producer_linger(kafka: &ClientConfig) -> Duration {
    let native = kafka
        .create_native_config()
        .ok()
        .and_then(|native| native.get("linger.ms").ok());
    native
        .and_then(|ms| ms.parse::<f64>().ok())
        .filter(|ms| (0.0..=900_000.0).contains(ms))
        .map_or(DEFAULT_LINGER, |ms| {
            if ms < 0.5 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(ms / 1000.0)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        RouterConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_settings_are_named() {
        let mut c = RouterConfig::default();
        c.key_cache.capacity = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid `key_cache.capacity` = 0: expected between 1 and 100000000 keys"
        );
        let mut c = RouterConfig::default();
        c.key_cache.ttl = Duration::from_millis(10);
        assert_eq!(c.validate().unwrap_err().setting, "key_cache.ttl");
        let c = RouterConfig::default().with_sticky_batch_bytes(0);
        assert_eq!(c.validate().unwrap_err().setting, "sticky_batch_bytes");
    }

    #[test]
    fn defaults_follow_the_producer_configuration() {
        let c = RouterConfig::default()
            .for_producer(&ClientConfig::new())
            .unwrap();
        assert_eq!(c.partitioner, Some(Partitioner::ConsistentRandom));
        assert_eq!(c.effective_sticky_batch_bytes(), 1_000_000);
        let mut kafka = ClientConfig::new();
        kafka
            .set("partitioner", "murmur2_random")
            .set("batch.size", "65536")
            .set("sticky.partitioning.linger.ms", "25");
        let c = RouterConfig::default().for_producer(&kafka).unwrap();
        assert_eq!(c.partitioner, Some(Partitioner::Murmur2Random));
        assert_eq!(c.sticky_batch_bytes, Some(65536));
        assert_eq!(c.sticky_linger, Some(Duration::from_millis(25)));
        // What is set explicitly wins.
        let c = RouterConfig::default()
            .with_sticky_batch_bytes(100)
            .for_producer(&kafka)
            .unwrap();
        assert_eq!(c.sticky_batch_bytes, Some(100));
        let err = RouterConfig::default()
            .with_partitioner(Partitioner::Fnv1a)
            .for_producer(&kafka)
            .unwrap_err();
        assert_eq!(err.setting, "router.partitioner");
        kafka.set("batch.size", "big");
        let err = RouterConfig::default().for_producer(&kafka).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid `batch.size` = \"big\": expected a number of bytes"
        );
    }

    /// A keyless run outlasting `linger.ms` was split in two batches: librdkafka sent what the
    /// run had routed when the batch's linger ran out, and the rest of the run, still sent to
    /// that partition, made a second, small batch (1 KiB messages at ~180 000 msg/s filled
    /// 0.956 of plain's messages per batch with 10 ms runs). Unless set, a run now lasts
    /// `linger.ms`, as long as librdkafka's batch waits.
    #[test]
    fn sticky_runs_end_no_later_than_librdkafkas_linger() {
        let linger = |kafka: &ClientConfig| {
            RouterConfig::default()
                .for_producer(kafka)
                .unwrap()
                .effective_sticky_linger()
        };
        let mut kafka = ClientConfig::new();
        // librdkafka's default `linger.ms`, 5.
        assert_eq!(linger(&kafka), Duration::from_millis(5));
        kafka.set("linger.ms", "2.5");
        assert_eq!(linger(&kafka), Duration::from_micros(2500));
        kafka.set("linger.ms", "50");
        assert_eq!(linger(&kafka), Duration::from_millis(50));
        // As librdkafka reads it.
        kafka.set("linger.ms", " 20ms");
        assert_eq!(linger(&kafka), Duration::from_millis(20));
        // No linger: a new partition for every message, as librdkafka's own partitioner. Its
        // sticky time is twice `linger.ms` in whole milliseconds: 0 under half a millisecond.
        kafka.set("linger.ms", "0");
        assert_eq!(linger(&kafka), Duration::ZERO);
        kafka.set("linger.ms", "0.4");
        assert_eq!(linger(&kafka), Duration::ZERO);
        kafka.set("linger.ms", "0.5");
        assert_eq!(linger(&kafka), Duration::from_micros(500));
        // What is set explicitly wins, in the producer's configuration or the router's.
        kafka.set("sticky.partitioning.linger.ms", "100");
        assert_eq!(linger(&kafka), Duration::from_millis(100));
        let mut kafka = ClientConfig::new();
        kafka.set("queue.buffering.max.ms", "1");
        assert_eq!(linger(&kafka), Duration::from_millis(1));
        let c = RouterConfig::default()
            .with_sticky_linger(Duration::from_millis(20))
            .for_producer(&kafka)
            .unwrap();
        assert_eq!(c.effective_sticky_linger(), Duration::from_millis(20));
        // Both names of the one setting, with different values: which one librdkafka keeps
        // depends on the order rdkafka hands them over. Refused whatever else is set.
        kafka.set("linger.ms", "1.0");
        assert_eq!(linger(&kafka), Duration::from_millis(1));
        kafka.set("linger.ms", "7");
        let err = RouterConfig::default().for_producer(&kafka).unwrap_err();
        assert_eq!(err.setting, "queue.buffering.max.ms");
        let err = RouterConfig::default()
            .with_sticky_linger(Duration::from_millis(20))
            .for_producer(&kafka)
            .unwrap_err();
        assert_eq!(err.setting, "queue.buffering.max.ms");
        // librdkafka refuses it when the producer is created (`tests/config_errors.rs`).
        let mut kafka = ClientConfig::new();
        kafka.set("linger.ms", "soon");
        assert_eq!(linger(&kafka), Duration::from_millis(5));
    }
}
