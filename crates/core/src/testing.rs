//! Test doubles (feature `test-util`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::collector::{LagCollector, LagRequest};
use crate::error::CollectError;
use crate::lag::{PartitionLag, TopicLag};

/// A [`LagCollector`] whose answers you set by hand.
///
/// It reports the lags last given with [`set_lags`](Self::set_lags) for the requested topics
/// it knows (stamped with the current time), fails while [`fail_with`](Self::fail_with) is in
/// effect, waits [`set_delay`](Self::set_delay) first (on Tokio's clock, so paused-clock tests
/// control it), and counts its calls.
#[derive(Debug, Default)]
pub struct ManualCollector {
    state: Mutex<State>,
    calls: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    topics: BTreeMap<String, Vec<PartitionLag>>,
    failure: Option<String>,
    delay: Duration,
}

impl ManualCollector {
    /// A collector that knows no topic yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// From now on `topic` has `lags.len()` partitions, partition `i` lagging `lags[i]`.
    pub fn set_lags(&self, topic: &str, lags: &[i64]) {
        let partitions = lags
            .iter()
            .enumerate()
            .map(|(p, &lag)| PartitionLag::from_lag(p as i32, lag))
            .collect();
        self.set_partitions(topic, partitions);
    }

    /// From now on `topic` has exactly these partitions.
    pub fn set_partitions(&self, topic: &str, partitions: Vec<PartitionLag>) {
        self.state().topics.insert(topic.to_owned(), partitions);
    }

    /// From now on `topic` is not reported.
    pub fn remove_topic(&self, topic: &str) {
        self.state().topics.remove(topic);
    }

    /// From now on every collection fails with `message`.
    pub fn fail_with(&self, message: impl Into<String>) {
        self.state().failure = Some(message.into());
    }

    /// From now on collections succeed again.
    pub fn succeed(&self) {
        self.state().failure = None;
    }

    /// From now on every collection first waits `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// Collections started so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The most collections that were ever running at the same time.
    pub fn max_concurrent_calls(&self) -> u64 {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

/// Counts a collection as running until dropped (also when the collection is abandoned).
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl LagCollector for ManualCollector {
    async fn collect(&self, request: &LagRequest<'_>) -> Result<Vec<TopicLag>, CollectError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let running = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(running, Ordering::SeqCst);
        let _in_flight = InFlight(&self.in_flight);
        let delay = self.state().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let state = self.state();
        if let Some(message) = &state.failure {
            return Err(CollectError::source("manual collector", message.clone()));
        }
        let now = SystemTime::now();
        Ok(request
            .topics
            .iter()
            .filter_map(|t| {
                state
                    .topics
                    .get(t)
                    .map(|p| TopicLag::new(t.clone(), p.clone(), now))
            })
            .collect())
    }

    fn name(&self) -> &str {
        "manual"
    }
}

/// A snapshot of one topic with `partitions` partitions, all caught up and healthy except
/// `unhealthy` (lag 0 everywhere, so the shares are even): the fixture of the routing
/// benchmarks and allocation tests.
pub fn snapshot_with_unhealthy(
    topic: &str,
    partitions: i32,
    unhealthy: i32,
) -> crate::HealthSnapshot {
    let health = (0..partitions)
        .map(|p| crate::PartitionHealth::new(PartitionLag::from_lag(p, 0), 1.0, p != unhealthy))
        .collect();
    crate::HealthSnapshot::new([std::sync::Arc::new(crate::TopicHealth::new(
        topic,
        SystemTime::now(),
        health,
    ))])
}
