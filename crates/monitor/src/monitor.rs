//! The health monitor: a Tokio task that collects lag, computes health and publishes snapshots.

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use ksp_core::{
    CollectError, Damper, DampingConfig, HealthFeed, HealthPublisher, HealthSnapshot,
    HotPartitionCalculator, LagCollector, LagRequest, RelativeCalculator, TopicHealth, TopicLag,
    health_channel,
};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::{MonitorConfig, validate_topic};
use crate::error::{MonitorError, MonitorResult};

/// Extra time the monitor gives a collector past its budget before abandoning it.
const COLLECT_SLACK: Duration = Duration::from_millis(100);

/// The health monitor.
///
/// One Tokio task per monitor. Its loop waits on the refresh tick, on commands from its
/// [`MonitorHandle`] (refresh now, watch another topic), on the next staleness deadline and on
/// cancellation. Each round collects lag, computes health, builds a new immutable
/// [`HealthSnapshot`], stores it and notifies subscribers. Rounds never overlap: a slow
/// collection delays the next tick instead of running beside it.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use std::time::Duration;
/// # use ksp_monitor::{HealthMonitor, KafkaLagCollector};
/// # use rdkafka::ClientConfig;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mut kafka = ClientConfig::new();
/// kafka.set("bootstrap.servers", "localhost:9092");
/// let collector = KafkaLagCollector::builder(&kafka).build()?;
/// let monitor = HealthMonitor::builder(Arc::new(collector))
///     .group("order-processors")
///     .topics(["orders"])
///     .refresh_interval(Duration::from_secs(2))
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
    pub fn builder(collector: Arc<dyn LagCollector>) -> HealthMonitorBuilder {
        HealthMonitorBuilder {
            collector,
            calculator: Arc::new(RelativeCalculator::default()),
            config: MonitorConfig::new(String::new(), Vec::<String>::new()),
            cancel: None,
        }
    }
}

/// Configures and spawns a [`HealthMonitor`].
#[must_use = "a builder does nothing until `spawn` is called"]
pub struct HealthMonitorBuilder {
    collector: Arc<dyn LagCollector>,
    calculator: Arc<dyn HotPartitionCalculator>,
    config: MonitorConfig,
    cancel: Option<CancellationToken>,
}

impl HealthMonitorBuilder {
    /// The consumer group to watch.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.config.group = group.into();
        self
    }

    /// The topics to watch (more can be added later with [`MonitorHandle::watch_topic`]).
    pub fn topics<T: Into<String>>(mut self, topics: impl IntoIterator<Item = T>) -> Self {
        self.config.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// How lag becomes health. Default: [`RelativeCalculator::default`].
    pub fn calculator(mut self, calculator: Arc<dyn HotPartitionCalculator>) -> Self {
        self.calculator = calculator;
        self
    }

    /// See [`MonitorConfig::refresh_interval`].
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.config.refresh_interval = interval;
        self
    }

    /// See [`MonitorConfig::max_staleness`].
    pub fn max_staleness(mut self, staleness: Duration) -> Self {
        self.config.max_staleness = Some(staleness);
        self
    }

    /// See [`MonitorConfig::damping`].
    pub fn damping(mut self, damping: DampingConfig) -> Self {
        self.config.damping = damping;
        self
    }

    /// See [`MonitorConfig::collect_timeout`].
    pub fn collect_timeout(mut self, timeout: Duration) -> Self {
        self.config.collect_timeout = Some(timeout);
        self
    }

    /// Replaces every setting at once.
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

    /// Validates the settings and spawns the monitor on the current Tokio runtime. The first
    /// collection starts immediately.
    pub fn spawn(self) -> MonitorResult<MonitorHandle> {
        let runtime = Handle::try_current().map_err(|_| MonitorError::NoRuntime)?;
        self.spawn_on(&runtime)
    }

    /// Like [`spawn`](Self::spawn), on the given runtime.
    pub fn spawn_on(self, runtime: &Handle) -> MonitorResult<MonitorHandle> {
        let Self {
            collector,
            calculator,
            mut config,
            cancel,
        } = self;
        config.validate()?;
        let mut seen = std::collections::HashSet::new();
        config.topics.retain(|t| seen.insert(t.clone()));

        let (publisher, feed) = health_channel();
        let (commands, receiver) = mpsc::channel(16);
        let cancel = cancel.map_or_else(CancellationToken::new, |t| t.child_token());
        let stats = Arc::new(Mutex::new(MonitorStats::default()));
        let status = Arc::new(AtomicU8::new(MonitorStatus::Running as u8));
        let span = info_span!(
            "ksp.monitor",
            group = %config.group,
            collector = collector.name(),
            calculator = calculator.name(),
        );
        let task = Monitor {
            collector,
            calculator,
            max_staleness: config.effective_max_staleness(),
            collect_timeout: config.effective_collect_timeout(),
            refresh_interval: config.refresh_interval,
            group: config.group,
            topics: config.topics,
            health: HashMap::new(),
            dampers: HashMap::new(),
            damping: config.damping,
            started: Instant::now(),
            publisher,
            stats: stats.clone(),
            status: status.clone(),
            cancel: cancel.clone(),
        };
        let task = runtime.spawn(task.run(receiver).instrument(span));
        Ok(MonitorHandle {
            inner: Arc::new(HandleInner {
                commands,
                feed,
                stats,
                status,
                task: Mutex::new(Some(task)),
                _stop_on_drop: cancel.clone().drop_guard(),
                cancel,
            }),
        })
    }
}

