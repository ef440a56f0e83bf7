//! Settings of the Redis L2.

use std::fmt;
use std::time::Duration;

use ksp_core::ConfigError;
use serde::{Deserialize, Serialize};

use crate::breaker::BreakerConfig;

/// How the producer uses Redis.
///
/// Every duration has a bound: fred's own defaults (no command timeout, no reconnect) would
/// let a dead server hang commands forever, so this crate never uses them.
///
/// `Debug` never shows the password of the URL.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Where Redis is, as fred reads it: `redis://[user:password@]host:port[/db]`, `rediss://`
    /// for TLS (cargo feature `redis-tls`), `redis-cluster://host:port?node=host:port`,
    /// `redis-sentinel://host:port/db?sentinelServiceName=name&node=host:port`.
    #[serde(deserialize_with = "ksp_core::serde_text::deserialize")]
    pub url: String,
    /// Prefix of every key and channel this library writes.
    #[serde(deserialize_with = "ksp_core::serde_text::deserialize")]
    pub key_prefix: String,
    /// How long one Redis command may take before it counts as failed. A send that looks up a
    /// shared key move waits at most this long.
    #[serde(with = "ksp_core::serde_duration")]
    pub command_timeout: Duration,
    /// How long connecting may take.
    #[serde(with = "ksp_core::serde_duration")]
    pub connect_timeout: Duration,
    /// Longest wait between two reconnection attempts (they back off exponentially up to it,
    /// forever).
    #[serde(with = "ksp_core::serde_duration")]
    pub reconnect_max_delay: Duration,
    /// Lease of the fleet's collector: the leader renews it every third of this; when the
    /// leader dies another instance takes over within about this long.
    #[serde(with = "ksp_core::serde_duration")]
    pub lease_ttl: Duration,
    /// How long Redis keeps a published snapshot. Readers also ignore snapshots older than
    /// the monitor's `max_staleness`, whatever this says.
    #[serde(with = "ksp_core::serde_duration")]
    pub snapshot_ttl: Duration,
    /// How long a shared key move lives in Redis after it was written.
    #[serde(with = "ksp_core::serde_duration")]
    pub key_move_ttl: Duration,
    /// Whether the fleet shares one lag collector (health). Off: every instance collects.
    pub share_health: bool,
    /// Whether moved keys are shared.
    pub share_key_moves: bool,
    /// Names the Kafka cluster in the fleet's keys. Empty: derived from `bootstrap.servers`.
    #[serde(deserialize_with = "ksp_core::serde_text::deserialize")]
    pub cluster: String,
    /// The circuit breaker in front of every Redis call.
    pub breaker: BreakerConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "ksp".into(),
            command_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(2),
            reconnect_max_delay: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(10),
            snapshot_ttl: Duration::from_secs(60),
            key_move_ttl: Duration::from_secs(600),
            share_health: true,
            share_key_moves: true,
            cluster: String::new(),
            breaker: BreakerConfig::default(),
        }
    }
}

impl RedisConfig {
    /// The defaults with `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Checks every setting, naming the first one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_url(&self.url)?;
        if self.key_prefix.is_empty() || self.key_prefix.chars().any(char::is_whitespace) {
            return Err(ConfigError::new(
                "redis.key_prefix",
                format_args!("{:?}", self.key_prefix),
                "a non-empty prefix without whitespace",
            ));
        }
        let bounded = |setting, value: Duration, min: Duration, max: Duration| {
            if value < min || value > max {
                Err(ConfigError::duration(
                    setting,
                    value,
                    format!("a duration in [{min:?}, {max:?}]"),
                ))
            } else {
                Ok(())
            }
        };
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        bounded("redis.command_timeout", self.command_timeout, ms(1), s(60))?;
        bounded("redis.connect_timeout", self.connect_timeout, ms(1), s(300))?;
        bounded(
            "redis.reconnect_max_delay",
            self.reconnect_max_delay,
            ms(1),
            s(300),
        )?;
        bounded("redis.lease_ttl", self.lease_ttl, ms(100), s(3600))?;
        bounded("redis.snapshot_ttl", self.snapshot_ttl, ms(100), s(86_400))?;
        bounded(
            "redis.key_move_ttl",
            self.key_move_ttl,
            ms(100),
            s(86_400 * 7),
        )?;
        if self.lease_ttl <= self.command_timeout * 3 {
            return Err(ConfigError::duration(
                "redis.lease_ttl",
                self.lease_ttl,
                format!(
                    "more than 3 × redis.command_timeout ({:?}), so a renewal can time out and \
                     be retried before the lease expires",
                    self.command_timeout
                ),
            ));
        }
        self.breaker.validate()
    }

    /// The URL with its password replaced, for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// fred's configuration for this URL.
    pub(crate) fn fred_config(&self) -> Result<fred::types::config::Config, ConfigError> {
        parse_url(&self.url)
    }
}

