//! Sends that wait under strict key order: each key's sends in one line, first come first
//! served, within the bounds of [`KeyOrderConfig`]; a send that reaches a bound goes to its
//! key's old partition, which pins the key there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::router::{KeyOrderConfig, KeyStep, Router};

/// The waits of strict key order in one producer.
pub(crate) struct Holds {
    config: KeyOrderConfig,
    lines: Arc<KeyLines>,
    messages: AtomicU64,
    bytes: AtomicU64,
    metrics: HoldMetrics,
}

struct HoldMetrics {
    held: Counter,
    released: Counter,
    waited: Histogram,
    overflow: [Counter; 4],
    waiting: Gauge,
}

/// Why a send stopped waiting and went to its key's old partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Bound {
    Messages = 0,
    Bytes = 1,
    Time = 2,
    /// A blocking send on a thread that may not block.
    CannotWait = 3,
}

/// A send in its key's line: the line's turn, held until the message is enqueued.
pub(crate) struct HeldTurn {
    _turn: LineTurn,
}

impl Holds {
    pub(crate) fn new(config: KeyOrderConfig) -> Self {
        let overflow = ["messages", "bytes", "time", "cannot_wait"]
            .map(|bound| metrics::counter!("ksp_key_order_overflow_total", "bound" => bound));
        // Counted by the router's view of key moves; registered here with strict key order's
        // other series so that it exists from the start.
        metrics::counter!("ksp_key_order_transitions_dropped_total").increment(0);
        Self {
            config,
            lines: Arc::default(),
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            metrics: HoldMetrics {
                held: metrics::counter!("ksp_key_order_held_total"),
                released: metrics::counter!("ksp_key_order_released_total"),
                waited: metrics::histogram!("ksp_key_order_hold_seconds"),
                overflow,
                waiting: metrics::gauge!("ksp_key_order_held_messages"),
            },
        }
    }

    /// Whether a send of this key must go through its line (a send of the key waits there).
    #[inline]
    pub(crate) fn in_line(&self, router: &Router, topic: &str, key: &[u8]) -> bool {
        !self.lines.none_open() && self.lines.is_open(router.key_fingerprint(topic, key))
    }

    /// Decides a keyed message's partition under strict key order, waiting in its key's line
    /// and then for its old partition to drain, at most `max_hold` from the call (the send at
    /// the head of a line waits at most that long, so the wait for the turn is bounded too).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future gives up the send's place in the line and its share of
    /// the bounds; nothing was sent.
    pub(crate) async fn route(
        &self,
        router: &Router,
        topic: &str,
        key: &[u8],
        size: usize,
    ) -> (crate::router::Decision, HeldTurn) {
        // The bounds and the deadline count from joining the line: a send queued behind its
        // key's waiting sends is waiting too.
        let ticket = self.lines.join(router.key_fingerprint(topic, key));
        let deadline = Instant::now() + self.config.max_hold;
        let reservation = self.reserve(size);
        let flush = ticket.flush.clone();
        if let Err(bound) = &reservation {
            // Over a bound: the key's waiting sends go to its old partition now, so that this
            // one does not wait behind them.
            flush.raise(*bound);
        }
        let turn = HeldTurn {
            _turn: ticket.turn().await,
        };
        let Some(mut changes) = router.key_order_changes() else {
            return (router.route(topic, None, Some(key), size), turn);
        };
        loop {
            changes.borrow_and_update();
            let partition = match router.route_in_order_sized(topic, key, size) {
                KeyStep::Go(decision) => {
                    if let Ok(r) = &reservation {
                        self.metrics.released.increment(1);
                        self.metrics.waited.record(r.since.elapsed().as_secs_f64());
                    }
                    return (decision, turn);
                }
                KeyStep::Wait { partition } => partition,
            };
            if let Err(bound) = reservation {
                return (self.overflow(router, topic, key, partition, bound), turn);
            }
            let flushed = flush.notify.notified();
            if let Some(bound) = flush.raised() {
                return (self.overflow(router, topic, key, partition, bound), turn);
            }
            tokio::select! {
                () = flushed => {
                    let bound = flush.raised().unwrap_or(Bound::Messages);
                    return (self.overflow(router, topic, key, partition, bound), turn);
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return (self.overflow(router, topic, key, partition, Bound::Time), turn);
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return (self.overflow(router, topic, key, partition, Bound::Time), turn);
                }
            }
        }
    }