impl fmt::Debug for HealthMonitorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthMonitorBuilder")
            .field("collector", &self.collector.name())
            .field("calculator", &self.calculator.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Whether the monitor task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MonitorStatus {
    /// Collecting.
    Running = 0,
    /// Shut down, cancelled, or every handle was dropped.
    Stopped = 1,
    /// The task panicked (a bug: collector and calculator panics are caught and counted as
    /// failures). The feed was emptied, so routing falls back.
    Panicked = 2,
}

impl MonitorStatus {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Running,
            2 => Self::Panicked,
            _ => Self::Stopped,
        }
    }
}

/// Counters and the last outcome of a monitor, for health checks and dashboards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MonitorStats {
    /// Collections attempted.
    pub rounds: u64,
    /// Collections that failed (error or timeout).
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u64,
    /// The last failure, rendered with its causes.
    pub last_error: Option<String>,
    /// When the last successful collection finished.
    pub last_success: Option<SystemTime>,
    /// How long the last collection took.
    pub last_duration: Option<Duration>,
    /// Version of the snapshot published last.
    pub published_version: u64,
}

/// Controls a running [`HealthMonitor`]. Cheap to clone; the monitor stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct MonitorHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    commands: mpsc::Sender<Command>,
    feed: HealthFeed,
    stats: Arc<Mutex<MonitorStats>>,
    status: Arc<AtomicU8>,
    task: Mutex<Option<JoinHandle<()>>>,
    cancel: CancellationToken,
    _stop_on_drop: DropGuard,
}

enum Command {
    Refresh(oneshot::Sender<MonitorResult<u64>>),
    Watch(String, oneshot::Sender<MonitorResult<u64>>),
}

impl MonitorHandle {
    /// The health feed this monitor publishes to.
    pub fn feed(&self) -> HealthFeed {
        self.inner.feed.clone()
    }

    /// Runs a collection now (after the one in progress, if any) and returns the version of
    /// the snapshot it published.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: if the future is dropped the collection still happens, its result is just
    /// not reported.
    pub async fn refresh_now(&self) -> MonitorResult<u64> {
        let (reply, result) = oneshot::channel();
        self.send(Command::Refresh(reply)).await?;
        result.await.map_err(|_| MonitorError::Stopped)?
    }

    /// Adds `topic` to the watched topics and collects right away. Watching a topic twice is
    /// not an error.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe in the same way as [`refresh_now`](Self::refresh_now): once sent, the topic
    /// is added even if the future is dropped.
    pub async fn watch_topic(&self, topic: impl Into<String>) -> MonitorResult<u64> {
        let topic = topic.into();
        validate_topic(&topic)?;
        let (reply, result) = oneshot::channel();
        self.send(Command::Watch(topic, reply)).await?;
        result.await.map_err(|_| MonitorError::Stopped)?
    }

