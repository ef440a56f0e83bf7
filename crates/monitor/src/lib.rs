//! The health monitor of kafka-smart-producer.
//!
//! * [`HealthMonitor`]: a Tokio task that, every `refresh_interval`, asks a
//!   [`LagCollector`](ksp_core::LagCollector) for consumer-group lag, turns it into health with a
//!   [`HotPartitionCalculator`](ksp_core::HotPartitionCalculator), and publishes an immutable
//!   [`HealthSnapshot`](ksp_core::HealthSnapshot) through a
//!   [`HealthFeed`](ksp_core::HealthFeed) that routers read lock-free.
//! * [`KafkaLagCollector`]: lag read from Kafka itself, with batched requests.

mod config;
mod error;
mod kafka;
mod monitor;

pub use config::{MonitorConfig, validate_topic};
pub use error::{MonitorError, MonitorResult};
pub use kafka::{KafkaLagCollector, KafkaLagCollectorBuilder, RequestCounts};
pub use monitor::{
    HealthMonitor, HealthMonitorBuilder, MonitorHandle, MonitorStats, MonitorStatus,
};
