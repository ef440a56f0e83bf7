//! The lag-aware producer of kafka-smart-producer.
//!
//! * [`AsyncSmartProducer`]: rdkafka's `FutureProducer` whose messages are routed away from
//!   partitions whose consumers fall behind.
//! * [`Router`]: the routing decision itself, synchronous and allocation-free for keyless
//!   messages; usable on its own (simulations, other producers).

mod blocking;
mod config;
mod error;
mod file;
#[cfg(feature = "redis")]
mod l2;
mod metrics;
mod partitioner;
mod producer;
mod queue;
mod router;
mod summary;

pub use blocking::{CallbackContext, DeliveryOutcome, SmartProducer};
pub use config::{KeyCacheConfig, RouterConfig};
pub use error::{ProduceError, ProducerError, ProducerResult};
pub use file::{
    CacheSection, ConfigFileError, ENV_PREFIX, Format, HealthMonitorSection, ProducerSection,
    SmartProducerConfig,
};
#[cfg(feature = "redis")]
pub use ksp_redis::RedisConfig;
#[cfg(feature = "redis")]
pub use l2::RedisStatus;
pub use partitioner::Partitioner;
pub use producer::{AsyncSmartProducer, AsyncSmartProducerBuilder, Delivery};
pub use router::{Decision, Fallback, NewDetour, Route, Router};
pub use summary::{PartitionSummary, TopicSummary};
