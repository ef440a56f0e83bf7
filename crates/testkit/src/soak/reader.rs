//! The soak's tailing reader: reads every partition of the topic from the beginning as the run
//! goes (the embedded broker keeps only the last 5 MiB of each partition), handing each
//! message to the accounting.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::verify::Verifier;
use crate::{TestkitError, TestkitResult, kafka_error};

/// The reader's thread.
pub(crate) struct Reader {
    finish: Arc<AtomicBool>,
    thread: Option<JoinHandle<TestkitResult<()>>>,
    /// Read errors seen (transient: brokers down).
    pub(crate) errors: Arc<AtomicU64>,
    /// Offsets skipped: a message read at another offset than the one after the last read
    /// (the log truncated under the reader, which then resets to its start). Must stay 0.
    pub(crate) skipped: Arc<AtomicU64>,
    /// Partitions whose log the embedded broker has trimmed (low watermark above 0): it keeps
    /// at most 5 MiB of each, so the memory it holds for them grows until every partition's is
    /// trimmed, and stays level after.
    pub(crate) logs_at_cap: Arc<AtomicU32>,
}

/// How often the reader reads the low watermarks.
const WATERMARKS_EVERY: Duration = Duration::from_secs(5);

impl Reader {
    pub(crate) fn start(
        kafka: &ClientConfig,
        topic: &str,
        partitions: i32,
        verifier: Arc<Verifier>,
    ) -> TestkitResult<Self> {
        let consumer: BaseConsumer = kafka
            .clone()
            .set("group.id", "ksp-soak-reader")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "50")
            .create()
            .map_err(kafka_error("creating the soak reader"))?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(kafka_error("building the reader's assignment"))?;
        }
        consumer
            .assign(&assignment)
            .map_err(kafka_error("assigning the reader"))?;
        let finish = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let skipped = Arc::new(AtomicU64::new(0));
        let logs_at_cap = Arc::new(AtomicU32::new(0));
        let thread = {
            let (finish, errors, skipped, logs_at_cap, topic) = (
                finish.clone(),
                errors.clone(),
                skipped.clone(),
                logs_at_cap.clone(),
                topic.to_owned(),
            );
            std::thread::Builder::new()
                .name("ksp-soak-reader".into())
                .spawn(move || {
                    let mut next: HashMap<i32, i64> = HashMap::new();
                    let mut ends: Option<(HashMap<i32, i64>, Instant)> = None;
                    // Partitions seen trimmed (once trimmed, a log stays at its cap).
                    let mut trimmed = vec![false; usize::try_from(partitions).unwrap_or(0)];
                    let mut next_watermarks = Instant::now();
                    loop {
                        if ends.is_none()
                            && Instant::now() >= next_watermarks
                            && trimmed.contains(&false)
                        {
                            next_watermarks = Instant::now() + WATERMARKS_EVERY;
                            for (p, trimmed) in (0..partitions).zip(trimmed.iter_mut()) {
                                // A broker down: asked again next time.
                                if let Ok((low, _)) =
                                    consumer.fetch_watermarks(&topic, p, Duration::from_millis(500))
                                {
                                    *trimmed |= low > 0;
                                }
                            }
                            let at_cap = trimmed.iter().filter(|t| **t).count();
                            logs_at_cap.store(
                                u32::try_from(at_cap).unwrap_or(u32::MAX),
                                Ordering::Relaxed,
                            );
                        }
                        if ends.is_none() && finish.load(Ordering::Relaxed) {
                            let mut high = HashMap::new();
                            for p in 0..partitions {
                                let (_, h) = consumer
                                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                                    .map_err(kafka_error("reading the final watermarks"))?;
                                high.insert(p, h);
                            }
                            ends = Some((high, Instant::now() + Duration::from_secs(60)));
                        }
                        if let Some((high, deadline)) = &ends {
                            let done = high
                                .iter()
                                .all(|(p, h)| next.get(p).copied().unwrap_or(0) >= *h);
                            if done {
                                return Ok(());
                            }
                            if Instant::now() >= *deadline {
                                return Err(TestkitError::Demo(format!(
                                    "the soak reader did not reach the end of `{topic}` within \
                                     60 s: read up to {next:?}, end {high:?}"
                                )));
                            }
                        }
                        match consumer.poll(Duration::from_millis(100)) {
                            Some(Ok(m)) => {
                                // Offsets are contiguous (no transactions): from 0, each read
                                // follows the last.
                                let expected = next.get(&m.partition()).copied().unwrap_or(0);
                                if m.offset() != expected {
                                    skipped.fetch_add(
                                        m.offset().abs_diff(expected),
                                        Ordering::Relaxed,
                                    );
                                }
                                next.insert(m.partition(), m.offset() + 1);
                                verifier.found(
                                    m.payload().unwrap_or_default(),
                                    (m.partition(), m.offset()),
                                );
                            }
                            Some(Err(_)) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {}
                        }
                    }
                })?
        };
        Ok(Self {
            finish,
            thread: Some(thread),
            errors,
            skipped,
            logs_at_cap,
        })
    }

    /// Reads on to the topic's end as it is now, then stops.
    pub(crate) fn finish(mut self) -> TestkitResult<()> {
        self.finish.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(TestkitError::Demo("the soak reader panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.finish.store(true, Ordering::Relaxed);
    }
}
