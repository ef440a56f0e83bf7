//! Counters of the send path, through the `metrics` facade.
//!
//! Handles are registered once, when the producer is built, so a send costs one atomic
//! increment (or nothing, without a recorder). Install your recorder before building the
//! producer.

use metrics::Counter;

use crate::router::{Fallback, Route};

/// Every route's counter, `ksp_messages_total{route, fallback}`, and the key cache's
/// `ksp_key_cache_total{result}`.
pub(crate) struct SendMetrics {
    routes: [Counter; ROUTES],
    cache_hit: Counter,
    cache_miss: Counter,
}

const ROUTES: usize = 11;

/// A send route's counter; `None` for [`Route::Waiting`], an answer to `decide`, never the
/// route a message is sent by.
fn slot(route: Route) -> Option<usize> {
    Some(match route {
        Route::Explicit => 0,
        Route::Sticky => 1,
        Route::Home => 2,
        Route::Moved => 3,
        Route::Fallback(Fallback::Disabled) => 4,
        Route::Fallback(Fallback::NoHealth) => 5,
        Route::Fallback(Fallback::Stale) => 6,
        Route::Fallback(Fallback::NoRoutablePartition) => 7,
        Route::Fallback(Fallback::TooFewRoutable) => 8,
        Route::Fallback(Fallback::PartitionUnknownToProducer) => 9,
        Route::Pinned => 10,
        Route::Waiting => return None,
    })
}

const LABELS: [(&str, &str); ROUTES] = [
    ("explicit", ""),
    ("sticky", ""),
    ("home", ""),
    ("moved", ""),
    ("fallback", "disabled"),
    ("fallback", "no_health"),
    ("fallback", "stale"),
    ("fallback", "no_routable_partition"),
    ("fallback", "too_few_routable"),
    ("fallback", "partition_unknown_to_producer"),
    ("pinned", ""),
];

impl SendMetrics {
    pub(crate) fn register() -> Self {
        Self {
            routes: LABELS.map(|(route, fallback)| {
                metrics::counter!("ksp_messages_total", "route" => route, "fallback" => fallback)
            }),
            cache_hit: metrics::counter!("ksp_key_cache_total", "result" => "hit"),
            cache_miss: metrics::counter!("ksp_key_cache_total", "result" => "miss"),
        }
    }

    /// One message sent by `route`; `first_move` when a key was moved for the first time
    /// (a key-cache miss).
    #[inline]
    pub(crate) fn record(&self, route: Route, first_move: bool) {
        if let Some(slot) = slot(route) {
            self.routes[slot].increment(1);
        }
        if route == Route::Moved {
            if first_move {
                self.cache_miss.increment(1);
            } else {
                self.cache_hit.increment(1);
            }
        }
    }
}
