//! Where lag comes from: the [`LagCollector`] trait.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::CollectError;
use crate::lag::TopicLag;

/// What the monitor asks a collector for on each refresh.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LagRequest<'a> {
    /// The consumer group whose lag is wanted.
    pub group: &'a str,
    /// The topics whose lag is wanted.
    pub topics: &'a [String],
    /// How long the collection may take, retries included. The monitor abandons the collection
    /// after this long (and a little slack), so a collector should give up on its own first.
    pub budget: Duration,
}

impl<'a> LagRequest<'a> {
    /// A request for the lag of `topics` for `group`, to be answered within `budget`.
    pub fn new(group: &'a str, topics: &'a [String], budget: Duration) -> Self {
        Self {
            group,
            topics,
            budget,
        }
    }
}

/// A source of consumer-group lag.
///
/// The monitor calls [`collect`](LagCollector::collect) once per refresh, never two at once
/// for the same monitor. Implementations are used as `Arc<dyn LagCollector>`; implement with
/// `#[async_trait]`:
///
/// ```
/// use std::time::SystemTime;
///
/// use async_trait::async_trait;
/// use ksp_core::{CollectError, LagCollector, LagRequest, PartitionLag, TopicLag};
///
/// /// Every partition of every topic has the same made-up lag.
/// struct Constant(i64);
///
/// #[async_trait]
/// impl LagCollector for Constant {
///     async fn collect(&self, request: &LagRequest<'_>) -> Result<Vec<TopicLag>, CollectError> {
///         Ok(request
///             .topics
///             .iter()
///             .map(|t| {
///                 let partitions = (0..4).map(|p| PartitionLag::from_lag(p, self.0)).collect();
///                 TopicLag::new(t.clone(), partitions, SystemTime::now())
///             })
///             .collect())
///     }
/// }
/// ```
///
/// # Contract
///
/// * Return one [`TopicLag`] per topic it could read. A topic left out keeps its previous
///   health until that turns stale; an `Err` does the same for every topic.
/// * Stamp each report with the time its offsets were read, not the time it was returned.
/// * Blocking I/O must not run on the calling task: use `tokio::task::spawn_blocking`.
/// * Cancel safety: the monitor may drop the future (on shutdown, or when the budget is
///   exceeded); dropping it must not leave anything in a state that breaks the next call.
#[async_trait]
pub trait LagCollector: Send + Sync + 'static {
    /// Lag of `request.topics` for `request.group`.
    async fn collect(&self, request: &LagRequest<'_>) -> Result<Vec<TopicLag>, CollectError>;

    /// A short name for logs.
    fn name(&self) -> &str {
        "custom"
    }

    /// No [`collect`](Self::collect) for `group` is expected for a while: release what is kept
    /// only to make the next one fast (clients, connections). The next `collect` sets it up
    /// again.
    ///
    /// Called by a fleet of instances sharing one collection, on an instance that has followed
    /// the fleet's leader for a while. It is called from an async task, so it must not block,
    /// and a collector shared by several callers may be collecting for them meanwhile. A
    /// collector that wraps another should pass it on. The default keeps everything.
    fn idle(&self, group: &str) {
        let _ = group;
    }
}

#[async_trait]
impl<T: LagCollector + ?Sized> LagCollector for std::sync::Arc<T> {
    async fn collect(&self, request: &LagRequest<'_>) -> Result<Vec<TopicLag>, CollectError> {
        (**self).collect(request).await
    }

    fn name(&self) -> &str {
        (**self).name()
    }

    fn idle(&self, group: &str) {
        (**self).idle(group);
    }
}
