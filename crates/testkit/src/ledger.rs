//! Accounting for fault tests: every message sent, what became of it, and what the topic holds
//! afterwards.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ksp_producer::Route;

use crate::Consumed;

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Not resolved yet.
    Pending,
    /// Delivered there.
    Delivered {
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
    /// Failed; the producer handed the message back.
    Failed {
        /// The error, rendered.
        error: String,
        /// Whether the message came back with the error.
        handed_back: bool,
        /// Whether it was a full local queue.
        queue_full: bool,
    },
}

/// One message of a load.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Entry {
    /// When it was handed to `produce`, from the start of the load.
    pub sent_at: Duration,
    /// How long `produce` took to resolve.
    pub latency: Option<Duration>,
    /// How it was routed (known once resolved).
    pub route: Option<Route>,
    /// What became of it.
    pub outcome: Outcome,
}

/// Every message sent in a test, by id. Payloads are `msg-<ledger>-<id>`, so that several
/// ledgers can share a topic.
#[derive(Debug)]
pub struct Ledger {
    name: u64,
    entries: Mutex<BTreeMap<u64, Entry>>,
}

static LEDGERS: AtomicU64 = AtomicU64::new(0);

/// Counts of a ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tally {
    /// Messages handed to `produce`.
    pub sent: usize,
    /// Delivered.
    pub delivered: usize,
    /// Failed with the message handed back.
    pub failed: usize,
    /// Not resolved.
    pub pending: usize,
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {} = delivered {} + failed {} (+ pending {})",
            self.sent, self.delivered, self.failed, self.pending
        )
    }
}

/// What reading the topic back found, against the ledger.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconciliation {
    /// Delivered messages found exactly once, where the delivery report said.
    pub delivered_found: usize,
    /// Delivered messages not found.
    pub lost: Vec<u64>,
    /// Messages found more than once.
    pub duplicated: Vec<u64>,
    /// Delivered messages found elsewhere than reported.
    pub misplaced: Vec<u64>,
    /// Failed messages found in the topic anyway (a send that timed out after reaching the
    /// broker: Kafka's "possibly persisted").
    pub failed_but_written: Vec<u64>,
    /// Messages in the topic that the ledger does not know (another ledger's, or not sent by a
    /// ledger at all).
    pub foreign: usize,
}

impl fmt::Debug for Reconciliation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn ids(ids: &[u64]) -> String {
            let shown: Vec<String> = ids.iter().take(10).map(u64::to_string).collect();
            let more = if ids.len() > 10 { ", …" } else { "" };
            format!("{} [{}{more}]", ids.len(), shown.join(", "))
        }
        f.debug_struct("Reconciliation")
            .field("delivered_found", &self.delivered_found)
            .field("lost", &ids(&self.lost))
            .field("duplicated", &ids(&self.duplicated))
            .field("misplaced", &ids(&self.misplaced))
            .field("failed_but_written", &ids(&self.failed_but_written))
            .field("foreign", &self.foreign)
            .finish()
    }
}

impl Reconciliation {
    /// Panics unless every delivered message was found exactly once, where its report said,
    /// and no failed message was found: the accounting every fault test checks.
    #[track_caller]
    pub fn assert_exactly_once(&self, tally: Tally) {
        assert!(
            self.lost.is_empty() && self.duplicated.is_empty(),
            "{self:?}"
        );
        assert!(
            self.misplaced.is_empty() && self.failed_but_written.is_empty(),
            "{self:?}"
        );
        assert_eq!(self.delivered_found, tally.delivered, "{self:?} {tally}");
    }

    /// No loss, no duplicate, nothing misplaced, nothing foreign.
    pub fn is_exact(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.misplaced.is_empty()
            && self.failed_but_written.is_empty()
            && self.foreign == 0
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            name: LEDGERS.fetch_add(1, Ordering::Relaxed),
            entries: Mutex::default(),
        })
    }

    /// The payload of message `id`.
    pub fn payload(&self, id: u64) -> String {
        format!("msg-{}-{id}", self.name)
    }

    fn parse(&self, payload: &[u8]) -> Option<u64> {
        let rest = std::str::from_utf8(payload).ok()?.strip_prefix("msg-")?;
        let (name, id) = rest.split_once('-')?;
        (name.parse::<u64>().ok()? == self.name)
            .then(|| id.parse().ok())
            .flatten()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn open(&self, sent_at: Duration) -> u64 {
        let mut entries = self.lock();
        let id = entries.len() as u64;
        entries.insert(
            id,
            Entry {
                sent_at,
                latency: None,
                route: None,
                outcome: Outcome::Pending,
            },
        );
        id
    }

    pub(crate) fn close(&self, id: u64, latency: Duration, route: Route, outcome: Outcome) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.latency = Some(latency);
            entry.route = Some(route);
            entry.outcome = outcome;
        }
    }

    /// A copy of every entry, by id.
    pub fn entries(&self) -> BTreeMap<u64, Entry> {
        self.lock().clone()
    }

    /// Counts.
    pub fn tally(&self) -> Tally {
        let entries = self.lock();
        let mut tally = Tally {
            sent: entries.len(),
            ..Tally::default()
        };
        for entry in entries.values() {
            match entry.outcome {
                Outcome::Pending => tally.pending += 1,
                Outcome::Delivered { .. } => tally.delivered += 1,
                Outcome::Failed { .. } => tally.failed += 1,
            }
        }
        tally
    }

    /// Checks what the topic holds against the ledger.
    pub fn reconcile(&self, consumed: &[Consumed]) -> Reconciliation {
        let entries = self.lock();
        let mut seen: HashMap<u64, Vec<(i32, i64)>> = HashMap::new();
        let mut result = Reconciliation::default();
        for message in consumed {
            match self
                .parse(&message.payload)
                .filter(|id| entries.contains_key(id))
            {
                Some(id) => seen
                    .entry(id)
                    .or_default()
                    .push((message.partition, message.offset)),
                None => result.foreign += 1,
            }
        }
        for (&id, entry) in entries.iter() {
            let copies = seen.get(&id).map_or(&[][..], Vec::as_slice);
            if copies.len() > 1 {
                result.duplicated.push(id);
            }
            match &entry.outcome {
                Outcome::Delivered { partition, offset } => match copies {
                    [] => result.lost.push(id),
                    [(p, o), ..] if (p, o) == (partition, offset) => result.delivered_found += 1,
                    _ => result.misplaced.push(id),
                },
                Outcome::Failed { .. } if !copies.is_empty() => result.failed_but_written.push(id),
                _ => {}
            }
        }
        result
    }
}
