//! Per-key lines: while a key's first move is agreed with the fleet, its later sends in this
//! instance wait behind it, then go where it went, in the order they were sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::OwnedMutexGuard;

use crate::router::{NewDetour, Router};

/// The open lines, by key fingerprint.
#[derive(Default)]
pub(crate) struct Lines {
    map: Mutex<HashMap<u64, Arc<Line>>>,
    /// How many lines are open: the send path looks a key up only when some are.
    open: AtomicUsize,
}

/// The sends of one key, first come first served.
#[derive(Default)]
struct Line {
    turn: Arc<tokio::sync::Mutex<()>>,
    state: Mutex<Agreement>,
}

/// What the key's first move came to.
#[derive(Default)]
struct Agreement {
    /// The partition the key's sends take, once agreed.
    partition: Option<i32>,
    /// The detour to remember when the line closes.
    detour: Option<NewDetour>,
    /// How many times another instance replaced the shared detour while the line was open.
    replacements: u64,
    /// `replacements` when the fleet was asked for the agreed partition: one noticed since
    /// means the fleet may have moved on, so the agreement is neither followed nor remembered.
    asked_at: u64,
}

impl Agreement {
    /// The agreed partition, unless another instance replaced the detour since it was asked.
    fn partition(&self) -> Option<i32> {
        self.partition
            .filter(|_| self.replacements == self.asked_at)
    }
}

impl Lines {
    fn map(&self) -> MutexGuard<'_, HashMap<u64, Arc<Line>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether no line is open (one atomic load: the common case on the send path).
    #[inline]
    pub(crate) fn none_open(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
    }

    /// Whether the key of `fingerprint` has an open line.
    pub(crate) fn is_open(&self, fingerprint: u64) -> bool {
        self.map().contains_key(&fingerprint)
    }

    /// Joins the key's line, opening it if `open` (a first move) and it is not open yet.
    /// `router` is where the member that leaves last remembers the agreed detour.
    pub(crate) fn join(
        self: &Arc<Self>,
        fingerprint: u64,
        open: bool,
        router: &Arc<Router>,
    ) -> Option<Waiting> {
        let mut map = self.map();
        let line = match map.get(&fingerprint) {
            Some(line) => line.clone(),
            None if open => {
                let line = Arc::new(Line::default());
                map.insert(fingerprint, line.clone());
                self.open.fetch_add(1, Ordering::AcqRel);
                line
            }
            None => return None,
        };
        Some(Waiting {
            lines: self.clone(),
            fingerprint,
            line: Some(line),
            router: router.clone(),
        })
    }

    /// The partition agreed in the key's open line, if any, without joining it.
    pub(crate) fn agreed_without_waiting(&self, fingerprint: u64) -> Option<i32> {
        // Read under the map's lock, without a clone of the line: a member leaving counts the
        // line's references to tell whether it is the last.
        let map = self.map();
        map.get(&fingerprint)?.agreement().partition()
    }

    /// Another instance replaced the key's shared detour: a line open for it must not remember
    /// the old one.
    pub(crate) fn replaced(&self, fingerprint: u64) {
        if let Some(line) = self.map().get(&fingerprint) {
            line.agreement().replacements += 1;
        }
    }