    /// The decision for a sender that may not wait: where the key goes now, or its old
    /// partition (pinned) when it would have to wait.
    pub(crate) fn route_now(
        &self,
        router: &Router,
        topic: &str,
        key: &[u8],
    ) -> crate::router::Decision {
        match router.route_in_order(topic, key) {
            KeyStep::Go(decision) => decision,
            KeyStep::Wait { partition } => {
                self.overflow(router, topic, key, partition, Bound::CannotWait)
            }
        }
    }

    fn overflow(
        &self,
        router: &Router,
        topic: &str,
        key: &[u8],
        partition: i32,
        bound: Bound,
    ) -> crate::router::Decision {
        self.metrics.overflow[bound as usize].increment(1);
        tracing::debug!(
            topic,
            partition,
            ?bound,
            "a key's move could not wait longer: it stays on its old partition"
        );
        router.pin(topic, key, partition)
    }

    fn reserve(&self, size: usize) -> Result<Reservation<'_>, Bound> {
        let size = size as u64;
        if self.messages.fetch_add(1, Ordering::AcqRel) >= self.config.max_held_messages {
            self.messages.fetch_sub(1, Ordering::AcqRel);
            return Err(Bound::Messages);
        }
        if self.bytes.fetch_add(size, Ordering::AcqRel) + size > self.config.max_held_bytes {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            self.messages.fetch_sub(1, Ordering::AcqRel);
            return Err(Bound::Bytes);
        }
        self.metrics.held.increment(1);
        self.metrics.waiting.increment(1.0);
        Ok(Reservation {
            holds: self,
            size,
            since: std::time::Instant::now(),
        })
    }
}

/// A waiting send's share of the bounds.
struct Reservation<'a> {
    holds: &'a Holds,
    size: u64,
    since: std::time::Instant,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.holds.messages.fetch_sub(1, Ordering::AcqRel);
        self.holds.bytes.fetch_sub(self.size, Ordering::AcqRel);
        self.holds.metrics.waiting.decrement(1.0);
    }
}

/// The open lines, by key fingerprint: each line's turn and how many sends are in it.
#[derive(Default)]
struct KeyLines {
    map: Mutex<LineMap>,
    open: AtomicUsize,
}

/// Per key: the line's turn, the sends in it, and its flush.
type LineMap = HashMap<u64, (Arc<tokio::sync::Mutex<()>>, usize, Arc<Flush>)>;

/// Raised when a send of the key found a bound reached: the send waiting at the head of the
/// line stops waiting, and those behind it follow it to the key's old partition.
#[derive(Default)]
pub(crate) struct Flush {
    /// `Bound as u8 + 1`, or 0.
    raised: std::sync::atomic::AtomicU8,
    notify: tokio::sync::Notify,
}

impl Flush {
    fn raise(&self, bound: Bound) {
        self.raised.store(bound as u8 + 1, Ordering::Release);
        // One waiter at most (the head of the line); the permit is kept if it is not waiting.
        self.notify.notify_one();
    }

    fn raised(&self) -> Option<Bound> {
        match self.raised.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Bound::Messages),
            2 => Some(Bound::Bytes),
            3 => Some(Bound::Time),
            _ => Some(Bound::CannotWait),
        }
    }
}

impl KeyLines {
    fn map(&self) -> MutexGuard<'_, LineMap> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    fn none_open(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
    }

    fn is_open(&self, fingerprint: u64) -> bool {
        self.map().contains_key(&fingerprint)
    }

    /// Joins the key's line (opening it), synchronously: a send of the key made after this
    /// call queues behind this one.
    fn join(self: &Arc<Self>, fingerprint: u64) -> LineTicket {
        let mut map = self.map();
        let entry = map.entry(fingerprint).or_insert_with(|| {
            self.open.fetch_add(1, Ordering::AcqRel);
            (Arc::default(), 0, Arc::default())
        });
        entry.1 += 1;
        LineTicket {
            line: entry.0.clone(),
            flush: entry.2.clone(),
            member: Member {
                lines: self.clone(),
                fingerprint,
            },
        }
    }
}

/// A send's membership of its key's line; the last one out closes the line.
struct Member {
    lines: Arc<KeyLines>,
    fingerprint: u64,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut map = self.lines.map();
        if let Some(entry) = map.get_mut(&self.fingerprint) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.fingerprint);
                self.lines.open.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// A place in a key's line. Dropped, it leaves the line.