const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "redis+unix",
    "valkey",
    "valkeys",
    "valkey-cluster",
    "valkeys-cluster",
    "valkey-sentinel",
    "valkeys-sentinel",
    "valkey+unix",
];

fn parse_url(url: &str) -> Result<fred::types::config::Config, ConfigError> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    if !SCHEMES.contains(&scheme) {
        return Err(ConfigError::new(
            "redis.url",
            format_args!("{:?}", redact_url(url)),
            format!("a URL whose scheme is one of {}", SCHEMES.join(", ")),
        ));
    }
    if cfg!(not(feature = "tls")) && (scheme.starts_with("rediss") || scheme.starts_with("valkeys"))
    {
        return Err(ConfigError::new(
            "redis.url",
            format_args!("{:?}", redact_url(url)),
            "a TLS URL only with the cargo feature `redis-tls` enabled",
        ));
    }
    fred::types::config::Config::from_url(url).map_err(|e| {
        ConfigError::new(
            "redis.url",
            format_args!("{:?}", redact_url(url)),
            format!(
                "a Redis URL such as redis://host:6379, rediss://host:6380 (feature \
                 `redis-tls`), redis-cluster://… or redis-sentinel://… ({})",
                redact_text(e.details(), url)
            ),
        )
    })
}

/// `url` with any password replaced by `<redacted>`; an unparsable URL is replaced entirely
/// when it might hold one.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some(ksp_core::secret::REDACTED));
            }
            let mut text = parsed.to_string();
            // Sentinel passwords travel in the query.
            if let Some(query) = parsed.query() {
                let cleaned: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((k, _)) if ksp_core::secret::is_secret_key(k) => {
                            format!("{k}={}", ksp_core::secret::REDACTED)
                        }
                        _ => pair.to_owned(),
                    })
                    .collect();
                text = format!(
                    "{}?{}",
                    text.split('?').next().unwrap_or(""),
                    cleaned.join("&")
                );
            }
            text
        }
        Err(_) if url.contains('@') => ksp_core::secret::REDACTED.to_owned(),
        Err(_) => url.to_owned(),
    }
}

/// `text` (an error message about `url`) with the URL's password removed.
fn redact_text(text: &str, url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    {
        Some(password) if !password.is_empty() => {
            text.replace(&password, ksp_core::secret::REDACTED)
        }
        _ => text.to_owned(),
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("lease_ttl", &self.lease_ttl)
            .field("snapshot_ttl", &self.snapshot_ttl)
            .field("key_move_ttl", &self.key_move_ttl)
            .field("share_health", &self.share_health)
            .field("share_key_moves", &self.share_key_moves)
            .field("cluster", &self.cluster)
            .field("breaker", &self.breaker)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RedisConfig::default().validate().unwrap();
    }

    #[test]
    fn debug_never_shows_the_password() {
        let config = RedisConfig::new("redis://alice:hunter2@127.0.0.1:6379/0");
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("alice"), "{text}");
        let sentinel = RedisConfig::new(
            "redis-sentinel://:s3cret@127.0.0.1:26379/0?sentinelServiceName=m&sentinelPassword=hunter2",
        );
        let text = format!("{sentinel:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
    }

    #[test]
    fn a_malformed_url_names_the_setting_without_the_password() {
        for url in [
            "",
            "not a url",
            "http://x:hunter2@host:1",
            "redis://x:hunter2@:99999",
        ] {
            let Err(err) = RedisConfig::new(url).validate() else {
                panic!("{url} was accepted");
            };
            assert_eq!(err.setting, "redis.url", "{url}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn bad_durations_name_the_setting() {
        let config = RedisConfig {
            command_timeout: Duration::ZERO,
            ..RedisConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().setting,
            "redis.command_timeout"
        );
        let config = RedisConfig {
            lease_ttl: Duration::from_millis(500),
            ..RedisConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "redis.lease_ttl");
        let config = RedisConfig {
            key_prefix: "a b".into(),
            ..RedisConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "redis.key_prefix");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<RedisConfig>(r#"{"urll": "redis://x"}"#).unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
    }
}
