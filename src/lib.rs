#![doc = include_str!("../README.md")]
//!
//! ## This crate
//!
//! This facade re-exports the workspace's crates so that you depend on one package:
//!
//! * from `ksp-producer`: [`AsyncSmartProducer`], the [`Router`] and their settings;
//! * from `ksp-monitor`: the [`HealthMonitor`] task and the [`KafkaLagCollector`];
//! * from `ksp-core`: the data ([`TopicLag`], [`TopicHealth`], [`HealthSnapshot`]…) and the
//!   extension traits [`LagCollector`] and [`HotPartitionCalculator`];
//! * [`rdkafka`] itself, so that your `ClientConfig` and `FutureRecord` are the ones this
//!   crate was built with.

pub use ksp_core::{
    BoxError, CalculatorConfig, CollectError, ConfigError, Damper, DampingConfig, HealthFeed,
    HealthPublisher, HealthSnapshot, HotPartitionCalculator, LagCollector, LagRequest,
    MAX_SHARE_OF_FAIR, PartitionHealth, PartitionLag, RelativeCalculator, StickyCursor,
    ThresholdCalculator, TopicHealth, TopicLag, UncommittedPolicy, health_channel, secret,
};
pub use ksp_monitor::{
    HealthMonitor, HealthMonitorBuilder, KafkaLagCollector, KafkaLagCollectorBuilder,
    MonitorConfig, MonitorError, MonitorHandle, MonitorResult, MonitorStats, MonitorStatus,
    RequestCounts, validate_topic,
};
pub use ksp_producer::{
    AsyncSmartProducer, AsyncSmartProducerBuilder, CacheSection, CallbackContext, ConfigFileError,
    Decision, Delivery, DeliveryOutcome, ENV_PREFIX, Fallback, Format, HealthMonitorSection,
    KeyCacheConfig, NewDetour, PartitionSummary, Partitioner, ProduceError, ProducerError,
    ProducerResult, ProducerSection, Route, Router, RouterConfig, SmartProducer,
    SmartProducerConfig, TopicSummary,
};
pub use rdkafka;

/// The Redis L2 (cargo feature `redis`): one lag collector per fleet, shared health and
/// shared key moves. See `docs/redis.md`.
#[cfg(feature = "redis")]
pub mod redis {
    pub use ksp_producer::RedisStatus;
    pub use ksp_redis::*;
}

/// The `async_trait` attribute, for implementing [`LagCollector`].
pub use async_trait::async_trait;

/// `docs/redis.md`, compiled and tested.
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../docs/redis.md")]
pub struct RedisGuide;

/// `docs/configuration.md`, compiled and tested.
#[cfg(doctest)]
#[doc = include_str!("../docs/configuration.md")]
pub struct ConfigurationGuide;