    async fn send(&self, command: Command) -> MonitorResult<()> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| MonitorError::Stopped)
    }

    /// Counters and the last outcome.
    pub fn stats(&self) -> MonitorStats {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the monitor task is still running.
    pub fn is_running(&self) -> bool {
        self.status() == MonitorStatus::Running
    }

    /// Whether the task runs, was stopped, or panicked.
    pub fn status(&self) -> MonitorStatus {
        MonitorStatus::from_u8(self.inner.status.load(Ordering::SeqCst))
    }

    /// Stops the monitor and waits for its task to end. A collection in progress is abandoned
    /// (its blocking I/O, if any, finishes in the background within its own timeout). The feed
    /// is left empty, so routing falls back. Calling it again returns `Ok` at once.
    ///
    /// Returns [`MonitorError::Panicked`] if the task had panicked.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the monitor is stopped as soon as this is first polled; dropping the future
    /// only skips waiting for the task to end.
    pub async fn shutdown(&self) -> MonitorResult<()> {
        self.inner.cancel.cancel();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match task {
            Some(task) => task.await.map_err(|e| match e.try_into_panic() {
                Ok(panic) => MonitorError::Panicked(panic_message(panic.as_ref())),
                Err(_) => MonitorError::Stopped,
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for MonitorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorHandle")
            .field("running", &self.is_running())
            .field("feed", &self.inner.feed)
            .finish()
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

struct Tracked {
    health: Arc<TopicHealth>,
    expires_at: Instant,
}

struct Monitor {
    collector: Arc<dyn LagCollector>,
    calculator: Arc<dyn HotPartitionCalculator>,
    group: String,
    topics: Vec<String>,
    refresh_interval: Duration,
    max_staleness: Duration,
    collect_timeout: Duration,
    health: HashMap<String, Tracked>,
    /// Flap damping per topic; outlives each round's health.
    dampers: HashMap<String, Damper>,
    damping: DampingConfig,
    /// Origin of the dampers' clock.
    started: Instant,
    publisher: HealthPublisher,
    stats: Arc<Mutex<MonitorStats>>,
    status: Arc<AtomicU8>,
    cancel: CancellationToken,
}

/// Records how the monitor task ended, whatever ended it. Dropped last in `run` (and during
/// unwinding if the task panics), after which the publisher, dropped with the task, has
/// emptied the feed.
struct ExitGuard(Arc<AtomicU8>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "the health monitor task panicked; routing falls back to librdkafka's partitioner"
            );
            self.0
                .store(MonitorStatus::Panicked as u8, Ordering::SeqCst);
        } else {
            self.0.store(MonitorStatus::Stopped as u8, Ordering::SeqCst);
        }
    }
}

impl Monitor {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let _exit = ExitGuard(self.status.clone());
        let mut tick = tokio::time::interval(self.refresh_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let next_expiry = self.next_expiry();
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                Some(command) = commands.recv() => {
                    let (reply, result) = match command {
                        Command::Refresh(reply) => (reply, self.round().await),
                        Command::Watch(topic, reply) => {
                            if !self.topics.contains(&topic) {
                                info!(%topic, "watching another topic");
                                self.topics.push(topic);
                            }
                            (reply, self.round().await)
                        }
                    };
                    let _ = reply.send(result);
                    tick.reset();
                }
                () = sleep_until_opt(next_expiry), if next_expiry.is_some() => self.expire(),
                _ = tick.tick() => {
                    let _ = self.round().await;
                }
            }
        }
        debug!("health monitor stopped");
        // Dropping the publisher empties the feed: nobody refreshes this health any more.
    }

    /// One collect → calculate → publish round.
    async fn round(&mut self) -> MonitorResult<u64> {
        let started = Instant::now();
        let budget = self.collect_timeout;
        let span = info_span!(
            "ksp.refresh",
            topics = self.topics.len(),
            outcome = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let collected = {
            let request = LagRequest::new(&self.group, &self.topics, budget);
            // A panicking collector is a failed collection, not a dead monitor.
            let collect = tokio::time::timeout(
                budget + COLLECT_SLACK,
                AssertUnwindSafe(self.collector.collect(&request)).catch_unwind(),
            );
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Err(MonitorError::Stopped),
                result = collect.instrument(span.clone()) => result,
            }
        };
        let elapsed = started.elapsed();
        span.record("duration_ms", elapsed.as_secs_f64() * 1e3);
        let result = match collected {
            Ok(Ok(Ok(reports))) => {
                span.record("outcome", "ok");
                self.apply(reports);
                let version = self.publish();
                self.record_success(elapsed, version);
                Ok(version)
            }
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(panic)) => Err(CollectError::source(
                "the lag collector panicked",
                panic_message(panic.as_ref()),
            )),
            Err(_elapsed) => Err(CollectError::Timeout { budget }),
        };
        result.map_err(|error| {
            span.record("outcome", "error");
            let error = Arc::new(error);
            self.record_failure(elapsed, &error);
            MonitorError::Collect(error)
        })
    }

    fn apply(&mut self, reports: Vec<TopicLag>) {
        let now = Instant::now();
        for report in reports {
            if !self.topics.contains(&report.topic) {
                debug!(topic = %report.topic, "collector reported an unwatched topic; ignored");
                continue;
            }
            let calculator = &self.calculator;
            let calculated =
                std::panic::catch_unwind(AssertUnwindSafe(|| calculator.calculate(&report)));
            let mut health = match calculated {
                Ok(health) => health,
                Err(panic) => {
                    warn!(
                        topic = %report.topic,
                        panic = %panic_message(panic.as_ref()),
                        "health calculator panicked; keeping this topic's previous health",
                    );
                    continue;
                }
            };
            let damping = self.damping;
            self.dampers
                .entry(report.topic.clone())
                .or_insert_with(|| Damper::new(damping))
                .apply(now.duration_since(self.started), &mut health);
            let age = SystemTime::now()
                .duration_since(report.collected_at)
                .unwrap_or_default();
            let remaining = self.max_staleness.saturating_sub(age);
            let mut health = TopicHealth::new(&report.topic, report.collected_at, health);
            if remaining.is_zero() {
                warn!(topic = %report.topic, ?age, "collected lag is already stale");
                health = health.to_stale();
            }
            self.health.insert(
                report.topic,
                Tracked {
                    health: Arc::new(health),
                    expires_at: now + remaining,
                },
            );
        }
    }

    fn publish(&mut self) -> u64 {
        let snapshot = HealthSnapshot::new(self.health.values().map(|t| t.health.clone()));
        for topic in snapshot.topics() {
            let labels = [
                ("group", self.group.clone()),
                ("topic", topic.topic().to_owned()),
            ];
            let routable = if topic.is_stale() {
                0
            } else {
                topic.routable_partitions().len()
            };
            metrics::gauge!("ksp_healthy_partitions", &labels).set(routable as f64);
            metrics::gauge!("ksp_partitions", &labels).set(f64::from(topic.partition_count()));
            metrics::gauge!("ksp_health_age_seconds", &labels).set(topic.age().as_secs_f64());
            metrics::gauge!("ksp_health_stale", &labels).set(f64::from(u8::from(topic.is_stale())));
        }
        self.publisher.publish(snapshot)
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.health
            .values()
            .filter(|t| !t.health.is_stale())
            .map(|t| t.expires_at)
            .min()
    }

    /// Marks topics whose health outlived `max_staleness` as stale and publishes.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut expired = false;
        for (topic, tracked) in &mut self.health {
            if !tracked.health.is_stale() && tracked.expires_at <= now {
                warn!(
                    %topic,
                    age = ?tracked.health.age(),
                    max_staleness = ?self.max_staleness,
                    "health is stale; routing for this topic falls back to librdkafka's partitioner",
                );
                tracked.health = Arc::new(tracked.health.to_stale());
                expired = true;
            }
        }
        if expired {
            let version = self.publish();
            self.lock_stats().published_version = version;
        }
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, MonitorStats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record_success(&self, elapsed: Duration, version: u64) {
        let mut stats = self.lock_stats();
        if stats.consecutive_failures > 0 {
            info!(
                failures = stats.consecutive_failures,
                "lag collection recovered",
            );
        }
        metrics::counter!("ksp_refreshes_total", "group" => self.group.clone(), "outcome" => "ok")
            .increment(1);
        metrics::histogram!("ksp_refresh_duration_seconds", "group" => self.group.clone())
            .record(elapsed.as_secs_f64());
        stats.rounds += 1;
        stats.consecutive_failures = 0;
        stats.last_success = Some(SystemTime::now());
        stats.last_duration = Some(elapsed);
        stats.published_version = version;
        debug!(version, ?elapsed, "published health");
    }

    fn record_failure(&self, elapsed: Duration, error: &CollectError) {
        let rendered = render_error(error);
        let mut stats = self.lock_stats();
        metrics::counter!("ksp_refreshes_total", "group" => self.group.clone(), "outcome" => "error")
            .increment(1);
        metrics::histogram!("ksp_refresh_duration_seconds", "group" => self.group.clone())
            .record(elapsed.as_secs_f64());
        stats.rounds += 1;
        stats.failures += 1;
        stats.consecutive_failures += 1;
        stats.last_duration = Some(elapsed);
        // Warn on the first failure of a streak; the streak stays visible in the stats and
        // in the stale-health warnings without a warning per refresh.
        if stats.consecutive_failures == 1 {
            warn!(error = %rendered, "lag collection failed; keeping the last health");
        } else {
            debug!(
                error = %rendered,
                consecutive = stats.consecutive_failures,
                "lag collection failed again",
            );
        }
        stats.last_error = Some(rendered);
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// An error with its chain of causes, `a: b: c`.
pub(crate) fn render_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut rendered = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        rendered.push_str(": ");
        rendered.push_str(&cause.to_string());
        source = cause.source();
    }
    rendered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_guard_records_a_panic_and_a_normal_end() {
        let status = Arc::new(AtomicU8::new(MonitorStatus::Running as u8));
        let guard = ExitGuard(status.clone());
        let task = tokio::spawn(async move {
            let _guard = guard;
            panic!("monitor bug");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(
            MonitorStatus::from_u8(status.load(Ordering::SeqCst)),
            MonitorStatus::Panicked
        );

        let status = Arc::new(AtomicU8::new(MonitorStatus::Running as u8));
        drop(ExitGuard(status.clone()));
        assert_eq!(
            MonitorStatus::from_u8(status.load(Ordering::SeqCst)),
            MonitorStatus::Stopped
        );
    }
}
