//! Behaviour of the monitor task, on Tokio's paused clock with a hand-driven collector.

use std::sync::Arc;
use std::time::Duration;

use ksp_core::testing::ManualCollector;
use ksp_core::{HealthFeed, HotPartitionCalculator, PartitionHealth, TopicLag};
use ksp_monitor::{HealthMonitor, MonitorConfig, MonitorError, MonitorHandle};
use tokio::time::{Instant, timeout};

const INTERVAL: Duration = Duration::from_secs(1);

fn spawn(collector: &Arc<ManualCollector>) -> MonitorHandle {
    HealthMonitor::builder(collector.clone())
        .group("g")
        .topics(["t"])
        .config(
            MonitorConfig::default()
                .with_refresh_interval(INTERVAL)
                .with_max_staleness(Duration::from_secs(3))
                .with_collect_timeout(Duration::from_millis(500)),
        )
        .spawn()
        .unwrap()
}

/// Waits (on the paused clock) for the next publication and returns its version.
async fn next_version(feed: &HealthFeed, rx: &mut tokio::sync::watch::Receiver<u64>) -> u64 {
    rx.changed().await.unwrap();
    let version = *rx.borrow_and_update();
    assert_eq!(feed.load().version(), version);
    version
}

fn routable(feed: &HealthFeed, topic: &str) -> Vec<i32> {
    feed.load()
        .topic(topic)
        .map(|t| t.routable_partitions().to_vec())
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn first_collection_happens_at_spawn() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0, 0]);
    let monitor = spawn(&collector);
    let feed = monitor.feed();
    let mut rx = feed.subscribe();
    let started = Instant::now();
    assert_eq!(next_version(&feed, &mut rx).await, 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(routable(&feed, "t"), [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn lag_change_is_published_within_one_interval() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0, 0, 0]);
    let monitor = spawn(&collector);
    let feed = monitor.feed();
    let mut rx = feed.subscribe();
    next_version(&feed, &mut rx).await;

    collector.set_lags("t", &[0, 5000, 0]);
    let changed_at = Instant::now();
    // The timeout fires a millisecond after the interval, so that it does not race the tick.
    timeout(
        INTERVAL + Duration::from_millis(1),
        next_version(&feed, &mut rx),
    )
    .await
    .expect("a new snapshot within one refresh interval");
    assert!(changed_at.elapsed() <= INTERVAL);
    assert_eq!(routable(&feed, "t"), [0, 2]);
    let snapshot = feed.load_full();
    let hot = snapshot.topic("t").unwrap().partition(1).unwrap();
    assert_eq!(hot.lag.lag, Some(5000));
    assert!(!hot.healthy);
}

#[tokio::test(start_paused = true)]
async fn failing_collector_keeps_the_last_snapshot_until_it_is_stale() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0, 5000]);
    let monitor = spawn(&collector);
    let feed = monitor.feed();
    let mut rx = feed.subscribe();
    next_version(&feed, &mut rx).await;

    collector.fail_with("coordinator unreachable");
    let err = monitor.refresh_now().await.unwrap_err();
    assert!(matches!(err, MonitorError::Collect(_)), "{err}");
    let stats = monitor.stats();
    assert_eq!(stats.failures, 1);
    assert_eq!(
        stats.last_error.as_deref(),
        Some("manual collector: coordinator unreachable")
    );

    // Still routing by the last good snapshot.
    assert_eq!(feed.load().version(), 1);
    assert!(!feed.load().topic("t").unwrap().is_stale());
    assert_eq!(routable(&feed, "t"), [0]);

    // max_staleness (3 s) after the last good collection, the health turns stale.
    let good_at = Instant::now();
    let version = next_version(&feed, &mut rx).await;
    assert_eq!(version, 2);
    let waited = good_at.elapsed();
    assert!(waited <= Duration::from_secs(3), "{waited:?}");
    let snapshot = feed.load_full();
    let t = snapshot.topic("t").unwrap();
    assert!(t.is_stale());
    // The data stays visible for health queries.
    assert_eq!(t.partition(1).unwrap().lag.lag, Some(5000));
    assert!(monitor.stats().failures >= 3, "{:?}", monitor.stats());

    // Recovery: the next good collection replaces the stale health.
    collector.succeed();
    collector.set_lags("t", &[0, 0]);
    let version = monitor.refresh_now().await.unwrap();
    let snapshot = feed.load_full();
    assert_eq!(snapshot.version(), version);
    assert!(!snapshot.topic("t").unwrap().is_stale());
    assert_eq!(routable(&feed, "t"), [0, 1]);
    assert_eq!(monitor.stats().consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn refresh_now_collects_immediately() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0]);
    let monitor = HealthMonitor::builder(collector.clone())
        .group("g")
        .topics(["t"])
        .config(MonitorConfig::default().with_refresh_interval(Duration::from_secs(60)))
        .spawn()
        .unwrap();
    let v1 = monitor.refresh_now().await.unwrap();
    let calls = collector.calls();
    let started = Instant::now();
    let v2 = monitor.refresh_now().await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(collector.calls(), calls + 1);
    assert_eq!(v2, v1 + 1);
}

