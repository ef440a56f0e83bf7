//! The vocabulary of kafka-smart-producer.
//!
//! This crate has no Kafka client and no runtime. It defines what crosses the boundaries
//! between the other crates:
//!
//! * lag data ([`PartitionLag`], [`TopicLag`]) and where it comes from ([`LagCollector`]);
//! * health ([`PartitionHealth`], [`TopicHealth`]) and how lag becomes health
//!   ([`HotPartitionCalculator`], with [`ThresholdCalculator`] and [`RelativeCalculator`]);
//! * the immutable, versioned [`HealthSnapshot`] and the hand-off that carries it from the
//!   monitor to the router: [`HealthPublisher`] → [`HealthFeed`] (an `ArcSwap` for lock-free
//!   reads plus a `watch` channel for change notification).
//!
//! Data flows one way: collector → calculator → monitor → feed → router.
//!
//! With the `test-util` feature, [`testing`] has a collector you drive by hand.

mod calculator;
pub mod clock;
mod collector;
mod error;
mod feed;
mod health;
mod lag;
mod rates;
pub mod secret;
pub mod serde_duration;
pub mod serde_text;
mod shares;
mod snapshot;
mod sticky;
#[cfg(feature = "test-util")]
pub mod testing;
mod topic;

pub use calculator::{
    CalculatorConfig, HotPartitionCalculator, RelativeCalculator, ThresholdCalculator,
};
pub use collector::{LagCollector, LagRequest};
pub use error::{BoxError, CollectError, ConfigError};
pub use feed::{HealthFeed, HealthPublisher, health_channel};
pub use health::PartitionHealth;
pub use lag::{PartitionLag, TopicLag, UncommittedPolicy};
pub use rates::{ConsumerState, PartitionRates};
pub use snapshot::HealthSnapshot;
pub use sticky::StickyCursor;
pub use topic::TopicHealth;
#[doc(hidden)]
pub use topic::mix64;
