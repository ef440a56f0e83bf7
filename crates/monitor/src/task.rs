//! The monitor task: a supervisor that restarts the actor loop if it panics, and the loop
//! itself (collect → calculate → publish, expiry, commands).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use ksp_core::{
    CollectError, HealthPublisher, HealthSnapshot, HotPartitionCalculator, LagCollector,
    LagRequest, TopicHealth, TopicLag,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::MonitorConfig;
use crate::error::{MonitorError, MonitorResult, panic_message, render_error};
use crate::handle::{Command, MonitorStatus, Shared};
use crate::tracker::TopicTracker;

/// Extra time the monitor gives a collector past its budget before abandoning it.
const COLLECT_SLACK: Duration = Duration::from_millis(100);
/// Marking health stale this late says the task was not scheduled in time.
const LATE_EXPIRY: Duration = Duration::from_millis(250);
/// First wait before restarting a monitor that panicked; doubles with each restart.
const RESTART_MIN: Duration = Duration::from_millis(100);
/// Longest wait before a restart.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A monitor that ran this long before panicking restarts after the shortest wait again.
const RESTART_RESET: Duration = Duration::from_secs(60);

/// A test hook called with the loop count at the top of every loop iteration.
#[cfg(test)]
pub(crate) type Fault = Arc<dyn Fn(u64) + Send + Sync>;

/// What the monitor is set up with; outlives restarts (topics added by `watch_topic` too).
pub(crate) struct Settings {
    pub(crate) collector: Arc<dyn LagCollector>,
    pub(crate) calculator: Arc<dyn HotPartitionCalculator>,
    pub(crate) group: String,
    pub(crate) topics: Vec<String>,
    pub(crate) config: MonitorConfig,
    #[cfg(test)]
    pub(crate) fault: Option<Fault>,
}

/// Runs the monitor, and runs it again after a backoff when it panics.
///
/// The publisher and the command channel live here, outside the loop that may panic: a
/// restart keeps the feed and the handles connected. A panic empties the feed (routing falls
/// back) until the restarted loop's first round publishes again.
pub(crate) struct Supervisor {
    settings: Settings,
    publisher: HealthPublisher,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

/// Records how the task ended, whatever ended it.
struct ExitGuard {
    shared: Arc<Shared>,
    group: String,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let status = if std::thread::panicking() {
            error!("the health monitor's supervisor panicked; routing falls back to librdkafka");
            MonitorStatus::Panicked
        } else {
            MonitorStatus::Stopped
        };
        set_running(&self.shared, &self.group, status);
    }
}

impl Supervisor {
    pub(crate) fn new(
        settings: Settings,
        publisher: HealthPublisher,
        commands: mpsc::Receiver<Command>,
        shared: Arc<Shared>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            settings,
            publisher,
            commands,
            shared,
            cancel,
        }
    }

    pub(crate) async fn run(mut self) {
        let _exit = ExitGuard {
            shared: self.shared.clone(),
            group: self.settings.group.clone(),
        };
        register_counters(&self.settings.group);
        let mut backoff = RESTART_MIN;
        loop {
            let started = Instant::now();
            set_running(&self.shared, &self.settings.group, MonitorStatus::Running);
            let run = Monitor::new(&mut self.settings, &mut self.publisher, &self.shared)
                .run(&mut self.commands, &self.cancel);
            let Err(panic) = AssertUnwindSafe(run).catch_unwind().await else {
                break;
            };
            let message = panic_message(panic.as_ref());
            if started.elapsed() >= RESTART_RESET {
                backoff = RESTART_MIN;
            }
            error!(
                panic = %message,
                restart_in = ?backoff,
                "the health monitor panicked; routing falls back until it is restarted",
            );
            {
                let mut stats = self.shared.stats();
                stats.restarts += 1;
                stats.last_panic = Some(message);
            }
            metrics::counter!("ksp_monitor_restarts_total", "group" => self.settings.group.clone())
                .increment(1);
            set_running(
                &self.shared,
                &self.settings.group,
                MonitorStatus::Restarting,
            );
            self.publisher.publish(HealthSnapshot::empty());
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = backoff.saturating_mul(2).min(RESTART_MAX);
        }
        set_running(&self.shared, &self.settings.group, MonitorStatus::Stopped);
        debug!("health monitor stopped");
        // Dropping the publisher empties the feed: nobody refreshes this health any more.
    }
}

/// Registers the monitor's counters at zero, so that their series exist (and `rate()` and
/// `increase()` in alert rules see the first increment) before anything happens.
fn register_counters(group: &str) {
    let group = group.to_owned();
    metrics::counter!("ksp_monitor_restarts_total", "group" => group.clone()).increment(0);
    for outcome in ["ok", "error"] {
        metrics::counter!("ksp_refreshes_total", "group" => group.clone(), "outcome" => outcome)
            .increment(0);
    }
}