#[tokio::test(start_paused = true)]
async fn slow_collections_never_overlap() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0]);
    // Each collection takes 400 ms (within the 500 ms budget); refresh every 100 ms, and ask
    // for more refreshes on top.
    collector.set_delay(Duration::from_millis(400));
    let monitor = HealthMonitor::builder(collector.clone())
        .group("g")
        .topics(["t"])
        .config(
            MonitorConfig::default()
                .with_refresh_interval(Duration::from_millis(100))
                .with_collect_timeout(Duration::from_millis(500))
                .with_max_staleness(Duration::from_secs(5)),
        )
        .spawn()
        .unwrap();
    let forced = (0..5).map(|_| monitor.refresh_now());
    for result in futures::future::join_all(forced).await {
        result.unwrap();
    }
    // Sleeping on the paused clock lets the monitor run its ticks in virtual time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // 5 forced rounds, then ticks every 100 ms that each wait for the 400 ms collection.
    assert!(collector.calls() >= 10, "{}", collector.calls());
    assert_eq!(collector.max_concurrent_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn collection_past_its_budget_is_abandoned_as_a_timeout() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0]);
    collector.set_delay(Duration::from_secs(10));
    let monitor = spawn(&collector);
    let started = Instant::now();
    let err = monitor.refresh_now().await.unwrap_err();
    assert!(
        monitor
            .stats()
            .last_error
            .unwrap()
            .contains("did not finish within 500ms"),
        "{err}"
    );
    // The first (tick) collection and the forced one, each abandoned after 500 ms + slack.
    assert!(
        started.elapsed() < Duration::from_millis(1300),
        "{:?}",
        started.elapsed()
    );
    assert!(monitor.feed().load().is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_collecting_and_empties_the_feed() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0]);
    let monitor = spawn(&collector);
    monitor.refresh_now().await.unwrap();
    let feed = monitor.feed();
    assert!(!feed.load().is_empty());

    monitor.shutdown().await.unwrap();
    assert!(!monitor.is_running());
    let calls = collector.calls();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(collector.calls(), calls);
    assert!(feed.load().is_empty());
    assert!(feed.is_closed());
    assert!(matches!(
        monitor.refresh_now().await,
        Err(MonitorError::Stopped)
    ));
    // Idempotent.
    monitor.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_a_collection_in_progress() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0]);
    collector.set_delay(Duration::from_secs(3600));
    let monitor = HealthMonitor::builder(collector.clone())
        .group("g")
        .topics(["t"])
        .config(
            MonitorConfig::default()
                .with_refresh_interval(Duration::from_secs(3600))
                .with_collect_timeout(Duration::from_secs(3600))
                .with_max_staleness(Duration::from_secs(3600)),
        )
        .spawn()
        .unwrap();
    tokio::task::yield_now().await;
    assert_eq!(collector.calls(), 1);
    let started = Instant::now();
    monitor.shutdown().await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_the_monitor() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0]);
    let monitor = spawn(&collector);
    let feed = monitor.feed();
    let clone = monitor.clone();
    drop(monitor);
    clone.refresh_now().await.unwrap();
    drop(clone);
    tokio::task::yield_now().await;
    let calls = collector.calls();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(collector.calls(), calls);
    assert!(feed.is_closed());
    assert!(feed.load().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_outside_cancellation_token_stops_the_monitor() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0]);
    let token = tokio_util::sync::CancellationToken::new();
    let monitor = HealthMonitor::builder(collector.clone())
        .group("g")
        .topics(["t"])
        .cancellation_token(token.clone())
        .spawn()
        .unwrap();
    monitor.refresh_now().await.unwrap();
    token.cancel();
    tokio::task::yield_now().await;
    assert!(!monitor.is_running());
    // Our own stop never cancels the caller's token.
    let other = tokio_util::sync::CancellationToken::new();
    let monitor = HealthMonitor::builder(collector.clone())
        .group("g")
        .topics(["t"])
        .cancellation_token(other.clone())
        .spawn()
        .unwrap();
    monitor.shutdown().await.unwrap();
    assert!(!other.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn watch_topic_adds_a_topic_and_collects_it() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0]);
    collector.set_lags("u", &[0, 0, 0]);
    let monitor = spawn(&collector);
    monitor.refresh_now().await.unwrap();
    assert!(monitor.feed().load().topic("u").is_none());

    monitor.watch_topic("u").await.unwrap();
    assert_eq!(routable(&monitor.feed(), "u"), [0, 1, 2]);
    // Twice is fine.
    monitor.watch_topic("u").await.unwrap();
    let err = monitor.watch_topic("not a topic").await.unwrap_err();
    assert!(err.to_string().contains("\"not a topic\""), "{err}");
}

