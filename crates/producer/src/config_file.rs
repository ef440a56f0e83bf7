//! [`SmartProducerConfig`]: the producer's settings from a TOML, YAML or JSON file, with
//! environment overrides.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ksp_core::secret::redact;
use ksp_core::{CalculatorConfig, ConfigError, UncommittedPolicy};
use ksp_monitor::{DampingConfig, MonitorConfig};
use rdkafka::ClientConfig;
use serde::{Deserialize, Deserializer, Serialize};

use crate::builder::AsyncSmartProducerBuilder;
use crate::router::{KeyCacheConfig, KeyOrder, KeyOrderConfig, RouterConfig};

/// Everything needed to build a smart producer, as a configuration file says it.
///
/// Two shapes are accepted, as in the Python library's README. The simple one:
///
/// ```toml
/// bootstrap_servers = "localhost:9092"
/// topics = ["orders", "payments"]
/// consumer_group = "order-processors"
/// ```
///
/// and the advanced one, where each part has its section (every key is optional):
///
/// ```toml
/// topics = ["orders"]
///
/// [kafka]                      # passed to rdkafka as is
/// "bootstrap.servers" = "localhost:9092"
/// "enable.idempotence" = true
///
/// [health_monitor]
/// consumer_group = "order-processors"
/// refresh_interval = "3s"
/// calculator = { kind = "threshold", health_threshold = 0.3, max_lag = 500 }
///
/// [cache]
/// capacity = 2000
/// ttl = "10m"
/// ```
///
/// Unknown keys are errors that name the key (a typo never silently falls back to a default).
/// Durations read as `"250ms"`, `"3s"`, `"1m 30s"` or a number of seconds. See
/// `docs/configuration.md` for every key and `examples/config/` for complete files.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SmartProducerConfig {
    /// `bootstrap.servers` (also accepted under `kafka`, or spelled `bootstrap.servers`).
    #[serde(
        alias = "bootstrap.servers",
        deserialize_with = "ksp_core::serde_text::deserialize_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub bootstrap_servers: Option<String>,
    /// The topics routed smartly. A list, or a comma-separated string.
    #[serde(deserialize_with = "string_or_list")]
    pub topics: Vec<String>,
    /// The consumer group whose lag decides (simple form).
    #[serde(
        deserialize_with = "ksp_core::serde_text::deserialize_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub consumer_group: Option<String>,
    /// rdkafka settings, passed through verbatim.
    #[serde(deserialize_with = "scalar_map")]
    pub kafka: BTreeMap<String, String>,
    /// How lag is watched.
    pub health_monitor: HealthMonitorSection,
    /// The moved-key cache (L1).
    pub cache: CacheSection,
    /// The send path.
    pub producer: ProducerSection,
    /// Whether keys may be reordered when they move.
    pub key_order: KeyOrderSection,
    /// The Redis L2 (needs the cargo feature `redis`).
    #[cfg(feature = "redis")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<ksp_redis::RedisConfig>,
}

/// The `[health_monitor]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthMonitorSection {
    /// The consumer group (advanced form).
    #[serde(
        deserialize_with = "ksp_core::serde_text::deserialize_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub consumer_group: Option<String>,
    /// Time between lag collections.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<Duration>,
    /// Health older than this is ignored.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub max_staleness: Option<Duration>,
    /// Budget of one collection.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub collect_timeout: Option<Duration>,
    /// How lag becomes health.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calculator: Option<CalculatorConfig>,
    /// Flap damping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damping: Option<DampingConfig>,
    /// How partitions without a committed offset count (`recent_arrivals`,
    /// `retained_backlog`, `caught_up`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncommitted: Option<UncommittedPolicy>,
    /// The Python library's spelling of a threshold calculator's threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_threshold: Option<f64>,
    /// The Python library's spelling of a threshold calculator's lag budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lag_for_health: Option<i64>,
}

