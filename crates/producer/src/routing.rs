//! Smart routing's running parts, shared by both producers: the router, the monitor that
//! feeds it, the task that keeps remembered detours in step with health, the Redis L2; and
//! what they tell about health.

use std::sync::Arc;

use ksp_core::{HealthFeed, HealthSnapshot};
use ksp_monitor::{MonitorError, MonitorHandle, MonitorResult, MonitorStats, MonitorStatus};
use tokio_util::task::AbortOnDropHandle;

use crate::router::{Decision, Fallback, KeyStep, Route, Router};
use crate::summary::TopicSummary;

/// The running parts of smart routing.
pub(crate) struct Routing {
    pub(crate) router: Arc<Router>,
    pub(crate) monitor: MonitorHandle,
    pub(crate) _follower: AbortOnDropHandle<()>,
    /// Under strict key order: the sends that wait.
    pub(crate) holds: Option<crate::holds::Holds>,
    #[cfg(feature = "redis")]
    pub(crate) l2: Option<crate::redis::L2>,
}

/// A decision ready to be acted on.
pub(crate) struct Routed {
    pub(crate) decision: Decision,
    /// Whether a key was moved for the first time (a key-cache miss).
    pub(crate) first_move: bool,
    /// Placed by strict key order: the partition must not be left to librdkafka's
    /// partitioner (it would send the key home, around its line and its barriers).
    pub(crate) in_order: bool,
    /// For a send that went through its key's line: hold until the message is enqueued (its
    /// drop lets the key's next send go). Boxed: every send in flight carries a `Routed`, few
    /// carry a turn.
    pub(crate) turn: Option<Box<KeyTurn>>,
}

/// The head of a key's line.
pub(crate) enum KeyTurn {
    /// A key's first move, agreed with the fleet.
    #[cfg(feature = "redis")]
    Fleet(#[expect(dead_code, reason = "held for its drop")] crate::redis::Turn),
    /// A send under strict key order.
    Held(#[expect(dead_code, reason = "held for its drop")] crate::holds::HeldTurn),
}

impl Routed {
    pub(crate) fn plain(decision: Decision, first_move: bool) -> Self {
        Self {
            decision,
            first_move,
            in_order: false,
            turn: None,
        }
    }

    /// Marks a decision of strict key order.
    pub(crate) fn in_order(mut self) -> Self {
        self.in_order = true;
        self
    }

    /// Whether a send refused because librdkafka does not know its partition yet may be sent
    /// again without one.
    pub(crate) fn may_resend_unpartitioned(&self) -> bool {
        self.decision.route != Route::Explicit && !self.in_order
    }

    /// The decision when smart routing is disabled.
    pub(crate) fn disabled(partition: Option<i32>) -> Self {
        let route = if partition.is_some() {
            Route::Explicit
        } else {
            Route::Fallback(Fallback::Disabled)
        };
        Self::plain(Decision { partition, route }, false)
    }
}

/// A decision, or the news that the message must go through its key's line (a first move to
/// agree with the fleet, or earlier sends of the key still waiting in it).
pub(crate) enum Pending {
    Ready(Routed),
    #[cfg_attr(
        not(feature = "redis"),
        expect(
            dead_code,
            reason = "without Redis every key's move is decided locally"
        )
    )]
    InLine,
    /// Strict key order: the key's move waits, or earlier sends of the key wait.
    Held,
}

impl Routing {
    /// Decides synchronously, unless the message must go through its key's line.
    #[inline]
    pub(crate) fn route(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        size: usize,
    ) -> Pending {
        // Keyless, left to the router: no line, hold or detour is ever involved.
        if let (None, None) = (key, partition) {
            return Pending::Ready(Routed::plain(self.router.route_keyless(topic, size), false));
        }
        if let (Some(holds), Some(key), None) = (&self.holds, key, partition) {
            if !holds.in_line(&self.router, topic, key)
                && let KeyStep::Go(decision) = self.router.route_in_order_sized(topic, key, size)
            {
                return Pending::Ready(Routed::plain(decision, false).in_order());
            }
            return Pending::Held;
        }
        // Keyed, left to the router, relaxed order, no fleet to agree with: unless the key
        // moves, nothing is remembered.
        if let (Some(key), None) = (key, partition)
            && self.fleet_free()
            && let Some(decision) = self.router.route_keyed_home(topic, key, size)
        {
            return Pending::Ready(Routed::plain(decision, false));
        }
        let (decision, new_detour) = self.router.route_detailed(topic, partition, key, size);
        #[cfg(feature = "redis")]
        if let (Some(l2), Some(key), None) = (&self.l2, key, partition)
            && l2.needs_line(topic, key, new_detour.is_some())
        {
            return Pending::InLine;
        }
        let first_move = new_detour.is_some();
        if let (Some(detour), Some(partition)) = (new_detour, decision.partition) {
            self.router.remember_detour(&detour, partition);
        }
        Pending::Ready(Routed::plain(decision, first_move))
    }

