//! Settings of the router and its key cache.

use std::time::Duration;

use ksp_core::ConfigError;

use crate::partitioner::Partitioner;

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

/// Settings of the [`Router`](crate::Router).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterConfig {
    /// librdkafka's partitioner, to know each key's home. Normally read from the producer's
    /// `partitioner` setting.
    pub partitioner: Partitioner,
    /// Bytes of keyless messages sent to one partition before switching to the next (Kafka's
    /// KIP-794 uses the batch size). Default 16 KiB, Kafka's default `batch.size`.
    pub sticky_batch_bytes: u32,
    /// The cache of moved keys.
    pub key_cache: KeyCacheConfig,
}

impl RouterConfig {
    /// Default `sticky_batch_bytes`.
    pub const DEFAULT_STICKY_BATCH_BYTES: u32 = 16 * 1024;

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=(1 << 30)).contains(&self.sticky_batch_bytes) {
            return Err(ConfigError::new(
                "sticky_batch_bytes",
                self.sticky_batch_bytes,
                "between 1 and 1073741824 bytes",
            ));
        }
        self.key_cache.validate()
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            partitioner: Partitioner::default(),
            sticky_batch_bytes: Self::DEFAULT_STICKY_BATCH_BYTES,
            key_cache: KeyCacheConfig::default(),
        }
    }
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
        let c = RouterConfig {
            sticky_batch_bytes: 0,
            ..RouterConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().setting, "sticky_batch_bytes");
    }
}