fn set_running(shared: &Shared, group: &str, status: MonitorStatus) {
    shared.set_status(status);
    metrics::gauge!("ksp_monitor_running", "group" => group.to_owned())
        .set(f64::from(u8::from(status == MonitorStatus::Running)));
}

/// The health of one topic, and when it turns stale.
struct Tracked {
    health: Arc<TopicHealth>,
    expires_at: Instant,
}

/// A collection in progress: owns what it needs, so the loop can do other work meanwhile.
type Round = Pin<Box<dyn Future<Output = Collected> + Send>>;

struct Collected {
    result: Result<Vec<TopicLag>, CollectError>,
    elapsed: Duration,
}

/// One incarnation of the monitor's loop. Everything here starts afresh on a restart.
struct Monitor<'a> {
    settings: &'a mut Settings,
    publisher: &'a mut HealthPublisher,
    shared: &'a Shared,
    health: HashMap<String, Tracked>,
    trackers: HashMap<String, TopicTracker>,
    /// Origin of the trackers' clock.
    started: Instant,
}

impl<'a> Monitor<'a> {
    fn new(
        settings: &'a mut Settings,
        publisher: &'a mut HealthPublisher,
        shared: &'a Shared,
    ) -> Self {
        Self {
            settings,
            publisher,
            shared,
            health: HashMap::new(),
            trackers: HashMap::new(),
            started: Instant::now(),
        }
    }