/// The `[cache]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheSection {
    /// Most moved keys remembered.
    #[serde(alias = "local_max_size", skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// How long a detour is remembered.
    #[serde(
        alias = "local_ttl_seconds",
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
}

/// The `[key_order]` section.
///
/// ```toml
/// [key_order]
/// mode = "strict"
/// max_hold = "30s"
/// max_held_messages = 10000
/// max_held_bytes = 67108864
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KeyOrderSection {
    /// `"relaxed"` (the default) or `"strict"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<KeyOrder>,
    /// Longest a send waits for its key's old partition to drain.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub max_hold: Option<Duration>,
    /// Most sends waiting at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_held_messages: Option<u64>,
    /// Most bytes waiting at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_held_bytes: Option<u64>,
}

/// The `[producer]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ProducerSection {
    /// `false` gives a plain producer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smart_enabled: Option<bool>,
    /// How long `produce` waits for room in a full local queue.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<Duration>,
    /// Bytes before a keyless switch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky_batch_bytes: Option<u32>,
    /// Time before a keyless switch (default: the producer's `sticky.partitioning.linger.ms` if
    /// set, otherwise its `linger.ms`).
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub sticky_linger: Option<Duration>,
}

/// The configuration file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The extension is none of toml, yaml, yml, json.
    #[error("{path}: unknown configuration format (expected .toml, .yaml, .yml or .json)")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The text is not valid, or has unknown or mistyped keys.
    #[error("{origin}: {message}")]
    Parse {
        /// The file, or `<toml>` for a string.
        origin: String,
        /// What is wrong, with the key's name and position when known.
        message: String,
    },
    /// An environment override could not be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// A configuration file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// TOML.
    Toml,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