struct LineTicket {
    line: Arc<tokio::sync::Mutex<()>>,
    flush: Arc<Flush>,
    member: Member,
}

impl LineTicket {
    /// Waits for the head of the line (the mutex is fair: first come, first served).
    async fn turn(self) -> LineTurn {
        let LineTicket { line, member, .. } = self;
        let guard = line.lock_owned().await;
        LineTurn {
            _guard: guard,
            _member: member,
        }
    }
}

/// The head of a key's line (fields drop in order: the turn passes, then the send leaves).
struct LineTurn {
    _guard: OwnedMutexGuard<()>,
    _member: Member,
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::time::{Duration, SystemTime};

    use ksp_core::{HealthSnapshot, PartitionHealth, PartitionLag, TopicHealth, health_channel};

    use super::*;
    use crate::router::{Route, RouterConfig};

    fn snapshot(healthy: &[bool]) -> HealthSnapshot {
        let partitions = healthy
            .iter()
            .enumerate()
            .map(|(p, &h)| {
                // The consumer never commits past 0: nothing drains.
                PartitionHealth::new(
                    PartitionLag::from_offsets(p as i32, Some(0), None, 100),
                    f64::from(u8::from(h)),
                    h,
                )
            })
            .collect();
        HealthSnapshot::new([Arc::new(TopicHealth::new(
            "t",
            SystemTime::now(),
            partitions,
        ))])
    }

    /// Three sends of a key that must wait, each done when its `produce` would go on: the
    /// decision and the time it took.
    async fn three_sends(
        order: KeyOrderConfig,
    ) -> (Vec<(usize, crate::router::Decision, Duration)>, Holds) {
        let (mut publisher, feed) = health_channel();
        let router =
            Router::new(feed, &RouterConfig::default().with_key_order(order.clone())).unwrap();
        publisher.publish(snapshot(&[true, true]));
        router.observe_health();
        let key = (0..)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| router.partitioner().home(Some(k), 2) == Some(0))
            .unwrap();
        publisher.publish(snapshot(&[false, true]));
        router.observe_health();
        assert_eq!(
            router.route_in_order("t", &key),
            KeyStep::Wait { partition: 0 }
        );

        let holds = Holds::new(order);
        let done = StdMutex::new(Vec::new());
        let start = Instant::now();
        let send = |i: usize| {
            let (holds, router, key, done) = (&holds, &router, &key, &done);
            async move {
                let (decision, turn) = holds.route(router, "t", key, 10).await;
                done.lock().unwrap().push((i, decision, start.elapsed()));
                drop(turn);
            }
        };
        futures::future::join3(send(0), send(1), send(2)).await;
        let done = done.into_inner().unwrap();
        // In call order, each to the old partition (pinned).
        assert_eq!(done.iter().map(|d| d.0).collect::<Vec<_>>(), [0, 1, 2]);
        for (_, decision, _) in &done {
            assert_eq!(decision.partition, Some(0));
            assert_eq!(decision.route, Route::Pinned);
        }
        // Every reservation was given back.
        assert_eq!(holds.messages.load(Ordering::Acquire), 0);
        assert_eq!(holds.bytes.load(Ordering::Acquire), 0);
        assert!(holds.lines.none_open());
        (done, holds)
    }

    /// Review finding: the sends queued behind a waiting send of their key started their
    /// `max_hold` only at their turn (three sends waited three times `max_hold`).
    #[tokio::test(start_paused = true)]
    async fn sends_queued_behind_a_waiting_send_share_its_deadline() {
        let order = KeyOrderConfig::strict().with_max_hold(Duration::from_secs(1));
        let (done, _) = three_sends(order).await;
        for (_, _, elapsed) in &done {
            assert!(*elapsed <= Duration::from_millis(1001), "{elapsed:?}");
        }
    }

    /// Review finding: a send over `max_held_messages` still waited behind its key's waiting
    /// sends (holding its room in the local queue) instead of going at once.
    #[tokio::test(start_paused = true)]
    async fn a_send_over_a_bound_sends_its_keys_waiting_sends_on_at_once() {
        let order = KeyOrderConfig::strict()
            .with_max_hold(Duration::from_secs(30))
            .with_max_held_messages(2);
        let (done, _) = three_sends(order).await;
        for (_, _, elapsed) in &done {
            assert_eq!(*elapsed, Duration::ZERO);
        }
    }
}