    async fn run(mut self, commands: &mut mpsc::Receiver<Command>, cancel: &CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.config.refresh_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut round: Option<Round> = None;
        // Callers waiting for the round in progress, and for the next one.
        let mut answering: Vec<oneshot::Sender<MonitorResult<u64>>> = Vec::new();
        let mut queued: Vec<oneshot::Sender<MonitorResult<u64>>> = Vec::new();
        #[cfg(test)]
        let mut iteration = 0u64;
        loop {
            #[cfg(test)]
            {
                if let Some(fault) = &self.settings.fault {
                    fault(iteration);
                }
                iteration += 1;
            }
            if round.is_none() && !queued.is_empty() {
                round = Some(self.start_round());
                tick.reset();
                answering = std::mem::take(&mut queued);
            }
            let next_expiry = self.next_expiry();
            // Expiry comes before everything but cancellation: staleness takes effect at
            // `max_staleness` whatever else the task is doing.
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = sleep_until_opt(next_expiry), if next_expiry.is_some() => self.expire(),
                collected = poll_round(&mut round), if round.is_some() => {
                    round = None;
                    let outcome = self.finish_round(collected);
                    for reply in answering.drain(..) {
                        let _ = reply.send(outcome.clone());
                    }
                }
                Some(command) = commands.recv() => match command {
                    Command::Refresh(reply) => queued.push(reply),
                    Command::Watch(topic, reply) => {
                        if !self.settings.topics.contains(&topic) {
                            info!(%topic, "watching another topic");
                            self.settings.topics.push(topic);
                        }
                        queued.push(reply);
                    }
                },
                _ = tick.tick(), if round.is_none() => {
                    round = Some(self.start_round());
                }
            }
        }
    }

    /// Starts a collection of every watched topic, abandoned after its budget.
    fn start_round(&self) -> Round {
        let collector = self.settings.collector.clone();
        let group = self.settings.group.clone();
        let topics = self.settings.topics.clone();
        let budget = self.settings.config.effective_collect_timeout();
        let span = info_span!(
            "ksp.refresh",
            topics = topics.len(),
            outcome = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let round = async move {
            let started = Instant::now();
            let request = LagRequest::new(&group, &topics, budget);
            // A panicking collector is a failed collection, not a dead monitor.
            let collect = AssertUnwindSafe(collector.collect(&request)).catch_unwind();
            let result = match tokio::time::timeout(budget + COLLECT_SLACK, collect).await {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => Err(CollectError::source(
                    "the lag collector panicked",
                    panic_message(panic.as_ref()),
                )),
                Err(_elapsed) => Err(CollectError::Timeout { budget }),
            };
            let elapsed = started.elapsed();
            let current = tracing::Span::current();
            current.record("duration_ms", elapsed.as_secs_f64() * 1e3);
            current.record("outcome", if result.is_ok() { "ok" } else { "error" });
            Collected { result, elapsed }
        };
        Box::pin(round.instrument(span))
    }

    fn finish_round(&mut self, collected: Collected) -> MonitorResult<u64> {
        let Collected { result, elapsed } = collected;
        let reports = match result {
            Ok(reports) => reports,
            Err(error) => return Err(self.record_failure(elapsed, error)),
        };
        self.apply(reports);
        match self.publish() {
            Ok(version) => {
                self.record_success(elapsed, version);
                Ok(version)
            }
            Err(panic) => Err(self.record_failure(
                elapsed,
                CollectError::source("publishing health panicked", panic),
            )),
        }
    }

    /// Turns each report into health. A topic whose calculation panics keeps its previous
    /// health (until that turns stale) and starts its tracker afresh.
    fn apply(&mut self, reports: Vec<TopicLag>) {
        let now = Instant::now();
        let since_start = now.duration_since(self.started);
        let max_staleness = self.settings.config.effective_max_staleness();
        for report in reports {
            if !self.settings.topics.contains(&report.topic) {
                debug!(topic = %report.topic, "collector reported an unwatched topic; ignored");
                continue;
            }
            let topic = report.topic.clone();
            let config = &self.settings.config;
            let calculator = &*self.settings.calculator;
            let tracker = self
                .trackers
                .entry(topic.clone())
                .or_insert_with(|| TopicTracker::new(config));
            let updated = std::panic::catch_unwind(AssertUnwindSafe(|| {
                tracker.update(since_start, report, calculator)
            }));
            let mut health = match updated {
                Ok(health) => health,
                Err(panic) => {
                    warn!(
                        %topic,
                        panic = %panic_message(panic.as_ref()),
                        "computing health panicked; keeping this topic's previous health",
                    );
                    self.trackers.remove(&topic);
                    continue;
                }
            };
            let age = SystemTime::now()
                .duration_since(health.collected_at())
                .unwrap_or_default();
            let remaining = max_staleness.saturating_sub(age);
            if remaining.is_zero() {
                warn!(%topic, ?age, "collected lag is already stale");
                health = health.to_stale();
            } else {
                // Stale at the deadline even if this task is not scheduled then to mark it.
                health = health.stale_in(remaining);
            }
            self.health.insert(
                topic,
                Tracked {
                    health: Arc::new(health),
                    expires_at: now + remaining,
                },
            );
        }
    }

    /// Publishes the current health of every topic; the panic message if that panicked.
    fn publish(&mut self) -> Result<u64, String> {
        let snapshot = HealthSnapshot::new(self.health.values().map(|t| t.health.clone()));
        let group = &self.settings.group;
        let publisher = &mut *self.publisher;
        std::panic::catch_unwind(AssertUnwindSafe(move || {
            record_gauges(group, &snapshot);
            publisher.publish(snapshot)
        }))
        .map_err(|panic| panic_message(panic.as_ref()))
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.health
            .values()
            .filter(|t| !t.health.is_marked_stale())
            .map(|t| t.expires_at)
            .min()
    }

    /// Marks topics whose health outlived `max_staleness` as stale and publishes.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut expired = false;
        let mut latest = Duration::ZERO;
        for (topic, tracked) in &mut self.health {
            if !tracked.health.is_marked_stale() && tracked.expires_at <= now {
                warn!(
                    %topic,
                    age = ?tracked.health.age(),
                    max_staleness = ?self.settings.config.effective_max_staleness(),
                    "health is stale; routing for this topic falls back to librdkafka's partitioner",
                );
                latest = latest.max(now.saturating_duration_since(tracked.expires_at));
                tracked.health = Arc::new(tracked.health.to_stale());
                expired = true;
            }
        }
        if latest >= LATE_EXPIRY {
            // Routing stopped using that health at its deadline all the same (`stale_in`).
            warn!(
                late = ?latest,
                "the health monitor's task ran late: something blocks the runtime's threads (a \
                 blocking call in async code?)",
            );
        }
        if expired {
            match self.publish() {
                Ok(version) => self.shared.stats().published_version = version,
                Err(panic) => warn!(%panic, "publishing stale health panicked"),
            }
        }
    }

    fn record_success(&self, elapsed: Duration, version: u64) {
        let group = self.settings.group.clone();
        metrics::counter!("ksp_refreshes_total", "group" => group.clone(), "outcome" => "ok")
            .increment(1);
        metrics::histogram!("ksp_refresh_duration_seconds", "group" => group)
            .record(elapsed.as_secs_f64());
        let mut stats = self.shared.stats();
        if stats.consecutive_failures > 0 {
            info!(
                failures = stats.consecutive_failures,
                "lag collection recovered",
            );
        }
        stats.rounds += 1;
        stats.consecutive_failures = 0;
        stats.last_success = Some(SystemTime::now());
        stats.last_duration = Some(elapsed);
        stats.published_version = version;
        debug!(version, ?elapsed, "published health");
    }

    fn record_failure(&self, elapsed: Duration, error: CollectError) -> MonitorError {
        let rendered = render_error(&error);
        let group = self.settings.group.clone();
        // Nothing is published, but the health routing uses keeps ageing: so does its gauge.
        for tracked in self.health.values() {
            let topic = tracked.health.topic().to_owned();
            metrics::gauge!("ksp_health_age_seconds", "group" => group.clone(), "topic" => topic)
                .set(tracked.health.age().as_secs_f64());
        }
        metrics::counter!("ksp_refreshes_total", "group" => group.clone(), "outcome" => "error")
            .increment(1);
        metrics::histogram!("ksp_refresh_duration_seconds", "group" => group)
            .record(elapsed.as_secs_f64());
        let mut stats = self.shared.stats();
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
        MonitorError::Collect(Arc::new(error))
    }
}

