//! The lag-aware producer of kafka-smart-producer.
//!
//! * [`AsyncSmartProducer`]: rdkafka's `FutureProducer` whose messages are routed away from
//!   partitions whose consumers fall behind.
//! * [`Router`]: the routing decision itself, synchronous and allocation-free for keyless
//!   messages; usable on its own (simulations, other producers).

mod config;
mod error;
#[cfg(feature = "redis")]
mod l2;
mod partitioner;
mod producer;
mod queue;
mod router;
mod summary;

pub use config::{KeyCacheConfig, RouterConfig};
pub use error::{ProduceError, ProducerError, ProducerResult};
#[cfg(feature = "redis")]
pub use ksp_redis::RedisConfig;
#[cfg(feature = "redis")]
pub use l2::RedisStatus;
pub use partitioner::Partitioner;
pub use producer::{AsyncSmartProducer, AsyncSmartProducerBuilder, Delivery};
pub use router::{Decision, Fallback, NewDetour, Route, Router};
pub use summary::{PartitionSummary, TopicSummary};
