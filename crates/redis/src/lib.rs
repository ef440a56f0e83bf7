//! Redis L2 for kafka-smart-producer: a fleet of producers shares one view of health and of
//! moved keys.
//!
//! * [`FleetCollector`]: one lag collector per (Kafka cluster, consumer group), elected with a
//!   lease; the others read its published snapshot.
//! * [`SharedMoves`]: key moves written with first-writer-wins, so every instance sends a moved
//!   key to the same partition.
//! * [`RedisClient`]: fred with a command timeout, reconnection forever and a
//!   [`CircuitBreaker`], so a dead Redis costs a send at most one command timeout and then
//!   nothing at all.
//!
//! The key schema and the failure behaviour are documented in `docs/redis.md`.

mod breaker;
mod client;
mod config;
mod error;
mod fleet;
mod listener;
mod moves;
pub mod wire;

pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker, Permit};
pub use client::RedisClient;
pub use config::{RedisConfig, redact_url};
pub use error::{L2Error, L2Result};
pub use fleet::{
    FleetCollector, FleetCollectorBuilder, FleetStats, WallClock, cluster_name, instance_id,
};
pub use moves::{Replaced, SharedMoves};
