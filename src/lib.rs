#![doc = include_str!("../README.md")]
//!
//! ## This crate
//!
//! One package for the whole workspace. At the root, what a user of the producer types:
//! [`AsyncSmartProducer`] and its builder, [`Delivery`] and the two errors; the extension
//! traits [`LagCollector`] and [`HotPartitionCalculator`] with the data they take and give;
//! the built-in calculators; [`SmartProducerConfig`]. The rest is in modules:
//!
//! * [`blocking`]: the same producer without an async runtime;
//! * [`routing`]: the [`Router`](routing::Router) and its settings;
//! * [`monitor`]: the health monitor task, its settings and handle, the Kafka lag collector;
//! * [`health`]: snapshots, the feed between monitor and router, summaries;
//! * [`config`]: configuration files and setting errors;
//! * [`redis`] (cargo feature `redis`): one lag collector per fleet, shared key moves;
//! * [`testing`] (cargo feature `test-util`): a lag collector you drive by hand;
//! * [`rdkafka`] itself, so that your `ClientConfig` and `FutureRecord` are the ones this
//!   crate was built with.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc(inline)]
pub use ksp_core::{
    CollectError, HotPartitionCalculator, LagCollector, LagRequest, PartitionHealth, PartitionLag,
    RelativeCalculator, ThresholdCalculator, TopicLag,
};
#[doc(inline)]
pub use ksp_producer::{
    AsyncSmartProducer, AsyncSmartProducerBuilder, BuildError, Delivery, ProduceError,
    SmartContext, SmartProducerConfig,
};
pub use rdkafka;

/// The `async_trait` attribute, for implementing [`LagCollector`].
pub use async_trait::async_trait;

/// The same routing without an async runtime: [`SmartProducer`](blocking::SmartProducer) over
/// rdkafka's `ThreadedProducer`, with a delivery callback per message.
pub mod blocking {
    #[doc(inline)]
    pub use ksp_producer::blocking::*;
}

/// Where each message goes: the [`Router`](routing::Router), its settings and its decisions.
pub mod routing {
    #[doc(inline)]
    pub use ksp_producer::{
        Decision, Fallback, KeyCacheConfig, KeyOrder, KeyOrderConfig, KeyStep, NewDetour,
        Partitioner, Route, Router, RouterConfig,
    };
}

/// The health monitor: the task, its settings and handle, and the lag collector that reads
/// Kafka.
pub mod monitor {
    #[doc(inline)]
    pub use ksp_monitor::{
        DampingConfig, HealthMonitor, HealthMonitorBuilder, IsolationLevel, KafkaLagCollector,
        KafkaLagCollectorBuilder, MonitorConfig, MonitorError, MonitorHandle, MonitorResult,
        MonitorStats, MonitorStatus, RequestCounts, TopicTracker,
    };
}

/// Health: what the monitor publishes and the router reads.
pub mod health {
    #[doc(inline)]
    pub use ksp_core::{
        HealthFeed, HealthPublisher, HealthSnapshot, TopicHealth, UncommittedPolicy, health_channel,
    };
    #[doc(inline)]
    pub use ksp_producer::{PartitionSummary, TopicSummary};
}

/// Settings: configuration files, calculators by name, and the error a bad setting gives.
pub mod config {
    #[doc(inline)]
    pub use ksp_core::{BoxError, CalculatorConfig, ConfigError};
    #[doc(inline)]
    pub use ksp_producer::{
        CacheSection, ConfigFileError, Format, HealthMonitorSection, KeyOrderSection,
        ProducerSection, SmartProducerConfig,
    };
}

/// The Redis L2 (cargo feature `redis`): one lag collector per fleet, shared health and
/// shared key moves. See `docs/redis.md`.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis {
    #[doc(inline)]
    pub use ksp_producer::RedisStatus;
    #[doc(inline)]
    pub use ksp_redis::{
        BreakerConfig, BreakerState, FleetCollector, FleetCollectorBuilder, FleetStats, L2Error,
        RedisClient, RedisConfig, SharedMoves, cluster_name, wire,
    };
}

/// Test doubles (cargo feature `test-util`): a lag collector you drive by hand.
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing {
    #[doc(inline)]
    pub use ksp_core::testing::*;
}

/// `docs/redis.md`, compiled and tested.
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../docs/redis.md")]
pub struct RedisGuide;

/// `docs/configuration.md`, compiled and tested.
#[cfg(doctest)]
#[doc = include_str!("../docs/configuration.md")]
pub struct ConfigurationGuide;