impl Format {
    /// The format of `path`, by extension.
    pub fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "toml" => Some(Self::Toml),
            "yaml" | "yml" => Some(Self::Yaml),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// Environment variables starting with this override the file.
pub(crate) const ENV_PREFIX: &str = "KSP_";

impl SmartProducerConfig {
    /// Reads `path` (format by extension), then applies the `KSP_*` environment overrides.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigFileError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`load`](Self::load) with the given environment instead of the process's.
    pub fn load_with_env(
        path: impl AsRef<Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigFileError> {
        let path = path.as_ref();
        let format = Format::of(path).ok_or_else(|| ConfigFileError::UnknownFormat {
            path: path.to_owned(),
        })?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_with_env(&text, format, &path.display().to_string(), env)
    }

    /// Parses `text` in `format` (no environment overrides).
    pub fn parse(text: &str, format: Format) -> Result<Self, ConfigFileError> {
        Self::parse_with_env(text, format, &format!("<{format:?}>"), std::iter::empty())
    }

    fn parse_with_env(
        text: &str,
        format: Format,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigFileError> {
        let parse_error = |message: String| ConfigFileError::Parse {
            origin: origin.to_owned(),
            message,
        };
        let mut tree: serde_json::Value = match format {
            Format::Toml => toml::from_str(text).map_err(|e| parse_error(e.to_string()))?,
            Format::Yaml => serde_norway::from_str(text).map_err(|e| parse_error(e.to_string()))?,
            Format::Json => serde_json::from_str(text).map_err(|e| parse_error(e.to_string()))?,
        };
        if tree.is_null() {
            tree = serde_json::Value::Object(serde_json::Map::new());
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        env.sort();
        for (var, value) in env {
            apply_env(&mut tree, &var, &value)?;
        }
        let config: Self = serde_json::from_value(tree).map_err(|e| parse_error(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The consumer group, from whichever form gave it.
    pub fn consumer_group(&self) -> Option<&str> {
        self.health_monitor
            .consumer_group
            .as_deref()
            .or(self.consumer_group.as_deref())
    }

    /// The rdkafka configuration: `kafka` plus `bootstrap_servers`.
    pub fn client_config(&self) -> ClientConfig {
        let mut kafka = ClientConfig::new();
        for (k, v) in &self.kafka {
            kafka.set(k, v);
        }
        if let Some(servers) = &self.bootstrap_servers {
            kafka.set("bootstrap.servers", servers);
        }
        kafka
    }

    fn calculator(&self) -> Result<Option<CalculatorConfig>, ConfigError> {
        let m = &self.health_monitor;
        match (m.calculator, m.health_threshold, m.max_lag_for_health) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(ConfigError::new(
                "health_monitor.calculator",
                "given together with health_threshold / max_lag_for_health",
                "either `calculator` or the Python-style `health_threshold` and \
                 `max_lag_for_health`, not both",
            )),
            (Some(c), None, None) => Ok(Some(c)),
            (None, None, None) => Ok(None),
            (None, threshold, max_lag) => {
                let default = ksp_core::ThresholdCalculator::default();
                let threshold = threshold.unwrap_or(default.threshold());
                let max_lag = max_lag.unwrap_or(default.max_lag());
                ksp_core::ThresholdCalculator::new(threshold, max_lag)?;
                Ok(Some(CalculatorConfig::Threshold {
                    health_threshold: threshold,
                    max_lag,
                }))
            }
        }
    }

    /// Checks what can be checked without building anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let (Some(a), Some(b)) = (&self.consumer_group, &self.health_monitor.consumer_group)
            && a != b
        {
            return Err(ConfigError::new(
                "health_monitor.consumer_group",
                format_args!("{b:?}"),
                format!("the same group as the top-level consumer_group ({a:?}), or only one"),
            ));
        }
        if let (Some(a), Some(b)) = (&self.bootstrap_servers, self.kafka.get("bootstrap.servers"))
            && a != b
        {
            return Err(ConfigError::new(
                "kafka.\"bootstrap.servers\"",
                format_args!("{b:?}"),
                format!("the same servers as bootstrap_servers ({a:?}), or only one"),
            ));
        }
        self.calculator()?;
        if let Some(damping) = &self.health_monitor.damping {
            damping.validate()?;
        }
        self.router_config().key_order.validate()?;
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            redis.validate()?;
        }
        Ok(())
    }

    /// The monitor settings of the file (defaults for what it leaves out).
    pub fn monitor_config(&self) -> MonitorConfig {
        let m = &self.health_monitor;
        let mut config = MonitorConfig::default();
        if let Some(d) = m.refresh_interval {
            config = config.with_refresh_interval(d);
        }
        if let Some(d) = m.max_staleness {
            config = config.with_max_staleness(d);
        }
        if let Some(d) = m.collect_timeout {
            config = config.with_collect_timeout(d);
        }
        if let Some(d) = m.damping {
            config = config.with_damping(d);
        }
        if let Some(u) = m.uncommitted {
            config = config.with_uncommitted(u);
        }
        config
    }

    /// The router settings of the file (what it leaves out follows the producer's own
    /// configuration).
    pub fn router_config(&self) -> RouterConfig {
        let mut config = RouterConfig::default();
        let mut cache = KeyCacheConfig::default();
        if let Some(c) = self.cache.capacity {
            cache.capacity = c;
        }
        if let Some(t) = self.cache.ttl {
            cache.ttl = t;
        }
        config = config.with_key_cache(cache);
        let o = &self.key_order;
        let mut order = KeyOrderConfig::default();
        if let Some(mode) = o.mode {
            order = order.with_mode(mode);
        }
        if let Some(d) = o.max_hold {
            order = order.with_max_hold(d);
        }
        if let Some(n) = o.max_held_messages {
            order = order.with_max_held_messages(n);
        }
        if let Some(n) = o.max_held_bytes {
            order = order.with_max_held_bytes(n);
        }
        config = config.with_key_order(order);
        if let Some(b) = self.producer.sticky_batch_bytes {
            config = config.with_sticky_batch_bytes(b);
        }
        if let Some(l) = self.producer.sticky_linger {
            config = config.with_sticky_linger(l);
        }
        config
    }

    /// A producer builder with every setting of the file applied.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the calculator's settings are invalid.
    pub fn builder(&self) -> Result<AsyncSmartProducerBuilder, ConfigError> {
        let mut builder = crate::AsyncSmartProducer::builder(self.client_config())
            .topics(self.topics.iter().cloned())
            .monitor(self.monitor_config())
            .router(self.router_config());
        if let Some(group) = self.consumer_group() {
            builder = builder.consumer_group(group);
        }
        if let Some(c) = self.calculator()? {
            builder = builder.calculator(c.build()?);
        }
        let p = &self.producer;
        if let Some(enabled) = p.smart_enabled {
            builder = builder.smart_enabled(enabled);
        }
        if let Some(t) = p.queue_timeout {
            builder = builder.queue_timeout(t);
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            builder = builder.redis(redis.clone());
        }
        Ok(builder)
    }
}

impl fmt::Debug for SmartProducerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SmartProducerConfig");
        d.field("bootstrap_servers", &self.bootstrap_servers)
            .field("topics", &self.topics)
            .field("consumer_group", &self.consumer_group)
            .field(
                "kafka",
                &redact(self.kafka.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            )
            .field("health_monitor", &self.health_monitor)
            .field("cache", &self.cache)
            .field("producer", &self.producer)
            .field("key_order", &self.key_order);
        #[cfg(feature = "redis")]
        d.field("redis", &self.redis);
        d.finish()
    }
}

/// `KSP_HEALTH_MONITOR__REFRESH_INTERVAL=2s` sets `health_monitor.refresh_interval`;
/// `KSP_KAFKA__SASL_PASSWORD=…` sets the rdkafka setting `sasl.password` (underscores become
/// dots below `kafka`). Values below `kafka` are text exactly as typed; elsewhere a list, an
/// object, a boolean or a number written as JSON writes it back (`5`, `0.25`) is read as such,
/// and anything else (`1e5`, `007`, `hunter2`) is text.
fn apply_env(tree: &mut serde_json::Value, var: &str, value: &str) -> Result<(), ConfigFileError> {
    let env_error = |message: String| ConfigFileError::Env {
        var: var.to_owned(),
        message,
    };
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(env_error("empty path segment".into()));
    }
    let (last, parents) = path.split_last().expect("split gives at least one segment");
    let mut node = tree;
    for segment in parents {
        let object = node
            .as_object_mut()
            .ok_or_else(|| env_error(format!("`{segment}` is not inside a section")))?;
        node = object
            .entry(segment.clone())
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    }
    let key = if parents.len() == 1 && parents[0] == "kafka" {
        last.replace('_', ".")
    } else {
        last.clone()
    };
    let parsed = if parents.len() == 1 && parents[0] == "kafka" {
        // rdkafka settings are text, passed on exactly as typed.
        serde_json::Value::String(value.to_owned())
    } else {
        typed(value)
    };
    node.as_object_mut()
        .ok_or_else(|| env_error("its parent is not a section".into()))?
        .insert(key, parsed);
    Ok(())
}

/// An environment value as a setting: typed when JSON would write it back exactly as given.
fn typed(value: &str) -> serde_json::Value {
    use serde_json::Value;
    match serde_json::from_str::<Value>(value) {
        Ok(v @ (Value::Array(_) | Value::Object(_) | Value::Bool(_))) => v,
        Ok(Value::Number(n)) if n.to_string() == value => Value::Number(n),
        _ => Value::String(value.to_owned()),
    }
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    struct Item(#[serde(deserialize_with = "ksp_core::serde_text::deserialize")] String);
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<Item>),
        Text(#[serde(deserialize_with = "ksp_core::serde_text::deserialize")] String),
    }
    Ok(match Form::deserialize(d)? {
        Form::List(list) => list.into_iter().map(|i| i.0).collect(),
        Form::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// rdkafka takes every value as a string; files may write numbers and booleans bare.
fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format_args!(
                        "kafka setting `{k}` must be a string, number or boolean, not {other}"
                    )));
                }
            };
            Ok((k, text))
        })
        .collect()
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => ksp_core::serde_duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "ksp_core::serde_duration")] Duration);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_simple_form() {
        let c = SmartProducerConfig::parse(
            r#"
            "bootstrap.servers" = "localhost:9092"
            topics = ["orders", "payments"]
            consumer_group = "order-processors"
            "#,
            Format::Toml,
        )
        .unwrap();
        assert_eq!(c.bootstrap_servers.as_deref(), Some("localhost:9092"));
        assert_eq!(c.consumer_group(), Some("order-processors"));
        assert_eq!(c.topics, ["orders", "payments"]);
        c.builder().unwrap().validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = SmartProducerConfig::parse(
            "topics = [\"t\"]\n[health_monitor]\nrefresh_intervl = \"1s\"\n",
            Format::Toml,
        )
        .unwrap_err();
        assert!(err.to_string().contains("refresh_intervl"), "{err}");
        let err = SmartProducerConfig::parse("{\"topicz\": []}", Format::Json).unwrap_err();
        assert!(err.to_string().contains("topicz"), "{err}");
        let err = SmartProducerConfig::parse("cache:\n  size: 3\n", Format::Yaml).unwrap_err();
        assert!(err.to_string().contains("size"), "{err}");
    }

    /// Bug: `CalculatorConfig` accepted keys it does not have, so a misspelt calculator
    /// setting silently fell back to its default.
    #[test]
    fn unknown_calculator_keys_are_named() {
        let err = SmartProducerConfig::parse(
            "topics = [\"t\"]\n[health_monitor]\n\
             calculator = { kind = \"threshold\", max_lag_for_health = 500 }\n",
            Format::Toml,
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_lag_for_health"), "{err}");
        let err = SmartProducerConfig::parse(
            "{\"topics\": [\"t\"], \"health_monitor\": \
             {\"calculator\": {\"kind\": \"relative\", \"hot_factr\": 3}}}",
            Format::Json,
        )
        .unwrap_err();
        assert!(err.to_string().contains("hot_factr"), "{err}");
        // The documented way to switch kinds from the environment: the whole object.
        let file = "topics = [\"t\"]\n[health_monitor]\n\
                    calculator = { kind = \"relative\", hot_factor = 3.0 }\n";
        let env = [(
            "KSP_HEALTH_MONITOR__CALCULATOR".to_owned(),
            r#"{"kind":"threshold","max_lag":500}"#.to_owned(),
        )];
        let c = SmartProducerConfig::parse_with_env(file, Format::Toml, "test", env).unwrap();
        assert_eq!(
            c.health_monitor.calculator,
            Some(CalculatorConfig::Threshold {
                health_threshold: ksp_core::ThresholdCalculator::DEFAULT_THRESHOLD,
                max_lag: 500,
            })
        );
    }

    /// Bug: `damping` needed all three of its keys although each has a default.
    #[test]
    fn damping_keys_left_out_take_their_defaults() {
        let c = SmartProducerConfig::parse(
            "topics = [\"t\"]\n[health_monitor]\ndamping = { recovery_hold = \"0s\" }\n",
            Format::Toml,
        )
        .unwrap();
        let damping = c.health_monitor.damping.unwrap();
        assert_eq!(damping.recovery_hold, Duration::ZERO);
        assert_eq!(damping.max_hold, DampingConfig::default().max_hold);
        assert_eq!(
            damping.penalty_half_life,
            DampingConfig::default().penalty_half_life
        );
        let err = SmartProducerConfig::parse(
            "topics = [\"t\"]\n[health_monitor]\ndamping = { recovery_hol = \"0s\" }\n",
            Format::Toml,
        )
        .unwrap_err();
        assert!(err.to_string().contains("recovery_hol"), "{err}");
        // A first hold past the default longest one names the key left out, and its default.
        let err = SmartProducerConfig::parse(
            "topics = [\"t\"]\n[health_monitor]\ndamping = { recovery_hold = \"15m\" }\n",
            Format::Toml,
        )
        .unwrap_err();
        assert!(err.to_string().contains("damping.max_hold"), "{err}");
        assert!(err.to_string().contains("default 10 minutes"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = [
            ("KSP_HEALTH_MONITOR__REFRESH_INTERVAL", "2s"),
            ("KSP_KAFKA__SASL_PASSWORD", "hunter2"),
            ("KSP_TOPICS", "a,b"),
            ("KSP_CACHE__CAPACITY", "5"),
            ("OTHER", "ignored"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = SmartProducerConfig::parse_with_env(
            "topics = [\"t\"]\n[health_monitor]\nrefresh_interval = \"9s\"\n",
            Format::Toml,
            "test",
            env,
        )
        .unwrap();
        assert_eq!(
            c.health_monitor.refresh_interval,
            Some(Duration::from_secs(2))
        );
        assert_eq!(c.kafka["sasl.password"], "hunter2");
        assert_eq!(c.topics, ["a", "b"]);
        assert_eq!(c.cache.capacity, Some(5));
        assert!(!format!("{c:?}").contains("hunter2"));
        let typo = [("KSP_HEALTH_MONITOR__REFRESH".to_owned(), "2s".to_owned())];
        let err = SmartProducerConfig::parse_with_env("", Format::Toml, "test", typo).unwrap_err();
        assert!(err.to_string().contains("refresh"), "{err}");
    }

    #[test]
    fn the_key_order_section_sets_strict_order_and_its_bounds() {
        let c = SmartProducerConfig::parse(
            "[key_order]\nmode = \"strict\"\nmax_hold = \"5s\"\nmax_held_messages = 100\n",
            Format::Toml,
        )
        .unwrap();
        let order = c.router_config().key_order;
        assert!(order.is_strict());
        assert_eq!(order.max_hold, Duration::from_secs(5));
        assert_eq!(order.max_held_messages, 100);
        assert_eq!(order.max_held_bytes, KeyOrderConfig::DEFAULT_MAX_HELD_BYTES);
        let env = [("KSP_KEY_ORDER__MODE".to_owned(), "relaxed".to_owned())];
        let c = SmartProducerConfig::parse_with_env(
            "[key_order]\nmode = \"strict\"\n",
            Format::Toml,
            "test",
            env,
        )
        .unwrap();
        assert!(!c.router_config().key_order.is_strict());
        let err = SmartProducerConfig::parse("[key_order]\nmode = \"sorted\"\n", Format::Toml)
            .unwrap_err();
        assert!(err.to_string().contains("sorted"), "{err}");
        let err = SmartProducerConfig::parse("[key_order]\nmax_held_messages = 0\n", Format::Toml)
            .unwrap_err();
        assert!(
            err.to_string().contains("key_order.max_held_messages"),
            "{err}"
        );
    }

    #[test]
    fn python_style_threshold_settings_become_a_threshold_calculator() {
        let c = SmartProducerConfig::parse(
            "health_monitor:\n  health_threshold: 0.3\n  max_lag_for_health: 500\n",
            Format::Yaml,
        )
        .unwrap();
        assert_eq!(
            c.calculator().unwrap(),
            Some(CalculatorConfig::Threshold {
                health_threshold: 0.3,
                max_lag: 500
            })
        );
        let err =
            SmartProducerConfig::parse("health_monitor:\n  health_threshold: 1.3\n", Format::Yaml)
                .unwrap_err();
        assert!(err.to_string().contains("health_threshold"), "{err}");
    }

    /// Regression: `KSP_KAFKA__SASL_PASSWORD=1e5` became `"100000.0"`: environment values were
    /// parsed as JSON wherever they parsed, so a password, a group or a topic that looked like a
    /// number was rewritten.
    #[test]
    fn environment_values_for_text_settings_pass_through_as_typed() {
        let env = [
            ("KSP_KAFKA__SASL_PASSWORD", "1e5"),
            ("KSP_KAFKA__LINGER_MS", "007"),
            ("KSP_CONSUMER_GROUP", "42"),
            ("KSP_TOPICS", "1e5"),
            ("KSP_CACHE__CAPACITY", "5"),
            ("KSP_HEALTH_MONITOR__HEALTH_THRESHOLD", "0.25"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = SmartProducerConfig::parse_with_env("", Format::Toml, "test", env).unwrap();
        assert_eq!(c.kafka["sasl.password"], "1e5");
        assert_eq!(c.kafka["linger.ms"], "007");
        assert_eq!(c.consumer_group.as_deref(), Some("42"));
        assert_eq!(c.topics, ["1e5"]);
        assert_eq!(c.cache.capacity, Some(5));
        assert_eq!(c.health_monitor.health_threshold, Some(0.25));
    }

    proptest! {
        /// Fuzz: environment overrides of every kind never panic; whatever they set below
        /// `kafka`, and any text setting, arrives exactly as typed.
        #[test]
        fn environment_overrides_never_panic_and_keep_text_as_typed(
            key in prop::sample::select(vec![
                "KSP_KAFKA__SASL_PASSWORD", "KSP_KAFKA__LINGER_MS", "KSP_CONSUMER_GROUP",
                "KSP_HEALTH_MONITOR__CONSUMER_GROUP", "KSP_TOPICS", "KSP_BOOTSTRAP_SERVERS",
                "KSP_CACHE__CAPACITY", "KSP_HEALTH_MONITOR__REFRESH_INTERVAL",
                "KSP_PRODUCER__SMART_ENABLED", "KSP_HEALTH_MONITOR__DAMPING", "KSP_",
                "KSP___", "KSP_CACHE__TTL__X",
            ]),
            value in prop_oneof![
                ".{0,30}",
                "[0-9]{1,25}",
                "-?[0-9]{1,5}(\\.[0-9]{1,5})?(e[0-9]{1,3})?",
                Just("true".to_owned()),
                Just("[\"a\",\"b\"]".to_owned()),
                Just("{}".to_owned()),
            ],
        ) {
            let env = [(key.to_owned(), value.clone())];
            if let Ok(c) = SmartProducerConfig::parse_with_env("", Format::Toml, "env", env) {
                match key {
                    "KSP_KAFKA__SASL_PASSWORD" => prop_assert_eq!(&c.kafka["sasl.password"], &value),
                    "KSP_KAFKA__LINGER_MS" => prop_assert_eq!(&c.kafka["linger.ms"], &value),
                    "KSP_CONSUMER_GROUP" => prop_assert_eq!(c.consumer_group.as_deref(), Some(value.as_str())),
                    "KSP_BOOTSTRAP_SERVERS" => prop_assert_eq!(c.bootstrap_servers.as_deref(), Some(value.as_str())),
                    _ => {}
                }
            }
        }

        /// Fuzz: no input text makes any of the three decoders panic.
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            for format in [Format::Toml, Format::Yaml, Format::Json] {
                let _ = SmartProducerConfig::parse(&text, format);
            }
        }

        /// Fuzz: structured-looking input (keys and values from the real vocabulary) never
        /// panics either, and whatever parses also validates.
        #[test]
        fn vocabulary_soup_never_panics(
            parts in proptest::collection::vec(
                prop::sample::select(vec![
                    "topics", "consumer_group", "[kafka]", "[cache]", "[health_monitor]",
                    "[producer]", "capacity", "ttl", "refresh_interval", " = ", "\"1s\"",
                    "-1", "0", "1e309", "[\"t\"]", "true", "\n", "calculator", "{kind=\"x\"}",
                    "{ kind = \"threshold\", health_threshold = 2 }", "max_staleness",
                ]),
                0..40,
            )
        ) {
            let text: String = parts.concat();
            for format in [Format::Toml, Format::Yaml, Format::Json] {
                if let Ok(c) = SmartProducerConfig::parse(&text, format) {
                    prop_assert!(c.validate().is_ok());
                }
            }
        }
    }
}
