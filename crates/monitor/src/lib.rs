//! The health monitor of kafka-smart-producer.
//!
//! * [`HealthMonitor`]: a Tokio task that, every `refresh_interval`, asks a
//!   [`LagCollector`](ksp_core::LagCollector) for consumer-group lag, turns it into health with a
//!   [`HotPartitionCalculator`](ksp_core::HotPartitionCalculator), and publishes an immutable
//!   [`HealthSnapshot`](ksp_core::HealthSnapshot) through a
//!   [`HealthFeed`](ksp_core::HealthFeed) that routers read lock-free. Controlled through its
//!   [`MonitorHandle`], configured with a [`MonitorConfig`].
//! * [`TopicTracker`]: what the monitor remembers of a topic between rounds, usable on its own
//!   (simulations).
//! * [`KafkaLagCollector`]: lag read from Kafka itself, with batched requests.

mod builder;
mod config;
mod damping;
mod error;
mod handle;
mod kafka;
mod rates;
mod task;
mod tracker;

pub use builder::{HealthMonitor, HealthMonitorBuilder};
pub use config::{MonitorConfig, validate_watch};
pub use damping::DampingConfig;
pub use error::{MonitorError, MonitorResult};
pub use handle::{MonitorHandle, MonitorStats, MonitorStatus};
pub use kafka::{IsolationLevel, KafkaLagCollector, KafkaLagCollectorBuilder, RequestCounts};
pub use tracker::TopicTracker;
