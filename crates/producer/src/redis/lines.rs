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
    /// Another instance replaced the shared detour meanwhile: do not remember this one.
    replaced: bool,
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
    pub(crate) fn join(self: &Arc<Self>, fingerprint: u64, open: bool) -> Option<Waiting> {
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
        })
    }

    /// The partition agreed in the key's open line, if any, without joining it.
    pub(crate) fn agreed_without_waiting(&self, fingerprint: u64) -> Option<i32> {
        let line = self.map().get(&fingerprint)?.clone();
        let agreement = line.agreement();
        agreement.partition.filter(|_| !agreement.replaced)
    }

    /// Another instance replaced the key's shared detour: a line open for it must not remember
    /// the old one.
    pub(crate) fn replaced(&self, fingerprint: u64) {
        if let Some(line) = self.map().get(&fingerprint) {
            line.agreement().replaced = true;
        }
    }

    /// Closes the line of `fingerprint` if `line` is the last reference besides the map's.
    fn close_if_last(&self, fingerprint: u64, line: &Arc<Line>, router: Option<&Router>) {
        let mut map = self.map();
        if Arc::strong_count(line) != 2 {
            return;
        }
        if let Some(router) = router {
            let agreement = line.agreement();
            if let (Some(partition), Some(detour), false) =
                (agreement.partition, &agreement.detour, agreement.replaced)
            {
                router.remember_detour(detour, partition);
            }
        }
        if map.remove(&fingerprint).is_some() {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Line {
    fn agreement(&self) -> MutexGuard<'_, Agreement> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A send in its key's line, waiting for its turn. Dropped while waiting (the send was
/// cancelled), it leaves the line as if it had never joined.
pub(crate) struct Waiting {
    lines: Arc<Lines>,
    fingerprint: u64,
    line: Option<Arc<Line>>,
}

impl Waiting {
    /// Waits for this send's turn.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future gives up the place in the line.
    pub(crate) async fn turn(mut self, router: &Arc<Router>) -> Turn {
        let line = self.line.take().expect("a waiting send has its line");
        let guard = line.turn.clone().lock_owned().await;
        Turn {
            lines: self.lines.clone(),
            fingerprint: self.fingerprint,
            line,
            router: router.clone(),
            _guard: guard,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(line) = &self.line {
            self.lines.close_if_last(self.fingerprint, line, None);
        }
    }
}

/// A send's turn at the head of its key's line: held until the message is enqueued, so that
/// the key's later sends are enqueued after it. The last one out remembers the agreed detour
/// in the router's cache and closes the line; until then a new send of the key finds the line
/// and queues up, instead of taking the cached detour ahead of those waiting.
pub(crate) struct Turn {
    lines: Arc<Lines>,
    fingerprint: u64,
    line: Arc<Line>,
    router: Arc<Router>,
    _guard: OwnedMutexGuard<()>,
}

impl Turn {
    /// The partition agreed by an earlier send of the key, if any (none once another
    /// instance replaced it: ask again).
    pub(crate) fn agreed(&self) -> Option<i32> {
        let agreement = self.line.agreement();
        agreement.partition.filter(|_| !agreement.replaced)
    }

    /// Records what the key's first move came to.
    pub(crate) fn agree(&self, partition: Option<i32>, detour: NewDetour) {
        let mut agreement = self.line.agreement();
        agreement.partition = partition;
        agreement.detour = Some(detour);
        agreement.replaced = false;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.lines
            .close_if_last(self.fingerprint, &self.line, Some(&self.router));
    }
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}