    /// Whether no Redis L2 coordinates key moves (nothing to ask it before a keyed send).
    #[inline(always)]
    fn fleet_free(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.l2.is_none();
        #[cfg(not(feature = "redis"))]
        true
    }

    /// Under strict key order, decides a keyed message's partition after waiting in its key's
    /// line and for its old partition to drain (bounded).
    pub(crate) async fn route_held(&self, topic: &str, key: &[u8], size: usize) -> Routed {
        let Some(holds) = &self.holds else {
            return Routed::plain(self.router.route(topic, None, Some(key), size), false);
        };
        let (decision, turn) = holds.route(&self.router, topic, key, size).await;
        let mut routed = Routed::plain(decision, false).in_order();
        routed.turn = Some(Box::new(KeyTurn::Held(turn)));
        routed
    }

    /// [`route_held`](Self::route_held) for a sender that may not wait.
    pub(crate) fn route_held_now(&self, topic: &str, key: &[u8], size: usize) -> Routed {
        let decision = match &self.holds {
            Some(holds) => holds.route_now(&self.router, topic, key),
            None => self.router.route(topic, None, Some(key), size),
        };
        Routed::plain(decision, false).in_order()
    }

    /// Routes a keyed message through its key's line (see
    /// [`L2::route_in_line`](crate::redis::L2::route_in_line)).
    #[cfg(feature = "redis")]
    pub(crate) async fn route_in_line(&self, topic: &str, key: &[u8], size: usize) -> Routed {
        match &self.l2 {
            Some(l2) => l2.route_in_line(&self.router, topic, key, size).await,
            None => Routed::plain(self.router.route(topic, None, Some(key), size), false),
        }
    }

    /// The decision for a keyed message that should go through its key's line, taken without
    /// waiting (by a sender that may not block): the partition the line agreed, if any,
    /// otherwise this router's own.
    #[cfg(feature = "redis")]
    pub(crate) fn route_without_waiting(&self, topic: &str, key: &[u8], size: usize) -> Routed {
        let agreed = self
            .l2
            .as_ref()
            .and_then(|l2| l2.agreed_without_waiting(topic, key))
            .filter(|&p| self.router.is_routable(topic, p));
        match agreed {
            Some(partition) => Routed::plain(
                Decision {
                    partition: Some(partition),
                    route: Route::Moved,
                },
                false,
            ),
            None => Routed::plain(self.router.route(topic, None, Some(key), size), false),
        }
    }

    /// Where a message would go now, without sending it or remembering anything.
    pub(crate) fn peek(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        size: usize,
    ) -> Decision {
        self.router.route_detailed(topic, partition, key, size).0
    }
}

/// What both producers tell about health, from their routing (none when disabled).
pub(crate) struct Inspect<'a>(pub(crate) Option<&'a Routing>);

impl Inspect<'_> {
    pub(crate) fn feed(&self) -> HealthFeed {
        self.0
            .map_or_else(HealthFeed::disconnected, |r| r.router.feed().clone())
    }

    pub(crate) fn health(&self) -> Arc<HealthSnapshot> {
        self.feed().load_full()
    }

    /// A raw reading of the router's clock, the one it judges health's deadlines by. Without
    /// smart routing the feed is disconnected and empty, so no deadline is judged: 0, without
    /// reading (and so calibrating, up to 200 ms) a clock nothing else in this mode uses.
    fn now(&self) -> u64 {
        self.0.map_or(0, |routing| routing.router.now())
    }

    pub(crate) fn healthy_partitions(&self, topic: &str) -> Option<Vec<i32>> {
        let routing = self.0?;
        let snapshot = routing.router.feed().load_full();
        let now = routing.router.now();
        snapshot
            .topic(topic)
            .filter(|t| !t.is_stale_at(now))
            .map(|t| t.routable_partitions().to_vec())
    }

    pub(crate) fn topic_summary(&self, topic: &str) -> Option<TopicSummary> {
        let snapshot = self.health();
        let now = self.now();
        snapshot
            .topic(topic)
            .map(|t| TopicSummary::at(snapshot.version(), t, now))
    }

    pub(crate) fn health_summary(&self) -> Vec<TopicSummary> {
        let snapshot = self.health();
        let now = self.now();
        let mut topics: Vec<_> = snapshot
            .topics()
            .map(|t| TopicSummary::at(snapshot.version(), t, now))
            .collect();
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        topics
    }

    pub(crate) fn monitor(&self) -> MonitorResult<&MonitorHandle> {
        self.0.map(|r| &r.monitor).ok_or(MonitorError::Disabled)
    }

    pub(crate) fn monitor_stats(&self) -> Option<MonitorStats> {
        self.0.map(|r| r.monitor.stats())
    }

    pub(crate) fn monitor_status(&self) -> Option<MonitorStatus> {
        self.0.map(|r| r.monitor.status())
    }

    #[cfg(feature = "redis")]
    pub(crate) fn redis_status(&self) -> Option<crate::redis::RedisStatus> {
        self.0?.l2.as_ref().map(crate::redis::L2::status)
    }
}
