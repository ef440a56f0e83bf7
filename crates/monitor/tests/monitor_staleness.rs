//! Staleness takes effect at `max_staleness`, whatever else the monitor task is doing; a long
//! run of flapping health never stops the monitor. On Tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use ksp_core::testing::ManualCollector;
use ksp_core::{
    CollectError, HealthFeed, LagCollector, LagRequest, PartitionLag, ThresholdCalculator, TopicLag,
};
use ksp_monitor::{HealthMonitor, MonitorConfig, MonitorHandle, MonitorStatus};
use tokio::time::Instant;

const STALENESS: Duration = Duration::from_secs(3);

fn spawn(collector: &Arc<ManualCollector>, collect_timeout: Duration) -> MonitorHandle {
    HealthMonitor::builder(collector.clone())
        .group("g")
        .topics(["t"])
        .config(
            MonitorConfig::default()
                .with_refresh_interval(Duration::from_secs(1))
                .with_max_staleness(STALENESS)
                .with_collect_timeout(collect_timeout),
        )
        .spawn()
        .unwrap()
}

fn is_stale(feed: &HealthFeed) -> bool {
    feed.load().topic("t").is_some_and(|t| t.is_stale())
}

/// Regression: the expiry deadline was not polled while a round ran (up to `collect_timeout`
/// plus slack), so health stayed routable past `max_staleness` while a slow collection hung.
#[tokio::test(start_paused = true)]
async fn stale_health_is_marked_at_max_staleness_while_a_round_runs() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0, 0]);
    let monitor = spawn(&collector, STALENESS);
    monitor.refresh_now().await.unwrap();
    let collected = Instant::now();
    // From now on every collection hangs until its budget (3 s) runs out.
    collector.set_delay(Duration::from_secs(3600));
    let feed = monitor.feed();
    tokio::time::sleep_until(collected + STALENESS - Duration::from_millis(1)).await;
    assert!(!is_stale(&feed), "fresh until max_staleness");
    tokio::time::sleep_until(collected + STALENESS + Duration::from_millis(1)).await;
    assert!(
        is_stale(&feed),
        "stale at max_staleness although a round is running"
    );
}

/// Regression: the task's `biased` select served commands before the expiry deadline, so a
/// caller calling `refresh_now` in a loop during an outage kept stale health in use.
#[tokio::test(start_paused = true)]
async fn refresh_commands_do_not_keep_stale_health_in_use() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0, 0]);
    let monitor = spawn(&collector, Duration::from_millis(500));
    monitor.refresh_now().await.unwrap();
    let collected = Instant::now();
    collector.fail_with("coordinator unreachable");
    collector.set_delay(Duration::from_millis(200));
    // A queue of refresh requests, always at least one waiting.
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let monitor = monitor.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    let _ = monitor.refresh_now().await;
                }
            })
        })
        .collect();
    let feed = monitor.feed();
    tokio::time::sleep_until(collected + STALENESS + Duration::from_millis(1)).await;
    assert!(
        is_stale(&feed),
        "stale at max_staleness despite the refresh requests"
    );
    for caller in callers {
        caller.abort();
    }
}

/// Partition 3 flips between healthy and hot on every collection; 0 is healthy; 1 and 2 are
/// always hot.
#[derive(Default)]
struct Flapping {
    calls: AtomicU64,
}

#[async_trait]
impl LagCollector for Flapping {
    async fn collect(&self, request: &LagRequest<'_>) -> Result<Vec<TopicLag>, CollectError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let flipping = if call.is_multiple_of(2) { 0 } else { 5000 };
        let partitions = [0, 5000, 5000, flipping]
            .iter()
            .enumerate()
            .map(|(p, &lag)| PartitionLag::from_lag(p as i32, lag))
            .collect();
        Ok(vec![TopicLag::new(
            request.topics[0].clone(),
            partitions,
            SystemTime::now(),
        )])
    }
}

/// Regression: with default settings, four partitions, two always unhealthy and one flipping
/// every 2 s refresh, the damper's hold arithmetic panicked after about 340 s and killed the
/// monitor for good (status `Panicked`, feed emptied). A simulated day of it.
#[tokio::test(start_paused = true)]
async fn monitor_survives_a_day_of_flapping_health() {
    let collector = Arc::new(Flapping::default());
    let monitor = HealthMonitor::builder(collector.clone())
        .group("g")
        .topics(["t"])
        .calculator(Arc::new(ThresholdCalculator::default()))
        .config(MonitorConfig::default().with_refresh_interval(Duration::from_secs(2)))
        .spawn()
        .unwrap();
    let day = Duration::from_secs(24 * 3600);
    let started = Instant::now();
    while started.elapsed() < day {
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(
            monitor.status(),
            MonitorStatus::Running,
            "after {:?}",
            started.elapsed()
        );
        assert!(!monitor.feed().load().is_empty());
    }
    assert!(collector.calls.load(Ordering::Relaxed) >= 43_000);
    assert_eq!(monitor.stats().failures, 0);
}
