//! [`HealthMonitor`] and its builder.

use std::fmt;
use std::sync::Arc;

use ksp_core::{HotPartitionCalculator, LagCollector, RelativeCalculator, health_channel};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::config::{MonitorConfig, validate_watch};
use crate::error::{MonitorError, MonitorResult};
use crate::handle::{MonitorHandle, Shared};
use crate::task::{Settings, Supervisor};

/// The health monitor.
///
/// One Tokio task per monitor. Each round it collects lag, computes health, builds a new
/// immutable [`HealthSnapshot`](ksp_core::HealthSnapshot), stores it and notifies subscribers.
/// Rounds never overlap, and while one runs the task still serves its handle and marks health
/// stale at `max_staleness`. Every stage of a round (collect, calculate, damp, publish) is
/// contained: a panic there fails the round, not the monitor; a panic anywhere else restarts
/// the monitor after a backoff (see [`MonitorStats::restarts`](crate::MonitorStats::restarts)).
///
/// ```no_run
/// # use std::time::Duration;
/// # use ksp_monitor::{HealthMonitor, KafkaLagCollector, MonitorConfig};
/// # use rdkafka::ClientConfig;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mut kafka = ClientConfig::new();
/// kafka.set("bootstrap.servers", "localhost:9092");
/// let collector = KafkaLagCollector::builder(&kafka).build()?;
/// let monitor = HealthMonitor::builder(collector)
///     .group("order-processors")
///     .topics(["orders"])
///     .config(MonitorConfig::default().with_refresh_interval(Duration::from_secs(2)))
///     .spawn()?;
/// monitor.refresh_now().await?;
/// let snapshot = monitor.feed().load_full();
/// if let Some(orders) = snapshot.topic("orders") {
///     println!("routable partitions: {:?}", orders.routable_partitions());
/// }
/// monitor.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct HealthMonitor {
    _private: (),
}

impl HealthMonitor {
    /// Starts configuring a monitor that reads lag from `collector`.
    pub fn builder(collector: impl LagCollector) -> HealthMonitorBuilder {
        HealthMonitorBuilder {
            collector: Arc::new(collector),
            calculator: Arc::new(RelativeCalculator::default()),
            group: String::new(),
            topics: Vec::new(),
            config: MonitorConfig::default(),
            cancel: None,
            #[cfg(test)]
            fault: None,
        }
    }
}

/// Configures and spawns a [`HealthMonitor`].
#[must_use = "a builder does nothing until `spawn` is called"]
pub struct HealthMonitorBuilder {
    collector: Arc<dyn LagCollector>,
    calculator: Arc<dyn HotPartitionCalculator>,
    group: String,
    topics: Vec<String>,
    config: MonitorConfig,
    cancel: Option<CancellationToken>,
    #[cfg(test)]
    fault: Option<crate::task::Fault>,
}

impl HealthMonitorBuilder {
    /// The consumer group to watch (required).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// The topics to watch (at least one; more can be added later with
    /// [`MonitorHandle::watch_topic`]).
    pub fn topics<T: Into<String>>(mut self, topics: impl IntoIterator<Item = T>) -> Self {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// How lag becomes health. Default: [`RelativeCalculator::default`].
    pub fn calculator(mut self, calculator: impl HotPartitionCalculator) -> Self {
        self.calculator = Arc::new(calculator);
        self
    }

    /// Timings, damping and the uncommitted policy. Default [`MonitorConfig::default`].
    pub fn config(mut self, config: MonitorConfig) -> Self {
        self.config = config;
        self
    }

    /// Stops the monitor when `token` is cancelled (your application's shutdown token, say).
    /// The monitor also stops when its last handle is dropped.
    pub fn cancellation_token(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Makes the task call `fault` with its loop count at the top of every loop iteration,
    /// outside any stage's containment (tests of the supervisor).
    #[cfg(test)]
    pub(crate) fn fault(mut self, fault: crate::task::Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// Checks the settings without spawning anything.
    pub fn validate(&self) -> MonitorResult<()> {
        validate_watch(&self.group, &self.topics)?;
        Ok(self.config.validate()?)
    }

    /// Validates the settings and spawns the monitor on the current Tokio runtime. The first
    /// collection starts immediately.
    pub fn spawn(self) -> MonitorResult<MonitorHandle> {
        let runtime = Handle::try_current().map_err(|_| MonitorError::NoRuntime)?;
        self.spawn_on(&runtime)
    }

    /// Like [`spawn`](Self::spawn), on the given runtime.
    pub fn spawn_on(self, runtime: &Handle) -> MonitorResult<MonitorHandle> {
        self.validate()?;
        // Health's deadlines are timed by this clock, calibrated on first use (up to 200 ms
        // of busy work): here, not on a runtime worker in the middle of a round.
        let _ = ksp_core::clock::global();
        let Self {
            collector,
            calculator,
            group,
            mut topics,
            config,
            cancel,
            #[cfg(test)]
            fault,
        } = self;
        let mut seen = std::collections::HashSet::new();
        topics.retain(|t| seen.insert(t.clone()));

        let (publisher, feed) = health_channel();
        let (commands, receiver) = mpsc::channel(16);
        let cancel = cancel.map_or_else(CancellationToken::new, |t| t.child_token());
        let shared = Arc::new(Shared::new());
        let span = info_span!(
            "ksp.monitor",
            group = %group,
            collector = collector.name(),
            calculator = calculator.name(),
        );
        let settings = Settings {
            collector,
            calculator,
            group,
            topics,
            config,
            #[cfg(test)]
            fault,
        };
        let supervisor = Supervisor::new(
            settings,
            publisher,
            receiver,
            shared.clone(),
            cancel.clone(),
        );
        let task = runtime.spawn(supervisor.run().instrument(span));
        Ok(MonitorHandle::new(commands, feed, shared, task, cancel))
    }
}

impl fmt::Debug for HealthMonitorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthMonitorBuilder")
            .field("collector", &self.collector.name())
            .field("calculator", &self.calculator.name())
            .field("group", &self.group)
            .field("topics", &self.topics)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
