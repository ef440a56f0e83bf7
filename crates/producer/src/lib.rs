//! The lag-aware producers of kafka-smart-producer.
//!
//! * [`AsyncSmartProducer`]: rdkafka's `FutureProducer` whose messages are routed away from
//!   partitions whose consumers fall behind; [`blocking::SmartProducer`] is the same over a
//!   `ThreadedProducer`, for code without an async runtime.
//! * [`Router`]: the routing decision itself, synchronous and allocation-free for keyless
//!   messages; usable on its own (simulations, other producers).
//! * [`SmartProducerConfig`]: the settings from a TOML, YAML or JSON file.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod async_producer;
mod backpressure;
pub mod blocking;
mod builder;
mod config_file;
mod context;
mod error;
mod holds;
mod metrics;
#[cfg(feature = "redis")]
mod redis;
mod router;
mod routing;
mod summary;

pub use async_producer::{AsyncSmartProducer, Delivery};
pub use builder::AsyncSmartProducerBuilder;
pub use config_file::{
    CacheSection, ConfigFileError, Format, HealthMonitorSection, KeyOrderSection, ProducerSection,
    SmartProducerConfig,
};
pub use context::SmartContext;
pub use error::{BuildError, ProduceError};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisStatus;
pub use router::{
    Decision, Fallback, KeyCacheConfig, KeyOrder, KeyOrderConfig, KeyStep, NewDetour, Partitioner,
    Route, Router, RouterConfig,
};
pub use summary::{PartitionSummary, TopicSummary};
