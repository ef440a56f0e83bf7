//! The rdkafka client context of the smart producers: librdkafka's statistics reach the
//! callback given to [`statistics`](crate::AsyncSmartProducerBuilder::statistics).

use std::fmt;
use std::sync::Arc;

use rdkafka::ClientContext;
use rdkafka::statistics::Statistics;

/// A callback for librdkafka's statistics.
pub(crate) type OnStatistics = Arc<dyn Fn(&Statistics) + Send + Sync>;

/// The client context of [`AsyncSmartProducer`](crate::AsyncSmartProducer)'s rdkafka
/// producer: as rdkafka's default context, except that librdkafka's statistics (every
/// `statistics.interval.ms`) go to the callback given to the builder's
/// [`statistics`](crate::AsyncSmartProducerBuilder::statistics).
#[derive(Clone, Default)]
pub struct SmartContext {
    pub(crate) statistics: Option<OnStatistics>,
}

impl fmt::Debug for SmartContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmartContext")
            .field("statistics", &self.statistics.is_some())
            .finish()
    }
}

impl ClientContext for SmartContext {
    fn stats(&self, statistics: Statistics) {
        on_statistics(self.statistics.as_ref(), &statistics);
    }
}

/// Hands `statistics` to the callback, or logs them as rdkafka's default context does.
///
/// The callback runs on rdkafka's polling thread, which also completes deliveries: a panic
/// there would stop every delivery report for good. It is caught, and those statistics are
/// dropped.
pub(crate) fn on_statistics(callback: Option<&OnStatistics>, statistics: &Statistics) {
    match callback {
        Some(callback) => {
            let call = std::panic::AssertUnwindSafe(|| callback(statistics));
            if std::panic::catch_unwind(call).is_err() {
                tracing::error!("the statistics callback panicked; these statistics are dropped");
            }
        }
        None => tracing::info!(?statistics, "librdkafka statistics"),
    }
}