    /// A member (`line`, its reference) leaves the line of `fingerprint`. The last one out
    /// closes it, remembering the agreed detour in `router` (if a partition was agreed and no
    /// other instance replaced it meanwhile). The reference is dropped under the map's lock,
    /// so that of two members leaving at once, the second sees the first gone.
    fn leave(&self, fingerprint: u64, line: Arc<Line>, router: &Router) {
        let mut map = self.map();
        let last = Arc::strong_count(&line) == 2
            && map
                .get(&fingerprint)
                .is_some_and(|open| Arc::ptr_eq(open, &line));
        if last {
            let agreement = line.agreement();
            if let (Some(partition), Some(detour)) = (agreement.partition(), &agreement.detour) {
                router.remember_detour(detour, partition);
            }
            drop(agreement);
            map.remove(&fingerprint);
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
        drop(line);
        drop(map);
    }
}

impl Line {
    fn agreement(&self) -> MutexGuard<'_, Agreement> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A send in its key's line, waiting for its turn. Dropped while waiting (the send was
/// cancelled), it leaves the line as if it had never joined, and closes it if it was the last
/// one in it.
pub(crate) struct Waiting {
    lines: Arc<Lines>,
    fingerprint: u64,
    /// Held until the turn comes, so that a send cancelled meanwhile leaves through `Drop`.
    line: Option<Arc<Line>>,
    router: Arc<Router>,
}

impl Waiting {
    /// Waits for this send's turn.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future gives up the place in the line (and closes the line
    /// if no other send is in it).
    pub(crate) async fn turn(mut self) -> Turn {
        let turn = self
            .line
            .as_ref()
            .expect("a waiting send has its line")
            .turn
            .clone();
        let guard = turn.lock_owned().await;
        Turn {
            lines: self.lines.clone(),
            fingerprint: self.fingerprint,
            line: self.line.take(),
            router: self.router.clone(),
            _guard: guard,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            self.lines.leave(self.fingerprint, line, &self.router);
        }
    }
}

/// A send's turn at the head of its key's line: held until the message is enqueued, so that
/// the key's later sends are enqueued after it. Until the line closes (see [`Lines::leave`])
/// a new send of the key finds it and queues up, instead of taking the cached detour ahead of
/// those waiting.
pub(crate) struct Turn {
    lines: Arc<Lines>,
    fingerprint: u64,
    /// Taken when the turn ends (see [`Lines::leave`]).
    line: Option<Arc<Line>>,
    router: Arc<Router>,
    _guard: OwnedMutexGuard<()>,
}

impl Turn {
    /// The partition agreed by an earlier send of the key, if any (none once another
    /// instance replaced it: ask again).
    pub(crate) fn agreed(&self) -> Option<i32> {
        self.line().agreement().partition()
    }

    /// How many times another instance replaced the key's shared detour while its line was
    /// open: read before asking the fleet, and given back to [`agree`](Self::agree).
    pub(crate) fn replacements(&self) -> u64 {
        self.line().agreement().replacements
    }

    /// Records what the key's first move came to, asked of the fleet when `seen`
    /// replacements had been noticed. One noticed since stands: the fleet may have moved on
    /// after answering, so the agreement is not remembered (the next send asks again).
    pub(crate) fn agree(&self, partition: Option<i32>, detour: NewDetour, seen: u64) {
        let mut agreement = self.line().agreement();
        agreement.partition = partition;
        agreement.detour = Some(detour);
        agreement.asked_at = seen;
    }

    fn line(&self) -> &Line {
        self.line
            .as_ref()
            .expect("a turn holds its line until it ends")
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            self.lines.leave(self.fingerprint, line, &self.router);
        }
    }
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use futures::poll;
    use ksp_core::health_channel;
    use ksp_core::testing::snapshot_with_unhealthy;

    use super::*;
    use crate::router::RouterConfig;

    /// A router on topic `t` (4 partitions, partition 1 unhealthy), a key it moves, and no
    /// line open yet.
    struct Fixture {
        _publisher: ksp_core::HealthPublisher,
        router: Arc<Router>,
        key: Vec<u8>,
        detour: NewDetour,
        fingerprint: u64,
        lines: Arc<Lines>,
    }

    fn fixture() -> Fixture {
        let (mut publisher, feed) = health_channel();
        publisher.publish(snapshot_with_unhealthy("t", 4, 1));
        let router = Arc::new(Router::new(feed, &RouterConfig::default()).unwrap());
        let (key, detour) = (0..100u32)
            .find_map(|i| {
                let key = format!("k{i}").into_bytes();
                let detour = router.route_detailed("t", None, Some(&key), 1).1?;
                Some((key, detour))
            })
            .expect("one of 100 keys hashes to the unhealthy partition");
        Fixture {
            _publisher: publisher,
            fingerprint: router.key_fingerprint("t", &key),
            router,
            key,
            detour,
            lines: Arc::new(Lines::default()),
        }
    }

    #[tokio::test]
    async fn a_send_cancelled_as_its_turn_came_closes_the_line() {
        let Fixture {
            _publisher,
            router,
            key,
            detour,
            fingerprint,
            lines,
        } = fixture();

        let first = lines.join(fingerprint, true, &router).unwrap().turn().await;
        first.agree(Some(2), detour, first.replacements());
        let mut second = Box::pin(lines.join(fingerprint, false, &router).unwrap().turn());
        assert!(
            poll!(second.as_mut()).is_pending(),
            "waits behind the first"
        );

        // The first send is enqueued: the second's turn is ready, but the second send is
        // cancelled before it is polled again.
        drop(first);
        drop(second);

        assert!(!lines.is_open(fingerprint), "the line closed");
        assert!(lines.none_open(), "the send path skips the lookup again");
        let (decision, new_detour) = router.route_detailed("t", None, Some(&key), 1);
        assert!(new_detour.is_none(), "the agreed detour is remembered");
        assert_eq!(decision.partition, Some(2));
    }

    #[tokio::test]
    async fn a_send_cancelled_while_an_earlier_one_holds_its_turn_leaves_the_line() {
        let Fixture {
            _publisher,
            router,
            key,
            detour,
            fingerprint,
            lines,
        } = fixture();

        let first = lines.join(fingerprint, true, &router).unwrap().turn().await;
        let mut second = Box::pin(lines.join(fingerprint, false, &router).unwrap().turn());
        assert!(poll!(second.as_mut()).is_pending());
        drop(second);
        assert!(lines.is_open(fingerprint), "the first still holds its turn");

        first.agree(Some(2), detour, first.replacements());
        drop(first);
        assert!(lines.none_open() && !lines.is_open(fingerprint));
        assert!(router.route_detailed("t", None, Some(&key), 1).1.is_none());
    }

    #[tokio::test]
    async fn a_send_cancelled_before_its_first_poll_leaves_the_agreed_detour_remembered() {
        let Fixture {
            _publisher,
            router,
            key,
            detour,
            fingerprint,
            lines,
        } = fixture();

        let first = lines.join(fingerprint, true, &router).unwrap().turn().await;
        let second = lines.join(fingerprint, false, &router).unwrap();
        first.agree(Some(2), detour, first.replacements());
        drop(first);
        assert!(
            lines.is_open(fingerprint),
            "the second is still in the line"
        );
        drop(second);

        assert!(lines.none_open() && !lines.is_open(fingerprint));
        let (decision, new_detour) = router.route_detailed("t", None, Some(&key), 1);
        assert!(new_detour.is_none(), "the agreed detour is remembered");
        assert_eq!(decision.partition, Some(2));
    }

    #[tokio::test]
    async fn a_replacement_noticed_while_the_fleet_was_asked_is_not_forgotten() {
        let Fixture {
            _publisher,
            router,
            key,
            detour,
            fingerprint,
            lines,
        } = fixture();

        let first = lines.join(fingerprint, true, &router).unwrap().turn().await;
        let seen = first.replacements();
        // While the claim is in flight, another instance replaces the shared detour.
        lines.replaced(fingerprint);
        first.agree(Some(2), detour, seen);
        assert_eq!(first.agreed(), None, "the next send asks the fleet again");
        drop(first);

        assert!(lines.none_open());
        assert!(
            router.route_detailed("t", None, Some(&key), 1).1.is_some(),
            "the replaced agreement is not remembered"
        );
    }
}