#[tokio::test(start_paused = true)]
async fn partitions_added_to_a_topic_appear_in_the_next_snapshot() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0, 0]);
    let monitor = spawn(&collector);
    monitor.refresh_now().await.unwrap();
    assert_eq!(
        monitor.feed().load().topic("t").unwrap().partition_count(),
        2
    );
    collector.set_lags("t", &[0, 0, 0, 0]);
    monitor.refresh_now().await.unwrap();
    assert_eq!(
        monitor.feed().load().topic("t").unwrap().partition_count(),
        4
    );
    assert_eq!(routable(&monitor.feed(), "t"), [0, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn topics_the_collector_stops_reporting_keep_their_health_until_stale() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0]);
    let monitor = spawn(&collector);
    monitor.refresh_now().await.unwrap();
    collector.remove_topic("t");
    monitor.refresh_now().await.unwrap();
    assert!(!monitor.feed().load().topic("t").unwrap().is_stale());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(monitor.feed().load().topic("t").unwrap().is_stale());
}

struct Panicking;

impl HotPartitionCalculator for Panicking {
    fn calculate(&self, lag: &TopicLag) -> Vec<PartitionHealth> {
        if lag.topic == "boom" {
            panic!("calculator bug");
        }
        lag.partitions
            .iter()
            .map(|p| PartitionHealth::new(p.clone(), 1.0, true))
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_calculator_does_not_stop_the_monitor() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0]);
    collector.set_lags("boom", &[0]);
    let monitor = HealthMonitor::builder(collector.clone())
        .group("g")
        .topics(["t", "boom"])
        .calculator(Arc::new(Panicking))
        .spawn()
        .unwrap();
    monitor.refresh_now().await.unwrap();
    let snapshot = monitor.feed().load_full();
    assert!(snapshot.topic("t").is_some());
    assert!(snapshot.topic("boom").is_none());
    assert!(monitor.is_running());
}

#[tokio::test(start_paused = true)]
async fn unwatched_topics_in_a_report_are_ignored() {
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0]);
    collector.set_lags("other", &[0]);
    let monitor = spawn(&collector);
    monitor.refresh_now().await.unwrap();
    assert!(monitor.feed().load().topic("other").is_none());
}

#[test]
fn spawning_outside_a_runtime_is_an_error() {
    let err = HealthMonitor::builder(Arc::new(ManualCollector::new()))
        .group("g")
        .topics(["t"])
        .spawn()
        .unwrap_err();
    assert!(matches!(err, MonitorError::NoRuntime), "{err}");
}

#[tokio::test]
async fn invalid_settings_are_rejected_before_spawning() {
    let err = HealthMonitor::builder(Arc::new(ManualCollector::new()))
        .group("g")
        .topics(["t"])
        .config(MonitorConfig::default().with_refresh_interval(Duration::ZERO))
        .spawn()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid `refresh_interval` = 0ns: expected between 10ms and 3600s"
    );
}

struct PanickingCollector;

#[async_trait::async_trait]
impl ksp_core::LagCollector for PanickingCollector {
    async fn collect(
        &self,
        _: &ksp_core::LagRequest<'_>,
    ) -> Result<Vec<TopicLag>, ksp_core::CollectError> {
        panic!("collector bug");
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_collector_is_a_failed_collection_not_a_dead_monitor() {
    let monitor = HealthMonitor::builder(Arc::new(PanickingCollector))
        .group("g")
        .topics(["t"])
        .spawn()
        .unwrap();
    assert!(monitor.refresh_now().await.is_err());
    assert!(monitor.refresh_now().await.is_err());
    assert_eq!(monitor.status(), ksp_monitor::MonitorStatus::Running);
    let stats = monitor.stats();
    assert!(stats.failures >= 2, "{stats:?}");
    assert_eq!(
        stats.last_error.as_deref(),
        Some("the lag collector panicked: collector bug")
    );
    assert!(monitor.feed().load().is_empty());
    monitor.shutdown().await.unwrap();
    assert_eq!(monitor.status(), ksp_monitor::MonitorStatus::Stopped);
}

/// Regression: `ksp_health_age_seconds` was written only when health was published, so while
/// every collection failed it stayed at the age the last good health had when published.
#[tokio::test]
async fn the_health_age_gauge_keeps_ageing_while_collections_fail() {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let collector = Arc::new(ManualCollector::new());
    collector.set_lags("t", &[0, 0]);
    let monitor = HealthMonitor::builder(collector.clone())
        .group("g")
        .topics(["t"])
        .config(
            MonitorConfig::default()
                .with_refresh_interval(Duration::from_millis(100))
                .with_max_staleness(Duration::from_secs(60)),
        )
        .spawn()
        .unwrap();
    let feed = monitor.feed();
    timeout(Duration::from_secs(10), async {
        while feed.load().topic("t").is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a first health");
    collector.fail_with("broker down");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let text = prometheus.render();
    let age = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"ksp_health_age_seconds{group="g",topic="t"} "#))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no age gauge:\n{text}"));
    assert!(age >= 1.0, "age {age} s after 1.2 s of failed collections");
    assert!(
        feed.load().topic("t").is_some_and(|t| !t.is_stale()),
        "the health is still in use"
    );
}