fn record_gauges(group: &str, snapshot: &HealthSnapshot) {
    for topic in snapshot.topics() {
        let labels = [
            ("group", group.to_owned()),
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
        // Per partition: what a dashboard needs to see which consumer falls behind and why
        // (one series per partition and figure; a partition without rates sets none).
        let shares = topic.keyless_shares();
        for (p, share) in topic.partitions().iter().zip(shares) {
            let labels = [
                ("group", group.to_owned()),
                ("topic", topic.topic().to_owned()),
                ("partition", p.partition.to_string()),
            ];
            if let Some(lag) = p.lag.lag {
                metrics::gauge!("ksp_partition_lag", &labels).set(lag as f64);
            }
            metrics::gauge!("ksp_partition_keyless_share", &labels).set(share);
            let Some(rates) = p.lag.rates else { continue };
            // A figure that became unknown (a stalled consumer has no time-lag) reads NaN
            // rather than keeping its last value.
            metrics::gauge!("ksp_partition_time_lag_seconds", &labels)
                .set(rates.time_lag.map_or(f64::NAN, |t| t.as_secs_f64()));
            metrics::gauge!("ksp_partition_drain_rate", &labels)
                .set(rates.drain_rate.unwrap_or(f64::NAN));
            metrics::gauge!("ksp_partition_capacity", &labels)
                .set(rates.capacity.unwrap_or(f64::NAN));
            metrics::gauge!("ksp_partition_consumer_stopped", &labels)
                .set(f64::from(u8::from(rates.state.is_stopped())));
        }
    }
}

async fn poll_round(round: &mut Option<Round>) -> Collected {
    match round {
        Some(round) => round.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use ksp_core::testing::ManualCollector;

    use super::*;
    use crate::HealthMonitor;

    /// A monitor that panics outside every stage's containment is restarted after a backoff,
    /// the restart is counted and visible in its status, and it publishes again.
    #[tokio::test(start_paused = true)]
    async fn a_monitor_that_panics_anyway_is_restarted_with_backoff() {
        let collector = Arc::new(ManualCollector::new());
        collector.set_lags("t", &[0, 0]);
        let panics = Arc::new(AtomicU64::new(2));
        let fault: Fault = {
            let panics = panics.clone();
            Arc::new(move |iteration| {
                // Panic on the third loop iteration of the first two incarnations.
                if iteration == 2
                    && panics
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                {
                    panic!("monitor bug");
                }
            })
        };
        let monitor = HealthMonitor::builder(collector.clone())
            .group("g")
            .topics(["t"])
            .config(MonitorConfig::default().with_refresh_interval(Duration::from_secs(1)))
            .fault(fault)
            .spawn()
            .unwrap();
        let feed = monitor.feed();
        let started = Instant::now();
        // First incarnation: publishes, then panics; the feed is emptied while it waits.
        while monitor.stats().restarts == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(monitor.status(), MonitorStatus::Restarting);
        assert!(feed.load().is_empty());
        assert_eq!(monitor.stats().last_panic.as_deref(), Some("monitor bug"));
        // Restarted after 100 ms, panics again, restarted after 200 ms, then stays up.
        while monitor.stats().restarts < 2 || !monitor.is_running() || feed.load().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            started.elapsed() >= RESTART_MIN * 3,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(monitor.stats().restarts, 2);
        assert!(feed.load().topic("t").is_some());
        assert!(!feed.is_closed());
        // The handle still works.
        monitor.refresh_now().await.unwrap();
        monitor.shutdown().await.unwrap();
        assert_eq!(monitor.status(), MonitorStatus::Stopped);
    }
}
