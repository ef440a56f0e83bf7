//! Accounting for fault tests: every message sent, what became of it, and what the topic holds
//! afterwards.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ksp_producer::{AsyncSmartProducer, Route};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::task::JoinSet;

use crate::{TestkitError, TestkitResult, kafka_error};

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

/// A message read back from the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Payload.
    pub payload: Vec<u8>,
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

    fn open(&self, sent_at: Duration) -> u64 {
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

    fn close(&self, id: u64, latency: Duration, route: Route, outcome: Outcome) {
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

/// A steady load: `rate` messages per second for `duration`, keyless, or keyed over `keys`
/// distinct keys.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Load {
    /// Topic.
    pub topic: String,
    /// Messages per second.
    pub rate: u32,
    /// How long.
    pub duration: Duration,
    /// `Some(n)`: keyed over `n` keys; `None`: keyless.
    pub keys: Option<u64>,
}

impl Load {
    /// `rate` keyless messages per second to `topic` for `duration`.
    pub fn new(topic: impl Into<String>, rate: u32, duration: Duration) -> Self {
        Self {
            topic: topic.into(),
            rate,
            duration,
            keys: None,
        }
    }

    /// Keyed over `keys` distinct keys.
    #[must_use]
    pub fn keyed(mut self, keys: u64) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Sends the load through `producer`, recording every message in `ledger`, and waits for
    /// every `produce` to resolve. Sends are paced every 10 ms and do not wait for each other.
    pub async fn run(&self, producer: &AsyncSmartProducer, ledger: &Arc<Ledger>) {
        let started = Instant::now();
        let steps = (self.duration.as_millis() / 10).max(1) as u64;
        let per_step = f64::from(self.rate) / 100.0;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut owed = 0.0;
        let mut sends = JoinSet::new();
        for _ in 0..steps {
            tick.tick().await;
            owed += per_step;
            while owed >= 1.0 {
                owed -= 1.0;
                let id = ledger.open(started.elapsed());
                let key = self
                    .keys
                    .map(|n| format!("key-{}", id.wrapping_mul(0x9e37_79b9) % n.max(1)));
                let (producer, ledger, topic) =
                    (producer.clone(), ledger.clone(), self.topic.clone());
                sends.spawn(async move {
                    let payload = ledger.payload(id);
                    let mut record = FutureRecord::to(&topic).payload(&payload);
                    if let Some(key) = &key {
                        record = record.key(key);
                    }
                    let sent = Instant::now();
                    let (route, outcome) = match producer.produce(record).await {
                        Ok(d) => (
                            d.route,
                            Outcome::Delivered {
                                partition: d.partition,
                                offset: d.offset,
                            },
                        ),
                        Err(e) => (
                            e.route(),
                            Outcome::Failed {
                                error: e.error().to_string(),
                                handed_back: e
                                    .message()
                                    .and_then(|m| m.payload())
                                    .is_some_and(|p| p == payload.as_bytes()),
                                queue_full: e.is_queue_full(),
                            },
                        ),
                    };
                    ledger.close(id, sent.elapsed(), route, outcome);
                });
            }
            while sends.try_join_next().is_some() {}
        }
        while sends.join_next().await.is_some() {}
    }
}

/// Reads every message of `topic` (all partitions, from the beginning to the high watermark
/// as it is when called).
pub async fn read_topic(
    kafka: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> TestkitResult<Vec<Consumed>> {
    let kafka = kafka.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_topic_blocking(&kafka, &topic, timeout))
        .await
        .map_err(|e| TestkitError::Demo(format!("reading the topic failed: {e}")))?
}

fn read_topic_blocking(
    kafka: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> TestkitResult<Vec<Consumed>> {
    let consumer: BaseConsumer = kafka
        .clone()
        .set("group.id", "ksp-testkit-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(kafka_error("creating the reader"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka_error("reading metadata"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(kafka_error("reading watermarks"))?;
        ends.insert(p, high);
        if high > 0 {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(kafka_error("building the assignment"))?;
        }
    }
    consumer
        .assign(&assignment)
        .map_err(kafka_error("assigning"))?;
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    let done = |p: i32, offset: i64| ends.get(&p).is_some_and(|&end| offset + 1 >= end);
    let mut remaining: std::collections::HashSet<i32> = assignment
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    while !remaining.is_empty() {
        if Instant::now() >= deadline {
            return Err(TestkitError::Demo(format!(
                "reading `{topic}` timed out; partitions {remaining:?} not read to their end"
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                messages.push(Consumed {
                    partition: m.partition(),
                    offset: m.offset(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                });
                if done(m.partition(), m.offset()) {
                    remaining.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(kafka_error("reading messages")(e)),
            None => {}
        }
    }
    Ok(messages)
}
